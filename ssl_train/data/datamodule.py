"""SSLDataModule: a source's splits, wrapped with view pipelines, served as Lightning dataloaders."""

from __future__ import annotations

from collections.abc import Callable, Sized
from typing import Any, cast

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader, Dataset, Sampler, Subset
from torchvision.transforms import v2

from ssl_train import dist
from ssl_train.constraints import BelowOne, Count, Limit, PositiveInt
from ssl_train.data.datasets import Splits, carve_validation
from ssl_train.data.sampling import MPerClassSampler, ResumableSampler, loader_generator
from ssl_train.data.transformed import PairForEvaluation, TransformedDataset
from ssl_train.data.views import BatchableCompose
from ssl_train.errors import UserError
from ssl_train.modalities import Modality, modality
from ssl_train.modalities.image import image_eval_transform

VIEW_PATHS = {
    "batched": "the loader stacks uint8 images, the device crops, flips, jitters, blurs and normalises per sample",
    "hybrid": "the loader decodes, crops, resizes and flips on uint8, the device jitters, blurs and normalises per sample",
    "per-sample": "the loader makes every view",
}


def collate_of(dataset: Dataset) -> Callable | None:
    """The collate function a dataset brings (graph nodes batch into a NodeBatch), looking through Subset and
    TransformedDataset wrappers; None: torch's default (stacking tensors)."""
    node: Any = dataset  # the dataset, then each one it wraps
    while node is not None:
        if callable(getattr(node, "collate", None)):
            return node.collate
        node = getattr(node, "dataset", None) or getattr(node, "base", None)
    return None


def labels_of(dataset: Dataset) -> torch.Tensor:
    """The labels of a dataset without reading its samples: its `labels`, looking through Subset / TransformedDataset."""
    if isinstance(dataset, Subset):
        return labels_of(dataset.dataset)[torch.as_tensor(dataset.indices, dtype=torch.long)]
    if hasattr(dataset, "labels"):
        return torch.as_tensor(dataset.labels, dtype=torch.long)
    inner = getattr(dataset, "base", None) or getattr(dataset, "dataset", None) or getattr(dataset, "images", None)
    if inner is None:
        raise UserError(f"data.m_per_class: {type(dataset).__name__} does not expose its labels")
    return labels_of(inner)


