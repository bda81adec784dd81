"""TiCo: transformation invariance and covariance contrast (Zhu et al. 2022, arXiv:2206.10698)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ssl_train.constraints import Fraction, LossWeight, PositiveInt
from ssl_train.losses.pairs import float_pair
from ssl_train.losses.precision import float32


class TiCoLoss(nn.Module):
    """1 - mean_i <z_a_i, z_b_i> + rho * mean_i z_a_i^T C z_a_i, with z = the L2-normalised embeddings.

    C is an EMA of the covariance of z_a: C_t = beta * C_{t-1} + (1 - beta) * z_a^T z_a / N (the paper's eq. 5-6).
    The loss reads C_t, so this batch's part of it carries gradient; C_{t-1} is a buffer (in checkpoints) and is
    replaced by C_t, detached, after each training forward, as the authors' code and lightly's TiCoLoss do.
    Invariance pulls the two views together; the covariance term contrasts each embedding with the recent past,
    pushing the embeddings to spread over all directions. Defaults: beta 0.9, rho 20 (the paper's ResNet-50 values).

    Inputs: (N, D) embeddings of two views of the same N images, D = `dim` (the online view first, then the target).
    The covariance uses the global batch when `gather_distributed`, so every rank keeps the same C.
    """

    covariance: torch.Tensor  # a buffer (register_buffer below)

    def __init__(self, dim: PositiveInt, beta: Fraction = 0.9, rho: LossWeight = 20.0, gather_distributed: bool = False) -> None:
        super().__init__()
        self.beta, self.rho, self.gather_distributed = beta, rho, gather_distributed
        self.register_buffer("covariance", torch.zeros(dim, dim))

    @float32
    def forward(self, z_a: torch.Tensor, z_b: torch.Tensor) -> torch.Tensor:
        z_a, z_b = float_pair("TiCoLoss", z_a, z_b, self.gather_distributed)
        if z_a.shape[1] != self.covariance.shape[0]:
            raise ValueError(f"TiCoLoss: embeddings of width {z_a.shape[1]}, but loss.dim is {self.covariance.shape[0]}")
        z_a, z_b = F.normalize(z_a, dim=1), F.normalize(z_b, dim=1)
        covariance = self.beta * self.covariance + (1 - self.beta) * (z_a.T @ z_a) / z_a.shape[0]
        invariance = (z_a * z_b).sum(dim=1).mean()
        contrast = ((z_a @ covariance) * z_a).sum(dim=1).mean()
        if self.training:
            self.covariance.copy_(covariance.detach())
        return 1 - invariance + self.rho * contrast
