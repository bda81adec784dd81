"""callbacks.model_checkpoint: the best checkpoint by the online probe or by a label-free proxy (RankMe, LiDAR,
uniformity, alignment), its mode following the metric."""

from __future__ import annotations

from typing import Annotated

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from ssl_train.constraints import Number
from ssl_train.errors import UserError
from ssl_train.eval.selection import CHECKPOINT_MODES, ONLINE_EVAL_MONITORS
from ssl_train.metrics import VAL_LIDAR


class BestCheckpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint for `callbacks.model_checkpoint`: `mode: auto` follows the monitored metric (max for
    accuracies, RankMe, LiDAR; min for uniformity, alignment: ssl_train.eval.selection), and a metric of the online
    evaluation (val/rankme, ...: label-free selection) is compared only at the epochs that measured it, after it is logged
    at that epoch's end: never a stale value from an earlier evaluation, never Lightning's error at the epochs between."""

    def __init__(
        self,
        dirpath: str,
        filename: str,
        monitor: str | None,
        mode: str = "auto",
        save_top_k: Annotated[int, Number(integer=True, low=-1)] = 1,  # -1: keep every checkpoint
        save_last: bool = False,
        auto_insert_metric_name: bool = False,
        save_on_train_epoch_end: bool | None = None,
    ) -> None:
        allowed = ", ".join(CHECKPOINT_MODES)
        if monitor is not None and monitor not in CHECKPOINT_MODES:
            raise UserError(f"callbacks.model_checkpoint.monitor={monitor}: not a metric it selects by; use one of {allowed} (or null: the latest)")
        if mode not in ("auto", "max", "min"):
            raise UserError(f"callbacks.model_checkpoint.mode={mode}: use auto (follows the monitor), max or min")
        self.online = monitor in ONLINE_EVAL_MONITORS
        if self.online and save_on_train_epoch_end is False:
            raise UserError(f"callbacks.model_checkpoint.save_on_train_epoch_end=false: {monitor} is logged at the end of the training epoch")
        super().__init__(
            dirpath=dirpath,
            filename=filename,
            monitor=monitor,
            mode=CHECKPOINT_MODES.get(str(monitor), "max") if mode == "auto" else mode,
            save_top_k=save_top_k,
            save_last=save_last,
            auto_insert_metric_name=auto_insert_metric_name,
            save_on_train_epoch_end=True if self.online else save_on_train_epoch_end,  # after callbacks.online_eval has logged it
        )

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.online:
            return
        evaluators = [c for c in trainer.callbacks if hasattr(c, "evaluated_epoch")]  # type: ignore[attr-defined]  # set outside Trainer.__init__
        if not evaluators:
            raise UserError(
                f"callbacks.model_checkpoint.monitor={self.monitor} is logged by callbacks.online_eval, which is off; turn it on or monitor val/online_top1"
            )
        if self.monitor == VAL_LIDAR and not any(getattr(c, "lidar_samples", 1) for c in evaluators):
            raise UserError("callbacks.model_checkpoint.monitor=val/lidar needs callbacks.online_eval.lidar_samples > 0 (it is 0: LiDAR off)")

    def _save_topk_checkpoint(self, trainer: pl.Trainer, monitor_candidates: dict[str, torch.Tensor]) -> None:
        if self.monitor is None:
            return super()._save_topk_checkpoint(trainer, monitor_candidates)
        if self.online:
            value, problem = self._measured_now(trainer, monitor_candidates)
            if trainer.world_size > 1:  # the online evaluation runs on rank 0; every rank takes part in saving
                value, problem = trainer.strategy.broadcast((value, problem), src=0)
            if problem is not None:
                raise UserError(problem)
            if value is None:
                return  # not measured at this epoch
            monitor_candidates = {**monitor_candidates, self.monitor: torch.tensor(value)}
        elif self.monitor not in monitor_candidates and trainer.fit_loop.epoch_loop.val_loop._has_run:
            raise UserError(self._missing(monitor_candidates))
        super()._save_topk_checkpoint(trainer, monitor_candidates)

    def _measured_now(self, trainer: pl.Trainer, candidates: dict[str, torch.Tensor]) -> tuple[float | None, str | None]:
        """(value, None) at an epoch the online evaluation measured the monitor, (None, None) at the others, (None, line) when
        it evaluated without logging the monitor (e.g. LiDAR on data without views)."""
        evaluated = any(getattr(c, "evaluated_epoch", None) == trainer.current_epoch for c in trainer.callbacks)  # type: ignore[attr-defined]  # set outside Trainer.__init__
        if not evaluated:
            return None, None
        if self.monitor not in candidates:
            return None, self._missing(candidates)
        return float(candidates[str(self.monitor)]), None

    def _missing(self, candidates: dict[str, torch.Tensor]) -> str:
        logged = ", ".join(sorted(k for k in candidates if k in CHECKPOINT_MODES)) or "none of them"
        return f"callbacks.model_checkpoint.monitor={self.monitor} was not logged in this run (logged: {logged}); allowed: {', '.join(CHECKPOINT_MODES)}"
