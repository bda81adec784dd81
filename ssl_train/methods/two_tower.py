"""The image-text family: an image tower and a text tower projected into one space, contrasted pair against pair (CLIP)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ssl_train.protocols import width_of


class CLIPMethod(nn.Module):
    """CLIP (Radford et al., ICML 2021): `backbone` + `projector` embed images, `text_encoder` + a linear projection
    embed captions into the projector's space; `loss` (CLIPLoss) contrasts each image with every caption of the
    global batch and back. Views are [images, caption token ids].

    `encode_image` / `encode_text` give the L2-normalised embeddings that zero-shot classification and retrieval
    (ssl_train.eval.zero_shot) compare. The text projection has no bias, as CLIP's `text_projection`.
    """

    loss: Any  # a CLIPLoss or SigLIPLoss: its learnt logit_scale and clamp_()

    modalities = ("image_text",)

    def __init__(self, backbone: nn.Module, projector: nn.Module, loss: nn.Module, text_encoder: nn.Module, name: str = "clip") -> None:
        super().__init__()
        self.backbone, self.projector, self.loss, self.text_encoder, self.name = backbone, projector, loss, text_encoder, name
        self.text_projection = nn.Linear(width_of(text_encoder), width_of(projector), bias=False)
        nn.init.normal_(self.text_projection.weight, std=width_of(text_encoder) ** -0.5)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.projector(self.backbone(images)).float(), dim=1)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.text_projection(self.text_encoder(tokens)).float(), dim=1)

    def forward(self, views: Sequence[torch.Tensor], labels: torch.Tensor | None = None) -> dict:
        if len(views) != 2:
            raise ValueError(f"{self.name} takes [images, caption tokens] (augment=clip), got {len(views)} views")
        images, tokens = views
        features = self.backbone(images)
        loss = self.loss(self.projector(features), self.text_projection(self.text_encoder(tokens)))
        return {"loss": loss, "features": features.detach(), "logs": {"logit_scale": self.loss.logit_scale.detach().exp()}}

    def on_optimizer_step(self, step: int, max_steps: int) -> None:
        """Clip the learnt logit scale after every optimizer step (open_clip's training loop does the same)."""
        self.loss.clamp_()
