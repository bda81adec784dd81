"""The training sampler: an order fixed by (seed, epoch) that a run resumed mid-epoch continues exactly where it stopped."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Dataset, DistributedSampler


class ResumableSampler(DistributedSampler):
    """DistributedSampler (one process = one replica of rank 0) that can start an epoch after its first batches.

    The permutation of epoch e depends only on (seed, e) — no draw from the global RNG — so a resumed run sees the
    same images in the same order; `resume_at(epoch, batches_done)` skips what the interrupted run already trained on.
    Being a DistributedSampler, Lightning neither replaces nor wraps it under DDP, and calls its `set_epoch`.
    """

    def __init__(self, dataset: Dataset, batch_size: int, seed: int, shuffle: bool = True, num_replicas: int = 1, rank: int = 0) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=True)
        self.batch_size = batch_size
        self._resume: tuple[int, int] | None = None

    def resume_at(self, epoch: int, batches_done: int) -> None:
        """The next iteration of `epoch` starts after its first `batches_done` batches (once)."""
        self._resume = (epoch, batches_done)

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        if self._resume is not None and self._resume[0] == self.epoch:
            indices = indices[self._resume[1] * self.batch_size:]
        self._resume = None
        return iter(indices)


def loader_generator(seed: int) -> torch.Generator:
    """A DataLoader's own generator: its worker base seeds then never draw from (and shift) the global RNG."""
    return torch.Generator().manual_seed(seed)
