"""A Hugging Face `datasets` dataset read from disk, never the hub: a `save_to_disk` folder (load_from_disk) or local
.parquet / .arrow files (load_dataset of the packaged builder, splits inferred from the file names: train-*.parquet,
test-*.parquet, ...), with HF_DATASETS_OFFLINE set before the library loads.

Images (an `Image` column, or raw bytes) stay in the memory-mapped Arrow table and are decoded per sample through
ssl_train.data.image_guard (a malformed one is skipped and counted). Labels: an integer or ClassLabel column (its
names become the class names) or strings (sorted). `train_split` / `test_split` name the splits; without a test
split, `test_fraction` of train is held out by a fixed seed (as caption tables do).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ssl_train.constraints import Limit, OpenFraction, PositiveInt
from ssl_train.data.captions import PairDataset, pair_splits, split_settings
from ssl_train.data.datasets import InputSpec, Splits
from ssl_train.data.folders import IMAGENET_MEAN, IMAGENET_STD
from ssl_train.data.image_bytes import EncodedImages
from ssl_train.data.image_guard import DEFAULT_MAX_PIXELS
from ssl_train.errors import DataNotFoundError, UserError


def load_local(path: Path) -> dict[str, Any]:
    """{split name: datasets.Dataset} of a save_to_disk folder or of local parquet / arrow files (never the hub)."""
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # read when `datasets` is first imported: no hub lookups
    try:
        import datasets
    except ImportError:
        raise UserError("data=hf_dataset needs the datasets package: pip install -e '.[hfdata]'") from None
    if not path.exists():
        raise DataNotFoundError(f"data.source.path: {path} does not exist (a save_to_disk folder, or .parquet / .arrow files)")
    if path.is_dir() and ((path / "dataset_dict.json").is_file() or (path / "state.json").is_file()):
        loaded = datasets.load_from_disk(str(path))
    else:
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.suffix in (".parquet", ".arrow"))
        if not files:
            raise DataNotFoundError(f"data.source.path: {path} holds no save_to_disk dataset and no .parquet / .arrow files")
        builder = "parquet" if files[0].suffix == ".parquet" else "arrow"
        loaded = datasets.load_dataset(builder, data_dir=str(path)) if path.is_dir() else datasets.load_dataset(builder, data_files={"train": str(path)})
    return dict(loaded) if isinstance(loaded, datasets.DatasetDict) else {"train": loaded}


def limited_rows(table: Any, limit: int | None, seed: int) -> Any:
    """The first `limit` rows of a fixed-seed shuffle, kept in their order (all rows when limit is None)."""
    return table if limit is None else table.select(np.sort(np.random.default_rng(seed).permutation(len(table))[:limit]))


MAX_CLASSES = 1_000_000  # an integer label at or above it is refused: the class names are range(max label + 1)


def read_image_file(root: Path, name: str) -> bytes:
    """The bytes of the image file a row names by `name`: a relative path inside `root` (the dataset's folder) that is
    a regular file, never a symlink, FIFO or device, checked on the opened file itself (O_NOFOLLOW, then fstat: no
    window between the check and the read); OSError saying why otherwise (the image is then skipped)."""
    relative = Path(name)
    if relative.is_absolute() or ".." in relative.parts:
        raise OSError(f"its image path {name!r} is not relative to the dataset folder {root}")
    path = root / relative
    if not path.resolve().is_relative_to(root.resolve()):
        raise OSError(f"its image path {name!r} leaves the dataset folder {root}")
    try:  # O_NONBLOCK: opening a FIFO never waits for a writer; O_NOFOLLOW: a symlink is never opened
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as error:
        raise OSError(f"its image path {name!r} is not a regular file ({error.strerror})") from None
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(f"its image path {name!r} is not a regular file (a symlink, FIFO or device is never read)")
        return handle.read()


class HFImages(EncodedImages):
    """The images of a datasets.Dataset's `column` (Image feature read undecoded, or bytes), with their labels; a row
    with a path and no bytes is read only from a regular file inside `root` (the dataset's folder)."""

    def __init__(self, table: Any, column: str, labels: list[int], channels: int, max_pixels: int, what: str, root: Path) -> None:
        super().__init__(labels, channels, max_pixels, what)
        self.table, self.column, self.root = table, column, root

    def encoded(self, index: int) -> bytes:
        value = self.table[index][self.column]
        if isinstance(value, dict):  # an Image feature undecoded: {"bytes": ..., "path": ...}
            if value.get("bytes"):
                return bytes(value["bytes"])
            return read_image_file(self.root, str(value["path"])) if value.get("path") else b""
        return bytes(value) if isinstance(value, bytes | bytearray) else b""


class HFDatasetSource:
    """A Hugging Face dataset on disk at `path`: `image_column`, `label_column`, optional `caption_column` (a string or
    a list of strings per row: image-caption pairs); its `train_split` and `test_split` are the probe's splits."""

    def __init__(
        self,
        path: str,
        image_column: str = "image",
        label_column: str = "label",
        caption_column: str | None = None,
        train_split: str = "train",
        test_split: str | None = "test",
        test_fraction: OpenFraction = 0.2,
        image_size: PositiveInt = 224,
        channels: PositiveInt = 3,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        tokenizer: Any = None,
        train_limit: Limit = None,
        test_limit: Limit = None,
        max_pixels: PositiveInt = DEFAULT_MAX_PIXELS,
    ) -> None:
        self.limits, self.max_pixels = split_settings(test_fraction, train_limit, test_limit, max_pixels)
        self.path, self.columns = Path(path).expanduser(), {"image_column": image_column, "label_column": label_column, "caption_column": caption_column}
        self.train_split, self.test_split, self.test_fraction = train_split, test_split, test_fraction
        self.image_size, self.channels, self.mean, self.std, self.tokenizer = image_size, channels, tuple(mean), tuple(std), tokenizer

    def tables(self) -> tuple[Any, Any]:
        """(train, test) datasets.Dataset: the named splits, or train with test_fraction held out (fixed seed)."""
        splits = load_local(self.path)
        for key, split in (("train_split", self.train_split), ("test_split", self.test_split)):
            if split is not None and split not in splits:
                raise UserError(f"data.source.{key}: {self.path} has no split {split!r}; its splits: {', '.join(splits)}")
        train = splits[self.train_split]
        for key, column in self.columns.items():
            if column is not None and column not in train.column_names:
                raise UserError(f"data.source.{key}: {column!r} is not a column of {self.path}; its columns: {', '.join(train.column_names)}")
        if self.test_split is not None:
            test = splits[self.test_split]
        else:
            order = np.random.default_rng(0).permutation(len(train))
            n_test = max(1, int(len(train) * self.test_fraction))
            train, test = train.select(np.sort(order[n_test:])), train.select(np.sort(order[:n_test]))
        return limited_rows(train, self.limits[0], 0), limited_rows(test, self.limits[1], 1)

    def load(self) -> Splits:
        from datasets import Image

        train, test = self.tables()
        image_column, label_column, caption_column = self.columns.values()
        assert image_column is not None and label_column is not None
        feature = train.features[label_column]
        names = list(getattr(feature, "names", None) or [])
        if not names:
            values = [*train[label_column], *test[label_column]]
            if not any(isinstance(v, str) for v in values) and int(max(values)) >= MAX_CLASSES:
                largest = int(max(values))
                raise UserError(
                    f"data.source.label_column: {label_column!r} of {self.path} holds label {largest}; labels must be class indices 0 .. {MAX_CLASSES - 1}"
                )
            names = [str(v) for v in sorted(set(values))] if any(isinstance(v, str) for v in values) else [str(c) for c in range(int(max(values)) + 1)]
        parts = []
        for what, table in (("train", train), ("test", test)):
            if isinstance(table.features[image_column], Image):
                table = table.cast_column(image_column, Image(decode=False))  # bytes as stored: the guard checks them first
            raw = table[label_column]
            labels = [names.index(str(v)) if isinstance(v, str) else int(v) for v in raw]
            images = HFImages(
                table, image_column, labels, self.channels, self.max_pixels, f"{self.path} [{what}] row", self.path if self.path.is_dir() else self.path.parent
            )
            if caption_column is None:
                parts.append(images)
                continue
            captions = [(c,) if isinstance(c, str) else tuple(str(x) for x in c) for c in table[caption_column]]
            parts.append(PairDataset(images, captions))  # type: ignore[arg-type]
        if caption_column is not None:
            return pair_splits(parts[0], parts[1], self.mean, self.std, self.channels, self.image_size, names, self.tokenizer, fixed_size=False)  # type: ignore[arg-type]
        spec = InputSpec(channels=self.channels, size=self.image_size)
        return Splits(parts[0], parts[1], len(names), self.mean, self.std, spec, fixed_size=False, class_names=tuple(names))
