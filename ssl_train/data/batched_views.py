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


GREY_WEIGHTS = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale
HUE_CHUNK_ON_CPU = 64  # samples per hue pass on a CPU: its ~20 temporaries then stay in the core's cache (2x faster)


def _grayscale(x: torch.Tensor) -> torch.Tensor:
    return (GREY_WEIGHTS[0] * x[:, 0:1] + GREY_WEIGHTS[1] * x[:, 1:2] + GREY_WEIGHTS[2] * x[:, 2:3]) if x.shape[1] == 3 else x


BRIGHTNESS, CONTRAST, SATURATION = 0, 1, 2  # the blend ops of ColorJitter; hue is the fourth (HUE)
HUE = 3
_HUE_CHANNEL_OFFSETS = (5.0, 3.0, 1.0)  # HSV -> RGB: channel c = V - C * clamp(min(k, 4 - k), 0, 1), k = (offset + 6 h) mod 6


def _colour_blend(x: torch.Tensor, op: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """torchvision's adjust_brightness / adjust_contrast / adjust_saturation, each sample its own op (BRIGHTNESS,
    CONTRAST, SATURATION) and factor, in one pass: each op is factor * x + (1 - factor) * target with a target linear
    in the pixel (black, the grey image's mean, the grey image), so y = factor * x + s * grey + o with per-sample s
    (1 - factor for saturation, else 0) and o ((1 - factor) * mean grey for contrast, else 0), then the clamp. A factor
    of 1 gives s = o = 0: the sample is left exactly as it is."""
    channels = x.shape[1]
    factor = factor.to(x.dtype)
    if channels != 3:  # saturation leaves a one-channel image as it is (torchvision)
        factor = torch.where(op == SATURATION, 1.0, factor)
    rest = 1.0 - factor
    grey = _grayscale(x)  # (B, 1, H, W): the saturation and contrast targets
    mean_grey = grey.mean(dim=(1, 2, 3))
    saturation = torch.where(op == SATURATION, rest, 0.0)  # 0 on one channel: its factor is 1 there
    offset = torch.where(op == CONTRAST, rest * mean_grey, 0.0)
    target = torch.addcmul(offset[:, None, None, None], grey, saturation[:, None, None, None])
    return torch.addcmul(target, x, factor[:, None, None, None]).clamp_(0, 1)


def _hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """torchvision's adjust_hue per sample; on a CPU in chunks of HUE_CHUNK_ON_CPU samples (cache-sized temporaries)."""
    if x.shape[1] != 3:
        return x
    if x.device.type != "cpu" or len(x) <= HUE_CHUNK_ON_CPU:
        return _hue_pass(x, shift)
    return torch.cat([_hue_pass(part, s) for part, s in zip(x.split(HUE_CHUNK_ON_CPU), shift.split(HUE_CHUNK_ON_CPU), strict=True)])


def _hue_pass(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """adjust_hue (RGB -> HSV, hue + shift, -> RGB) per sample, without materialising HSV: the hue shift keeps V (the
    max) and the chroma (max - min), so each channel is rebuilt from the shifted hue directly."""
    r, g, b = x.unbind(1)
    top = x.amax(dim=1)
    chroma = top - x.amin(dim=1)
    inverse = 1.0 / torch.where(chroma > 0, chroma, torch.ones_like(chroma))
    hue6 = torch.where(top == r, (g - b) * inverse, torch.where(top == g, 2.0 + (b - r) * inverse, 4.0 + (r - g) * inverse))
    offsets = torch.tensor(_HUE_CHANNEL_OFFSETS, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    k = torch.remainder(offsets + (hue6 + 6.0 * shift[:, None, None])[:, None], 6.0)
    return top[:, None] - chroma[:, None] * torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0)


def apply_colour_jitter(x: torch.Tensor, applied: torch.Tensor, blend_factors: torch.Tensor, hue_shift: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """ColorJitter on a batch from its per-sample draws: `applied` (B,) bool, `blend_factors` (B, 3) for BRIGHTNESS,
    CONTRAST, SATURATION, `hue_shift` (B,), `order` (B, 4) a permutation of the four ops per sample. Hue, the costly op,
    runs once on the batch: each sample's blends before its hue, then hue, then its blends after (identity factors
    elsewhere). Fixed shapes only: no boolean-mask indexing, no host-device sync, so a GPU keeps queuing."""
    is_hue = order == HUE
    hue_position = is_hue.to(torch.uint8).argmax(dim=1)  # how many blends come before the hue
    blends = order.gather(1, torch.argsort(is_hue.to(torch.uint8), dim=1, stable=True)[:, :3])  # the 3 blends in order
    colour = x.shape[1] == 3
    for before_hue in (True, False):
        for position in range(3):
            op = blends[:, position]
            active = applied & ((position < hue_position) if before_hue else (position >= hue_position))
            if not colour:  # saturation leaves a one-channel image as it is
                active = active & (op != SATURATION)
            factor = torch.where(active, blend_factors.gather(1, op[:, None])[:, 0], 1.0)
            x = _colour_blend(x, op, factor)
        if before_hue and colour:
            x = torch.where(applied[:, None, None, None], _hue(x, hue_shift), x)
    return x


SHIFTED_SUM_MAX_KERNEL = 7  # small kernels as K shifted multiply-adds: a depthwise conv over B x C groups is 3-4x slower on a CPU


def _gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Per-sample separable Gaussian blur (reflect padding, as torchvision): each pass as shifted multiply-adds for
    small kernels, else as a grouped convolution (one group per sample and channel)."""
    b, c, height, width = x.shape
    offsets = torch.arange(kernel_size, device=x.device, dtype=x.dtype) - (kernel_size - 1) / 2
    kernel = torch.exp(-(offsets[None, :] ** 2) / (2 * sigma[:, None] ** 2))
    kernel = kernel / kernel.sum(dim=1, keepdim=True)  # (B, K)
    pad = kernel_size // 2
    if kernel_size <= SHIFTED_SUM_MAX_KERNEL:
        taps = kernel[:, :, None, None, None]  # (B, K, 1, 1, 1)
        y = F.pad(x, (pad, pad, 0, 0), mode="reflect")
        rows = taps[:, 0] * y[..., :width]
        for k in range(1, kernel_size):
            rows.addcmul_(taps[:, k], y[..., k : k + width])
        y = F.pad(rows, (0, 0, pad, pad), mode="reflect")
        out = taps[:, 0] * y[..., :height, :]
        for k in range(1, kernel_size):
            out.addcmul_(taps[:, k], y[..., k : k + height, :])
        return out
    kernel = kernel.repeat_interleave(c, dim=0)  # (B*C, K)
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
        blend_factors = torch.empty(n, 3, device=device).uniform_(max(0.0, 1 - 0.4 * s), 1 + 0.4 * s)
        hue_shift = _uniform(n, -0.1 * s, 0.1 * s, device)
        order = torch.rand(n, 4, device=device).argsort(dim=1)  # a random permutation of the 4 ops per sample
        return apply_colour_jitter(x, applied, blend_factors, hue_shift, order)


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
