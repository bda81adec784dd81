"""Seed statistics (ssl_train.eval.seeds): Student-t quantiles, mean ± std and interval, paired differences, verdicts."""

from __future__ import annotations

import math

import pytest

from ssl_train.eval.seeds import interval, mean_std, paired_difference, summarize, t_cdf, t_quantile, verdict


def test_t_quantiles_match_the_printed_table() -> None:
    # two-sided 95 %: 12.706 (1 df), 4.303 (2), 2.776 (4), 2.262 (9), 2.042 (30); the normal's 1.960 in the limit
    for df, table in ((1, 12.706), (2, 4.303), (4, 2.776), (9, 2.262), (30, 2.042), (10_000, 1.960)):
        assert t_quantile(0.975, df) == pytest.approx(table, abs=5e-4)
    assert t_cdf(0.0, 3) == pytest.approx(0.5) and t_cdf(-1.0, 1) == pytest.approx(0.25)  # Cauchy: atan(-1) / pi + 1/2


def test_t_matches_scipy() -> None:
    stats = pytest.importorskip("scipy.stats")
    for df in (1, 2, 3, 5, 7, 20, 200):
        assert t_quantile(0.975, df) == pytest.approx(stats.t.ppf(0.975, df), rel=1e-10)
        assert t_cdf(-1.7, df) == pytest.approx(stats.t.cdf(-1.7, df), abs=1e-12)


def test_summary_of_three_seeds_by_hand() -> None:
    s = summarize([0.80, 0.82, 0.84])  # mean 0.82, std 0.02, half width 4.3027 * 0.02 / sqrt(3) = 0.04968
    assert (s.n, s.mean, s.std) == (3, pytest.approx(0.82), pytest.approx(0.02))
    assert s.half_width == pytest.approx(4.302653 * 0.02 / math.sqrt(3), rel=1e-6)
    assert mean_std(s) == "0.8200 ± 0.0200" and interval(s) == "[0.7703, 0.8697]"
    one = summarize([0.5])
    assert one.n == 1 and math.isnan(one.std) and mean_std(one) == "0.5000" and interval(one) == "-"
    with pytest.raises(ValueError):
        summarize([])


def test_paired_difference_and_verdicts_by_hand() -> None:
    a = {0: 0.80, 1: 0.82, 2: 0.84}
    noisy = paired_difference(a, {0: 0.78, 1: 0.81, 2: 0.81, 3: 0.90})  # seed 3 unshared; diffs .02 .01 .03: mean .02, std .01
    assert noisy is not None and noisy.n == 3 and noisy.mean == pytest.approx(0.02)
    assert noisy.half_width == pytest.approx(4.302653 * 0.01 / math.sqrt(3), rel=1e-6)  # 0.0248: the interval holds 0
    assert verdict(noisy) == "within seed noise"
    steady = paired_difference(a, {0: 0.78, 1: 0.799, 2: 0.821})  # diffs .02 .021 .019: std .001, half width .00248
    assert steady is not None and verdict(steady) == "better by 2.00 ± 0.25 points"
    worse = paired_difference({0: 0.78, 1: 0.799, 2: 0.821}, a)
    assert worse is not None and verdict(worse) == "worse by 2.00 ± 0.25 points"
    single = paired_difference(a, {1: 0.5})
    assert single is not None and verdict(single) == "one seed: no interval"
    assert paired_difference(a, {7: 0.5}) is None
