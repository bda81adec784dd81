"""Faults a cluster produces: preemption signals, a full disk, a dead loader worker, two runs in one directory, NaN."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ssl_train import checkpoint_io
from ssl_train.callbacks import Preempted
from ssl_train.data.datamodule import TransformedDataset
from ssl_train.errors import UserError
from ssl_train.losses import NTXentLoss
from ssl_train.module import SSLModule
from ssl_train.run import run
from ssl_train.run_dir import exclusive_run_dir
from tests.fixtures import TINY_DATA, TINY_MODEL, TINY_RUN, compose_config

QUIET = ["probe=false", "baseline=false"]
TWO_EPOCHS = [*QUIET, "trainer.max_epochs=2", "trainer.limit_train_batches=3"]  # 6 steps; views made on the device (default)


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]


def checkpoint_names(run_dir: Path) -> list[str]:
    return sorted(p.name for p in (run_dir / "checkpoints").iterdir())


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)


def test_sigterm_mid_epoch_saves_at_once_and_the_rerun_ends_at_the_uninterrupted_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    handler_before = signal.getsignal(signal.SIGTERM)
    full = run(compose_config(TWO_EPOCHS, tmp_path / "full"))
    assert signal.getsignal(signal.SIGTERM) == handler_before  # a finished run leaves no handler behind
    original = SSLModule.training_step

    def signalled_at_step_4(self, batch, batch_idx):  # same signature as the real training_step
        if self.global_step == 4:
            os.kill(os.getpid(), signal.SIGTERM)  # a real signal, delivered to this process mid-epoch 2
        return original(self, batch, batch_idx)

    with monkeypatch.context() as patch:
        patch.setattr(SSLModule, "training_step", signalled_at_step_4)
        with pytest.raises(Preempted, match=r"SIGTERM received: stopped at step 5 after writing .*last.ckpt") as caught:
            run(compose_config(TWO_EPOCHS, tmp_path / "job"))
    assert caught.value.exit_code == 75
    assert signal.getsignal(signal.SIGTERM) == handler_before  # the preemption handler is gone once the run stopped
    assert torch.load(tmp_path / "job" / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 5  # not the epoch-1 file
    assert (tmp_path / "job" / ".preempted").is_file() and not (tmp_path / "job" / "metrics.json").exists()
    resumed = run(compose_config(TWO_EPOCHS, tmp_path / "job"))  # the same command, same directory: a requeued job
    assert resumed["steps"] == full["steps"] == 6
    assert not (tmp_path / "job" / ".preempted").exists() and (tmp_path / "job" / "preemptions.jsonl").read_text().count("SIGTERM") == 1
    assert_same_weights(final_weights(tmp_path / "job"), final_weights(tmp_path / "full"))


@pytest.mark.parametrize("signal_step", [2, 5], ids=["last batch of epoch 1", "last batch of the last epoch"])
def test_sigterm_in_an_epochs_last_batch_resumes_to_the_uninterrupted_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, signal_step: int) -> None:
    """A signal in an epoch's last batch is acted on after its validation and checkpoints; the rerun trains the rest."""
    full = run(compose_config(TWO_EPOCHS, tmp_path / "full"))
    original = SSLModule.training_step

    def signalled(self, batch, batch_idx):  # same signature as the real training_step
        if self.global_step == signal_step:
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, batch, batch_idx)

    with monkeypatch.context() as patch:
        patch.setattr(SSLModule, "training_step", signalled)
        with pytest.raises(Preempted, match=rf"stopped at step {signal_step + 1} after writing"):
            run(compose_config(TWO_EPOCHS, tmp_path / "job"))
    resumed = run(compose_config(TWO_EPOCHS, tmp_path / "job"))
    assert resumed["steps"] == full["steps"] == 6
    assert_same_weights(final_weights(tmp_path / "job"), final_weights(tmp_path / "full"))
    assert checkpoint_names(tmp_path / "job") == checkpoint_names(tmp_path / "full")  # the epoch-end ones too (best-epochNNN)


