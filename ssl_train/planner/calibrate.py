"""The planner's calibration: the run's own trainer, data and callbacks fitted for a few steps into a temporary folder,
timed per step (data loading and augmentation included), per epoch end and per callback."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import lightning.pytorch as pl

EPOCH_HOOKS = ("on_train_epoch_start", "on_train_epoch_end", "on_validation_start", "on_validation_end", "on_validation_epoch_end")


@dataclass
class Calibration:
    """What the timed fit measured: seconds per step, the fixed cost of a fit, the epoch-end costs."""

    step_s: float
    fixed_s: float  # setup, loader workers, warm-up steps beyond their share
    epoch_end_s: float  # everything after the last step of an epoch where every callback fired, less what follows
    validation_s: float
    periodic_s: dict[int, float] = field(default_factory=dict)  # every_n_epochs -> seconds of the callbacks firing that often
    steps: int = 0
    images_per_s: float = 0.0


class StepClock(pl.Callback):
    """Wall time at the end of every training batch and around validation, for the calibration."""

    def __init__(self) -> None:
        self.batch_ends: list[float] = []
        self.validation_s = 0.0
        self._validation_start = 0.0

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.batch_ends.append(time.perf_counter())

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._validation_start = time.perf_counter()

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.validation_s += time.perf_counter() - self._validation_start


def timed(hook: Callable[..., Any], spent: list[float]) -> Callable[..., Any]:
    """`hook`, adding the seconds each call takes to spent[0]."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return hook(*args, **kwargs)
        finally:
            spent[0] += time.perf_counter() - start

    return wrapper


def trimmed_mean(values: list[float]) -> float:
    """The mean without the slowest and fastest tenth: a burst of load from another process on shared cores moves it less."""
    ordered = sorted(values)
    cut = len(ordered) // 10
    kept = ordered[cut : len(ordered) - cut] or ordered
    return sum(kept) / len(kept)


def time_periodic_callbacks(callbacks: list[pl.Callback]) -> dict[int, list[float]]:
    """Wrap the epoch hooks of every callback that fires every N epochs (online evaluation, pictures): N -> [seconds spent]."""
    spent: dict[int, list[float]] = {}
    for callback in callbacks:
        every = getattr(callback, "every_n_epochs", None)
        if not isinstance(every, int) or every < 1:
            continue
        cell = spent.setdefault(every, [0.0])
        for name in EPOCH_HOOKS:
            if name in type(callback).__dict__:
                setattr(callback, name, timed(getattr(callback, name), cell))
    return spent


def calibrate(built: Any, warmup: int, global_batch: int) -> Calibration:
    """Fit `built` (its trainer limited to warm-up + timed steps, one epoch) and read the clocks."""
    trainer = built.trainer
    clock = StepClock()
    trainer.callbacks.append(clock)
    periodic = time_periodic_callbacks(trainer.callbacks)
    start = time.perf_counter()
    trainer.fit(built.module, datamodule=built.datamodule)
    end = time.perf_counter()
    ends = clock.batch_ends
    if len(ends) <= warmup:
        raise RuntimeError(f"the calibration ran {len(ends)} steps, not more than the {warmup} warm-up steps")
    timed_steps = len(ends) - warmup
    step_s = trimmed_mean([b - a for a, b in zip([start, *ends], ends, strict=False)][warmup:])
    periodic_s = {every: cell[0] for every, cell in periodic.items()}
    epoch_end = max(0.0, end - ends[-1] - clock.validation_s - sum(periodic_s.values()))
    return Calibration(
        step_s=step_s,
        fixed_s=max(0.0, (ends[warmup - 1] - start) - warmup * step_s) if warmup else 0.0,
        epoch_end_s=epoch_end,
        validation_s=clock.validation_s,
        periodic_s=periodic_s,
        steps=timed_steps,
        images_per_s=global_batch / step_s if step_s > 0 else 0.0,
    )
