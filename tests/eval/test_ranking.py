"""Rank correlations (ssl_train.eval.ranking) against hand-computed values with ties, and against scipy when installed."""

from __future__ import annotations

import math
import random

import pytest

from ssl_train.eval.ranking import average_ranks, kendall_tau, spearman


def test_average_ranks_share_ties() -> None:
    assert average_ranks([10.0, 20.0, 20.0, 30.0]) == [1.0, 2.5, 2.5, 4.0]
    assert average_ranks([3.0, 1.0, 2.0, 1.0]) == [4.0, 1.5, 3.0, 1.5]


def test_hand_computed_with_a_tie() -> None:
    # ranks of x [1, 2.5, 2.5, 4], of y [1, 3, 2, 4]: rho = 4.5 / sqrt(4.5 * 5) = 3 / sqrt(10)
    x, y = [1.0, 2.0, 2.0, 4.0], [1.0, 3.0, 2.0, 4.0]
    assert spearman(x, y) == pytest.approx(3 / math.sqrt(10))
    # 5 concordant pairs, 0 discordant, one pair tied in x only: tau-b = 5 / sqrt((6 - 1) * 6)
    assert kendall_tau(x, y) == pytest.approx(5 / math.sqrt(30))


def test_hand_computed_disagreement() -> None:
    x, y = [1.0, 2.0, 3.0], [3.0, 1.0, 2.0]  # d = [-2, 1, 1]: rho = 1 - 6 * 6 / (3 * 8); 1 concordant, 2 discordant pairs
    assert spearman(x, y) == pytest.approx(-0.5)
    assert kendall_tau(x, y) == pytest.approx(-1 / 3)
    assert spearman(x, x[::-1]) == pytest.approx(-1.0) and kendall_tau(x, x[::-1]) == pytest.approx(-1.0)


def test_undefined_cases_are_nan_and_lengths_must_match() -> None:
    assert math.isnan(spearman([1.0], [2.0])) and math.isnan(kendall_tau([1.0], [2.0]))
    assert math.isnan(spearman([1.0, 1.0, 1.0], [1.0, 2.0, 3.0])) and math.isnan(kendall_tau([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]))
    with pytest.raises(ValueError, match="one value of each per run"):
        spearman([1.0, 2.0], [1.0])


def test_agrees_with_scipy_on_random_tied_data() -> None:
    stats = pytest.importorskip("scipy.stats")
    rng = random.Random(0)
    for _ in range(20):
        n = rng.randint(3, 12)
        x = [float(rng.randint(0, 4)) for _ in range(n)]  # many ties
        y = [rng.choice([0.5, 1.5, 2.5]) + rng.randint(0, 1) for _ in range(n)]
        rho, tau = stats.spearmanr(x, y).statistic, stats.kendalltau(x, y).statistic  # tau-b, scipy's default
        assert spearman(x, y) == pytest.approx(rho, nan_ok=True, abs=1e-12)
        assert kendall_tau(x, y) == pytest.approx(tau, nan_ok=True, abs=1e-12)
