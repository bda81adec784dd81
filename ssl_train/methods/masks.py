"""Mask generators of the masked-modelling methods, batched: MAE's random patches, SimMIM's blocks, BEiT's blocks (iBOT),
I-JEPA's multi-block context and targets. Each returns plain tensors; the methods decide what a mask hides."""

from __future__ import annotations

import math

import numpy as np
import torch


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


def block_mask(batch: int, grid: int, ratio: float, scale: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """SimMIM's mask (its MaskGenerator, batched): (N, grid * scale, grid * scale) of 0/1, 1 = masked; per sample exactly
    ceil(grid^2 x ratio) of the grid x grid mask blocks are masked, each block covering scale x scale model patches."""
    count = math.ceil(grid * grid * ratio)
    if not 0 < count < grid * grid:
        raise ValueError(f"method.mask_ratio={ratio} masks {count} of {grid * grid} blocks: choose a ratio that masks some and keeps some")
    chosen = torch.rand(batch, grid * grid, device=device).argsort(dim=1)[:, :count]
    mask = torch.zeros(batch, grid * grid, device=device).scatter_(1, chosen, 1.0).reshape(batch, grid, grid)
    return mask.repeat_interleave(scale, 1).repeat_interleave(scale, 2)


def to_device(host: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A tensor drawn on the host, on `device`; on a GPU pinned and copied asynchronously, so the host does not wait for
    the device's queued kernels (a plain `.to("cuda")` from pageable memory synchronises the stream)."""
    if device.type == "cuda":
        return host.pin_memory().to(device, non_blocking=True)
    return host.to(device)


def masked_patch_index(host_masks: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """From (N, L) masks on the host: the masked patches' flat indices (M,) and one weight each, one over the number of
    masked patches of its image (DINOv2's collate: mask_indices_list and masks_weight), both on `device` without a sync."""
    masks = host_masks.numpy().astype(bool)
    index = np.flatnonzero(masks)
    weights = (1.0 / masks.sum(axis=1)[index // masks.shape[1]]).astype(np.float32)
    return to_device(torch.from_numpy(index), device), to_device(torch.from_numpy(weights), device)


def beit_block_masks(
    ratios: torch.Tensor, grid: int, aspect: tuple[float, float] = (0.3, 1 / 0.3), attempts: int = 10, generator: torch.Generator | None = None
) -> torch.Tensor:
    """BEiT's block-wise masking (Bao et al. 2022; the masks iBOT's loader.py draws, `pred_shape='block'`), batched: image i
    gets rectangles of area ~ U((grid // 3)^2, still to mask) and log-uniform aspect ratio until ratios[i] x grid^2
    patches are masked, a rectangle counting only if it adds at least one patch and no more than still to mask; an
    image stops after `attempts` failed draws in a row, as the reference's round does. (N, grid, grid) bool on the CPU,
    True = masked; never more than ratios[i] x grid^2 masked, none where the ratio is 0. Drawn on the host in numpy
    (the reference draws them in its loader), so the training step never waits for a device here."""
    n = len(ratios)
    target = ratios.detach().float().cpu().numpy() * grid * grid

    def uniform() -> np.ndarray:  # torch's generator, so a seeded generator gives the same masks
        return torch.rand(n, generator=generator).numpy()

    mask = np.zeros((n, grid, grid), dtype=bool)
    count, failures = np.zeros(n, dtype=np.float32), np.zeros(n, dtype=np.int64)
    low, log_aspect = float((grid // 3) ** 2), (math.log(aspect[0]), math.log(aspect[1]))
    cells = np.arange(grid)
    active = count < target
    while active.any():
        remaining = target - count
        area = low + uniform() * (remaining - low)  # random.uniform(low, remaining)
        ratio = np.exp(log_aspect[0] + uniform() * (log_aspect[1] - log_aspect[0]))
        height, width = np.round(np.sqrt(area * ratio)).astype(np.int64), np.round(np.sqrt(area / ratio)).astype(np.int64)
        fits = (height < grid) & (width < grid)
        top = (uniform() * np.maximum(grid - height + 1, 1)).astype(np.int64)  # random.randint(0, grid - h)
        left = (uniform() * np.maximum(grid - width + 1, 1)).astype(np.int64)
        rows = (cells >= top[:, None]) & (cells < (top + height)[:, None])
        cols = (cells >= left[:, None]) & (cells < (left + width)[:, None])
        block = rows[:, :, None] & cols[:, None, :]
        added = (block & ~mask).reshape(n, -1).sum(1)
        accepted = active & fits & (added > 0) & (added <= remaining)
        mask |= block & accepted[:, None, None]
        count += added * accepted
        failures = np.where(accepted, 0, failures + 1)
        active &= (count < target) & (failures < attempts)
    return torch.from_numpy(mask)


def block_shape(
    grid: int, scale: tuple[float, float], aspect: tuple[float, float], generator: torch.Generator | None, u: float | None = None
) -> tuple[int, int]:
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


def multiblock_masks(
    batch: int,
    grid: int,
    num_targets: int = 4,
    target_scale: tuple[float, float] = (0.15, 0.2),
    target_aspect: tuple[float, float] = (0.75, 1.5),
    context_scale: tuple[float, float] = (0.85, 1.0),
    min_keep: int = 4,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """I-JEPA's multi-block masking (src/masks/multiblock.py), batched: per batch one target block shape and one square
    context shape; per image `num_targets` target blocks and one context block with every target patch removed (no
    overlap), redrawn until more than `min_keep` patches remain (after each 20 failed draws one more target may overlap,
    as the reference's constrain_mask relaxes). Returns (context (N, Kc), [targets (N, Kt)] x num_targets) patch indices
    in row-major order, each cut to the shortest in the batch as the reference's collator does."""
    target_size = block_shape(grid, target_scale, target_aspect, generator)
    context_size = block_shape(grid, context_scale, (1.0, 1.0), generator)
    if context_size[0] * context_size[1] <= min_keep:
        raise ValueError(
            f"I-JEPA masks: a {context_size[0]} x {context_size[1]} context block never keeps more than method.min_keep={min_keep} "
            "patches; raise method.context_scale or lower min_keep"
        )
    targets = _place_blocks(batch, num_targets, grid, target_size, generator)  # (N, T, g, g)
    context = torch.zeros(batch, grid, grid, dtype=torch.bool)
    pending, failures = torch.arange(batch), 0  # every pending image has failed `failures` draws
    while len(pending):
        drawn = _place_blocks(len(pending), 1, grid, context_size, generator)[:, 0]
        drawn &= ~targets[pending, : max(num_targets - failures // 20, 0)].any(1)
        kept = drawn.flatten(1).sum(1) > min_keep
        context[pending[kept]] = drawn[kept]
        pending, failures = pending[~kept], failures + 1
    target_idx = _first_indices(targets.flatten(2).transpose(0, 1).flatten(0, 1))  # (T x N, Kt), cut over all targets
    return _first_indices(context.flatten(1)), list(target_idx.reshape(num_targets, batch, -1))
