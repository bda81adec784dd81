"""Lightning callbacks of ssl_train: throughput, the config inside each checkpoint, exact mid-epoch resume, preemption."""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, cast

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import TQDMProgressBar

from ssl_train.constraints import Count
from ssl_train.data.sampling import ResumableSampler
from ssl_train.errors import UserError
from ssl_train.metrics import PROBE_ONLINE_TOP1, TRAIN_IMAGES_PER_S, TRAIN_LOSS
from ssl_train.run_dir import PREEMPTED, append_line, replace_atomically

# the hooks Lightning calls on every callback at every batch (trainer/call.py `_call_callback_hooks`)
PER_BATCH_HOOKS = (
    "on_train_batch_start",
    "on_train_batch_end",
    "on_before_backward",
    "on_after_backward",
    "on_before_optimizer_step",
    "on_before_zero_grad",
    "on_validation_batch_start",
    "on_validation_batch_end",
    "on_test_batch_start",
    "on_test_batch_end",
    "on_predict_batch_start",
    "on_predict_batch_end",
)


def skip_inherited_batch_hooks(callbacks: Sequence[pl.Callback]) -> int:
    """Unset, on each callback, the per-batch hooks its class inherits unchanged from Callback (empty ones); returns how many.

    Lightning calls every hook on every callback at every batch, each through a profiler context and the callback's
    state_key (~20 Python calls), and skips an attribute that is not callable. With a dozen callbacks, 6 hooks a training
    step of which most are the empty inherited ones, that was ~750 of ssl_train's ~1,800 Python calls per step above a
    bare LightningModule (docs/performance.md). Behaviour is unchanged: only empty hooks are skipped."""
    skipped = 0
    for callback in callbacks:
        for hook in PER_BATCH_HOOKS:
            if getattr(type(callback), hook, None) is getattr(pl.Callback, hook) and hook not in vars(callback):  # not set on the instance
                setattr(callback, hook, None)
                skipped += 1
    return skipped


class ThroughputMeter(pl.Callback):
    """Source images per second over training batches (data loading included, validation excluded), all ranks."""

    def __init__(self) -> None:
        self.images, self.seconds = 0, 0.0
        self._started: float | None = None

    def _start(self) -> None:
        self._started = time.perf_counter()

    def _stop(self) -> None:
        if self._started is not None:
            self.seconds += time.perf_counter() - self._started
            self._started = None

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start()

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._stop()

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.training:
            self._start()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._stop()
        if self.seconds > 0:
            pl_module.log(TRAIN_IMAGES_PER_S, self.images_per_second)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.images += len(batch[1]) * trainer.world_size

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0


class ConfigInCheckpoint(pl.Callback):
    """Store the resolved run config in every checkpoint, so `python -m ssl_train.eval` can rebuild the encoder from the file alone."""

    KEY = "ssl_train_config"

    def __init__(self, config: dict) -> None:
        self.config = config

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        checkpoint[self.KEY] = self.config


