"""Throughput beyond images: view pipelines for audio and sequences (batched vs per sample), CPC training steps, and
DGI / GRACE epochs per second on WordNet's noun graph (82k nodes) and the Fashion-MNIST kNN graph.

Run: python scripts/bench_modalities.py [--steps 10] [--skip-wordnet]

Every figure is the median of `--rounds` timed rounds after a warm-up, on this machine's CPU (or the GPU when there is
one), built from the real configs (`python -m ssl_train method=... data=...` compose the same objects).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

from ssl_train.build import build

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


def timed(work: Callable[[], object], rounds: int) -> float:
    """Median seconds of `rounds` calls of work() after one warm-up call."""
    work()
    seconds = []
    for _ in range(rounds):
        start = time.perf_counter()
        work()
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds)


def built_from(overrides: list[str]):  # noqa: ANN201 - ssl_train.build.Built
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[*overrides, "logger=csv", "paths.output_dir=/tmp/bench_modalities", "callbacks.preemption=null"])
    return build(cfg)


def view_rows(rounds: int) -> list[str]:
    rows = []
    for name, overrides in (("audio (spoken digits, 8000 samples)", ["method=simclr", "data=spoken_digits", "augment=audio", "backbone=recurrent"]),
                            ("sequence (seq. Fashion-MNIST, 28 x 28)", ["method=simclr", "data=seq_fashion_mnist", "augment=sequence", "backbone=recurrent"])):
        built = built_from(overrides)
        train, views = built.datamodule.splits.train, built.datamodule.views()
        batch = torch.stack([train[i][0] for i in range(256)])
        batched = views.batched()
        per_batch = timed(lambda: batched(batch), rounds)  # noqa: B023
        per_sample = timed(lambda: [views(sample) for sample in batch], rounds)  # noqa: B023
        rows.append(f"| {name} | 2 views | {256 / per_batch:,.0f} | {256 / per_sample:,.0f} | {per_sample / per_batch:.1f}x |")
    return rows


def training_rows(configs: list[tuple[str, list[str]]], steps: int, rounds: int) -> list[str]:
    rows = []
    for name, overrides in configs:
        built = built_from(overrides)
        method, module = built.method.train(), built.module
        optimizer = torch.optim.Adam(method.parameters(), lr=1e-4)
        loader = built.datamodule.train_dataloader()
        batch, labels = next(iter(loader))
        steps_per_epoch = len(loader)

        def step(batch=batch, labels=labels, method=method, module=module, optimizer=optimizer) -> None:  # noqa: ANN001
            for _ in range(steps):
                optimizer.zero_grad(set_to_none=True)
                method(module.batched_views(batch), labels)["loss"].backward()
                optimizer.step()

        seconds = timed(step, rounds) / steps
        samples = len(labels)
        rows.append(f"| {name} | {samples} | {steps_per_epoch} | {1 / seconds:.2f} | {samples / seconds:,.0f} | {1 / (seconds * steps_per_epoch):.3f} |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--skip-wordnet", action="store_true", help="leave out the WordNet rows (no wordnet-base installed)")
    args = parser.parse_args()
    torch.manual_seed(0)
    print("| views | per batch | batched samples/s | per-sample samples/s | batched speed-up |")
    print("|---|---|---|---|---|")
    for row in view_rows(args.rounds):
        print(row, flush=True)
    configs = [
        ("CPC, seq. Fashion-MNIST", ["method=cpc", "data=seq_fashion_mnist"]),
        ("CPC, spoken digits (conv front-end)", ["method=cpc", "data=spoken_digits"]),
        ("DGI, Fashion-MNIST kNN graph (12k nodes)", ["method=dgi", "data=fmnist_knn_graph"]),
        ("GRACE, Fashion-MNIST kNN graph (12k nodes)", ["method=grace", "data=fmnist_knn_graph"]),
    ]
    if not args.skip_wordnet:
        configs += [("DGI, WordNet nouns (82k nodes)", ["method=dgi", "data=wordnet_graph"])]
    print()
    print("| training | batch (samples / nodes) | steps per epoch | steps/s | samples/s | epochs/s |")
    print("|---|---|---|---|---|---|")
    for row in training_rows(configs, args.steps, args.rounds):
        print(row, flush=True)


if __name__ == "__main__":
    main()
