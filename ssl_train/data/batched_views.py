"""Batched augmentation: a ViewRecipe applied to a whole uint8 batch on the training device, one random draw per sample.

The loader only decodes and stacks images; this module (run by SSLModule after the batch reaches the device)
crops, flips, jitters, greys, blurs, solarises and normalises every sample with its own random parameters,
following torchvision's per-sample semantics (tests compare the two distributions). One setting shared by
the whole batch would not be valid SSL augmentation, so nothing here is drawn per batch. For image files of any size
(the hybrid path) the loader has cropped, resized and flipped each view already (ssl_train.data.loader_crops) and
BatchedMultiView takes one uint8 batch per view, skipping those steps.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import roi_align
from torchvision.transforms.v2.functional._color import _hsv_to_rgb, _rgb_to_hsv

from ssl_train.data.recipes import ViewRecipe

RATIO = (3 / 4, 4 / 3)


def _uniform(n: int, low: float, high: float, device: torch.device) -> torch.Tensor:
    return torch.empty(n, device=device).uniform_(low, high)


def sample_crop_boxes(n: int, height: int, width: int, scale: Sequence[float], device: torch.device, tries: int = 10) -> torch.Tensor:
    """(n, 4) integer boxes (top, left, h, w) drawn as torchvision's RandomResizedCrop does: up to `tries` draws of
    area fraction ~ U(scale) and log aspect ratio ~ U(log 3/4, log 4/3), the first that fits; else a centre crop."""
    area = height * width
    target = area * torch.empty(n, tries, device=device).uniform_(scale[0], scale[1])
    aspect = torch.exp(torch.empty(n, tries, device=device).uniform_(math.log(RATIO[0]), math.log(RATIO[1])))
    w = torch.round(torch.sqrt(target * aspect))
    h = torch.round(torch.sqrt(target / aspect))
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = fits.float().argmax(dim=1)
    rows = torch.arange(n, device=device)
    w, h, found = w[rows, first], h[rows, first], fits.any(dim=1)
    in_ratio = width / height
    fallback_w, fallback_h = float(width), float(height)
    if in_ratio < RATIO[0]:
        fallback_h = float(round(width / RATIO[0]))
    elif in_ratio > RATIO[1]:
        fallback_w = float(round(height * RATIO[1]))
    w = torch.where(found, w, torch.full_like(w, fallback_w))
    h = torch.where(found, h, torch.full_like(h, fallback_h))
    top = torch.where(found, torch.floor(torch.rand(n, device=device) * (height - h + 1)), torch.floor((height - h) / 2))
    left = torch.where(found, torch.floor(torch.rand(n, device=device) * (width - w + 1)), torch.floor((width - w) / 2))
    return torch.stack([top, left, h, w], dim=1)


def _grayscale(x: torch.Tensor) -> torch.Tensor:
    return (0.2989 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]) if x.shape[1] == 3 else x


def _blend(a: torch.Tensor, b: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
    return (ratio[:, None, None, None] * a + (1 - ratio[:, None, None, None]) * b).clamp_(0, 1)


def _brightness(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    return _blend(x, torch.zeros_like(x), f)


def _contrast(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    return _blend(x, _grayscale(x).mean(dim=(1, 2, 3), keepdim=True).expand_as(x), f)


def _saturation(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    return _blend(x, _grayscale(x).expand_as(x), f) if x.shape[1] == 3 else x


def _hue(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    if x.shape[1] != 3:
        return x
    hsv = _rgb_to_hsv(x)
    hue = (hsv[:, 0] + f[:, None, None]) % 1.0
    return _hsv_to_rgb(torch.stack([hue, hsv[:, 1], hsv[:, 2]], dim=1))


JITTER_OPS = (_brightness, _contrast, _saturation, _hue)


def _gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Per-sample separable Gaussian blur (reflect padding, as torchvision) with grouped convolutions."""
    b, c, height, width = x.shape
    offsets = torch.arange(kernel_size, device=x.device, dtype=x.dtype) - (kernel_size - 1) / 2
    kernel = torch.exp(-(offsets[None, :] ** 2) / (2 * sigma[:, None] ** 2))
    kernel = (kernel / kernel.sum(dim=1, keepdim=True)).repeat_interleave(c, dim=0)  # (B*C, K)
    pad = kernel_size // 2
    y = F.pad(x.reshape(1, b * c, height, width), (pad, pad, pad, pad), mode="reflect")
    y = F.conv2d(y, kernel[:, None, None, :], groups=b * c)
    y = F.conv2d(y, kernel[:, None, :, None], groups=b * c)
    return y.reshape(b, c, height, width)


