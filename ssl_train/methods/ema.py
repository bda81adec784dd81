"""EMA target networks (BYOL, MoCo, DINO): the momentum schedule and the update, in one place."""

from __future__ import annotations

import math

import torch
from torch import nn


def cosine_momentum(step: int, max_steps: int, base: float, final: float = 1.0) -> float:
    """BYOL's EMA coefficient: tau = final - (final - base) * (cos(pi * step / max_steps) + 1) / 2."""
    progress = min(1.0, step / max(1, max_steps))
    return final - (final - base) * (math.cos(math.pi * progress) + 1) / 2


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, momentum: float) -> None:
    """target <- momentum * target + (1 - momentum) * online, for parameters and float buffers (BN stats)."""
    for t, o in zip(target.parameters(), online.parameters(), strict=True):
        t.mul_(momentum).add_(o.detach(), alpha=1 - momentum)
    for t, o in zip(target.buffers(), online.buffers(), strict=True):
        if t.dtype.is_floating_point:
            t.mul_(momentum).add_(o.detach(), alpha=1 - momentum)
        else:
            t.copy_(o)
