"""Experiment trackers for Lightning: W&B (offline unless online is set up), MLflow (a local store), TensorBoard, CSV.

Several at once (`logger=[tensorboard,wandb,mlflow]`). Each tracker's run id is stored in every checkpoint, so a resumed
run (ckpt_path=..., or a requeued job) continues the same W&B / MLflow run instead of starting a second one. Every
tracker gets the composed config, the git commit and the command line at the start and metrics.json at the end.
"""

from __future__ import annotations

import csv
import logging
import netrc
import os
import re
import shlex
import socket
import subprocess
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.fabric.loggers.csv_logs import _ExperimentWriter as FabricExperimentWriter
from lightning.pytorch.loggers import CSVLogger, Logger, MLFlowLogger, TensorBoardLogger, WandbLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter

from ssl_train.errors import UserError

log = logging.getLogger(__name__)
TRACKER_RUNS_KEY = "ssl_train_tracker_runs"  # checkpoint key: {"wandb": run id, "mlflow": run id}
RESUMABLE = {  # logger _target_ -> (tracker, constructor argument that continues a run)
    "ssl_train.tracking.trackers.wandb_logger": ("wandb", "id"),
    "lightning.pytorch.loggers.WandbLogger": ("wandb", "id"),
    "ssl_train.tracking.trackers.mlflow_logger": ("mlflow", "run_id"),
    "lightning.pytorch.loggers.MLFlowLogger": ("mlflow", "run_id"),
}
WANDB_HOST = "api.wandb.ai"


def _needs(package: str, option: str) -> None:
    try:
        __import__(package)
    except ImportError:
        raise UserError(f"logger={option} needs the {package} package: pip install -e '.[trackers]' (or logger=tensorboard)") from None


def wandb_can_go_online(host: str = WANDB_HOST, timeout_s: float = 3.0) -> bool:
    """True when W&B could sync live: WANDB_MODE is not offline/disabled, an API key is configured (WANDB_API_KEY or
    `wandb login`'s netrc entry) and the W&B host answers within `timeout_s`."""
    mode = os.environ.get("WANDB_MODE", "").lower()
    if mode in ("offline", "dryrun", "disabled"):
        return False
    if not os.environ.get("WANDB_API_KEY"):
        try:
            if netrc.netrc().authenticators(host) is None:
                return False
        except (OSError, netrc.NetrcParseError):
            return False
    try:
        socket.create_connection((host, 443), timeout=timeout_s).close()
    except OSError:
        return False
    return True


def wandb_logger(
    save_dir: str,
    project: str = "ssl_train",
    name: str | None = None,
    offline: bool | str = "auto",
    id: str | None = None,
    tags: Iterable[str] = (),
    **kwargs: Any,
) -> WandbLogger:
    """Lightning's WandbLogger writing under `save_dir`/wandb. `offline=auto`: offline unless W&B can go online
    (wandb_can_go_online); `wandb sync <save_dir>/wandb/offline-run-*` uploads an offline run later. `id` continues a run."""
    _needs("wandb", "wandb")
    if offline not in (True, False, "auto"):
        raise UserError(f"logger.wandb.offline must be true, false or auto, got {offline!r}")
    if offline == "auto":
        offline = not wandb_can_go_online()
    log.info(
        "[ssl_train] W&B %s%s",
        "offline (sync later: wandb sync <run dir>/wandb/offline-run-*)" if offline else "online",
        f", continuing run {id}" if id else "",
    )
    Path(save_dir).mkdir(parents=True, exist_ok=True)
    if "settings" not in kwargs:
        import wandb

        kwargs["settings"] = wandb.Settings(quiet=True)  # no run-summary table in the run's output; the sync hint stays in the log
    return WandbLogger(
        project=project, name=name, save_dir=save_dir, offline=bool(offline), id=id, resume="allow" if id else None, tags=list(tags) or None, **kwargs
    )


