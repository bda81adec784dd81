"""Patches of images and their fixed positions, shared by the ViT methods (MAE, SimMIM, I-JEPA, iBOT, MSN), and the
check that a method's backbone is a ViT."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ssl_train.methods.legacy import initial_values_where_missing
from ssl_train.protocols import is_vit


def require_vit(backbone: nn.Module, method: str, reason: str = "") -> Any:
    """`backbone` (typed Any: its ViT attributes, tokens / patch_size / num_patches, nn.Module would type Tensor | Module)
    when it is a ViT (protocols.is_vit); else one ValueError naming the method, `reason` (what it does with patches) and
    the backbones allowed."""
    if not is_vit(backbone):
        why = f" {reason} and" if reason else ""
        raise ValueError(
            f"method={method}{why} needs a vision transformer backbone (a ViT: backbone=vit_tiny, vit_small, or backbone=timm "
            f"with a ViT name), got {type(backbone).__name__}"
        )
    return backbone


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


def sincos_2d(dim: int, grid: int) -> torch.Tensor:
    """(grid^2, dim) fixed 2-D sine-cosine position embedding (MAE's decoder): half the channels encode rows, half columns."""
    if dim % 4:
        raise ValueError(f"sincos_2d: dim must be a multiple of 4, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim / 4))
    rows, cols = torch.meshgrid(torch.arange(grid, dtype=torch.float64), torch.arange(grid, dtype=torch.float64), indexing="ij")
    parts = [
        torch.sin(cols.flatten()[:, None] * omega),
        torch.cos(cols.flatten()[:, None] * omega),
        torch.sin(rows.flatten()[:, None] * omega),
        torch.cos(rows.flatten()[:, None] * omega),
    ]
    return torch.cat(parts, dim=1).float()


def final_token_norm(backbone: nn.Module) -> nn.Module:
    """The per-token LayerNorm a ViT encoder ends with (MAE's and I-JEPA's `self.norm`), for the tokens handed to a decoder
    or predictor when the timm ViT has none: with global_pool avg timm makes its per-token norm a no-op and normalises the
    pooled vector instead (fc_norm, which pretraining then never reaches: it is frozen at its init, as the references'
    fine-tuning starts a fresh one). Identity when the ViT already normalises its tokens (or has no final norm at all)."""
    model = getattr(backbone, "model", None)
    pooled_norm = getattr(model, "fc_norm", nn.Identity())
    moved = isinstance(getattr(model, "norm", None), nn.Identity) and not isinstance(pooled_norm, nn.Identity)
    if not moved:
        return nn.Identity()
    # timm's pooled norm: only the online probe's detached features pass it, so no loss trains it (under DDP a trainable
    # parameter without a gradient stops the second step)
    pooled_norm.requires_grad_(False)
    norm = nn.LayerNorm(int(getattr(backbone, "out_dim", 0)), eps=1e-6)
    norm._register_load_state_dict_pre_hook(initial_values_where_missing, with_module=True)  # MAE / I-JEPA checkpoints from before it
    return norm


def transformer_blocks(dim: int, depth: int, heads: int) -> nn.Sequential:
    """`depth` timm ViT blocks of width `dim` (MLP ratio 4, qkv bias): the narrow transformer of MAE's decoder and I-JEPA's predictor."""
    from timm.models.vision_transformer import Block

    return nn.Sequential(*(Block(dim, heads, mlp_ratio=4.0, qkv_bias=True) for _ in range(depth)))
