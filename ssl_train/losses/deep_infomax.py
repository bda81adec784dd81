"""Deep InfoMax's local-global objective (Hjelm et al., ICLR 2019): mutual information between every location of a
feature map and the image's global vector, estimated with Jensen-Shannon or InfoNCE."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ssl_train import dist
from ssl_train.losses.precision import float32

ESTIMATORS = ("jsd", "infonce")


class DeepInfoMaxLoss(nn.Module):
    """Scores u(i, j, l) = g_i . l_{j, l} between the global vector of image i and location l of image j's local features.

    Inputs: local features (N, D, L) (L = H x W locations, already encoded to D) and global vectors (N, D); positive
    pairs are i = j. `jsd` is the reference's fenchel_dual_loss with the JSD measure: E_neg[softplus(-u) + u - log 2]
    - E_pos[log 2 - softplus(-u)]. `infonce` is its nce_loss: each positive (i, l) against g_i . l_{j, l'} for every
    other image j and every location l'. The reference keeps the excluded self-pairs in the softmax at a score of -10;
    here they are left out (their weight there is e^-10 per entry, and -10 depends on the score scale). With
    `gather_distributed` the other images' local features come from every rank (with gradients).
    """

    def __init__(self, estimator: str = "infonce", gather_distributed: bool = True) -> None:
        super().__init__()
        if estimator not in ESTIMATORS:
            raise ValueError(f"DeepInfoMaxLoss: estimator must be one of {ESTIMATORS}, got {estimator!r}")
        self.estimator, self.gather_distributed = estimator, gather_distributed

    @float32
    def forward(self, local: torch.Tensor, global_: torch.Tensor) -> torch.Tensor:
        if local.ndim != 3 or global_.ndim != 2 or local.shape[:2] != global_.shape:
            raise ValueError(f"DeepInfoMaxLoss expects local (N, D, L) and global (N, D), got {tuple(local.shape)} and {tuple(global_.shape)}")
        local, global_ = local.float(), global_.float()
        n, _, locations = local.shape
        keys, offset = local, 0
        if self.gather_distributed and dist.is_distributed():
            keys, offset = dist.gather_with_grad(local), dist.rank() * n
        # u[i, j, l] = g_i . keys_{j, l}
        scores = torch.einsum("id,jdl->ijl", global_, keys)
        own = torch.zeros(n, len(keys), dtype=torch.bool, device=local.device)
        own[torch.arange(n), torch.arange(n) + offset] = True
        positive = scores[own]  # (n, L)
        if self.estimator == "jsd":
            log2 = math.log(2.0)
            e_pos = (log2 - F.softplus(-positive)).mean()
            e_neg = (F.softplus(-scores[~own]) + scores[~own] - log2).mean()
            return e_neg - e_pos
        negatives = scores.masked_fill(own[..., None], float("-inf")).flatten(1)  # (n, N_global * L), self excluded
        logits = torch.cat([positive[..., None], negatives[:, None, :].expand(n, locations, -1)], dim=2)  # (n, L, 1 + ...)
        return -F.log_softmax(logits, dim=2)[..., 0].mean()
