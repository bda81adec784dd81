"""Lightning callbacks of ssl_train: training throughput, and the run's config stored inside each checkpoint."""

from __future__ import annotations

import time
from typing import Any

import lightning.pytorch as pl


class ThroughputMeter(pl.Callback):
    """Source images per second over training batches (data loading included, validation excluded), all ranks."""

    def __init__(self) -> None:
        self.images, self.seconds, self._started = 0, 0.0, None

    def _start(self) -> None:
        self._started = time.perf_counter()

    def _stop(self) -> None:
        if self._started is not None:
            self.seconds += time.perf_counter() - self._started
            self._started = None

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start()

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._stop()

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.training:
            self._start()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._stop()
        if self.seconds > 0:
            pl_module.log("train/images_per_s", self.images_per_second)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.images += len(batch[1]) * trainer.world_size

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0


class ConfigInCheckpoint(pl.Callback):
    """Store the resolved run config in every checkpoint, so `python -m ssl_train.eval` can rebuild the encoder from the file alone."""

    KEY = "ssl_train_config"

    def __init__(self, config: dict) -> None:
        self.config = config

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        checkpoint[self.KEY] = self.config
