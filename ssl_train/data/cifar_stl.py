"""CIFAR-10/100 (python pickle batches) and STL-10 (binary) from local files; never downloaded.

CIFAR batches are read with a restricted unpickler (ssl_train.data.safe_pickle): a batch that names anything besides
numpy array reconstruction is refused in one line, so a crafted file cannot run code.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import ConcatDataset, Dataset

from ssl_train.constraints import Limit, PositiveInt
from ssl_train.data.datasets import ImageArrayDataset, Splits, limited, make_splits
from ssl_train.data.safe_pickle import read_data_pickle
from ssl_train.errors import DataNotFoundError, UserError

CIFAR_LAYOUT = {
    10: ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], b"labels"),
    100: ("cifar-100-python", ["train"], ["test"], b"fine_labels"),
}


def _require(path: Path, hint: str) -> Path:
    if not path.is_file():
        raise DataNotFoundError(f"data.source.root: expected {path.name} in {path.parent}, not found. {hint}")
    return path


class CIFARSource:
    """CIFAR-10 or CIFAR-100 (Krizhevsky 2009) from the official python version: <root>/cifar-10-batches-py/ or
    <root>/cifar-100-python/ (the folder the .tar.gz unpacks to; `root` may also be that folder itself)."""

    def __init__(self, root: str, num_classes: PositiveInt = 10, train_limit: Limit = None, test_limit: Limit = None) -> None:
        if num_classes not in CIFAR_LAYOUT:
            raise UserError(f"data.source.num_classes must be 10 or 100, got {num_classes}")
        self.root, self.num_classes = Path(root).expanduser(), num_classes
        self.train_limit, self.test_limit = train_limit, test_limit

    def _read(self, folder: Path, names: list[str], label_key: bytes, hint: str) -> tuple[np.ndarray, np.ndarray]:
        """(images (N, 3, 32, 32) uint8, labels (N,) int64) of the batches `names`, unpickled as data only."""
        images, labels = [], []
        for name in names:
            path = _require(folder / name, hint)
            batch = read_data_pickle(path, "CIFAR python batch", "real CIFAR batches hold only lists, bytes and numpy arrays")
            if not isinstance(batch, dict) or b"data" not in batch or label_key not in batch:
                raise UserError(f"{path}: not a CIFAR python batch (expected a dict with keys b'data' and {label_key!r})")
            try:
                images.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
                labels.append(np.asarray(batch[label_key], dtype=np.int64).reshape(-1))
            except (TypeError, ValueError, OverflowError) as error:
                raise UserError(f"{path}: not a CIFAR python batch: data must be N x 3072 uint8 and labels N integers ({error})") from None
            if len(images[-1]) != len(labels[-1]) or (labels[-1] < 0).any() or (labels[-1] >= self.num_classes).any():
                raise UserError(f"{path}: {len(images[-1])} images and {len(labels[-1])} labels; labels must be 0..{self.num_classes - 1}")
        return np.concatenate(images), np.concatenate(labels)

    def load(self) -> Splits:
        folder_name, train_names, test_names, label_key = CIFAR_LAYOUT[self.num_classes]
        folder = self.root if self.root.name == folder_name else self.root / folder_name
        hint = f"Download cifar-{self.num_classes}-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html and unpack it into {self.root}."
        if not folder.is_dir():
            raise DataNotFoundError(f"data.source.root: folder {folder} does not exist. {hint}")
        train = limited(*self._read(folder, train_names, label_key, hint), self.train_limit, seed=0)
        test = limited(*self._read(folder, test_names, label_key, hint), self.test_limit, seed=1)
        return make_splits(*train, *test)


class UnlabeledArrayDataset(Dataset):
    """uint8 images (N, C, H, W), possibly a read-only memory map, with label -1 (unknown)."""

    def __init__(self, images: np.ndarray) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return torch.from_numpy(np.array(self.images[index])), -1


class STL10Source:
    """STL-10 (Coates et al. 2011) binary version: <root>/stl10_binary/{train,test}_{X,y}.bin and unlabeled_X.bin.

    Pretraining uses `pretrain_split`: 'unlabeled' (100k images, the standard SSL protocol), 'train+unlabeled' or
    'train'; the probe uses the labelled train (5k) / test (8k) splits. The unlabeled file is memory-mapped.
    """

    SPLITS = ("unlabeled", "train+unlabeled", "train")

    def __init__(self, root: str, pretrain_split: str = "unlabeled", train_limit: Limit = None, test_limit: Limit = None) -> None:
        if pretrain_split not in self.SPLITS:
            raise UserError(f"data.source.pretrain_split must be one of {self.SPLITS}, got {pretrain_split!r}")
        self.root, self.pretrain_split = Path(root).expanduser(), pretrain_split
        self.train_limit, self.test_limit = train_limit, test_limit

    @staticmethod
    def _images(path: Path) -> np.ndarray:
        raw = np.memmap(path, dtype=np.uint8, mode="r")
        if raw.size % (3 * 96 * 96):
            raise UserError(f"{path}: size {raw.size} is not a whole number of 3x96x96 images (truncated?)")
        return raw.reshape(-1, 3, 96, 96).transpose(0, 1, 3, 2)  # the files are column-major

    def load(self) -> Splits:
        folder = self.root if self.root.name == "stl10_binary" else self.root / "stl10_binary"
        hint = f"Download stl10_binary.tar.gz from https://cs.stanford.edu/~acoates/stl10/ and unpack it into {self.root}."
        if not folder.is_dir():
            raise DataNotFoundError(f"data.source.root: folder {folder} does not exist. {hint}")
        arrays = {}
        for split in ("train", "test"):
            images = self._images(_require(folder / f"{split}_X.bin", hint))
            labels = np.fromfile(_require(folder / f"{split}_y.bin", hint), dtype=np.uint8).astype(np.int64) - 1
            if len(images) != len(labels):
                raise UserError(f"{folder}: {split} has {len(images)} images but {len(labels)} labels")
            arrays[split] = limited(np.ascontiguousarray(images), labels, self.train_limit if split == "train" else self.test_limit, seed=int(split == "test"))
        pretrain: Dataset | None = None
        if self.pretrain_split != "train":
            unlabeled = UnlabeledArrayDataset(self._images(_require(folder / "unlabeled_X.bin", hint)))
            if self.pretrain_split == "train+unlabeled":
                train_set = ImageArrayDataset(torch.from_numpy(arrays["train"][0]), torch.from_numpy(arrays["train"][1]))
                pretrain = ConcatDataset([train_set, unlabeled])
            else:
                pretrain = unlabeled
        return make_splits(*arrays["train"], *arrays["test"], pretrain=pretrain)
