"""A steady-state training step makes no call that would block on a GPU (host-device sync), with the default settings.

Counted on the CPU: every Tensor.item / __bool__ / __float__ / __int__ / tolist / nonzero, boolean-mask index read or
write and tensor built from Python data on a device (a blocking copy) between one batch's end and the next, progress
bar, logging and callbacks included. On a GPU each of these makes the host wait for the device instead of queuing the
next kernels.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from torch.overrides import TorchFunctionMode

from ssl_train.build import build
from tests.fixtures import compose_config

SYNCING = {"item", "__bool__", "__float__", "__int__", "tolist", "nonzero", "__index__"}


class SyncCounter(TorchFunctionMode):
    """Counts the tensor calls that synchronise a GPU stream with the host, by name."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: Counter[str] = Counter()

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        name = getattr(func, "__name__", "")
        if name in SYNCING:
            self.calls[name] += 1
        elif name in ("__getitem__", "__setitem__") and len(args) > 1 and isinstance(args[1], torch.Tensor) and args[1].dtype == torch.bool:
            self.calls[f"{name}[bool mask]"] += 1
        elif name in ("tensor", "as_tensor") and (kwargs or {}).get("device") is not None:  # Python data copied to the device
            self.calls[f"{name}(device=...)"] += 1
        return func(*args, **(kwargs or {}))


class CountPerStep(pl.Callback):
    """One SyncCounter per training step, from the start of one batch to the start of the next (its forward, backward,
    optimizer, logging, progress bar and batch-end callbacks, then loading, transfer and views of the next batch)."""

    def __init__(self) -> None:
        self.steps: list[Counter[str]] = []
        self.counter: SyncCounter | None = None

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        if self.counter is not None:
            self.counter.__exit__(None, None, None)
            self.steps.append(self.counter.calls)
        self.counter = SyncCounter()
        self.counter.__enter__()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.counter is not None:  # the epoch's end (validation, checkpoints) is not a steady-state step
            self.counter.__exit__(None, None, None)
            self.counter = None


@pytest.mark.parametrize(
    ("method", "smaller"),
    [
        ("simclr", []),
        ("byol", []),
        ("mocov2", []),  # a queue
        ("dinov2", ["augment.num_local=1", "data.batch_size=16"]),  # masks, Sinkhorn-Knopp, KoLeo, two heads; kept short
    ],
)
def test_steady_state_steps_make_no_host_device_sync(method: str, smaller: list[str], tmp_path: Path) -> None:
    """The default run (progress bar on, logging every 10 steps, the default callbacks, one loader worker), 30 steps of
    one epoch after warm-up: only logging steps may synchronise, so never two within ten steps. (The epoch-end online
    evaluation and pictures are not steady-state steps: switched off to keep the test short.)"""
    cfg = compose_config(
        [
            f"method={method}",
            "trainer.limit_train_batches=36",
            "trainer.enable_progress_bar=true",
            "trainer.log_every_n_steps=10",
            "data.source.train_limit=1280",
            "data.batch_size=32",
            "data.num_workers=1",
            "callbacks.online_eval=null",
            "callbacks.pictures=null",
            *smaller,
        ],
        tmp_path,
    )
    built = build(cfg)
    counting = CountPerStep()
    built.trainer.callbacks.insert(0, counting)  # first: a logging step's batch-start work (the LR monitor) counts as that step's
    built.trainer.fit(built.module, datamodule=built.datamodule)
    steady = counting.steps[5:35]  # after warm-up
    syncing = [(i, dict(calls)) for i, calls in enumerate(steady) if calls]
    assert len(steady) == 30
    assert len(syncing) <= 3, f"{len(syncing)} of {len(steady)} steps synchronise: {syncing[:4]}"
    gaps = [b[0] - a[0] for a, b in zip(syncing, syncing[1:], strict=False)]
    assert all(gap >= 10 for gap in gaps), f"syncing steps closer than 10 apart: {syncing}"
