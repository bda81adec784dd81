"""Losses and similarity scores in float32 whatever the autocast context.

Under `precision=bf16-mixed` / `16-mixed`, autocast runs every matmul and linear in half precision even on
float32 inputs, so similarity logits divided by temperatures of 0.04-0.2 would lose most of their mantissa
(bf16 keeps 8 bits). Every loss's forward, DINO's last layer and SwAV's prototype scores therefore run with
autocast disabled on float32 inputs, as the reference implementations do (e.g. DINO's loss casts to float).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import torch

F = TypeVar("F", bound=Callable[..., Any])


HALF = (torch.float16, torch.bfloat16)


def _to_float32(value: Any) -> Any:
    """Half-precision tensors (also inside lists/tuples) as float32; float32/float64 and integer tensors unchanged."""
    if isinstance(value, torch.Tensor):
        return value.float() if value.dtype in HALF else value
    if isinstance(value, list | tuple):
        return type(value)(_to_float32(v) for v in value)
    return value


def _device_type(values: Any) -> str:
    for value in values:
        if isinstance(value, torch.Tensor):
            return value.device.type
        if isinstance(value, list | tuple) and value:
            found = _device_type(value)
            if found:
                return found
    return ""


def float32(function: F) -> F:
    """Decorate a forward: half-precision tensor arguments (also inside lists/tuples) become float32, autocast is off."""

    @functools.wraps(function)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        device_type = _device_type([*args, *kwargs.values()]) or "cpu"
        with torch.autocast(device_type=device_type, enabled=False):
            return function(self, *_to_float32(args), **{k: _to_float32(v) for k, v in kwargs.items()})

    return wrapper  # type: ignore[return-value]


def float32_linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x @ weight.T in float32 with autocast off: scores that a loss divides by a small temperature (DINO, SwAV)."""
    x = _to_float32(x)
    with torch.autocast(device_type=x.device.type, enabled=False):
        return torch.nn.functional.linear(x, weight.to(x.dtype))
