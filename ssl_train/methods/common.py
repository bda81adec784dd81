"""Pieces shared by the method families: encoding views of mixed sizes, and EMA target updates."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn


def encode_views(encoder: Callable[[torch.Tensor], torch.Tensor], views: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Run `encoder` once per group of consecutive same-sized views (global crops, then local crops)."""
    outputs: list[torch.Tensor] = []
    start = 0
    while start < len(views):
        end = start
        while end < len(views) and views[end].shape == views[start].shape:
            end += 1
        outputs.extend(encoder(torch.cat(list(views[start:end]))).chunk(end - start))
        start = end
    return outputs


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


def pairs_over_views(num_global: int, num_views: int, symmetric: bool) -> list[tuple[int, int]]:
    """(i, j) pairs for the loss: i a global view, j any other view; with symmetric=False only j > i."""
    return [(i, j) for i in range(num_global) for j in range(num_views) if j != i and (symmetric or j > i)]


class FeatureQueue(nn.Module):
    """A FIFO of the most recent `size` feature vectors (MoCo's negative queue, NNCLR's support set), saved in checkpoints.

    `random_init=True` starts full of random unit vectors (MoCo, He et al. 2020); otherwise `get()` returns only
    the filled part. `push` takes this rank's batch and enqueues the batch gathered from all ranks.
    """

    def __init__(self, size: int, dim: int, random_init: bool = False) -> None:
        super().__init__()
        if size < 1:
            raise ValueError(f"FeatureQueue: size must be >= 1, got {size}")
        initial = nn.functional.normalize(torch.randn(size, dim), dim=1) if random_init else torch.zeros(size, dim)
        self.register_buffer("features", initial)
        self.register_buffer("pointer", torch.zeros((), dtype=torch.long))
        self.register_buffer("filled", torch.tensor(size if random_init else 0, dtype=torch.long))

    def get(self) -> torch.Tensor:
        """The stored vectors (filled part only), without gradients."""
        return self.features[: int(self.filled)].detach()

    @torch.no_grad()
    def push(self, batch: torch.Tensor) -> None:
        """Enqueue `batch` (N, D) from every rank, overwriting the oldest entries."""
        from ssl_train import dist  # local import: dist is only needed here

        batch = dist.gather_no_grad(batch.detach().to(self.features.dtype))[: len(self.features)]
        size, start = len(self.features), int(self.pointer)
        index = (torch.arange(len(batch), device=batch.device) + start) % size
        self.features[index] = batch
        self.pointer.fill_((start + len(batch)) % size)
        self.filled.fill_(min(size, int(self.filled) + len(batch)))
