"""Image-caption pairs for image-text methods (CLIP): the embedded Fashion-MNIST images with synthetic captions, a
folder of images with same-named .txt captions, or a CSV / JSONL table of image path and caption.

A sample is ((image uint8 (C, H, W), captions: a tuple of str), label). Training views take one caption at random
(as CLIP training on COCO-style data does), evaluation reads the first; the tokenizer is made from the train
captions (`Splits.tokenizer`). Unreadable images (and images over `max_pixels`) are skipped and counted like any image
folder's; caption rows that do not decode or lack a column are skipped and counted like any text file's.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ssl_train.constraints import Limit, OpenFraction, PositiveInt
from ssl_train.data.datasets import FASHION_MNIST_CLASSES, ImageArrayDataset, InputSpec, Splits, channel_stats, embedded_arrays
from ssl_train.data.folders import IMAGE_SUFFIXES, IMAGENET_MEAN, IMAGENET_STD, ImageFileDataset, check_max_pixels
from ssl_train.data.image_guard import DEFAULT_MAX_PIXELS
from ssl_train.data.text import read_embedded_glosses
from ssl_train.data.text_records import SkipCount, read_records
from ssl_train.data.tokenizers import byte_tokenizer
from ssl_train.errors import DataNotFoundError, UserError

log = logging.getLogger(__name__)

# Synthetic captions of the embedded pairs: a template, a name of the class, sometimes its WordNet gloss
CLASS_PHRASES = {
    "T-shirt/top": ("t-shirt", "tee shirt", "top"),
    "Trouser": ("pair of trousers", "pair of pants", "pair of slacks"),
    "Pullover": ("pullover", "sweater", "jumper"),
    "Dress": ("dress", "frock", "gown"),
    "Coat": ("coat", "jacket", "overcoat"),
    "Sandal": ("sandal", "strappy sandal", "summer sandal"),
    "Shirt": ("shirt", "button-down shirt", "blouse"),
    "Sneaker": ("sneaker", "trainer", "running shoe"),
    "Bag": ("bag", "handbag", "purse"),
    "Ankle boot": ("ankle boot", "boot", "short boot"),
}
CAPTION_TEMPLATES = (
    "a grey photo of a {}.",
    "a small low-resolution picture of a {}.",
    "product shot of a {} on a black background.",
    "{}",
    "a {}, that is {gloss}.",
    "this is a {}: {gloss}.",
    "catalogue image of a {}.",
    "a centred, greyscale image of one {}.",
)


def first_caption(captions: Sequence[str] | str) -> str:
    return captions if isinstance(captions, str) else captions[0]


class PairDataset(Dataset):
    """Images (a dataset of (image, label)) with their captions: returns ((image, captions), label)."""

    def __init__(self, images: Dataset, captions: Sequence[tuple[str, ...]]) -> None:
        if len(images) != len(captions):  # type: ignore[arg-type]
            raise ValueError(f"PairDataset: {len(images)} images but {len(captions)} caption tuples")  # type: ignore[arg-type]
        self.images, self.captions = images, list(captions)

    def __len__(self) -> int:
        return len(self.captions)

    def __getitem__(self, index: int) -> tuple[tuple[torch.Tensor, tuple[str, ...]], int]:
        image, label = self.images[index]
        return (image, self.captions[index]), label

    @property
    def skipped(self) -> int:
        return int(getattr(self.images, "skipped", 0))


def pair_splits(
    train: PairDataset,
    test: PairDataset,
    mean: Sequence[float],
    std: Sequence[float],
    channels: int,
    image_size: int,
    class_names: Sequence[str],
    tokenizer: Any,
    fixed_size: bool,
) -> Splits:
    """Splits of image-caption pairs (modality 'image_text'), the tokenizer made from the train captions."""
    tokenizer = (tokenizer or byte_tokenizer)(corpus=[c for captions in train.captions for c in captions])
    spec = InputSpec(channels=channels, size=image_size, length=tokenizer.max_length, vocab_size=tokenizer.vocab_size)
    return Splits(
        train,
        test,
        len(class_names),
        tuple(mean),
        tuple(std),
        spec,
        fixed_size=fixed_size,
        modality="image_text",
        tokenizer=tokenizer,
        class_names=tuple(class_names),
    )


def synthetic_captions(labels: np.ndarray, per_image: int, seed: int) -> list[tuple[str, ...]]:
    """`per_image` captions per label: a template, a class phrase, the class's WordNet gloss where the template asks."""
    glosses = json.loads(str(read_embedded_glosses()["class_glosses_json"]))
    rng = np.random.default_rng(seed)
    out = []
    for label in labels:
        name = FASHION_MNIST_CLASSES[int(label)]
        phrases = CLASS_PHRASES[name]
        out.append(
            tuple(
                CAPTION_TEMPLATES[rng.integers(len(CAPTION_TEMPLATES))].format(phrases[rng.integers(len(phrases))], gloss=glosses[name])
                for _ in range(per_image)
            )
        )
    return out


