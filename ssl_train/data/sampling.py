"""The training sampler: an order fixed by (seed, epoch) that a run resumed mid-epoch continues exactly where it stopped."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

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

    def rank_indices(self) -> list[int]:
        """This rank's indices for the current epoch, in order."""
        return list(super().__iter__())

    def __iter__(self) -> Iterator[int]:
        indices = self.rank_indices()
        if self._resume is not None and self._resume[0] == self.epoch:
            indices = indices[self._resume[1] * self.batch_size :]
        self._resume = None
        return iter(indices)


def loader_generator(seed: int) -> torch.Generator:
    """A DataLoader's own generator: its worker base seeds then never draw from (and shift) the global RNG."""
    return torch.Generator().manual_seed(seed)


class MPerClassSampler(ResumableSampler):
    """Every batch holds batch_size / m classes with m samples each (pytorch-metric-learning's MPerClassSampler), so
    supervised metric losses (SupCon, triplet, margin) see positives in every batch, also at small batches.

    Each step draws batch_size / m distinct classes at random (fixed by seed and epoch), then m samples per class
    from that class's shuffled list (cycling when a class runs out). Under DDP the order is drawn once for the global
    batch and each rank takes its own contiguous per-device part, so each device's batch is class-balanced too.
    `batch_size` is per device; an epoch has len(dataset) // (batch_size x replicas) batches.
    """

    def __init__(
        self, dataset: Dataset, labels: Sequence[int] | torch.Tensor, m: int, batch_size: int, seed: int, num_replicas: int = 1, rank: int = 0
    ) -> None:
        super().__init__(dataset, batch_size, seed, shuffle=True, num_replicas=num_replicas, rank=rank)
        labels = torch.as_tensor(labels, dtype=torch.long)
        if m < 1 or batch_size % m:
            raise ValueError(f"data.m_per_class={m} must divide the per-device batch size {batch_size}")
        if bool((labels < 0).any()):
            raise ValueError("data.m_per_class needs a labelled pretraining set (some labels are -1: unlabelled)")
        self.classes = labels.unique()
        if len(self.classes) < batch_size // m:
            raise ValueError(f"data.m_per_class={m}: a batch of {batch_size} needs {batch_size // m} classes, the data has {len(self.classes)}")
        self.by_class = [torch.nonzero(labels == c).flatten() for c in self.classes]
        self.m = m
        self.batches_per_epoch = len(labels) // (batch_size * num_replicas)
        self.num_samples = self.batches_per_epoch * batch_size
        self.total_size = self.num_samples * num_replicas

    def rank_indices(self) -> list[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        queues = [members[torch.randperm(len(members), generator=generator)].tolist() for members in self.by_class]
        cursor = [0] * len(queues)
        per_batch = self.batch_size * self.num_replicas // self.m  # classes per global batch (per-device batches: contiguous runs)
        indices: list[int] = []
        for _ in range(self.batches_per_epoch):
            batch: list[int] = []
            for rank_part in range(self.num_replicas):
                classes = torch.randperm(len(queues), generator=generator)[: per_batch // self.num_replicas].tolist()
                for c in classes:
                    for _ in range(self.m):
                        batch.append(queues[c][cursor[c] % len(queues[c])])
                        cursor[c] += 1
                if rank_part == self.rank:
                    indices += batch[-self.batch_size :]
        return indices
