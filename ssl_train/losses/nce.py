"""Binary noise-contrastive estimation (Gutmann & Hyvarinen, AISTATS 2010), as used for instance discrimination (Wu et al. 2018)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ssl_train.constraints import Real, Temperature
from ssl_train.losses.precision import float32


class NCELoss(nn.Module):
    """Logistic regression of data (query, positive) against noise (query, negative) pairs.

    With score s = cos(q, k) / temperature and G = s - log_noise_ratio (log of k * P_noise / P_model-normaliser),
    the per-query loss is -log sigmoid(G_pos) - sum over negatives of log sigmoid(-G_neg), averaged over
    queries (Gutmann & Hyvarinen 2010, eq. 3-5). Inputs: query (N, D), positive_key (N, D), optional
    negative_keys (K, D) shared by all queries; without them the other rows' positive keys are the noise.
    """

    def __init__(self, temperature: Temperature = 0.1, log_noise_ratio: Real = 0.0) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"NCELoss: temperature must be > 0, got {temperature}")
        self.temperature, self.log_noise_ratio = temperature, log_noise_ratio

    @float32
    def forward(self, query: torch.Tensor, positive_key: torch.Tensor, negative_keys: torch.Tensor | None = None) -> torch.Tensor:
        if query.shape != positive_key.shape or query.ndim != 2:
            raise ValueError(f"NCELoss expects (N, D) query and positive_key of equal shape, got {tuple(query.shape)}, {tuple(positive_key.shape)}")
        q, k = F.normalize(query.float(), dim=1), F.normalize(positive_key.float(), dim=1)
        positive_logit = (q * k).sum(1) / self.temperature - self.log_noise_ratio
        if negative_keys is not None:
            negative_logits = q @ F.normalize(negative_keys.float(), dim=1).T
            noise_mask = torch.ones_like(negative_logits, dtype=torch.bool)
        else:
            negative_logits = q @ k.T
            noise_mask = ~torch.eye(len(q), dtype=torch.bool, device=q.device)
        negative_logits = negative_logits / self.temperature - self.log_noise_ratio
        noise_term = (F.logsigmoid(-negative_logits) * noise_mask).sum(1)
        return -(F.logsigmoid(positive_logit) + noise_term).mean()
