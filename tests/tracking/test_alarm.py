"""The early alarm: on synthetic curves it fires below the band with the right gap and causes, once, early only, and not
inside the band; a malformed band file is one warning; in a real tiny run it writes its line to history.jsonl and the
report draws the band; end to end (slow) a broken default run alarms before 25 % of training and a sound one does not."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from omegaconf import OmegaConf

from ssl_train.run import run
from ssl_train.tracking.alarm import GAP_KEY, ReferenceAlarm, Signals, alarm_line, compare, likely_causes
from ssl_train.tracking.history import read_history
from ssl_train.tracking.reference import ALARM_KEY, BAND_FILE, Band, Curve, fingerprint
from tests.fixtures import compose_config

RECIPE = {"method": "simclr", "data": "ssl_train.data.datasets.EmbeddedFashionMNIST", "max_epochs": 12}
BAND = Band(
    recipe=RECIPE,
    seeds=(0, 1, 2),
    curves={
        "val/knn_top1": Curve((1 / 6, 1 / 3, 1.0), (0.70, 0.78, 0.85), (0.005, 0.004, 0.003)),
        "val/rankme": Curve((1 / 6, 1 / 3, 1.0), (40.0, 45.0, 50.0), (1.0, 1.0, 1.0)),
        "val/embedding_std": Curve((1 / 6, 1 / 3, 1.0), (0.5, 0.5, 0.5), (0.01, 0.01, 0.01)),
        "train/loss": Curve((1 / 6, 1 / 3, 1.0), (4.2, 3.9, 3.5), (0.02, 0.02, 0.02)),
    },
    effective_lr=0.25,
    warmup_fraction=1 / 12,
)
LIMITS = {"collapse_ratio": 0.5, "lr_ratio": 2.0, "loader_wait": 0.5, "sigmas": 3.0}


def sound(**changes: Any) -> Signals:
    """The signals of a run like the reference's at 1/6 of training, with `changes`."""
    values = {"fraction": 1 / 6, "knn_top1": 0.6, "rankme": 41.0, "embedding_std": 0.49, "loss": 4.21, "effective_lr": 0.25}
    return Signals(**{**values, "warmup_fraction": 1 / 12, "loader_wait": 0.1, **changes})


def test_below_the_band_gives_the_gap_in_points_from_the_band_mean() -> None:
    gap = compare(BAND, 1 / 6, 0.60, sigmas=3.0, margin=0.02)
    assert gap is not None and gap.points == pytest.approx(10.0) and gap.lower == pytest.approx(0.68)  # 0.70 - max(3 x 0.005, 0.02)
    between = compare(BAND, 0.25, 0.70, sigmas=3.0, margin=0.02)  # halfway between 1/6 and 1/3: mean 0.74
    assert between is not None and between.points == pytest.approx(4.0)
    wide = compare(BAND, 1 / 6, 0.66, sigmas=10.0, margin=0.0)  # the spread widens the band: 0.70 - 10 x 0.005 = 0.65
    assert wide is None and compare(BAND, 1 / 6, 0.64, sigmas=10.0, margin=0.0) is not None


@pytest.mark.parametrize("value", [0.69, 0.681, 0.75])
def test_inside_or_above_the_band_does_not_fire(value: float) -> None:
    assert compare(BAND, 1 / 6, value, sigmas=3.0, margin=0.02) is None


def test_no_comparison_where_the_band_has_no_point() -> None:
    assert compare(BAND, 0.05, 0.0, sigmas=3.0, margin=0.02) is None  # before the band's first evaluation


@pytest.mark.parametrize(
    ("changes", "cause"),
    [
        ({"rankme": 3.0, "embedding_std": 0.004}, "collapse (RankMe 3 vs 40, embedding std 0.004 vs 0.5)"),
        ({"effective_lr": 25.0}, "learning rate (effective lr 25 is 100x the reference's 0.25)"),
        ({"effective_lr": 0.0025}, "learning rate (effective lr 0.0025 is 0.01x the reference's 0.25)"),
        ({"warmup_fraction": 0.0}, "warm-up (0 % of training vs the reference's 8 %)"),
        ({"loss": 6.0}, "training loss 6 vs the reference's 4.2 ± 0.02"),
        ({"loss": float("nan")}, "training loss not finite (nan)"),
        ({"teacher_temp": (0.04, 0.04)}, "teacher temperature not moving (0.04 since the start)"),
        ({"centre_moved": False}, "teacher centre not moving"),
        ({"loader_wait": 0.7, "images_per_s": 120.0}, "loader starvation (70 % of training time waiting for batches, 120 images/s)"),
    ],
)
def test_each_cause_is_read_from_the_run_s_own_signals(changes: dict, cause: str) -> None:
    assert likely_causes(sound(**changes), BAND, **LIMITS) == [cause]


