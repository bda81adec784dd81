"""The curves of a run on disk, whatever the trackers: history.jsonl in the run directory, one JSON line per record."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import lightning.pytorch as pl

from ssl_train.constraints import PositiveInt
from ssl_train.metrics import PROBE_PREFIX, TRAIN_PREFIX, VAL_PREFIX
from ssl_train.run_dir import append_line, replace_atomically

FILE = "history.jsonl"


def read_history(path: Path) -> list[dict[str, Any]]:
    """The records of a history.jsonl (an unreadable last line — a kill mid-write — is skipped)."""
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def series(records: list[dict[str, Any]], key: str) -> list[tuple[float, float]]:
    """(step, value) points of one logged quantity, in step order."""
    return sorted((float(r["step"]), float(r[key])) for r in records if key in r and r[key] is not None and math.isfinite(r[key]))


class MetricHistory(pl.Callback):
    """Append the training scalars (train/*, probe/*) every `every_n_steps` optimizer steps and the evaluation scalars
    (val/*: online probe, kNN, RankMe, LiDAR, ...) when they change, to `path` (history.jsonl). A resume in the same
    directory first drops the records past the checkpoint's step; one from another run directory starts from that run's
    records up to the checkpoint's step, so the report shows the whole run."""

    TRAINING_PREFIXES, EVALUATION_PREFIX = (TRAIN_PREFIX, PROBE_PREFIX), VAL_PREFIX

    def __init__(self, path: str, every_n_steps: PositiveInt = 5) -> None:
        if every_n_steps < 1:
            raise ValueError(f"callbacks.history.every_n_steps must be >= 1, got {every_n_steps}")
        self.path, self.every_n_steps = Path(path), every_n_steps
        self._last_evaluation: dict[str, float] = {}
        self._last_step = -1

    def _append(self, record: dict[str, Any]) -> None:
        append_line(self.path, json.dumps(record))  # never through a symbolic link

    def _scalars(self, trainer: pl.Trainer, prefixes: tuple[str, ...]) -> dict[str, float]:
        out = {}
        for key, value in trainer.callback_metrics.items():
            if key.startswith(prefixes) and getattr(value, "numel", lambda: 1)() == 1:
                out[key] = round(float(value), 6)
        return out

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        step = trainer.global_step
        source = Path(trainer.ckpt_path).parent.parent / FILE if trainer.ckpt_path else None
        if source is not None and source.resolve() != self.path.resolve() and not self.path.exists():
            earlier = read_history(source)  # resumed from another run's checkpoint: its curve up to that checkpoint
        else:
            earlier = read_history(self.path) if step > 0 else []  # a requeued run: what the killed segment wrote past its checkpoint goes
        kept = [r for r in earlier if r.get("step", 0) <= step]
        replace_atomically(self.path, "".join(json.dumps(r) + "\n" for r in kept))
        for record in kept:
            self._last_evaluation.update({k: v for k, v in record.items() if k.startswith(self.EVALUATION_PREFIX)})

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        if trainer.is_global_zero and trainer.global_step % self.every_n_steps == 0 and trainer.global_step != self._last_step:
            self._last_step = trainer.global_step  # once per optimizer step, also under gradient accumulation
            scalars = self._scalars(trainer, self.TRAINING_PREFIXES)
            if scalars:
                self._append({"step": trainer.global_step, "epoch": trainer.current_epoch, **scalars})

    def _evaluation(self, trainer: pl.Trainer, epoch: int) -> None:
        changed = {k: v for k, v in self._scalars(trainer, (self.EVALUATION_PREFIX,)).items() if self._last_evaluation.get(k) != v}
        if changed and trainer.is_global_zero:
            self._last_evaluation.update(changed)
            self._append({"step": trainer.global_step, "epoch": epoch, **changed})

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch > 0:  # what the previous epoch's validation and online evaluation logged is final now
            self._evaluation(trainer, trainer.current_epoch - 1)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._evaluation(trainer, min(trainer.current_epoch, max(0, (trainer.max_epochs or 1) - 1)))
