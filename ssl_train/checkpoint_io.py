"""Checkpoint files: atomic writes that survive kills and full disks, reads that never run code from the file."""

from __future__ import annotations

import os
import pickle
import re
import shutil
import zipfile
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from ssl_train.errors import UserError
from ssl_train.sharded_checkpoint import SHARDS_KEY, gathered

TRUST_HINT = "trust_checkpoint=true (toolkit: --trust-checkpoint)"


def read_checkpoint(path: str | os.PathLike, trust: bool = False, key: str = "ckpt_path") -> dict[str, Any]:
    """torch.load with weights_only=True (tensors and plain containers only: a crafted file cannot run code), or
    the full unpickler when `trust` is set; every way a file can be unreadable becomes one UserError naming `key`."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"{key}: no checkpoint at {path}")
    if path.stat().st_size == 0:
        raise UserError(f"{key}: {path} is empty (0 bytes; a write that never finished?): use another checkpoint")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=not trust)
    except pickle.UnpicklingError as error:
        named = re.search(r"GLOBAL\s+([\w.]+)", str(error))  # torch's weights-only refusal of a pickle that names code to import
        if named:
            what = f" ({named.group(1)})"
            raise UserError(
                f"{key}: {path} names code{what} that it needs to load, and unpickling it would run that code: refused. "
                f"ssl_train's own checkpoints are plain tensors and containers; if you trust where this file came from, add {TRUST_HINT}"
            ) from None
        raise UserError(f"{key}: {path} is truncated or corrupted, not a readable torch checkpoint (its pickle data is malformed)") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as error:
        raise UserError(f"{key}: {path} is truncated or corrupted, not a readable torch checkpoint ({first_line(error)})") from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise UserError(f"{key}: {path} is not a Lightning/ssl_train checkpoint (no 'state_dict' in it)")
    if SHARDS_KEY in checkpoint:  # trainer=fsdp's sharded checkpoint: its weights gathered whole from the shard folder
        return gathered(path, checkpoint, trust=trust)
    return checkpoint


def state_dict_mismatch(error: RuntimeError) -> str:
    """load_state_dict's multi-line 'Error(s) in loading state_dict' as one phrase: its first detail and how many follow."""
    details = [line.strip() for line in str(error).splitlines()[1:] if line.strip()]
    if not details:
        return first_line(error)
    return details[0] + (f" and {len(details) - 1} more" if len(details) > 1 else "")


def first_line(error: BaseException) -> str:
    """The one informative line of an exception message (the last line of a re-raised worker traceback)."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    if any("Traceback" in line for line in lines):  # "Caught X in DataLoader worker ... Original Traceback ... pkg.XError: message"
        return re.sub(r"^[\w.]+(Error|Exception|Interrupt): ", "", lines[-1])
    return lines[0]


def write_failure(error: OSError | RuntimeError, folder: Path) -> str:
    """Why a write failed, in a few words: torch's zip writer reports a full disk as a RuntimeError ("unexpected pos ...",
    "PytorchStreamWriter failed writing file ..."), so a disk with (almost) no space left is named as such."""
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        free = None
    if free is not None and free < 16 * 2**20:
        return f"No space left on device: {free} bytes free; torch: {first_line(error)}"
    return first_line(error)


class AtomicCheckpointIO(TorchCheckpointIO):
    """TorchCheckpointIO whose save is atomic on POSIX (a reader sees the old file or the new one, never half of one)
    and whose load is `read_checkpoint` (weights only unless `trust`).

    Lightning's own save stages the file in the system temp dir and moves it, which degrades to a plain copy
    (not atomic) when that dir is on another filesystem than the run directory. A failed write (disk full,
    unwritable dir) leaves the previous checkpoint intact and stops the run with one line.
    """

    def __init__(self, trust: bool = False) -> None:
        super().__init__()
        self.trust = trust
        self.steps_saved: dict[str, int | None] = {}  # resolved path -> global_step of the last checkpoint written there

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any | None = None) -> None:
        target = Path(path)
        staging = target.with_name(f".{target.name}.tmp-{os.getpid()}")
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            staging.unlink(missing_ok=True)  # a stale one (a killed process had our pid); O_NOFOLLOW: a symlink is never followed
            with os.fdopen(os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644), "wb") as handle:
                torch.save(checkpoint, handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(staging, target)
        except (OSError, RuntimeError) as error:  # a full disk: OSError from the file, or RuntimeError from torch's zip writer
            kept = f"the previous {target.name} is intact" if target.is_file() else f"no {target.name} was written before"
            raise UserError(
                f"writing checkpoint {target} failed ({write_failure(error, target.parent)}): {kept}. Free space or point "
                "paths.output_dir at a writable disk, then resume with ckpt_path=<that checkpoint>"
            ) from None
        finally:
            staging.unlink(missing_ok=True)
        self.steps_saved[str(target.resolve())] = checkpoint.get("global_step")

    def load_checkpoint(self, path: str | os.PathLike, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        return read_checkpoint(path, trust=self.trust)
