"""callbacks.model_checkpoint (ssl_train.best_checkpoint): label-free selection of the best epoch, mode following the
metric, and one-line errors for a monitor that is not logged."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ssl_train.best_checkpoint import BestCheckpoint
from ssl_train.errors import UserError
from ssl_train.run import run
from tests.fixtures import compose_config

QUIET = ["probe=false", "baseline=false", "callbacks.pictures=null"]


def checkpoint_state(ckpt: Path) -> dict:
    (state,) = [v for k, v in torch.load(ckpt, weights_only=False)["callbacks"].items() if k.startswith("BestCheckpoint")]
    return state


def test_mode_auto_follows_the_metric(tmp_path: Path) -> None:
    made = {m: BestCheckpoint(str(tmp_path), "best", monitor=m) for m in ("val/rankme", "val/lidar", "val/uniformity", "val/alignment", "val/online_top1")}
    assert {m: c.mode for m, c in made.items()} == {
        "val/rankme": "max",
        "val/lidar": "max",
        "val/uniformity": "min",
        "val/alignment": "min",
        "val/online_top1": "max",
    }
    assert BestCheckpoint(str(tmp_path), "best", monitor="val/rankme", mode="min").mode == "min"  # an explicit mode is kept
    assert made["val/rankme"]._save_on_train_epoch_end is True  # after callbacks.online_eval logs it at the epoch's end
    assert made["val/online_top1"]._save_on_train_epoch_end is None  # Lightning's choice, as before


def test_unknown_monitor_is_one_line_naming_the_allowed_keys(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"monitor=val/rankmee: not a metric it selects by; use one of val/online_top1, val/knn_top1, val/rankme"):
        run(compose_config([*QUIET, "callbacks.model_checkpoint.monitor=val/rankmee"], tmp_path / "run"))


def test_proxy_monitor_without_online_eval_is_refused_before_training(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="monitor=val/rankme is logged by callbacks.online_eval, which is off"):
        run(compose_config([*QUIET, "callbacks.model_checkpoint.monitor=val/rankme", "callbacks.online_eval=null"], tmp_path / "a"))
    with pytest.raises(UserError, match="val/lidar needs callbacks.online_eval.lidar_samples > 0"):
        run(compose_config([*QUIET, "callbacks.model_checkpoint.monitor=val/lidar", "callbacks.online_eval.lidar_samples=0"], tmp_path / "b"))


def test_rankme_selects_among_the_measured_epochs_only(tmp_path: Path) -> None:
    """4 epochs, online evaluation every 2: the checkpoint compares RankMe at epochs 1 and 3 (never at 0, where Lightning
    stopped with 'could not find the monitored key', nor at 2, where the logged value is epoch 1's) and keeps the larger."""
    out = tmp_path / "run"
    overrides = [*QUIET, "trainer.max_epochs=4", "callbacks.model_checkpoint.monitor=val/rankme", "callbacks.model_checkpoint.save_top_k=-1"]
    run(compose_config(overrides, out))
    assert sorted(p.name for p in (out / "checkpoints").glob("best-*.ckpt")) == ["best-epoch001.ckpt", "best-epoch003.ckpt"]
    logged = {r["epoch"]: r["val/rankme"] for r in map(json.loads, (out / "history.jsonl").read_text().splitlines()) if "val/rankme" in r}
    best_epoch = max((1, 3), key=lambda e: logged[e])
    state = checkpoint_state(out / "checkpoints" / "last.ckpt")
    assert Path(state["best_model_path"]).name == f"best-epoch{best_epoch:03d}.ckpt"
    assert float(state["best_model_score"]) == pytest.approx(logged[best_epoch], abs=1e-5)


def test_uniformity_keeps_the_lowest(tmp_path: Path) -> None:
    out = tmp_path / "run"
    overrides = [*QUIET, "trainer.max_epochs=3", "callbacks.online_eval.every_n_epochs=1", "callbacks.model_checkpoint.monitor=val/uniformity"]
    run(compose_config(overrides, out))
    logged = {r["epoch"]: r["val/uniformity"] for r in map(json.loads, (out / "history.jsonl").read_text().splitlines()) if "val/uniformity" in r}
    assert sorted(logged) == [0, 1, 2]
    best_epoch = min(logged, key=lambda e: logged[e])
    assert [p.name for p in (out / "checkpoints").glob("best-*.ckpt")] == [f"best-epoch{best_epoch:03d}.ckpt"]
