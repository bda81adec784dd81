"""Streaming the train shards with webdataset: disjoint shards per rank and worker, fixed-length epochs, mid-epoch resume.

The pipeline follows open_clip's (open_clip_train/data.py): the shard list permuted by (seed, epoch), the same on
every rank; `wds.split_by_node`, then one worker slot's share (webdataset's split_by_worker, its slot rotated on a
resume, below); the tar reader; a per-worker sample shuffle buffer seeded by (seed, epoch, rank, slot); decoding
through the image guard; the view transform; batching in the worker. Each rank yields N // (world x batch) batches an
epoch (N: the train samples), dealt to its W worker slots as evenly as possible; `with_epoch` caps each slot and
repeats its own shards when they run short, so every rank steps the same number of times (DDP never waits).

Once per epoch: when every slot's shards hold exactly its batches x batch samples (equal shards, a multiple of
world x workers of them), an epoch visits each sample exactly once across ranks. Otherwise a slot with more samples
leaves its surplus unvisited that epoch (the tail of its shuffled stream) and one with fewer repeats that many of
its own: the tolerance is each slot's |samples in its shards - batches x batch|, summed over slots (with equal
shards, a multiple of world x workers of them: the remainder of N / (world x batch), the samples no full batch holds).

Resume: the loader is a stateful DataLoader (Lightning saves its state_dict in the checkpoint and restores it): the
epoch and the batches done. The DataLoader takes batch i of an epoch from worker slot i mod W, so on a resume after
b batches, slot s skips its first done(s) x batch raw samples (before decoding) and physical worker w plays slot
(w + b) mod W: the remaining batches arrive in the uninterrupted run's order.
"""

from __future__ import annotations

import multiprocessing
import random
import warnings
from collections.abc import Callable, Iterator
from itertools import islice
from typing import Any, cast

import torch
from torch.utils.data import DataLoader, IterableDataset, Subset
from torch.utils.data._utils.collate import default_collate

from ssl_train.data.datamodule import SSLDataModule
from ssl_train.data.image_bytes import DECODE_ERRORS, decode_image_bytes
from ssl_train.data.sampling import loader_generator
from ssl_train.data.shard_reading import image_member, parse_captions, parse_label, raw_samples, require_webdataset
from ssl_train.errors import UserError


class ShardOrder:
    """The whole shard list permuted by (seed, epoch): the same order on every rank, a new one each epoch."""

    def __init__(self, seed: int, epoch: int) -> None:
        self.seed, self.epoch = seed, epoch

    def __call__(self, src: Any) -> Iterator[Any]:
        shards = list(src)
        random.Random(f"shards-{self.seed}-{self.epoch}").shuffle(shards)
        return iter(shards)


class WorkerSlot:
    """webdataset's split_by_worker for logical slot `slot` of `slots` (the physical worker's id, rotated on a resume)."""

    def __init__(self, slot: int, slots: int) -> None:
        self.slot, self.slots = slot, slots

    def __call__(self, src: Any) -> Iterator[Any]:
        return islice(src, self.slot, None, self.slots)


class SkipOnce:
    """Drop the first `count` raw samples of the first pass only (what the interrupted run already trained on)."""

    def __init__(self, count: int) -> None:
        self.count = count

    def __call__(self, src: Any) -> Iterator[Any]:
        count, self.count = self.count, 0
        return islice(src, count, None)


class Excluded:
    """Drop the samples whose key is in `keys` (the probe's validation samples, held out of pretraining)."""

    def __init__(self, keys: frozenset[str]) -> None:
        self.keys = keys

    def __call__(self, src: Any) -> Iterator[Any]:
        return (sample for sample in src if sample["__key__"] not in self.keys)


