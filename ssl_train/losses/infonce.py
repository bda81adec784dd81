"""InfoNCE with explicit negatives (CPC, van den Oord et al. 2018; MoCo, He et al. 2020; MoCo v3, Chen et al. 2021)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ssl_train import dist
from ssl_train.constraints import NonNegative, Temperature
from ssl_train.losses.ntxent import check_hard_negative_beta, log_negative_sum
from ssl_train.losses.precision import float32


class InfoNCELoss(nn.Module):
    """-log softmax of the positive among {positive} + negatives, per query, averaged.

    Inputs: query (N, D), positive_key (N, D) (row i is query i's positive), optional negative_keys (K, D)
    shared by all queries (MoCo v2's queue). Without negative_keys the other rows' positive keys are the
    negatives (MoCo v3: logits = q @ k.T, labels = diagonal), gathered from every rank when
    `gather_distributed`. Vectors are L2-normalised; logits are float32 and divided by `temperature`.
    `scale_by_two_temperature` multiplies the loss by 2 * temperature, as MoCo v3's reference code does.
    `hard_negative_beta > 0` weights each negative by exp(beta * its logit) (HCL, Robinson et al., ICLR 2021).
    """

    def __init__(
        self, temperature: Temperature = 0.2, gather_distributed: bool = False, scale_by_two_temperature: bool = False, hard_negative_beta: NonNegative = 0.0
    ) -> None:
        super().__init__()
        check_hard_negative_beta(hard_negative_beta, "InfoNCELoss")
        self.hard_negative_beta = float(hard_negative_beta)
        if not temperature > 0:
            raise ValueError(f"InfoNCELoss: temperature must be > 0, got {temperature}")
        self.temperature, self.gather_distributed = float(temperature), gather_distributed
        # MoCo v3's code multiplies the loss by 2 * temperature (moco/builder.py, contrastive_loss)
        self.factor = 2 * self.temperature if scale_by_two_temperature else 1.0

    @float32
    def forward(self, query: torch.Tensor, positive_key: torch.Tensor, negative_keys: torch.Tensor | None = None) -> torch.Tensor:
        if query.shape != positive_key.shape or query.ndim != 2:
            raise ValueError(f"InfoNCELoss expects (N, D) query and positive_key of equal shape, got {tuple(query.shape)}, {tuple(positive_key.shape)}")
        q, k = F.normalize(query.float(), dim=1), F.normalize(positive_key.float(), dim=1)
        if negative_keys is not None:
            if negative_keys.ndim != 2 or negative_keys.shape[1] != q.shape[1]:
                raise ValueError(f"InfoNCELoss: negative_keys must be (K, {q.shape[1]}), got {tuple(negative_keys.shape)}")
            negatives = F.normalize(negative_keys.float(), dim=1)
            logits = torch.cat([(q * k).sum(1, keepdim=True), q @ negatives.T], dim=1) / self.temperature
            return self._cross_entropy(logits, torch.zeros(len(q), dtype=torch.long, device=q.device)) * self.factor
        keys, offset = k, 0
        if self.gather_distributed and dist.is_distributed():
            keys, offset = dist.gather_with_grad(k), dist.rank() * len(q)
        logits = q @ keys.T / self.temperature
        return self._cross_entropy(logits, torch.arange(len(q), device=q.device) + offset) * self.factor

    def _cross_entropy(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """-log softmax of each row's target column; with HCL weighting, of the positive against reweighted negatives."""
        if self.hard_negative_beta == 0:
            return F.cross_entropy(logits, targets)
        positive = logits.gather(1, targets[:, None]).squeeze(1)
        is_negative = ~F.one_hot(targets, logits.shape[1]).bool()
        log_negatives = log_negative_sum(logits.masked_fill(~is_negative, float("-inf")), is_negative.sum(1), self.hard_negative_beta)
        return (torch.logaddexp(positive, log_negatives) - positive).mean()
