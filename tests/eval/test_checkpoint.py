"""A checkpoint's evaluation reports both baselines: the raw input and the run's own initial encoder, rebuilt."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from omegaconf import OmegaConf

from ssl_train.build import build
from ssl_train.eval.baselines import weights_fingerprint
from ssl_train.eval.checkpoint import evaluate_checkpoint, initial_method, stored_fingerprint
from ssl_train.module import INITIAL_BACKBONE_KEY
from ssl_train.run import run
from tests.fixtures import WritesMarkerWhenUnpickled, compose_config

SAME_PROBE = ["eval.linear.max_iter=10", "eval.linear.l2_grid=[0.0,0.001]", "eval=[linear]"]


@pytest.mark.parametrize("method", ["simclr", "mae"])  # a ResNet and a ViT (its patch grid from the data's image size)
def test_initial_method_has_the_runs_very_initial_weights(tmp_path: Path, method: str) -> None:
    cfg = compose_config([f"method={method}", "seed=3"], tmp_path)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)  # as python -m ssl_train does before it builds
    at_start = weights_fingerprint(build(cfg).backbone)
    stored = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))  # what ConfigInCheckpoint keeps
    assert weights_fingerprint(initial_method(stored)[0].backbone) == at_start
    assert weights_fingerprint(initial_method(OmegaConf.merge(stored, {"seed": 4}))[0].backbone) != at_start  # the seed decides


def test_initial_method_is_skipped_with_a_warning_when_it_cannot_be_rebuilt(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cfg = OmegaConf.create(OmegaConf.to_container(compose_config([], tmp_path), resolve=True))
    missing_folder = OmegaConf.merge(
        cfg, {"data": OmegaConf.to_container(compose_config(["data=image_folder", f"data.source.root={tmp_path / 'gone'}"], tmp_path).data)}
    )
    with caplog.at_level(logging.WARNING):
        assert initial_method(missing_folder) is None
        for seed in ("abc", -1, 2**40):  # a stranger's checkpoint: its stored values are data
            assert initial_method(OmegaConf.merge(cfg, {"seed": seed})) is None
        del cfg["seed"]
        assert initial_method(cfg) is None
    assert "cannot be rebuilt here" in caplog.text and "stores no seed in [0, 2**32) (seed: 'abc')" in caplog.text and "(seed: None)" in caplog.text


def test_checkpoint_evaluation_reports_the_runs_random_init_baseline(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trained = run(compose_config(SAME_PROBE, tmp_path / "train"))
    ckpt = tmp_path / "train" / "checkpoints" / "last.ckpt"
    metrics = evaluate_checkpoint(compose_config([f"ckpt_path={ckpt}", *SAME_PROBE], tmp_path / "eval", config_name="probe"))
    assert metrics["linear_top1"] == pytest.approx(trained["linear_top1"], abs=1e-6)
    for baseline in ("raw_input_linear_top1", "random_init_linear_top1"):
        assert metrics[baseline] == pytest.approx(trained[baseline], abs=1e-6), baseline  # the same initial weights, the same probe
    assert f"random-init encoder {trained['random_init_linear_top1']:.4f}" in capsys.readouterr().out
    stored = torch.load(ckpt, weights_only=True)
    assert stored[INITIAL_BACKBONE_KEY] == weights_fingerprint(initial_method(OmegaConf.create(stored["ssl_train_config"]))[0].backbone)


def test_an_initial_encoder_that_differs_from_the_runs_is_not_reported(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The checkpoint keeps its initial encoder's fingerprint; a rebuild that draws other weights (another torch, a
    changed backbone.weights file) would report another encoder's score as this run's baseline: it is skipped instead."""
    run(compose_config([*SAME_PROBE, "trainer.max_epochs=1"], tmp_path / "train"))
    ckpt = tmp_path / "train" / "checkpoints" / "last.ckpt"
    stored = torch.load(ckpt, weights_only=True)
    torch.save({**stored, INITIAL_BACKBONE_KEY: "0" * 16}, ckpt)
    with caplog.at_level(logging.WARNING):
        metrics = evaluate_checkpoint(compose_config([f"ckpt_path={ckpt}", *SAME_PROBE], tmp_path / "eval", config_name="probe"))
    assert "random_init_linear_top1" not in metrics and "raw_input_linear_top1" in metrics
    assert "does not have the run's initial weights" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):  # a stranger's file: what it stores there is data, checked, never trusted
        assert stored_fingerprint({INITIAL_BACKBONE_KEY: torch.zeros(2)}) is None
    assert "fingerprint is not a string (Tensor)" in caplog.text


def test_a_stored_trust_flag_never_unpickles_the_initial_weights(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A checkpoint's config saying trust_checkpoint=true and naming a crafted backbone.weights file: the evaluation reads
    that file weights-only (its own trust setting), so the pickle's payload never runs and the baseline is skipped."""
    marker, crafted = tmp_path / "marker", tmp_path / "weights.ckpt"
    torch.save({"state_dict": {}, "payload": WritesMarkerWhenUnpickled(marker)}, crafted)
    stored = OmegaConf.create(OmegaConf.to_container(compose_config([], tmp_path), resolve=True))
    crafted_cfg = OmegaConf.merge(stored, {"trust_checkpoint": True, "backbone": {"weights": str(crafted)}})
    with caplog.at_level(logging.WARNING):
        assert initial_method(crafted_cfg) is None
    assert not marker.exists() and "cannot be rebuilt here" in caplog.text
