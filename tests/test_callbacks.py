"""ssl_train.callbacks: callbacks' empty per-batch hooks are skipped, the ones they define still run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset

from ssl_train.build import build
from ssl_train.callbacks import PER_BATCH_HOOKS, skip_inherited_batch_hooks
from tests.fixtures import compose_config


class CountsBatchEnds(pl.Callback):
    """Defines one per-batch hook (counting its calls) and inherits the others."""

    def __init__(self) -> None:
        self.batch_ends = 0

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.batch_ends += 1


class CountsBackwards(CountsBatchEnds):
    """A subclass: the hook its parent defines stays, as does its own."""

    def __init__(self) -> None:
        super().__init__()
        self.after_backward = 0

    def on_after_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.after_backward += 1


class TinyRegression(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(3, 1)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        return torch.nn.functional.mse_loss(self.layer(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_only_the_hooks_a_callback_inherits_empty_are_unset() -> None:
    parent, child = CountsBatchEnds(), CountsBackwards()
    skipped = skip_inherited_batch_hooks([parent, child])
    assert parent.on_after_backward is None and parent.on_before_zero_grad is None
    assert callable(parent.on_train_batch_end) and callable(child.on_train_batch_end) and callable(child.on_after_backward)
    assert skipped == (len(PER_BATCH_HOOKS) - 1) + (len(PER_BATCH_HOOKS) - 2)
    assert skip_inherited_batch_hooks([parent, child]) == 0  # a second pass finds nothing more (None is not the empty hook)


def test_a_trainer_still_calls_the_hooks_callbacks_define_and_saves_checkpoints(tmp_path: Path) -> None:
    counting = CountsBackwards()
    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    trainer = pl.Trainer(
        max_epochs=2, callbacks=[counting, checkpoint], logger=False, enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path
    )
    skip_inherited_batch_hooks(trainer.callbacks)
    data = TensorDataset(torch.randn(12, 3), torch.randn(12, 1))
    trainer.fit(TinyRegression(), DataLoader(data, batch_size=4))
    assert counting.batch_ends == 6 and counting.after_backward == 6  # 2 epochs x 3 batches, each hook once per batch
    assert (tmp_path / "last.ckpt").is_file()  # ModelCheckpoint's own (defined) batch-end and epoch-end hooks ran


def test_build_skips_the_empty_batch_hooks_of_every_callback_lightning_included(tmp_path: Path) -> None:
    built = build(compose_config([], tmp_path))
    callbacks = built.trainer.callbacks
    assert any(isinstance(c, ModelCheckpoint) for c in callbacks)
    for callback in callbacks:
        for hook in PER_BATCH_HOOKS:
            inherited_empty = getattr(type(callback), hook) is getattr(pl.Callback, hook)
            assert (getattr(callback, hook) is None) == inherited_empty, (type(callback).__name__, hook)
