"""SwAV's swapped-prediction loss with Sinkhorn-Knopp codes (Caron et al., NeurIPS 2020)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ssl_train import dist
from ssl_train.constraints import Positive, PositiveInt, Temperature
from ssl_train.losses.precision import float32


@torch.no_grad()
def sinkhorn(scores: torch.Tensor, epsilon: float = 0.05, iterations: int = 3) -> torch.Tensor:
    """Equal-partition soft codes Q (N, K) for prototype scores (N, K): SwAV's algorithm, sums over all ranks."""
    q = torch.exp(scores.float() / epsilon).T  # (K, N)
    n_total = torch.full((), float(q.shape[1]), device=q.device)  # a fill, not a copy from the host (which would sync)
    if dist.is_distributed():
        torch.distributed.all_reduce(n_total)
    k = q.shape[0]
    total = q.sum()
    if dist.is_distributed():
        torch.distributed.all_reduce(total)
    q /= total
    for _ in range(iterations):
        rows = q.sum(dim=1, keepdim=True)
        if dist.is_distributed():
            torch.distributed.all_reduce(rows)
        q /= rows
        q /= k
        q /= q.sum(dim=0, keepdim=True)
        q /= n_total
    return (q * n_total).T  # each row sums to 1


class SwAVLoss(nn.Module):
    """Predict the code of one global view from every other view: -sum_k q_i log softmax(p_j / temperature).

    Paper eq. (1)-(3). Inputs: scores, a list of V tensors (N, K) of prototype scores (cosine similarities;
    global views first); `num_global` views get codes by Sinkhorn-Knopp (`epsilon`, `sinkhorn_iterations`).
    Optional `queue_scores` (list per global view of (Q, K)) extend the batch for Sinkhorn as in the paper. Under DDP the
    queue is the same on every rank (FeatureQueue gathers), so rank r adds rows r, r + world, ...: Sinkhorn, whose sums
    run over all ranks, sees each queued row once, as the reference's per-rank queues of queue_length / world rows.
    """

    def __init__(self, temperature: Temperature = 0.1, epsilon: Positive = 0.05, sinkhorn_iterations: PositiveInt = 3) -> None:
        super().__init__()
        if temperature <= 0 or epsilon <= 0 or sinkhorn_iterations < 1:
            raise ValueError("SwAVLoss: temperature and epsilon must be > 0, sinkhorn_iterations >= 1")
        self.temperature, self.epsilon, self.sinkhorn_iterations = temperature, epsilon, sinkhorn_iterations

    @float32
    def forward(self, scores: Sequence[torch.Tensor], num_global: int = 2, queue_scores: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
        if len(scores) < 2 or not 1 <= num_global <= len(scores):
            raise ValueError(f"SwAVLoss needs >= 2 views and 1 <= num_global <= views, got {len(scores)} views, num_global={num_global}")
        total: Any = 0.0  # a Tensor from the first pair on
        pairs = 0
        for i in range(num_global):
            s = scores[i].detach()
            if queue_scores is not None:
                queued = queue_scores[i].detach()
                if dist.is_distributed():  # every rank holds the same gathered queue: each row joins Sinkhorn once
                    queued = queued[dist.rank() :: dist.world_size()]
                s = torch.cat([s, queued])
            codes = sinkhorn(s, self.epsilon, self.sinkhorn_iterations)[: len(scores[i])]
            for j, p in enumerate(scores):
                if j == i:
                    continue
                total = total + -(codes * F.log_softmax(p.float() / self.temperature, dim=1)).sum(dim=1).mean()
                pairs += 1
        return total / pairs
