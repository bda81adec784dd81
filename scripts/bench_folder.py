"""Image folders at batched speed: end-to-end training images/s on a folder of mixed-size RGB JPEGs, per-sample views
against the hybrid path (the loader crops and flips on uint8, the device jitters and blurs), and the model-only ceiling.

Makes once, under --cache, a class folder of `--images` RGB JPEGs of mixed sizes (72-112 px a side, any aspect) from
the embedded Fashion-MNIST images, resized and colourised (torchvision.io.encode_jpeg, quality 90), plus 500 for val.
Then, in one run: SimCLR's defaults (`data=image_folder data.source.image_size=32`, 32 px crops) trained end to end
for each path and loader setting (steady-state images/s after `--warmup` steps), and the ceiling: the same method and
backbone stepping in a plain PyTorch loop on pre-made views of the same shapes (no loader, no augmentation).

A `shards:N` row trains from the same images written once as WebDataset shards (`python -m ssl_train.toolkit shard`,
1000 per shard) with `data=webdataset`: the hybrid path streamed from tar files instead of one file per image.

The ceiling is measured before each round of rows and at the end; each row's fraction is against the mean of the ceilings
just before and after it, and the table shows medians over the rounds; the run waits for a 1-minute load
average below --quiet-load first.

Run: python scripts/bench_folder.py [--images 5000] [--steps 30] [--warmup 5] [--rounds 3] [--rows per-sample:1 hybrid:1 hybrid:2 hybrid:0 shards:2]
     [--override data.batch_size=128 ...]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from bench_throughput import QUIET_OVERRIDES  # the quiet overrides every benchmark takes
from torchvision.io import encode_jpeg

from ssl_train.build import build
from ssl_train.composed import compose_run_config
from ssl_train.data.datasets import EmbeddedFashionMNIST

ROOT = Path(__file__).resolve().parents[1]
QUIET = [
    *QUIET_OVERRIDES,
    "callbacks.pictures=null",
    "callbacks.history=null",
    "callbacks.preemption=null",
]
PATHS = {"per-sample": "false", "hybrid": "auto", "shards": "auto"}


def make_folder(root: Path, n_train: int, n_val: int = 500, seed: int = 0) -> Path:
    """<root>/train/<class>/*.jpg and <root>/val/<class>/*.jpg: Fashion-MNIST images colourised (a random foreground
    and background colour each) and resized to a random 72-112 x 72-112 px; made once (a DONE file marks it complete)."""
    if (root / "DONE").is_file():
        return root
    splits = EmbeddedFashionMNIST().load()
    g = torch.Generator().manual_seed(seed)
    for split, data, n in (("train", splits.train, n_train), ("val", splits.test, n_val)):
        for i in range(n):
            image, label = data[i % len(data)]
            grey = image.float() / 255
            fg, bg = 55 + 200 * torch.rand(3, 1, 1, generator=g), 100 * torch.rand(3, 1, 1, generator=g)
            height, width = torch.randint(72, 113, (2,), generator=g).tolist()
            rgb = F.interpolate((grey * fg + (1 - grey) * bg)[None], size=(height, width), mode="bilinear", antialias=True)[0]
            folder = root / split / f"class_{label}"
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{i:05d}.jpg").write_bytes(encode_jpeg(rgb.round().clamp(0, 255).to(torch.uint8), quality=90).numpy().tobytes())
    (root / "DONE").write_text(f"{n_train} train, {n_val} val JPEGs, seed {seed}\n")
    return root


class Meter(pl.Callback):
    """Images/s over training batches after the first `warmup` ones, counted across epochs (a small folder has few batches each)."""

    def __init__(self, warmup: int) -> None:
        self.warmup, self.seen, self.images, self.started, self.elapsed = warmup, 0, 0, 0.0, 0.0

    def on_train_batch_start(self, trainer: pl.Trainer, module: pl.LightningModule, batch, batch_idx: int) -> None:
        if self.seen == self.warmup:
            self.started = time.perf_counter()

    def on_train_batch_end(self, trainer: pl.Trainer, module: pl.LightningModule, outputs, batch, batch_idx: int) -> None:
        if self.seen >= self.warmup:
            self.images += len(batch[1])
            self.elapsed = time.perf_counter() - self.started
        self.seen += 1

    @property
    def rate(self) -> float:
        return self.images / self.elapsed if self.elapsed else float("nan")


def overrides_for(root: Path, on_device: str, workers: int, steps: int, out: str, extra: list[str]) -> list[str]:
    """The command-line overrides of one end-to-end row (SimCLR defaults on the folder at 32 px)."""
    return [
        "data=image_folder",
        f"data.source.root={root}",
        "data.source.image_size=32",
        f"data.num_workers={workers}",
        f"augment.on_device={on_device}",
        f"+trainer.max_steps={steps}",
        "trainer.max_epochs=1000",
        *QUIET,
        f"paths.output_dir={out}",
        *extra,
    ]


def shards_of(root: Path) -> Path:
    """The folder's images as WebDataset shards beside it (written once by the shard tool; needs pip install -e '.[shards]')."""
    from ssl_train.toolkit.shard import shard_data

    shards = root.with_name(root.name + "-shards")
    if not (shards / "sizes.json").is_file():
        limits = ["data.source.train_limit=null", "data.source.test_limit=null"]
        shard_data("image_folder", [f"data.source.root={root}", *limits], shards, 1000)
    return shards


def as_shards(overrides: list[str], shards: Path) -> list[str]:
    """A row's overrides reading the shards (data=webdataset) instead of the folder."""
    swap = {"data=image_folder": "data=webdataset"}
    return [swap.get(o, f"data.source.urls={shards}" if o.startswith("data.source.root=") else o) for o in overrides]


def end_to_end(overrides: list[str], warmup: int) -> tuple[float, object]:
    """Steady-state training images/s of the config, and the built run (its first batch makes the ceiling's views)."""
    pl.seed_everything(0, verbose=False)
    built = build(compose_run_config(overrides))
    meter = Meter(warmup)
    built.trainer.callbacks.append(meter)
    built.trainer.fit(built.module, datamodule=built.datamodule)
    return meter.rate, built


def ceiling(overrides: list[str], steps: int, warmup: int) -> tuple[float, str]:
    """Model-only images/s: the method's forward, backward and optimizer step in a plain loop on one pre-made batch of views
    (the hybrid path's own views of the first batch: the same shapes), no loader and no augmentation."""
    pl.seed_everything(0, verbose=False)
    built = build(compose_run_config(overrides))
    images, labels = next(iter(built.datamodule.train_dataloader()))
    views = built.module.batched_views(images)
    if built.module.channels_last:
        views = [v.contiguous(memory_format=torch.channels_last) for v in views]
    method, batch = built.method.train(), len(labels)
    optimizer, scheduler, _ = built.module.optim.build(method, [], batch, steps, steps)
    started = time.perf_counter()
    for i in range(warmup + steps):
        if i == warmup:
            started = time.perf_counter()
        loss = method(views, labels)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
    return batch * steps / (time.perf_counter() - started), " x ".join(str(tuple(v.shape)) for v in views)


def wait_for_quiet(threshold: float, max_wait: float) -> float:
    """The 1-minute load average once it is below `threshold` (other work on the machine skews every figure), waiting at most `max_wait` s."""
    deadline = time.monotonic() + max_wait
    while os.getloadavg()[0] >= threshold and time.monotonic() < deadline:
        time.sleep(15)
    return os.getloadavg()[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--cache", type=Path, default=ROOT / ".cache" / "ssl_train" / "bench_folder")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument(
        "--rows", nargs="*", default=["per-sample:1", "hybrid:1", "hybrid:2", "hybrid:0"], help="path:num_workers (per-sample, hybrid or shards)"
    )
    parser.add_argument("--override", nargs="*", default=[], help="config overrides for every row and the ceiling")
    parser.add_argument("--quiet-load", type=float, default=0.7, help="start once the 1-minute load average is below this (waits up to --max-wait s)")
    parser.add_argument("--max-wait", type=float, default=600)
    parser.add_argument("--rounds", type=int, default=1, help="alternated rounds of the ceiling and every row; the table shows medians")
    args = parser.parse_args()
    args.rows = list(dict.fromkeys(args.rows))  # each row once: a repeated one would pair its rates with the wrong ceilings
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    root = make_folder(args.cache / f"jpeg{args.images}", args.images)
    load = wait_for_quiet(args.quiet_load, args.max_wait)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cores; folder {root} ({args.images} JPEGs, 72-112 px); "
        f"{args.steps} steps after {args.warmup} warm-up; load average at start: {load:.2f}",
        flush=True,
    )
    if load >= args.quiet_load:
        print(f"WARNING: the load average stayed >= {args.quiet_load} for {args.max_wait:.0f} s: other work shares the cores, the figures are not comparable")
    with tempfile.TemporaryDirectory() as out:
        ceiling_overrides = overrides_for(root, "auto", 0, 1, out, args.override)
        tops: list[float] = []
        rates: dict[str, list[float]] = {row: [] for row in args.rows}
        for round_ in range(args.rounds):  # alternated: ceiling, rows, ..., ceiling; a drift of the machine hits all alike
            tops.append(ceiling(ceiling_overrides, args.steps, args.warmup)[0])
            for row in args.rows:
                path, workers = row.split(":")
                overrides = overrides_for(root, PATHS[path], int(workers), args.warmup + args.steps, out, args.override)
                rate, _ = end_to_end(as_shards(overrides, shards_of(root)) if path == "shards" else overrides, args.warmup)
                rates[row].append(rate)
                print(f"round {round_ + 1}, {row}: {rate:.0f} images/s (load average {os.getloadavg()[0]:.2f}, this run included)", flush=True)
        top, shapes = ceiling(ceiling_overrides, args.steps, args.warmup)
        tops.append(top)
    # each round's rows against the mean of the ceilings measured just before and just after them; medians over rounds
    fractions = {row: [r / ((tops[i] + tops[i + 1]) / 2) for i, r in enumerate(rs)] for row, rs in rates.items()}
    print(
        f"\nmodel-only ceiling (plain loop on pre-made views {shapes}), images/s: {', '.join(f'{t:.0f}' for t in tops)} (before each round and "
        f"at the end); load average at the end: {os.getloadavg()[0]:.2f}\n"
    )
    print(f"| path | images/s (median of {args.rounds}) | fraction of ceiling (median) | fractions per round |\n|---|---|---|---|")
    for row in args.rows:
        path, workers = row.split(":")
        per_round = ", ".join(f"{f:.2f}" for f in fractions[row])
        print(f"| {path}, {workers} worker(s) | {statistics.median(rates[row]):.0f} | {statistics.median(fractions[row]):.2f} | {per_round} |")
    print(f"| model only (ceiling, median) | {statistics.median(tops):.0f} | 1.00 | |")
    print(
        f"\ncommand: python scripts/bench_folder.py --images {args.images} --steps {args.steps} --warmup {args.warmup} --rounds {args.rounds} "
        + f"--rows {' '.join(args.rows)}"
        + (f" --override {' '.join(args.override)}" if args.override else "")
    )
    print("each row: python -m ssl_train " + " ".join(overrides_for(root, "<false|auto>", "<workers>", args.warmup + args.steps, "<out>", args.override)))


if __name__ == "__main__":
    main()
