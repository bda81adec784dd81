"""Views of sequences (T, F) and waveforms (T,), made in batches on the training device, one random draw per sample.

The 1-D counterparts of the image recipe: a random window resampled to the full length (RandomResizedCrop in time;
for audio also a speed/pitch change), a speed factor, gain, additive noise, a circular time shift and time masking
(SpecAugment, Park et al. 2019, on the time axis). Frequency masking belongs to a log-mel front-end
(ssl_train.encoders.sequence.LogMelFrontend), where there are frequencies to mask.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated

import torch
import torch.nn.functional as F
from torch import nn

from ssl_train.constraints import Count, CropScale, FieldsOf, Fraction, NonNegative, PositiveInt
from ssl_train.data.recipes import ViewList, recipes_per_view


@dataclass(frozen=True)
class SequenceViewRecipe:
    """The knobs of one sequence view. Values are applied in this order; 0 / (1, 1) turns a step off."""

    crop_scale: CropScale = (0.6, 1.0)  # fraction of the length in the random window, resampled to full length
    speed: tuple[float, float] = (1.0, 1.0)  # extra time-stretch factor range around the centre (audio: 0.9-1.1)
    gain_db: tuple[float, float] = (0.0, 0.0)  # amplitude gain range in dB (before standardising)
    noise_std: NonNegative = 0.1  # Gaussian noise, in units of the data's per-feature std
    shift: Fraction = 0.0  # circular shift by up to this fraction of the length, either way
    time_masks: Count = 1  # number of masked spans (set to the mean, i.e. 0 once standardised)
    time_mask_fraction: Fraction = 0.1  # the longest span, as a fraction of the length


def _uniform(n: int, bounds: Sequence[float], device: torch.device) -> torch.Tensor:
    low, high = float(bounds[0]), float(bounds[1])
    return low + (high - low) * torch.rand(n, device=device)


class BatchedSequenceView(nn.Module):
    """One view of a batch (B, T, F) (or (B, T) waveforms): float32, standardised with the data's mean/std."""

    # buffers (register_buffer below)
    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, recipe: SequenceViewRecipe, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.recipe = recipe
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32), persistent=False)

    def _resample(self, x: torch.Tensor) -> torch.Tensor:
        """Random window (crop_scale) read at a random speed, by linear interpolation; zeros outside the sample."""
        r = self.recipe
        n, length = x.shape[0], x.shape[1]
        if tuple(r.crop_scale) == (1.0, 1.0) and tuple(r.speed) == (1.0, 1.0):
            return x
        fraction = _uniform(n, r.crop_scale, x.device)
        start = torch.rand(n, device=x.device) * (1 - fraction)
        speed = _uniform(n, r.speed, x.device)
        unit = torch.linspace(0, 1, length, device=x.device)
        # position in [0, 1] of the source read by each output step: the window, stretched around its centre
        centre = start + fraction / 2
        position = centre[:, None] + (unit[None, :] - 0.5) * fraction[:, None] * speed[:, None]
        grid = torch.stack([position * 2 - 1, torch.zeros_like(position)], dim=-1)[:, None]  # (B, 1, T, 2) for grid_sample
        out = F.grid_sample(x.transpose(1, 2)[:, :, None], grid, mode="bilinear", padding_mode="zeros", align_corners=True)
        return out[:, :, 0].transpose(1, 2)

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        r = self.recipe
        waveform = batch.ndim == 2
        x = (batch[..., None] if waveform else batch).float()
        n, length = x.shape[0], x.shape[1]
        x = self._resample(x)
        if tuple(r.gain_db) != (0.0, 0.0):
            x = x * (10 ** (_uniform(n, r.gain_db, x.device) / 20))[:, None, None]
        x = (x - self.mean) / self.std
        if r.noise_std > 0:
            x = x + r.noise_std * torch.randn_like(x)
        if r.shift > 0:
            max_shift = max(1, int(r.shift * length))
            offsets = torch.randint(-max_shift, max_shift + 1, (n,), device=x.device)
            index = (torch.arange(length, device=x.device)[None, :] - offsets[:, None]) % length
            x = x.gather(1, index[..., None].expand_as(x))
        if r.time_masks > 0 and r.time_mask_fraction > 0:
            steps = torch.arange(length, device=x.device)[None, :]
            keep = torch.ones(n, length, dtype=torch.bool, device=x.device)
            for _ in range(r.time_masks):
                width = (torch.rand(n, device=x.device) * r.time_mask_fraction * length).long()
                begin = (torch.rand(n, device=x.device) * (length - width + 1)).long()
                keep &= ~((steps >= begin[:, None]) & (steps < (begin + width)[:, None]))
            x = x * keep[..., None]
        return x[..., 0] if waveform else x


class SequenceViews:
    """The view pipeline for sequence and waveform data (`augment=sequence`): always batched on the device.

    `size`, `mean`, `std`, `fixed_size` are completed from the data at run time, as for images; `recipe` sets the
    knobs of every view and `per_view` overrides them for one view. CPC uses one view, the siamese methods two.
    """

    modalities = ("sequence", "waveform")
    on_device = True

    def __init__(
        self,
        size: PositiveInt,
        mean: Sequence[float],
        std: Sequence[float],
        num_global: PositiveInt = 2,
        recipe: Annotated[Mapping | None, FieldsOf(SequenceViewRecipe)] = None,
        per_view: Sequence[Mapping] | None = None,
        fixed_size: bool = True,
    ) -> None:
        _, self.recipes = recipes_per_view(SequenceViewRecipe(), recipe, per_view, num_global, pair_fields=("crop_scale", "speed", "gain_db"))
        self.num_global, self.size, self.mean, self.std = num_global, size, tuple(mean), tuple(std)

    def batched(self) -> nn.Module:
        return ViewList(BatchedSequenceView(r, self.mean, self.std) for r in self.recipes)

    def __call__(self, sample: torch.Tensor) -> list[torch.Tensor]:
        """Per-sample use (tests, the toolkit): the batched views of a batch of one."""
        return [view[0] for view in self.batched()(sample[None])]


class StandardizeSequence:
    """The evaluation transform of sequences and waveforms: (x - mean) / std per feature, float32."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.mean, self.std = torch.tensor(mean, dtype=torch.float32), torch.tensor(std, dtype=torch.float32)

    def __call__(self, sample: torch.Tensor) -> torch.Tensor:
        x = sample.float()
        if x.ndim == 1:  # waveform: one feature
            return (x - self.mean[0]) / self.std[0]
        return (x - self.mean) / self.std
