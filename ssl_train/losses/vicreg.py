"""VICReg: variance-invariance-covariance regularisation (Bardes et al., ICLR 2022)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ssl_train.constraints import LossWeight, Positive
from ssl_train.losses.pairs import float_pair
from ssl_train.losses.precision import float32


class VICRegLoss(nn.Module):
    """sim_weight * MSE(z_a, z_b) + var_weight * [v(z_a) + v(z_b)] / 2 + cov_weight * [c(z_a) + c(z_b)].

    Paper eq. (1)-(6), weights 25 / 25 / 1: v = mean_j relu(1 - sqrt(Var(z_j) + eps)), c = sum of squared
    off-diagonal covariances / D. The variance term is averaged over the two branches as in the official code
    (facebookresearch/vicreg main_vicreg.py: std_loss = mean(relu(1 - std_x)) / 2 + mean(relu(1 - std_y)) / 2) and
    lightly; the paper's eq. (6) sums them (`variance_mean=False`). Inputs: (N, D) embeddings of two views.
    Variance and covariance use the global batch when `gather_distributed`.
    """

    def __init__(
        self,
        sim_weight: LossWeight = 25.0,
        var_weight: LossWeight = 25.0,
        cov_weight: LossWeight = 1.0,
        eps: Positive = 1e-4,
        gather_distributed: bool = False,
        variance_mean: bool = True,
    ) -> None:
        super().__init__()
        if min(sim_weight, var_weight, cov_weight) < 0:
            raise ValueError(f"VICRegLoss: weights must be >= 0, got {sim_weight}, {var_weight}, {cov_weight}")
        self.sim_weight, self.var_weight, self.cov_weight, self.eps = sim_weight, var_weight, cov_weight, eps
        self.gather_distributed, self.variance_mean = gather_distributed, variance_mean

    def _variance(self, z: torch.Tensor) -> torch.Tensor:
        return F.relu(1 - torch.sqrt(z.var(0) + self.eps)).mean()

    def _covariance(self, z: torch.Tensor) -> torch.Tensor:
        n, d = z.shape
        z = z - z.mean(0)
        cov = z.T @ z / (n - 1)
        return (cov.pow(2).sum() - torch.diagonal(cov).pow(2).sum()) / d

    @float32
    def forward(self, z_a: torch.Tensor, z_b: torch.Tensor) -> torch.Tensor:
        z_a, z_b = float_pair("VICRegLoss", z_a, z_b, self.gather_distributed)
        invariance = F.mse_loss(z_a, z_b)
        variance = (self._variance(z_a) + self._variance(z_b)) / (2 if self.variance_mean else 1)
        covariance = self._covariance(z_a) + self._covariance(z_b)
        return self.sim_weight * invariance + self.var_weight * variance + self.cov_weight * covariance
