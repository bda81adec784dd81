"""run(cfg): claim the run directory, build, fit, evaluate, write metrics.json. Callable from tests without the CLI."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any, cast

import lightning.pytorch as pl
import torch
from omegaconf import DictConfig, OmegaConf

from ssl_train import metrics as key
from ssl_train.build import Built, build
from ssl_train.callbacks import Preemption
from ssl_train.checkpoint_io import read_checkpoint
from ssl_train.eval.protocol import configured_protocol, evaluation_device, initial_baselines, summary_line
from ssl_train.launch import Launch, chosen_options, group_choice, method_name_of, with_method_name
from ssl_train.modalities import modality
from ssl_train.run_dir import ResumePoint, claimed_run_dir, resume_point, save_resolved_config, write_metrics
from ssl_train.tracking.report import write_report
from ssl_train.tracking.trackers import RESUMABLE, abandon_trackers, command_line, git_commit, log_run_end, log_run_start, stored_tracker_runs
from ssl_train.training import train
from ssl_train.validate import validate


def run(cfg: DictConfig, launch: Launch | None = None) -> dict[str, Any]:
    """Pretrain the configured method, then evaluate its encoder beside both baselines; returns (and writes) the metrics."""
    launch = launch or Launch()
    cfg = with_method_name(cfg, launch.choices)  # stored with the config: export and checkpoint evaluation read it
    validate(cfg)  # before anything is created on disk
    output_dir = Path(cfg.paths.output_dir)
    with claimed_run_dir(output_dir, launch.hydra_files) as metrics_path, chosen_options(launch.choices):
        started = time.time()
        config_path = save_resolved_config(cfg, output_dir)
        pl.seed_everything(cfg.seed, workers=True, verbose=False)
        resume = resume_point(output_dir, cfg.pretrain, cfg.ckpt_path, Path(cfg.paths.runs_dir))
        built = build(cfg, tracker_runs_to_continue(cfg, resume.checkpoint))
        trainer = built.trainer
        try:
            if trainer.is_global_zero:
                log_run_start(
                    trainer.loggers,
                    cast(dict[str, Any], OmegaConf.to_container(cfg, resolve=True)),
                    git_commit(),
                    command_line(launch.overrides),
                    [config_path],
                    resumed_from=resume.checkpoint,
                )
            metrics = describe(cfg, built, output_dir) | train_and_evaluate(cfg, built, resume, output_dir)
            metrics |= {key.SKIPPED_IMAGES: built.datamodule.skipped_images(), key.WALL_TIME_S: round(time.time() - started, 2)}
            if trainer.is_global_zero:
                write_results(metrics, metrics_path, trainer, built.datamodule.splits.modality)
            return metrics
        except BaseException as error:
            abandon_trackers(trainer.loggers, getattr(error, "exit_code", 1))
            raise


def tracker_runs_to_continue(cfg: DictConfig, ckpt_path: str | None) -> dict[str, str]:
    """The W&B / MLflow run ids stored in the checkpoint being resumed, when this run logs to such a tracker."""
    resumable = any(node is not None and node.get("_target_") in RESUMABLE for node in (cfg.get("logger") or {}).values())
    return stored_tracker_runs(read_checkpoint(ckpt_path, trust=bool(cfg.get("trust_checkpoint", False)))) if ckpt_path and resumable else {}


def component_name(group: str, node: DictConfig) -> str:
    """The option chosen for `group` (e.g. 'small_resnet'); outside a Hydra app (tests, the Python API) the class it builds."""
    if (chosen := group_choice(group)) != "?":
        return chosen
    target = node.get("source", node).get("_target_", "?") if isinstance(node, DictConfig) else "?"
    return str(target).rsplit(".", 1)[-1]


def describe(cfg: DictConfig, built: Built, output_dir: Path) -> dict[str, Any]:
    """What the run is, metrics.json's first keys: method, backbone, data, seed, batch and learning rate, where, which split."""
    batch_size = built.datamodule.batch_size
    described = {
        key.METHOD: method_name_of(cfg) or component_name("method", cfg.method),
        key.BACKBONE: component_name("backbone", cfg.backbone),
        key.DATA: component_name("data", cfg.data),
        key.SEED: cfg.seed,
        key.EPOCHS: cfg.trainer.max_epochs,
        key.GLOBAL_BATCH_SIZE: batch_size,
        key.EFFECTIVE_LR: built.module.optim.effective_lr(batch_size * cfg.trainer.accumulate_grad_batches),
        key.OUTPUT_DIR: str(output_dir),
        key.EVAL_SPLIT: "validation" if cfg.data.get("validation_fraction") else "test",
        key.MODALITY: built.datamodule.splits.modality,
    }
    if cfg.backbone.get("weights"):  # the random_init_* baseline is then these weights, before this run's training
        described[key.INITIAL_WEIGHTS] = str(cfg.backbone.weights)
    return described


def features_of(cfg: DictConfig, built: Built, backbone: torch.nn.Module) -> torch.nn.Module:
    """What is evaluated: the backbone's features, or with eval_features=projector the projector's outputs."""
    return torch.nn.Sequential(backbone, built.method.projector) if cfg.get("eval_features", "backbone") == "projector" else backbone


def train_and_evaluate(cfg: DictConfig, built: Built, resume: ResumePoint, output_dir: Path) -> dict[str, Any]:
    """Baselines (before training moves the weights), training (or the weights of training finished here), the trained scores."""
    trainer = built.trainer
    protocol = configured_protocol(cfg, built.datamodule, evaluation_device(trainer)) if cfg.probe else None
    features = cfg.get("eval_features", "backbone")
    scores = initial_baselines(protocol, cfg, built.method, features=features) if protocol and cfg.baseline and trainer.is_global_zero else {}
    scores |= train(built, resume, output_dir, cfg.pretrain, bool(cfg.get("trust_checkpoint", False)))
    if protocol and trainer.is_global_zero:
        preemption = next((c for c in trainer.callbacks if isinstance(c, Preemption)), None)  # type: ignore[attr-defined]  # set outside Trainer.__init__
        with preemption.stopping_evaluation() if preemption else contextlib.nullcontext():  # a signal now: one line, training kept
            scores |= protocol.trained(features_of(cfg, built, built.backbone), built.method)
    return scores


def write_results(metrics: dict[str, Any], metrics_path: Path, trainer: pl.Trainer, kind: str) -> None:
    """metrics.json, report.html, the trackers' final record, and the one summary line (rank 0)."""
    metrics_path = write_metrics(metrics_path, metrics)
    report_path = write_report(metrics_path.parent)
    log_run_end(trainer.loggers, metrics, metrics.get(key.STEPS, trainer.global_step), [metrics_path, report_path])
    print(
        f"[ssl_train] {metrics[key.METHOD]}: {summary_line(metrics, modality(kind).raw_input_name)}; wall time {metrics[key.WALL_TIME_S]:.0f}s; "
        f"results in {metrics_path} (report: {report_path})"
    )
