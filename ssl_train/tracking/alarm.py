"""Early alarm: at each online evaluation a run of a shipped recipe compares its kNN top-1 with the recipe's reference
band (tracking.reference) and, the first time it falls below it early in training, warns once in one line with the gap
and the likely causes read from its own signals (collapse, learning rate / warm-up, loss, teacher schedule, loader)."""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import lightning.pytorch as pl

from ssl_train.constraints import AboveZero, Fraction, NonNegative, Number
from ssl_train.metrics import TRAIN_IMAGES_PER_S, TRAIN_LOSS, VAL_EMBEDDING_STD, VAL_KNN_TOP1, VAL_PREFIX, VAL_RANKME
from ssl_train.run_dir import append_line, replace_atomically
from ssl_train.tracking.history import MetricHistory
from ssl_train.tracking.reference import ALARM_KEY, PACKAGE_BANDS, Band, load_bands, matching_band

log = logging.getLogger(__name__)
GAP_KEY = f"{VAL_PREFIX}reference_gap"  # logged when the alarm fires: points below the band's mean


@dataclass
class Signals:
    """What the run logged itself at the evaluation being compared (None: not logged by this run or method)."""

    fraction: float
    knn_top1: float
    rankme: float | None = None
    embedding_std: float | None = None
    loss: float | None = None
    effective_lr: float | None = None
    warmup_fraction: float | None = None
    teacher_temp: tuple[float, float] | None = None  # (at the start, now)
    centre_moved: bool | None = None  # the DINO loss' centre changed since the start
    loader_wait: float | None = None  # share of training time spent waiting for the next batch
    images_per_s: float | None = None


@dataclass(frozen=True)
class Gap:
    """A run's value below the band at one fraction: the band's mean and spread there and the lower edge it fell under."""

    fraction: float
    value: float
    mean: float
    spread: float
    lower: float

    @property
    def points(self) -> float:
        return 100 * (self.mean - self.value)


def compare(band: Band, fraction: float, value: float, sigmas: float, margin: float) -> Gap | None:
    """The gap when `value` (kNN top-1) is below the band's lower edge mean - max(sigmas x spread, margin) at `fraction`;
    None inside the band or where the band has no point near `fraction`."""
    point = band.curves[VAL_KNN_TOP1].at(fraction)
    if point is None:
        return None
    mean, spread = point
    lower = mean - max(sigmas * spread, margin)
    return Gap(fraction, value, mean, spread, lower) if value < lower else None


def _band_at(band: Band, key: str, fraction: float) -> tuple[float, float] | None:
    curve = band.curves.get(key)
    return curve.at(fraction) if curve is not None else None


def likely_causes(signals: Signals, band: Band, collapse_ratio: float, lr_ratio: float, loader_wait: float, sigmas: float) -> list[str]:
    """Each logged signal that differs from the reference run's (or says something is stuck), as a short phrase."""
    causes, f = [], signals.fraction
    collapsed = []
    for label, value, key in (("RankMe", signals.rankme, VAL_RANKME), ("embedding std", signals.embedding_std, VAL_EMBEDDING_STD)):
        reference = _band_at(band, key, f)
        if value is not None and reference is not None and value < collapse_ratio * reference[0]:
            collapsed.append(f"{label} {value:.3g} vs {reference[0]:.3g}")
    if collapsed:
        causes.append(f"collapse ({', '.join(collapsed)})")
    if signals.effective_lr is not None and band.effective_lr:
        ratio = signals.effective_lr / band.effective_lr
        if ratio >= lr_ratio or ratio <= 1 / lr_ratio:
            causes.append(f"learning rate (effective lr {signals.effective_lr:.4g} is {ratio:.3g}x the reference's {band.effective_lr:.4g})")
    if signals.warmup_fraction is not None and band.warmup_fraction is not None:
        run_w, ref_w = signals.warmup_fraction, band.warmup_fraction
        if abs(run_w - ref_w) > 0.5 * max(ref_w, 0.02):
            causes.append(f"warm-up ({100 * run_w:.0f} % of training vs the reference's {100 * ref_w:.0f} %)")
    if signals.loss is not None:
        reference = _band_at(band, TRAIN_LOSS, f)
        if not math.isfinite(signals.loss):
            causes.append(f"training loss not finite ({signals.loss})")
        elif reference is not None and abs(signals.loss - reference[0]) > max(sigmas * reference[1], 0.1 * abs(reference[0])):
            causes.append(f"training loss {signals.loss:.4g} vs the reference's {reference[0]:.4g} ± {reference[1]:.2g}")
    if signals.teacher_temp is not None and signals.teacher_temp[0] == signals.teacher_temp[1]:
        causes.append(f"teacher temperature not moving ({signals.teacher_temp[1]:.4g} since the start)")
    if signals.centre_moved is False:
        causes.append("teacher centre not moving")
    if signals.loader_wait is not None and signals.loader_wait >= loader_wait:
        speed = f", {signals.images_per_s:.0f} images/s" if signals.images_per_s else ""
        causes.append(f"loader starvation ({100 * signals.loader_wait:.0f} % of training time waiting for batches{speed})")
    return causes