def rng_states() -> dict[str, Any]:
    """The global RNG states (python, numpy, torch CPU and CUDA) as tensors and plain values: loadable weights-only."""
    numpy_state = cast(tuple[str, np.ndarray, int, int, float], np.random.get_state())  # the legacy tuple: numpy's global RNG is MT19937
    states: dict[str, Any] = {
        "python": random.getstate(),
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(numpy_state[1].astype(np.int64)),
            "pos": int(numpy_state[2]),
            "has_gauss": int(numpy_state[3]),
            "cached_gaussian": float(numpy_state[4]),
        },
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    random.setstate(tuple(item if not isinstance(item, list) else tuple(item) for item in states["python"]))
    n = states["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


class ResumeState(pl.Callback):
    """What Lightning's checkpoint lacks for a mid-epoch resume to continue bit for bit: the RNG states and how many
    batches of the current epoch were trained (the ResumableSampler then skips them).

    Exact for views made on the device (the default for fixed-size images) — the loader draws no random numbers
    there. Per-sample view pipelines resume at the same image and step with fresh random crops.
    Under DDP the ranks' RNGs stay identical (same seed, same ops), so rank 0's states serve every rank.
    """

    def __init__(self) -> None:
        self.epoch, self.batches_done = 0, 0
        self._restored: dict[str, Any] | None = None

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.epoch, self.batches_done = trainer.current_epoch, batch_idx + 1

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "batches_done": self.batches_done, "rng": rng_states()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._restored = state_dict

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._restored is None:
            return
        sampler = getattr(trainer.train_dataloader, "sampler", None)
        if isinstance(sampler, ResumableSampler):
            sampler.resume_at(self._restored["epoch"], self._restored["batches_done"])
        set_rng_states(self._restored["rng"])
        self._restored = None


class Preempted(UserError):
    """The run stopped on a preemption signal after saving last.ckpt; exit code 75 (EX_TEMPFAIL: retry)."""

    exit_code = 75


class Preemption(pl.Callback):
    """On SIGTERM / SIGUSR1 / SIGUSR2 (what SLURM and submitit send before preempting or at the time limit): finish the
    current batch (after an epoch's last batch: also its validation and epoch-end checkpoints), write `checkpoint_path`
    atomically, mark the run directory, and stop with exit code 75.

    A later run in the same directory with ckpt_path unset resumes from that checkpoint (a requeued SLURM job does).
    A handler already installed for the signal (submitit's requeue, or Lightning's own SLURM requeue on SIGUSR1) is
    called after the checkpoint is written; otherwise, inside a SLURM job, SIGUSR1 requeues with `scontrol requeue`.
    """

    MARKER = PREEMPTED  # run_dir.resume_point resumes a run directory holding it

    def __init__(self, checkpoint_path: str, signals: tuple[str, ...] = ("SIGTERM", "SIGUSR1", "SIGUSR2")) -> None:
        unknown = [name for name in signals if not hasattr(signal, str(name))]
        if unknown:
            raise UserError(f"callbacks.preemption.signals: unknown signal(s) {unknown}; use names like SIGTERM, SIGUSR1")
        self.checkpoint_path = Path(checkpoint_path)
        self.signals = [getattr(signal, str(name)) for name in signals]
        self.received: int | None = None
        self._previous: dict[int, Any] = {}  # the handlers before ours: chained for requeue, put back when training ends

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # after Lightning's signal connector has registered (and saved the true originals, which it puts back at its
        # teardown on every path); Lightning's own SIGTERM handler would stop at the epoch end with exit code 0
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in self.signals:
            self._previous[signum] = signal.signal(signum, self._note)

    def _note(self, signum: int, frame: Any) -> None:
        self.received = signum  # acted on at the end of the current batch: never a checkpoint of a half-done step

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        # Under DDP the ranks agree through an all-reduce, which blocks the host on the GPU: only at logging steps (a
        # signal waits at most log_every_n_steps batches). One process reads its own flag after every batch (no sync)
        agreeing = trainer.world_size > 1 and trainer.global_step % max(1, trainer.log_every_n_steps) != 0  # type: ignore[attr-defined]  # set outside Trainer.__init__
        if batch_idx + 1 < trainer.num_training_batches and not agreeing:  # after an epoch's last batch come its validation and
            self._stop_if_signalled(trainer, pl_module)  # checkpoints: a signal then is acted on once they are written (below)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Lightning calls the ModelCheckpoints' epoch-end hooks after this one: ask it to stop once they (and the epoch's
        # scheduler step) are done, and write ours at train end. Not at the next epoch's start: a checkpoint written
        # there resumes as if that epoch were done (Lightning 2.6 trains 0 batches)
        if self._signal(trainer, pl_module) is not None:
            trainer.should_stop = True

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._stop_if_signalled(trainer, pl_module)  # signalled at an epoch's end or in the last epoch: stop before the probe
        self._restore_handlers()

    def _signal(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> int | None:
        """The signal received on any rank (all ranks agree, so they save and stop together), or None."""
        received = self.received
        if trainer.world_size > 1:
            flag = torch.tensor([0 if received is None else int(received)], device=pl_module.device)
            received = int(trainer.strategy.reduce(flag, reduce_op="max").item()) or None
        return received

    def _stop_if_signalled(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        received = self._signal(trainer, pl_module)
        if received is None:
            return
        trainer.save_checkpoint(self.checkpoint_path)
        name = signal.Signals(received).name
        if trainer.is_global_zero:
            run_dir = self.checkpoint_path.parent.parent
            replace_atomically(run_dir / self.MARKER, json.dumps({"signal": name, "step": trainer.global_step, "checkpoint": str(self.checkpoint_path)}))
            append_line(run_dir / "preemptions.jsonl", json.dumps({"signal": name, "step": trainer.global_step, "time": time.time()}))
            self._requeue(received)  # the handlers are put back by on_exception once Preempted below reaches Lightning
        raise Preempted(
            f"{name} received: stopped at step {trainer.global_step} after writing {self.checkpoint_path}; "
            "rerun the same command in the same run directory (or with ckpt_path=<that file>) to resume"
        )

    def _requeue(self, signum: int) -> None:
        previous = self._previous.get(signum)
        if callable(previous):
            previous(signum, None)  # e.g. submitit's requeue handler
        elif signum == signal.SIGUSR1 and os.environ.get("SLURM_JOB_ID"):
            job = os.environ.get("SLURM_ARRAY_JOB_ID") and f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
            subprocess.call(["scontrol", "requeue", job or os.environ["SLURM_JOB_ID"]])

    @contextlib.contextmanager
    def stopping_evaluation(self) -> Iterator[None]:
        """Around the evaluation after training: one of the signals stops it at once (nothing to save) with one line and exit
        code 75, after the handler it displaces (a requeue); finished training is marked done, so the rerun only evaluates."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def stop(signum: int, frame: Any) -> None:
            self._requeue(signum)
            raise Preempted(
                f"{signal.Signals(signum).name} received during the evaluation, before metrics.json was written; rerun the same "
                "command in the same run directory to evaluate again (a training that finished is not repeated)"
            )

        self._previous = {signum: signal.signal(signum, stop) for signum in self.signals}
        try:
            yield
        finally:
            self._restore_handlers()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._restore_handlers()

    def _restore_handlers(self) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
        self._previous = {}


class StepProgressBar(TQDMProgressBar):
    """Lightning's TQDM bar showing the step metrics `shown`, read from callback_metrics when the bar refreshes (every
    `refresh_rate` steps), where SSLModule publishes them at logging steps. Lightning turns every `prog_bar=True` value
    into a Python number after every batch, which would make the host wait for the GPU at each step."""

    def __init__(self, refresh_rate: Count = 10, shown: Sequence[str] = (TRAIN_LOSS, PROBE_ONLINE_TOP1)) -> None:
        super().__init__(refresh_rate=refresh_rate)
        self.shown = tuple(shown)

    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, int | str | float | dict[str, float]]:
        items = super().get_metrics(trainer, pl_module)
        for key in self.shown:
            value = trainer.callback_metrics.get(key)
            if value is not None:
                items[key] = f"{float(value):.3g}"
        return items
