"""run(cfg): seed, build, pretrain, linear-probe, write metrics.json. Callable from tests without the CLI."""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from omegaconf import DictConfig, OmegaConf

from ssl_train.build import build, build_evaluators, group_choice
from ssl_train.callbacks import Preemption, rng_states, set_rng_states
from ssl_train.checkpoint_io import first_line, read_checkpoint, state_dict_mismatch
from ssl_train.errors import UserError
from ssl_train.eval.baselines import ResultCache, prefixed_scores, protocol_key, raw_input_baseline, weights_fingerprint, with_baselines
from ssl_train.eval.suite import evaluate_encoder
from ssl_train.eval.zero_shot import evaluate_two_tower, two_tower_evaluators
from ssl_train.modalities import modality
from ssl_train.run_dir import (
    TRAINING_DONE,
    claim_output_dir,
    exclusive_run_dir,
    finished_training,
    mark_training_done,
    save_hydra_files,
    save_resolved_config,
    write_new,
)
from ssl_train.tracking.report import write_report
from ssl_train.tracking.trackers import RESUMABLE, abandon_trackers, command_line, git_commit, log_run_end, log_run_start, stored_tracker_runs
from ssl_train.validate import validate

log = logging.getLogger(__name__)
LOGGED_DURING_TRAINING = {  # logged name -> metrics.json key
    "train/images_per_s": "train_images_per_s",  # ThroughputMeter: source images/s over training batches
    "val/online_top1": "online_probe_top1", "val/knn_top1": "online_knn_top1", "val/alignment": "online_alignment",
    "val/uniformity": "online_uniformity", "val/rankme": "online_rankme", "val/lidar": "online_lidar", "val/embedding_std": "online_embedding_std",
}


def component_name(group: str, node: DictConfig) -> str:
    """The option chosen for `group` (e.g. 'small_resnet'); outside a Hydra app (tests, the Python API) the class it builds."""
    chosen = group_choice(group)
    if chosen != "?":
        return chosen
    target = node.get("source", node).get("_target_", "?") if isinstance(node, DictConfig) else "?"
    return str(target).rsplit(".", 1)[-1]


def probe_device(trainer: pl.Trainer) -> torch.device:
    """Where the offline probe extracts features: the GPU when training used one, else the CPU."""
    return torch.device("cuda") if trainer.accelerator.__class__.__name__ == "CUDAAccelerator" else torch.device("cpu")


def preempted_checkpoint(output_dir: Path) -> str | None:
    """last.ckpt of a run in this very directory that stopped on a preemption signal (a requeued job resumes it)."""
    marker, last = output_dir / Preemption.MARKER, output_dir / "checkpoints" / "last.ckpt"
    return str(last) if marker.is_file() and last.is_file() else None


def load_trained_weights(module: pl.LightningModule, record: dict[str, Any], trust: bool) -> None:
    """The weights of the checkpoint whose training finished (finished_training) into `module`, in place of fit."""
    checkpoint = read_checkpoint(record["checkpoint"], trust=trust)
    if checkpoint.get("global_step") != record.get("step"):
        raise UserError(f"{record['checkpoint']} holds step {checkpoint.get('global_step')}, not the final step {record.get('step')} training "
                        f"ended at: remove {TRAINING_DONE} in its run directory to train again there")
    try:
        module.load_state_dict(checkpoint["state_dict"])
    except RuntimeError as error:
        raise UserError(f"{record['checkpoint']}: its weights do not fit this run's model ({state_dict_mismatch(error)}): "
                        "rerun with the config it was trained with") from None


def resolve_ckpt_path(ckpt_path: str | None, runs_dir: Path, output_dir: Path) -> str | None:
    """`last` means the newest checkpoints/last.ckpt of an earlier run under runs_dir; a path must exist."""
    if ckpt_path is None:
        return None
    if ckpt_path == "last":
        candidates = [p for p in runs_dir.glob("**/checkpoints/last.ckpt") if output_dir not in p.parents]
        if not candidates:
            raise UserError(f"ckpt_path=last: no checkpoints/last.ckpt under {runs_dir.resolve()} (paths.runs_dir) to resume from")
        newest = max(candidates, key=lambda p: p.stat().st_mtime)
        log.info("ckpt_path=last resolves to %s", newest)
        return str(newest)
    if not Path(ckpt_path).expanduser().is_file():
        raise UserError(f"ckpt_path: no checkpoint at {ckpt_path}")
    return str(Path(ckpt_path).expanduser())


