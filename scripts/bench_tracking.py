"""What trackers, pictures, LiDAR and the report cost a run: wall time of the same short pretraining run with each
addition, and the time of each piece on its own.

Run: python scripts/bench_tracking.py [--epochs 2] [--batches 20]

Each row is one run (`ssl_train.run.run`) of the default SimCLR config on the embedded data, shortened to `--epochs`
epochs of `--batches` batches, in a fresh directory, probe and baselines off so the difference is the tracking.
Trackers that are not installed are skipped (pip install -e '.[trackers]').
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import tempfile
import time
from pathlib import Path

import torch

from ssl_train.composed import compose_run_config
from ssl_train.eval.metrics import lidar
from ssl_train.run import run
from ssl_train.tracking.report import write_report

NO_PICTURES = ["callbacks.pictures=null", "callbacks.online_eval.lidar_samples=0", "callbacks.history=null"]


def one_run(overrides: list[str], root: Path, name: str, epochs: int, batches: int) -> tuple[float, Path]:
    out = root / name
    short = [
        f"paths.output_dir={out}",
        f"paths.runs_dir={root / 'runs'}",
        "probe=false",
        "baseline=false",
        f"trainer.max_epochs={epochs}",
        f"trainer.limit_train_batches={batches}",
        "trainer.enable_progress_bar=false",
        "callbacks.online_eval.every_n_epochs=1",
    ]
    if "callbacks.pictures=null" not in overrides:
        short.append("callbacks.pictures.every_n_epochs=1")
    cfg = compose_run_config([*overrides, *short])
    started = time.perf_counter()
    run(cfg)
    return time.perf_counter() - started, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batches", type=int, default=20)
    args = parser.parse_args()
    os.environ.setdefault("WANDB_MODE", "offline")
    rows = [
        ("TensorBoard only, no pictures / LiDAR / history", ["logger=tensorboard", *NO_PICTURES]),
        ("TensorBoard + pictures + LiDAR + history (default)", ["logger=tensorboard"]),
    ]
    if importlib.util.find_spec("wandb") and importlib.util.find_spec("mlflow"):
        rows += [
            ("+ W&B offline", ["logger=[tensorboard,wandb]"]),
            ("+ MLflow file store", ["logger=[tensorboard,mlflow]"]),
            ("TensorBoard + W&B + MLflow + CSV", ["logger=[tensorboard,wandb,mlflow,csv]"]),
        ]
    print(f"| run ({args.epochs} epochs x {args.batches} batches of 256, online eval + map every epoch) | wall s | vs first |")
    print("|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        first, last_dir = None, None
        for i, (name, overrides) in enumerate(rows):
            seconds, last_dir = one_run(overrides, Path(tmp), f"run{i}", args.epochs, args.batches)
            first = first or seconds
            print(f"| {name} | {seconds:.1f} | {seconds / first:.2f}x |", flush=True)
        started = time.perf_counter()
        write_report(last_dir)
        report_s = time.perf_counter() - started
    z = torch.randn(256, 8, 512)
    started = time.perf_counter()
    lidar(z)
    print(f"\nreport.html written in {report_s * 1000:.0f} ms; LiDAR on 256 x 8 views x 512-d features: {(time.perf_counter() - started) * 1000:.0f} ms")


if __name__ == "__main__":
    main()
