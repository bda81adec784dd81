"""Representation metrics on known cases: identical embeddings, uniform spread, rank, alignment."""

from __future__ import annotations

import logging
import math

import pytest
import torch

from ssl_train.eval.metrics import alignment, normalised_std, rankme, representation_metrics, uniformity


def test_identical_embeddings_uniformity_zero_and_collapse_warning(caplog: pytest.LogCaptureFixture) -> None:
    z = torch.ones(50, 8)
    assert uniformity(z) == pytest.approx(0.0, abs=1e-6)
    with caplog.at_level(logging.WARNING):
        result = representation_metrics(z)
    assert result["collapsed"] == 1.0 and result["embedding_std"] == pytest.approx(0.0, abs=1e-6)
    assert "representation collapse" in caplog.text


def test_spread_embeddings_are_uniform_and_full_rank() -> None:
    z = torch.randn(2000, 16, generator=torch.Generator().manual_seed(0))
    assert uniformity(z) < -3.0  # far from 0: points spread on the sphere
    assert rankme(z) > 15.0
    assert normalised_std(z) == pytest.approx(1 / math.sqrt(16), rel=0.1)
    assert representation_metrics(z)["collapsed"] == 0.0


def test_rankme_of_low_rank_matrix() -> None:
    g = torch.Generator().manual_seed(0)
    z = torch.randn(500, 3, generator=g) @ torch.randn(3, 32, generator=g)
    assert 2.0 < rankme(z) < 3.5


def test_alignment_matches_definition() -> None:
    a, b = torch.randn(10, 4), torch.randn(10, 4)
    na, nb = a / a.norm(dim=1, keepdim=True), b / b.norm(dim=1, keepdim=True)
    assert alignment(a, b) == pytest.approx(((na - nb).norm(dim=1) ** 2).mean().item(), abs=1e-6)
    assert alignment(a, 3 * a) == pytest.approx(0.0, abs=1e-6)
