"""View pipelines built from torchvision.transforms.v2: SimCLR-style recipes, per-view tweaks, multi-crop."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Annotated

import torch
from torchvision.transforms import v2

from ssl_train.constraints import Count, FieldsOf, PositiveInt
from ssl_train.data.recipes import ViewRecipe, recipes_per_view, with_overrides


class MultiViewTransform:
    """Turn one uint8 image into a list of views: `num_global` full-size views, then `num_local` small crops.

    `recipe` sets the shared knobs, `per_view` (one mapping per global view) overrides them for one view
    only (BYOL's asymmetric blur/solarization), `local` overrides them for the local crops (multi-crop,
    Caron et al. 2020). `size`, `mean`, `std` are completed from the dataset at run time.
    With `on_device` true (`"auto"`, the default, is true) the recipes run batched, one draw per sample, on the training
    device (ssl_train.data.batched_views): images that all share one size (`fixed_size`, given by the datamodule: the
    arrays) are only stacked by the loader and cropped on the device too (`path` "batched"); files of any size (folders)
    are decoded, crop-resized and flipped per sample on uint8 by the loader workers (`loader_crops()`, ssl_train.data.
    loader_crops), and the device does the rest per view (`path` "hybrid"). `on_device=False`: everything per sample
    in the loader (`path` "per-sample").
    """

    modalities = ("image",)

    def __init__(
        self,
        size: PositiveInt,
        mean: Sequence[float],
        std: Sequence[float],
        num_global: PositiveInt = 2,
        recipe: Annotated[Mapping | None, FieldsOf(ViewRecipe)] = None,
        per_view: Sequence[Mapping] | None = None,
        num_local: Count = 0,
        local_size: PositiveInt = 12,
        local: Annotated[Mapping | None, FieldsOf(ViewRecipe)] = None,
        on_device: bool | str = "auto",
        fixed_size: bool = False,
    ) -> None:
        if on_device not in (True, False, "auto"):
            raise ValueError(f"augment.on_device must be true, false or auto, got {on_device!r}")
        base, self.global_recipes = recipes_per_view(ViewRecipe(), recipe, per_view, num_global)
        self.local_recipe = with_overrides(base, {"crop_scale": (0.05, 0.4), **dict(local or {})})
        self.transforms = [r.build(size, mean, std) for r in self.global_recipes]
        self.transforms += [self.local_recipe.build(local_size, mean, std)] * num_local
        self.num_global, self.num_local = num_global, num_local
        self.size, self.local_size, self.mean, self.std = size, local_size, tuple(mean), tuple(std)
        self.on_device, self.fixed_size = on_device == "auto" or bool(on_device), fixed_size

    @property
    def path(self) -> str:
        """Where the views are made: "batched" (all on the device), "hybrid" (crops in the loader) or "per-sample"."""
        return ("batched" if self.fixed_size else "hybrid") if self.on_device else "per-sample"

    def __call__(self, image: torch.Tensor) -> list[torch.Tensor]:
        return [transform(image) for transform in self.transforms]

    def batched(self) -> torch.nn.Module:
        """The same views as a module applied to whole uint8 batches on the device (one random draw per sample)."""
        from ssl_train.data.batched_views import BatchedMultiView  # imported here: it needs torchvision.ops only then

        return BatchedMultiView(self.global_recipes, self.local_recipe, self.num_local, self.size, self.local_size, self.mean, self.std)

    def loader_crops(self) -> Callable[[torch.Tensor], list[torch.Tensor]]:
        """The hybrid path's loader half: one uint8 image of any size -> each view's crop (resized, flipped) as uint8."""
        from ssl_train.data.loader_crops import LoaderCrops  # imported here: only the hybrid path needs it

        recipes = [*self.global_recipes] + [self.local_recipe] * self.num_local
        return LoaderCrops(recipes, [self.size] * self.num_global + [self.local_size] * self.num_local)


class BatchableCompose(v2.Compose):
    """A v2.Compose of transforms that treat a batch (B, C, H, W) as each of its images (resize, crop, scale,
    normalise: no randomness); TransformedDataset applies it to a loader's whole batch at once (~15x faster)."""


def eval_transform(mean: Sequence[float], std: Sequence[float], size: int | None = None) -> BatchableCompose:
    """The deterministic evaluation transform: (for images of any size: resize to size / 0.875, centre-crop), scale, normalise."""
    steps: list[torch.nn.Module] = []
    if size is not None:
        steps += [v2.Resize(round(size / 0.875), antialias=True), v2.CenterCrop(size)]
    return BatchableCompose(steps + [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))])