def test_a_run_like_the_reference_names_no_cause_and_the_line_says_so() -> None:
    assert likely_causes(sound(teacher_temp=(0.04, 0.07), centre_moved=True), BAND, **LIMITS) == []
    gap = compare(BAND, 1 / 6, 0.6, 3.0, 0.02)
    assert gap is not None
    line = alarm_line(BAND, gap, [], epoch=2)
    assert line.startswith("[ssl_train] reference alarm at 17 % of training (epoch 2): online kNN top-1 0.6000 is 10.0 pts below")
    assert "simclr on EmbeddedFashionMNIST (0.7000 ± 0.0050 over 3 seeds" in line and "none of the logged signals stands out" in line
    assert "\n" not in line


class FakeModule:
    """What the callback reads from the LightningModule: the method's loss, the optim recipe, and log()."""

    def __init__(self) -> None:
        self.logged: dict[str, float] = {}
        self.method = SimpleNamespace(loss=SimpleNamespace())
        self.optim = SimpleNamespace(warmup_epochs=1)

    def log(self, key: str, value: float, **_: Any) -> None:
        self.logged[key] = value


def fake_trainer(history_path: Path) -> SimpleNamespace:
    from ssl_train.tracking.history import MetricHistory

    optimizer = SimpleNamespace(param_groups=[{"lr": 0.1, "initial_lr": 0.25}])
    return SimpleNamespace(
        is_global_zero=True,
        callback_metrics={},
        global_step=0,
        estimated_stepping_batches=120,
        max_epochs=12,
        current_epoch=0,
        optimizers=[optimizer],
        callbacks=[MetricHistory(str(history_path))],
    )


def bands_dir_with(tmp_path: Path, band: Band) -> Path:
    folder = tmp_path / "bands"
    folder.mkdir(exist_ok=True)
    (folder / "simclr.default.json").write_text(json.dumps(band.to_json()))
    return folder


def evaluations(alarm: ReferenceAlarm, trainer: SimpleNamespace, module: FakeModule, knn_at_epoch: dict[int, float]) -> None:
    """Drive the callback through 12 epochs of 10 steps; `knn_at_epoch`: the kNN logged at those epochs' ends."""
    alarm.on_train_start(trainer, module)  # type: ignore[arg-type]
    for epoch in range(12):
        trainer.current_epoch, trainer.global_step = epoch, 10 * (epoch + 1)
        if epoch in knn_at_epoch:
            trainer.callback_metrics["val/knn_top1"] = torch.tensor(knn_at_epoch[epoch])
        alarm.on_train_epoch_end(trainer, module)  # type: ignore[arg-type]