def mlflow_logger(
    tracking_uri: str,
    experiment_name: str = "ssl_train",
    run_name: str | None = None,
    run_id: str | None = None,
    tags: Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> MLFlowLogger:
    """Lightning's MLFlowLogger. A `file:` URI is made absolute and allowed (MLflow 3 keeps its file store in maintenance
    mode behind MLFLOW_ALLOW_FILE_STORE; `sqlite:///PATH` or a server URI work as given). `run_id` continues a run."""
    _needs("mlflow", "mlflow")
    if tracking_uri.startswith("file:"):
        tracking_uri = Path(tracking_uri.removeprefix("file:").removeprefix("//")).expanduser().resolve().as_uri()
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    return MLFlowLogger(
        experiment_name=experiment_name, run_name=run_name, tracking_uri=tracking_uri, run_id=run_id, tags=dict(tags) if tags else None, **kwargs
    )


class _AppendingCSVWriter(ExperimentWriter):
    """Lightning's CSV writer, except that an existing metrics.csv (a resumed run's first segment) is continued, not deleted."""

    def _check_log_dir_exists(self) -> None:
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as handle:
                self.metrics_keys = sorted(csv.DictReader(handle).fieldnames or [])


class AppendingCSVLogger(CSVLogger):
    """CSVLogger that appends to the metrics.csv of an earlier segment of the same run directory (Lightning's deletes it)."""

    @property
    def experiment(self) -> FabricExperimentWriter:  # as CSVLogger.experiment
        if self._experiment is None:
            self._experiment = _AppendingCSVWriter(log_dir=self.log_dir)
        return self._experiment


def abandon_trackers(loggers: Iterable[Logger], exit_code: int) -> None:
    """Close the tracker runs of a run that stopped early (preempted: exit code 75, or failed), so that a resume in this
    process or a later one continues them (W&B would otherwise keep the unfinished run attached to the process)."""
    for logger in loggers:
        try:
            if isinstance(logger, WandbLogger) and logger._experiment is not None:
                logger.experiment.finish(exit_code=exit_code)
            elif isinstance(logger, MLFlowLogger):
                logger.finalize("failed")
            else:
                logger.save()
        except Exception as error:  # closing a tracker must never hide the error that stopped the run
            log.warning("could not close %s: %s", type(logger).__name__, error)


def build_loggers(logger_cfg: Mapping[str, Any] | None, instantiate: Any, tracker_runs: Mapping[str, str] | None = None) -> list[Logger]:
    """One logger per non-null entry of the `logger` group (`{tensorboard: {...}, wandb: {...}}`); a tracker whose run id
    is in `tracker_runs` (read from the checkpoint being resumed) continues that run."""
    loggers = []
    for name, node in (logger_cfg or {}).items():
        if node is None:
            continue
        if not isinstance(node, Mapping) or "_target_" not in node:
            raise UserError(f"logger.{name} is not a logger config (no _target_); choose loggers with logger=[tensorboard,wandb,mlflow,csv]")
        tracker, argument = RESUMABLE.get(str(node["_target_"]), (None, None))
        extra = {argument: tracker_runs[tracker]} if tracker and argument and tracker_runs and tracker_runs.get(tracker) else {}
        loggers.append(instantiate(node, **extra))
    return loggers


def tracker_run_ids(loggers: Iterable[Logger]) -> dict[str, str]:
    """{'wandb': id, 'mlflow': run id} of the trackers that have run ids."""
    ids: dict[str, str] = {}
    for logger in loggers:
        if isinstance(logger, WandbLogger) and logger.version:
            ids["wandb"] = str(logger.version)
        elif isinstance(logger, MLFlowLogger) and logger.run_id:
            ids["mlflow"] = str(logger.run_id)
    return ids


RUN_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")


def stored_tracker_runs(checkpoint: Mapping[str, Any] | None) -> dict[str, str]:
    """The tracker run ids a checkpoint was saved with (empty for checkpoints from before trackers were recorded).
    They are data from the file: each must be a plain id of a known tracker (a mapping there would be instantiated)."""
    runs = (checkpoint or {}).get(TRACKER_RUNS_KEY) or {}
    trackers = sorted({tracker for tracker, _ in RESUMABLE.values()})
    plain = isinstance(runs, dict) and all(k in trackers and isinstance(v, str) and RUN_ID.fullmatch(v) for k, v in runs.items())
    if not plain:
        raise UserError(
            f"ckpt_path: the checkpoint's {TRACKER_RUNS_KEY} is not a mapping of tracker ({', '.join(trackers)}) to a plain run id "
            "(letters, digits, - and _): refused (nothing stored is code)"
        )
    return dict(runs)


class TrackerRunsInCheckpoint(pl.Callback):
    """Store the trackers' run ids in every checkpoint: resuming from it continues the same tracker runs."""

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        checkpoint[TRACKER_RUNS_KEY] = tracker_run_ids(trainer.loggers)


def git_commit(where: Path = Path(__file__).parent) -> str | None:
    """The commit of the ssl_train code that runs (with '-dirty' when it has uncommitted changes), or None outside git."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True, cwd=where, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, cwd=where, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("-dirty" if dirty.strip() else "")


def command_line(overrides: Iterable[str] | None = None) -> str:
    """The command that started this run: `python -m ssl_train <overrides>` under Hydra, else the interpreter's argv."""
    if overrides is not None:
        return "python -m ssl_train " + " ".join(shlex.quote(o) for o in overrides)
    return " ".join(shlex.quote(a) for a in [Path(sys.executable).name, *sys.argv])


def _files_of(logger: Logger, files: Iterable[Path]) -> None:
    """Attach files (config, metrics.json, report.html) to the tracker's run: W&B run files, MLflow artifacts, TensorBoard text."""
    for path in files:
        if not path.is_file():
            continue
        if isinstance(logger, WandbLogger):
            logger.experiment.save(str(path), base_path=str(path.parent), policy="now")
        elif isinstance(logger, MLFlowLogger):
            logger.experiment.log_artifact(logger.run_id, str(path))
        elif isinstance(logger, TensorBoardLogger) and path.suffix in (".yaml", ".json", ".txt"):
            logger.experiment.add_text(path.name, "    " + path.read_text().replace("\n", "\n    "))  # markdown code block


def log_run_start(
    loggers: Iterable[Logger], config: Mapping[str, Any], commit: str | None, command: str, files: Iterable[Path], resumed_from: str | None
) -> None:
    """The composed config, the git commit and the command line to every tracker (MLflow params are write-once: a resumed
    run keeps its first segment's and records the resume as a tag)."""
    files = list(files)
    for logger in loggers:
        if isinstance(logger, MLFlowLogger):
            client, run_id = logger.experiment, logger.run_id
            if resumed_from:
                client.set_tag(run_id, "resumed_from", resumed_from)
            else:
                logger.log_hyperparams({"config": dict(config)})
            client.set_tag(run_id, "git_commit", commit or "unknown")
            client.set_tag(run_id, "command", command[:5000])
        else:
            logger.log_hyperparams({"config": dict(config), "git_commit": commit or "unknown", "command": command})
        _files_of(logger, files)


def log_image(loggers: Iterable[Logger], key: str, image: torch.Tensor, step: int) -> None:
    """A uint8 (3, H, W) picture to every tracker that shows images (TensorBoard, W&B, MLflow; CSV has none)."""
    hwc = image.permute(1, 2, 0).contiguous().numpy()
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.experiment.add_image(key, image, global_step=step)
        elif isinstance(logger, WandbLogger):
            logger.log_image(key=key, images=[hwc], step=step)
        elif isinstance(logger, MLFlowLogger):
            logger.experiment.log_image(logger.run_id, np.ascontiguousarray(hwc), artifact_file=f"{key}/step{step:06d}.png")


def log_run_end(loggers: Iterable[Logger], metrics: Mapping[str, Any], step: int, files: Iterable[Path]) -> None:
    """The final metrics (numbers as `final/<key>`, and the files metrics.json / report.html) to every tracker, then close
    the runs (a W&B offline run is complete on disk only after finish)."""
    numbers = {f"final/{k}": float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    files = list(files)
    for logger in loggers:
        if isinstance(logger, WandbLogger):
            logger.experiment.summary.update(numbers)
        if numbers:
            logger.log_metrics(numbers, step=step)
        _files_of(logger, files)
        logger.save()
        if isinstance(logger, WandbLogger):
            logger.experiment.finish()
        elif isinstance(logger, MLFlowLogger):
            logger.finalize("success")
        elif isinstance(logger, TensorBoardLogger):
            logger.experiment.flush()
