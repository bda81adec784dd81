"""The masked-modelling family: hide most of an image and predict it (MAE)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn


def patchify(images: torch.Tensor, patch: int) -> torch.Tensor:
    """(N, C, H, W) -> (N, L, patch^2 * C) non-overlapping patches in row-major order, pixels of a patch (row, col, channel)."""
    n, c, h, w = images.shape
    if h % patch or w % patch:
        raise ValueError(f"patchify: image size {h}x{w} is not a multiple of the patch size {patch}")
    x = images.reshape(n, c, h // patch, patch, w // patch, patch)
    return torch.einsum("nchpwq->nhwpqc", x).reshape(n, (h // patch) * (w // patch), patch * patch * c)


def unpatchify(patches: torch.Tensor, patch: int, channels: int, height: int | None = None) -> torch.Tensor:
    """Inverse of patchify: (N, L, patch^2 * C) -> (N, C, H, W) (square unless `height` patches-rows is given)."""
    n, length, _ = patches.shape
    rows = height // patch if height else int(math.isqrt(length))
    cols = length // rows
    x = patches.reshape(n, rows, cols, patch, patch, channels)
    return torch.einsum("nhwpqc->nchpwq", x).reshape(n, channels, rows * patch, cols * patch)


def random_masking(batch: int, length: int, ratio: float, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """MAE's per-sample random masking by argsort of uniform noise: (keep (N, K) indices of the visible patches, mask
    (N, L) with 1 = masked, restore (N, L) the permutation that puts the K visible + L - K mask tokens back in place),
    K = int(L * (1 - ratio))."""
    keep_count = int(length * (1 - ratio))
    if not 0 < keep_count < length:
        raise ValueError(f"method.mask_ratio={ratio} keeps {keep_count} of {length} patches: choose a ratio that keeps some and masks some")
    shuffle = torch.rand(batch, length, device=device).argsort(dim=1)
    restore = shuffle.argsort(dim=1)
    mask = torch.ones(batch, length, device=device)
    mask[:, :keep_count] = 0
    return shuffle[:, :keep_count], torch.gather(mask, 1, restore), restore


def sincos_2d(dim: int, grid: int) -> torch.Tensor:
    """(grid^2, dim) fixed 2-D sine-cosine position embedding (MAE's decoder): half the channels encode rows, half columns."""
    if dim % 4:
        raise ValueError(f"sincos_2d: dim must be a multiple of 4, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim / 4))
    rows, cols = torch.meshgrid(torch.arange(grid, dtype=torch.float64), torch.arange(grid, dtype=torch.float64), indexing="ij")
    parts = [torch.sin(cols.flatten()[:, None] * omega), torch.cos(cols.flatten()[:, None] * omega),
             torch.sin(rows.flatten()[:, None] * omega), torch.cos(rows.flatten()[:, None] * omega)]
    return torch.cat(parts, dim=1).float()


class MAEDecoder(nn.Module):
    """MAE's lightweight decoder: encoder tokens -> `dim`, mask tokens put back at the masked places, fixed sin-cos
    positions (zero for the class token, as the reference's decoder_pos_embed), `depth` transformer blocks over the class
    token and all patches, a linear map to each patch's pixels (the class token's prediction is dropped). The class token
    goes through the decoder as in the reference, so it is trained too."""

    def __init__(self, in_dim: int, num_patches: int, patch_pixels: int, dim: int = 128, depth: int = 2, heads: int = 4, prefix_tokens: int = 1) -> None:
        super().__init__()
        from timm.models.vision_transformer import Block

        grid = int(math.isqrt(num_patches))
        if grid * grid != num_patches:
            raise ValueError(f"MAEDecoder: {num_patches} patches are not a square grid")
        self.embed = nn.Linear(in_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        positions = torch.cat([torch.zeros(prefix_tokens, dim), sincos_2d(dim, grid)])[None]
        self.register_buffer("positions", positions, persistent=False)
        self.blocks = nn.Sequential(*(Block(dim, heads, mlp_ratio=4.0, qkv_bias=True) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim)
        self.predict = nn.Linear(dim, patch_pixels)
        self.prefix_tokens = prefix_tokens
        nn.init.normal_(self.mask_token, std=0.02)

    def forward(self, tokens: torch.Tensor, restore: torch.Tensor) -> torch.Tensor:
        """tokens: (N, prefix + K, in_dim) encoder output; restore: (N, L). Returns (N, L, patch_pixels)."""
        x = self.embed(tokens)
        prefix, visible = x[:, :self.prefix_tokens], x[:, self.prefix_tokens:]
        n, k, dim = visible.shape
        patches = torch.cat([visible, self.mask_token.expand(n, restore.shape[1] - k, dim)], dim=1)
        patches = torch.gather(patches, 1, restore[..., None].expand(-1, -1, dim))
        x = self.blocks(torch.cat([prefix, patches], dim=1) + self.positions)
        return self.predict(self.norm(x))[:, self.prefix_tokens:]


class MAEMethod(nn.Module):
    """Masked autoencoder (He et al., CVPR 2022): a ViT encoder sees only a random `1 - mask_ratio` of the patches (75%
    masked: 4x fewer tokens), a small decoder (MAEDecoder) predicts the pixels of the masked ones from the encoded
    visible ones and mask tokens; the loss (MaskedPixelLoss, normalised pixels) covers masked patches only.

    One view per image (crop + flip, no colour changes). `features` for the online probe are the pooled encoder output
    of the visible patches (no second pass over all patches). `projector` is unused (head=identity): MAE has no head.
    Judge it by fine-tuning (eval=finetune): MAE's linear probe is weak by design (the paper's Table 1 vs Fig. 9).
    """

    modalities = ("image",)

    def __init__(self, backbone: nn.Module, projector: nn.Module, loss: nn.Module, image_size: int, channels: int, mask_ratio: float = 0.75,
                 decoder_dim: int = 128, decoder_depth: int = 2, decoder_heads: int = 4, name: str = "mae") -> None:
        super().__init__()
        if not getattr(backbone, "is_vit", False):
            raise ValueError(f"method={name} needs a vision transformer backbone (backbone=vit_tiny, vit_small, or backbone=timm with a ViT name), "
                             f"got {type(backbone).__name__}")
        self.backbone, self.projector, self.loss, self.mask_ratio, self.name = backbone, projector, loss, mask_ratio, name
        self.patch, self.channels = backbone.patch_size, channels
        num_patches = backbone.num_patches(image_size)
        random_masking(1, num_patches, mask_ratio)  # a ratio that keeps none or masks none stops here, at build
        self.decoder = MAEDecoder(backbone.out_dim, num_patches, self.patch * self.patch * channels, decoder_dim, decoder_depth, decoder_heads,
                                  prefix_tokens=backbone.model.num_prefix_tokens)

    def forward(self, views: Sequence[torch.Tensor], labels: torch.Tensor | None = None) -> dict:
        images = views[0]
        target = patchify(images, self.patch)
        keep, mask, restore = random_masking(images.shape[0], target.shape[1], self.mask_ratio, images.device)
        tokens = self.backbone.tokens(images, keep)
        loss = self.loss(self.decoder(tokens, restore), target, mask)
        return {"loss": loss, "features": self.backbone.pool(tokens).detach(), "logs": {"visible_patches": float(keep.shape[1])}}
