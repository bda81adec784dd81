"""Reading WebDataset tar shards as raw samples, and the members of a sample (the shard source's and stream's readers).

Only image, .cls and .txt members are read: any other (a `.pyd` / `.pth` pickle that webdataset's default decoders
would unpickle) is never loaded. Shards open through fsspec (local paths, file://, s3://, https://, ...).
"""

from __future__ import annotations

import posixpath
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import fsspec

from ssl_train.errors import UserError

IMAGE_MEMBERS = ("jpg", "jpeg", "png", "webp", "gif")  # the encodings the image guard checks
READ_MEMBERS = frozenset((*IMAGE_MEMBERS, "cls", "txt"))


def require_webdataset() -> None:
    """One line naming the extra when webdataset is not installed (data=webdataset and the shard tool need it)."""
    try:
        import webdataset  # noqa: F401
    except ImportError:
        raise UserError("tar shards need the webdataset package: pip install -e '.[shards]'") from None


def warn_and_skip(error: Exception) -> bool:
    """webdataset's exception handler: an unreadable shard or member is skipped with a warning naming it."""
    warnings.warn(f"skipping unreadable shard data: {error}", stacklevel=2)
    return True


class ReadMembers:
    """select_files of webdataset's tar reader: only image, .cls and .txt members are read (never a pickle)."""

    def __call__(self, fname: str) -> bool:
        return posixpath.basename(fname).partition(".")[2].lower() in READ_MEMBERS


def open_shards(source: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """webdataset stage: dict(url=...) -> dict(url=..., stream=...) opened by fsspec (local paths, file://, s3://,
    https://, ... whatever the user's fsspec supports); a shard that does not open is skipped with a warning."""
    for shard in source:
        try:
            stream = fsspec.open(shard["url"], "rb").open()
        except (OSError, ValueError, ImportError) as error:
            warn_and_skip(error)
            continue
        yield {**shard, "stream": stream}


def raw_samples(stages: Sequence[Callable]) -> list[Callable]:
    """The webdataset stages from opened shard URLs to raw samples (dicts of member bytes by suffix)."""
    import webdataset as wds
    from webdataset.tariterators import group_by_keys, tar_file_expander

    return [
        *stages,
        open_shards,
        wds.pipelinefilter(tar_file_expander)(handler=warn_and_skip, select_files=ReadMembers()),
        wds.pipelinefilter(group_by_keys)(handler=warn_and_skip),
    ]


def parse_label(sample: dict[str, Any]) -> int:
    """The sample's .cls member as an int (-1 without one); ValueError when it is not an integer."""
    return int(sample["cls"]) if "cls" in sample else -1


def parse_captions(sample: dict[str, Any]) -> tuple[str, ...]:
    """The non-empty lines of the sample's .txt member; ValueError (UnicodeDecodeError) when it is not UTF-8 text."""
    return tuple(line.strip() for line in bytes(sample.get("txt", b"")).decode("utf-8").splitlines() if line.strip())


def image_member(sample: dict[str, Any]) -> bytes:
    """The encoded image of a raw sample (empty when it has none: the guard then refuses it and the sample is skipped)."""
    return next((bytes(sample[k]) for k in IMAGE_MEMBERS if k in sample), b"")