def test_the_callback_warns_once_at_the_first_early_evaluation_below_the_band(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    alarm = ReferenceAlarm(RECIPE, band_copy=str(tmp_path / BAND_FILE), bands_dir=str(bands_dir_with(tmp_path, BAND)))
    trainer, module = fake_trainer(tmp_path / "history.jsonl"), FakeModule()
    with caplog.at_level(logging.WARNING, logger="ssl_train.tracking.alarm"):
        evaluations(alarm, trainer, module, {1: 0.55, 2: 0.50, 3: 0.40})  # fractions 2/12 (below), 3/12 (below again), 4/12
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "at 17 % of training (epoch 2)" in warnings[0] and "15.0 pts below" in warnings[0]
    assert module.logged == {GAP_KEY: pytest.approx(15.0)}
    assert [r[ALARM_KEY] for r in read_history(tmp_path / "history.jsonl")] == warnings  # the report's record
    assert json.loads((tmp_path / BAND_FILE).read_text())["fingerprint"] == fingerprint(RECIPE)


def test_the_callback_is_silent_inside_the_band_late_and_without_a_matching_band(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    folder = bands_dir_with(tmp_path, BAND)
    with caplog.at_level(logging.DEBUG, logger="ssl_train.tracking.alarm"):
        inside = ReferenceAlarm(RECIPE, bands_dir=str(folder))
        evaluations(inside, fake_trainer(tmp_path / "a.jsonl"), FakeModule(), {1: 0.70, 3: 0.10})  # 2/12 inside; 4/12 past until_fraction
        other = ReferenceAlarm({**RECIPE, "max_epochs": 30}, band_copy=str(tmp_path / "other" / BAND_FILE), bands_dir=str(folder))
        evaluations(other, fake_trainer(tmp_path / "b.jsonl"), FakeModule(), {1: 0.10})
    assert [r.levelno for r in caplog.records] == [logging.DEBUG] and "no reference band for this recipe" in caplog.records[0].getMessage()
    assert not inside.fired and not other.fired and not (tmp_path / "other").exists()


def test_a_malformed_band_file_is_one_warning_and_the_run_goes_on(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    folder = bands_dir_with(tmp_path, BAND)
    (folder / "byol.default.json").write_text('{"schema": 1, "recipe": ')
    alarm = ReferenceAlarm(RECIPE, bands_dir=str(folder))
    with caplog.at_level(logging.WARNING, logger="ssl_train.tracking.alarm"):
        alarm.on_train_start(fake_trainer(tmp_path / "h.jsonl"), FakeModule())  # type: ignore[arg-type]
    assert [r.getMessage().split(": not a")[0] for r in caplog.records] == [f"[ssl_train] reference band skipped: {folder / 'byol.default.json'}"]
    assert alarm.band is not None and alarm.band.fingerprint == fingerprint(RECIPE)  # the valid band is still used


def test_bad_settings_are_refused_in_one_line() -> None:
    with pytest.raises(ValueError, match="until_fraction in \\(0, 1\\]"):
        ReferenceAlarm(RECIPE, until_fraction=0.0)


def test_a_tiny_run_below_its_band_records_the_alarm_and_the_report_draws_the_band(tmp_path: Path) -> None:
    overrides = ["probe=false", "baseline=false", "trainer.max_epochs=2", "callbacks.online_eval.every_n_epochs=1", "callbacks.online_eval.lidar_samples=0"]
    overrides += ["callbacks.pictures=null", "callbacks.reference_alarm.until_fraction=0.5", f"callbacks.reference_alarm.bands_dir={tmp_path}/bands"]
    cfg = compose_config(overrides, tmp_path / "run")
    recipe = OmegaConf.to_container(cfg.callbacks.reference_alarm.recipe, resolve=True)
    assert isinstance(recipe, dict) and recipe["method"] == "simclr" and recipe["max_epochs"] == 2
    unreachable = Band(recipe=recipe, seeds=(0, 1, 2), curves={"val/knn_top1": Curve((0.5, 1.0), (1.0, 1.0), (0.0, 0.0))})
    bands_dir_with(tmp_path, unreachable)
    run(cfg)
    records = read_history(tmp_path / "run" / "history.jsonl")
    alarms = [r for r in records if ALARM_KEY in r]
    assert len(alarms) == 1 and alarms[0]["epoch"] == 0 and "at 50 % of training (epoch 1)" in alarms[0][ALARM_KEY]
    assert any(GAP_KEY in r for r in records)  # the gap as a logged scalar too (trackers, history)
    page = (tmp_path / "run" / "report.html").read_text()
    assert "reference alarm at 50 % of training" in page and "<polygon" in page  # the line, and the band behind the curves


@pytest.mark.slow
def test_a_broken_default_run_alarms_before_a_quarter_of_training_and_a_sound_one_does_not(tmp_path: Path) -> None:
    """The shipped band of the default recipe: lr x 100 alarms at the first evaluation (2/12 of training); a seed the band
    was not built from does not. Each run stops after that first evaluation (the alarm's window holds no other)."""
    stop = [
        "+callbacks.stop._target_=lightning.pytorch.callbacks.EarlyStopping",
        "+callbacks.stop.monitor=val/knn_top1",
        "+callbacks.stop.mode=max",
        "+callbacks.stop.stopping_threshold=0.0",
        "+callbacks.stop.strict=false",
        "+callbacks.stop.check_on_train_epoch_end=true",
        "probe=false",
        "baseline=false",
        "trainer.enable_progress_bar=false",
    ]
    outcomes = {}
    for name, change in (("broken", ["optim.optimizer.lr=25.0"]), ("sound", ["seed=3"])):
        run(compose_config([*stop, *change], tmp_path / name, tiny=False))
        assert (tmp_path / name / BAND_FILE).is_file()  # the run found the shipped band of its recipe
        outcomes[name] = [r for r in read_history(tmp_path / name / "history.jsonl") if ALARM_KEY in r]
    assert len(outcomes["broken"]) == 1 and outcomes["broken"][0]["step"] / 468 < 0.25
    assert "learning rate (effective lr 25 is 100x" in outcomes["broken"][0][ALARM_KEY]
    assert outcomes["sound"] == []
