"""WebDataset tar shards (local paths or any URL fsspec opens, brace patterns): images with .cls labels, optionally
.txt captions (CLIP-style pairs), streamed with the `webdataset` library.

Layout (what `python -m ssl_train.toolkit shard` writes): DIR/train-000000.tar ..., DIR/test-000000.tar ..., and
DIR/sizes.json ({shard name: samples}, open_clip's convention) plus DIR/classes.json (class names, optional). A sample
is `<key>.<jpg|png|...>` (the encoded image) + `<key>.cls` (its label as text) [+ `<key>.txt`: captions, one a line].
Only those members are read: any other (a `.pyd` / `.pth` pickle that webdataset's default decoders would unpickle) is
never loaded, and images are decoded through ssl_train.data.image_guard (a malformed one is skipped and counted).

Pretraining streams the train shards (ssl_train.data.shard_stream: every rank and worker reads disjoint shards).
The probe's labelled splits are read once into memory as encoded bytes: the first `probe_train_size` train samples
(the shard tool shuffles the train split, so they are a random sample) and the test shards (up to `test_limit`).
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Sequence
from dataclasses import replace
from typing import Any, cast

import fsspec

from ssl_train.constraints import Limit, PositiveInt
from ssl_train.data.captions import PairDataset, pair_splits
from ssl_train.data.datasets import InputSpec, Splits
from ssl_train.data.folders import IMAGENET_MEAN, IMAGENET_STD, check_max_pixels
from ssl_train.data.image_bytes import BytesImages
from ssl_train.data.image_guard import DEFAULT_MAX_PIXELS
from ssl_train.data.shard_reading import image_member, parse_captions, parse_label, raw_samples, require_webdataset, warn_and_skip
from ssl_train.data.shard_stream import ShardStream
from ssl_train.errors import DataNotFoundError, UserError

SIZES_FILE, CLASSES_FILE = "sizes.json", "classes.json"
MAX_CLASSES = 1_000_000  # a label at or above it is refused: the class names are range(max label + 1)


def expand_shards(spec: str | Sequence[str], split: str, key: str) -> list[str]:
    """Shard URLs of `spec`: a folder (its `<split>-*.tar`), a brace pattern (`dir/train-{000000..000009}.tar`) or a list."""
    import webdataset as wds

    if not isinstance(spec, str):
        urls = [url for item in spec for url in wds.shardlists.expand_urls(str(item))]
    else:
        fs, path = fsspec.core.url_to_fs(spec)
        if "{" not in spec and fs.isdir(path):
            found = sorted(fs.glob(posixpath.join(path, f"{split}-*.tar")))
            urls = [p if spec.startswith(path) else fs.unstrip_protocol(p) for p in found]
            if not urls:
                raise DataNotFoundError(f"data.source.{key}: folder {spec} holds no {split}-*.tar shards (write them with python -m ssl_train.toolkit shard)")
        else:
            urls = wds.shardlists.expand_urls(spec)
    if not urls:
        raise DataNotFoundError(f"data.source.{key}: {spec!r} names no shards")
    return urls


def _read_json(url: str) -> Any:
    """The JSON in `url` (read as data only); OSError when it does not open, UserError when it does not parse."""
    with fsspec.open(url, "r") as handle:
        text = handle.read()
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as error:  # RecursionError: nesting deeper than the parser's stack
        raise UserError(f"{url}: not valid JSON ({str(error)[:80] or type(error).__name__})") from None


def _is_count(value: Any) -> bool:
    """A non-negative int (a bool is not one; NaN / floats are not either)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def shard_sizes(urls: list[str], key: str) -> int:
    """Samples in `urls`, read from the sizes.json beside the first shard (open_clip's convention)."""
    sizes_url = posixpath.join(posixpath.dirname(urls[0]), SIZES_FILE)
    try:
        sizes = _read_json(sizes_url)
    except (OSError, UnicodeDecodeError) as error:
        raise DataNotFoundError(
            f"data.source.num_samples: not given and {sizes_url} is unreadable ({error}); set data.source.num_samples=N (train samples)"
        ) from None
    if not isinstance(sizes, dict) or not all(_is_count(v) for v in sizes.values()):
        raise UserError(f"data.source.{key}: {sizes_url} must be a JSON object of shard name -> sample count (an integer >= 0); set data.source.num_samples=N")
    missing = [u for u in urls if posixpath.basename(u) not in sizes]
    if missing:
        raise UserError(f"data.source.{key}: {sizes_url} does not list {posixpath.basename(missing[0])}; set data.source.num_samples=N")
    return sum(int(sizes[posixpath.basename(u)]) for u in urls)


def class_names(urls: list[str]) -> list[str] | None:
    """The class names in classes.json beside the shards, or None when there is none."""
    url = posixpath.join(posixpath.dirname(urls[0]), CLASSES_FILE)
    try:
        names = _read_json(url)
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as error:
        raise UserError(f"data.source: {url} is unreadable ({error}); it must be a JSON list of class names") from None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise UserError(f"data.source: {url} must be a JSON list of class names (strings), one per label")
    return names


def check_labels(labels: Sequence[int], where: str) -> None:
    """Refuse a label the class list could not hold (range(max + 1) names would exhaust memory)."""
    if labels and max(labels) >= MAX_CLASSES:
        raise UserError(f"{where}: label {max(labels)} is too large; labels must be class indices 0 .. {MAX_CLASSES - 1}")


