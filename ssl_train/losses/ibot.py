"""iBOT's masked-patch self-distillation loss (Zhou et al., ICLR 2022): the student predicts, for each masked patch of a
global view, the teacher's centred and sharpened distribution of the same patch seen unmasked."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from ssl_train.losses.dino import DINOLoss
from ssl_train.losses.precision import float32


class IBOTPatchLoss(DINOLoss):
    """The patch term of the reference's iBOTLoss (bytedance/ibot main_ibot.py, `loss2`): for each global view v,
    cross-entropy between the teacher's softmax((t_v - centre) / teacher_temp) and the student's log_softmax(s_v /
    student_temp) per patch, averaged over the masked patches of each image (an image with none masked counts 0),
    then over images and views.

    Inputs: student_patches and teacher_patches, lists of G tensors (N, L, K) (the head's output per patch token of each
    global view: the student's from the masked view, the teacher's from the unmasked one), masks, G tensors (N, L), 1 =
    masked. Its own centre (the reference's `center2`) is an EMA of each image's mean patch output, averaged over the
    global batch; the teacher temperature warms up as DINOLoss's does (the reference: 0.04 -> 0.07 for patches).
    With `centering: sinkhorn_knopp` (DINOv2's iBOTPatchLoss.sinkhorn_knopp_teacher) the targets of the masked patches
    are Sinkhorn-Knopp codes over all masked patches of all global views (and ranks); unmasked patches get none.
    """

    @float32
    def forward(  # type: ignore[override]  # patches and masks, not DINOLoss's two lists of outputs
        self,
        student_patches: Sequence[torch.Tensor],
        teacher_patches: Sequence[torch.Tensor],
        masks: Sequence[torch.Tensor],
    ) -> torch.Tensor:
        if not len(student_patches) == len(teacher_patches) == len(masks) >= 1:
            raise ValueError("IBOTPatchLoss: one student output, teacher output and mask per global view")
        targets = self.patch_targets(teacher_patches, masks)
        total: Any = 0.0  # a Tensor from the first view on
        for student, target, mask in zip(student_patches, targets, masks, strict=True):
            per_patch = self.cross_entropy(target, student)  # (N, L)
            weight = mask.float()
            total = total + ((per_patch * weight).sum(dim=-1) / weight.sum(dim=-1).clamp(min=1.0)).mean()
        self.update_center(torch.cat([t.mean(dim=1) for t in teacher_patches]))
        return total / len(masks)

    @float32
    def masked_patches(self, student: torch.Tensor, teacher: torch.Tensor, weights: torch.Tensor, num_images: int) -> torch.Tensor:
        """The Sinkhorn-Knopp patch term from the masked patches alone, as DINOv2's iBOTPatchLoss.forward_masked: `student`
        and `teacher` (M, K) are the heads' outputs for the M masked patches of all global views, `weights` (M,) one over
        the number of masked patches of each patch's image; the weighted sum over `num_images` (the global views' images,
        masked or not) equals `forward` on every patch. The heads then never see the unmasked patches."""
        if self.centering != "sinkhorn_knopp":
            raise ValueError("IBOTPatchLoss.masked_patches needs centering: sinkhorn_knopp (a centre averages every patch)")
        targets = self.teacher_targets(teacher.detach())
        return (self.cross_entropy(targets, student) * weights).sum() / num_images

    def cross_entropy(self, targets: torch.Tensor, student: torch.Tensor) -> torch.Tensor:
        """Per patch: the teacher's target distribution against the student's log_softmax(s / student_temp)."""
        return (-targets * F.log_softmax(student.float() / self.student_temp, dim=-1)).sum(dim=-1)

    @torch.no_grad()
    def patch_targets(self, teacher_patches: Sequence[torch.Tensor], masks: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """The teacher's distribution per patch, (N, L, K) per view: centred softmax of every patch, or Sinkhorn-Knopp
        codes of the masked patches together (zeros elsewhere: only masked patches enter the loss)."""
        if self.centering != "sinkhorn_knopp":
            return [self.teacher_targets(t.detach()) for t in teacher_patches]
        stacked = torch.cat([t.detach() for t in teacher_patches])  # (V x N, L, K)
        flat = stacked.flatten(0, 1)
        masked_index = torch.cat(list(masks)).flatten().nonzero().squeeze(1)  # IBOTMethod counts them on the host instead
        codes = self.teacher_targets(flat.index_select(0, masked_index))
        targets = torch.zeros(flat.shape, dtype=codes.dtype, device=codes.device).index_copy_(0, masked_index, codes)
        return list(targets.view(stacked.shape).split([len(t) for t in teacher_patches]))
