"""`python -m ssl_train plan <overrides>`: before a run, what it will cost here and what cannot work.

The config is composed as the run composes it; the run's own trainer, data, views and callbacks are built for one device
and fitted for a few calibration steps into a temporary folder (nothing is logged to trackers, nothing written beside the
user's runs). Prediction = start-up (this process's, the same imports) + build + fit (fixed cost, steps x time per step,
epoch ends: validation, checkpoints, callbacks every N epochs) + evaluation (ssl_train.planner.estimate).
"""

from __future__ import annotations

import copy
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from omegaconf import DictConfig, ListConfig, open_dict
from torch import nn

from ssl_train.build import build, build_evaluators
from ssl_train.composed import compose_run_config
from ssl_train.eval.protocol import evaluation_device
from ssl_train.launch import method_name_of
from ssl_train.planner.calibrate import Calibration, calibrate
from ssl_train.planner.estimate import EvaluationEstimate, evaluation_estimate, peak_rss, process_age
from ssl_train.planner.memory import BatchFit, largest_batch
from ssl_train.validate import validate

WARMUP, TIMED = 3, 20
# The interpreter's exit after the run's imports (torch, Lightning) is not free: on 2 CPU cores 2.5-2.6 s after a start-up
# of 11.3-12.0 s; taken as this share of the start-up measured here
EXIT_SHARE = 0.22


@dataclass
class Shape:
    """The run's size as configured: devices, batches, steps."""

    devices: int
    global_batch: int
    per_device: int
    batches_per_epoch: int  # per device, before limit_train_batches
    steps_per_epoch: int
    epochs: int
    total_steps: int
    val_epochs: int


def class_name(node: DictConfig) -> str:
    """The class a config node builds (a data node's source), for the plan's first line."""
    return str(node.get("source", node).get("_target_", "?")).rsplit(".", 1)[-1]


def evaluated(cfg: DictConfig, built: Any) -> nn.Module:
    """A copy of what the run evaluates, as built (the random-init baseline's weights): the backbone, or with it the projector."""
    backbone = copy.deepcopy(built.backbone)
    return nn.Sequential(backbone, copy.deepcopy(built.method.projector)) if cfg.get("eval_features", "backbone") == "projector" else backbone


def device_count(trainer: DictConfig) -> int:
    """Processes the run trains on: trainer.devices (a count, a list, auto/-1: the GPUs here, or 1) x trainer.num_nodes."""
    devices = trainer.get("devices", 1)
    if isinstance(devices, (list, ListConfig)):
        count = len(devices)
    elif str(devices) in ("auto", "-1"):
        count = torch.cuda.device_count() if torch.cuda.is_available() and trainer.get("accelerator") != "cpu" else 1
    else:
        count = int(devices)
    return max(1, count) * int(trainer.get("num_nodes", 1) or 1)


def limited(batches: int, limit: float | int) -> int:
    """Batches per epoch under Lightning's limit_train_batches: a count (int) or a fraction (float)."""
    return min(batches, limit) if isinstance(limit, int) else int(batches * float(limit))


