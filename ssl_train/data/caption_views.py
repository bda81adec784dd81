"""Views of an image-caption pair for CLIP: one augmented image view, one caption (drawn at random from the image's
captions) as token ids, made per sample in the loader."""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from ssl_train.constraints import PositiveInt
from ssl_train.data.recipes import ViewRecipe, with_overrides

# open_clip's training transform: RandomResizedCrop(scale=(0.9, 1.0)), no colour or flip augmentation
CLIP_IMAGE_RECIPE = ViewRecipe(crop_scale=(0.9, 1.0), flip_prob=0.0, jitter_prob=0.0, grayscale_prob=0.0)


class ImageCaptionViews:
    """`augment=clip`: (image uint8 (C, H, W), captions) -> [image view (float, normalised), caption tokens (L,)].

    `recipe` overrides the image view's knobs (ssl_train.data.recipes.ViewRecipe; default: open_clip's crop scale
    (0.9, 1) and nothing else); `size`, `mean`, `std`, `tokenizer` are completed from the data at run time.
    """

    modalities = ("image_text",)
    on_device = False

    def __init__(
        self,
        tokenizer: Callable[[str], torch.Tensor],
        size: PositiveInt,
        mean: Sequence[float],
        std: Sequence[float],
        recipe: Mapping | None = None,
        fixed_size: bool = True,
    ) -> None:
        self.recipe = with_overrides(CLIP_IMAGE_RECIPE, recipe)
        self.image_view, self.tokenizer = self.recipe.build(size, mean, std), tokenizer

    def __call__(self, pair: tuple[torch.Tensor, Any]) -> list[torch.Tensor]:
        image, captions = pair
        caption = captions if isinstance(captions, str) else random.choice(list(captions))
        return [self.image_view(image), self.tokenizer(caption)]
