"""A restricted unpickler for data files: it rebuilds lists, dicts, bytes, numbers and numpy arrays, and refuses any
other global a pickle names (a `__reduce__` payload naming os.system, eval, subprocess, torch.load, ...), so a data file
is read as data and never runs code."""

from __future__ import annotations

import codecs
import importlib
import io
import pickle
from _compat_pickle import IMPORT_MAPPING, NAME_MAPPING
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import IO, Any

import numpy as np

from ssl_train.errors import UserError


def _numpy_core(module: str, name: str) -> Any:
    """`numpy._core.<module>.<name>` (numpy >= 2), else `numpy.core.<module>.<name>` (numpy 1.x)."""
    for package in ("numpy._core", "numpy.core"):
        try:
            return getattr(importlib.import_module(f"{package}.{module}"), name)
        except (ImportError, AttributeError):
            continue
    raise UserError(f"numpy provides no {module}.{name}")  # pragma: no cover - every numpy since 1.16 has both


def _latin1_encode(text: str, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """`_codecs.encode` as protocol-2 pickles use it for bytes (latin1 only: no other codec is looked up)."""
    if not isinstance(text, str) or codecs.lookup(encoding).name != "iso8859-1":
        raise pickle.UnpicklingError(f"_codecs.encode is admitted only for latin1 text, not {encoding!r}")
    return text.encode("latin1", errors)


# (module, name) as a pickle spells it -> how to resolve it; nothing else can be named
_NUMPY_NAMES = {"multiarray": ("_reconstruct", "scalar"), "numeric": ("_frombuffer",)}
ALLOWED: dict[tuple[str, str], Callable[[], Any]] = {
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("numpy", "dtype"): lambda: np.dtype,
    ("_codecs", "encode"): lambda: _latin1_encode,
    **{
        (f"{package}.{module}", name): partial(_numpy_core, module, name)
        for package in ("numpy.core", "numpy._core")
        for module, names in _NUMPY_NAMES.items()
        for name in names
    },
}


class RefusedGlobal(pickle.UnpicklingError):
    """A pickle names a global that is not plain data: loading it would need (and could run) code."""

    def __init__(self, qualified: str) -> None:
        super().__init__(qualified)
        self.qualified = qualified


class DataUnpickler(pickle.Unpickler):
    """`pickle.Unpickler` whose `find_class` admits only numpy array / dtype reconstruction (and latin1 bytes)."""

    def find_class(self, module: str, name: str) -> Any:
        """The admitted global for (module, name), or RefusedGlobal naming it."""
        resolve = ALLOWED.get((module, name))
        if resolve is not None:
            return resolve()
        module, name = NAME_MAPPING.get((module, name), (IMPORT_MAPPING.get(module, module), name))  # Python 2 names, as Python 3 reads them
        raise RefusedGlobal(f"{module}.{name}")


def load_data_pickle(handle: IO[bytes], encoding: str = "bytes") -> Any:
    """Unpickle a data file with DataUnpickler (`encoding` as in pickle.load: 'bytes' keeps Python 2 strings as bytes)."""
    return DataUnpickler(handle, encoding=encoding).load()


def loads_data_pickle(data: bytes, encoding: str = "bytes") -> Any:
    """`load_data_pickle` of an in-memory pickle."""
    return load_data_pickle(io.BytesIO(data), encoding)


def read_data_pickle(path: Path, what: str, real: str) -> Any:
    """Unpickle the file `path` (a `what`; `real` says what real ones hold); every failure is one UserError naming the file."""
    with open(path, "rb") as handle:
        try:
            return load_data_pickle(handle)
        except RefusedGlobal as refused:
            raise UserError(f"{path}: refused: a {what} that names {refused.qualified}, which would need code to load ({real})") from None
        except Exception as error:  # any other unpickling failure means a damaged file
            raise UserError(f"{path}: not a {what} ({type(error).__name__}: {error})") from None
