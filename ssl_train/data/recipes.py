"""View recipes shared by every kind of data: the knobs of one image view, per-view overrides, a list of batched views.

Apart from views.py so that the batched and loader-side view machinery (batched_views.py, loader_crops.py) can read a
recipe without importing the pipelines that import them (no import cycle).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any, TypeVar

import torch
from torch import nn
from torchvision.transforms import v2

from ssl_train.constraints import CropScale, Fraction, NonNegative


@dataclass(frozen=True)
class ViewRecipe:
    """The knobs of one augmented view (SimCLR, Chen et al. 2020, appendix A; BYOL adds blur/solarize asymmetry).

    Defaults are the SimCLR CIFAR recipe scaled for 28-32 px images: no blur (it destroys tiny images),
    colour jitter (0.4, 0.4, 0.4, 0.1) with p=0.8 (SimCLR appendix A: strength 0.5 for CIFAR), grayscale p=0.2, flip p=0.5.
    """

    crop_scale: CropScale = (0.2, 1.0)
    flip_prob: Fraction = 0.5
    jitter_strength: NonNegative = 1.0  # multiplies (brightness 0.4, contrast 0.4, saturation 0.4, hue 0.1)
    jitter_prob: Fraction = 0.8
    grayscale_prob: Fraction = 0.2
    blur_prob: Fraction = 0.0
    solarize_prob: Fraction = 0.0

    def build(self, size: int, mean: Sequence[float], std: Sequence[float]) -> v2.Compose:
        """The per-sample transform: uint8 (C, H, W) tensor in, normalised float32 view out."""
        s = self.jitter_strength
        steps: list[torch.nn.Module] = [v2.RandomResizedCrop(size, scale=tuple(self.crop_scale), antialias=True)]
        if self.flip_prob > 0:
            steps.append(v2.RandomHorizontalFlip(self.flip_prob))
        if self.jitter_prob > 0 and s > 0:
            steps.append(v2.RandomApply([v2.ColorJitter(0.4 * s, 0.4 * s, 0.4 * s, 0.1 * s)], p=self.jitter_prob))
        if self.grayscale_prob > 0 and len(mean) == 3:
            steps.append(v2.RandomGrayscale(self.grayscale_prob))
        if self.blur_prob > 0:
            kernel = max(3, (size // 10) | 1)  # ~10% of the image, odd
            steps.append(v2.RandomApply([v2.GaussianBlur(kernel, sigma=(0.1, 2.0))], p=self.blur_prob))
        if self.solarize_prob > 0:
            steps.append(v2.RandomSolarize(threshold=128, p=self.solarize_prob))
        steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]
        return v2.Compose(steps)


R = TypeVar("R")


def with_overrides(base: R, overrides: Mapping | None, pair_fields: tuple[str, ...] = ("crop_scale",)) -> R:
    """`base` (a frozen recipe dataclass) with some fields replaced; an unknown name is refused listing the known ones."""
    known = {f.name for f in fields(base)}  # type: ignore[arg-type]
    unknown = set(overrides or {}) - known
    if unknown:
        raise ValueError(f"augment: unknown view setting(s) {sorted(unknown)}; allowed: {sorted(known)}")
    return replace(base, **{k: tuple(v) if k in pair_fields else v for k, v in (overrides or {}).items()})  # type: ignore[type-var]


def recipes_per_view(
    default: R, recipe: Mapping | None, per_view: Sequence[Mapping] | None, num_global: int, pair_fields: tuple[str, ...] = ("crop_scale",)
) -> tuple[R, list[R]]:
    """The shared recipe (`default` + `recipe`) and one recipe per global view (+ its `per_view` entry), for every modality."""
    if num_global < 1:
        raise ValueError(f"augment.num_global must be >= 1, got {num_global}")
    per_view = list(per_view or [])
    if len(per_view) > num_global:
        raise ValueError(f"augment.per_view has {len(per_view)} entries but num_global is {num_global}")
    shared = with_overrides(default, recipe, pair_fields)
    return shared, [with_overrides(shared, per_view[i] if i < len(per_view) else None, pair_fields) for i in range(num_global)]


class ViewList(nn.Module):
    """Apply each of `views` (one module per view) to the same batch: the batched form of a one- or multi-view pipeline."""

    def __init__(self, views: Iterable[nn.Module]) -> None:
        super().__init__()
        self.views = nn.ModuleList(views)

    def forward(self, batch: Any) -> list[Any]:
        return [view(batch) for view in self.views]
