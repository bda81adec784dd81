"""Image-caption pairs: the image tower reads the image of a pair, the text tower its captions' token ids; the probes
and the raw-input baseline read the images."""

from __future__ import annotations

from collections.abc import Callable
from types import MappingProxyType
from typing import Any

import torch

from ssl_train.data.datasets import Splits
from ssl_train.data.transformed import ImageOfPair
from ssl_train.modalities.image import ImageModality, image_eval_transform


class ImageTextModality(ImageModality):
    """(uint8 image, captions) pairs; batches [images (B, C, H, W), caption ids (B, L)]; the encoder input is the image's."""

    name, holds, raw_input_name = "image_text", "image-caption pairs", "raw pixels"
    views_pair_samples, lidar, captioned, pipeline_tag = False, False, True, "feature-extraction"
    component_input = MappingProxyType({"backbone": "image"})  # the image tower reads the image of a pair
    spec_fields = ("channels", "size", "length", "vocab_size")

    def eval_transform(self, splits: Splits) -> Callable[[Any], Any]:
        return ImageOfPair(image_eval_transform(splits))

    def export_input(self, splits: Splits) -> dict[str, Any]:
        return {}

    def example_input(self, spec: Any, in_channels: int) -> torch.Tensor | None:
        return None


IMAGE_TEXT = ImageTextModality()