def fit(trainer: pl.Trainer, module: pl.LightningModule, datamodule: pl.LightningDataModule, ckpt_path: str | None, output_dir: Path) -> None:
    """trainer.fit, with the failures a long run meets turned into one line that says the last checkpoint is kept."""
    kept = f"the last good checkpoint is kept in {output_dir / 'checkpoints'}"
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    except FloatingPointError as error:
        raise UserError(
            f"{error}: training stopped; {kept}. Lower optim.optimizer.lr, raise optim.warmup_epochs or set trainer.gradient_clip_val"
        ) from error
    except RuntimeError as error:
        message = str(error)
        if "DataLoader worker" in message:
            raise UserError(f"a data loader worker died ({first_line(error)}); {kept}. data.num_workers=0 shows the cause in-process") from None
        if "Error(s) in loading state_dict" in message:
            raise UserError(f"ckpt_path {ckpt_path}: its weights do not fit this run's model ({state_dict_mismatch(error)}): "
                            "resume with the config the checkpoint was trained with") from None
        raise


def hydra_overrides() -> list[str] | None:
    """The command-line overrides of this Hydra run (None outside a Hydra app: tests, the Python API)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        return list(HydraConfig.get().overrides.task)
    except ValueError:
        return None


def checkpoint_to_resume(cfg: DictConfig, output_dir: Path) -> str | None:
    """ckpt_path resolved (`last` or a file), else the checkpoint of a preempted run in this directory; None: a fresh start."""
    if not cfg.pretrain:
        return None
    ckpt_path = resolve_ckpt_path(cfg.ckpt_path, Path(cfg.paths.runs_dir), output_dir)
    if ckpt_path is None and (ckpt_path := preempted_checkpoint(output_dir)):
        log.info("resuming the preempted run in %s from %s", output_dir, ckpt_path)
    return ckpt_path


def tracker_runs_to_continue(cfg: DictConfig, ckpt_path: str | None) -> dict[str, str]:
    """The W&B / MLflow run ids stored in the checkpoint being resumed, when this run logs to such a tracker."""
    resumable = any(node is not None and node.get("_target_") in RESUMABLE for node in (cfg.get("logger") or {}).values())
    return stored_tracker_runs(read_checkpoint(ckpt_path, trust=bool(cfg.get("trust_checkpoint", False)))) if ckpt_path and resumable else {}


def run(cfg: DictConfig) -> dict[str, Any]:
    """Pretrain the configured method, then linear-probe its encoder; returns (and writes) the metrics."""
    validate(cfg)  # before anything is created on disk
    output_dir = Path(cfg.paths.output_dir)
    metrics_path = claim_output_dir(output_dir)
    with exclusive_run_dir(output_dir):
        save_hydra_files(cfg, output_dir)  # Hydra's .hydra/*.yaml, only now that the directory is ours (hydra.output_subdir: null)
        return _run(cfg, output_dir, metrics_path)


def _run(cfg: DictConfig, output_dir: Path, metrics_path: Path) -> dict[str, Any]:
    started = time.time()
    config_path = save_resolved_config(cfg, output_dir)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    done = finished_training(output_dir) if cfg.pretrain else None
    ckpt_path = done["checkpoint"] if done else checkpoint_to_resume(cfg, output_dir)
    built = build(cfg, tracker_runs_to_continue(cfg, ckpt_path))
    try:
        return _train_and_evaluate(cfg, built, ckpt_path, done, output_dir, metrics_path, config_path, started)
    except BaseException as error:
        abandon_trackers(built.trainer.loggers, getattr(error, "exit_code", 1))
        raise


def _train_and_evaluate(cfg: DictConfig, built: Any, ckpt_path: str | None, done: dict[str, Any] | None, output_dir: Path, metrics_path: Path,
                        config_path: Path, started: float) -> dict[str, Any]:
    trainer, datamodule = built.trainer, built.datamodule
    if trainer.is_global_zero:
        log_run_start(trainer.loggers, OmegaConf.to_container(cfg, resolve=True), git_commit(), command_line(hydra_overrides()),
                      [config_path], resumed_from=ckpt_path)
    metrics: dict[str, Any] = {
        "method": cfg.method.get("name", group_choice("method")),
        "backbone": component_name("backbone", cfg.backbone), "data": component_name("data", cfg.data),
        "seed": cfg.seed, "epochs": cfg.trainer.max_epochs, "global_batch_size": datamodule.batch_size,
        "effective_lr": built.module.optim.effective_lr(datamodule.batch_size * cfg.trainer.accumulate_grad_batches), "output_dir": str(output_dir),
        "eval_split": "validation" if cfg.data.get("validation_fraction") else "test", "modality": datamodule.splits.modality,
    }
    if cfg.backbone.get("weights"):  # the random_init_* baseline is then these weights, before this run's training
        metrics["initial_weights"] = str(cfg.backbone.weights)
    evaluators = build_evaluators(cfg.eval) if cfg.probe else {}
    pair_evaluators = two_tower_evaluators(evaluators)  # zero-shot, retrieval: they read the whole image-text model
    evaluators = {name: e for name, e in evaluators.items() if name not in pair_evaluators}
    splits = datamodule.splits

    def evaluate_pairs(model: torch.nn.Module) -> dict[str, float]:
        return evaluate_two_tower(model, datamodule.test_pairs(), splits.tokenizer, splits.class_names or (), pair_evaluators, probe_device(trainer),
                                  datamodule.eval_batch_size) if pair_evaluators else {}

    def evaluate(encoder: torch.nn.Module, chosen: dict[str, Any]) -> dict[str, float]:
        return evaluate_encoder(encoder, *datamodule.probe_datasets(), splits.num_classes, chosen, probe_device(trainer), datamodule.eval_batch_size)

    def features_of(backbone: torch.nn.Module) -> torch.nn.Module:
        return torch.nn.Sequential(backbone, built.method.projector) if cfg.get("eval_features", "backbone") == "projector" else backbone

    training_rng = rng_states()  # the baselines below, computed or read from the cache, must not move the training's random stream
    if evaluators and cfg.baseline and trainer.is_global_zero:
        cache = ResultCache(cfg.paths.get("cache_dir"))
        data_cfg, eval_cfg = OmegaConf.to_container(cfg.data, resolve=True), OmegaConf.to_container(cfg.eval, resolve=True)
        raw = raw_input_baseline(cache, data_cfg, eval_cfg, evaluators, evaluate, splits.modality)
        metrics.update(prefixed_scores("raw_input", raw))
        # The very same initial weights the method starts from: the fair "random-init encoder" baseline.
        initial = features_of(copy.deepcopy(built.backbone))
        # keyed by the architecture as well as the weights: a different pooling reads the same weights differently
        key = {**protocol_key(data_cfg, eval_cfg), "backbone": OmegaConf.to_container(cfg.backbone, resolve=True),
               "eval_features": cfg.get("eval_features", "backbone"), "weights": weights_fingerprint(initial)}
        baseline = cache.get_or_compute("random_init", key, lambda: evaluate(initial, evaluators))
        metrics.update(prefixed_scores("random_init", baseline))
        log.info("raw input: %s; random-init encoder: %s", *(", ".join(f"{k} {v:.4f}" for k, v in r.items() if "top1" in k) for r in (raw, baseline)))
    if pair_evaluators and cfg.baseline and trainer.is_global_zero:  # the untrained towers: what zero-shot and retrieval start from
        metrics.update({f"random_init_{k}": v for k, v in evaluate_pairs(copy.deepcopy(built.method)).items()})
    set_rng_states(training_rng)
    if done:  # trained to the end by an earlier run in this directory, stopped during its evaluation: evaluate its weights
        load_trained_weights(built.module, done, bool(cfg.get("trust_checkpoint", False)))
        metrics.update(done.get("metrics", {}))
    elif cfg.pretrain:
        fit_started = time.time()
        fit(trainer, built.module, datamodule, ckpt_path, output_dir)
        training = {"steps": trainer.global_step, "fit_time_s": round(time.time() - fit_started, 2)}
        for logged, key in LOGGED_DURING_TRAINING.items():  # last values logged during training
            if logged in trainer.callback_metrics:
                training[key] = round(float(trainer.callback_metrics[logged]), 6)
        metrics.update(training)
        if trainer.is_global_zero:
            mark_training_done(trainer, output_dir, training)
        (output_dir / Preemption.MARKER).unlink(missing_ok=True)
    preemption = next((c for c in trainer.callbacks if isinstance(c, Preemption)), None)
    with preemption.stopping_evaluation() if preemption and trainer.is_global_zero else contextlib.nullcontext():
        if trainer.is_global_zero:
            metrics.update(evaluate_pairs(built.method))
        if evaluators and trainer.is_global_zero:
            metrics.update(evaluate(features_of(built.backbone), evaluators))
            if metrics.get("repr_collapsed"):
                log.warning("the trained encoder looks collapsed (repr_embedding_std %.2e): check the method's settings", metrics["repr_embedding_std"])
    metrics["skipped_images"] = datamodule.skipped_images()
    metrics["wall_time_s"] = round(time.time() - started, 2)
    if trainer.is_global_zero:
        metrics_path = write_new(metrics_path, json.dumps(metrics, indent=2) + "\n")  # never through a symlink put there meanwhile
        (output_dir / TRAINING_DONE).unlink(missing_ok=True)
        report_path = write_report(output_dir)
        log_run_end(trainer.loggers, metrics, metrics.get("steps", trainer.global_step), [metrics_path, report_path])
        raw_name = modality(splits.modality).raw_input_name
        summary = with_baselines(f"linear probe top-1 {metrics['linear_top1']:.4f}", metrics, raw_name) if "linear_top1" in metrics else "no probe"
        if "knn_k20_top1" in metrics:
            summary += f", kNN top-1 {metrics['knn_k20_top1']:.4f}"
        if "zero_shot_top1" in metrics:
            baseline = f", random-init {metrics['random_init_zero_shot_top1']:.4f}" if "random_init_zero_shot_top1" in metrics else ""
            summary += f", zero-shot top-1 {metrics['zero_shot_top1']:.4f} (chance {metrics['zero_shot_chance']:.4f}{baseline})"
        print(f"[ssl_train] {metrics['method']}: {summary}; wall time {metrics['wall_time_s']:.0f}s; results in {metrics_path} (report: {report_path})")
    return metrics
