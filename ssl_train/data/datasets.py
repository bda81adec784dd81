"""Image sources read from local files (never downloaded): the embedded default and Fashion-MNIST/MNIST idx files.

A source loads `train` and `test` splits as uint8 tensors (N, C, H, W) with int64 labels and
knows its per-channel mean/std (computed on its train split).
"""

from __future__ import annotations

import gzip
import zlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from ssl_train.constraints import Limit
from ssl_train.errors import DataNotFoundError, UserError

DEBIAN_FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist"
EMBEDDED_FILE = Path(__file__).with_name("embedded") / "fashion_mnist_subset.npz"
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")


class ImageArrayDataset(Dataset):
    """Images held in memory as one uint8 tensor (N, C, H, W) with labels; returns (image, label)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"ImageArrayDataset expects uint8 (N, C, H, W) images, got {images.dtype} {tuple(images.shape)}")
        if len(images) != len(labels):
            raise ValueError(f"ImageArrayDataset: {len(images)} images but {len(labels)} labels")
        self.images, self.labels = images, labels.long()

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index], int(self.labels[index])

    def batch(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Images (B, C, H, W) and labels (B,) of `indices` by one indexing op (what a loader's batch reads)."""
        index = torch.as_tensor(indices, dtype=torch.long)
        return self.images[index], self.labels[index]


@dataclass(frozen=True)
class InputSpec:
    """What one sample of a source is, in the fields its kind needs (the others stay None; ssl_train.modalities reads them).

    image: `channels`, `size` (side in px; the crop size for files of any size); sequence: `length` (steps), `features`
    (per step); waveform: `length` (samples), `features` 1; graph: `nodes`, `features` (per node); text: `length`
    (tokens), `vocab_size`; image-caption pair: the image's `channels` and `size`, the captions' `length` and `vocab_size`.
    """

    channels: int | None = None
    size: int | None = None
    length: int | None = None
    features: int | None = None
    nodes: int | None = None
    vocab_size: int | None = None


@dataclass
class Splits:
    """The loaded splits of a source plus what the pipeline needs to know about them.

    `train`/`test` are labelled (the probe's splits); `pretrain` holds the pretraining samples (default: train;
    label -1 where unknown). `fixed_size` is False for decoded files of any size (views crop them to `input_spec.size`;
    evaluation resizes and centre-crops). `modality` names what a sample is (ssl_train.modalities: image, sequence,
    waveform, graph, text, image_text) and `input_spec` its shape in that kind's own terms.
    """

    train: Dataset
    test: Dataset
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    input_spec: InputSpec
    pretrain: Dataset | None = None
    fixed_size: bool = True
    modality: str = "image"
    tokenizer: Any = None  # text and image-text data: str -> int64 token ids (ssl_train.data.tokenizers)
    class_names: tuple[str, ...] | None = None  # zero-shot prompts and reports; None: class indices only

    @property
    def pretrain_set(self) -> Dataset:
        return self.pretrain if self.pretrain is not None else self.train


def carve_validation(splits: Splits, fraction: float, seed: int = 0) -> Splits:
    """Hold out `fraction` of the labelled train split as the evaluation split (for tuning: test is never looked at).

    The held-out images leave pretraining too when pretraining uses the train split; a separate pretraining set
    (STL-10 unlabeled, an unlabeled folder) is kept as it is.
    """
    if not 0 < fraction < 1:
        raise UserError(f"data.validation_fraction must be in (0, 1) to carve a validation split, got {fraction}")
    order = torch.randperm(len(splits.train), generator=torch.Generator().manual_seed(seed))  # type: ignore[arg-type]
    n_val = max(1, int(len(order) * fraction))
    val_idx, train_idx = order[:n_val].sort().values, order[n_val:].sort().values
    train, val = Subset(splits.train, train_idx.tolist()), Subset(splits.train, val_idx.tolist())
    return replace(splits, train=train, test=val)


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 images (N, C, H, W), scaled to [0, 1]."""
    scaled = images.float().div_(255)
    return tuple(scaled.mean(dim=(0, 2, 3)).tolist()), tuple(scaled.std(dim=(0, 2, 3)).tolist())


def make_splits(
    train_images: np.ndarray, train_labels: np.ndarray, test_images: np.ndarray, test_labels: np.ndarray, pretrain: Dataset | None = None
) -> Splits:
    """Wrap numpy arrays (N, H, W) or (N, C, H, W) into Splits with train-set statistics."""

    def to_nchw(images: np.ndarray) -> torch.Tensor:
        tensor = torch.from_numpy(np.ascontiguousarray(images))
        return tensor.unsqueeze(1) if tensor.ndim == 3 else tensor

    train_x, test_x = to_nchw(train_images), to_nchw(test_images)
    mean, std = channel_stats(train_x)
    num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    return Splits(
        ImageArrayDataset(train_x, torch.from_numpy(train_labels.astype(np.int64))),
        ImageArrayDataset(test_x, torch.from_numpy(test_labels.astype(np.int64))),
        num_classes,
        mean,
        std,
        InputSpec(channels=train_x.shape[1], size=train_x.shape[-1]),
        pretrain=pretrain,
    )


def read_idx(path: Path) -> np.ndarray:
    """Read one idx file (the MNIST format), gzip-compressed or not."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            data = handle.read()
    except (OSError, EOFError, zlib.error) as error:
        raise UserError(f"{path}: cannot be read ({error}); a truncated download? Fetch the file again") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise UserError(f"{path}: not an idx file of unsigned bytes (bad magic number)")
    ndim = data[3]
    if len(data) < 4 + 4 * ndim:
        raise UserError(f"{path}: the idx header is cut short (truncated file?)")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise UserError(f"{path}: header says shape {shape} but the file holds {body.size} values (truncated?)")
    return body.reshape(shape)


