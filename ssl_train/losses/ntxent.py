"""NT-Xent, the normalised temperature-scaled cross-entropy of SimCLR (Chen et al., 2020)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ssl_train import dist


class NTXentLoss(nn.Module):
    """SimCLR's contrastive loss over 2N views: each view's positive is its pair, negatives are the other 2N-2.

    Paper: "A Simple Framework for Contrastive Learning of Visual Representations", Chen et al., ICML 2020,
    eq. (1); the loss is the mean over all 2N anchors. Inputs z_a, z_b: (N, D) projections of two views of
    the same N images (row i of z_a pairs with row i of z_b). Logits are computed in float32.
    With `gather_distributed`, negatives come from all ranks (gradients flow back to every rank).
    """

    def __init__(self, temperature: float = 0.5, gather_distributed: bool = False) -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"NTXentLoss: temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)
        self.gather_distributed = gather_distributed

    def forward(self, z_a: torch.Tensor, z_b: torch.Tensor) -> torch.Tensor:
        if z_a.shape != z_b.shape or z_a.ndim != 2:
            raise ValueError(f"NTXentLoss expects two (N, D) tensors of equal shape, got {tuple(z_a.shape)} and {tuple(z_b.shape)}")
        n = z_a.shape[0]
        local = F.normalize(torch.cat([z_a, z_b]).float(), dim=1)  # (2N, D): rows [a_0..a_N-1, b_0..b_N-1]
        if self.gather_distributed and dist.is_distributed():
            gathered_a = dist.gather_with_grad(local[:n])
            gathered_b = dist.gather_with_grad(local[n:])
            everyone = torch.cat([gathered_a, gathered_b])  # (2NW, D)
            total, offset = gathered_a.shape[0], dist.rank() * n
        else:
            everyone, total, offset = local, n, 0
        logits = local @ everyone.T / self.temperature  # (2N, 2NW)
        rows = torch.arange(2 * n, device=local.device)
        own_index = torch.where(rows < n, rows + offset, rows - n + total + offset)  # column of the anchor itself
        pair_index = torch.where(rows < n, own_index + total, own_index - total)  # column of its positive
        logits = logits.masked_fill(F.one_hot(own_index, everyone.shape[0]).bool(), float("-inf"))
        return F.cross_entropy(logits, pair_index)
