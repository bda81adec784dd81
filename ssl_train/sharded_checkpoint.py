"""Sharded checkpoints of trainer=fsdp: `NAME.ckpt` is an ordinary checkpoint file holding everything but the weights
and optimizer state (epoch, step, callbacks, config, schedulers) and the name of a sibling folder `NAME.ckpt.shards-*`
where every rank wrote its shards with torch.distributed.checkpoint (DCP).

- Atomic like AtomicCheckpointIO: the shards go to a new folder first; then the file is replaced atomically to name it,
  then older folders are removed. A reader sees the old file and its old shards or the new file and its new shards.
- Everything that reads checkpoints as data (export, evaluation, load_encoder, backbone.weights) gets the full state
  dict gathered from the shards (`gathered`, on one process), so a sharded run exports the same `model.safetensors`.
- Read as data only: DCP unpickles its `.metadata` and non-tensor items with plain pickle; here the metadata pickle may
  name only DCP's own metadata classes and the non-tensor items are read with torch.load(weights_only=True), unless
  the user trusts the file (trust_checkpoint=true).
"""

from __future__ import annotations

import io
import pickle
import re
import shutil
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint._traverse import set_element
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner, DefaultSavePlanner, _EmptyStateDictLoadPlanner
from torch.distributed.checkpoint.metadata import Metadata, StorageMeta
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict, set_optimizer_state_dict
from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

from ssl_train.errors import UserError

SHARDS_KEY = "ssl_train_shards"  # in the checkpoint file: the name of its shard folder, a sibling of the file
TRUST_HINT = "trust_checkpoint=true (toolkit: --trust-checkpoint)"
PATH_CLASSES = {"PosixPath", "PurePosixPath", "WindowsPath", "PureWindowsPath", "Path"}
# what the pickle of a DCP `.metadata` file may name (module -> names): DCP's dataclasses, torch sizes, dtypes and layouts
METADATA_GLOBALS = {
    "torch.distributed.checkpoint.metadata": {  # its dataclasses and enums by name (the module also holds os, torch, ...)
        "Metadata",
        "MetadataIndex",
        "TensorStorageMetadata",
        "BytesStorageMetadata",
        "ChunkStorageMetadata",
        "TensorProperties",
        "StorageMeta",
        "_MEM_FORMAT_ENCODING",
    },
    "torch.distributed.checkpoint.filesystem": {"_StorageInfo"},
    "torch.serialization": {"_get_layout"},
    "torch": {"Size", *(name for name in dir(torch) if isinstance(getattr(torch, name, None), torch.dtype))},
    "pathlib": PATH_CLASSES,
    "pathlib._local": PATH_CLASSES,  # where Python 3.13 pickles its path classes from
    "collections": {"OrderedDict"},
}


class CodeInPickle(pickle.UnpicklingError):
    """A pickle names a global that is not data (os.system, eval, a module)."""


class _MetadataUnpickler(pickle.Unpickler):
    """Unpickles a DCP metadata file, refusing any global outside METADATA_GLOBALS (a payload naming os.system, eval, ...);
    a dotted name (module.os.system: protocol 4 resolves attribute chains) is never one of them."""

    def find_class(self, module: str, name: str) -> Any:
        if "." in name or name not in METADATA_GLOBALS.get(module, set()):
            raise CodeInPickle(f"{module}.{name} is not DCP metadata")
        return super().find_class(module, name)


def read_metadata_as_data(stream: Any) -> Metadata:
    """A DCP `.metadata` pickle read as data: only DCP's metadata classes, and the result must be a Metadata whose
    storage entries name files inside the shard folder (bare names, non-negative offsets and lengths)."""
    metadata = _MetadataUnpickler(stream).load()
    if not isinstance(metadata, Metadata):
        raise ValueError(f"the metadata is a {type(metadata).__name__}, not DCP metadata")
    check_storage_entries(metadata)
    return metadata


def check_storage_entries(metadata: Metadata) -> None:
    """Every storage entry names a file of the shard folder itself (no path, no '..') and a non-negative byte range."""
    for info in (metadata.storage_data or {}).values():
        name, offset, length = getattr(info, "relative_path", None), getattr(info, "offset", None), getattr(info, "length", None)
        if not isinstance(name, str) or name in ("", ".", "..") or Path(name).name != name or "\\" in name:
            raise ValueError(f"a storage entry names {name!r}, not a file of the shard folder")
        for value in (offset, length):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"a storage entry of {name} has the byte range {offset!r}, {length!r}")