def recipe_name(band: Band) -> str:
    """'simclr on EmbeddedFashionMNIST': the band's method and the last part of its data source."""
    data = str(band.recipe.get("data") or "?").rsplit(".", 1)[-1]
    return f"{band.recipe.get('method') or '?'} on {data}"


def alarm_line(band: Band, gap: Gap, causes: list[str], epoch: int) -> str:
    """The one warning line."""
    seeds = f"{len(band.seeds)} seed{'s' if len(band.seeds) != 1 else ''}"
    found = "; ".join(causes) if causes else "none of the logged signals stands out (check the views / augmentations and the data)"
    return (
        f"[ssl_train] reference alarm at {100 * gap.fraction:.0f} % of training (epoch {epoch}): online kNN top-1 {gap.value:.4f} is "
        f"{gap.points:.1f} pts below the reference of {recipe_name(band)} ({gap.mean:.4f} ± {gap.spread:.4f} over {seeds}; "
        f"band edge {gap.lower:.4f}); likely causes: {found}"
    )


def _scalar(trainer: pl.Trainer, key: str) -> float | None:
    value = trainer.callback_metrics.get(key)
    return None if value is None else float(value)


class ReferenceAlarm(pl.Callback):
    """Compare each online evaluation (val/knn_top1) up to `until_fraction` of training with the band whose fingerprint is
    this run's `recipe`; below mean - max(`sigmas` x spread, `margin`): one warning line, val/reference_gap (points) and a
    `reference_alarm` record in history.jsonl. The matched band is copied to `band_copy` for the report. No band: silent."""

    def __init__(
        self,
        recipe: dict[str, Any],
        band_copy: str | None = None,
        bands_dir: str | None = None,
        sigmas: NonNegative = 3.0,
        margin: Fraction = 0.02,
        until_fraction: AboveZero = 0.25,
        collapse_ratio: Fraction = 0.5,
        lr_ratio: Annotated[float, Number(low=1, open_low=True)] = 2.0,  # a ratio of 1 would flag every run
        loader_wait: Fraction = 0.5,
    ) -> None:
        if sigmas < 0 or margin < 0 or not 0 < until_fraction <= 1 or not 0 < collapse_ratio < 1 or lr_ratio <= 1 or not 0 < loader_wait <= 1:
            raise ValueError(
                "callbacks.reference_alarm: sigmas and margin must be >= 0, until_fraction in (0, 1], collapse_ratio in (0, 1), "
                f"lr_ratio > 1 and loader_wait in (0, 1]; got {sigmas}, {margin}, {until_fraction}, {collapse_ratio}, {lr_ratio}, {loader_wait}"
            )
        self.recipe, self.band_copy = dict(recipe), Path(band_copy) if band_copy else None
        self.bands_dir = Path(bands_dir) if bands_dir else PACKAGE_BANDS
        self.sigmas, self.margin, self.until_fraction = sigmas, margin, until_fraction
        self.collapse_ratio, self.lr_ratio, self.loader_wait = collapse_ratio, lr_ratio, loader_wait
        self.band: Band | None = None
        self.fired = False
        self._last_knn: float | None = None
        self._start: dict[str, Any] = {}
        self._waiting = self._busy = 0.0
        self._batch_started: float | None = None
        self._batch_ended: float | None = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        bands, problems = load_bands(self.bands_dir)
        for problem in problems:
            log.warning(f"[ssl_train] reference band skipped: {problem}")
        self.band = matching_band(bands, self.recipe)
        if self.band is None:
            log.debug("[ssl_train] no reference band for this recipe (%s): no early alarm", self.recipe)
            return
        if self.band_copy is not None:
            self.band_copy.parent.mkdir(parents=True, exist_ok=True)
            replace_atomically(self.band_copy, json.dumps(self.band.to_json(), indent=1) + "\n")
        loss = getattr(getattr(pl_module, "method", None), "loss", None)  # DINO-like losses: a teacher temperature and a centre
        centre = getattr(loss, "center", None)
        self._start = {"teacher_temp": getattr(loss, "current_teacher_temp", None), "centre": None if centre is None else centre.detach().clone()}

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        self._batch_started = time.perf_counter()
        if self._batch_ended is not None:  # from the previous batch's end: the loader (and other callbacks' batch-end work)
            self._waiting += self._batch_started - self._batch_ended

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        self._batch_ended = time.perf_counter()
        if self._batch_started is not None:
            self._busy += self._batch_ended - self._batch_started

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._batch_ended = None  # the epoch boundary (evaluations, checkpoints) is not loader time

    def signals(self, trainer: pl.Trainer, pl_module: pl.LightningModule, fraction: float, knn: float) -> Signals:
        """This run's own signals now."""
        groups = trainer.optimizers[0].param_groups if trainer.optimizers else []
        optim = getattr(pl_module, "optim", None)
        warmup = getattr(optim, "warmup_epochs", None)
        loss = getattr(getattr(pl_module, "method", None), "loss", None)
        teacher_now, teacher_start = getattr(loss, "current_teacher_temp", None), self._start.get("teacher_temp")
        centre = getattr(loss, "center", None)
        start_centre = self._start.get("centre")
        total = self._waiting + self._busy
        return Signals(
            fraction=fraction,
            knn_top1=knn,
            rankme=_scalar(trainer, VAL_RANKME),
            embedding_std=_scalar(trainer, VAL_EMBEDDING_STD),
            loss=_scalar(trainer, TRAIN_LOSS),
            effective_lr=float(groups[0].get("initial_lr", groups[0]["lr"])) if groups else None,
            warmup_fraction=float(warmup) / trainer.max_epochs if warmup is not None and trainer.max_epochs else None,
            teacher_temp=(float(teacher_start), float(teacher_now)) if teacher_start is not None and teacher_now is not None else None,
            centre_moved=None if centre is None or start_centre is None else not bool((centre.detach().cpu() == start_centre.cpu()).all()),
            loader_wait=self._waiting / total if total > 0 else None,
            images_per_s=_scalar(trainer, TRAIN_IMAGES_PER_S),
        )

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        knn = _scalar(trainer, VAL_KNN_TOP1)
        if self.band is None or self.fired or knn is None or knn == self._last_knn or not trainer.is_global_zero:
            return
        self._last_knn = knn  # a new online evaluation (callbacks.online_eval logs it at this epoch's end, before this callback)
        fraction = trainer.global_step / max(1, int(trainer.estimated_stepping_batches))
        if fraction > self.until_fraction + 1e-9:
            return
        gap = compare(self.band, fraction, knn, self.sigmas, self.margin)
        if gap is None:
            return
        self.fired = True
        causes = likely_causes(self.signals(trainer, pl_module, fraction, knn), self.band, self.collapse_ratio, self.lr_ratio, self.loader_wait, self.sigmas)
        line = alarm_line(self.band, gap, causes, trainer.current_epoch + 1)
        log.warning(line)
        pl_module.log(GAP_KEY, gap.points, rank_zero_only=True)
        history = next((c for c in trainer.callbacks if isinstance(c, MetricHistory)), None)  # type: ignore[attr-defined]  # set outside Trainer.__init__
        if history is not None:
            append_line(history.path, json.dumps({"step": trainer.global_step, "epoch": trainer.current_epoch, ALARM_KEY: line}))