def _find_idx(root: Path, stem: str, hint: str) -> Path:
    for candidate in (root / f"{stem}.gz", root / stem):
        if candidate.is_file():
            return candidate
    raise DataNotFoundError(f"data.source.root: expected {stem}[.gz] in {root}, not found. {hint}")


def read_idx_split(root: Path, prefix: str, hint: str = "") -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 28, 28) and labels (N,) of one split ('train' or 't10k') from a folder of idx files."""
    images = read_idx(_find_idx(root, f"{prefix}-images-idx3-ubyte", hint))
    labels = read_idx(_find_idx(root, f"{prefix}-labels-idx1-ubyte", hint))
    if len(images) != len(labels):
        raise UserError(f"{root}: {prefix} split has {len(images)} images but {len(labels)} labels")
    return images, labels


def limited(images: np.ndarray, labels: np.ndarray, limit: int | None, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The first `limit` samples of a fixed-seed shuffle (all of them, in that order, when limit is None)."""
    keep = np.random.default_rng(seed).permutation(len(labels))[:limit]
    return images[keep], labels[keep]


class IdxSource:
    """A dataset in idx files (Fashion-MNIST, MNIST): train-*-idx?-ubyte[.gz] and t10k-*-idx?-ubyte[.gz] under `root`."""

    def __init__(self, root: str, name: str = "fashion_mnist", hint: str = "", train_limit: Limit = None, test_limit: Limit = None) -> None:
        self.root, self.name, self.hint = Path(root).expanduser(), name, hint
        self.train_limit, self.test_limit = train_limit, test_limit

    def load(self) -> Splits:
        if not self.root.is_dir():
            raise DataNotFoundError(f"data.source.root: folder {self.root} does not exist. {self.hint}")
        train = limited(*read_idx_split(self.root, "train", self.hint), self.train_limit, seed=0)
        test = limited(*read_idx_split(self.root, "t10k", self.hint), self.test_limit, seed=1)
        return make_splits(*train, *test)


class EmbeddedFashionMNIST:
    """The default dataset: a class-balanced Fashion-MNIST subset (10k train, 2k test, 28x28 grey) inside the package.

    Fashion-MNIST (c) Zalando SE, MIT licence; see ssl_train/data/embedded/LICENSE.
    Rebuild it with scripts/make_embedded_dataset.py.
    """

    def __init__(self, train_limit: Limit = None, test_limit: Limit = None) -> None:
        self.train_limit, self.test_limit = train_limit, test_limit

    def load(self) -> Splits:
        return make_splits(*embedded_arrays(self.train_limit, self.test_limit))


def embedded_arrays(train_limit: int | None, test_limit: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(train images, train labels, test images, test labels) of the embedded subset, each split limited (fixed-seed shuffle)."""
    if not EMBEDDED_FILE.is_file():
        raise DataNotFoundError(f"the embedded dataset {EMBEDDED_FILE} is missing: reinstall ssl_train or run scripts/make_embedded_dataset.py")
    with np.load(EMBEDDED_FILE) as arrays:
        train = limited(arrays["train_images"], arrays["train_labels"], train_limit, seed=0)
        test = limited(arrays["test_images"], arrays["test_labels"], test_limit, seed=1)
    return *train, *test
