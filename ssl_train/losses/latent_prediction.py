"""Latent prediction loss of I-JEPA (Assran et al., CVPR 2023): predicted target-block representations against the EMA
target encoder's (layer-normalised) ones, smooth L1 as in the reference's train.py (F.smooth_l1_loss)."""

from __future__ import annotations

import torch
from torch import nn

from ssl_train.constraints import Positive
from ssl_train.losses.precision import float32


class LatentPredictionLoss(nn.Module):
    """Mean over every predicted token and channel of the Huber / smooth-L1 error with threshold `beta`:
    0.5 d^2 / beta where |d| < beta, else |d| - 0.5 beta. predictions, targets: (B, K, D); targets carry no gradient."""

    def __init__(self, beta: Positive = 1.0) -> None:
        super().__init__()
        if beta <= 0:
            raise ValueError(f"LatentPredictionLoss: beta must be > 0, got {beta}")
        self.beta = beta

    @float32
    def forward(self, predictions: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if predictions.shape != targets.shape:
            raise ValueError(f"LatentPredictionLoss: predictions {tuple(predictions.shape)} and targets {tuple(targets.shape)} differ")
        return nn.functional.smooth_l1_loss(predictions, targets.detach(), beta=self.beta)