class BatchedView(nn.Module):
    """One view of a ViewRecipe on a batch: uint8 (B, C, H, W) on any device in, normalised float (B, C, size, size) out."""

    # buffers (register_buffer below)
    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, recipe: ViewRecipe, size: int, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.recipe, self.size = recipe, size
        self.register_buffer("mean", torch.tensor(list(mean)).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(list(std)).view(1, -1, 1, 1), persistent=False)
        self.blur_kernel = max(3, (size // 10) | 1)

    def forward(self, images: torch.Tensor, cropped: bool = False) -> torch.Tensor:
        """`cropped`: the images are this view's crops already (the hybrid path: cropped, resized and flipped in the loader)."""
        r, n, device = self.recipe, images.shape[0], images.device
        x = images.float().div_(255)
        if cropped and tuple(x.shape[-2:]) != (self.size, self.size):
            raise ValueError(f"BatchedView: crops of {tuple(x.shape[-2:])} px given for a view of {self.size} px")
        if not cropped:
            x = self._crop_and_flip(x)
        if r.jitter_prob > 0 and r.jitter_strength > 0:
            x = self._jitter(x)
        if r.grayscale_prob > 0 and x.shape[1] == 3:
            grey = torch.rand(n, device=device) < r.grayscale_prob
            x = torch.where(grey[:, None, None, None], _grayscale(x).expand_as(x), x)
        if r.blur_prob > 0:  # the whole batch blurred, then kept where drawn: no data-dependent shapes, no host-device sync
            blur = torch.rand(n, device=device) < r.blur_prob
            blurred = _gaussian_blur(x, _uniform(n, 0.1, 2.0, device), self.blur_kernel)
            x = torch.where(blur[:, None, None, None], blurred, x)
        if r.solarize_prob > 0:
            solarize = (torch.rand(n, device=device) < r.solarize_prob)[:, None, None, None]
            x = torch.where(solarize & (x >= 128 / 255), 1.0 - x, x)
        return (x - self.mean) / self.std

    def _crop_and_flip(self, x: torch.Tensor) -> torch.Tensor:
        """RandomResizedCrop (roi_align from per-sample boxes) to this view's size, then the horizontal flip."""
        r, n, device = self.recipe, x.shape[0], x.device
        crops = sample_crop_boxes(n, x.shape[-2], x.shape[-1], r.crop_scale, device)
        boxes = torch.stack([torch.arange(n, device=device, dtype=x.dtype), crops[:, 1], crops[:, 0], crops[:, 1] + crops[:, 3], crops[:, 0] + crops[:, 2]], 1)
        x = roi_align(x, boxes, output_size=self.size, spatial_scale=1.0, sampling_ratio=-1, aligned=True)
        if r.flip_prob > 0:
            flip = torch.rand(n, device=device) < r.flip_prob
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        return x

    def _jitter(self, x: torch.Tensor) -> torch.Tensor:
        """ColorJitter with probability jitter_prob, each sample with its own factors and its own random op order."""
        n, s, device = x.shape[0], self.recipe.jitter_strength, x.device
        applied = torch.rand(n, device=device) < self.recipe.jitter_prob
        factors = [
            _uniform(n, max(0.0, 1 - 0.4 * s), 1 + 0.4 * s, device),
            _uniform(n, max(0.0, 1 - 0.4 * s), 1 + 0.4 * s, device),
            _uniform(n, max(0.0, 1 - 0.4 * s), 1 + 0.4 * s, device),
            _uniform(n, -0.1 * s, 0.1 * s, device),
        ]
        order = torch.rand(n, 4, device=device).argsort(dim=1)  # a random permutation of the 4 ops per sample
        identity = (1.0, 1.0, 1.0, 0.0)  # the factor at which each op leaves an image as it is
        for slot in range(4):
            for op_index, op in enumerate(JITTER_OPS):
                if op is _hue and x.shape[1] != 3:
                    continue
                rows = applied & (order[:, slot] == op_index)
                # every sample goes through the op, at its own factor where drawn for this slot and at the identity factor
                # elsewhere (the blends are then exact no-ops); the hue round trip is not, so it is kept only where drawn.
                # Whole-batch ops keep shapes fixed: no boolean-mask indexing, no host-device sync (a GPU keeps queuing)
                if op is _hue and x.device.type == "cpu":  # on a CPU a mask costs no sync, and hue on all rows 4x the work
                    if rows.any():
                        x[rows] = _hue(x[rows], factors[op_index][rows])
                    continue
                factor = torch.where(rows, factors[op_index], identity[op_index])
                x = torch.where(rows[:, None, None, None], op(x, factor), x) if op is _hue else op(x, factor)
        return x


class BatchedMultiView(nn.Module):
    """All views of a MultiViewTransform (global views with per-view recipes, then local crops) on a batch."""

    def __init__(
        self,
        global_recipes: Sequence[ViewRecipe],
        local_recipe: ViewRecipe,
        num_local: int,
        size: int,
        local_size: int,
        mean: Sequence[float],
        std: Sequence[float],
    ) -> None:
        super().__init__()
        self.views = nn.ModuleList([BatchedView(r, size, mean, std) for r in global_recipes])
        self.views.extend(BatchedView(local_recipe, local_size, mean, std) for _ in range(num_local))

    @torch.no_grad()
    def forward(self, images: torch.Tensor | Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """One uint8 batch (B, C, H, W): every view crops it here. A list of one uint8 batch per view (the hybrid path: crops,
        resizing and flips made by the loader, ssl_train.data.loader_crops): every view makes the rest of its own."""
        if isinstance(images, torch.Tensor):
            return [view(images) for view in self.views]
        if len(images) != len(self.views):
            raise ValueError(f"BatchedMultiView: {len(images)} cropped batches given for {len(self.views)} views")
        return [view(crops, cropped=True) for view, crops in zip(self.views, images, strict=True)]
