"""Negative cosine similarity, the regression loss of BYOL and SimSiam."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ssl_train.losses.precision import float32


class NegativeCosineSimilarity(nn.Module):
    """Mean of -cos(p, z) over the batch; BYOL's 2 - 2cos up to constants.

    Papers: BYOL (Grill et al., NeurIPS 2020, eq. 2) and SimSiam (Chen & He, CVPR 2021, eq. 1).
    Inputs p (predictions) and z (targets): (N, D); the caller detaches z for stop-gradient.
    """

    @float32
    def forward(self, p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        if p.shape != z.shape:
            raise ValueError(f"NegativeCosineSimilarity expects equal shapes, got {tuple(p.shape)} and {tuple(z.shape)}")
        return -F.cosine_similarity(p.float(), z.float(), dim=-1).mean()
