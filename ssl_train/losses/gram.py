"""DINOv3's Gram anchoring loss (Siméoni et al. 2025, "DINOv3"): the student's patch-similarity (Gram) matrix matches
that of an earlier "Gram teacher", keeping patch features local while the global objectives train on."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ssl_train.losses.precision import float32


class GramLoss(nn.Module):
    """MSE between the student's and the Gram teacher's patch similarity matrices, as dinov3/loss/gram_loss.py.

    Inputs: student and teacher patch features (B, P, D). `normalized`: L2-normalise each patch feature first (cosine
    similarities). `img_level`: one (P, P) matrix per image; else one (B P, B P) matrix over all patches of the batch.
    `remove_neg`: negative similarities of both set to 0; `remove_only_teacher_neg`: the teacher's negatives set to 0,
    and the student's where both are negative (at most one of the two, as the reference asserts).
    """

    def __init__(self, normalized: bool = True, img_level: bool = True, remove_neg: bool = False, remove_only_teacher_neg: bool = False) -> None:
        super().__init__()
        if remove_neg and remove_only_teacher_neg:
            raise ValueError("GramLoss: set at most one of remove_neg and remove_only_teacher_neg")
        self.normalized, self.img_level = normalized, img_level
        self.remove_neg, self.remove_only_teacher_neg = remove_neg, remove_only_teacher_neg

    def similarities(self, features: torch.Tensor) -> torch.Tensor:
        """(B, P, P) per image, or (B P, B P) over the batch, of (B, P, D) features."""
        x = F.normalize(features.float(), dim=-1) if self.normalized else features.float()
        if not self.img_level:
            x = x.flatten(0, 1)
        return x @ x.transpose(-1, -2)

    @float32
    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        if student.ndim != 3 or student.shape != teacher.shape:
            raise ValueError(
                f"GramLoss: needs student and teacher patch features of one (B, P, D) shape, got {tuple(student.shape)} and {tuple(teacher.shape)}"
            )
        student_sim, teacher_sim = self.similarities(student), self.similarities(teacher.detach())
        if self.remove_neg:
            teacher_sim, student_sim = teacher_sim.clamp(min=0), student_sim.clamp(min=0)
        elif self.remove_only_teacher_neg:
            student_sim = torch.where((student_sim < 0) & (teacher_sim < 0), torch.zeros_like(student_sim), student_sim)
            teacher_sim = teacher_sim.clamp(min=0)
        return F.mse_loss(student_sim, teacher_sim)
