"""Deep Graph Infomax's discriminator loss (Velickovic et al., ICLR 2019)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ssl_train.constraints import PositiveInt
from ssl_train.losses.precision import float32


class DeepGraphInfomaxLoss(nn.Module):
    """Binary cross-entropy of a bilinear discriminator D(h, s) = sigmoid(h^T W s) telling the nodes' embeddings of the
    real graph (positives) from those of a corrupted graph (negatives), against the graph summary s.

    Inputs: positive (N, D) and negative (M, D) node embeddings, summary (D,). W is this module's parameter, initialised
    as torch_geometric's DeepGraphInfomax (uniform in +-1/sqrt(D)); the value equals its `loss` (which adds 1e-15 inside
    the logs; here the log-sigmoid is exact).
    """

    def __init__(self, dim: PositiveInt = 512) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(dim, dim))
        bound = 1.0 / math.sqrt(dim)
        nn.init.uniform_(self.weight, -bound, bound)

    def scores(self, z: torch.Tensor, summary: torch.Tensor) -> torch.Tensor:
        return z @ (self.weight @ summary)

    @float32
    def forward(self, positive: torch.Tensor, negative: torch.Tensor, summary: torch.Tensor) -> torch.Tensor:
        if positive.shape[-1] != self.weight.shape[0] or negative.shape[-1] != self.weight.shape[0] or summary.shape != self.weight.shape[:1]:
            raise ValueError(
                f"DeepGraphInfomaxLoss(dim={self.weight.shape[0]}) got positive {tuple(positive.shape)}, negative "
                f"{tuple(negative.shape)}, summary {tuple(summary.shape)}: loss.dim must equal the encoder's out_dim"
            )
        positive, negative, summary = positive.float(), negative.float(), summary.float()
        return -F.logsigmoid(self.scores(positive, summary)).mean() - F.logsigmoid(-self.scores(negative, summary)).mean()
