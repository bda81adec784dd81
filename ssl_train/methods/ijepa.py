"""I-JEPA: self-supervised learning from images with a joint-embedding predictive architecture (Assran et al., CVPR 2023)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ssl_train.constraints import Count, Fraction, FractionRange, PositiveInt, PositiveRange
from ssl_train.methods.ema import EMATarget, renamed_keys
from ssl_train.methods.masks import block_shape, multiblock_masks
from ssl_train.methods.patches import final_token_norm, require_vit, sincos_2d, transformer_blocks


class JEPAPredictor(nn.Module):
    """I-JEPA's predictor (a narrow ViT): context tokens -> `dim` plus fixed sin-cos positions; per target block, mask
    tokens at the target positions appended; `depth` blocks; the mask tokens' outputs mapped back to the encoder's width."""

    positions: torch.Tensor  # a buffer (register_buffer below)

    def __init__(self, in_dim: int, num_patches: int, dim: int = 96, depth: int = 2, heads: int = 4) -> None:
        super().__init__()
        grid = int(math.isqrt(num_patches))
        self.embed = nn.Linear(in_dim, dim)
        self.mask_token = nn.Parameter(nn.init.trunc_normal_(torch.zeros(dim), std=0.02))
        self.register_buffer("positions", sincos_2d(dim, grid), persistent=False)
        self.blocks = transformer_blocks(dim, depth, heads)
        self.norm = nn.LayerNorm(dim)
        self.project = nn.Linear(dim, in_dim)

    def forward(self, context: torch.Tensor, context_idx: torch.Tensor, target_idx: list[torch.Tensor]) -> torch.Tensor:
        """context: (N, Kc, in_dim) encoded context patches at `context_idx`. Returns (T x N, Kt, in_dim), target-major."""
        x = self.embed(context) + self.positions[context_idx]
        queries = torch.cat([self.positions[t] + self.mask_token for t in target_idx])  # (T x N, Kt, dim)
        x = torch.cat([x.repeat(len(target_idx), 1, 1), queries], dim=1)
        x = self.norm(self.blocks(x))
        return self.project(x[:, -queries.shape[1] :])


class IJEPAMethod(nn.Module):
    """I-JEPA (Assran et al., CVPR 2023): from one context block of the image, predict the representations an EMA target
    encoder gives four other blocks — in latent space, no pixels and no hand-made views. The target encoder sees the whole
    image; its output is layer-normalised and cut to the target blocks; the context encoder (`backbone`, the one trained
    and evaluated) sees the context patches only; JEPAPredictor fills in the targets; the loss (LatentPredictionLoss:
    smooth L1) compares the two. The target momentum rises linearly from momentum_base to momentum_final (the reference).
    `features` for the online probe are the pooled context encoding. `projector` is unused (head=identity)."""

    backbone: Any  # a ViT (protocols.is_vit): tokens, pool, patch_size, out_dim, model; nn.Module's __getattr__ would type them Tensor | Module

    modalities = ("image",)

    def __init__(
        self,
        backbone: nn.Module,
        projector: nn.Module,
        loss: nn.Module,
        image_size: PositiveInt,
        channels: PositiveInt,
        num_targets: PositiveInt = 4,
        target_scale: FractionRange = (0.15, 0.2),
        target_aspect: PositiveRange = (0.75, 1.5),
        context_scale: FractionRange = (0.85, 1.0),
        min_keep: Count = 4,
        predictor_dim: PositiveInt = 96,
        predictor_depth: PositiveInt = 2,
        predictor_heads: PositiveInt = 4,
        momentum_base: Fraction = 0.996,
        momentum_final: Fraction = 1.0,
        name: str = "ijepa",
    ) -> None:
        super().__init__()
        require_vit(backbone, name)
        self.backbone, self.projector, self.loss, self.name = backbone, projector, loss, name
        self.encoder_norm = final_token_norm(backbone)  # the reference encoder's `self.norm` (timm's is a no-op with global_pool avg)
        self.target = EMATarget(momentum_base, momentum_final, "linear", encoder=backbone, encoder_norm=self.encoder_norm)
        self._register_load_state_dict_pre_hook(renamed_keys({"target_encoder.": "target.encoder."}), with_module=True)
        self.grid = image_size // self.backbone.patch_size
        self.masking: dict[str, Any] = {
            "num_targets": num_targets,
            "target_scale": tuple(target_scale),
            "target_aspect": tuple(target_aspect),
            "context_scale": tuple(context_scale),
            "min_keep": min_keep,
        }
        smallest = block_shape(self.grid, self.masking["context_scale"], (1.0, 1.0), None, u=0.0)  # the smallest context block the masks can draw
        if smallest[0] * smallest[1] <= min_keep:
            raise ValueError(
                f"method.context_scale={list(context_scale)}: a {smallest[0]} x {smallest[1]} context block on the {self.grid} x {self.grid} "
                f"patch grid cannot keep more than method.min_keep={min_keep} patches; raise context_scale or lower min_keep"
            )
        self.predictor = JEPAPredictor(self.backbone.out_dim, self.grid * self.grid, predictor_dim, predictor_depth, predictor_heads)

    def forward(self, views: Sequence[torch.Tensor], labels: torch.Tensor | None = None) -> dict:
        images = views[0]
        context_idx, target_idx = multiblock_masks(images.shape[0], self.grid, **self.masking)
        context_idx, target_idx = context_idx.to(images.device), [t.to(images.device) for t in target_idx]
        prefix = self.backbone.model.num_prefix_tokens
        with torch.no_grad():
            target_encoder: Any = self.target["encoder"]  # the EMA copy of the ViT
            full = self.target["encoder_norm"](target_encoder.tokens(images))[:, prefix:]
            full = nn.functional.layer_norm(full, full.shape[-1:])
            targets = torch.cat([torch.gather(full, 1, t[..., None].expand(-1, -1, full.shape[-1])) for t in target_idx])
        tokens = self.backbone.tokens(images, context_idx)
        predictions = self.predictor(self.encoder_norm(tokens)[:, prefix:], context_idx, target_idx)
        loss = self.loss(predictions, targets)
        return {
            "loss": loss,
            "features": self.backbone.pool(tokens).detach(),
            "logs": {"momentum": self.target.momentum, "context_patches": float(context_idx.shape[1]), "target_patches": float(target_idx[0].shape[1])},
        }

    @torch.no_grad()
    def on_optimizer_step(self, step: int, max_steps: int) -> None:
        """EMA update of the target encoder with the reference's linear momentum schedule."""
        self.target.follow(step, max_steps, encoder=self.backbone, encoder_norm=self.encoder_norm)
