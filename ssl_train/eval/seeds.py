"""Numbers with their noise: mean ± std and a Student-t interval over seeds, the paired difference of two rows run on
the same seeds, and a plain verdict. Used by the sweep summary (ssl_train.sweep) and scripts/bench_quality.py."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

CONFIDENCE = 0.95


def _continued_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of the regularised incomplete beta function (modified Lentz; Numerical Recipes 6.4)."""
    tiny, c, d = 1e-300, 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    result = d
    for m in range(1, 300):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)), -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            result *= c * d
        if abs(c * d - 1.0) < 1e-15:
            break
    return result


def regularized_beta(a: float, b: float, x: float) -> float:
    """I_x(a, b), the regularised incomplete beta function, for a, b > 0 and 0 <= x <= 1."""
    if x <= 0.0 or x >= 1.0:
        return 0.0 if x <= 0.0 else 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _continued_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _continued_fraction(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with `df` degrees of freedom."""
    tail = 0.5 * regularized_beta(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The t with P(T <= t) = p (0.5 < p < 1), by bisection on t_cdf: t_quantile(0.975, 2) = 4.3027."""
    low, high = 0.0, 1.0
    while t_cdf(high, df) < p:
        high *= 2.0
    for _ in range(200):
        middle = (low + high) / 2.0
        low, high = (middle, high) if t_cdf(middle, df) < p else (low, middle)
    return (low + high) / 2.0


@dataclass(frozen=True)
class SeedSummary:
    """n values over seeds: their mean, sample std (n - 1) and the half width of the `confidence` t interval of the mean
    (nan with one value: no interval from one seed)."""

    n: int
    mean: float
    std: float
    half_width: float

    @property
    def low(self) -> float:
        return self.mean - self.half_width

    @property
    def high(self) -> float:
        return self.mean + self.half_width


def summarize(values: Sequence[float], confidence: float = CONFIDENCE) -> SeedSummary:
    """Mean, std (n - 1 denominator) and the Student-t interval half width t_{(1+c)/2, n-1} * std / sqrt(n)."""
    n = len(values)
    if n == 0:
        raise ValueError("summarize needs at least one value")
    mean = math.fsum(values) / n
    if n == 1:
        return SeedSummary(1, mean, math.nan, math.nan)
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
    return SeedSummary(n, mean, std, t_quantile((1.0 + confidence) / 2.0, n - 1) * std / math.sqrt(n))


def paired_difference(a: Mapping[int, float], b: Mapping[int, float], confidence: float = CONFIDENCE) -> SeedSummary | None:
    """a - b seed by seed on the seeds both were run on, summarised (None when they share no seed)."""
    shared = sorted(set(a) & set(b))
    return summarize([a[s] - b[s] for s in shared], confidence) if shared else None


def verdict(difference: SeedSummary, scale: float = 100.0, unit: str = "points") -> str:
    """'within seed noise' when the interval holds 0, else 'better by X ± Y' / 'worse by X ± Y' (in `unit`, values x `scale`)."""
    if difference.n < 2:
        return "one seed: no interval"
    if difference.low <= 0.0 <= difference.high:
        return "within seed noise"
    word = "better" if difference.mean > 0 else "worse"
    return f"{word} by {abs(difference.mean) * scale:.2f} ± {difference.half_width * scale:.2f} {unit}"


def mean_std(summary: SeedSummary, digits: int = 4) -> str:
    """'0.8355 ± 0.0042' (the mean alone for one seed)."""
    return f"{summary.mean:.{digits}f}" if summary.n < 2 else f"{summary.mean:.{digits}f} ± {summary.std:.{digits}f}"


def interval(summary: SeedSummary, digits: int = 4) -> str:
    """'[0.8251, 0.8459]' (the 95 % t interval of the mean), or '-' for one seed."""
    return "-" if summary.n < 2 else f"[{summary.low:.{digits}f}, {summary.high:.{digits}f}]"
