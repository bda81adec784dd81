"""Images: uint8 (C, H, W) samples, normalised per channel; the raw-input baseline probes (pooled) pixels."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ssl_train.data.datasets import InputSpec, Splits
from ssl_train.data.views import eval_transform
from ssl_train.modalities.base import Modality


def image_eval_transform(splits: Splits) -> Callable[[torch.Tensor], torch.Tensor]:
    """Resize + centre-crop for files of any size, then scale and normalise with the data's statistics."""
    return eval_transform(splits.mean, splits.std, None if splits.fixed_size else splits.input_spec.size)


def pixel_features(batch: torch.Tensor, max_dim: int) -> torch.Tensor:
    """(N, C, H, W) images flattened; above `max_dim` values first average-pooled to the largest square grid that fits
    (3 x 36 x 36 for 4096), so the raw-pixel probe of 96-224 px images stays tractable and says no less."""
    x = batch.float()
    if x.ndim == 4 and x[0].numel() > max_dim:
        x = nn.functional.adaptive_avg_pool2d(x, max(1, int((max_dim / x.shape[1]) ** 0.5)))
    return x.flatten(1)


class ImageModality(Modality):
    """uint8 (C, H, W) images; batches (B, C, H, W)."""

    name, holds, raw_input_name = "image", "images", "raw pixels"
    lidar, pipeline_tag = True, "image-feature-extraction"
    spec_fields: tuple[str, ...] = ("channels", "size")

    def in_channels(self, spec: InputSpec) -> int:
        return int(spec.channels)  # type: ignore[arg-type]

    def size(self, spec: InputSpec) -> int:
        return int(spec.size)  # type: ignore[arg-type]

    def eval_transform(self, splits: Splits) -> Callable[[Any], Any]:
        return image_eval_transform(splits)

    def raw_features(self, batch: Any, max_dim: int) -> torch.Tensor:
        return pixel_features(batch, max_dim)

    def export_input(self, splits: Splits) -> dict[str, Any]:
        spec = splits.input_spec
        return {"channels": spec.channels, "image_size": spec.size, "mean": list(splits.mean), "std": list(splits.std)}

    def example_input(self, spec: InputSpec, in_channels: int) -> torch.Tensor | None:
        return torch.zeros(1, in_channels, self.size(spec), self.size(spec))


IMAGE = ImageModality()
