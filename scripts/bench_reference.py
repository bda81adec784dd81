"""Reference bands: each shipped recipe run over several seeds; its online kNN top-1, training loss, RankMe and embedding
std against the fraction of training, mean and spread over the seeds, written as the band file the early alarm and the
report read (ssl_train/references/<method>.<data>.json; callbacks.reference_alarm).

Run: python scripts/bench_reference.py [--methods simclr byol ...] [--seeds 0 1 2] [--budgets quick] [--out bench_out/reference] [-- overrides]
     python scripts/bench_reference.py --dry-run    # a tiny check: 2 seeds of a 4-epoch, 256-image SimCLR; bands in <out>/bands

Each run is `python -m ssl_train method=<method> seed=<seed> [budget overrides] hydra.run.dir=<out>/<budget>/<method>/seed<seed>`,
as scripts/bench_quality.py runs a row (a finished run directory is reused, so an interrupted benchmark resumes). A band's
fingerprint is that of callbacks.reference_alarm.recipe in the config those overrides compose (method, data, budget), so
a run of the same recipe finds it. Prints one row per recipe and the kNN band at each evaluation.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml
from bench_quality import BUDGETS, QUIET, REPO, recorded_overrides, row_overrides  # how the quality benchmark runs a recipe
from omegaconf import OmegaConf

from ssl_train.composed import compose_run_config
from ssl_train.metrics import EFFECTIVE_LR, IMAGES_PER_S, LINEAR_TOP1, STEPS, TRAIN_LOSS, VAL_KNN_TOP1, WALL_TIME_S
from ssl_train.tracking.history import FILE as HISTORY_FILE
from ssl_train.tracking.history import read_history
from ssl_train.tracking.reference import PACKAGE_BANDS, Band, band_curves

DRY_RUN = [  # the tiny check: a few seconds per run on 2 CPU cores
    "data.source.train_limit=256",
    "data.source.test_limit=128",
    "data.batch_size=32",
    "data.num_workers=0",
    "backbone.widths=[8,16]",
    "trainer.max_epochs=4",
    "callbacks.online_eval.every_n_epochs=1",
    "callbacks.history.every_n_steps=1",
    "trainer.log_every_n_steps=1",
    "probe=false",
    "baseline=false",
]


def run_seed(row: str, seed: int, budget: str, out: Path, extra: list[str]) -> Path:
    """Run one seed of a recipe into <out>/<budget>/<row>/seed<seed>, or reuse it there when finished with the same overrides."""
    run_dir = out / budget / row.replace(":", "_") / f"seed{seed}"
    overrides = [*row_overrides(row, budget), f"seed={seed}", *extra]
    if not (run_dir / "metrics.json").is_file():
        command = [sys.executable, "-m", "ssl_train", *overrides, f"hydra.run.dir={run_dir}", QUIET]
        print("+", " ".join(command), flush=True)
        subprocess.run(command, cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    recorded = recorded_overrides(run_dir)
    if recorded is not None and recorded != overrides:
        sys.exit(f"bench_reference: {run_dir} holds a run of {' '.join(recorded)!r}, not {' '.join(overrides)!r}; pass another --out")
    return run_dir


def recipe_of(row: str, budget: str, extra: list[str]) -> dict[str, Any]:
    """The recipe keys (callbacks.reference_alarm.recipe) of the config a run of this row composes, resolved."""
    cfg = compose_run_config([*row_overrides(row, budget), *extra], output_dir="/nonexistent")
    return dict(OmegaConf.to_container(cfg.callbacks.reference_alarm.recipe, resolve=True))  # type: ignore[arg-type]


def device_here() -> str:
    """What the runs trained on: the GPU's name, else the CPU and its core count."""
    import torch

    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}"
    return f"CPU ({platform.machine()}, {os.cpu_count()} cores), torch {torch.__version__}"


def build_band(row: str, budget: str, seeds: list[int], run_dirs: list[Path], extra: list[str], loss_bins: int) -> tuple[Band, list[dict]]:
    """The band of one recipe from its finished seed runs, and each run's metrics.json."""
    metrics = [json.loads((d / "metrics.json").read_text()) for d in run_dirs]
    configs = [yaml.safe_load((d / "config_resolved.yaml").read_text()) for d in run_dirs]
    histories = [(read_history(d / HISTORY_FILE), int(m[STEPS])) for d, m in zip(run_dirs, metrics, strict=True)]
    warmup = [c["optim"].get("warmup_epochs", 0) / c["trainer"]["max_epochs"] for c in configs]
    band = Band(
        recipe=recipe_of(row, budget, extra),
        seeds=tuple(seeds),
        curves=band_curves(histories, loss_bins),
        effective_lr=statistics.fmean(float(m[EFFECTIVE_LR]) for m in metrics),
        warmup_fraction=round(statistics.fmean(warmup), 6),
        images_per_s=round(statistics.fmean(float(m.get(IMAGES_PER_S, 0.0)) for m in metrics), 1),
        measured_on=device_here(),
        command=f"python -m ssl_train {' '.join(row_overrides(row, budget) + extra)} seed=<seed>",
    )
    return band, metrics


