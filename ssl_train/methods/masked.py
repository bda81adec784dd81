"""The masked-modelling family: hide most of an image and predict it (MAE, SimMIM), or its representation (I-JEPA)."""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import torch
from torch import nn

from ssl_train.methods.ema import ema_update


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


def block_mask(batch: int, grid: int, ratio: float, scale: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """SimMIM's mask (its MaskGenerator, batched): (N, grid * scale, grid * scale) of 0/1, 1 = masked; per sample exactly
    ceil(grid^2 x ratio) of the grid x grid mask blocks are masked, each block covering scale x scale model patches."""
    count = math.ceil(grid * grid * ratio)
    if not 0 < count < grid * grid:
        raise ValueError(f"method.mask_ratio={ratio} masks {count} of {grid * grid} blocks: choose a ratio that masks some and keeps some")
    chosen = torch.rand(batch, grid * grid, device=device).argsort(dim=1)[:, :count]
    mask = torch.zeros(batch, grid * grid, device=device).scatter_(1, chosen, 1.0).reshape(batch, grid, grid)
    return mask.repeat_interleave(scale, 1).repeat_interleave(scale, 2)


def beit_block_masks(ratios: torch.Tensor, grid: int, aspect: tuple[float, float] = (0.3, 1 / 0.3), attempts: int = 10,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """BEiT's block-wise masking (Bao et al. 2022; the masks iBOT's loader.py draws, `pred_shape='block'`), batched: image i
    gets rectangles of area ~ U((grid // 3)^2, still to mask) and log-uniform aspect ratio until ratios[i] x grid^2
    patches are masked, a rectangle counting only if it adds at least one patch and no more than still to mask; an
    image stops after `attempts` failed draws in a row, as the reference's round does. (N, grid, grid) bool, True =
    masked; never more than ratios[i] x grid^2 masked, none where the ratio is 0."""
    n = len(ratios)
    target = ratios.float().cpu() * grid * grid
    mask = torch.zeros(n, grid, grid, dtype=torch.bool)
    count, failures = torch.zeros(n), torch.zeros(n, dtype=torch.long)
    low, log_aspect = float((grid // 3) ** 2), (math.log(aspect[0]), math.log(aspect[1]))
    cells = torch.arange(grid)
    active = count < target
    while bool(active.any()):
        remaining = target - count
        area = low + torch.rand(n, generator=generator) * (remaining - low)  # random.uniform(low, remaining)
        ratio = torch.exp(log_aspect[0] + torch.rand(n, generator=generator) * (log_aspect[1] - log_aspect[0]))
        height, width = torch.sqrt(area * ratio).round().long(), torch.sqrt(area / ratio).round().long()
        fits = (height < grid) & (width < grid)
        top = (torch.rand(n, generator=generator) * (grid - height + 1).clamp(min=1)).long()  # random.randint(0, grid - h)
        left = (torch.rand(n, generator=generator) * (grid - width + 1).clamp(min=1)).long()
        rows = (cells >= top[:, None]) & (cells < (top + height)[:, None])
        cols = (cells >= left[:, None]) & (cells < (left + width)[:, None])
        block = rows[:, :, None] & cols[:, None, :]
        added = (block & ~mask).flatten(1).sum(1)
        accepted = active & fits & (added > 0) & (added <= remaining)
        mask |= block & accepted[:, None, None]
        count += added * accepted
        failures = torch.where(accepted, 0, failures + 1)
        active &= (count < target) & (failures < attempts)
    return mask


class SimMIMMethod(nn.Module):
    """SimMIM (Xie et al., CVPR 2022): masked blocks of the image are encoded as they are — a ViT sees a learned mask token
    in place of each masked patch's embedding, a CNN sees a learned per-channel fill value in place of the masked pixels —
    and a one-layer head (1x1 conv to stride^2 x channels + pixel shuffle) predicts the raw pixels; the loss (L1,
    MaskedPixelLoss with l1=true, norm_pix=false) covers the masked pixels only.

    `mask_patch_size` is the side of a masked block in pixels (a multiple of the ViT's patch size; the reference: 32 px
    blocks of 16 px patches at 224 px), `mask_ratio` the share of blocks masked (0.6). `features` for the online probe
    are the pooled encoding of the masked image (no second pass). `projector` is unused (head=identity)."""

    modalities = ("image",)

    def __init__(self, backbone: nn.Module, projector: nn.Module, loss: nn.Module, image_size: int, channels: int, mask_ratio: float = 0.6,
                 mask_patch_size: int = 4, name: str = "simmim") -> None:
        super().__init__()
        self.backbone, self.projector, self.loss, self.mask_ratio, self.name = backbone, projector, loss, mask_ratio, name
        self.is_vit = bool(getattr(backbone, "is_vit", False))
        if self.is_vit:
            stride, features = backbone.patch_size, backbone.out_dim
            if mask_patch_size % stride:
                raise ValueError(f"method.mask_patch_size={mask_patch_size} must be a multiple of the ViT's patch size {stride}")
            self.mask_token = nn.Parameter(nn.init.trunc_normal_(torch.zeros(backbone.out_dim), std=0.02, a=-0.02, b=0.02))
        elif callable(getattr(backbone, "stages", None)):
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
        return {"loss": loss, "features": features.detach(), "logs": {"masked_fraction": float(mask.mean())}}


def _block_size(grid: int, scale: tuple[float, float], aspect: tuple[float, float], generator: torch.Generator | None,
                u: float | None = None) -> tuple[int, int]:
    """I-JEPA's block shape (its _sample_block_size): one uniform draw `u` sets both the area share and the aspect ratio."""
    u = float(torch.rand(1, generator=generator)) if u is None else u
    area = int(grid * grid * (scale[0] + u * (scale[1] - scale[0])))
    ratio = aspect[0] + u * (aspect[1] - aspect[0])
    height, width = int(round(math.sqrt(area * ratio))), int(round(math.sqrt(area / ratio)))
    return max(1, min(height, grid - 1)), max(1, min(width, grid - 1))


def _place_blocks(count: int, per_image: int, grid: int, size: tuple[int, int], generator: torch.Generator | None) -> torch.Tensor:
    """(count, per_image, grid, grid) bool, True on blocks of `size` at random places (top-left in [0, grid - size), as the
    reference's randint)."""
    tops = torch.randint(0, grid - size[0], (count, per_image, 1), generator=generator)
    lefts = torch.randint(0, grid - size[1], (count, per_image, 1), generator=generator)
    cells = torch.arange(grid)
    rows, cols = (cells >= tops) & (cells < tops + size[0]), (cells >= lefts) & (cells < lefts + size[1])
    return rows[..., :, None] & cols[..., None, :]


def _first_indices(masks: torch.Tensor) -> torch.Tensor:
    """(..., L) bool -> (..., K) the row-major indices of the True entries, each row cut to the shortest row's K."""
    keep = int(masks.sum(-1).min())
    return torch.argsort((~masks).to(torch.uint8), dim=-1, stable=True)[..., :keep]


def multiblock_masks(batch: int, grid: int, num_targets: int = 4, target_scale: tuple[float, float] = (0.15, 0.2),
                     target_aspect: tuple[float, float] = (0.75, 1.5), context_scale: tuple[float, float] = (0.85, 1.0), min_keep: int = 4,
                     generator: torch.Generator | None = None) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """I-JEPA's multi-block masking (src/masks/multiblock.py), batched: per batch one target block shape and one square
    context shape; per image `num_targets` target blocks and one context block with every target patch removed (no
    overlap), redrawn until more than `min_keep` patches remain (after each 20 failed draws one more target may overlap,
    as the reference's constrain_mask relaxes). Returns (context (N, Kc), [targets (N, Kt)] x num_targets) patch indices
    in row-major order, each cut to the shortest in the batch as the reference's collator does."""
    target_size = _block_size(grid, target_scale, target_aspect, generator)
    context_size = _block_size(grid, context_scale, (1.0, 1.0), generator)
    if context_size[0] * context_size[1] <= min_keep:
        raise ValueError(f"I-JEPA masks: a {context_size[0]} x {context_size[1]} context block never keeps more than method.min_keep={min_keep} "
                         "patches; raise method.context_scale or lower min_keep")
    targets = _place_blocks(batch, num_targets, grid, target_size, generator)  # (N, T, g, g)
    context = torch.zeros(batch, grid, grid, dtype=torch.bool)
    pending, failures = torch.arange(batch), 0  # every pending image has failed `failures` draws
    while len(pending):
        drawn = _place_blocks(len(pending), 1, grid, context_size, generator)[:, 0]
        drawn &= ~targets[pending, :max(num_targets - failures // 20, 0)].any(1)
        kept = drawn.flatten(1).sum(1) > min_keep
        context[pending[kept]] = drawn[kept]
        pending, failures = pending[~kept], failures + 1
    target_idx = _first_indices(targets.flatten(2).transpose(0, 1).flatten(0, 1))  # (T x N, Kt), cut over all targets
    return _first_indices(context.flatten(1)), list(target_idx.reshape(num_targets, batch, -1))


class JEPAPredictor(nn.Module):
    """I-JEPA's predictor (a narrow ViT): context tokens -> `dim` plus fixed sin-cos positions; per target block, mask
    tokens at the target positions appended; `depth` blocks; the mask tokens' outputs mapped back to the encoder's width."""

    def __init__(self, in_dim: int, num_patches: int, dim: int = 96, depth: int = 2, heads: int = 4) -> None:
        super().__init__()
        from timm.models.vision_transformer import Block

        grid = int(math.isqrt(num_patches))
        self.embed = nn.Linear(in_dim, dim)
        self.mask_token = nn.Parameter(nn.init.trunc_normal_(torch.zeros(dim), std=0.02))
        self.register_buffer("positions", sincos_2d(dim, grid), persistent=False)
        self.blocks = nn.Sequential(*(Block(dim, heads, mlp_ratio=4.0, qkv_bias=True) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim)
        self.project = nn.Linear(dim, in_dim)

    def forward(self, context: torch.Tensor, context_idx: torch.Tensor, target_idx: list[torch.Tensor]) -> torch.Tensor:
        """context: (N, Kc, in_dim) encoded context patches at `context_idx`. Returns (T x N, Kt, in_dim), target-major."""
        x = self.embed(context) + self.positions[context_idx]
        queries = torch.cat([self.positions[t] + self.mask_token for t in target_idx])  # (T x N, Kt, dim)
        x = torch.cat([x.repeat(len(target_idx), 1, 1), queries], dim=1)
        x = self.norm(self.blocks(x))
        return self.project(x[:, -queries.shape[1]:])


class IJEPAMethod(nn.Module):
    """I-JEPA (Assran et al., CVPR 2023): from one context block of the image, predict the representations an EMA target
    encoder gives four other blocks — in latent space, no pixels and no hand-made views. The target encoder sees the whole
    image; its output is layer-normalised and cut to the target blocks; the context encoder (`backbone`, the one trained
    and evaluated) sees the context patches only; JEPAPredictor fills in the targets; the loss (LatentPredictionLoss:
    smooth L1) compares the two. The target momentum rises linearly from momentum_base to momentum_final (the reference).
    `features` for the online probe are the pooled context encoding. `projector` is unused (head=identity)."""

    modalities = ("image",)

    def __init__(self, backbone: nn.Module, projector: nn.Module, loss: nn.Module, image_size: int, channels: int, num_targets: int = 4,
                 target_scale: Sequence[float] = (0.15, 0.2), target_aspect: Sequence[float] = (0.75, 1.5),
                 context_scale: Sequence[float] = (0.85, 1.0), min_keep: int = 4, predictor_dim: int = 96, predictor_depth: int = 2,
                 predictor_heads: int = 4, momentum_base: float = 0.996, momentum_final: float = 1.0, name: str = "ijepa") -> None:
        super().__init__()
        if not getattr(backbone, "is_vit", False):
            raise ValueError(f"method={name} needs a vision transformer backbone (backbone=vit_tiny, vit_small), got {type(backbone).__name__}")
        self.backbone, self.projector, self.loss, self.name = backbone, projector, loss, name
        self.target_encoder = copy.deepcopy(backbone).requires_grad_(False)
        self.grid = image_size // backbone.patch_size
        self.masking = {"num_targets": num_targets, "target_scale": tuple(target_scale), "target_aspect": tuple(target_aspect),
                        "context_scale": tuple(context_scale), "min_keep": min_keep}
        smallest = _block_size(self.grid, tuple(context_scale), (1.0, 1.0), None, u=0.0)  # the smallest context block the masks can draw
        if smallest[0] * smallest[1] <= min_keep:
            raise ValueError(f"method.context_scale={list(context_scale)}: a {smallest[0]} x {smallest[1]} context block on the {self.grid} x {self.grid} "
                             f"patch grid cannot keep more than method.min_keep={min_keep} patches; raise context_scale or lower min_keep")
        self.predictor = JEPAPredictor(backbone.out_dim, self.grid * self.grid, predictor_dim, predictor_depth, predictor_heads)
        self.momentum_base, self.momentum_final, self.momentum = momentum_base, momentum_final, momentum_base

    def forward(self, views: Sequence[torch.Tensor], labels: torch.Tensor | None = None) -> dict:
        images = views[0]
        context_idx, target_idx = multiblock_masks(images.shape[0], self.grid, **self.masking)
        context_idx, target_idx = context_idx.to(images.device), [t.to(images.device) for t in target_idx]
        prefix = self.backbone.model.num_prefix_tokens
        with torch.no_grad():
            full = self.target_encoder.tokens(images)[:, prefix:]
            full = nn.functional.layer_norm(full, full.shape[-1:])
            targets = torch.cat([torch.gather(full, 1, t[..., None].expand(-1, -1, full.shape[-1])) for t in target_idx])
        tokens = self.backbone.tokens(images, context_idx)
        predictions = self.predictor(tokens[:, prefix:], context_idx, target_idx)
        loss = self.loss(predictions, targets)
        return {"loss": loss, "features": self.backbone.pool(tokens).detach(),
                "logs": {"momentum": self.momentum, "context_patches": float(context_idx.shape[1]), "target_patches": float(target_idx[0].shape[1])}}

    @torch.no_grad()
    def on_optimizer_step(self, step: int, max_steps: int) -> None:
        """EMA update of the target encoder with the reference's linear momentum schedule."""
        self.momentum = self.momentum_base + (self.momentum_final - self.momentum_base) * min(1.0, step / max(1, max_steps))
        ema_update(self.target_encoder, self.backbone, self.momentum)
