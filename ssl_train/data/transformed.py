"""Datasets seen through a transform: each sample's input transformed, its label kept (the loaders' datasets).

Apart from the datamodule so that evaluation code (zero-shot, retrieval, the toolkit) can wrap a dataset without
importing the datamodule, and the datamodule never imports evaluation code (no import cycle).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils.data import Dataset

from ssl_train.data.captions import first_caption
from ssl_train.data.datasets import ImageArrayDataset
from ssl_train.data.views import BatchableCompose


class ImageOfPair:
    """(image, captions) -> transform(image): the evaluation transform of image-caption pairs for the image probes."""

    def __init__(self, transform: Callable[[torch.Tensor], Any]) -> None:
        self.transform = transform

    def __call__(self, pair: tuple[torch.Tensor, Any]) -> Any:
        return self.transform(pair[0])


class TransformedDataset(Dataset):
    """Apply `transform` to the image of each (image, label) pair of `base`."""

    def __init__(self, base: Dataset, transform: Callable[[Any], Any]) -> None:  # the sample's first item: an image, or a pair
        self.base, self.transform = base, transform

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[Any, int]:
        image, label = self.base[index]
        return self.transform(image), label

    def __getitems__(self, indices: list[int]) -> list[tuple[Any, int]]:
        """A loader's batch: one indexing op and one transform call when the base reads batches and the transform
        acts on them (the evaluation transform of in-memory images), else item by item; the same samples either way."""
        if not (isinstance(self.base, ImageArrayDataset) and isinstance(self.transform, BatchableCompose)):
            return [self[index] for index in indices]
        images, labels = self.base.batch(indices)
        return list(zip(self.transform(images).unbind(0), labels.tolist(), strict=True))


class PairForEvaluation:
    """(image, captions) -> (the image's evaluation transform, the first caption's token ids)."""

    def __init__(self, image_transform: Callable[[torch.Tensor], torch.Tensor], tokenizer: Callable[[str], torch.Tensor]) -> None:
        self.image_transform, self.tokenizer = image_transform, tokenizer

    def __call__(self, pair: tuple[torch.Tensor, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        image, captions = pair
        return self.image_transform(image), self.tokenizer(first_caption(captions))
