"""Triplet loss with batch-hard or semi-hard negative mining (Schroff et al. 2015; Hermans et al. 2017)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ssl_train.constraints import NonNegative
from ssl_train.losses.pairs import distances_and_masks
from ssl_train.losses.precision import float32

MINING = ("batch_hard", "semi_hard", "all")


class TripletLoss(nn.Module):
    """mean relu(d(a, p) - d(a, n) + margin) over mined triplets from the 2N rows of (z_a, z_b).

    Positives: other views of the same image (or same label when `uses_labels`). Mining:
    `batch_hard` (Hermans et al. 2017): per anchor, the farthest positive and the closest negative;
    `semi_hard` (FaceNet, Schroff et al. 2015): per (anchor, positive), the closest negative farther than the
    positive (d_an > d_ap); if none, the farthest negative (as TensorFlow Addons does);
    `all`: every valid triplet. Embeddings are L2-normalised when `normalize`.
    """

    def __init__(self, margin: NonNegative = 0.2, mining: str = "batch_hard", normalize: bool = True, uses_labels: bool = False) -> None:
        super().__init__()
        if mining not in MINING:
            raise ValueError(f"TripletLoss: mining must be one of {MINING}, got {mining!r}")
        if margin < 0:
            raise ValueError(f"TripletLoss: margin must be >= 0, got {margin}")
        self.margin, self.mining, self.normalize, self.uses_labels = margin, mining, normalize, uses_labels

    @float32
    def forward(self, z_a: torch.Tensor, z_b: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        d, positive, negative = distances_and_masks(z_a, z_b, labels if self.uses_labels else None, self.normalize)
        if not negative.any():
            raise ValueError("TripletLoss: the batch has no negatives (all samples share one label)")
        inf = torch.full((), float("inf"), device=d.device)
        if self.mining == "batch_hard":
            hardest_positive = torch.where(positive, d, -inf).max(dim=1).values
            hardest_negative = torch.where(negative, d, inf).min(dim=1).values
            valid = positive.any(1)
            return F.relu(hardest_positive - hardest_negative + self.margin)[valid].mean()
        d_ap = d[:, :, None]  # (anchor, positive, 1)
        d_an = d[:, None, :]  # (anchor, 1, negative)
        if self.mining == "all":
            mask = positive[:, :, None] & negative[:, None, :]
            return F.relu(d_ap - d_an + self.margin)[mask].mean()
        semi_hard = negative[:, None, :] & (d_an > d_ap)
        closest_semi_hard = torch.where(semi_hard, d_an, inf).min(dim=2).values
        farthest_negative = torch.where(negative, d, -inf).max(dim=1).values[:, None].expand_as(closest_semi_hard)
        chosen = torch.where(torch.isfinite(closest_semi_hard), closest_semi_hard, farthest_negative)
        return F.relu(d - chosen + self.margin)[positive].mean()