class SSLDataModule(pl.LightningDataModule):
    """Pretraining batches of views (train split) and evaluation batches (test split) for the online probe.

    `batch_size` is the GLOBAL batch: each of the `world_size` processes loads batch_size / world_size.
    `views` is the partial view pipeline (configs/augment); it is completed with this data's size (its kind's: image side, length), mean and
    std when the splits are loaded. None for evaluation-only use (the probe needs no training views).
    `m_per_class` (metric learning: SupCon, triplet, margin) makes every batch hold batch / m classes with m samples
    each (MPerClassSampler). `validation_fraction` > 0 replaces the test split by that fraction of train (held out of pretraining and of
    the probe's fit): what recipes are tuned on, so that the test split is only ever read for final figures.
    """

    def __init__(
        self,
        source: Any,
        batch_size: PositiveInt = 256,
        num_workers: Count = 1,
        eval_batch_size: PositiveInt = 512,
        pin_memory: bool = False,
        shuffle: bool = True,
        validation_fraction: BelowOne = 0.0,
        views: Callable[..., Callable] | None = None,
        world_size: PositiveInt = 1,
        m_per_class: Limit = None,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise UserError(f"data.batch_size must be >= 1, got {batch_size}")
        if batch_size % world_size:
            raise UserError(
                f"data.batch_size={batch_size} (the global batch) does not divide across {world_size} processes "
                f"(trainer.devices x trainer.num_nodes); pick a multiple of {world_size}"
            )
        if m_per_class is not None and (m_per_class < 1 or (batch_size // world_size) % m_per_class):
            raise UserError(f"data.m_per_class={m_per_class} must be >= 1 and divide the per-device batch {batch_size // world_size}")
        if not 0 <= validation_fraction < 1:
            raise UserError(f"data.validation_fraction must be in [0, 1), got {validation_fraction}")
        self.source, self.batch_size, self.num_workers = source, batch_size, num_workers
        self.eval_batch_size, self.pin_memory, self.shuffle = eval_batch_size, pin_memory, shuffle
        self.validation_fraction, self.views_factory, self.world_size = validation_fraction, views, world_size
        self.m_per_class = m_per_class
        self._splits: Splits | None = None
        self._views: Any = None

    @property
    def splits(self) -> Splits:
        """The loaded splits (loaded once, on first use; a global batch larger than the train split fails here)."""
        if self._splits is None:
            splits = self.source.load()
            modality(splits.modality, "data.source").check_spec(splits.input_spec, "data.source")  # an unknown kind is refused here
            splits = carve_validation(splits, self.validation_fraction) if self.validation_fraction else splits
            train_size = len(cast(Sized, splits.pretrain_set))
            if self.per_device_batch_size > train_size:
                raise UserError(f"data.batch_size={self.batch_size} is larger than the train split ({train_size} images)")
            self._splits = splits
        return self._splits

    @property
    def kind(self) -> Modality:
        """The data's kind (ssl_train.modalities): what differs between images, sequences, texts, ..."""
        return modality(self.splits.modality)

    @property
    def per_device_batch_size(self) -> int:
        return self.batch_size // self.world_size

    def _loader(self, dataset: Dataset, batch_size: int, train: bool) -> DataLoader:
        """Training: a ResumableSampler (order fixed by the run's seed and the epoch; per process under DDP) and the
        loader's own generator, so a resumed run continues the uninterrupted one. Evaluation: in order."""
        sampler: Sampler | None = None
        generator = None
        if train:
            seed = torch.initial_seed()  # the run's seed (seed_everything), the same for an interrupted run and its resumption
            if self.m_per_class:
                try:
                    sampler = MPerClassSampler(dataset, labels_of(dataset), self.m_per_class, batch_size, seed, dist.world_size(), dist.rank())
                except ValueError as error:
                    raise UserError(str(error)) from None
            else:
                sampler = ResumableSampler(dataset, batch_size, seed, shuffle=self.shuffle, num_replicas=dist.world_size(), rank=dist.rank())
            generator = loader_generator(seed)
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            drop_last=train,
            generator=generator,
            collate_fn=collate_of(dataset),
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
        )

    def views(self) -> Any:
        """The view pipeline completed with this data's size (ssl_train.modalities: its kind's) and statistics (built once)."""
        if self.views_factory is None:
            raise UserError("this datamodule was built without views (evaluation only): pass views=<the augment config> to train")
        if self._views is None:
            s = self.splits
            extra = {"tokenizer": s.tokenizer} if s.tokenizer is not None else {}  # text views tokenise what they edit
            self._views = self.views_factory(size=self.kind.size(s.input_spec), mean=s.mean, std=s.std, fixed_size=s.fixed_size, **extra)
        return self._views

    def train_dataloader(self) -> DataLoader:
        """Batches of training samples: uint8 images (batched views: the device makes them), one uint8 crop per view (the
        hybrid path for files of any size: the device makes the rest) or finished views (per-sample); the path is logged."""
        s, views = self.splits, self.views()
        transform: Callable = views
        if getattr(views, "on_device", False) and s.fixed_size:  # batched: the loader only stacks uint8 images
            transform = BatchableCompose([v2.Identity()])
        elif getattr(views, "on_device", False):  # hybrid: each view's crop, resize and flip in the workers, on uint8
            if not callable(getattr(views, "loader_crops", None)):
                raise UserError(f"augment.on_device: {type(views).__name__} cannot run on the device for samples of different sizes; set it to false")
            transform = views.loader_crops()
        path = getattr(views, "path", "batched" if getattr(views, "on_device", False) else "per-sample")
        rank_zero_info(f"[ssl_train] training views: {path} ({VIEW_PATHS.get(path, path)})")
        return self._loader(TransformedDataset(s.pretrain_set, transform), self.per_device_batch_size, train=True)

    def _eval_transform(self) -> Callable:
        """The deterministic transform of a test sample into the encoder's input, as the data's kind makes it."""
        return self.kind.eval_transform(self.splits)

    def image_eval_transform(self) -> Callable:
        """The deterministic transform of an image (of an image source or of a pair): resize + centre-crop for files of
        any size, then scale and normalise with the data's statistics."""
        return image_eval_transform(self.splits)

    def val_dataloader(self) -> DataLoader:
        return self._loader(TransformedDataset(self.splits.test, self._eval_transform()), self.eval_batch_size, train=False)

    def test_pairs(self, tokenizer: Any = None) -> Dataset:
        """The test split of image-caption data as ((image, first caption's token ids), label), for zero-shot and
        retrieval; captions tokenised by `tokenizer` (a checkpoint's training tokenizer), or this data's own."""
        s = self.splits
        if not self.kind.captioned:
            raise UserError(f"zero-shot and retrieval evaluation need image-caption data (e.g. data=fmnist_captions); this data holds {s.modality} samples")
        return TransformedDataset(s.test, PairForEvaluation(self.image_eval_transform(), tokenizer or s.tokenizer))

    def evaluation_datasets(self) -> tuple[Dataset, Dataset]:
        """(train, test) with the deterministic evaluation transform: what every evaluator (after training, online,
        python -m ssl_train.eval), the planner and the toolkit read."""
        transform = self._eval_transform()
        return TransformedDataset(self.splits.train, transform), TransformedDataset(self.splits.test, transform)

    def skipped_images(self) -> int:
        """How many unreadable images were skipped so far (all splits, all workers)."""
        s = self.splits
        return sum(int(d.skipped) for d in {id(d): d for d in (s.train, s.test, s.pretrain_set)}.values() if hasattr(d, "skipped"))
