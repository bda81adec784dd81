"""SimMIM: a simple framework for masked image modeling (Xie et al., CVPR 2022)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ssl_train.constraints import OpenFraction, PositiveInt
from ssl_train.methods.masks import block_mask
from ssl_train.methods.patches import patchify
from ssl_train.protocols import FeatureMapEncoder, is_vit


class SimMIMMethod(nn.Module):
    """SimMIM (Xie et al., CVPR 2022): masked blocks of the image are encoded as they are — a ViT sees a learned mask token
    in place of each masked patch's embedding, a CNN sees a learned per-channel fill value in place of the masked pixels —
    and a one-layer head (1x1 conv to stride^2 x channels + pixel shuffle) predicts the raw pixels; the loss (L1,
    MaskedPixelLoss with l1=true, norm_pix=false) covers the masked pixels only.

    `mask_patch_size` is the side of a masked block in pixels (a multiple of the ViT's patch size; the reference: 32 px
    blocks of 16 px patches at 224 px), `mask_ratio` the share of blocks masked (0.6). `features` for the online probe
    are the pooled encoding of the masked image (no second pass). `projector` is unused (head=identity)."""

    backbone: Any  # a ViT (protocols.is_vit) or a FeatureMapEncoder: tokens / stages, pool, patch_size, out_dim, model

    modalities = ("image",)

    def __init__(
        self,
        backbone: nn.Module,
        projector: nn.Module,
        loss: nn.Module,
        image_size: PositiveInt,
        channels: PositiveInt,
        mask_ratio: OpenFraction = 0.6,
        mask_patch_size: PositiveInt = 4,
        name: str = "simmim",
    ) -> None:
        super().__init__()
        self.backbone, self.projector, self.loss, self.mask_ratio, self.name = backbone, projector, loss, mask_ratio, name
        self.is_vit = is_vit(backbone)
        if self.is_vit:
            stride, features = self.backbone.patch_size, self.backbone.out_dim
            if mask_patch_size % stride:
                raise ValueError(f"method.mask_patch_size={mask_patch_size} must be a multiple of the ViT's patch size {stride}")
            self.mask_token = nn.Parameter(nn.init.trunc_normal_(torch.zeros(self.backbone.out_dim), std=0.02, a=-0.02, b=0.02))
        elif isinstance(backbone, FeatureMapEncoder):
            was_training = backbone.training
            with torch.no_grad():  # in eval mode: the dry forward must not move BatchNorm's running statistics
                last = backbone.eval().stages(torch.zeros(1, channels, image_size, image_size))[-1]
            backbone.train(was_training)
            features, stride = last.shape[1], math.ceil(image_size / last.shape[-1])
            self.mask_token = nn.Parameter(torch.zeros(channels))  # the fill value of masked pixels (0 = the data mean)
        else:
            raise ValueError(f"method={name} needs a ViT or a CNN that exposes its feature maps (stages), got {type(backbone).__name__}")
        if image_size % mask_patch_size:
            raise ValueError(f"method.mask_patch_size={mask_patch_size} does not divide the image size {image_size}")
        self.mask_patch_size, self.stride = mask_patch_size, stride
        self.patch = stride if self.is_vit else mask_patch_size  # the granularity the mask (and the loss) is counted in
        block_mask(1, image_size // mask_patch_size, mask_ratio, 1)  # a ratio that masks none or all stops here, at build
        self.decoder = nn.Sequential(nn.Conv2d(features, stride * stride * channels, kernel_size=1), nn.PixelShuffle(stride))

    def forward(self, views: Sequence[torch.Tensor], labels: torch.Tensor | None = None) -> dict:
        images = views[0]
        n, size = images.shape[0], images.shape[-1]
        mask = block_mask(n, size // self.mask_patch_size, self.mask_ratio, self.mask_patch_size // self.patch, images.device)  # (N, g, g)
        if self.is_vit:
            tokens = self.backbone.tokens(images, masked=mask.flatten(1), mask_token=self.mask_token)
            prefix = self.backbone.model.num_prefix_tokens
            feature_map = tokens[:, prefix:].transpose(1, 2).reshape(n, -1, size // self.stride, size // self.stride)
            features = self.backbone.pool(tokens)
        else:
            pixel_mask = mask.repeat_interleave(self.patch, 1).repeat_interleave(self.patch, 2)[:, None]
            masked_images = images * (1 - pixel_mask) + self.mask_token.view(1, -1, 1, 1) * pixel_mask
            feature_map = self.backbone.stages(masked_images)[-1]
            features = self.backbone.pool(feature_map)
        reconstruction = self.decoder(feature_map)[..., :size, :size]
        loss = self.loss(patchify(reconstruction, self.patch), patchify(images, self.patch), mask.flatten(1))
        return {"loss": loss, "features": features.detach(), "logs": {"masked_fraction": mask.float().mean()}}  # a tensor: no sync per step