def done_by_slot(slot: int, slots: int, batches_done: int) -> int:
    """Batches slot `slot` yielded among the first `batches_done` of an epoch (batch i comes from slot i mod slots)."""
    return max(0, -(-(batches_done - slot) // slots))


class ShardStream(IterableDataset):
    """The train shards as batches of (views, labels) per rank and worker (see the module doc); `__len__` is the
    number of train samples an epoch covers (what the datamodule's checks read)."""

    def __init__(self, urls: list[str], num_samples: int, channels: int, max_pixels: int, captioned: bool, buffer: int) -> None:
        self.urls, self.num_samples, self.channels, self.max_pixels = urls, num_samples, channels, max_pixels
        self.captioned, self.buffer = captioned, buffer
        self.transform: Callable[[Any], Any] = lambda x: x
        self.batch_size, self.seed, self.shuffle, self.workers, self.world = 1, 0, True, 1, 1
        self.exclude: frozenset[str] = frozenset()
        self.epoch, self.batches_done = 0, 0
        self._skipped = multiprocessing.get_context("fork").Value("q", 0, lock=True)

    def __len__(self) -> int:
        return self.num_samples - len(self.exclude)

    @property
    def skipped(self) -> int:
        """How many samples the stream skipped so far (images the guard or the decoder refused, bad labels or captions)."""
        return int(self._skipped.value)

    def configure(self, transform: Callable[[Any], Any], batch_size: int, seed: int, shuffle: bool, workers: int) -> None:
        """Set what the training loader needs (the view transform, the per-device batch, the run's seed, the workers)."""
        import webdataset as wds

        self.world = wds.utils.pytorch_worker_info()[1]  # what wds.split_by_node splits by (RANK/WORLD_SIZE or the process group)
        self.transform, self.batch_size, self.seed, self.shuffle, self.workers = transform, batch_size, seed, shuffle, max(1, workers)
        if len(self.urls) < self.world * self.workers:
            raise UserError(
                f"data.num_workers: {len(self.urls)} train shards cannot feed {self.world} process(es) x {self.workers} worker(s) "
                "disjoint shards; lower data.num_workers or write more, smaller shards (toolkit shard --shard-size)"
            )
        if self.batches_per_rank() < 1:
            raise UserError(f"data.batch_size: {len(self)} train samples make no batch of {batch_size} on each of {self.world} process(es)")

    def start_epoch(self, epoch: int, batches_done: int = 0) -> None:
        """The next iteration streams epoch `epoch`, after its first `batches_done` batches on this rank."""
        self.epoch, self.batches_done = epoch, batches_done

    def batches_per_rank(self) -> int:
        return len(self) // (self.world * self.batch_size)

    def slot_batches(self, slot: int) -> int:
        """Batches worker slot `slot` yields in a whole epoch (the rank's batches dealt as evenly as possible)."""
        per_rank = self.batches_per_rank()
        return per_rank // self.workers + (slot < per_rank % self.workers)

    def decode(self, sample: dict[str, Any]) -> tuple[Any, int] | None:
        """(transform(image) or transform((image, captions)), label) of a raw sample; None (skipped, counted) when unreadable."""
        try:
            label = parse_label(sample)
            image = decode_image_bytes(image_member(sample), self.channels, self.max_pixels)
            item: Any = image
            if self.captioned:
                captions = parse_captions(sample)
                if not captions:
                    raise ValueError("no .txt caption")
                item = (image, captions)
        except DECODE_ERRORS as error:
            with self._skipped.get_lock():
                self._skipped.value += 1
            warnings.warn(f"skipping unreadable shard sample {sample.get('__key__')} of {sample.get('__url__')}: {error}", stacklevel=2)
            return None
        return self.transform(item), label

    def __iter__(self) -> Iterator[Any]:
        import webdataset as wds

        rank, _, worker, _ = wds.utils.pytorch_worker_info()
        slot = (worker + self.batches_done) % self.workers
        done = done_by_slot(slot, self.workers, self.batches_done)
        count = self.slot_batches(slot) - done
        if count <= 0:
            return iter(())
        stages: list[Any] = [wds.SimpleShardList(self.urls)]
        if self.shuffle:
            stages.append(ShardOrder(self.seed, self.epoch))
        stages += [wds.split_by_node, WorkerSlot(slot, self.workers)]
        stages = raw_samples(stages)
        if self.exclude:
            stages.append(Excluded(self.exclude))
        if self.shuffle:
            rng = random.Random(f"samples-{self.seed}-{self.epoch}-{rank}-{slot}")
            stages.append(wds.shuffle(self.buffer, min(self.buffer, 100), rng=rng))
        stages += [SkipOnce(done * self.batch_size), wds.map(self.decode), wds.batched(self.batch_size, collation_fn=default_collate, partial=False)]
        return iter(wds.DataPipeline(*stages).with_epoch(nbatches=count))

    def __getstate__(self) -> dict[str, Any]:  # 'spawn' workers get a fresh counter (skips there are warned, not counted)
        state = dict(self.__dict__)
        state["_skipped"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if self._skipped is None:
            self._skipped = multiprocessing.get_context("fork").Value("q", 0, lock=True)


class ShardLoader(DataLoader):
    """The stream's DataLoader: `progress()` gives (epoch, batches done) of the running fit; its state_dict (saved by
    Lightning in every checkpoint) holds them, and after load_state_dict the stream resumes there."""

    def __init__(self, stream: ShardStream, progress: Callable[[], tuple[int, int]], num_workers: int, pin_memory: bool) -> None:
        super().__init__(
            stream, batch_size=None, num_workers=num_workers, pin_memory=pin_memory, persistent_workers=False, generator=loader_generator(stream.seed)
        )
        self.progress = progress
        self._resume: tuple[int, int] | None = None

    def __len__(self) -> int:
        return cast(ShardStream, self.dataset).batches_per_rank()

    def __iter__(self) -> Any:
        epoch = self.progress()[0]
        done = self._resume[1] if self._resume is not None and self._resume[0] == epoch else 0
        self._resume = None
        cast(ShardStream, self.dataset).start_epoch(epoch, done)  # workers start (fork) in super().__iter__: they see it
        return super().__iter__()

    def state_dict(self) -> dict[str, int]:
        epoch, done = self.progress()
        return {"epoch": epoch, "batches_done": done}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._resume = (int(state["epoch"]), int(state["batches_done"]))


class ShardDataModule(SSLDataModule):
    """SSLDataModule whose training batches stream from tar shards (ssl_train.data.shards.ShardSource); evaluation
    reads the source's in-memory probe splits as any source's. With `validation_fraction`, the held-out samples also
    leave the pretraining stream (by key), as they leave an image folder's pretraining."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        require_webdataset()
        super().__init__(*args, **kwargs)
        if self.m_per_class:
            raise UserError("data.m_per_class: class-balanced batches need random access; shards stream, so set it to null")

    @property
    def stream(self) -> ShardStream:
        stream = self.splits.pretrain
        if not isinstance(stream, ShardStream):
            raise UserError(f"data.source: {type(self.source).__name__} is not a shard source; use SSLDataModule")
        return stream

    @property
    def splits(self) -> Any:
        fresh = self._splits is None
        splits = super().splits
        if fresh and self.validation_fraction and isinstance(splits.pretrain, ShardStream):
            held_out = cast(Subset, splits.test)  # a Subset of the probe's train split (carve_validation)
            base: Any = held_out.dataset
            keys = getattr(base, "images", base).keys
            splits.pretrain.exclude = frozenset(keys[i] for i in held_out.indices)
        return splits

    def progress(self) -> tuple[int, int]:
        """(epoch, batches done in it) of the running fit (0, 0 outside one)."""
        trainer = self.trainer  # set by Lightning while it fits
        if trainer is None:
            return 0, 0
        current: Any = trainer.fit_loop.epoch_loop.batch_progress.current  # a _ProcessedTracker (typed as its base)
        return trainer.current_epoch, int(current.processed)

    def train_dataloader(self) -> DataLoader:
        """Batches streamed from the shards; the view transform is the one the folder path uses (the hybrid path: each
        view's crop in the workers, the rest on the device), taken from SSLDataModule's loader, which also logs it."""
        transform = cast(Any, super().train_dataloader().dataset).transform
        stream = self.stream
        stream.configure(transform, self.per_device_batch_size, torch.initial_seed(), self.shuffle, self.num_workers)
        return ShardLoader(stream, self.progress, self.num_workers, self.pin_memory)
