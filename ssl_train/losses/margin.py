"""Margin contrastive loss on Siamese pairs (Hadsell, Chopra & LeCun, CVPR 2006)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ssl_train.constraints import NonNegative
from ssl_train.losses.pairs import distances_and_masks
from ssl_train.losses.precision import float32


class ContrastiveMarginLoss(nn.Module):
    """Similar pairs: d^2 / 2; dissimilar pairs: max(0, margin - d)^2 / 2 (Hadsell et al. 2006, eq. 4).

    Pairs are all pairs of the 2N rows of (z_a, z_b): similar when they are views of the same image (or share
    a label, when `labels` are given and `uses_labels`), dissimilar otherwise. The two terms are averaged
    separately and summed, so the N^2 dissimilar pairs do not drown the similar ones. Embeddings are
    L2-normalised when `normalize` (then d is in [0, 2]).
    """

    def __init__(self, margin: NonNegative = 1.0, normalize: bool = True, uses_labels: bool = False) -> None:
        super().__init__()
        if margin <= 0:
            raise ValueError(f"ContrastiveMarginLoss: margin must be > 0, got {margin}")
        self.margin, self.normalize, self.uses_labels = margin, normalize, uses_labels

    @float32
    def forward(self, z_a: torch.Tensor, z_b: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        d, similar, dissimilar = distances_and_masks(z_a, z_b, labels if self.uses_labels else None, self.normalize)
        pull = (d[similar].pow(2) / 2).mean()
        push = (F.relu(self.margin - d[dissimilar]).pow(2) / 2).mean() if dissimilar.any() else d.sum() * 0
        return pull + push
