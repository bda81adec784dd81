"""DINO's self-distillation loss with centering and sharpening (Caron et al., ICCV 2021)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F

from ssl_train import dist
from ssl_train.constraints import Count, Fraction, PositiveInt, Temperature
from ssl_train.counters import HostCounters
from ssl_train.losses.precision import float32
from ssl_train.losses.swav import sinkhorn

CENTERINGS = ("centering", "sinkhorn_knopp")


class DINOLoss(HostCounters):
    """Cross-entropy between the sharpened, centred teacher distribution of each global view and the student's
    distribution of every other view (Caron et al. 2021, algorithm 1).

    Inputs: student_outputs, a list of V tensors (N, K) (global views first, then local crops) and
    teacher_outputs, a list of G tensors (N, K) for the global views. The teacher temperature warms up
    linearly from `warmup_teacher_temp` to `teacher_temp` over `warmup_teacher_temp_steps` (set via
    `set_step`); the centre is an EMA (`center_momentum`) of the teacher outputs' batch mean, all-reduced
    across ranks, updated after each forward. `centering: sinkhorn_knopp` replaces centring + softmax by DINOv2's
    Sinkhorn-Knopp teacher (Oquab et al. 2024; dinov2/loss/dino_clstoken_loss.py `sinkhorn_knopp_teacher`): SwAV's
    equal-partition codes of exp(t / teacher_temp) over all global views of the global batch, `sinkhorn_iterations`
    rounds; the centre is then not used nor updated, as there.
    """

    # buffers (register_buffer below)
    center: torch.Tensor
    step: torch.Tensor

    def __init__(
        self,
        out_dim: PositiveInt,
        student_temp: Temperature = 0.1,
        teacher_temp: Temperature = 0.04,
        warmup_teacher_temp: Temperature = 0.04,
        warmup_teacher_temp_steps: Count = 0,
        center_momentum: Fraction = 0.9,
        centering: Literal["centering", "sinkhorn_knopp"] = "centering",
        sinkhorn_iterations: PositiveInt = 3,
    ) -> None:
        super().__init__()
        if min(student_temp, teacher_temp, warmup_teacher_temp) <= 0 or not 0 <= center_momentum < 1:
            raise ValueError("DINOLoss: temperatures must be > 0 and 0 <= center_momentum < 1")
        if centering not in CENTERINGS:
            raise ValueError(f"loss.centering must be one of {', '.join(CENTERINGS)}, got {centering!r}")
        self.centering, self.sinkhorn_iterations = centering, sinkhorn_iterations
        self.student_temp, self.teacher_temp, self.warmup_teacher_temp = student_temp, teacher_temp, warmup_teacher_temp
        self.warmup_teacher_temp_steps, self.center_momentum = warmup_teacher_temp_steps, center_momentum
        self.register_buffer("center", torch.zeros(1, out_dim))
        self.register_counter("step")  # in the state_dict: a resumed run continues the warm-up exactly

    def set_step(self, step: int) -> None:
        """The optimizer step the teacher temperature follows (linear warm-up, then constant)."""
        self.set_counter("step", step)

    @property
    def current_teacher_temp(self) -> float:
        step = self.counter("step")  # the host copy: no device sync
        if step >= self.warmup_teacher_temp_steps:
            return self.teacher_temp
        return self.warmup_teacher_temp + step / self.warmup_teacher_temp_steps * (self.teacher_temp - self.warmup_teacher_temp)

    @torch.no_grad()
    def teacher_targets(self, teacher_output: torch.Tensor) -> torch.Tensor:
        """The teacher's target distributions (rows of (M, K)): softmax((t - centre) / temp), or Sinkhorn-Knopp codes
        of all M rows together (all ranks' rows with them) with `centering: sinkhorn_knopp`."""
        if self.centering == "sinkhorn_knopp":
            return sinkhorn(teacher_output.float(), self.current_teacher_temp, self.sinkhorn_iterations)
        return F.softmax((teacher_output.float() - self.center) / self.current_teacher_temp, dim=-1)

    @float32
    def forward(self, student_outputs: Sequence[torch.Tensor], teacher_outputs: Sequence[torch.Tensor]) -> torch.Tensor:
        teacher_probs = self.teacher_targets(torch.cat([t.detach() for t in teacher_outputs])).split([len(t) for t in teacher_outputs])
        student_log_probs = [F.log_softmax(s.float() / self.student_temp, dim=-1) for s in student_outputs]
        total: Any = 0.0  # a Tensor from the first pair on
        pairs = 0
        for i, q in enumerate(teacher_probs):
            for j, log_p in enumerate(student_log_probs):
                if i == j:
                    continue
                total = total + (-q * log_p).sum(dim=-1).mean()
                pairs += 1
        if pairs == 0:
            raise ValueError("DINOLoss needs at least 2 views (a teacher view and a different student view)")
        self.update_center(torch.cat(list(teacher_outputs)))
        return total / pairs

    @torch.no_grad()
    def update_center(self, teacher_output: torch.Tensor) -> None:
        """center <- m * center + (1 - m) * mean of teacher outputs over the global batch (centring only)."""
        if self.centering != "centering":
            return
        batch_sum = teacher_output.float().sum(0, keepdim=True)
        count = torch.full((), float(len(teacher_output)), device=batch_sum.device)  # a fill: no host-device copy
        if dist.is_distributed():
            torch.distributed.all_reduce(batch_sum)
            torch.distributed.all_reduce(count)
        self.center.mul_(self.center_momentum).add_(batch_sum / count, alpha=1 - self.center_momentum)
