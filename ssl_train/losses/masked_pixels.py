"""Reconstruction loss of masked image modelling: MAE (He et al., CVPR 2022) regresses the (per-patch normalised) pixels of
the masked patches only."""

from __future__ import annotations

import torch
from torch import nn

from ssl_train.constraints import Positive
from ssl_train.losses.precision import float32


class MaskedPixelLoss(nn.Module):
    """Mean over masked patches of the per-patch squared error (`norm_pix=True`: targets standardised per patch, MAE's
    better setting; `l1=True`: the absolute error, SimMIM's choice).

    pred, target: (N, L, P) patch predictions and pixels (P = patch^2 x channels); mask: (N, L), 1 = masked (predicted),
    0 = visible. Visible patches never count, as in the reference's forward_loss.
    """

    def __init__(self, norm_pix: bool = True, l1: bool = False, eps: Positive = 1e-6) -> None:
        super().__init__()
        self.norm_pix, self.l1, self.eps = norm_pix, l1, eps

    @float32
    def forward(self, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if pred.shape != target.shape or mask.shape != pred.shape[:2]:
            raise ValueError(f"MaskedPixelLoss: pred {tuple(pred.shape)}, target {tuple(target.shape)} and mask {tuple(mask.shape)} do not fit")
        mask = mask.to(pred.dtype)
        if self.norm_pix:
            target = (target - target.mean(dim=-1, keepdim=True)) / (target.var(dim=-1, keepdim=True) + self.eps).sqrt()
        error = (pred - target).abs() if self.l1 else (pred - target) ** 2
        return (error.mean(dim=-1) * mask).sum() / mask.sum().clamp_min(1.0)
