"""Sequence and waveform sources read from local files: sequential Fashion-MNIST (embedded) and user arrays (.npz / .npy).

A sequence sample is a float32 tensor (T, F): T time steps of F features; a waveform is (T,) samples. Per-feature
mean and std come from the train split; the views and the evaluation transform standardise with them. User arrays
are read as data by ssl_train.data.array_files (numeric dtypes only, headers checked, NaN/inf and absurd labels refused).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ssl_train.constraints import Limit
from ssl_train.data.array_files import check_finite, check_labels, read_npy, read_npz
from ssl_train.data.datasets import InputSpec, Splits, embedded_arrays, limited
from ssl_train.errors import DataNotFoundError, UserError


class SequenceArrayDataset(Dataset):
    """Sequences (N, T, F) or waveforms (N, T) held in memory as float32, with int64 labels; returns (sample, label).
    `skipped` counts the unreadable files left out when it was read."""

    def __init__(self, samples: torch.Tensor, labels: torch.Tensor, skipped: int = 0) -> None:
        if samples.ndim not in (2, 3) or len(samples) != len(labels):
            raise ValueError(f"SequenceArrayDataset expects (N, T[, F]) samples and N labels, got {tuple(samples.shape)} and {len(labels)}")
        self.samples, self.labels, self.skipped = samples.float(), labels.long(), skipped

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.samples[index], int(self.labels[index])


def sequence_splits(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray, where: str, skipped: tuple[int, int] = (0, 0)) -> Splits:
    """Splits of sequences (N, T, F) (modality 'sequence') or waveforms (N, T) ('waveform'), statistics from train;
    `skipped` is the number of unreadable files left out of (train, test)."""
    for name, x, y in (("train", train_x, train_y), ("test", test_x, test_y)):
        if x.ndim not in (2, 3):
            raise UserError(f"{where}: {name} samples must be (N, T) waveforms or (N, T, F) sequences, got shape {x.shape}")
        if len(x) == 0 or x.shape[1] == 0:
            raise UserError(f"{where}: the {name} split is empty (shape {x.shape}): every sequence needs at least one time step")
        if len(x) != len(y):
            raise UserError(f"{where}: {name} has {len(x)} samples but {len(y)} labels")
        if x.dtype.kind not in "biuf":
            raise UserError(f"{where}: array {name}_x has dtype {x.dtype}; allowed: bool, int, uint or float samples")
        check_labels(np.asarray(y), where, f"{name}_y")
        check_finite(x, where, f"{name}_x")
    if train_x.shape[1:] != test_x.shape[1:]:
        raise UserError(f"{where}: train samples are {train_x.shape[1:]} but test samples {test_x.shape[1:]}; both splits need one shape")
    train, test = torch.from_numpy(np.ascontiguousarray(train_x, dtype=np.float32)), torch.from_numpy(np.ascontiguousarray(test_x, dtype=np.float32))
    steps = train if train.ndim == 3 else train.unsqueeze(-1)
    mean, std = steps.mean(dim=(0, 1)), steps.std(dim=(0, 1)).clamp_min(1e-6)
    num_classes = int(max(train_y.max(), test_y.max())) + 1
    return Splits(
        SequenceArrayDataset(train, torch.from_numpy(train_y.astype(np.int64)), skipped[0]),
        SequenceArrayDataset(test, torch.from_numpy(test_y.astype(np.int64)), skipped[1]),
        num_classes,
        tuple(mean.tolist()),
        tuple(std.tolist()),
        InputSpec(length=train.shape[1], features=steps.shape[-1]),
        modality="sequence" if train.ndim == 3 else "waveform",
    )


class SequentialFashionMNIST:
    """The embedded Fashion-MNIST subset read row by row: 28 time steps of 28 pixel values in [0, 1] (sequential MNIST,
    Le et al. 2015, on Fashion-MNIST). Nothing to install; the labels are the image classes."""

    modalities = ("sequence",)

    def __init__(self, train_limit: Limit = None, test_limit: Limit = None) -> None:
        self.train_limit, self.test_limit = train_limit, test_limit

    def load(self) -> Splits:
        train_x, train_y, test_x, test_y = embedded_arrays(self.train_limit, self.test_limit)
        return sequence_splits(train_x / np.float32(255), train_y, test_x / np.float32(255), test_y, "data=seq_fashion_mnist")


class SequenceArrays:
    """Your own arrays: one `.npz` holding train_x, train_y, test_x, test_y, or a folder with those four `.npy` files.

    `*_x` is (N, T, F) for feature sequences or (N, T) for waveforms; `*_y` holds integer class labels.
    """

    KEYS = ("train_x", "train_y", "test_x", "test_y")
    modalities = ("sequence", "waveform")

    def __init__(self, path: str, train_limit: Limit = None, test_limit: Limit = None) -> None:
        self.path, self.train_limit, self.test_limit = Path(path).expanduser(), train_limit, test_limit

    def _read(self) -> dict[str, np.ndarray]:
        """The four arrays of the .npz or the folder of .npy files, headers checked before reading."""
        where = f"data.source.path={self.path}"
        if self.path.is_dir():
            missing = [k for k in self.KEYS if not (self.path / f"{k}.npy").is_file()]
            if missing:
                raise DataNotFoundError(f"{where}: expected {', '.join(f'{k}.npy' for k in missing)} in the folder")
            return {k: read_npy(self.path / f"{k}.npy", where, k) for k in self.KEYS}
        if self.path.is_file():
            return read_npz(self.path, self.KEYS, where)
        raise DataNotFoundError(f"{where}: no such file or folder; give a .npz with {', '.join(self.KEYS)} or a folder of those .npy files")

    def load(self) -> Splits:
        """Train and test splits of the arrays (limits applied), every array checked before use."""
        arrays = self._read()
        for split in ("train", "test"):
            x, y = arrays[f"{split}_x"], arrays[f"{split}_y"]
            check_labels(y, f"data.source.path={self.path}", f"{split}_y")
            if x.ndim == 0 or len(x) != len(y):
                raise UserError(f"data.source.path={self.path}: {split}_x holds {len(x) if x.ndim else 'no'} samples but {split}_y {len(y)} labels")
        train = limited(arrays["train_x"], arrays["train_y"], self.train_limit, seed=0)
        test = limited(arrays["test_x"], arrays["test_y"], self.test_limit, seed=1)
        return sequence_splits(*train, *test, f"data.source.path={self.path}")
