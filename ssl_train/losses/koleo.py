"""KoLeo regulariser (Sablayrolles et al., ICLR 2019), used by DINOv2 (Oquab et al. 2024) on the student's class tokens:
it spreads the features in a batch by pushing up the log-distance of each to its nearest neighbour."""

from __future__ import annotations

import torch
from torch import nn

from ssl_train.losses.precision import float32


class KoLeoLoss(nn.Module):
    """-mean_i log(||x_i - x_nn(i)|| + eps) over L2-normalised rows, nn(i) the nearest other row (largest dot product),
    as DINOv2's KoLeoLoss (dinov2/loss/koleo_loss.py). features: (N, D), N >= 2."""

    def __init__(self, eps: float = 1e-8) -> None:
        super().__init__()
        self.eps = eps

    @float32
    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if features.ndim != 2 or features.shape[0] < 2:
            raise ValueError(f"KoLeoLoss: needs (N >= 2, D) features, got {tuple(features.shape)}")
        x = nn.functional.normalize(features, dim=-1, eps=self.eps)
        dots = x @ x.T
        dots.fill_diagonal_(-2.0)  # never one's own neighbour (cosines are >= -1)
        nearest = dots.argmax(dim=1)
        distances = nn.functional.pairwise_distance(x, x[nearest], eps=self.eps)
        return -torch.log(distances + self.eps).mean()
