"""Peak memory per process of trainer=fsdp against trainer=ddp: the same short run of `python -m ssl_train` on 2 CPU
processes (gloo), DINO with backbone=vit_small (4 px patches on the 28 px default data), online evaluation, pictures,
probe and baselines off, so what differs is how the weights, gradients, optimizer state and EMA teacher are held.

Run: python scripts/bench_memory.py [--steps 3] [--batch 16] [--method dino] [--override KEY=VALUE ...]
     (a larger ViT: --override backbone.name=vit_base_patch16_224)

The figure is each process's peak resident set size (VmHWM of /proc/self/status), written by the process itself at
exit: a sitecustomize.py in a temporary folder on PYTHONPATH registers the hook in every Python process of the run (rank
0 and the rank Lightning launches). It includes Python, torch and the data, which both rows share. On CUDA machines the
same comparison is torch.cuda.max_memory_allocated (scripts/gpu_checks.sh).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TRAINERS = {
    "ddp": ["trainer=ddp_cpu"],
    "fsdp": ["trainer=fsdp", "trainer.accelerator=cpu", "trainer.precision=32-true"],
}
# run in every Python process of the benchmarked run: at exit, its peak RSS in KiB and its rank into PEAKS_DIR/<pid>
HOOK = """import atexit, os
def _peak(folder=os.environ["SSL_TRAIN_PEAKS_DIR"]):
    status = dict(line.split(":", 1) for line in open("/proc/self/status") if ":" in line)
    with open(os.path.join(folder, str(os.getpid())), "w") as out:
        out.write(f"{os.environ.get('LOCAL_RANK', '0')} {status['VmHWM'].split()[0]}")
atexit.register(_peak)
"""


def peak_rss_mib(overrides: list[str]) -> tuple[list[float], float]:
    """(peak RSS in MiB of each rank, rank 0 first; seconds) of one run with `overrides`."""
    with tempfile.TemporaryDirectory(prefix="bench_memory_") as tmp:
        hook, peaks = Path(tmp) / "hook", Path(tmp) / "peaks"
        hook.mkdir()
        peaks.mkdir()
        (hook / "sitecustomize.py").write_text(HOOK)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(hook), os.environ.get("PYTHONPATH")])), "SSL_TRAIN_PEAKS_DIR": str(peaks)}
        started = time.time()
        out = subprocess.run([sys.executable, "-m", "ssl_train", *overrides, f"hydra.run.dir={tmp}/run"], capture_output=True, text=True, env=env)
        if out.returncode:
            raise SystemExit(f"run failed ({' '.join(overrides)}):\n{out.stderr[-3000:]}")
        by_rank: dict[int, int] = {}
        for file in peaks.iterdir():  # a rank's helper processes (none with data.num_workers=0) count towards its rank
            rank, kib = map(int, file.read_text().split())
            by_rank[rank] = max(by_rank.get(rank, 0), kib)
        if sorted(by_rank) != [0, 1]:
            raise SystemExit(f"expected the peaks of ranks 0 and 1, got ranks {sorted(by_rank)}")
        return [by_rank[rank] / 1024 for rank in (0, 1)], time.time() - started


def model_state_mib(overrides: list[str], global_batch: int) -> float:
    """MiB of weights (student and teacher), gradients and optimizer state of the whole model in fp32: what DDP holds on
    every rank and FSDP splits across them (one optimizer step with zero gradients and lr 0 creates the state)."""
    import torch

    from ssl_train.build import instantiate
    from ssl_train.verify_dist_config import built

    cfg, _, method = built(overrides)
    optimizer, _, _ = instantiate("optim", cfg.optim).build(method, [], global_batch, 1, 1)
    trained = [p for p in method.parameters() if p.requires_grad]
    for p in trained:
        p.grad = torch.zeros_like(p)
    for group in optimizer.param_groups:
        group["lr"] = 0.0
    optimizer.step()
    state = sum(t.numel() for s in optimizer.state.values() for t in s.values() if isinstance(t, torch.Tensor) and t.dim())
    return 4 * (sum(p.numel() for p in method.parameters()) + sum(p.numel() for p in trained) + state) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch", type=int, default=16, help="global batch (2 processes x batch/2)")
    parser.add_argument("--method", default="dino")
    parser.add_argument("--override", nargs="*", default=[], help="more overrides for both runs")
    args = parser.parse_args()
    common = [
        f"method={args.method}",
        "backbone=vit_small",
        "backbone.patch_size=4",
        "trainer.devices=2",
        "trainer.max_epochs=1",
        f"trainer.limit_train_batches={args.steps}",
        "trainer.enable_progress_bar=false",
        f"data.batch_size={args.batch}",
        "data.num_workers=0",
        "data.source.train_limit=256",
        "data.source.test_limit=64",
        "callbacks.online_eval=null",
        "callbacks.pictures=null",
        "probe=false",
        "baseline=false",
        *args.override,
    ]
    vit = next((o.split("=", 1)[1] for o in args.override if o.startswith("backbone.name=")), "vit_small_patch16_224")
    setting = f"{args.method}, {vit} with 4 px patches at 28 px, 2 CPU processes (gloo), global batch {args.batch}, {args.steps} steps"
    state = model_state_mib([f"method={args.method}", "backbone=vit_small", "backbone.patch_size=4", *args.override], args.batch)
    print(f"| {setting} | peak RSS rank 0 | peak RSS rank 1 | weights + gradients + optimizer state per rank | wall s |")
    print("|---|---|---|---|---|")
    for name, trainer in TRAINERS.items():
        mib, seconds = peak_rss_mib([*trainer, *common])
        held = state if name == "ddp" else state / 2  # FSDP: each rank holds its half of every parameter, gradient and state
        print(f"| trainer={name} | {mib[0]:,.0f} MiB | {mib[1]:,.0f} MiB | {held:,.0f} MiB | {seconds:.0f} |", flush=True)


if __name__ == "__main__":
    main()
