"""Users' .npz / .npy arrays read as data: never unpickled (allow_pickle=False), every array's header (dtype, shape)
checked against the bytes the file really holds before anything is allocated, and the values checked where a bad one
would otherwise surface later as something else (NaN/inf features as a diverging learning rate, a label of 2**40 as an
out-of-memory probe). Each refusal is one UserError naming the file (`where`) and the array."""

from __future__ import annotations

import math
import os
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import IO

import numpy as np

from ssl_train.errors import UserError

MAX_CLASSES = 1_000_000  # labels are class indices: the probe's output layer has max(label) + 1 units
NUMERIC = "bool, int, uint or float"
READ_ERRORS = (OSError, ValueError, EOFError, zipfile.BadZipFile, MemoryError)


def memory_bytes() -> int:
    """This machine's physical memory in bytes (2**40 where the OS does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        return 1 << 40


def check_header(handle: IO[bytes], stored: int, where: str, name: str) -> None:
    """Refuse an .npy stream (`stored` bytes in all) whose dtype is not numeric or whose shape needs more bytes than it holds."""
    version = np.lib.format.read_magic(handle)
    if version not in ((1, 0), (2, 0)):
        raise UserError(f"{where}: array {name} is in .npy format version {version}; allowed: 1.0 or 2.0 with a {NUMERIC} dtype")
    reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, _, dtype = reader(handle)
    if dtype.hasobject or dtype.kind not in "biuf" or dtype.fields is not None:
        raise UserError(f"{where}: array {name} has dtype {dtype}; allowed: {NUMERIC} arrays (no strings, objects or records)")
    count = math.prod(shape)
    needed, held = count * dtype.itemsize, stored - handle.tell()
    if needed > held or needed > memory_bytes():
        raise UserError(
            f"{where}: array {name}'s header claims shape {tuple(shape)} ({count} elements, {needed} bytes) but the file holds "
            f"{held} bytes for it{' and this machine has less memory' if needed > memory_bytes() else ''}: a corrupt or crafted file"
        )


def read_npz(path: Path, names: Sequence[str], where: str, optional: Sequence[str] = (), lacks_hint: str = "") -> dict[str, np.ndarray]:
    """The arrays `names` (and those of `optional` it holds) of an .npz file, every header checked before any is read."""
    try:
        with zipfile.ZipFile(path) as archive:
            members = {info.filename.removesuffix(".npy"): info for info in archive.infolist()}
            missing = [k for k in names if k not in members]
            if missing:
                raise UserError(f"{where}: the archive lacks {', '.join(missing)} (it holds {', '.join(members) or 'nothing'}){lacks_hint}")
            wanted = [*names, *(k for k in optional if k in members)]
            for name in wanted:
                with archive.open(members[name]) as handle:
                    check_header(handle, members[name].file_size, where, name)
        with np.load(path, allow_pickle=False) as arrays:
            return {name: arrays[name] for name in wanted}
    except UserError:
        raise
    except READ_ERRORS as error:
        raise UserError(f"{where}: not a readable .npz file ({type(error).__name__}: {error})") from None


def read_npy(path: Path, where: str, name: str) -> np.ndarray:
    """One .npy file's array, its header checked before it is read."""
    try:
        with open(path, "rb") as handle:
            check_header(handle, path.stat().st_size, where, name)
        return np.load(path, allow_pickle=False)
    except UserError:
        raise
    except READ_ERRORS as error:
        raise UserError(f"{where}: cannot read {path.name} ({type(error).__name__}: {error}); a truncated file?") from None


def check_finite(values: np.ndarray, where: str, name: str) -> None:
    """Refuse an array holding NaN or inf: a data problem, named at load time rather than as a diverging loss."""
    bad = int(np.count_nonzero(~np.isfinite(values))) if values.dtype.kind == "f" else 0
    if bad:
        raise UserError(
            f"{where}: array {name} holds NaN/inf values ({bad} of {values.size}): fix or drop those samples; "
            "training on them diverges whatever the learning rate"
        )


def check_labels(labels: np.ndarray, where: str, name: str) -> None:
    """Refuse labels that are not a 1-d integer array of class indices 0..MAX_CLASSES - 1."""
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise UserError(f"{where}: array {name} must be a 1-d array of integer class labels, got shape {labels.shape} dtype {labels.dtype}")
    if labels.size and (int(labels.min()) < 0 or int(labels.max()) >= MAX_CLASSES):
        bad = int(labels.min()) if int(labels.min()) < 0 else int(labels.max())
        raise UserError(f"{where}: array {name} holds label {bad}; labels must be class indices 0..{MAX_CLASSES - 1} (num_classes is the largest + 1)")
