"""NT-Xent, the normalised temperature-scaled cross-entropy of SimCLR (Chen et al., 2020)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ssl_train import dist
from ssl_train.constraints import BelowOne, NonNegative, Temperature
from ssl_train.losses.precision import float32


def check_hard_negative_beta(beta: float, loss: str) -> None:
    if not beta >= 0:
        raise ValueError(f"{loss}: hard_negative_beta must be >= 0 (0 = plain negatives), got {beta}")


def log_negative_sum(negative_logits: torch.Tensor, count: torch.Tensor, beta: float) -> torch.Tensor:
    """log of sum_j exp(s_j) over each row's negatives (-inf elsewhere); with beta > 0, HCL's importance-weighted sum
    sum_j w_j exp(s_j) with w_j = exp(beta s_j) / mean_k exp(beta s_k) (Robinson et al. 2021, eq. 5 / joshr17/HCL)."""
    if beta == 0:
        return torch.logsumexp(negative_logits, dim=1)
    return torch.logsumexp((1 + beta) * negative_logits, dim=1) - torch.logsumexp(beta * negative_logits, dim=1) + count.float().log()


class NTXentLoss(nn.Module):
    """SimCLR's contrastive loss over 2N views: each view's positive is its pair, negatives are the other 2N-2.

    Paper: "A Simple Framework for Contrastive Learning of Visual Representations", Chen et al., ICML 2020,
    eq. (1); the loss is the mean over all 2N anchors. Inputs z_a, z_b: (N, D) projections of two views of
    the same N images (row i of z_a pairs with row i of z_b). Logits are computed in float32.
    With `gather_distributed`, negatives come from all ranks (gradients flow back to every rank).

    Variants: `decoupled=True` drops the positive from the denominator (DCL, Yeh et al., ECCV 2022);
    `debiased_tau_plus > 0` corrects for false negatives with class prior tau+ (Chuang et al., NeurIPS 2020, eq. 6);
    `hard_negative_beta > 0` weights each negative by exp(beta * its logit) (HCL, Robinson et al., ICLR 2021; with
    debiased_tau_plus, the HCL estimator of the reference code joshr17/HCL).
    """

    def __init__(
        self,
        temperature: Temperature = 0.5,
        gather_distributed: bool = False,
        decoupled: bool = False,
        debiased_tau_plus: BelowOne = 0.0,
        hard_negative_beta: NonNegative = 0.0,
    ) -> None:
        super().__init__()
        check_hard_negative_beta(hard_negative_beta, "NTXentLoss")
        if not temperature > 0:
            raise ValueError(f"NTXentLoss: temperature must be > 0, got {temperature}")
        if not 0.0 <= debiased_tau_plus < 1.0:
            raise ValueError(f"NTXentLoss: debiased_tau_plus must be in [0, 1), got {debiased_tau_plus}")
        self.temperature = float(temperature)
        self.gather_distributed, self.decoupled, self.debiased_tau_plus = gather_distributed, decoupled, debiased_tau_plus
        self.hard_negative_beta = float(hard_negative_beta)

    @float32
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
        self_mask = F.one_hot(own_index, everyone.shape[0]).bool()
        logits = logits.masked_fill(self_mask, float("-inf"))
        if not self.decoupled and self.debiased_tau_plus == 0 and self.hard_negative_beta == 0:
            return F.cross_entropy(logits, pair_index)
        positive = logits.gather(1, pair_index[:, None]).squeeze(1)
        negative_mask = ~self_mask & ~F.one_hot(pair_index, everyone.shape[0]).bool()
        negatives = logits.masked_fill(~negative_mask, float("-inf"))
        log_negatives = log_negative_sum(negatives, negative_mask.sum(1), self.hard_negative_beta)
        if self.debiased_tau_plus > 0:
            tau_plus, n_neg = self.debiased_tau_plus, negative_mask.sum(1)
            estimate = (log_negatives.exp() - tau_plus * n_neg * positive.exp()) / (1 - tau_plus)
            log_negatives = torch.log(torch.maximum(estimate, n_neg * math.exp(-1.0 / self.temperature)))
        log_denominator = log_negatives if self.decoupled else torch.logaddexp(positive, log_negatives)
        return (log_denominator - positive).mean()
