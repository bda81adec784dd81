"""Sequences: float (T, F) samples, standardised per feature; the raw-input baseline probes the flattened sequence."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ssl_train.data.datasets import InputSpec, Splits
from ssl_train.data.sequence_views import StandardizeSequence
from ssl_train.modalities.base import Modality


class SequenceModality(Modality):
    """float (T, F) sequences (sensor streams, rows of an image); batches (B, T, F)."""

    name, holds, raw_input_name = "sequence", "sequences", "raw sequence"
    spec_fields = ("length", "features")

    def in_channels(self, spec: InputSpec) -> int:
        return int(spec.features)  # type: ignore[arg-type]

    def size(self, spec: InputSpec) -> int:
        return int(spec.length)  # type: ignore[arg-type]

    def eval_transform(self, splits: Splits) -> Callable[[Any], Any]:
        return StandardizeSequence(splits.mean, splits.std)


SEQUENCE = SequenceModality()