def test_disk_full_during_a_checkpoint_write_keeps_the_previous_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_save, calls = torch.save, {"n": 0}

    def full_after_first(obj, handle, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 1:
            handle.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, handle, *args, **kwargs)

    monkeypatch.setattr(checkpoint_io.torch, "save", full_after_first)
    with pytest.raises(UserError, match=r"writing checkpoint .*last.ckpt failed \(No space left on device\): the previous last.ckpt is intact"):
        run(compose_config([*QUIET, "trainer.max_epochs=3", "callbacks.model_checkpoint=null"], tmp_path / "run"))
    monkeypatch.undo()
    assert torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 2
    assert checkpoint_names(tmp_path / "run") == ["last.ckpt"]  # no staging file left


def test_unwritable_output_dir_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(UserError, match=r"paths.output_dir: cannot create .*a_file/run"):
        run(compose_config(QUIET, tmp_path / "a_file" / "run"))


def test_second_run_in_a_busy_directory_refuses_and_touches_nothing(tmp_path: Path) -> None:
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("the first run's file")
    before = {p.name: p.stat().st_mtime_ns for p in busy.iterdir()}
    with exclusive_run_dir(busy):  # the first run holds the directory
        with pytest.raises(UserError, match=rf"paths.output_dir: {busy} is in use by another run \(pid {os.getpid()}\)"):
            run(compose_config(QUIET, busy))
        after = {p.name: p.stat().st_mtime_ns for p in busy.iterdir()}
    assert after == {**before, ".lock": after[".lock"]} and (busy / "notes.txt").read_text() == "the first run's file"
    run(compose_config(QUIET, busy))  # free again once the first run is gone


def test_a_killed_loader_worker_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    original = TransformedDataset.__getitems__  # what a loader worker reads a batch with

    def dies_in_worker(self, indices):
        if torch.utils.data.get_worker_info() is not None:
            os.kill(os.getpid(), signal.SIGKILL)
        return original(self, indices)

    monkeypatch.setattr(TransformedDataset, "__getitems__", dies_in_worker)
    died = r"a data loader worker died \(DataLoader worker \(pid.*(killed by signal|exited unexpectedly).*data.num_workers=0"
    with pytest.raises(UserError, match=died) as caught:
        run(compose_config([*QUIET, "data.num_workers=1"], tmp_path / "run"))
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_nan_stop_keeps_the_last_good_checkpoint_in_any_precision(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, precision: str) -> None:
    calls, original = {"n": 0}, NTXentLoss.forward

    def poisoned(self, z_a, z_b):  # same signature as the real forward
        calls["n"] += 1
        return original(self, z_a, z_b) * (float("inf") if calls["n"] > 2 else 1.0)

    monkeypatch.setattr(NTXentLoss, "forward", poisoned)
    with pytest.raises(UserError, match=r"train/loss is inf at step 2: training stopped; the last good checkpoint is kept"):
        run(compose_config([*QUIET, "trainer.max_epochs=3", f"trainer.precision={precision}"], tmp_path / "run"))
    state = final_weights(tmp_path / "run")
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def cli(run_dir: Path, *extra: str) -> list[str]:
    overrides = [*TINY_DATA, *TINY_MODEL, *TINY_RUN, *QUIET, "trainer.max_epochs=3", "trainer.limit_train_batches=4", *extra]
    return [sys.executable, "-m", "ssl_train", *overrides, f"hydra.run.dir={run_dir}", f"paths.cache_dir={run_dir.parent}/cache"]


@pytest.mark.slow
def test_signal_to_a_cli_run_then_the_same_command_resumes_to_the_uninterrupted_weights(tmp_path: Path) -> None:
    """A real SIGTERM to a `python -m ssl_train` process: exit 75 and one line; rerunning the command finishes the job."""
    subprocess.run(cli(tmp_path / "full"), check=True, capture_output=True)
    job = tmp_path / "job"
    process = subprocess.Popen(cli(job), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (job / "checkpoints" / "last.ckpt").exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)  # wait for the end of epoch 1, then preempt mid-run
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 75, stderr[-2000:]
    assert "Traceback" not in stderr and "ssl_train error: SIGTERM received: stopped at step" in stderr
    step = torch.load(job / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
    assert 4 <= step < 12
    finished = subprocess.run(cli(job), capture_output=True, text=True)
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert_same_weights(final_weights(job), final_weights(tmp_path / "full"))
