"""Nothing of a run is lost: a real full disk, a refused rerun, a stop during the evaluation, symlinks where results go."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from ssl_train.callbacks import Preempted
from ssl_train.checkpoint_io import AtomicCheckpointIO, read_checkpoint
from ssl_train.errors import UserError
from ssl_train.eval import protocol as protocol_module
from ssl_train.eval.checkpoint import evaluate_checkpoint
from ssl_train.run import run
from ssl_train.run_dir import TRAINING_DONE, exclusive_run_dir, fresh_dir, keep_or_write_new, write_new
from tests.fixtures import REPO, compose_config

QUIET = ["probe=false", "baseline=false"]


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 1 MiB tmpfs at tmp_path/disk (needs root), unmounted afterwards."""
    disk = tmp_path / "disk"
    disk.mkdir()
    try:
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1M", "tmpfs", str(disk)], capture_output=True, text=True)
    except FileNotFoundError:
        pytest.skip("needs the mount command to mount a tmpfs")
    if mounted.returncode != 0:
        pytest.skip(f"needs root to mount a tmpfs ({mounted.stderr.strip()})")
    try:
        yield disk
    finally:
        subprocess.run(["umount", str(disk)], check=True)


def test_a_real_full_disk_keeps_the_previous_checkpoint(tiny_disk: Path) -> None:
    """torch's zip writer reports a full disk as a RuntimeError, not an OSError: still one line, the old file intact."""
    io, target = AtomicCheckpointIO(), tiny_disk / "checkpoints" / "last.ckpt"
    small = {"state_dict": {"w": torch.arange(10.0)}, "global_step": 1}
    io.save_checkpoint(small, target)
    big = {"state_dict": {"w": torch.randn(1_000_000)}, "global_step": 2}  # 4 MB on a 1 MiB disk
    with pytest.raises(
        UserError, match=rf"writing checkpoint {re.escape(str(target))} failed \(No space left on device.*\): the previous last.ckpt is intact"
    ) as caught:
        io.save_checkpoint(big, target)
    assert "\n" not in str(caught.value)
    loaded = read_checkpoint(target)
    assert loaded["global_step"] == 1 and torch.equal(loaded["state_dict"]["w"], small["state_dict"]["w"])
    assert sorted(os.listdir(target.parent)) == ["last.ckpt"]  # no staging file left behind
    assert io.steps_saved == {str(target.resolve()): 1}


def fake_finished_run(run_dir: Path) -> dict[str, tuple[bytes, int]]:
    """A finished run's metrics.json and .hydra files (dated in the past), without training; returns their bytes and mtimes."""
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / "metrics.json").write_text('{"linear_top1": 0.5}\n')
    for name in ("config.yaml", "overrides.yaml", "hydra.yaml"):
        (run_dir / ".hydra" / name).write_text(f"# the finished run's {name}\n")
    files = [run_dir / "metrics.json", *(run_dir / ".hydra").iterdir()]
    for path in files:
        os.utime(path, ns=(1_000_000_000_000_000_000, 1_000_000_000_000_000_000))
    return snapshot(files)


def snapshot(files: list[Path]) -> dict[str, tuple[bytes, int]]:
    return {str(p): (p.read_bytes(), p.stat().st_mtime_ns) for p in files}


