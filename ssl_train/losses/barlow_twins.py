"""Barlow Twins' redundancy-reduction loss (Zbontar et al., ICML 2021)."""

from __future__ import annotations

import torch
from torch import nn

from ssl_train import dist


class BarlowTwinsLoss(nn.Module):
    """sum_i (1 - C_ii)^2 + lambda * sum_{i != j} C_ij^2, C the cross-correlation of batch-normalised z_a, z_b.

    Paper eq. (1)-(2), lambda = 0.0051. Inputs: (N, D) embeddings of two views. Batch statistics use the
    whole global batch when `gather_distributed` (as the paper's all-reduced correlation matrix).
    `scale_loss` multiplies the result (solo-learn uses 0.1 for CIFAR-sized runs; 1 is the paper).
    """

    def __init__(self, lambda_offdiag: float = 0.0051, gather_distributed: bool = False, eps: float = 1e-5, scale_loss: float = 1.0) -> None:
        super().__init__()
        if lambda_offdiag < 0 or scale_loss <= 0:
            raise ValueError(f"BarlowTwinsLoss: lambda_offdiag must be >= 0 and scale_loss > 0, got {lambda_offdiag}, {scale_loss}")
        self.lambda_offdiag, self.gather_distributed, self.eps, self.scale_loss = float(lambda_offdiag), gather_distributed, eps, scale_loss

    def forward(self, z_a: torch.Tensor, z_b: torch.Tensor) -> torch.Tensor:
        if z_a.shape != z_b.shape or z_a.ndim != 2:
            raise ValueError(f"BarlowTwinsLoss expects two (N, D) tensors of equal shape, got {tuple(z_a.shape)}, {tuple(z_b.shape)}")
        z_a, z_b = z_a.float(), z_b.float()
        if self.gather_distributed and dist.is_distributed():
            z_a, z_b = dist.gather_with_grad(z_a), dist.gather_with_grad(z_b)
        n = len(z_a)
        if n < 2:
            raise ValueError("BarlowTwinsLoss needs a batch of at least 2 samples")
        a = (z_a - z_a.mean(0)) / torch.sqrt(z_a.var(0, unbiased=False) + self.eps)
        b = (z_b - z_b.mean(0)) / torch.sqrt(z_b.var(0, unbiased=False) + self.eps)
        c = a.T @ b / n
        on_diag = (torch.diagonal(c) - 1).pow(2).sum()
        off_diag = c.pow(2).sum() - torch.diagonal(c).pow(2).sum()
        return self.scale_loss * (on_diag + self.lambda_offdiag * off_diag)