def band_name(row: str, budget: str) -> str:
    """<method>.<data>.json for the quick budget (data 'default' unless the row names one), <method>.<data>.<budget>.json otherwise."""
    method, _, data = row.partition(":")
    return f"{method}.{data or 'default'}" + ("" if budget == "quick" else f".{budget}") + ".json"


def mean_spread(values: list[float]) -> str:
    return f"{statistics.fmean(values):.4f} ± {statistics.stdev(values) if len(values) > 1 else 0.0:.4f}"


def table_row(row: str, budget: str, band: Band, metrics: list[dict], path: Path) -> str:
    knn, loss = band.curves[VAL_KNN_TOP1], band.curves.get(TRAIN_LOSS)
    linear = [m[LINEAR_TOP1] for m in metrics if LINEAR_TOP1 in m]
    return (
        f"| {row} | {budget} | {len(band.seeds)} | {100 * knn.fraction[0]:.0f} %: {knn.mean[0]:.4f} ± {knn.spread[0]:.4f} "
        f"| {knn.mean[-1]:.4f} ± {knn.spread[-1]:.4f} | {f'{loss.mean[-1]:.4f} ± {loss.spread[-1]:.4f}' if loss else '-'} "
        f"| {mean_spread(linear) if linear else '-'} | {statistics.fmean(m[WALL_TIME_S] for m in metrics):.0f} s | {path.name} |"
    )


HEADER = (
    "| recipe | budget | seeds | kNN top-1, first evaluation | kNN top-1, end | training loss, end | linear top-1 | wall time per run | band file |\n"
    "|---|---|---|---|---|---|---|---|---|"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=["simclr"], help="rows as in bench_quality: method or method:data")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--budgets", nargs="+", default=["quick"], choices=list(BUDGETS))
    parser.add_argument("--out", type=Path, default=None, help="run directories (default bench_out/reference, bench_out/reference_dry_run)")
    parser.add_argument("--bands-dir", type=Path, default=None, help=f"where the band files go (default {PACKAGE_BANDS}; <out>/bands with --dry-run)")
    parser.add_argument("--loss-bins", type=int, default=24, help="the loss band's points: training cut into this many equal slices")
    parser.add_argument("--dry-run", action="store_true", help="a tiny check: 2 seeds of 4 epochs on 256 images, bands under <out>/bands")
    parser.add_argument("extra", nargs="*", help="hydra overrides applied to every run (part of the recipe)")
    args = parser.parse_args()
    extra, seeds = list(args.extra), args.seeds
    out = args.out or REPO / "bench_out" / ("reference_dry_run" if args.dry_run else "reference")
    if args.dry_run:
        extra, seeds = [*DRY_RUN, *extra], seeds[:2] if len(seeds) > 1 else seeds
    bands_dir = args.bands_dir or (out / "bands" if args.dry_run else PACKAGE_BANDS)
    bands_dir.mkdir(parents=True, exist_ok=True)
    rows, curves = [HEADER], []
    for budget in args.budgets:
        for row in args.methods:
            run_dirs = [run_seed(row, seed, budget, out, extra) for seed in seeds]
            band, metrics = build_band(row, budget, seeds, run_dirs, extra, args.loss_bins)
            path = bands_dir / band_name(row, budget)
            path.write_text(json.dumps(band.to_json(), indent=1) + "\n")
            rows.append(table_row(row, budget, band, metrics, path))
            knn = band.curves[VAL_KNN_TOP1]
            points = ", ".join(f"{100 * f:.0f} %: {m:.4f} ± {s:.4f}" for f, m, s in zip(knn.fraction, knn.mean, knn.spread, strict=True))
            curves.append(f"{row} ({budget}, fingerprint {band.fingerprint}) kNN top-1 band: {points}")
            print(rows[-1], flush=True)
    print("\n".join(rows))
    print("\n".join(curves))
    print(f"band files in {bands_dir}")


if __name__ == "__main__":
    main()
