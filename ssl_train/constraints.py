"""The constraint vocabulary of constructor annotations: `lr: Annotated[float, Number(low=0, open_low=True)]`, or the names
below (`temperature: Temperature`). validate.py reads them from the signatures, so the rule of a setting lives beside it."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any


@dataclass(frozen=True)
class Number:
    """An int or a finite float in [low, high] (an open end where `open_low` / `open_high`); None where `nullable`."""

    integer: bool = False
    low: float = -math.inf
    high: float = math.inf
    open_low: bool = False
    open_high: bool = False
    nullable: bool = False

    def problem(self, value: Any) -> str | None:
        """None if `value` satisfies the rule, else what it must be ('an integer >= 1')."""
        if value is None:
            return None if self.nullable else "a value (not null)"
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (self.integer and not isinstance(value, int)):
            return self.describe()
        inside = math.isfinite(value) and self.low <= value <= self.high
        on_open_end = (self.open_low and value == self.low) or (self.open_high and value == self.high)
        return None if inside and not on_open_end else self.describe()

    def describe(self) -> str:
        """What a value must be: 'an integer >= 1', 'a finite number in (0, 1]'."""
        return f"{'an integer' if self.integer else 'a finite number'}{self._range()}"

    def _range(self) -> str:
        if self.low == -math.inf and self.high == math.inf:
            return ""
        if self.high == math.inf:
            return f" {'>' if self.open_low else '>='} {self.low:g}"
        return f" in {'(' if self.open_low else '['}{self.low:g}, {self.high:g}{')' if self.open_high else ']'}"


TEMPERATURE = Number(low=0, high=100, open_low=True)  # softmax temperatures live in 0.01-1; above 100 every logit is ~0
# Upper ends for values whose absurd magnitudes (1e12, 2.5e38: an exponent gone wrong) would otherwise start a run that
# diverges, never warms up, or is all one loss term. Each bound is far above every recipe here:
LEARNING_RATE = Number(low=0, high=100, open_low=True)  # base LRs in configs/ are 5e-5-1.25 (before batch scaling)
WEIGHT_DECAY = Number(low=0, high=10)  # recipes use 1e-6-0.4 (DINO's weight_decay_end)
WARMUP_EPOCHS = Number(low=0, high=1000)  # 10-40 in the reference ViT recipes (800-1600 epochs); a longer warm-up is a typo
LOSS_WEIGHT = Number(low=0, high=1000)  # VICReg's 25 is the largest loss weight a recipe uses
POSITIVE_INT, COUNT, POSITIVE, NON_NEGATIVE, FRACTION = (
    Number(integer=True, low=1),
    Number(integer=True, low=0),
    Number(low=0, open_low=True),
    Number(low=0),
    Number(low=0, high=1),
)
OPEN_FRACTION = Number(low=0, high=1, open_low=True, open_high=True)
SEED = Number(integer=True, low=0, high=2**32 - 1)  # numpy's seed range
LIMIT = Number(integer=True, low=1, nullable=True)  # an optional cap (samples, queries); None: no cap
BELOW_ONE = Number(low=0, high=1, open_high=True)  # a rate where 1 would drop or smooth everything
ABOVE_ZERO = Number(low=0, high=1, open_low=True)  # a share where 0 would keep nothing


@dataclass(frozen=True)
class Check:
    """A rule that is not a range: `test(value)` says whether it holds, `allowed` what the value must be."""

    test: Callable[[Any], bool]
    allowed: str

    def problem(self, value: Any) -> str | None:
        """None if `value` passes the test, else what it must be."""
        return None if self.test(value) else self.allowed


@dataclass(frozen=True)
class FieldsOf:
    """Marks a mapping parameter whose keys are the fields of `recipe` (a dataclass): each is checked by its annotation."""

    recipe: type


@dataclass(frozen=True)
class Settings:
    """Rules a constructor places on the settings of the component it is given (a predictor must name its width)."""

    rules: Mapping[str, Number] = field(default_factory=dict)


def _items_pass(value: Any, item: Number) -> bool:
    return isinstance(value, list | tuple) and bool(value) and all(item.problem(v) is None for v in value)


def list_of(item: Number) -> Check:
    """A non-empty list whose every item satisfies `item` (a grid of L2 strengths, the k of recall@k)."""
    return Check(lambda value: _items_pass(value, item), f"a non-empty list, each item {item.describe()}")


def range_of(item: Number) -> Check:
    """A pair [low, high] with low <= high, both satisfying `item` (a crop scale, a mask ratio range)."""
    return Check(
        lambda value: _items_pass(value, item) and len(value) == 2 and value[0] <= value[1],
        f"a pair [low, high] with low <= high, each {item.describe()}",
    )


CROP_SCALE = range_of(Number(low=0, high=1, open_low=True))
POSITIVE_INTS = list_of(POSITIVE_INT)
NEIGHBOURS = Check(lambda v: POSITIVE_INT.problem(v) is None or _items_pass(v, POSITIVE_INT), "an integer >= 1 or a list of them")

Temperature = Annotated[float, TEMPERATURE]
LearningRate = Annotated[float, LEARNING_RATE]
WeightDecay = Annotated[float, WEIGHT_DECAY]
LossWeight = Annotated[float, LOSS_WEIGHT]
PositiveInt = Annotated[int, POSITIVE_INT]
Count = Annotated[int, COUNT]
Positive = Annotated[float, POSITIVE]
NonNegative = Annotated[float, NON_NEGATIVE]
Fraction = Annotated[float, FRACTION]
OpenFraction = Annotated[float, OPEN_FRACTION]
Real = Annotated[float, Number()]  # any finite number (a log ratio)
WarmupEpochs = Annotated[float, WARMUP_EPOCHS]
OptionalWeightDecay = Annotated[float | None, Number(low=0, high=10, nullable=True)]
Seed = Annotated[int, SEED]
Limit = Annotated[int | None, LIMIT]
BelowOne = Annotated[float, BELOW_ONE]
AboveZero = Annotated[float, ABOVE_ZERO]
CropScale = Annotated[tuple[float, float], CROP_SCALE]
Widths = Annotated[tuple[int, ...], POSITIVE_INTS]
PositiveInts = Annotated[Sequence[int], POSITIVE_INTS]  # shots per class, the k of recall@k
Seeds = Annotated[Sequence[int], list_of(SEED)]
L2Grid = Annotated[Sequence[float], list_of(Number(low=0, high=1e6))]  # L2 strengths to search; 1e6 flattens any probe
FractionsOfData = Annotated[Sequence[float], list_of(Number(low=0, high=1, open_low=True))]  # shares of a split to keep
FractionRange = Annotated[Sequence[float], range_of(FRACTION)]  # a range of shares to draw from (block scales)
MaskRatioRange = Annotated[Sequence[float], range_of(BELOW_ONE)]  # shares of patches to mask: 1 would mask every one
PositiveRange = Annotated[Sequence[float], range_of(POSITIVE)]  # a range of positive numbers (aspect ratios)
Neighbours = Annotated[Sequence[int], NEIGHBOURS]
ViewCount = Annotated[int, Number(integer=True, low=2)]  # a spread needs two views of an image
TokenLength = Annotated[int, Number(integer=True, low=3)]  # [BOS], one token, [EOS]
