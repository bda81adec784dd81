"""MSN: masked siamese networks for label-efficient learning (Assran et al., ECCV 2022)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ssl_train.constraints import BelowOne, Count, Fraction, PositiveInt
from ssl_train.methods.common import encode_views
from ssl_train.methods.ema import EMATarget
from ssl_train.methods.masks import random_masking
from ssl_train.methods.patches import require_vit
from ssl_train.protocols import width_of


class MSNMethod(nn.Module):
    """MSN (Assran et al., ECCV 2022; facebookresearch/msn src/msn_train.py, src/deit.py): the anchor views of an image
    match, over learnable prototypes, the sharpened prototype assignment an EMA target network (backbone + head) gives an
    unmasked view of it. views[0] is the target's view (no gradient); the other global views are anchors with a random
    `mask_ratio` of their patch tokens dropped (the reference's patch_drop: position embeddings added, then a random
    subset kept, class token always); the local crops are the focal anchors, unmasked as in the reference. The loss
    (MSNLoss) reads every anchor's head output, the target's and the prototypes (K = `num_prototypes`, width of the head,
    uniform init in +-1/sqrt(width) as the reference). The prototypes get no gradient for the first
    `freeze_prototypes_steps` optimizer steps (0 in the reference, which trains them from the start). The target's
    momentum rises linearly from momentum_base to momentum_final. `features` for the online probe are the first masked
    anchor's (the first focal view's without one). `mask_ratio` > 0 needs a ViT.
    """

    backbone: Any  # a ViT (protocols.is_vit) when masking: tokens, pool, num_patches; nn.Module's __getattr__ would type them Tensor | Module

    modalities = ("image",)

    def __init__(
        self,
        backbone: nn.Module,
        projector: nn.Module,
        loss: nn.Module,
        image_size: PositiveInt,
        channels: PositiveInt,
        mask_ratio: BelowOne = 0.15,
        num_prototypes: PositiveInt = 1024,
        freeze_prototypes_steps: Count = 0,
        num_global_views: PositiveInt = 2,
        momentum_base: Fraction = 0.996,
        momentum_final: Fraction = 1.0,
        name: str = "msn",
    ) -> None:
        super().__init__()
        if mask_ratio > 0:
            vit = require_vit(backbone, name, f"drops patch tokens (method.mask_ratio={mask_ratio} > 0)")
            random_masking(1, vit.num_patches(image_size), mask_ratio)  # a ratio that keeps no patch stops here, at build
        if num_prototypes < 2:
            raise ValueError(f"MSN: method.num_prototypes must be >= 2, got {num_prototypes}")
        self.backbone, self.projector, self.loss, self.name = backbone, projector, loss, name
        self.target = EMATarget(momentum_base, momentum_final, "linear", backbone=backbone, projector=projector)
        width = width_of(projector)
        self.prototypes = nn.Parameter(torch.empty(num_prototypes, width).uniform_(-(width**-0.5), width**-0.5))
        self.mask_ratio, self.freeze_prototypes_steps, self.num_global_views = mask_ratio, freeze_prototypes_steps, num_global_views
        del channels  # the build passes every masked-modelling method the image's channels: MSN drops tokens, it never predicts pixels

    def forward(self, views: Sequence[torch.Tensor], labels: torch.Tensor | None = None) -> dict:
        if len(views) < 2:
            raise ValueError(
                f"MSN needs a target view and at least one anchor view, got {len(views)} view(s): augment.num_global >= 2 or augment.num_local >= 1"
            )
        num_global = min(self.num_global_views, len(views))
        with torch.no_grad():
            target = self.target["projector"](self.target["backbone"](views[0]))
        features: list[torch.Tensor] = []
        masked_views = views[1:num_global]
        if masked_views and self.mask_ratio > 0:
            images = torch.cat(list(masked_views))
            keep = random_masking(len(images), self.backbone.num_patches(images.shape[-1]), self.mask_ratio, images.device)[0]
            features += self.backbone.pool(self.backbone.tokens(images, keep)).chunk(len(masked_views))
        else:
            features += encode_views(self.backbone, masked_views)
        features += encode_views(self.backbone, views[num_global:])
        anchors = encode_views(self.projector, features[: len(masked_views)]) + encode_views(self.projector, features[len(masked_views) :])
        loss = self.loss(anchors, target, self.prototypes)
        logs = {"momentum": self.target.momentum, **getattr(self.loss, "terms", {})}
        return {"loss": loss, "features": features[0].detach(), "logs": logs}

    @property
    def momentum(self) -> float:
        return self.target.momentum

    @torch.no_grad()
    def on_optimizer_step(self, step: int, max_steps: int) -> None:
        """EMA update of the target backbone and head with the reference's linear momentum schedule."""
        self.target.follow(step, max_steps, backbone=self.backbone, projector=self.projector)

    def on_after_backward(self, step: int, epoch: int) -> None:
        """No gradient for the prototypes in the first freeze_prototypes_steps optimizer steps."""
        if step < self.freeze_prototypes_steps:
            self.prototypes.grad = None
