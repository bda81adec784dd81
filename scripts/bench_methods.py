"""Train every method's recipe on the embedded data and print the README's methods table (markdown).

Run: python scripts/bench_methods.py [--methods simclr byol ...] [--out bench_out] [-- extra hydra overrides]
Each method runs `python -m ssl_train experiment=<method>_default hydra.run.dir=<out>/<method>`; an existing
finished run directory is reused, not overwritten, so an interrupted benchmark resumes where it stopped.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PAPERS = {
    "simclr": "SimCLR (Chen et al. 2020)", "byol": "BYOL (Grill et al. 2020)", "mocov2": "MoCo v2 (Chen et al. 2020)",
    "mocov3": "MoCo v3 (Chen et al. 2021)", "simsiam": "SimSiam (Chen & He 2021)", "barlow_twins": "Barlow Twins (Zbontar et al. 2021)",
    "vicreg": "VICReg (Bardes et al. 2022)", "supcon": "SupCon (Khosla et al. 2020), uses labels", "dino": "DINO (Caron et al. 2021)",
    "swav": "SwAV (Caron et al. 2020)", "nnclr": "NNCLR (Dwibedi et al. 2021)",
}


def run_method(method: str, out: Path, extra: list[str]) -> dict:
    run_dir = out / method
    if not (run_dir / "metrics.json").is_file():
        command = [sys.executable, "-m", "ssl_train", f"experiment={method}_default", f"hydra.run.dir={run_dir}", "trainer.enable_progress_bar=false", *extra]
        print("+", " ".join(command), flush=True)
        subprocess.run(command, cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    return json.loads((run_dir / "metrics.json").read_text())


def table(rows: list[dict]) -> str:
    lines = [
        "| method | recipe | linear top-1 | kNN top-1 (k=20) | random-init linear / kNN | wall time | train images/s |",
        "|---|---|---|---|---|---|---|",
    ]
    for m in rows:
        lines.append(
            f"| {PAPERS.get(m['method'], m['method'])} | `experiment={m['method']}_default` | {m['linear_top1']:.4f} | {m['knn_k20_top1']:.4f} "
            f"| {m['random_init_linear_top1']:.4f} / {m['random_init_knn_k20_top1']:.4f} | {m['wall_time_s']:.0f} s | {m['train_images_per_s']:.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=list(PAPERS))
    parser.add_argument("--out", type=Path, default=REPO / "bench_out" / "methods")
    parser.add_argument("extra", nargs="*", help="hydra overrides applied to every run")
    args = parser.parse_args()
    rows = []
    for method in args.methods:
        rows.append(run_method(method, args.out, args.extra))
        print(table(rows[-1:]).splitlines()[-1], flush=True)
    text = table(rows)
    (args.out / "methods_table.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
