"""A run's training step: fit from its resume point (the failures a long run meets as one line), or load the weights of
training that already finished in its directory; returns what training measured, as metrics.json keeps it."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl

from ssl_train.checkpoint_io import first_line, read_checkpoint, state_dict_mismatch
from ssl_train.errors import UserError
from ssl_train.metrics import FIT_TIME_S, LOGGED_DURING_TRAINING, STEPS
from ssl_train.run_dir import PREEMPTED, TRAINING_DONE, ResumePoint, mark_training_done


def load_trained_weights(module: pl.LightningModule, record: dict[str, Any], trust: bool) -> None:
    """The weights of the checkpoint whose training finished (run_dir.finished_training) into `module`, in place of fit."""
    checkpoint = read_checkpoint(record["checkpoint"], trust=trust)
    if checkpoint.get("global_step") != record.get("step"):
        raise UserError(
            f"{record['checkpoint']} holds step {checkpoint.get('global_step')}, not the final step {record.get('step')} training "
            f"ended at: remove {TRAINING_DONE} in its run directory to train again there"
        )
    try:
        module.load_state_dict(checkpoint["state_dict"])
    except RuntimeError as error:
        raise UserError(
            f"{record['checkpoint']}: its weights do not fit this run's model ({state_dict_mismatch(error)}): rerun with the config it was trained with"
        ) from None


def fit(trainer: pl.Trainer, module: pl.LightningModule, datamodule: pl.LightningDataModule, ckpt_path: str | None, output_dir: Path) -> None:
    """trainer.fit, with the failures a long run meets turned into one line that says the last checkpoint is kept."""
    kept = f"the last good checkpoint is kept in {output_dir / 'checkpoints'}"
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    except FloatingPointError as error:
        raise UserError(f"{error}: training stopped; {kept}. Lower optim.optimizer.lr, raise optim.warmup_epochs or set trainer.gradient_clip_val") from error
    except RuntimeError as error:
        message = str(error)
        if "DataLoader worker" in message:
            raise UserError(f"a data loader worker died ({first_line(error)}); {kept}. data.num_workers=0 shows the cause in-process") from None
        if "Error(s) in loading state_dict" in message:
            raise UserError(
                f"ckpt_path {ckpt_path}: its weights do not fit this run's model ({state_dict_mismatch(error)}): "
                "resume with the config the checkpoint was trained with"
            ) from None
        raise
    except ValueError as error:
        if "parameter group" in str(error):  # torch's Optimizer.load_state_dict: other groups than this run's optimizer
            raise UserError(
                f"ckpt_path {ckpt_path}: its optimizer state has other parameter groups than this run's ({first_line(error)}; a changed "
                "optim setting such as optim.layer_decay or optim.no_decay_names): resume with the config the checkpoint was trained with"
            ) from None
        raise


def logged_during_training(trainer: pl.Trainer) -> dict[str, float]:
    """The last value of each scalar logged during training that metrics.json keeps (train_images_per_s, online_knn_top1, ...)."""
    logged = trainer.callback_metrics
    return {key: round(float(logged[name]), 6) for name, key in LOGGED_DURING_TRAINING.items() if name in logged}


def train(built: Any, resume: ResumePoint, output_dir: Path, pretrain: bool, trust: bool) -> dict[str, Any]:
    """Fit `built` from `resume` and mark the directory's training done (so a rerun stopped in the evaluation only
    evaluates); or, when training finished here earlier, load its weights. {} when pretrain is off."""
    if resume.done:  # trained to the end by an earlier run in this directory, stopped during its evaluation: evaluate its weights
        load_trained_weights(built.module, resume.done, trust)
        return dict(resume.done.get("metrics", {}))
    if not pretrain:
        return {}
    trainer, started = built.trainer, time.time()
    fit(trainer, built.module, built.datamodule, resume.checkpoint, output_dir)
    training = {STEPS: trainer.global_step, FIT_TIME_S: round(time.time() - started, 2), **logged_during_training(trainer)}
    if trainer.is_global_zero:
        mark_training_done(trainer, output_dir, training)
    (output_dir / PREEMPTED).unlink(missing_ok=True)
    return training
