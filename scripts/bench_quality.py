"""Quality benchmark: every method x budget, probed against both baselines, with probe accuracy against wall time.

Run: python scripts/bench_quality.py [--budgets quick fmnist30] [--methods simclr byol cpc:spoken_digits ...] [--out bench_out/quality] [-- overrides]

A row is `method` or `method:data` (a method on another data option: the methods beyond images run on their own data,
e.g. `cpc:seq_fashion_mnist`, `dgi:wordnet_graph`); the full-data budget `fmnist30` applies to the image methods only.

Budgets: `quick` is `python -m ssl_train method=<method>` (the defaults: embedded 10k/2k data, about 3 minutes on
2 CPU cores), `fmnist30` adds `experiment=fmnist30` (full Fashion-MNIST 60k/10k, about 30 minutes on 2 CPU cores).
Each run is `python -m ssl_train method=<method> [experiment=...] hydra.run.dir=<out>/<budget>/<method>`; a
finished run directory is reused, so an interrupted benchmark resumes where it stopped (one finished with other
overrides stops the benchmark with a message: pass another --out). Prints (and writes
<out>/quality_table.md) one row per run: linear and kNN top-1 of the trained encoder, of the raw pixels and of the
random-init encoder, the margin over the stronger baseline, wall time and images/s; draws <out>/quality_curves.png
(online kNN top-1 on the evaluation split against training seconds, one line per method, one panel per budget;
needs matplotlib: pip install -e '.[bench]').

`--seeds N` runs every row with seeds 0..N-1 (seed 0 is the default run, in the same folder as without --seeds; seed s
in <row>-seed<s> with `seed=s`) and adds a table over seeds: mean ± std and the 95 % Student-t interval of linear and
kNN top-1, and the margin over the stronger baseline as a paired difference (same seed) with a verdict ("within seed
noise" or "better by X ± Y points"). `--compare A B` (repeatable) adds A's linear top-1 minus B's, paired by seed.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from ssl_train.composed import CONFIG_DIR
from ssl_train.eval.seeds import interval, mean_std, paired_difference, summarize, verdict

REPO = Path(__file__).resolve().parents[1]
METHOD_DIR = CONFIG_DIR / "method"


def paper(method: str) -> str:
    """A method's paper, from its config's header line ('# SimCLR (Chen et al., ICML 2020): ...' -> 'SimCLR (Chen et al., ICML 2020)')."""
    header = next(line for line in (METHOD_DIR / f"{method}.yaml").read_text().splitlines() if not line.startswith("# @package"))
    return header.lstrip("# ").split(":")[0]


def runs_on_images(method: str) -> bool:
    """Whether `python -m ssl_train method=<method>` trains on the default image data: the config picks no other data and
    its method, backbone and views take images (their declared modalities; ssl_train.modalities)."""
    import yaml

    from ssl_train.modalities.check import modalities_of

    tree = yaml.safe_load((METHOD_DIR / f"{method}.yaml").read_text())
    picked = {key.split("/")[-1]: value for entry in tree.get("defaults", []) if isinstance(entry, dict) for key, value in entry.items()}
    if "data" in picked:
        return False
    targets = [tree["method"]["_target_"]] + [
        yaml.safe_load((CONFIG_DIR / group / f"{picked[group]}.yaml").read_text()).get("_target_", "") for group in ("backbone", "augment") if group in picked
    ]
    return all("image" in (modalities_of(target) or ("image",)) for target in targets if target)


METHODS = sorted(p.stem for p in METHOD_DIR.glob("*.yaml"))  # every method config, none listed by hand
# the methods beyond images, each on the data it runs on (these pairings are choices, not derived)
BEYOND_IMAGES = ["cpc:seq_fashion_mnist", "cpc:spoken_digits", "dgi:fmnist_knn_graph", "grace:fmnist_knn_graph", "dgi:wordnet_graph"]
IMAGE_METHODS = [m for m in METHODS if runs_on_images(m)]
BUDGETS = {"quick": [], "fmnist30": ["experiment=fmnist30"]}  # budget name -> overrides


def row_overrides(row: str, budget: str) -> list[str]:
    """The command-line overrides of one row: `method=...` (+ `data=...`) + the budget's."""
    method, _, data = row.partition(":")
    return [f"method={method}", *([f"data={data}"] if data else []), *BUDGETS[budget]]


QUIET = "trainer.enable_progress_bar=false"


def recorded_overrides(run_dir: Path) -> list[str] | None:
    """The overrides a finished run was started with (Hydra's `.hydra/overrides.yaml`), or None where it has none."""
    path = run_dir / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return None
    import yaml

    return [o for o in yaml.safe_load(path.read_text()) or [] if o != QUIET]