class CaptionedFashionMNIST:
    """The embedded Fashion-MNIST subset (10k / 2k) paired with SYNTHETIC captions: each image gets `captions_per_image`
    captions composed from templates, names of its class and the class's WordNet gloss ("a sneaker, that is a canvas
    shoe with a pliable rubber sole."). Captions say nothing an image's label does not: zero-shot accuracy on these
    pairs measures how well the towers align class names, not open-vocabulary understanding."""

    modalities = ("image_text",)

    def __init__(self, captions_per_image: PositiveInt = 3, train_limit: Limit = None, test_limit: Limit = None, tokenizer: Any = None) -> None:
        if captions_per_image < 1:
            raise UserError(f"data.source.captions_per_image must be >= 1, got {captions_per_image}")
        self.captions_per_image, self.train_limit, self.test_limit, self.tokenizer = captions_per_image, train_limit, test_limit, tokenizer

    def load(self) -> Splits:
        train_x, train_y, test_x, test_y = embedded_arrays(self.train_limit, self.test_limit)
        train_images, test_images = torch.from_numpy(train_x).unsqueeze(1), torch.from_numpy(test_x).unsqueeze(1)
        mean, std = channel_stats(train_images)
        n = self.captions_per_image
        train = PairDataset(ImageArrayDataset(train_images, torch.from_numpy(train_y.astype(np.int64))), synthetic_captions(train_y, n, 0))
        test = PairDataset(ImageArrayDataset(test_images, torch.from_numpy(test_y.astype(np.int64))), synthetic_captions(test_y, n, 1))
        return pair_splits(train, test, mean, std, 1, train_images.shape[-1], FASHION_MNIST_CLASSES, self.tokenizer, fixed_size=True)


