"""ssl_train: config-driven self-supervised pretraining with a linear-probe evaluation."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["load_encoder"]


def __getattr__(name: str) -> Any:
    """`ssl_train.load_encoder(DIR)` without importing torch at `import ssl_train` time."""
    if name == "load_encoder":
        from ssl_train.portable import load_encoder

        return load_encoder
    raise AttributeError(f"module 'ssl_train' has no attribute {name!r}")
