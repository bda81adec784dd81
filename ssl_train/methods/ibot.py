"""iBOT: DINO's class-token self-distillation plus masked-patch self-distillation (Zhou et al., ICLR 2022)."""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Annotated, Any

import torch
from torch import nn

from ssl_train.constraints import Count, Fraction, Limit, LossWeight, MaskRatioRange, Number, PositiveInt, Temperature
from ssl_train.heads import DINOHead
from ssl_train.losses.ibot import IBOTPatchLoss
from ssl_train.methods.common import encode_views
from ssl_train.methods.gram import GramAnchor
from ssl_train.methods.masks import beit_block_masks, masked_patch_index, to_device
from ssl_train.methods.multicrop import DINOParts, freeze_last_layer
from ssl_train.methods.patches import require_vit


class IBOTMethod(DINOParts):
    """iBOT (Zhou et al., ICLR 2022; bytedance/ibot): DINO (an EMA teacher, DINOLoss on the class token, the same head)
    plus a patch term. Each global view of each image is masked block-wise (BEiT's masks; with probability `masked_share`
    at a ratio ~ U(mask_ratio_range), else not at all: the reference's `--pred_ratio 0 0.3 --pred_ratio_var 0 0.2`), the
    student encodes them with a learned mask token in place of the masked patch embeddings, and the shared head's output
    for each masked patch matches the teacher's for the same patch unmasked (IBOTPatchLoss, teacher temperature
    `patch_teacher_temp`, warming up from the loss's warmup_teacher_temp over the same steps), weighted `patch_weight`
    (lambda2 = 1 there). The class-token term reads the student's masked global views, as in the reference. ViTs only.
    `patch_head` (a DINOHead given all but in_dim; None: the class token's head, iBOT's shared head) gives the patch
    term a head of its own with its own EMA teacher copy (DINOv2's ibot_separate_head). `gram_weight` > 0 adds DINOv3's
    Gram anchoring on the global views' patch tokens (methods/gram.py, GramAnchor; `gram_loss` a GramLoss).

    DINOv2 as published (Oquab et al. 2024; facebookresearch/dinov2 ssl_meta_arch.py) is this class configured
    (configs/method/dinov2.yaml): a separate patch head, Sinkhorn-Knopp teachers for both terms (loss.centering), the
    same teacher-temperature warm-up for both, KoLeo 0.1 on the class tokens, a ViT with layer scale and drop-path.
    """

    backbone: Any  # a ViT (protocols.is_vit): tokens, pool, patch_size, out_dim, model; nn.Module's __getattr__ would type them Tensor | Module

    modalities = ("image",)

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
        patch_weight: LossWeight = 1.0,
        patch_teacher_temp: Temperature = 0.07,
        mask_ratio_range: MaskRatioRange = (0.1, 0.5),
        masked_share: Annotated[float, Number(low=0, high=1, open_low=True)] = 0.5,
        patch_head: Callable[..., nn.Module] | None = None,
        gram_weight: LossWeight = 0.0,
        gram_start: Count = 0,
        gram_refresh_every: Count = 0,
        gram_max_updates: Limit = None,
        gram_loss: nn.Module | None = None,
        name: str = "ibot",
    ) -> None:
        super().__init__(backbone, projector, loss, name, (momentum_base, momentum_final), num_global_views, freeze_last_layer_epochs, koleo_weight)
        require_vit(backbone, name, "masks patch tokens")
        low, high = float(mask_ratio_range[0]), float(mask_ratio_range[-1])
        if not 0 <= low <= high < 1 or not 0 < masked_share <= 1:
            raise ValueError(
                f"iBOT: method.mask_ratio_range must be [low, high] with 0 <= low <= high < 1 and method.masked_share in (0, 1], "
                f"got {list(mask_ratio_range)} and {masked_share}"
            )
        self.patch_weight, self.masked_share, self.mask_ratio = patch_weight, masked_share, (low, high)
        self.mask_token = nn.Parameter(torch.zeros(self.backbone.out_dim))  # the reference's masked_embed, zeros at init
        built = patch_head(in_dim=self.backbone.out_dim) if patch_head is not None else None
        if built is not None and not isinstance(built, DINOHead):
            raise ValueError(f"method.patch_head must build a DINOHead (ssl_train.heads.DINOHead), got {type(built).__name__}")
        self.patch_head: DINOHead | None = built
        if self.patch_head is not None:
            self.teacher["patch_head"] = copy.deepcopy(self.patch_head).requires_grad_(False)
        head, dino = self.patch_head or self.projector, self.loss  # the DINOHead and DINOLoss check_dino_parts passed
        self.patch_loss = IBOTPatchLoss(
            head.out_dim,
            dino.student_temp,
            patch_teacher_temp,
            dino.warmup_teacher_temp,
            dino.warmup_teacher_temp_steps,
            dino.center_momentum,
            dino.centering,
            dino.sinkhorn_iterations,
        )
        self.gram = GramAnchor(self.teacher["backbone"], gram_loss, gram_weight, gram_start, gram_refresh_every, gram_max_updates)

    def forward(self, views: Sequence[torch.Tensor], labels: torch.Tensor | None = None) -> dict:
        num_global = min(self.num_global_views, len(views))
        images = torch.cat(list(views[:num_global]))
        grid = images.shape[-1] // self.backbone.patch_size
        low, high = self.mask_ratio
        ratios = torch.where(torch.rand(len(images)) < self.masked_share, low + torch.rand(len(images)) * (high - low), 0.0)
        host_masks = beit_block_masks(ratios, grid).flatten(1)  # (G x N, L), drawn on the host
        masks = to_device(host_masks, images.device)
        prefix = self.backbone.model.num_prefix_tokens
        tokens = self.backbone.tokens(images, masked=masks, mask_token=self.mask_token)
        features = [*self.backbone.pool(tokens).chunk(num_global), *encode_views(self.backbone, views[num_global:])]
        student = [self.projector(h) for h in features]
        # Sinkhorn-Knopp (DINOv2, ssl_meta_arch.py): both patch heads see the masked patches only, picked by indices
        # counted on the host; with a centre (iBOT) every patch's output enters the centre's mean
        masked_only = self.patch_loss.centering == "sinkhorn_knopp"
        masked_index, patch_weights = masked_patch_index(host_masks, images.device) if masked_only else (None, None)
        student_patches = self.patch_tokens(self.patch_head or self.projector, tokens[:, prefix:], masked_index)
        with torch.no_grad():
            teacher_backbone: Any = self.teacher["backbone"]  # the EMA copy of the ViT
            teacher_tokens = teacher_backbone.tokens(images)
            teacher = self.teacher["projector"](teacher_backbone.pool(teacher_tokens)).chunk(num_global)
            teacher_patch_head = self.teacher["patch_head"] if self.patch_head is not None else self.teacher["projector"]
            teacher_patches = self.patch_tokens(teacher_patch_head, teacher_tokens[:, prefix:], masked_index)
        if masked_index is not None and patch_weights is not None:
            patch_loss = self.patch_loss.masked_patches(student_patches, teacher_patches, patch_weights, len(images))
        else:
            patch_loss = self.patch_loss(student_patches.chunk(num_global), teacher_patches.chunk(num_global), masks.chunk(num_global))
        logs = {
            "momentum": self.teacher.momentum,
            "teacher_temp": self.loss.current_teacher_temp,
            "ibot_patch": patch_loss.detach(),  # tensors: logged at logging steps only, no sync per step
            "masked_fraction": masks.float().mean(),
        }
        loss = self.koleo.add_to(self.loss(student, teacher) + self.patch_weight * patch_loss, features[:num_global], logs)
        loss = self.gram.add_to(loss, tokens[:, prefix:], images, logs)
        return {"loss": loss, "features": features[0].detach(), "logs": logs}

    @staticmethod
    def patch_tokens(head: nn.Module, patches: torch.Tensor, masked_index: torch.Tensor | None) -> torch.Tensor:
        """The head's output for every patch token (V x N, L, K), or for the masked ones only (M, K) given their indices."""
        if masked_index is None:
            return head(patches)
        return head(patches.flatten(0, 1).index_select(0, masked_index))

    def on_after_backward(self, step: int, epoch: int) -> None:
        """No gradient for the last layer of either head in the first epoch(s) (DINOv2: every `last_layer`)."""
        super().on_after_backward(step, epoch)
        if epoch < self.freeze_last_layer_epochs and self.patch_head is not None:
            freeze_last_layer(self.patch_head)

    @torch.no_grad()
    def on_optimizer_step(self, step: int, max_steps: int) -> None:
        """EMA teacher update (heads included), both teacher-temperature schedules, the Gram teacher's schedule."""
        heads = {"patch_head": self.patch_head} if self.patch_head is not None else {}
        self.teacher.follow(step, max_steps, backbone=self.backbone, projector=self.projector, **heads)
        self.loss.set_step(step)
        self.patch_loss.set_step(step)
        self.gram.follow(step, self.teacher["backbone"])
