"""The multi-crop family: global and local crops, targets from the global views (DINO: EMA teacher with centred and
sharpened outputs; SwAV: prototype scores with Sinkhorn codes)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import torch
from torch import nn

from ssl_train.constraints import Count, Fraction, LossWeight, PositiveInt
from ssl_train.counters import HostCounters
from ssl_train.heads import DINOHead
from ssl_train.losses.dino import DINOLoss
from ssl_train.losses.koleo import KoLeoLoss
from ssl_train.losses.precision import float32_linear
from ssl_train.methods.common import encode_views
from ssl_train.methods.ema import EMATarget, renamed_keys
from ssl_train.methods.queue import FeatureQueue
from ssl_train.protocols import is_vit, width_of


def check_dino_parts(projector: nn.Module, loss: nn.Module) -> tuple[DINOHead, DINOLoss]:
    """DINO and iBOT need a DINOHead and a DINOLoss of the head's width; returns both, as those types."""
    if not isinstance(projector, DINOHead):
        raise ValueError(f"DINO needs head=dino (a DINOHead with a weight-normalised last layer), got {type(projector).__name__}")
    if not isinstance(loss, DINOLoss) or loss.center.shape[-1] != projector.out_dim:
        raise ValueError(f"DINO: loss.out_dim must equal the head's out_dim ({projector.out_dim})")
    return projector, loss


def freeze_last_layer(head: DINOHead) -> None:
    """The official `cancel_gradients_last_layer`: no gradient for the head's last layer."""
    for parameter in (*head.last_layer.parameters(), head.last_layer_norm):
        parameter.grad = None


class KoLeoTerm(nn.Module):
    """DINOv2's KoLeo regulariser (Oquab et al. 2024), weighted; off at weight 0 (no extra work)."""

    def __init__(self, weight: float) -> None:
        super().__init__()
        if weight < 0:
            raise ValueError(f"DINO: method.koleo_weight must be >= 0, got {weight}")
        self.weight, self.koleo = weight, KoLeoLoss()

    def add_to(self, loss: torch.Tensor, features: Sequence[torch.Tensor], logs: dict) -> torch.Tensor:
        """loss + weight x the KoLeo terms of `features` (the global views' backbone features); logged as `koleo`."""
        if self.weight <= 0:
            return loss
        koleo = sum(self.koleo(h) for h in features)
        logs["koleo"] = koleo.detach()  # a tensor: SSLModule logs it at logging steps only (no sync per step)
        return loss + self.weight * koleo


class DINOParts(nn.Module):
    """What DINO and iBOT set up alike: the student (backbone + DINOHead), its EMA teacher (older checkpoints' keys
    renamed), the global-view count, the head's last-layer freezing and the KoLeo term."""

    def __init__(
        self,
        backbone: nn.Module,
        projector: nn.Module,
        loss: nn.Module,
        name: str,
        momentum: tuple[float, float],
        num_global_views: int,
        freeze_last_layer_epochs: int,
        koleo_weight: float,
    ) -> None:
        super().__init__()
        projector, loss = check_dino_parts(projector, loss)
        self.backbone, self.projector, self.loss, self.name = backbone, projector, loss, name
        self.teacher = EMATarget(momentum[0], momentum[1], backbone=backbone, projector=projector)
        self._register_load_state_dict_pre_hook(
            renamed_keys({"teacher_backbone.": "teacher.backbone.", "teacher_projector.": "teacher.projector."}), with_module=True
        )  # iBOT: DINOMethod with ibot_weight > 0 before the split
        self.num_global_views, self.freeze_last_layer_epochs = num_global_views, freeze_last_layer_epochs
        self.koleo = KoLeoTerm(koleo_weight)

    def on_after_backward(self, step: int, epoch: int) -> None:
        """The official `cancel_gradients_last_layer`: no gradient for the head's last layer in the first epoch(s)."""
        if epoch < self.freeze_last_layer_epochs:
            freeze_last_layer(self.projector)

    def train(self, mode: bool = True) -> DINOParts:
        """A ViT's teacher stays in eval mode: no drop-path (DINO builds its teacher without, DINOv2 calls teacher.eval());
        a CNN's teacher follows the mode, its batch-norm on batch statistics as in DINO's ResNet runs."""
        super().train(mode)
        if is_vit(self.backbone):
            self.teacher.eval()
        return self


