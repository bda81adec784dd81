"""MAE: masked autoencoders are scalable vision learners (He et al., CVPR 2022)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ssl_train.constraints import OpenFraction, PositiveInt
from ssl_train.methods.masks import random_masking
from ssl_train.methods.patches import final_token_norm, patchify, require_vit, sincos_2d, transformer_blocks


class MAEDecoder(nn.Module):
    """MAE's lightweight decoder: encoder tokens -> `dim`, mask tokens put back at the masked places, fixed sin-cos
    positions (zero for the class token, as the reference's decoder_pos_embed), `depth` transformer blocks over the class
    token and all patches, a linear map to each patch's pixels (the class token's prediction is dropped). The class token
    goes through the decoder as in the reference, so it is trained too."""

    positions: torch.Tensor  # a buffer (register_buffer below)

    def __init__(self, in_dim: int, num_patches: int, patch_pixels: int, dim: int = 128, depth: int = 2, heads: int = 4, prefix_tokens: int = 1) -> None:
        super().__init__()
        grid = int(math.isqrt(num_patches))
        if grid * grid != num_patches:
            raise ValueError(f"MAEDecoder: {num_patches} patches are not a square grid")
        self.embed = nn.Linear(in_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        positions = torch.cat([torch.zeros(prefix_tokens, dim), sincos_2d(dim, grid)])[None]
        self.register_buffer("positions", positions, persistent=False)
        self.blocks = transformer_blocks(dim, depth, heads)
        self.norm = nn.LayerNorm(dim)
        self.predict = nn.Linear(dim, patch_pixels)
        self.prefix_tokens = prefix_tokens
        nn.init.normal_(self.mask_token, std=0.02)

    def forward(self, tokens: torch.Tensor, restore: torch.Tensor) -> torch.Tensor:
        """tokens: (N, prefix + K, in_dim) encoder output; restore: (N, L). Returns (N, L, patch_pixels)."""
        x = self.embed(tokens)
        prefix, visible = x[:, : self.prefix_tokens], x[:, self.prefix_tokens :]
        n, k, dim = visible.shape
        patches = torch.cat([visible, self.mask_token.expand(n, restore.shape[1] - k, dim)], dim=1)
        patches = torch.gather(patches, 1, restore[..., None].expand(-1, -1, dim))
        x = self.blocks(torch.cat([prefix, patches], dim=1) + self.positions)
        return self.predict(self.norm(x))[:, self.prefix_tokens :]


class MAEMethod(nn.Module):
    """Masked autoencoder (He et al., CVPR 2022): a ViT encoder sees only a random `1 - mask_ratio` of the patches (75%
    masked: 4x fewer tokens), a small decoder (MAEDecoder) predicts the pixels of the masked ones from the encoded
    visible ones and mask tokens; the loss (MaskedPixelLoss, normalised pixels) covers masked patches only.

    One view per image (crop + flip, no colour changes). `features` for the online probe are the pooled encoder output
    of the visible patches (no second pass over all patches). `projector` is unused (head=identity): MAE has no head.
    Judge it by fine-tuning (eval=finetune): MAE's linear probe is weak by design (the paper's Table 1 vs Fig. 9).
    """

    backbone: Any  # a ViT (protocols.is_vit): tokens, pool, patch_size, out_dim, model; nn.Module's __getattr__ would type them Tensor | Module

    modalities = ("image",)

    def __init__(
        self,
        backbone: nn.Module,
        projector: nn.Module,
        loss: nn.Module,
        image_size: PositiveInt,
        channels: PositiveInt,
        mask_ratio: OpenFraction = 0.75,
        decoder_dim: PositiveInt = 128,
        decoder_depth: PositiveInt = 2,
        decoder_heads: PositiveInt = 4,
        name: str = "mae",
    ) -> None:
        super().__init__()
        require_vit(backbone, name)
        self.backbone, self.projector, self.loss, self.mask_ratio, self.name = backbone, projector, loss, mask_ratio, name
        self.patch, self.channels = self.backbone.patch_size, channels
        num_patches = self.backbone.num_patches(image_size)
        random_masking(1, num_patches, mask_ratio)  # a ratio that keeps none or masks none stops here, at build
        self.encoder_norm = final_token_norm(backbone)  # the reference's encoder `self.norm` (timm's is a no-op with global_pool avg)
        self.decoder = MAEDecoder(
            self.backbone.out_dim,
            num_patches,
            self.patch * self.patch * channels,
            decoder_dim,
            decoder_depth,
            decoder_heads,
            prefix_tokens=self.backbone.model.num_prefix_tokens,
        )

    def forward(self, views: Sequence[torch.Tensor], labels: torch.Tensor | None = None) -> dict:
        images = views[0]
        target = patchify(images, self.patch)
        keep, mask, restore = random_masking(images.shape[0], target.shape[1], self.mask_ratio, images.device)
        tokens = self.backbone.tokens(images, keep)
        loss = self.loss(self.decoder(self.encoder_norm(tokens), restore), target, mask)
        return {"loss": loss, "features": self.backbone.pool(tokens).detach(), "logs": {"visible_patches": float(keep.shape[1])}}
