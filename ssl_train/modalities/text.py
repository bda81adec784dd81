"""Texts: a sample is a str, its evaluation input the tokenizer's int64 ids (0 = padding); the raw-input baseline probes
a hashed bag of token n-grams."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ssl_train.data.datasets import InputSpec, Splits
from ssl_train.data.tokenizers import hashed_ngrams
from ssl_train.modalities.base import Modality


def bag_of_ngrams(tokens: torch.Tensor, dim: int = 4096, orders: tuple[int, ...] = (1, 2, 3)) -> torch.Tensor:
    """(N, L) token ids (0 = padding) -> (N, dim) log(1 + counts) of their 1-, 2- and 3-grams hashed into `dim` buckets:
    the classic bag-of-n-grams text baseline (with byte tokens: character n-grams), no vocabulary needed."""
    buckets, valid = hashed_ngrams(tokens, dim, orders)
    counts = torch.zeros(tokens.shape[0], dim, device=tokens.device).scatter_add_(1, buckets, valid.float())
    return counts.log1p()


class TextModality(Modality):
    """Texts; batches of token ids (B, L) made by the data's tokenizer (`Splits.tokenizer`)."""

    name, holds, raw_input_name = "text", "texts", "bag of token n-grams"
    spec_fields = ("length", "vocab_size")

    def in_channels(self, spec: InputSpec) -> int:
        return int(spec.vocab_size)  # type: ignore[arg-type]

    def size(self, spec: InputSpec) -> int:
        return int(spec.length)  # type: ignore[arg-type]

    def eval_transform(self, splits: Splits) -> Callable[[Any], Any]:
        return splits.tokenizer

    def raw_features(self, batch: Any, max_dim: int) -> torch.Tensor:
        return bag_of_ngrams(batch)


TEXT = TextModality()