@pytest.mark.parametrize("where", ["hydra.run.dir", "paths.output_dir"])
def test_a_refused_rerun_leaves_the_finished_runs_hydra_files_untouched(tmp_path: Path, where: str) -> None:
    finished = tmp_path / "finished"
    before = fake_finished_run(finished)
    out = subprocess.run(
        [sys.executable, "-m", "ssl_train", f"{where}={finished}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert f"ssl_train error: paths.output_dir: {finished} already holds a finished run (metrics.json)" in out.stderr
    assert snapshot([Path(p) for p in before]) == before
    listing = sorted(p.name for p in finished.rglob("*") if p.name != "__main__.log")  # Hydra's log (appended to, never truncated)
    assert listing == [".hydra", "config.yaml", "hydra.yaml", "metrics.json", "overrides.yaml"]
    assert not list(tmp_path.glob("outputs/*/*/.hydra"))  # paths.output_dir: Hydra's own run folder got no config files either


def test_sigterm_during_the_evaluation_then_the_rerun_only_evaluates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Training finished, the probe was stopped: the rerun evaluates last.ckpt's weights and never retrains over the run."""
    overrides, job = ["baseline=false", "eval=[linear]"], tmp_path / "job"
    handler_before, original = signal.getsignal(signal.SIGTERM), protocol_module.evaluate_encoder

    def signalled(*args, **kwargs):  # same signature as evaluate_encoder
        os.kill(os.getpid(), signal.SIGTERM)  # a real signal (a time limit), delivered during the probe
        return original(*args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(protocol_module, "evaluate_encoder", signalled)
        with pytest.raises(Preempted, match=r"SIGTERM received during the evaluation, before metrics.json was written; rerun") as caught:
            run(compose_config(overrides, job))
    assert caught.value.exit_code == 75 and signal.getsignal(signal.SIGTERM) == handler_before
    assert (job / TRAINING_DONE).is_file() and not (job / "metrics.json").exists()
    kept = snapshot([job / "checkpoints" / "last.ckpt", job / "history.jsonl"])
    evaluated = {}

    def recording(encoder, *args, **kwargs):
        evaluated.update({k: v.detach().clone() for k, v in encoder.state_dict().items()})
        return original(encoder, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(protocol_module, "evaluate_encoder", recording)
        metrics = run(compose_config(overrides, job))  # the same command, same directory: a requeued job
    assert snapshot([Path(p) for p in kept]) == kept  # neither rewritten nor touched
    assert metrics["steps"] == 2 and "linear_top1" in metrics and "fit_time_s" in metrics
    assert json.loads((job / "metrics.json").read_text()) == metrics and not (job / TRAINING_DONE).exists()
    stored = torch.load(job / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    trained = {k.removeprefix("method.backbone."): v for k, v in stored.items() if k.startswith("method.backbone.")}
    assert evaluated.keys() == trained.keys() and all(torch.equal(evaluated[k], trained[k]) for k in trained)


def test_a_dangling_metrics_symlink_in_the_run_dir_is_refused_and_not_followed(tmp_path: Path) -> None:
    run_dir, victim = tmp_path / "run", tmp_path / "victim"
    run_dir.mkdir()
    (run_dir / "metrics.json").symlink_to(victim)
    with pytest.raises(UserError, match=r"already holds a finished run \(metrics.json, a symbolic link\)"):
        run(compose_config(QUIET, run_dir))
    assert not os.path.lexists(victim) and [p.name for p in run_dir.iterdir()] == ["metrics.json"]


def test_evaluating_a_checkpoint_never_writes_through_a_symlink(tmp_path: Path) -> None:
    run(compose_config(QUIET, tmp_path / "run"))
    ckpt_dir, victims = tmp_path / "run" / "checkpoints", [tmp_path / "victim", tmp_path / "victim-1"]
    (ckpt_dir / "metrics.json").symlink_to(victims[0])  # dangling: would create the victim if followed
    (ckpt_dir / "metrics-1.json").symlink_to(victims[1])
    cfg = compose_config([f"ckpt_path={ckpt_dir / 'last.ckpt'}", "eval=[linear]", "eval.linear.max_iter=10"], tmp_path / "probe", config_name="probe")
    metrics = evaluate_checkpoint(cfg)
    assert not any(os.path.lexists(v) for v in victims)
    assert json.loads((ckpt_dir / "metrics-2.json").read_text()) == metrics == json.loads((tmp_path / "probe" / "metrics.json").read_text())


def test_run_dir_writers_never_follow_or_replace(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    (tmp_path / "out.json").symlink_to(victim)
    assert write_new(tmp_path / "out.json", "new") == tmp_path / "out-1.json" and not os.path.lexists(victim)
    assert keep_or_write_new(tmp_path / "out.json", "new") == tmp_path / "out-2.json"  # the symlink is not read either
    assert keep_or_write_new(tmp_path / "out-1.json", "new") == tmp_path / "out-1.json"  # a file with the same text: kept
    assert keep_or_write_new(tmp_path / "out-1.json", "other") == tmp_path / "out-1-1.json" and (tmp_path / "out-1.json").read_text() == "new"
    (tmp_path / "export").symlink_to(tmp_path / "victim_dir")
    assert fresh_dir(tmp_path / "export") == tmp_path / "export-1" and not os.path.lexists(tmp_path / "victim_dir")
    precious, run_dir = tmp_path / "precious", tmp_path / "run"
    precious.write_text("keep me")
    run_dir.mkdir()
    (run_dir / ".lock").symlink_to(precious)
    with pytest.raises(UserError, match=r"cannot open .*\.lock .*a symbolic link is never followed"):
        with exclusive_run_dir(run_dir):
            pass
    assert precious.read_text() == "keep me"
