"""Supervised contrastive loss (Khosla et al., NeurIPS 2020): every same-label sample is a positive."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ssl_train import dist
from ssl_train.constraints import Temperature
from ssl_train.losses.precision import float32


class SupConLoss(nn.Module):
    """L_out of Khosla et al. eq. (2) over the 2N views: per anchor, -mean over its positives of log softmax.

    Inputs z_a, z_b: (N, D) projections of two views; labels: (N,) int class ids (required: this loss needs
    a labelled dataset). The anchor itself is excluded from numerator and denominator. With
    `gather_distributed`, positives and negatives come from all ranks.
    """

    uses_labels = True

    def __init__(self, temperature: Temperature = 0.1, gather_distributed: bool = False) -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"SupConLoss: temperature must be > 0, got {temperature}")
        self.temperature, self.gather_distributed = float(temperature), gather_distributed

    @float32
    def forward(self, z_a: torch.Tensor, z_b: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if labels is None or bool((labels < 0).any()):
            raise ValueError("SupConLoss needs class labels for every sample (method=supcon requires a labelled dataset)")
        n = len(z_a)
        local = F.normalize(torch.cat([z_a, z_b]).float(), dim=1)
        local_labels = torch.cat([labels, labels])
        everyone, all_labels, offset = local, local_labels, 0
        if self.gather_distributed and dist.is_distributed():
            a, b = dist.gather_with_grad(local[:n]), dist.gather_with_grad(local[n:])
            everyone, offset = torch.cat([a, b]), dist.rank() * n
            gathered_labels = dist.gather_no_grad(labels)
            all_labels = torch.cat([gathered_labels, gathered_labels])
        total = len(everyone) // 2
        rows = torch.arange(2 * n, device=local.device)
        own = torch.where(rows < n, rows + offset, rows - n + total + offset)
        self_mask = F.one_hot(own, len(everyone)).bool()
        logits = (local @ everyone.T / self.temperature).masked_fill(self_mask, float("-inf"))
        log_prob = logits.log_softmax(dim=1)
        positives = (local_labels[:, None] == all_labels[None, :]) & ~self_mask
        return -(log_prob.masked_fill(~positives, 0).sum(1) / positives.sum(1)).mean()