def _split_pairs(
    paths: list[Path],
    captions: list[tuple[str, ...]],
    labels: list[int],
    test_fraction: float,
    channels: int,
    limits: tuple[int | None, int | None] = (None, None),
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> tuple[PairDataset, PairDataset]:
    """(train, test) pairs, `test_fraction` held out by a fixed seed, each split cut to its limit (tests, smoke runs)."""
    order = np.random.default_rng(0).permutation(len(paths))
    n_test = max(1, int(len(paths) * test_fraction))
    if len(paths) - n_test < 1:
        raise UserError(f"data.source: {len(paths)} pair(s) cannot be split into train and test (test_fraction {test_fraction})")
    train_order, test_order = order[n_test:][: limits[0]], order[:n_test][: limits[1]]

    def part(index: np.ndarray) -> PairDataset:
        images = ImageFileDataset([paths[i] for i in index], [labels[i] for i in index], channels, max_pixels)
        return PairDataset(images, [captions[i] for i in index])

    return part(train_order), part(test_order)


def split_settings(test_fraction: float, train_limit: Limit, test_limit: Limit, max_pixels: int) -> tuple[tuple[Limit, Limit], int]:
    """Check a caption folder's, caption table's or HF dataset's test_fraction and max_pixels; returns its (train, test) limits and max_pixels."""
    if not 0 < test_fraction < 1:
        raise UserError(f"data.source.test_fraction must be in (0, 1), got {test_fraction}")
    return (train_limit, test_limit), check_max_pixels(max_pixels)


class CaptionFolder:
    """Images with a caption file of the same name beside them (`dog.jpg` + `dog.txt`, one caption per line) under
    `root`. In class sub-folders (`root/<class>/...`) the folder names are the labels (linear probe, zero-shot
    prompts); images directly under `root` form one class, so only `eval=[retrieval]` means something.
    `test_fraction` of the pairs is held out (fixed seed)."""

    modalities = ("image_text",)

    def __init__(
        self,
        root: str,
        image_size: PositiveInt = 224,
        channels: PositiveInt = 3,
        test_fraction: OpenFraction = 0.2,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        tokenizer: Any = None,
        train_limit: Limit = None,
        test_limit: Limit = None,
        max_pixels: PositiveInt = DEFAULT_MAX_PIXELS,
    ) -> None:
        self.limits, self.max_pixels = split_settings(test_fraction, train_limit, test_limit, max_pixels)
        self.root, self.image_size, self.channels, self.test_fraction = Path(root).expanduser(), image_size, channels, test_fraction
        self.mean, self.std, self.tokenizer = tuple(mean), tuple(std), tokenizer

    def load(self) -> Splits:
        if not self.root.is_dir():
            raise DataNotFoundError(f"data.source.root: folder {self.root} does not exist; expected images with same-named .txt captions beside them")
        skips = SkipCount(self.root)
        images = sorted(p for p in self.root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        paths, captions, folders = [], [], []
        for image in images:
            caption_file = image.with_suffix(".txt")
            if not caption_file.is_file():
                skips.reasons["no caption file"] += 1
                continue
            try:
                lines = tuple(line.strip() for line in caption_file.read_text(encoding="utf-8").splitlines() if line.strip())
            except UnicodeDecodeError:
                skips.reasons["caption not UTF-8"] += 1
                continue
            if not lines:
                skips.reasons["empty caption"] += 1
                continue
            paths.append(image)
            captions.append(lines)
            folders.append(str(image.parent.relative_to(self.root)))
        skips.report()
        if not paths:
            raise DataNotFoundError(f"data.source.root: no image with a caption file beside it under {self.root} ({skips.total()} skipped)")
        class_names = sorted(set(folders))
        labels = [class_names.index(f) for f in folders]
        train, test = _split_pairs(paths, captions, labels, self.test_fraction, self.channels, self.limits, self.max_pixels)
        return pair_splits(train, test, self.mean, self.std, self.channels, self.image_size, class_names, self.tokenizer, fixed_size=False)


class CaptionTable:
    """A .csv (header row) or .jsonl table of image paths (relative to the table's folder, or absolute) and captions,
    optionally a label column; rows with a missing image or column are skipped and counted."""

    modalities = ("image_text",)

    def __init__(
        self,
        path: str,
        image_column: str = "image",
        caption_column: str = "caption",
        label_column: str | None = None,
        image_size: PositiveInt = 224,
        channels: PositiveInt = 3,
        test_fraction: OpenFraction = 0.2,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        tokenizer: Any = None,
        train_limit: Limit = None,
        test_limit: Limit = None,
        max_pixels: PositiveInt = DEFAULT_MAX_PIXELS,
    ) -> None:
        self.limits, self.max_pixels = split_settings(test_fraction, train_limit, test_limit, max_pixels)
        self.path, self.columns = Path(path).expanduser(), (image_column, caption_column, label_column)
        self.image_size, self.channels, self.test_fraction, self.tokenizer = image_size, channels, test_fraction, tokenizer
        self.mean, self.std = tuple(mean), tuple(std)

    def load(self) -> Splits:
        image_column, caption_column, label_column = self.columns
        rows, skips = read_records(self.path, [c for c in self.columns if c is not None])
        by_image: dict[Path, tuple[list[str], str]] = {}
        for row in rows:
            image = Path(row[image_column]).expanduser()
            image = image if image.is_absolute() else self.path.parent / image
            if not image.is_file():
                skips.reasons["image file missing"] += 1
                continue
            captions, label = by_image.setdefault(image, ([], str(row[label_column]) if label_column else "all"))
            captions.append(str(row[caption_column]))
        skips.report()
        if not by_image:
            raise DataNotFoundError(f"data.source.path: {self.path} lists no readable image-caption pair ({skips.total()} skipped)")
        class_names = sorted({label for _, label in by_image.values()})
        paths = list(by_image)
        captions_per_image = [tuple(by_image[p][0]) for p in paths]
        labels = [class_names.index(by_image[p][1]) for p in paths]
        train, test = _split_pairs(paths, captions_per_image, labels, self.test_fraction, self.channels, self.limits, self.max_pixels)
        return pair_splits(train, test, self.mean, self.std, self.channels, self.image_size, class_names, self.tokenizer, fixed_size=False)
