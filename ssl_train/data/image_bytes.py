"""Images read as encoded bytes (tar shards, Hugging Face datasets, image files): decoded per sample through the
image guard.

The bytes are checked by ssl_train.data.image_guard (structure, pixel count) before torchvision's native decoder sees
them; a refused or undecodable image is skipped with a warning (the next one served in its place) and counted, never a
crash mid-epoch. EncodedImages holds that logic once for every map-style image dataset (ssl_train.data.folders,
shards, hf_datasets).
"""

from __future__ import annotations

import multiprocessing
import warnings
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision.io import ImageReadMode, decode_image

from ssl_train.data.image_guard import DEFAULT_MAX_PIXELS, check_image, first_gif_frame
from ssl_train.errors import UserError

DECODE_ERRORS = (RuntimeError, OSError, ValueError)  # ImageRefused is a ValueError


def decode_image_bytes(data: bytes, channels: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> torch.Tensor:
    """An encoded image's bytes as uint8 (C, H, W), C = `channels` (1 or 3); ValueError when the guard refuses them."""
    check_image(data, max_pixels)
    if data[:6] in (b"GIF87a", b"GIF89a"):  # an animated GIF is its first frame (as PIL-based loaders serve it), never (frames, C, H, W)
        data = first_gif_frame(data)
    image = decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB if channels == 3 else ImageReadMode.GRAY)
    if image.ndim != 3:
        raise ValueError(f"decoded to shape {tuple(image.shape)}, not one (C, H, W) image")
    return image


class EncodedImages(Dataset):
    """(image uint8 (C, H, W), label) from encoded bytes that a subclass reads by index (`encoded`: shard bytes, table
    cells, image files); an image that fails the reader, the guard or the decoder is skipped (the next one served),
    warned about once and counted in `skipped`.

    A process-shared flag per sample marks the bad ones, so skips inside DataLoader workers reach the trainer.
    """

    corrupt_hint = "is the dataset corrupt?"  # ends the error raised after 50 unreadable images in a row

    def __init__(self, labels: list[int], channels: int, max_pixels: int, what: str) -> None:
        if not labels:
            raise UserError(f"{what}: the split holds no images")
        self.labels, self.channels, self.max_pixels, self.what = labels, channels, max_pixels, what
        self._bad = multiprocessing.get_context("fork").Array("b", len(labels), lock=False)

    def encoded(self, index: int) -> bytes:
        """The encoded image bytes of sample `index`."""
        raise NotImplementedError

    def name(self, index: int) -> str:
        """How a warning names sample `index`."""
        return f"{self.what} sample {index}"

    def decode(self, index: int) -> torch.Tensor:
        """Sample `index` as uint8 (C, H, W); OSError / RuntimeError / ValueError (ImageRefused) when it is unreadable."""
        return decode_image_bytes(self.encoded(index), self.channels, self.max_pixels)

    @property
    def skipped(self) -> int:
        """How many distinct samples were found unreadable so far."""
        return int(np.frombuffer(self._bad, dtype=np.int8).sum())

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        for attempt in range(min(len(self.labels), 50)):
            i = (index + attempt) % len(self.labels)
            if self._bad[i]:
                continue
            try:
                return self.decode(i), self.labels[i]
            except DECODE_ERRORS as error:
                self._bad[i] = 1
                warnings.warn(f"skipping unreadable image {self.name(i)}: {error}", stacklevel=2)
        raise UserError(f"50 consecutive unreadable images from {self.name(index)}: {self.corrupt_hint}")

    def __getstate__(self) -> dict[str, Any]:  # 'spawn' workers cannot share the fork array: they get a copy of the flags
        state = dict(self.__dict__)
        state["_bad"] = bytes(np.frombuffer(self._bad, dtype=np.int8).tobytes())
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        flags = state.pop("_bad")
        self.__dict__.update(state)
        self._bad = multiprocessing.get_context("fork").Array("b", len(self.labels), lock=False)
        np.frombuffer(self._bad, dtype=np.int8)[:] = np.frombuffer(flags, dtype=np.int8)


class BytesImages(EncodedImages):
    """Encoded images held in memory (a shard split read once), with their sample keys."""

    def __init__(self, blobs: list[bytes], labels: list[int], keys: list[str], channels: int, max_pixels: int, what: str) -> None:
        super().__init__(labels, channels, max_pixels, what)
        self.blobs, self.keys = blobs, keys

    def encoded(self, index: int) -> bytes:
        return self.blobs[index]

    def name(self, index: int) -> str:
        return f"{self.what} {self.keys[index]}"
