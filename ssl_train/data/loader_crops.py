"""Hybrid image views: the loader crops and flips each decoded image on uint8, the training device does the rest.

For image files of any size (image folders) the geometric part of every view cannot run on a stacked batch, so the
loader workers decode each file, draw each view's RandomResizedCrop (torchvision's semantics: up to 10 draws of
area ~ U(crop_scale) and log aspect ~ U(log 3/4, log 4/3), else a centre crop), resize it with antialiasing to the
view's fixed size and flip it, all on uint8: one (C, size, size) uint8 tensor per view, which the loader stacks into
V uint8 batches. Colour jitter, greyscale, blur, solarisation and normalisation then run batched on the device per
view (ssl_train.data.batched_views.BatchedMultiView given that list), exactly as for fixed-size arrays.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ssl_train.data.recipes import ViewRecipe

LOG_RATIO = (math.log(3 / 4), math.log(4 / 3))
TRIES = 10


def crop_box(height: int, width: int, scale: Sequence[float], u: Sequence[float]) -> tuple[int, int, int, int]:
    """(top, left, h, w) of torchvision's RandomResizedCrop.get_params from 2 * TRIES + 2 uniforms in [0, 1) `u`."""
    area = height * width
    for t in range(TRIES):
        target = area * (scale[0] + (scale[1] - scale[0]) * u[2 * t])
        aspect = math.exp(LOG_RATIO[0] + (LOG_RATIO[1] - LOG_RATIO[0]) * u[2 * t + 1])
        w, h = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return int(u[2 * TRIES] * (height - h + 1)), int(u[2 * TRIES + 1] * (width - w + 1)), h, w
    in_ratio = width / height
    if in_ratio < 3 / 4:
        w, h = width, int(round(width / (3 / 4)))
    elif in_ratio > 4 / 3:
        w, h = int(round(height * (4 / 3))), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def resized_crop_uint8(image: torch.Tensor, box: tuple[int, int, int, int], size: int) -> torch.Tensor:
    """The box of a uint8 (C, H, W) image resized to (C, size, size) uint8, bilinear with antialias (torchvision's
    resized_crop on uint8, without its dispatch overhead); a crop already at `size` is copied as it is."""
    top, left, h, w = box
    crop = image[:, top : top + h, left : left + w]
    if h == size and w == size:
        return crop.clone()
    return F.interpolate(crop[None], size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0]


class LoaderCrops:
    """uint8 (C, H, W) image of any size -> one uint8 (C, size_v, size_v) crop per view: each view's own crop scale,
    output size and flip probability; one torch.rand draw per image (the worker's seeded generator)."""

    def __init__(self, recipes: Sequence[ViewRecipe], sizes: Sequence[int]) -> None:
        if len(recipes) != len(sizes):
            raise ValueError(f"LoaderCrops: {len(recipes)} recipes but {len(sizes)} sizes")
        self.scales = [tuple(float(s) for s in r.crop_scale) for r in recipes]
        self.flip_probs = [float(r.flip_prob) for r in recipes]
        self.sizes = [int(s) for s in sizes]

    def __call__(self, image: torch.Tensor) -> list[torch.Tensor]:
        height, width = image.shape[-2:]
        draws = torch.rand(len(self.sizes), 2 * TRIES + 3).tolist()
        views = []
        for scale, flip_prob, size, u in zip(self.scales, self.flip_probs, self.sizes, draws, strict=True):
            view = resized_crop_uint8(image, crop_box(height, width, scale, u), size)
            views.append(view.flip(-1) if u[-1] < flip_prob else view)
        return views