def run_one(row: str, budget: str, out: Path, extra: list[str], seed: int = 0) -> dict:
    """Run one row into <out>/<budget>/<row> (seed s > 0: <row>-seed<s>, with seed=s), or read it there when finished with
    the same overrides (a rerun resumes)."""
    run_dir = out / budget / (row.replace(":", "_") + (f"-seed{seed}" if seed else ""))
    overrides = [*row_overrides(row, budget), *([f"seed={seed}"] if seed else []), *extra]
    if not (run_dir / "metrics.json").is_file():
        command = [sys.executable, "-m", "ssl_train", *overrides[: len(overrides) - len(extra)], f"hydra.run.dir={run_dir}", QUIET, *extra]
        print("+", " ".join(command), flush=True)
        subprocess.run(command, cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    recorded = recorded_overrides(run_dir)
    if recorded is not None and recorded != overrides:
        sys.exit(f"bench_quality: {run_dir} holds a run of {' '.join(recorded)!r}, not {' '.join(overrides)!r}; pass another --out (the finished run is kept)")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return {**metrics, "budget": budget, "run_dir": str(run_dir), "row": row, "overrides": overrides, "seed": seed}


def margin(m: dict) -> float:
    """Linear top-1 minus the stronger of the two baselines (raw pixels, random-init encoder), in points."""
    return 100 * (m["linear_top1"] - stronger_baseline(m))


def linear_top1(m: dict) -> float:
    return m["linear_top1"]


def knn_top1(m: dict) -> float:
    return m["knn_k20_top1"]


def stronger_baseline(m: dict) -> float:
    """The linear top-1 of the stronger baseline (raw pixels or the random-init encoder) of the same run."""
    return max(m.get("raw_input_linear_top1", 0.0), m.get("random_init_linear_top1", 0.0))


def by_seed(rows: list[dict], row: str, budget: str, score: Callable[[dict], float]) -> dict[int, float]:
    """{seed: score} of one row and budget."""
    return {m["seed"]: score(m) for m in rows if m["row"] == row and m["budget"] == budget}


def seed_table(rows: list[dict]) -> str:
    """One line per row and budget over its seeds: mean ± std and 95 % t interval of linear and kNN top-1, and the margin
    over the stronger baseline (paired: each seed's run against its own baselines) with a verdict."""
    lines = [
        "| method | budget | seeds | linear top-1 mean ± std | 95 % interval | kNN top-1 (k=20) mean ± std | 95 % interval "
        "| vs stronger baseline, paired (points, 95 %) | verdict |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row, budget in dict.fromkeys((m["row"], m["budget"]) for m in rows):
        linear = summarize(list(by_seed(rows, row, budget, linear_top1).values()))
        knn = summarize(list(by_seed(rows, row, budget, knn_top1).values()))
        gap = paired_difference(by_seed(rows, row, budget, linear_top1), by_seed(rows, row, budget, stronger_baseline))
        assert gap is not None  # the same runs on both sides
        half = f" ± {100 * gap.half_width:.2f}" if gap.n > 1 else ""
        lines.append(
            f"| {paper(row.partition(':')[0])}{' (' + row.partition(':')[2] + ')' if ':' in row else ''} | {budget} | {linear.n} "
            f"| {mean_std(linear)} | {interval(linear)} | {mean_std(knn)} | {interval(knn)} | {100 * gap.mean:+.2f}{half} | {verdict(gap)} |"
        )
    return "\n".join(lines)


def comparisons(rows: list[dict], pairs: list[list[str]]) -> str:
    """For each (A, B) and budget both ran: A's linear top-1 minus B's on their shared seeds, mean ± t interval, verdict."""
    lines = []
    for a, b in pairs:
        for budget in dict.fromkeys(m["budget"] for m in rows):
            gap = paired_difference(by_seed(rows, a, budget, linear_top1), by_seed(rows, b, budget, linear_top1))
            if gap is not None:
                half = f" ± {100 * gap.half_width:.2f}" if gap.n > 1 else ""
                lines.append(f"- {budget}: {a} - {b}, linear top-1 on {gap.n} shared seed(s): {100 * gap.mean:+.2f}{half} points: {verdict(gap)}")
    return "\n".join(lines)


def table(rows: list[dict]) -> str:
    lines = [
        "| method | budget | recipe | linear top-1 | kNN top-1 (k=20) | raw input linear / kNN | random-init linear / kNN "
        "| vs stronger baseline | wall time | train images/s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for m in rows:
        lines.append(
            f"| {paper(m['method'].partition(':')[0])} | {m['budget']} | `{' '.join(m['overrides'])}` "
            f"| {m['linear_top1']:.4f} | {m['knn_k20_top1']:.4f} "
            f"| {m['raw_input_linear_top1']:.4f} / {m['raw_input_knn_k20_top1']:.4f} "
            f"| {m['random_init_linear_top1']:.4f} / {m['random_init_knn_k20_top1']:.4f} "
            f"| {margin(m):+.1f} pts | {m['wall_time_s']:.0f} s | {m['train_images_per_s']:.0f} |"
        )
    return "\n".join(lines)


def curve(run_dir: str, tag: str = "val/knn_top1") -> list[tuple[float, float]]:
    """(seconds since the first logged event, value) of one scalar in a run's TensorBoard events."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    points: list[tuple[float, float]] = []
    start = None
    for events in sorted(Path(run_dir, "tensorboard").rglob("events.out.tfevents.*")):
        accumulator = EventAccumulator(str(events))
        accumulator.Reload()
        tags = accumulator.Tags().get("scalars", [])
        if not tags:
            continue
        first = min(e.wall_time for t in tags for e in accumulator.Scalars(t))
        start = first if start is None else min(start, first)
        if tag in tags:
            points += [(e.wall_time, e.value) for e in accumulator.Scalars(tag)]
    return [(t - start, v) for t, v in sorted(points)] if start is not None else []


def plot(rows: list[dict], path: Path) -> bool:
    """One panel per budget: online kNN top-1 against training seconds per image method; the raw-pixel kNN as a dashed
    line (the rows on other data, `method:data`, are in the table only: their accuracies are on another scale)."""
    rows = [m for m in rows if ":" not in m.get("row", "")]
    if not rows:
        return False
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed (pip install -e '.[bench]'): no curve PNG", file=sys.stderr)
        return False
    budgets = list(dict.fromkeys(m["budget"] for m in rows))
    figure, axes = plt.subplots(1, len(budgets), figsize=(6.5 * len(budgets), 4.5), squeeze=False)
    for axis, budget in zip(axes[0], budgets, strict=True):
        chosen = [m for m in rows if m["budget"] == budget]
        axis.set_prop_cycle(color=plt.cm.tab20.colors)  # 11+ methods: distinct colours
        for m in chosen:
            points = curve(m["run_dir"])
            if points:
                axis.plot([t for t, _ in points], [v for _, v in points], marker="o", markersize=3, label=m["method"])
        axis.axhline(chosen[0]["raw_input_knn_k20_top1"], color="black", linestyle="--", linewidth=1, label="raw pixels")
        axis.axhline(chosen[0]["random_init_knn_k20_top1"], color="grey", linestyle=":", linewidth=1, label="random-init encoder")
        axis.set(title=f"budget: {budget}", xlabel="training time (s)", ylabel="online kNN top-1 (k=20)")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7, ncol=2)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=IMAGE_METHODS + BEYOND_IMAGES)
    parser.add_argument("--budgets", nargs="+", default=["quick"], choices=list(BUDGETS))
    parser.add_argument("--out", type=Path, default=REPO / "bench_out" / "quality")
    parser.add_argument("--seeds", type=int, default=1, help="run each row with seeds 0..N-1 and add the table over seeds")
    parser.add_argument("--compare", nargs=2, action="append", default=[], metavar=("A", "B"), help="paired difference of two rows over seeds")
    parser.add_argument("extra", nargs="*", help="hydra overrides applied to every run")
    args = parser.parse_args()
    if args.seeds < 1:
        parser.error("--seeds must be >= 1")
    rows = []
    for budget in args.budgets:
        for row in args.methods:
            if budget != "quick" and row.partition(":")[0] not in IMAGE_METHODS:
                continue  # the full-data budgets are Fashion-MNIST image runs
            for seed in range(args.seeds):
                rows.append(run_one(row, budget, args.out, args.extra, seed))
                print(table(rows[-1:]).splitlines()[-1], flush=True)
    text = table(rows)
    if args.seeds > 1:
        text += f"\n\nOver {args.seeds} seeds (0..{args.seeds - 1}; interval: Student t, 95 %):\n\n" + seed_table(rows)
    if args.compare:
        text += "\n\nPaired differences (same seeds):\n\n" + comparisons(rows, args.compare)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "quality_table.md").write_text(text + "\n")
    print(text)
    if plot(rows, args.out / "quality_curves.png"):
        print(f"curves: {args.out / 'quality_curves.png'}")


if __name__ == "__main__":
    main()
