"""Experiment trackers: several at once, offline/local stores, one tracker run across a kill and a resume, metadata logged."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch

from ssl_train.callbacks import Preempted
from ssl_train.errors import UserError
from ssl_train.module import SSLModule
from ssl_train.run import run
from ssl_train.tracking.trackers import TRACKER_RUNS_KEY, build_loggers, command_line, wandb_can_go_online
from tests.fixtures import compose_config
from tests.optional import require

QUIET = ["probe=false", "baseline=false"]
TWO_EPOCHS = [*QUIET, "trainer.max_epochs=2", "trainer.limit_train_batches=3"]


def mlflow_runs(store: Path) -> list:
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    import mlflow

    client = mlflow.tracking.MlflowClient(store.resolve().as_uri())
    experiment = client.get_experiment_by_name("ssl_train")
    return [] if experiment is None else client.search_runs([experiment.experiment_id])


def wandb_run_ids(run_dir: Path) -> set[str]:
    """The run ids of the W&B offline runs written under run_dir (the id ends the offline-run-<time>-<id> folder name)."""
    return {p.name.rsplit("-", 1)[1] for p in (run_dir / "wandb").glob("offline-run-*")}


def test_logger_group_builds_one_logger_per_chosen_tracker(tmp_path: Path) -> None:
    cfg = compose_config(["logger=[tensorboard,csv]"], tmp_path / "run")
    assert set(cfg.logger) == {"tensorboard", "csv"}
    built = build_loggers(cfg.logger, lambda node, **extra: (node["_target_"].rsplit(".", 1)[1], extra))
    assert built == [("TensorBoardLogger", {}), ("AppendingCSVLogger", {})]
    # a resumed W&B / MLflow tracker is handed the stored run id; TensorBoard gets nothing
    nodes = {
        "tensorboard": cfg.logger.tensorboard,
        "wandb": {"_target_": "ssl_train.tracking.trackers.wandb_logger"},
        "mlflow": {"_target_": "ssl_train.tracking.trackers.mlflow_logger"},
        "off": None,
    }
    built = build_loggers(nodes, lambda node, **extra: extra, {"wandb": "abc", "mlflow": "f00"})
    assert built == [{}, {"id": "abc"}, {"run_id": "f00"}]
    with pytest.raises(UserError, match=r"logger.bad is not a logger config"):
        build_loggers({"bad": {"save_dir": "x"}}, lambda node, **extra: None)


def test_wandb_stays_offline_without_a_key(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc from `wandb login`
    monkeypatch.delenv("NETRC", raising=False)
    assert wandb_can_go_online() is False
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert wandb_can_go_online() is False


def test_command_line_is_the_hydra_overrides() -> None:
    assert command_line(["method=byol", "tags=[a b]"]) == "python -m ssl_train method=byol 'tags=[a b]'"


def test_killed_then_resumed_run_is_one_run_in_each_tracker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    require("wandb", "mlflow")
    monkeypatch.setenv("WANDB_MODE", "offline")
    trackers = ["logger=[tensorboard,wandb,mlflow,csv]", f"paths.runs_dir={tmp_path / 'runs'}"]
    original = SSLModule.training_step

    def signalled_at_step_4(self, batch, batch_idx):  # same signature as the real training_step
        if self.global_step == 4:
            os.kill(os.getpid(), signal.SIGTERM)  # preempted mid-epoch 2
        return original(self, batch, batch_idx)

    with monkeypatch.context() as patch:
        patch.setattr(SSLModule, "training_step", signalled_at_step_4)
        with pytest.raises(Preempted):
            run(compose_config([*TWO_EPOCHS, *trackers], tmp_path / "job"))
    stored = torch.load(tmp_path / "job" / "checkpoints" / "last.ckpt", weights_only=True)[TRACKER_RUNS_KEY]
    assert set(stored) == {"wandb", "mlflow"}
    resumed = run(compose_config([*TWO_EPOCHS, *trackers], tmp_path / "job"))  # the requeued job: same command, same directory
    assert resumed["steps"] == 6

    runs = mlflow_runs(tmp_path / "runs" / "mlruns")
    assert [r.info.run_id for r in runs] == [stored["mlflow"]] and runs[0].info.status == "FINISHED"
    import mlflow

    client = mlflow.tracking.MlflowClient((tmp_path / "runs" / "mlruns").resolve().as_uri())
    steps = sorted({m.step for m in client.get_metric_history(stored["mlflow"], "train/loss")})
    assert steps[0] <= 1 and steps[-1] >= 5  # both segments' losses in the one run
    assert runs[0].data.tags["resumed_from"].endswith("last.ckpt") and runs[0].data.params["config/seed"] == "0"
    assert {a.path for a in client.list_artifacts(stored["mlflow"])} >= {"config_resolved.yaml", "metrics.json", "report.html", "pictures"}
    assert [a.path for a in client.list_artifacts(stored["mlflow"], "pictures/views")] == ["pictures/views/step000001.png"]  # logged once
    assert runs[0].data.metrics["final/steps"] == 6
    assert wandb_run_ids(tmp_path / "job") == {stored["wandb"]}  # two offline segments, one W&B run: `wandb sync` joins them
    assert len(list((tmp_path / "job" / "wandb").glob("offline-run-*"))) == 2
    import csv

    with open(tmp_path / "job" / "csv" / "metrics.csv", newline="") as handle:
        logged_steps = {int(row["step"]) for row in csv.DictReader(handle) if row.get("train/loss")}
    assert min(logged_steps) <= 1 and max(logged_steps) >= 5  # the first segment's rows are kept, the second's appended


def test_resume_from_a_checkpoint_into_a_new_directory_continues_the_tracker_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    require("mlflow")
    trackers = ["logger=[mlflow]", f"paths.runs_dir={tmp_path / 'runs'}"]
    run(compose_config([*QUIET, *trackers], tmp_path / "first"))
    ckpt = tmp_path / "first" / "checkpoints" / "last.ckpt"
    run(compose_config([*QUIET, *trackers, "trainer.max_epochs=2", f"ckpt_path={ckpt}"], tmp_path / "second"))
    runs = mlflow_runs(tmp_path / "runs" / "mlruns")
    assert len(runs) == 1 and runs[0].data.metrics["final/steps"] == 4
    assert json.loads((tmp_path / "second" / "metrics.json").read_text())["steps"] == 4


def test_a_missing_tracker_package_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    real_import = builtins.__import__

    def without_wandb(name, *args, **kwargs):
        if name == "wandb":
            raise ImportError("No module named 'wandb'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", without_wandb)
    with pytest.raises(UserError, match=r"^logger=wandb needs the wandb package: pip install -e '.\[trackers\]'"):
        run(compose_config([*QUIET, "logger=wandb"], tmp_path / "run"))
