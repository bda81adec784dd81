"""The multi-crop family: global and local crops, targets from the global views (DINO: EMA teacher with centred and
sharpened outputs; SwAV: prototype scores with Sinkhorn codes)."""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn

from ssl_train.losses.ibot import IBOTPatchLoss
from ssl_train.losses.koleo import KoLeoLoss
from ssl_train.losses.precision import float32_linear
from ssl_train.methods.common import encode_views
from ssl_train.methods.ema import cosine_momentum, ema_update
from ssl_train.methods.masked import beit_block_masks
from ssl_train.methods.queue import FeatureQueue


class DINOMethod(nn.Module):
    """DINO (Caron et al., ICCV 2021): the student (backbone + DINO head) matches an EMA teacher's centred,
    sharpened output of the other global views, from every view (global and local crops).

    The teacher sees global views only and gets no gradients; its momentum follows BYOL's cosine schedule;
    the loss's teacher temperature warms up with the optimizer step (DINOLoss.set_step). `koleo_weight` > 0 adds DINOv2's
    KoLeo regulariser (Oquab et al. 2024; weight 0.1 there) on the student's backbone features of each global view.

    `ibot_weight` > 0 (a ViT backbone only) adds iBOT's masked-patch self-distillation (Zhou et al. 2022; lambda2 = 1
    there): each global view of each image is masked block-wise (BEiT's masks; with probability `ibot_masked_share` at a
    ratio ~ U(ibot_mask_ratio), else not at all: the reference's `--pred_ratio 0 0.3 --pred_ratio_var 0 0.2`), the student
    encodes them with a learned mask token in place of the masked patch embeddings, and the shared head's output for
    each masked patch matches the teacher's for the same patch unmasked (IBOTPatchLoss, teacher temperature
    `ibot_teacher_temp`, warming up from the loss's warmup_teacher_temp over the same steps). The class-token term then
    reads the student's masked global views, as in the reference.
    """

    def __init__(self, backbone: nn.Module, projector: nn.Module, loss: nn.Module, momentum_base: float = 0.996,
                 momentum_final: float = 1.0, num_global_views: int = 2, freeze_last_layer_epochs: int = 1, koleo_weight: float = 0.0,
                 ibot_weight: float = 0.0, ibot_teacher_temp: float = 0.07, ibot_mask_ratio: Sequence[float] = (0.1, 0.5),
                 ibot_masked_share: float = 0.5, name: str = "dino") -> None:
        super().__init__()
        if not hasattr(projector, "last_layer_norm"):
            raise ValueError(f"DINO needs head=dino (a DINOHead with a weight-normalised last layer), got {type(projector).__name__}")
        if getattr(loss, "center", None) is None or loss.center.shape[-1] != projector.out_dim:
            raise ValueError(f"DINO: loss.out_dim must equal the head's out_dim ({projector.out_dim})")
        self.backbone, self.projector, self.loss, self.name = backbone, projector, loss, name
        self.teacher_backbone = copy.deepcopy(backbone).requires_grad_(False)
        self.teacher_projector = copy.deepcopy(projector).requires_grad_(False)
        self.momentum_base, self.momentum_final, self.momentum = momentum_base, momentum_final, momentum_base
        self.num_global_views, self.freeze_last_layer_epochs = num_global_views, freeze_last_layer_epochs
        if koleo_weight < 0:
            raise ValueError(f"DINO: method.koleo_weight must be >= 0, got {koleo_weight}")
        self.koleo_weight, self.koleo = koleo_weight, KoLeoLoss()
        self.ibot_weight, self.ibot_masked_share = ibot_weight, ibot_masked_share
        self.ibot_mask_ratio = (float(ibot_mask_ratio[0]), float(ibot_mask_ratio[-1]))
        self.mask_token: nn.Parameter | None = None
        self.patch_loss: IBOTPatchLoss | None = None
        if ibot_weight < 0:
            raise ValueError(f"DINO: method.ibot_weight must be >= 0, got {ibot_weight}")
        if ibot_weight > 0:
            if not getattr(backbone, "is_vit", False):
                raise ValueError(f"DINO: method.ibot_weight > 0 masks patch tokens and needs a ViT backbone (backbone=vit_tiny), got {type(backbone).__name__}")
            if not 0 <= self.ibot_mask_ratio[0] <= self.ibot_mask_ratio[1] < 1 or not 0 < ibot_masked_share <= 1:
                raise ValueError(f"DINO: method.ibot_mask_ratio must be [low, high] with 0 <= low <= high < 1 and method.ibot_masked_share in (0, 1], "
                                 f"got {list(ibot_mask_ratio)} and {ibot_masked_share}")
            self.mask_token = nn.Parameter(torch.zeros(backbone.out_dim))  # the reference's masked_embed, zeros at init
            self.patch_loss = IBOTPatchLoss(projector.out_dim, loss.student_temp, ibot_teacher_temp, loss.warmup_teacher_temp,
                                            loss.warmup_teacher_temp_steps, loss.center_momentum)

    def forward(self, views: Sequence[torch.Tensor], labels: torch.Tensor | None = None) -> dict:
        num_global = min(self.num_global_views, len(views))
        if self.patch_loss is not None:
            return self._forward_with_patches(views, num_global)
        features = encode_views(self.backbone, views)
        student = [self.projector(h) for h in features]
        with torch.no_grad():
            teacher = encode_views(lambda x: self.teacher_projector(self.teacher_backbone(x)), views[:num_global])
        return self._finish(self.loss(student, teacher), features, num_global, {})

    def _forward_with_patches(self, views: Sequence[torch.Tensor], num_global: int) -> dict:
        """The iBOT variant: global views masked for the student, patch outputs distilled on the masked patches."""
        images = torch.cat(list(views[:num_global]))
        grid = images.shape[-1] // self.backbone.patch_size
        low, high = self.ibot_mask_ratio
        ratios = torch.where(torch.rand(len(images)) < self.ibot_masked_share, low + torch.rand(len(images)) * (high - low), 0.0)
        masks = beit_block_masks(ratios, grid).flatten(1).to(images.device)  # (G x N, L)
        prefix = self.backbone.model.num_prefix_tokens
        tokens = self.backbone.tokens(images, masked=masks, mask_token=self.mask_token)
        features = [*self.backbone.pool(tokens).chunk(num_global), *encode_views(self.backbone, views[num_global:])]
        student = [self.projector(h) for h in features]
        student_patches = self.projector(tokens[:, prefix:]).chunk(num_global)
        with torch.no_grad():
            teacher_tokens = self.teacher_backbone.tokens(images)
            teacher = self.teacher_projector(self.teacher_backbone.pool(teacher_tokens)).chunk(num_global)
            teacher_patches = self.teacher_projector(teacher_tokens[:, prefix:]).chunk(num_global)
        patch_loss = self.patch_loss(student_patches, teacher_patches, masks.chunk(num_global))
        logs = {"ibot_patch": float(patch_loss.detach()), "masked_fraction": float(masks.float().mean())}
        return self._finish(self.loss(student, teacher) + self.ibot_weight * patch_loss, features, num_global, logs)

    def _finish(self, loss: torch.Tensor, features: list[torch.Tensor], num_global: int, logs: dict) -> dict:
        logs = {"momentum": self.momentum, "teacher_temp": self.loss.current_teacher_temp, **logs}
        if self.koleo_weight > 0:
            koleo = sum(self.koleo(h) for h in features[:num_global])
            loss = loss + self.koleo_weight * koleo
            logs["koleo"] = float(koleo.detach())
        return {"loss": loss, "features": features[0].detach(), "logs": logs}

    @torch.no_grad()
    def on_optimizer_step(self, step: int, max_steps: int) -> None:
        """EMA teacher update and teacher-temperature schedule, both pure functions of the step."""
        self.momentum = cosine_momentum(step, max_steps, self.momentum_base, self.momentum_final)
        ema_update(self.teacher_backbone, self.backbone, self.momentum)
        ema_update(self.teacher_projector, self.projector, self.momentum)
        self.loss.set_step(step)
        if self.patch_loss is not None:
            self.patch_loss.set_step(step)

    def on_after_backward(self, step: int, epoch: int) -> None:
        """The official `cancel_gradients_last_layer`: no gradient for the head's last layer in the first epoch(s)."""
        if epoch < self.freeze_last_layer_epochs:
            for parameter in (*self.projector.last_layer.parameters(), self.projector.last_layer_norm):
                parameter.grad = None


