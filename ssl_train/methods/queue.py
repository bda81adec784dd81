"""FeatureQueue: MoCo's queue of negatives and NNCLR's support set, saved in checkpoints and shared across ranks."""

from __future__ import annotations

import torch
from torch import nn

from ssl_train.constraints import PositiveInt
from ssl_train.counters import HostCounters


class FeatureQueue(HostCounters):
    """A FIFO of the most recent `size` feature vectors (MoCo's negative queue, NNCLR's support set), saved in checkpoints.

    `random_init=True` starts full of random unit vectors (MoCo, He et al. 2020); otherwise `get()` returns only
    the filled part. `push` takes this rank's batch and enqueues the batch gathered from all ranks. The pointer and fill
    level are counters (in checkpoints, read on the host): neither call waits for the device.
    """

    # buffers (register_buffer below)
    features: torch.Tensor
    pointer: torch.Tensor
    filled: torch.Tensor

    def __init__(self, size: PositiveInt, dim: PositiveInt, random_init: bool = False) -> None:
        super().__init__()
        if size < 1:
            raise ValueError(f"FeatureQueue: size must be >= 1, got {size}")
        initial = nn.functional.normalize(torch.randn(size, dim), dim=1) if random_init else torch.zeros(size, dim)
        self.register_buffer("features", initial)
        self.register_counter("pointer")
        self.register_counter("filled", size if random_init else 0)

    @property
    def full(self) -> bool:
        return self.counter("filled") == len(self.features)

    def get(self) -> torch.Tensor:
        """The stored vectors (filled part only), without gradients."""
        return self.features[: self.counter("filled")].detach()

    @torch.no_grad()
    def push(self, batch: torch.Tensor) -> None:
        """Enqueue `batch` (N, D) from every rank, overwriting the oldest entries."""
        from ssl_train import dist  # local import: dist is only needed here

        batch = dist.gather_no_grad(batch.detach().to(self.features.dtype))[: len(self.features)]
        size, start = len(self.features), self.counter("pointer")
        index = (torch.arange(len(batch), device=batch.device) + start) % size
        self.features[index] = batch
        self.set_counter("pointer", (start + len(batch)) % size)
        self.set_counter("filled", min(size, self.counter("filled") + len(batch)))