class DINOMethod(DINOParts):
    """DINO (Caron et al., ICCV 2021): the student (backbone + DINO head) matches an EMA teacher's centred,
    sharpened output of the other global views, from every view (global and local crops).

    The teacher (an EMATarget) sees global views only and gets no gradients; its momentum follows BYOL's cosine schedule;
    the loss's teacher temperature warms up with the optimizer step (DINOLoss.set_step). `koleo_weight` > 0 adds DINOv2's
    KoLeo regulariser (Oquab et al. 2024; weight 0.1 there) on the student's backbone features of each global view.
    iBOT (methods/ibot.py) is this with a masked-patch term.
    """

    def __init__(
        self,
        backbone: nn.Module,
        projector: nn.Module,
        loss: nn.Module,
        momentum_base: Fraction = 0.996,
        momentum_final: Fraction = 1.0,
        num_global_views: PositiveInt = 2,
        freeze_last_layer_epochs: Count = 1,
        koleo_weight: LossWeight = 0.0,
        name: str = "dino",
    ) -> None:
        super().__init__(backbone, projector, loss, name, (momentum_base, momentum_final), num_global_views, freeze_last_layer_epochs, koleo_weight)

    def forward(self, views: Sequence[torch.Tensor], labels: torch.Tensor | None = None) -> dict:
        num_global = min(self.num_global_views, len(views))
        features = encode_views(self.backbone, views)
        student = [self.projector(h) for h in features]
        with torch.no_grad():
            teacher = encode_views(lambda x: self.teacher["projector"](self.teacher["backbone"](x)), views[:num_global])
        return self.finish(self.loss(student, teacher), features, num_global, {})

    def finish(self, loss: torch.Tensor, features: list[torch.Tensor], num_global: int, logs: dict) -> dict:
        """The method's output: the loss plus the KoLeo term, the student's first view as features, the schedules' logs."""
        logs = {"momentum": self.teacher.momentum, "teacher_temp": self.loss.current_teacher_temp, **logs}
        return {"loss": self.koleo.add_to(loss, features[:num_global], logs), "features": features[0].detach(), "logs": logs}

    @property
    def momentum(self) -> float:
        return self.teacher.momentum

    @torch.no_grad()
    def on_optimizer_step(self, step: int, max_steps: int) -> None:
        """EMA teacher update and teacher-temperature schedule, both pure functions of the step."""
        self.teacher.follow(step, max_steps, backbone=self.backbone, projector=self.projector)
        self.loss.set_step(step)


class SwAVMethod(HostCounters):
    """SwAV (Caron et al., NeurIPS 2020): codes of each global view (Sinkhorn-Knopp over prototype scores) are
    predicted from every other view's scores. Prototypes are re-normalised before each forward and frozen
    for the first `freeze_prototypes_steps` optimizer steps, as in the paper. With `queue_size` > 0, from optimizer
    step `queue_start_steps` on, the last `queue_size` embeddings of each global view extend the batch for Sinkhorn
    (the paper's queue for small batches).
    """

    step: torch.Tensor  # a counter (register_counter below)

    def __init__(
        self,
        backbone: nn.Module,
        projector: nn.Module,
        loss: nn.Module,
        num_prototypes: PositiveInt = 100,
        freeze_prototypes_steps: Count = 0,
        num_global_views: PositiveInt = 2,
        queue_size: Count = 0,
        queue_start_steps: Count = 0,
        name: str = "swav",
    ) -> None:
        super().__init__()
        if num_prototypes < 2:
            raise ValueError(f"SwAV: method.num_prototypes must be >= 2, got {num_prototypes}")
        self.backbone, self.projector, self.loss, self.name = backbone, projector, loss, name
        self.prototypes = nn.Linear(width_of(projector), num_prototypes, bias=False)
        self.freeze_prototypes_steps, self.num_global_views = freeze_prototypes_steps, num_global_views
        # the reference's queue (main_swav.py, --queue_length, --epoch_queue_starts): past embeddings of each global
        # view join the batch for Sinkhorn once full; in the state_dict, so a resumed run keeps it
        self.queues = nn.ModuleList(FeatureQueue(queue_size, width_of(projector)) for _ in range(num_global_views)) if queue_size else None
        self.queue_start_steps = queue_start_steps
        self.register_counter("step")

    def forward(self, views: Sequence[torch.Tensor], labels: torch.Tensor | None = None) -> dict:
        with torch.no_grad():
            self.prototypes.weight.copy_(nn.functional.normalize(self.prototypes.weight, dim=1))
        features = encode_views(self.backbone, views)
        embeddings = [nn.functional.normalize(self.projector(h), dim=1) for h in features]
        scores = [float32_linear(z, self.prototypes.weight) for z in embeddings]
        num_global = min(self.num_global_views, len(views))
        queue_scores = None
        if self.queues is not None and self.training and self.counter("step") >= self.queue_start_steps:
            queues = cast(Sequence[FeatureQueue], self.queues)  # nn.ModuleList is not generic: its items type as Module
            if all(q.full for q in queues[:num_global]):  # used once full, as the reference
                with torch.no_grad():
                    queue_scores = [float32_linear(q.get(), self.prototypes.weight) for q in queues[:num_global]]
            for queue, z in zip(queues, embeddings[:num_global], strict=False):
                queue.push(z.detach())
        loss = self.loss(scores, num_global=num_global, queue_scores=queue_scores)
        return {"loss": loss, "features": features[0].detach(), "logs": {"queue_in_use": float(queue_scores is not None)}}

    def on_optimizer_step(self, step: int, max_steps: int) -> None:
        self.set_counter("step", step)

    def on_after_backward(self, step: int, epoch: int) -> None:
        """Drop the prototypes' gradient while they are frozen (first freeze_prototypes_steps steps)."""
        if step < self.freeze_prototypes_steps:
            self.prototypes.weight.grad = None
