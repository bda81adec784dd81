"""Image files on disk: class sub-folders (ImageNet-style) and flat unlabeled folders or file lists.

Images are decoded per sample by torchvision.io after ssl_train.data.image_guard has checked the file's structure
(a malformed PNG can crash the native decoder) and its header's pixel count (`max_pixels`, decompression bombs);
an unreadable, corrupt or refused file is skipped with a warning naming the reason (another image is served in its
place) and counted, never a crash mid-epoch. An animated GIF is served as its first frame.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ssl_train.constraints import Limit, PositiveInt
from ssl_train.data.datasets import InputSpec, Splits, limited
from ssl_train.data.image_bytes import EncodedImages
from ssl_train.data.image_guard import DEFAULT_MAX_PIXELS
from ssl_train.errors import DataNotFoundError, UserError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class ImageFileDataset(EncodedImages):
    """Decode image files to uint8 (C, H, W) tensors; corrupt files are skipped (next file served) and counted.

    The skip-and-count logic (a process-shared flag per file, each bad one warned about once) is EncodedImages';
    a file is read once, so the bytes checked are the bytes decoded.
    """

    corrupt_hint = "is the dataset folder corrupt?"

    def __init__(self, paths: list[Path], labels: list[int], channels: int = 3, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
        super().__init__(labels, channels, max_pixels, "an image folder")
        self.paths = paths

    def encoded(self, index: int) -> bytes:
        return self.paths[index].read_bytes()

    def name(self, index: int) -> str:
        return str(self.paths[index])


def list_images(folder: Path) -> list[Path]:
    """Image files directly or recursively under `folder`, sorted."""
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def class_folder_split(folder: Path, classes: list[str] | None, hint: str) -> tuple[list[Path], list[int], list[str]]:
    """(paths, labels, class names) of a folder with one sub-folder per class."""
    if not folder.is_dir():
        raise DataNotFoundError(f"data.source.root: folder {folder} does not exist. {hint}")
    classes = classes or sorted(p.name for p in folder.iterdir() if p.is_dir())
    if not classes:
        raise DataNotFoundError(f"data.source.root: {folder} has no class sub-folders. {hint}")
    paths, labels = [], []
    for label, name in enumerate(classes):
        files = list_images(folder / name)
        paths += files
        labels += [label] * len(files)
    if not paths:
        raise DataNotFoundError(
            f"data.source.root: {folder} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in its class sub-folders "
            f"{', '.join(classes[:5])}{', ...' if len(classes) > 5 else ''}. {hint}"
        )
    return paths, labels, classes


def _limited_files(paths: list[Path], labels: list[int], limit: int | None, seed: int) -> tuple[list[Path], list[int]]:
    """The first `limit` files of a fixed-seed shuffle (all, in order, when limit is None)."""
    if limit is None:
        return paths, labels
    keep = limited(np.arange(len(paths)), np.arange(len(paths)), limit, seed)[0]
    return [paths[i] for i in keep], [labels[i] for i in keep]


def check_max_pixels(max_pixels: int) -> int:
    """`data.source.max_pixels` when it is a positive integer; else one UserError."""
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 1:
        raise UserError(f"data.source.max_pixels must be a positive integer (pixels per image), got {max_pixels!r}")
    return max_pixels


class ImageFolderSource:
    """<root>/<train_dir>/<class>/*.jpg and <root>/<test_dir>/<class>/*.jpg (ImageNet-100, custom data).

    Views crop to `image_size`; the probe resizes to image_size / 0.875 and centre-crops. Normalisation uses
    `mean`/`std` (ImageNet statistics by default). Images whose header claims more than `max_pixels` are skipped.
    """

    def __init__(
        self,
        root: str,
        train_dir: str = "train",
        test_dir: str = "val",
        image_size: PositiveInt = 224,
        channels: PositiveInt = 3,
        mean: tuple[float, ...] = IMAGENET_MEAN,
        std: tuple[float, ...] = IMAGENET_STD,
        train_limit: Limit = None,
        test_limit: Limit = None,
        max_pixels: PositiveInt = DEFAULT_MAX_PIXELS,
    ) -> None:
        self.max_pixels = check_max_pixels(max_pixels)
        self.root, self.train_dir, self.test_dir = Path(root).expanduser(), train_dir, test_dir
        self.image_size, self.channels, self.mean, self.std = image_size, channels, tuple(mean), tuple(std)
        self.train_limit, self.test_limit = train_limit, test_limit

    def load(self) -> Splits:
        """Train and test splits of the class folders (limits applied); an empty folder is one DataNotFoundError naming it."""
        hint = f"Expected {self.root}/{self.train_dir}/<class>/<image> and {self.root}/{self.test_dir}/<class>/<image>."
        train_paths, train_labels, classes = class_folder_split(self.root / self.train_dir, None, hint)
        test_paths, test_labels, _ = class_folder_split(self.root / self.test_dir, classes, hint)
        train_paths, train_labels = _limited_files(train_paths, train_labels, self.train_limit, seed=0)
        test_paths, test_labels = _limited_files(test_paths, test_labels, self.test_limit, seed=1)
        return Splits(
            ImageFileDataset(train_paths, train_labels, self.channels, self.max_pixels),
            ImageFileDataset(test_paths, test_labels, self.channels, self.max_pixels),
            len(classes),
            self.mean,
            self.std,
            InputSpec(channels=self.channels, size=self.image_size),
            fixed_size=False,
        )


class UnlabeledFolderSource:
    """Pretrain on unlabeled images (a flat/recursive folder, or a text file listing one path per line);
    the probe uses the labelled `probe` source (e.g. an ImageFolderSource), which also sets size and statistics."""

    def __init__(self, root: str, probe: Any, train_limit: Limit = None, test_limit: Limit = None, max_pixels: PositiveInt = DEFAULT_MAX_PIXELS) -> None:
        self.max_pixels = check_max_pixels(max_pixels)
        if test_limit is not None:
            raise UserError("data.source.test_limit: the probe's splits come from data.source.probe; set data.source.probe.test_limit")
        self.root, self.probe, self.train_limit = Path(root).expanduser(), probe, train_limit

    def load(self) -> Splits:
        if self.root.is_file():
            base = self.root.parent
            paths = [base / line.strip() for line in self.root.read_text().splitlines() if line.strip()]
            missing = [p for p in paths if not p.is_file()]
            if missing:
                raise DataNotFoundError(f"data.source.root: {len(missing)} listed image(s) missing, e.g. {missing[0]}")
        elif self.root.is_dir():
            paths = list_images(self.root)
        else:
            raise DataNotFoundError(f"data.source.root: {self.root} is neither a folder of images nor a file list")
        if not paths:
            raise DataNotFoundError(f"data.source.root: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) under {self.root}")
        if self.probe is None:
            raise UserError("data.source.probe: unlabeled pretraining needs a labelled source for the probe (e.g. an image folder)")
        splits = self.probe.load()
        paths = _limited_files(paths, [-1] * len(paths), self.train_limit, seed=0)[0]
        splits.pretrain = ImageFileDataset(paths, [-1] * len(paths), splits.input_spec.channels, self.max_pixels)
        return splits
