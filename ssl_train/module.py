"""SSLModule: the one LightningModule; optimisation, logging and the online probe, no method-specific logic."""

from __future__ import annotations

import math
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info
from torch import nn

from ssl_train.eval.baselines import weights_fingerprint
from ssl_train.metrics import DATA_SKIPPED_IMAGES, PROBE_ONLINE_LOSS, PROBE_ONLINE_TOP1, TRAIN_LOSS, TRAIN_PREFIX, VAL_ONLINE_TOP1
from ssl_train.optim import OptimRecipe
from ssl_train.protocols import CountsSkippedImages, EditsGradients, UpdatesAfterOptimizerStep, is_method, width_of

INITIAL_BACKBONE_KEY = "ssl_train_initial_backbone"  # checkpoint key: the fingerprint of the encoder's weights before training


def online_probe_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the labelled rows; unlabeled pretraining data carries label -1 and counts for nothing.

    One fused op with `ignore_index` and fixed shapes (no boolean mask, so no host-device sync); 0 for a batch without
    labels; any negative label counts as unlabelled. 5 fewer ATen ops per step, forward and backward, than the per-row
    weights it replaced (docs/performance.md)."""
    unlabelled_as_minus_one = labels.clamp_min(-1)
    return F.cross_entropy(logits, unlabelled_as_minus_one, ignore_index=-1, reduction="sum") / (labels >= 0).sum().clamp_min(1)


def publish_step_values(trainer: pl.Trainer, values: dict[str, torch.Tensor | float]) -> None:
    """A logging step's values to `trainer.callback_metrics` (where the progress bar, history and alarm read them)
    and to the loggers with Lightning's step and `epoch` keys, with one host copy for all of them: `self.log` keeps a
    result record per key, ~1,600 Python calls a key at each logging step (docs/performance.md).

    Called from training_step, so a step that then fails (a non-finite loss found at its end, a preemption) has its
    values written already, as MetricHistory always had; and no row repeats the last values at a step where a callback
    set `trainer.should_stop`, as Lightning's cached ones did."""
    tensors = {key: value for key, value in values.items() if isinstance(value, torch.Tensor)}
    copied: dict[str, float] = {}
    if tensors:
        device = next(iter(tensors.values())).device
        stacked = torch.stack([v.detach().to(device, torch.float32).reshape(()) for v in tensors.values()])
        copied = dict(zip(tensors, stacked.tolist(), strict=True))  # the one host copy
    on_host = {key: torch.tensor(copied[key] if key in copied else float(value)) for key, value in values.items()}
    trainer.callback_metrics.update(on_host)
    trainer._logger_connector.log_metrics(on_host)  # Lightning's own step and epoch keys


