"""The constraint vocabulary of constructor annotations: `lr: Annotated[float, Number(low=0, open_low=True)]`, or the names
below (`temperature: Temperature`). validate.py reads them from the signatures, so the rule of a setting lives beside it."""

from __future__ import annotations

import math
from dataclasses import dataclass
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
        kind = "an integer" if self.integer else "a finite number"
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (self.integer and not isinstance(value, int)):
            return f"{kind}{self._range()}"
        inside = math.isfinite(value) and self.low <= value <= self.high
        on_open_end = (self.open_low and value == self.low) or (self.open_high and value == self.high)
        return None if inside and not on_open_end else f"{kind}{self._range()}"

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