def run_shape(cfg: DictConfig, train_size: int) -> Shape:
    """Devices, per-device batch and steps of the run `cfg`, for a train split of `train_size` samples."""
    devices, batch = device_count(cfg.trainer), int(cfg.data.batch_size)
    per_device = max(1, batch // devices)
    batches = (train_size // devices) // per_device  # the sampler's share of each process, whole batches only (drop_last)
    steps = limited(batches, cfg.trainer.get("limit_train_batches", 1.0)) if cfg.pretrain else 0
    epochs = int(cfg.trainer.max_epochs or 0) if cfg.pretrain else 0
    total = epochs * steps
    max_steps = int(cfg.trainer.get("max_steps", -1) or -1)
    if max_steps >= 0:
        total = min(total, max_steps * int(cfg.trainer.get("accumulate_grad_batches", 1)))
    every = int(cfg.trainer.get("check_val_every_n_epoch", 1) or 1)
    val_epochs = epochs // every if cfg.trainer.get("limit_val_batches", 1.0) else 0
    return Shape(devices, batch, per_device, batches, steps, epochs, total, val_epochs)


def refusals(cfg: DictConfig, shape: Shape, fit: BatchFit | None) -> list[str]:
    """What cannot work as configured, one line each."""
    lines = []
    if shape.global_batch % shape.devices:
        lines.append(
            f"data.batch_size={shape.global_batch} does not divide across {shape.devices} devices (trainer.devices x trainer.num_nodes): "
            f"pick a multiple of {shape.devices}"
        )
    if cfg.pretrain and shape.batches_per_epoch == 0:
        lines.append(f"data.batch_size={shape.global_batch}: the train split holds less than one batch per device, so training has zero steps")
    elif cfg.pretrain and (shape.steps_per_epoch == 0 or shape.total_steps == 0):
        lines.append(
            f"trainer.limit_train_batches={cfg.trainer.get('limit_train_batches')}, trainer.max_epochs={cfg.trainer.max_epochs}, "
            f"trainer.max_steps={cfg.trainer.get('max_steps', -1)} leave zero training steps ({shape.batches_per_epoch} batches per epoch)"
        )
    if fit is not None and fit.largest < shape.per_device:
        lines.append(
            f"data.batch_size={shape.global_batch} ({shape.per_device} per device) does not fit in memory here: "
            f"the largest batch that fits is ~{fit.largest} ({fit.describe()})"
        )
    return lines


def is_local(logger: DictConfig) -> bool:
    """Whether a logger writes only files under the run directory (TensorBoard, CSV); W&B and MLflow runs are left alone."""
    return str(logger.get("_target_", "")).endswith(("TensorBoardLogger", "CSVLogger"))


def calibration_config(cfg: DictConfig, shape: Shape) -> DictConfig:
    """`cfg` for one device holding the run's per-device batch, one epoch, local loggers only, validation at that epoch's end."""
    calib = copy.deepcopy(cfg)
    with open_dict(calib):
        calib.data.batch_size = shape.per_device
        calib.trainer.update(devices=1, num_nodes=1, strategy="auto", max_epochs=1, max_steps=-1, check_val_every_n_epoch=1)
        calib.logger = {name: node for name, node in (cfg.get("logger") or {}).items() if node is not None and is_local(node)}
    return calib


def predicted_fit(c: Calibration, shape: Shape) -> float:
    """Seconds of training: a fit's fixed cost, every step, every epoch end, each periodic callback as often as it fires."""
    if shape.total_steps == 0:
        return 0.0
    periodic = sum(seconds * (shape.epochs // every + (1 if shape.epochs % every else 0)) for every, seconds in c.periodic_s.items())
    return c.fixed_s + shape.total_steps * c.step_s + shape.epochs * c.epoch_end_s + shape.val_epochs * c.validation_s + periodic


def table(
    cfg: DictConfig, shape: Shape, parts: dict[str, float], c: Calibration | None, ev: EvaluationEstimate, fit: BatchFit | None, memory: dict[str, int]
) -> list[str]:
    """The plan as lines: what runs, the predicted time and its parts, throughput, memory, the largest batch."""
    total = sum(parts.values())
    lines = [
        f"[plan] {method_name_of(cfg) or '?'} on {class_name(cfg.data)} with {class_name(cfg.backbone)}: "
        f"{shape.epochs} epochs x {shape.steps_per_epoch} steps = {shape.total_steps} steps of {shape.global_batch} "
        f"({shape.devices} device(s) x {shape.per_device})"
    ]
    if c is not None:
        lines.append(
            f"[plan] calibrated here ({evaluation_device().type}, {torch.get_num_threads()} threads): {c.steps} steps after "
            f"{WARMUP} warm-up steps, one epoch end"
        )
    lines.append(f"  predicted wall time        {total:8.0f} s ({total / 60:.1f} min)")
    for name, seconds in parts.items():
        lines.append(f"    {name:<24}{seconds:8.1f} s")
    if c is not None:
        lines.append(
            f"      per step {c.step_s:.3f} s; per epoch end {c.epoch_end_s:.2f} s + validation {c.validation_s:.2f} s"
            + "".join(f" + every {n} epochs {s:.2f} s" for n, s in sorted(c.periodic_s.items()))
        )
    lines.append(f"      evaluation: {ev.what}")
    if c is not None:
        lines.append(f"  images/s                   {c.images_per_s * shape.devices:8.0f}   ({c.images_per_s:.0f} per device)")
    lines += [f"  peak memory ({name}){' ' * max(1, 15 - len(name))}{value / 2**30:8.2f} GiB" for name, value in memory.items()]
    if fit is not None:
        lines.append(f"  largest batch that fits    ~{fit.largest:<7d} per device ({fit.describe()})")
    return lines


def plan(overrides: list[str]) -> int:
    """Compose, calibrate, estimate, print; 1 when something cannot work, else 0."""
    startup = process_age()
    with tempfile.TemporaryDirectory(prefix="ssl_train_plan_") as tmp:
        started = time.perf_counter()
        cfg = compose_run_config(overrides, Path(tmp) / "run")
        validate(cfg)
        calib = calibration_config(cfg, run_shape(cfg, 1 << 62))
        pl.seed_everything(cfg.seed, workers=True, verbose=False)
        built = build(calib)
        initial = evaluated(cfg, built)
        build_s = time.perf_counter() - started
        shape = run_shape(cfg, len(built.datamodule.splits.pretrain_set))  # type: ignore[arg-type]
        calibration = None
        if cfg.pretrain and shape.batches_per_epoch > 0:
            built.trainer.limit_train_batches = min(shape.batches_per_epoch, WARMUP + TIMED)
            calibration = calibrate(built, min(WARMUP, max(0, shape.batches_per_epoch - 1)), shape.per_device)
        memory = {"CPU RSS": peak_rss()}
        device = evaluation_device(built.trainer)
        if device.type == "cuda":
            memory["GPU"] = torch.cuda.max_memory_allocated(device)
        ev = evaluation_estimate(cfg, built, initial, build_evaluators(cfg.eval), device)
        fit = largest_batch(built, shape.per_device, device)
    parts = {
        "start-up, build and exit": startup * (1 + EXIT_SHARE) + build_s,
        "training": predicted_fit(calibration, shape) if calibration else 0.0,
        "evaluation": ev.trained_s + ev.baselines_s,
    }
    for line in table(cfg, shape, parts, calibration, ev, fit, memory):
        print(line)
    refused = refusals(cfg, shape, fit)
    for line in refused:
        print(f"cannot work: {line}")
    return 1 if refused else 0


def main(argv: list[str]) -> int:
    """The `plan` word of `python -m ssl_train`: bad input is one line (ssl_train.cli)."""
    from ssl_train.cli import report_user_errors

    return int(report_user_errors(lambda: plan(argv)))
