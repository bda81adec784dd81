"""`python -m ssl_train.toolkit shard --data OPTION --out DIR [--shard-size N] [--set KEY=VALUE ...]`: any image source
(a configs/data option: image folders, the embedded arrays, caption folders and tables) as WebDataset tar shards
that `data=webdataset data.source.urls=DIR` trains from.

Writes DIR/train-000000.tar ... (the train split in a fixed-seed shuffled order, so shards and the probe's first
samples mix the classes), DIR/test-000000.tar ... (in order), DIR/sizes.json ({shard: samples}) and DIR/classes.json.
Image files are copied byte for byte (JPEG, PNG, WebP, GIF); arrays and other formats are written as PNG. A sample
is `<key>.<ext>` + `<key>.cls` (+ `<key>.txt`, one caption a line). A DIR that exists and is not empty is refused.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Subset
from torchvision.io import encode_png

from ssl_train.build import build_datamodule
from ssl_train.composed import compose_run_config
from ssl_train.data.captions import PairDataset
from ssl_train.data.folders import ImageFileDataset
from ssl_train.data.shard_reading import IMAGE_MEMBERS, require_webdataset
from ssl_train.data.shards import CLASSES_FILE, SIZES_FILE
from ssl_train.errors import UserError

Sample = tuple[bytes, str, int, tuple[str, ...] | None]  # encoded image, its member suffix, label, captions


def encoded_samples(dataset: Dataset, indices: list[int]) -> Iterator[Sample]:
    """(encoded image, suffix, label, captions or None) of `indices` of a split, looking through Subset and PairDataset;
    image files are read as their bytes, anything else decoded by the dataset and written as PNG."""
    if isinstance(dataset, Subset):
        yield from encoded_samples(dataset.dataset, [int(dataset.indices[i]) for i in indices])
        return
    captions = dataset.captions if isinstance(dataset, PairDataset) else None
    images: Any = dataset.images if isinstance(dataset, PairDataset) else dataset
    for i in indices:
        suffix = images.paths[i].suffix.lower().lstrip(".") if isinstance(images, ImageFileDataset) else ""
        if suffix in IMAGE_MEMBERS:
            data, label = images.paths[i].read_bytes(), int(images.labels[i])
        else:
            image, label = images[i]
            data, suffix = encode_png(torch.as_tensor(image, dtype=torch.uint8)).numpy().tobytes(), "png"
        yield data, suffix, int(label), (tuple(captions[i]) if captions is not None else None)


def write_split(samples: Iterator[Sample], out: Path, split: str, shard_size: int) -> dict[str, int]:
    """Write `samples` as out/<split>-NNNNNN.tar shards of `shard_size` samples; {shard name: samples}."""
    import webdataset as wds

    sizes: dict[str, int] = {}
    writer: Any = None
    for n, (data, suffix, label, captions) in enumerate(samples):
        if n % shard_size == 0:
            if writer is not None:
                writer.close()
            name = f"{split}-{n // shard_size:06d}.tar"
            writer, sizes[name] = wds.TarWriter(str(out / name), encoder=False, mtime=0.0), 0
        member = {"__key__": f"{n:08d}", suffix: data, "cls": str(label).encode()}
        if captions is not None:
            member["txt"] = "\n".join(captions).encode("utf-8")
        writer.write(member)
        sizes[name] += 1
    if writer is not None:
        writer.close()
    return sizes


def claim_empty_dir(out: Path) -> Path:
    """`out`, created; one that exists and holds anything is refused (shards are never overwritten)."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"--out: {out} exists and is not an empty folder; refusing to overwrite it (choose a new folder)")
    out.mkdir(parents=True, exist_ok=True)
    return out


def shard_data(option: str, overrides: list[str], out: Path, shard_size: int) -> dict[str, Any]:
    """Write the train and test splits of configs/data option `option` (with `overrides`) as shards under `out`."""
    require_webdataset()
    if shard_size < 1:
        raise UserError(f"--shard-size must be >= 1, got {shard_size}")
    splits = build_datamodule(compose_run_config([f"data={option}", *overrides], extra=["data.batch_size=1"]).data).splits  # no batches here
    if splits.modality not in ("image", "image_text"):
        raise UserError(f"--data {option}: holds {splits.modality} samples; shards hold images (with captions)")
    out = claim_empty_dir(out)
    train_order = np.random.default_rng(0).permutation(len(splits.train)).tolist()  # type: ignore[arg-type]
    sizes = write_split(encoded_samples(splits.train, train_order), out, "train", shard_size)
    sizes |= write_split(encoded_samples(splits.test, list(range(len(splits.test)))), out, "test", shard_size)  # type: ignore[arg-type]
    (out / SIZES_FILE).write_text(json.dumps(sizes, indent=1) + "\n")
    names = list(splits.class_names or [str(c) for c in range(splits.num_classes)])
    (out / CLASSES_FILE).write_text(json.dumps(names) + "\n")
    counts = {split: sum(n for name, n in sizes.items() if name.startswith(split)) for split in ("train", "test")}
    return {
        "out": str(out),
        "shards": len(sizes),
        "samples": counts,
        "captions": splits.modality == "image_text",
        "train_with": f"data=webdataset data.source.urls={out}",
    }


def add_parser(commands: Any) -> None:
    """The `shard` subcommand (it reads a data option, not a checkpoint)."""
    sub = commands.add_parser("shard", help="write a data option's train and test splits as WebDataset tar shards", description=__doc__)
    sub.formatter_class = argparse.RawDescriptionHelpFormatter
    sub.set_defaults(function=lambda args: shard_data(args.data, args.set, Path(args.out).expanduser(), args.shard_size))
    sub.add_argument("--data", required=True, help="a configs/data option, e.g. image_folder, caption_table, default (the embedded images)")
    sub.add_argument("--set", nargs="*", default=[], help="overrides for --data, e.g. data.source.root=DIR")
    sub.add_argument("--out", required=True, help="a new (or empty) folder for the shards")
    sub.add_argument("--shard-size", type=int, default=1000, help="samples per shard (default 1000)")
