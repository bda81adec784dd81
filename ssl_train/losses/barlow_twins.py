"""Barlow Twins' redundancy-reduction loss (Zbontar et al., ICML 2021)."""

from __future__ import annotations

import torch
from torch import nn

from ssl_train.constraints import LossWeight, Positive
from ssl_train.losses.pairs import float_pair
from ssl_train.losses.precision import float32


class BarlowTwinsLoss(nn.Module):
    """sum_i (1 - C_ii)^2 + lambda * sum_{i != j} C_ij^2, C the cross-correlation of batch-normalised z_a, z_b.

    Paper eq. (1)-(2), lambda = 0.0051. Inputs: (N, D) embeddings of two views. Batch statistics use the
    whole global batch when `gather_distributed` (as the paper's all-reduced correlation matrix).
    `scale_loss` multiplies the result (solo-learn uses 0.1 for CIFAR-sized runs; 1 is the paper).
    """

    def __init__(self, lambda_offdiag: LossWeight = 0.0051, gather_distributed: bool = False, eps: Positive = 1e-5, scale_loss: Positive = 1.0) -> None:
        super().__init__()
        if lambda_offdiag < 0 or scale_loss <= 0:
            raise ValueError(f"BarlowTwinsLoss: lambda_offdiag must be >= 0 and scale_loss > 0, got {lambda_offdiag}, {scale_loss}")
        self.lambda_offdiag, self.gather_distributed, self.eps, self.scale_loss = float(lambda_offdiag), gather_distributed, eps, scale_loss

    @float32
    def forward(self, z_a: torch.Tensor, z_b: torch.Tensor) -> torch.Tensor:
        z_a, z_b = float_pair("BarlowTwinsLoss", z_a, z_b, self.gather_distributed)
        n = len(z_a)
        if n < 2:
            raise ValueError("BarlowTwinsLoss needs a batch of at least 2 samples")
        a = (z_a - z_a.mean(0)) / torch.sqrt(z_a.var(0, unbiased=False) + self.eps)
        b = (z_b - z_b.mean(0)) / torch.sqrt(z_b.var(0, unbiased=False) + self.eps)
        c = a.T @ b / n
        on_diag = (torch.diagonal(c) - 1).pow(2).sum()
        off_diag = c.pow(2).sum() - torch.diagonal(c).pow(2).sum()
        return self.scale_loss * (on_diag + self.lambda_offdiag * off_diag)