def read_split(urls: list[str], limit: int | None, captioned: bool) -> tuple[list[bytes], list[int], list[tuple[str, ...]], list[str]]:
    """(encoded images, labels, captions, keys) of the first `limit` samples of `urls`, in shard order (the probe's splits);
    a sample whose label or captions do not parse is skipped with a warning."""
    import webdataset as wds

    blobs: list[bytes] = []
    labels: list[int] = []
    captions: list[tuple[str, ...]] = []
    keys: list[str] = []
    for sample in wds.DataPipeline(*raw_samples([wds.SimpleShardList(urls)])):
        if limit is not None and len(blobs) >= limit:
            break
        try:
            label, lines = parse_label(sample), parse_captions(sample) if captioned else ()
        except ValueError as error:
            warn_and_skip(ValueError(f"sample {sample['__key__']} of {sample.get('__url__')}: {error}"))
            continue
        if captioned and not lines:
            warn_and_skip(ValueError(f"sample {sample['__key__']} of {sample.get('__url__')} has no .txt caption"))
            continue
        blobs.append(image_member(sample))
        labels.append(label)
        captions.append(lines)
        keys.append(str(sample["__key__"]))
    return blobs, labels, captions, keys


class ShardSource:
    """Tar shards of images (+ .cls labels, + .txt captions when `captions`); `urls`: the train shards (a folder written
    by the shard tool, a brace pattern or a list), `test_urls`: the labelled test shards (default: the folder's test-*.tar).

    `num_samples` (null: from sizes.json) is the train split's size, the epoch's length; `train_limit` caps it (and
    the probe's train split). `shuffle_buffer`: samples each worker shuffles among (webdataset's shuffle).
    """

    def __init__(
        self,
        urls: Any,
        test_urls: Any = None,
        image_size: PositiveInt = 224,
        channels: PositiveInt = 3,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        captions: bool = False,
        tokenizer: Any = None,
        num_samples: Limit = None,
        probe_train_size: PositiveInt = 10000,
        shuffle_buffer: PositiveInt = 1000,
        train_limit: Limit = None,
        test_limit: Limit = None,
        max_pixels: PositiveInt = DEFAULT_MAX_PIXELS,
    ) -> None:
        require_webdataset()
        self.max_pixels = check_max_pixels(max_pixels)
        if channels not in (1, 3):
            raise UserError(f"data.source.channels must be 1 or 3, got {channels}")
        self.urls, self.test_urls, self.image_size, self.channels = urls, test_urls, image_size, channels
        self.mean, self.std, self.captions, self.tokenizer = tuple(mean), tuple(std), captions, tokenizer
        self.num_samples, self.probe_train_size, self.shuffle_buffer = num_samples, probe_train_size, shuffle_buffer
        self.train_limit, self.test_limit = train_limit, test_limit

    def test_shards(self) -> list[str]:
        if self.test_urls is not None:
            return expand_shards(self.test_urls, "test", "test_urls")
        if isinstance(self.urls, str) and "{" not in self.urls:
            return expand_shards(self.urls, "test", "urls")
        raise UserError("data.source.test_urls: the probe needs labelled test shards; give their pattern (the shard tool writes DIR/test-*.tar)")

    def load(self) -> Splits:
        train_urls, test_urls = expand_shards(self.urls, "train", "urls"), self.test_shards()
        total = self.num_samples if self.num_samples is not None else shard_sizes(train_urls, "urls")
        total = min(total, self.train_limit) if self.train_limit is not None else total
        probe_size = min(self.probe_train_size, total)
        parts = []
        for what, urls, limit in (("train", train_urls, probe_size), ("test", test_urls, self.test_limit)):
            blobs, labels, captions, keys = read_split(urls, limit, self.captions)
            if not blobs:
                raise DataNotFoundError(f"data.source: the {what} shards {urls[0]} ... hold no readable sample")
            images = BytesImages(blobs, labels, keys, self.channels, self.max_pixels, f"{what} shard sample")
            parts.append(PairDataset(images, captions) if self.captions else images)
        train, test = parts
        labels = [*_images(train).labels, *_images(test).labels]
        if min(_images(test).labels) < 0:
            raise UserError(f"data.source: test samples without a .cls label in {test_urls[0]} ...; the probe needs labelled test shards")
        check_labels(labels, f"data.source: the .cls labels of {train_urls[0]} ... / {test_urls[0]} ...")
        names = class_names(train_urls) or [str(c) for c in range(max(labels) + 1)]
        stream = ShardStream(train_urls, total, self.channels, self.max_pixels, self.captions, self.shuffle_buffer)
        if self.captions:
            splits = pair_splits(train, test, self.mean, self.std, self.channels, self.image_size, names, self.tokenizer, fixed_size=False)  # type: ignore[arg-type]
            return replace(splits, pretrain=stream)
        spec = InputSpec(channels=self.channels, size=self.image_size)
        return Splits(train, test, len(names), self.mean, self.std, spec, pretrain=stream, fixed_size=False, class_names=tuple(names))


def _images(split: Any) -> BytesImages:
    """The BytesImages of a split (inside a PairDataset for captioned shards)."""
    return cast(BytesImages, split.images if isinstance(split, PairDataset) else split)
