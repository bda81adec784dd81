"""The raw-input and random-init baselines: computed like the trained probe, cached per dataset, shown in the summary;
the validation split that recipes are tuned on never touches test."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from ssl_train.data.datasets import EmbeddedFashionMNIST, carve_validation
from ssl_train.errors import UserError
from ssl_train.eval.baselines import RawInput, ResultCache, weights_fingerprint
from ssl_train.eval.linear_probe import LinearProbe
from ssl_train.eval.protocol import with_baselines
from ssl_train.eval.suite import evaluate_encoder
from ssl_train.run import run
from tests.fixtures import compose_config


def test_raw_input_probe_equals_the_probe_on_flattened_pixels() -> None:
    g = torch.Generator().manual_seed(0)
    images, labels = torch.randn(120, 1, 4, 4, generator=g), torch.arange(120) % 3
    images[:, 0, 0, 0] += labels * 6.0  # one informative pixel
    train, test = TensorDataset(images[:90], labels[:90]), TensorDataset(images[90:], labels[90:])
    probe = LinearProbe(l2_grid=[0.0, 1e-3], max_iter=30)
    through_encoder = evaluate_encoder(RawInput(), train, test, 3, {"linear": probe})
    direct = probe.evaluate_features(images[:90].flatten(1), labels[:90], images[90:].flatten(1), labels[90:], 3)
    assert through_encoder["linear_top1"] == direct["top1"] and direct["top1"] > 0.9


def test_cache_computes_once_per_key_and_survives_a_corrupt_entry(tmp_path: Path) -> None:
    calls: list[int] = []

    def compute() -> dict[str, float]:
        calls.append(1)
        return {"linear_top1": 0.5 + 0.1 * len(calls)}

    cache = ResultCache(tmp_path)
    first = cache.get_or_compute("raw_input", {"source": "a"}, compute)
    assert cache.get_or_compute("raw_input", {"source": "a"}, compute) == first and len(calls) == 1
    assert cache.get_or_compute("raw_input", {"source": "b"}, compute) != first and len(calls) == 2
    cache.path("raw_input", {"source": "a"}).write_text("{not json")
    assert cache.get_or_compute("raw_input", {"source": "a"}, compute)["linear_top1"] == pytest.approx(0.8) and len(calls) == 3
    assert ResultCache(None).get_or_compute("raw_input", {"source": "a"}, compute)["linear_top1"] == pytest.approx(0.9)


def test_weights_fingerprint_changes_with_any_weight() -> None:
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    before = weights_fingerprint(model)
    assert weights_fingerprint(nn.Linear(4, 2).requires_grad_(False)) != before
    same = nn.Linear(4, 2)
    same.load_state_dict(model.state_dict())
    assert weights_fingerprint(same) == before
    with torch.no_grad():
        same.weight[0, 0] += 1e-6
    assert weights_fingerprint(same) != before


def test_summary_names_both_baselines() -> None:
    line = with_baselines("linear probe top-1 0.8600", {"raw_input_linear_top1": 0.836, "random_init_linear_top1": 0.773})
    assert line == "linear probe top-1 0.8600 (raw pixels 0.8360, random-init encoder 0.7730)"
    assert with_baselines("x", {}) == "x"


def test_validation_split_is_carved_from_train_and_disjoint() -> None:
    splits = EmbeddedFashionMNIST(train_limit=200, test_limit=50).load()
    carved = carve_validation(splits, 0.25)
    assert len(carved.train) == 150 and len(carved.test) == 50 and carved.pretrain_set is carved.train
    train_ids = {int(i) for i in carved.train.indices}
    val_ids = {int(i) for i in carved.test.indices}
    assert not train_ids & val_ids and len(train_ids | val_ids) == 200
    assert torch.equal(carved.test[0][0], splits.train[sorted(val_ids)[0]][0])  # images from train, not from test
    with pytest.raises(UserError, match="data.validation_fraction"):
        carve_validation(splits, 1.0)


def test_run_reports_both_baselines_and_reuses_the_cache(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cache = tmp_path / "cache"
    overrides = ["pretrain=false", f"paths.cache_dir={cache}", "eval=[linear,knn]"]
    first = run(compose_config(overrides, tmp_path / "one"))
    assert {"raw_input_linear_top1", "raw_input_knn_k20_top1", "random_init_linear_top1"} <= first.keys()
    assert "raw pixels" in capsys.readouterr().out
    assert first["eval_split"] == "test"
    entries = sorted(p.name for p in cache.glob("*.json"))
    assert [n.split("-")[0] for n in entries] == ["random_init", "raw_input"]
    stamps = {p: p.stat().st_mtime_ns for p in cache.glob("*.json")}
    second = run(compose_config(overrides, tmp_path / "two"))
    assert {p: p.stat().st_mtime_ns for p in cache.glob("*.json")} == stamps  # read, not recomputed
    assert second["raw_input_linear_top1"] == first["raw_input_linear_top1"]
    pooled = run(compose_config([*overrides, "backbone.pool_size=1"], tmp_path / "pooled"))  # same weights, other features
    assert len(list(cache.glob("random_init-*.json"))) == 2 and pooled["raw_input_linear_top1"] == first["raw_input_linear_top1"]
    held_out = run(compose_config([*overrides, "data.validation_fraction=0.25"], tmp_path / "three"))
    assert held_out["eval_split"] == "validation" and len(list(cache.glob("raw_input-*.json"))) == 2
    assert json.loads((tmp_path / "three" / "metrics.json").read_text())["eval_split"] == "validation"


def test_raw_input_of_large_images_is_pooled_to_a_bounded_size() -> None:
    images = torch.arange(2 * 3 * 96 * 96, dtype=torch.float32).view(2, 3, 96, 96)
    features = RawInput(max_dim=4096)(images)
    assert features.shape == (2, 3 * 36 * 36)
    assert torch.allclose(features.view(2, 3, 36, 36).mean((2, 3)), images.mean((2, 3)), rtol=1e-4)  # pooled, not cropped
    assert RawInput()(torch.ones(2, 1, 28, 28)).shape == (2, 784)  # small images stay as they are


def test_probe_with_more_dimensions_than_samples_matches_the_wide_solution() -> None:
    from ssl_train.eval.linear_probe import LogisticRegressionProblem

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(30, 80, generator=g), torch.arange(30) % 3
    wide = LogisticRegressionProblem(x, y, 3)
    assert wide.basis.shape[1] <= 30  # the Gram route: at most n directions
    reference = LogisticRegressionProblem(torch.cat([x, torch.zeros(60, 80)]), torch.cat([y, y, y]), 3)  # n > d route, same span
    assert torch.allclose(wide.eigenvalues.sort().values, (reference.eigenvalues * 90 / 30).sort().values[-len(wide.eigenvalues) :], rtol=1e-3)
    model = wide.fit(1e-3, max_iter=200)
    assert (model(x).argmax(1) == y).float().mean() == 1.0  # separable in 80 dimensions