class DataReader(FileSystemReader):
    """FileSystemReader whose metadata is read with _MetadataUnpickler."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> Any:
        path = self._get_metadata_path(kwargs.get("rank"))
        with self.fs.create_stream(path, "rb") as stream:
            metadata = read_metadata_as_data(stream)
        storage_meta = metadata.storage_meta if metadata.storage_meta is not None else StorageMeta()
        storage_meta.load_id = self.load_id
        metadata.storage_meta = storage_meta
        return metadata


def _load_bytes_as_data(planner: DefaultLoadPlanner, read_item: Any, value: io.BytesIO) -> None:
    """DefaultLoadPlanner.load_bytes with torch.load(weights_only=True): non-tensor items are plain values, never code."""
    obj = torch.load(value, weights_only=True)
    if planner.flatten_state_dict:
        set_element(planner.original_state_dict, planner.mappings[read_item.dest_index.fqn], obj)
    else:
        planner.state_dict[read_item.dest_index.fqn] = obj


class DataLoadPlanner(DefaultLoadPlanner):
    load_bytes = _load_bytes_as_data


class DataEmptyLoadPlanner(_EmptyStateDictLoadPlanner):
    load_bytes = _load_bytes_as_data


class TrustedReader(FileSystemReader):
    """FileSystemReader for a trusted checkpoint (plain pickle), still reading only files inside the shard folder."""

    def set_up_storage_reader(self, metadata: Metadata, is_coordinator: bool, *args: Any, **kwargs: Any) -> None:
        check_storage_entries(metadata)
        super().set_up_storage_reader(metadata, is_coordinator, *args, **kwargs)


def _reader(folder: Path, trust: bool) -> FileSystemReader:
    return TrustedReader(folder) if trust else DataReader(folder)


def shards_of(path: Path, meta: dict[str, Any], trust: bool = False) -> Path:
    """The shard folder a checkpoint file names, its metadata checked to be data (unless `trust`); one line when it is
    missing or names code."""
    name = str(meta[SHARDS_KEY])
    folder = path.parent / name
    if not re.fullmatch(re.escape(path.name) + r"\.shards-[\w.-]+", name) or folder.is_symlink():  # a sibling folder, never a path elsewhere
        raise UserError(f"{path} names the shard folder {name!r}: a sharded checkpoint's shards are the folder {path.name}.shards-* beside it")
    if not (folder / ".metadata").is_file():
        raise UserError(f"{path} is a sharded checkpoint whose shards {folder} are missing: keep the folder next to the file")
    if not trust:
        try:
            with open(folder / ".metadata", "rb") as stream:
                read_metadata_as_data(stream)
        except CodeInPickle as error:
            raise UserError(
                f"{path}: its shard metadata names code ({error}), and unpickling it would run that code: refused. "
                f"If you trust where it came from, add {TRUST_HINT}"
            ) from None
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, RecursionError) as error:
            raise UserError(f"{path}: its shard metadata {folder / '.metadata'} is truncated or corrupted ({type(error).__name__}: {error})") from None
    return folder


def is_sharded(path: Any, trust: bool = False) -> bool:
    """Whether `path` is the checkpoint file of a sharded checkpoint (it names a shard folder)."""
    file = Path(path)
    if not file.is_file():
        return False
    try:
        meta = torch.load(file, map_location="cpu", mmap=True, weights_only=not trust)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError):  # not readable here: the checkpoint reader names why
        return False
    return isinstance(meta, dict) and SHARDS_KEY in meta


def gathered(path: Path, meta: dict[str, Any], trust: bool = False) -> dict[str, Any]:
    """The checkpoint `meta` read from `path` with its full state dict gathered from the shards, in this one process."""
    state: dict[str, Any] = {}
    try:
        _load_state_dict(
            state,
            storage_reader=_reader(shards_of(path, meta, trust), trust),
            planner=(_EmptyStateDictLoadPlanner if trust else DataEmptyLoadPlanner)(keys={"state_dict"}),
            no_dist=True,
        )
    except (OSError, RuntimeError, ValueError, KeyError, AssertionError, TypeError, AttributeError, EOFError, pickle.UnpicklingError) as error:
        raise UserError(f"{path}: its shards are unreadable ({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})") from None
    return {**{k: v for k, v in meta.items() if k != SHARDS_KEY}, "state_dict": state.get("state_dict", {})}


def remove_shards(path: Any, keep: str | None = None) -> None:
    """Remove the shard folders of checkpoint file `path` (all, or all but `keep`)."""
    file = Path(path)
    for folder in file.parent.glob(f"{file.name}.shards-*"):
        if folder.name != keep and folder.is_dir():
            shutil.rmtree(folder, ignore_errors=True)


def write_shards(state: dict[str, Any], folder: Path) -> None:
    """Every rank writes its shards of `state` to `folder` (DCP). An entry that every rank holds whole, not sharded (a
    buffer: BatchNorm's running statistics stay each rank's own under FSDP), is written from rank 0, as DDP's checkpoint
    holds rank 0's; DCP's default writes it from whichever rank has the least to write."""
    dcp.save(state, checkpoint_id=folder, planner=DefaultSavePlanner(dedup_save_to_lowest_rank=True))


def save(strategy: Any, checkpoint: dict[str, Any], filepath: Any) -> None:
    """Every rank writes its shards of the weights and optimizer states to a new folder; then rank 0 writes the checkpoint
    file naming it (strategy.checkpoint_io: atomic, records the step) and removes the older folders."""
    path = Path(strategy.broadcast(str(filepath)))
    name = strategy.broadcast(f"{path.name}.shards-{checkpoint.get('global_step', 0)}-{time.time_ns()}")
    state = {"state_dict": checkpoint.pop("state_dict")}
    state.update({f"optimizer_{i}": optimizer for i, optimizer in enumerate(checkpoint.pop("optimizer_states", []))})
    write_shards(state, path.parent / name)
    strategy.barrier("sharded_checkpoint.save")
    if strategy.is_global_zero:
        strategy.checkpoint_io.save_checkpoint({**checkpoint, "state_dict": {}, SHARDS_KEY: name}, path)
        remove_shards(path, keep=name)
    strategy.barrier("sharded_checkpoint.saved")


def load(strategy: Any, filepath: Any) -> dict[str, Any]:
    """Resume: each rank reads its shards of the weights and optimizer states into the sharded model and optimizers;
    returns the rest of the checkpoint (epoch, step, callbacks, schedulers) as Lightning restores it."""
    path = Path(strategy.broadcast(str(filepath)))
    trust = bool(getattr(strategy.checkpoint_io, "trust", False))
    meta = torch.load(path, map_location="cpu", weights_only=not trust)
    folder, model = shards_of(path, meta, trust), strategy.model
    planner = DefaultLoadPlanner if trust else DataLoadPlanner
    module_state = {"state_dict": get_model_state_dict(model)}
    dcp.load(module_state, storage_reader=_reader(folder, trust), planner=planner())
    model.load_state_dict(module_state["state_dict"], strict=strategy.lightning_module.strict_loading)
    saved = set(_reader(folder, trust).read_metadata().state_dict_metadata)
    for i, optimizer in enumerate(strategy.optimizers):
        key = f"optimizer_{i}"
        optimizer_state = {key: saved_states_only(get_optimizer_state_dict(model, optimizer), key, saved)}
        dcp.load(optimizer_state, storage_reader=_reader(folder, trust), planner=planner())
        # strict=False: a parameter the checkpoint holds no state for gets none, as in the run that saved it
        set_optimizer_state_dict(model, optimizer, optim_state_dict=optimizer_state[key], options=StateDictOptions(cpu_offload=True, strict=False))
    return {k: v for k, v in meta.items() if k not in (SHARDS_KEY, "state_dict")}


def saved_states_only(template: dict[str, Any], key: str, saved: set[str]) -> dict[str, Any]:
    """The optimizer state dict `template` (every parameter's state, as torch initialises it for loading) less the states
    the checkpoint does not hold (`saved`: its flattened keys, `key.state.<param>.<name>`): a parameter that had no gradient
    before the save (DINO's last layer in its first epoch, a frozen one) has no optimizer state, and must get none back."""
    states = {
        name: kept
        for name, values in template["state"].items()
        if (kept := {field: value for field, value in values.items() if f"{key}.state.{name}.{field}" in saved})
    }
    return {**template, "state": states}