class SSLModule(pl.LightningModule):
    """Train `method` (forward(views, labels) -> {"loss", "features", "logs"}) with `optim`.

    An online linear probe on detached backbone features (logged as probe/online_top1, and val/online_top1 on
    the test split) tracks progress; it is its own param group with a constant LR and no weight decay, so it
    never touches the encoder. Methods with an `on_optimizer_step(step, max_steps)` hook (EMA targets) get it
    after every optimizer step; an `on_after_backward(step, epoch)` hook (SwAV's frozen prototypes, DINO's frozen last layer) after each backward.
    """

    method: Any  # a Method (protocols.is_method), its optional hooks decided in __init__

    def __init__(
        self,
        method: nn.Module,
        optim: OptimRecipe,
        num_classes: int,
        global_batch_size: int,
        channels_last: bool = False,
        batched_views: nn.Module | None = None,
    ) -> None:
        super().__init__()
        if not is_method(method):
            raise TypeError(f"{type(method).__name__} is not a method: it needs backbone, projector and forward(views, labels) -> dict")
        self.method, self.optim, self.channels_last = method, optim, channels_last
        # which optional hooks the method has, decided once (a Protocol isinstance check walks its members)
        self._has_optimizer_step_hook = isinstance(method, UpdatesAfterOptimizerStep)
        self._has_after_backward_hook = isinstance(method, EditsGradients)
        # stored in every checkpoint: an evaluation that rebuilds the initial encoder checks it has these very weights
        self.initial_backbone: str | None = weights_fingerprint(self.method.backbone)
        if channels_last:
            self.method.to(memory_format=torch.channels_last)
        self.online_probe = nn.Linear(width_of(self.method.backbone), num_classes)
        self.global_batch_size = global_batch_size
        self._step_before_batch = 0
        self._recent_losses: torch.Tensor | None = None  # see _watch_finite
        self._recent_steps: list[int] = []
        self._batches_watched = 0
        self.batched_views = batched_views  # makes training views from raw uint8 batches on the device (batched augmentation)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        if self.batched_views is not None and self.trainer.training:
            images, labels = batch
            return self.batched_views(images), labels
        return batch

    def configure_optimizers(self) -> Any:
        total_steps = int(self.trainer.estimated_stepping_batches)
        steps_per_epoch = max(1, total_steps // max(1, self.trainer.max_epochs or 1))
        images_per_step = self.global_batch_size * self.trainer.accumulate_grad_batches  # what one optimizer step sees
        optimizer, scheduler, lr = self.optim.build(
            self.method,
            self.online_probe_param_groups(),
            images_per_step,
            steps_per_epoch,
            total_steps,
        )
        per_device = self.global_batch_size // max(1, self.trainer.world_size)
        rank_zero_info(
            f"[ssl_train] global batch {self.global_batch_size} = {self.trainer.world_size} device(s) x {per_device} per device "
            f"(x{self.trainer.accumulate_grad_batches} accumulation: {images_per_step} images/step); "
            f"base lr {self.optim.base_lr:g} with '{self.optim.lr_scaling}' scaling -> effective lr {lr:g}; {total_steps} optimizer steps"
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def online_probe_param_groups(self) -> list[dict[str, Any]]:
        """The online probe's own param group (its constant lr, no weight decay), beside the method's in one optimizer."""
        return [{"params": list(self.online_probe.parameters()), "lr": self.optim.online_probe_lr}]

    def training_step(self, batch: tuple[list[torch.Tensor], torch.Tensor], batch_idx: int) -> torch.Tensor:
        views, labels = batch
        if self.channels_last:
            views = [v.contiguous(memory_format=torch.channels_last) if v.ndim == 4 else v for v in views]  # images only (not caption tokens)
        out = self.method(views, labels)
        self._watch_finite(out["loss"])
        logits = self.online_probe(out["features"].detach().float())
        probe_loss = online_probe_loss(logits, labels)
        if self._logging_step():  # step values reach loggers, history and the progress bar only at logging steps
            with torch.no_grad():  # label -1 never equals an argmax: unlabeled rows count as neither right nor labelled
                top1 = (logits.argmax(1) == labels).sum() / (labels >= 0).sum().clamp_min(1)
            step_values = {
                TRAIN_LOSS: out["loss"],
                PROBE_ONLINE_LOSS: probe_loss,
                PROBE_ONLINE_TOP1: top1,
                **{f"{TRAIN_PREFIX}{key}": value for key, value in out.get("logs", {}).items()},
            }
            publish_step_values(self.trainer, step_values)
        return out["loss"] + probe_loss

    def _logging_step(self) -> bool:
        """Whether this batch's values go to the loggers: every trainer.log_every_n_steps optimizer steps, on the last
        batch of an accumulation window (where Lightning logs). Logging only where the values are read took the
        framework's own cost per tiny-model step from 2.65 to ~1.5 ms; train/* and probe/* are step values."""
        trainer = self.trainer
        logging = bool(trainer._logger_connector.should_update_logs) or bool(trainer.fast_dev_run)  # type: ignore[attr-defined]  # set outside Trainer.__init__ (lightning's connectors): invisible to mypy
        return logging and not trainer.fit_loop._should_accumulate()

    def _watch_finite(self, loss: torch.Tensor) -> None:
        """Keep the loss of each step since the last check on the device (one copy, no sync); `check_finite` reads them
        only at logging steps and before every checkpoint, so no checkpoint holds diverged weights and no step blocks."""
        if self._recent_losses is None or self._recent_losses.device != loss.device:
            # one slot per batch between two checks: log_every_n_steps optimizer steps, each of accumulate_grad_batches batches
            batches = max(1, self.trainer.log_every_n_steps) * max(1, self.trainer.accumulate_grad_batches)  # type: ignore[attr-defined]  # set outside Trainer.__init__ (lightning's connectors): invisible to mypy
            self._recent_losses = torch.zeros(batches, device=loss.device)
            self._recent_steps = [-1] * batches  # the step each slot holds (host side: no sync)
            self._batches_watched = 0
        slot = self._batches_watched % len(self._recent_losses)  # per batch, not per step: micro-batches never share a slot
        self._batches_watched += 1
        self._recent_losses[slot] = loss.detach()
        self._recent_steps[slot] = self.global_step

    def check_finite(self) -> None:
        """Stop with FloatingPointError naming the first non-finite step and loss (run.fit keeps the last good checkpoint)."""
        if self._recent_losses is None or bool(torch.isfinite(self._recent_losses).all()):
            return
        values = self._recent_losses.tolist()
        step, value = min((s, v) for s, v in zip(self._recent_steps, values, strict=True) if s >= 0 and not math.isfinite(v))
        raise FloatingPointError(f"train/loss is {value} at step {step}")

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        self._step_before_batch = self.global_step

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        # only after a batch that ended with an optimizer step: never before the first one under gradient accumulation,
        # never again for a step restored from a checkpoint
        if self._has_optimizer_step_hook and self.global_step > self._step_before_batch:
            self.method.on_optimizer_step(self.global_step, int(self.trainer.estimated_stepping_batches))
        # at logging steps, and at an epoch's last batch: before the epoch-end callbacks (online evaluation) see the weights
        every = self.trainer.log_every_n_steps  # type: ignore[attr-defined]  # set outside Trainer.__init__ (lightning's connectors): invisible to mypy
        if self.global_step % max(1, every) == 0 or batch_idx + 1 == self.trainer.num_training_batches:
            self.check_finite()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.check_finite()  # never a checkpoint of diverged weights
        if self.initial_backbone is not None:
            checkpoint[INITIAL_BACKBONE_KEY] = self.initial_backbone

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # a resumed run keeps its first start's fingerprint; from a checkpoint without one (older), it is unknown
        stored = checkpoint.get(INITIAL_BACKBONE_KEY)
        self.initial_backbone = stored if isinstance(stored, str) else None

    def on_train_end(self) -> None:
        self.check_finite()

    def on_train_epoch_end(self) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        if isinstance(datamodule, CountsSkippedImages):
            self.log(DATA_SKIPPED_IMAGES, float(datamodule.skipped_images()))

    def on_after_backward(self) -> None:
        if self._has_after_backward_hook:
            self.method.on_after_backward(self.global_step, self.current_epoch)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        images, labels = batch
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        logits = self.online_probe(self.method.backbone(images).float())
        self.log(VAL_ONLINE_TOP1, (logits.argmax(1) == labels).float().mean(), prog_bar=True, batch_size=labels.shape[0], sync_dist=True)
