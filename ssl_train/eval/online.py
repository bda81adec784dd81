"""Online evaluation during pretraining: kNN accuracy and representation metrics every N epochs (rank zero)."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import Subset

from ssl_train.constraints import Count, PositiveInt, Temperature, ViewCount
from ssl_train.eval.knn import KNNClassifier
from ssl_train.eval.linear_probe import extract_features
from ssl_train.eval.metrics import representation_metrics
from ssl_train.eval.protocol import view_metrics
from ssl_train.metrics import VAL_PREFIX


class OnlineEvaluation(pl.Callback):
    """Every `every_n_epochs`: weighted kNN top-1 on the test split (val/knn_top1) and uniformity, RankMe, std and
    alignment of backbone features (val/uniformity, ...). Alignment uses two training views of `pairs` test images; LiDAR
    (val/lidar, images only) `lidar_views` training views of each of `lidar_samples` test images (0: off)."""

    def __init__(
        self,
        every_n_epochs: PositiveInt = 2,
        k: PositiveInt = 20,
        temperature: Temperature = 0.07,
        max_train_samples: PositiveInt = 5000,
        pairs: PositiveInt = 512,
        lidar_samples: Count = 256,
        lidar_views: ViewCount = 8,
    ) -> None:
        if every_n_epochs < 1:
            raise ValueError(f"callbacks.online_eval.every_n_epochs must be >= 1, got {every_n_epochs}")
        self.every_n_epochs, self.knn = every_n_epochs, KNNClassifier(k=[k], temperature=temperature)
        if lidar_samples and lidar_views < 2:
            raise ValueError(f"callbacks.online_eval.lidar_views must be >= 2 (views per surrogate class), got {lidar_views}")
        self.k, self.max_train_samples, self.pairs = k, max_train_samples, pairs
        self.lidar_samples, self.lidar_views = lidar_samples, lidar_views
        self.evaluated_epoch: int | None = None  # the last epoch evaluated: ssl_train.best_checkpoint compares val/* only then

    @torch.no_grad()
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        last_epoch = trainer.current_epoch + 1 == trainer.max_epochs
        if (trainer.current_epoch + 1) % self.every_n_epochs and not last_epoch or not trainer.is_global_zero:
            return
        self.evaluated_epoch = trainer.current_epoch
        with torch.random.fork_rng():  # evaluation must not change the training run's random stream
            self._evaluate(trainer, pl_module)

    def _evaluate(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        datamodule = trainer.datamodule  # type: ignore[attr-defined]  # set outside Trainer.__init__
        if not hasattr(datamodule, "evaluation_datasets"):  # fit() given bare dataloaders: nothing labelled to evaluate on
            rank_zero_warn("callbacks.online_eval needs an SSLDataModule (trainer.fit(..., datamodule=...)); skipped")
            return
        train_set, test_set = datamodule.evaluation_datasets()
        train_set = Subset(train_set, range(min(len(train_set), self.max_train_samples)))
        method: Any = pl_module.method  # an SSLModule's method
        encoder, device = method.backbone, pl_module.device
        train_x, train_y = extract_features(encoder, train_set, datamodule.eval_batch_size, device)
        test_x, test_y = extract_features(encoder, test_set, datamodule.eval_batch_size, device)
        scores = self.knn.evaluate_features(train_x, train_y, test_x, test_y, datamodule.splits.num_classes)
        metrics = {"knn_top1": scores[f"k{self.k}_top1"], **representation_metrics(test_x, None)}
        splits = datamodule.splits  # alignment and LiDAR as the checkpoint evaluation computes them (eval.protocol)
        metrics.update(view_metrics(encoder, datamodule.views(), splits.test, device, splits.modality, self.pairs, self.lidar_samples, self.lidar_views))
        for key, value in metrics.items():
            pl_module.log(f"{VAL_PREFIX}{key}", float(value), rank_zero_only=True)  # val/knn_top1, val/alignment, ... (ssl_train.metrics)
