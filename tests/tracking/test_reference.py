"""Reference band files: written and read back, refused with one line naming the file and the field when malformed, and
built from seed runs' histories as mean and sample spread at each fraction of training."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import pytest

from ssl_train.tracking.reference import (
    PACKAGE_BANDS,
    Band,
    BandError,
    Curve,
    band_curves,
    fingerprint,
    load_bands,
    matching_band,
    parse_band,
    read_band,
)

RECIPE = {"method": "simclr", "data": "ssl_train.data.datasets.EmbeddedFashionMNIST", "max_epochs": 12, "batch_size": 256}


def a_band(**changes: object) -> dict:
    band = Band(
        recipe=dict(RECIPE),
        seeds=(0, 1, 2),
        curves={"val/knn_top1": Curve((1 / 6, 1 / 3), (0.70, 0.78), (0.005, 0.004)), "train/loss": Curve((0.5, 1.0), (4.2, 3.9), (0.01, 0.02))},
        effective_lr=0.25,
        warmup_fraction=1 / 12,
        measured_on="CPU",
    ).to_json()
    band.update(changes)
    return band


def test_a_band_round_trips_through_its_json() -> None:
    band = parse_band(json.loads(json.dumps(a_band())), "x.json")
    assert band.recipe == RECIPE and band.seeds == (0, 1, 2) and band.effective_lr == 0.25
    assert band.curves["val/knn_top1"].mean == (0.70, 0.78) and band.curves["train/loss"].fraction == (0.5, 1.0)
    assert band.fingerprint == fingerprint(RECIPE) == fingerprint(dict(reversed(RECIPE.items())))  # key order does not matter
    assert fingerprint({**RECIPE, "max_epochs": 13}) != band.fingerprint


@pytest.mark.parametrize(
    ("changes", "names"),
    [
        ({"schema": 2}, "schema must be 1"),
        ({"fingerprint": "0" * 16}, "is not the fingerprint of its 'recipe'"),
        ({"seeds": []}, "'seeds' must be a non-empty list of integers"),
        ({"curves": {"train/loss": {"fraction": [1.0], "mean": [1.0], "spread": [0.0]}}}, "at least 'val/knn_top1'"),
        ({"curves": {"val/knn_top1": {"fraction": [0.5, 0.25], "mean": [0.7, 0.8], "spread": [0, 0]}}}, "fraction must increase strictly"),
        ({"curves": {"val/knn_top1": {"fraction": [0.5], "mean": [math.nan], "spread": [0]}}}, "mean[0] must be a finite number"),
        ({"curves": {"val/knn_top1": {"fraction": [0.5], "mean": [0.7], "spread": [-1]}}}, "spread must be >= 0"),
        ({"curves": {"val/knn_top1": {"fraction": [0.5, 1.0], "mean": [0.7], "spread": [0]}}}, "non-empty lists of one length"),
        ({"effective_lr": "fast"}, "effective_lr must be a finite number"),
    ],
)
def test_a_malformed_band_is_one_line_naming_the_file_and_field(changes: dict, names: str) -> None:
    with pytest.raises(BandError) as error:
        parse_band(json.loads(json.dumps(a_band(**changes))), "bands/simclr.default.json")
    assert names in str(error.value) and str(error.value).startswith("bands/simclr.default.json") and "\n" not in str(error.value)


def test_load_bands_keeps_the_valid_files_and_names_each_bad_one(tmp_path: Path) -> None:
    (tmp_path / "good.json").write_text(json.dumps(a_band()))
    (tmp_path / "truncated.json").write_text(json.dumps(a_band())[:50])
    (tmp_path / "list.json").write_text("[1, 2]")
    bands, problems = load_bands(tmp_path)
    assert [b.fingerprint for b in bands] == [fingerprint(RECIPE)]
    assert len(problems) == 2 and "list.json: a band file holds one JSON object" in problems[0] and "truncated.json: not a readable JSON" in problems[1]
    assert matching_band(bands, RECIPE) is bands[0] and matching_band(bands, {**RECIPE, "method": "byol"}) is None
    assert load_bands(tmp_path / "absent") == ([], [])
    with pytest.raises(BandError, match="truncated.json"):
        read_band(tmp_path / "truncated.json")


def test_a_deeply_nested_band_file_is_one_line_not_a_recursion_error(tmp_path: Path) -> None:
    (tmp_path / "deep.json").write_text("[" * 200_000)
    with pytest.raises(BandError, match=r"deep.json: not a readable JSON file"):
        read_band(tmp_path / "deep.json")


def test_curve_interpolates_between_points_and_stays_silent_beyond_its_ends() -> None:
    curve = Curve((0.2, 0.4), (0.6, 0.8), (0.01, 0.03))
    assert curve.at(0.3) == pytest.approx((0.7, 0.02))
    assert curve.at(0.2) == (0.6, 0.01) and curve.at(0.19) == (0.6, 0.01)  # within reach of the first point
    assert curve.at(0.1) is None and curve.at(0.5) is None


def test_band_curves_are_mean_and_sample_spread_over_runs_at_shared_fractions() -> None:
    knn = [[0.60, 0.70, 0.80], [0.62, 0.74, 0.81], [0.58, 0.69, 0.79]]  # three seeds, evaluated at steps 20, 40, 120 of 120
    histories = []
    for seed, values in enumerate(knn):
        records = [{"step": s, "epoch": 0, "train/loss": 5.0 - s / 60 + seed * 0.1} for s in range(10, 121, 10)]
        records += [{"step": s, "epoch": 0, "val/knn_top1": v} for s, v in zip((20, 40, 120), values, strict=True)]
        histories.append((records, 120))
    curves = band_curves(histories, loss_bins=4)
    assert curves["val/knn_top1"].fraction == (round(20 / 120, 4), round(40 / 120, 4), 1.0)
    assert curves["val/knn_top1"].mean == pytest.approx([statistics.fmean(c) for c in zip(*knn, strict=True)])
    assert curves["val/knn_top1"].spread == pytest.approx([statistics.stdev(c) for c in zip(*knn, strict=True)])
    loss = curves["train/loss"]  # 4 slices of 30 steps: steps 10-30 in the first, ...; the seeds differ by 0.1 each
    assert loss.fraction == (0.25, 0.5, 0.75, 1.0)
    assert loss.mean[0] == pytest.approx(statistics.fmean([5.0 - s / 60 for s in (10, 20, 30)]) + 0.1)
    assert loss.spread[0] == pytest.approx(0.1)
    assert "val/rankme" not in curves  # not logged by these runs


def test_the_shipped_bands_are_valid_and_name_their_own_recipe() -> None:
    bands, problems = load_bands(PACKAGE_BANDS)
    assert problems == [] and (PACKAGE_BANDS / "simclr.default.json").is_file()  # the default recipe's band ships
    for path in PACKAGE_BANDS.glob("*.json"):
        band = read_band(path)
        assert path.name.startswith(f"{band.recipe['method']}.") and len(band.seeds) >= 3  # two seeds' bands false-alarm (docs/planning.md)
        assert band.curves["val/knn_top1"].fraction[0] <= 0.25  # an evaluation early enough for the alarm


@pytest.mark.slow
def test_the_bench_dry_run_writes_a_valid_band_of_its_tiny_recipe(tmp_path: Path) -> None:
    """scripts/bench_reference.py --dry-run: 2 seeds of a 4-epoch tiny SimCLR, a band file that reads back, the table printed."""
    import subprocess
    import sys

    from tests.fixtures import REPO

    done = subprocess.run(
        [sys.executable, "scripts/bench_reference.py", "--dry-run", "--out", str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stderr[-2000:]
    band = read_band(tmp_path / "bands" / "simclr.default.json")
    assert band.seeds == (0, 1) and band.recipe["train_limit"] == 256 and band.recipe["max_epochs"] == 4
    assert band.curves["val/knn_top1"].fraction == (0.25, 0.5, 0.75, 1.0)  # evaluated every epoch of 4
    assert "| simclr | quick | 2 | 25 %:" in done.stdout