class SwAVMethod(nn.Module):
    """SwAV (Caron et al., NeurIPS 2020): codes of each global view (Sinkhorn-Knopp over prototype scores) are
    predicted from every other view's scores. Prototypes are re-normalised before each forward and frozen
    for the first `freeze_prototypes_steps` optimizer steps, as in the paper. With `queue_size` > 0, from optimizer
    step `queue_start_steps` on, the last `queue_size` embeddings of each global view extend the batch for Sinkhorn
    (the paper's queue for small batches).
    """

    def __init__(self, backbone: nn.Module, projector: nn.Module, loss: nn.Module, num_prototypes: int = 100,
                 freeze_prototypes_steps: int = 0, num_global_views: int = 2, queue_size: int = 0, queue_start_steps: int = 0,
                 name: str = "swav") -> None:
        super().__init__()
        if num_prototypes < 2:
            raise ValueError(f"SwAV: method.num_prototypes must be >= 2, got {num_prototypes}")
        self.backbone, self.projector, self.loss, self.name = backbone, projector, loss, name
        self.prototypes = nn.Linear(projector.out_dim, num_prototypes, bias=False)
        self.freeze_prototypes_steps, self.num_global_views = freeze_prototypes_steps, num_global_views
        # the reference's queue (main_swav.py, --queue_length, --epoch_queue_starts): past embeddings of each global
        # view join the batch for Sinkhorn once full; in the state_dict, so a resumed run keeps it
        self.queues = nn.ModuleList(FeatureQueue(queue_size, projector.out_dim) for _ in range(num_global_views)) if queue_size else None
        self.queue_start_steps = queue_start_steps
        self.register_buffer("step", torch.zeros((), dtype=torch.long))

    def forward(self, views: Sequence[torch.Tensor], labels: torch.Tensor | None = None) -> dict:
        with torch.no_grad():
            self.prototypes.weight.copy_(nn.functional.normalize(self.prototypes.weight, dim=1))
        features = encode_views(self.backbone, views)
        embeddings = [nn.functional.normalize(self.projector(h), dim=1) for h in features]
        scores = [float32_linear(z, self.prototypes.weight) for z in embeddings]
        num_global = min(self.num_global_views, len(views))
        queue_scores = None
        if self.queues is not None and self.training and int(self.step) >= self.queue_start_steps:
            if all(int(q.filled) == len(q.features) for q in self.queues[:num_global]):  # used once full, as the reference
                with torch.no_grad():
                    queue_scores = [float32_linear(q.get(), self.prototypes.weight) for q in self.queues[:num_global]]
            for queue, z in zip(self.queues, embeddings[:num_global], strict=False):
                queue.push(z.detach())
        loss = self.loss(scores, num_global=num_global, queue_scores=queue_scores)
        return {"loss": loss, "features": features[0].detach(), "logs": {"queue_in_use": float(queue_scores is not None)}}

    def on_optimizer_step(self, step: int, max_steps: int) -> None:
        self.step.fill_(step)

    def on_after_backward(self, step: int, epoch: int) -> None:
        """Drop the prototypes' gradient while they are frozen (first freeze_prototypes_steps steps)."""
        if step < self.freeze_prototypes_steps:
            self.prototypes.weight.grad = None
