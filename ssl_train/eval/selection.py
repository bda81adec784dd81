"""Selecting runs and checkpoints, with labels (the linear probe) or without (RankMe, LiDAR, uniformity, alignment):
which way each criterion is better, its metrics.json keys, the best run of a sweep by each, and how well each
label-free proxy ranked the runs against the probe (Spearman, Kendall)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ssl_train.eval.ranking import kendall_tau, spearman
from ssl_train.metrics import (
    LINEAR_TOP1,
    ONLINE_ALIGNMENT,
    ONLINE_LIDAR,
    ONLINE_RANKME,
    ONLINE_UNIFORMITY,
    REPR_ALIGNMENT,
    REPR_LIDAR,
    VAL_ALIGNMENT,
    VAL_KNN_TOP1,
    VAL_LIDAR,
    VAL_ONLINE_TOP1,
    VAL_RANKME,
    VAL_UNIFORMITY,
)

REPR_RANKME, REPR_UNIFORMITY = "repr_rankme", "repr_uniformity"  # eval=repr's scores (the names ssl_train.metrics lacks)


@dataclass(frozen=True)
class Criterion:
    """A score to select by: its name, the key logged during training (a checkpoint monitor), the metrics.json keys
    holding its end-of-run value (the final encoder's evaluation first, the last online evaluation second), and which way
    is better."""

    name: str
    monitor: str
    keys: tuple[str, ...]
    higher_is_better: bool

    @property
    def mode(self) -> str:
        return "max" if self.higher_is_better else "min"

    def key_in(self, rows: Sequence[Mapping[str, Any]]) -> str | None:
        """The first of `keys` that some row holds as a finite number: one key for the whole sweep, never a mix."""
        return next((key for key in self.keys if any(finite(row.get(key)) is not None for row in rows)), None)


PROBE = Criterion("linear probe top-1", VAL_ONLINE_TOP1, (LINEAR_TOP1,), higher_is_better=True)
PROXIES = (  # label-free: effective rank (Garrido et al. 2023; Thilak et al. 2024), Wang & Isola (2020)
    Criterion("RankMe", VAL_RANKME, (REPR_RANKME, ONLINE_RANKME), higher_is_better=True),
    Criterion("LiDAR", VAL_LIDAR, (REPR_LIDAR, ONLINE_LIDAR), higher_is_better=True),
    Criterion("uniformity", VAL_UNIFORMITY, (REPR_UNIFORMITY, ONLINE_UNIFORMITY), higher_is_better=False),
    Criterion("alignment", VAL_ALIGNMENT, (REPR_ALIGNMENT, ONLINE_ALIGNMENT), higher_is_better=False),
)
# what callbacks.model_checkpoint.monitor may name, with the mode `mode: auto` takes; all but val/online_top1 (logged by
# the validation loop) are logged by callbacks.online_eval at the end of the epochs it evaluates
CHECKPOINT_MODES = {VAL_ONLINE_TOP1: "max", VAL_KNN_TOP1: "max", **{c.monitor: c.mode for c in PROXIES}}
ONLINE_EVAL_MONITORS = frozenset(CHECKPOINT_MODES) - {VAL_ONLINE_TOP1}


def finite(value: Any) -> float | None:
    """A metrics.json value as a float when it is a finite number (not a bool, a string or NaN), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


@dataclass(frozen=True)
class Selection:
    """The best job by one criterion and, for a label-free proxy with probe scores beside it, how well the proxy ranked
    the `n` jobs holding both against the probe (rho, tau > 0: the proxy orders them as the probe does; nan: n < 2 or a
    constant score)."""

    criterion: Criterion
    key: str
    job: str
    value: float
    n: int
    spearman: float = math.nan
    kendall: float = math.nan


def best_row(rows: Sequence[Mapping[str, Any]], key: str, higher_is_better: bool) -> Mapping[str, Any] | None:
    """The row with the best finite `key` (the first in job order on a tie), or None when no row has one."""
    scored = [row for row in rows if finite(row.get(key)) is not None]
    if not scored:
        return None
    sign = 1.0 if higher_is_better else -1.0
    return max(scored, key=lambda row: sign * float(row[key]))  # max keeps the first of equal values


def select(rows: Sequence[Mapping[str, Any]]) -> list[Selection]:
    """One Selection per criterion some job has a value for: the probe first, then each label-free proxy, ranked against
    the probe where jobs hold both (oriented so that a better proxy value counts as a better run)."""
    chosen: list[Selection] = []
    probe_key = PROBE.key_in(rows)
    for criterion in (PROBE, *PROXIES):
        key = criterion.key_in(rows)
        if key is None:
            continue
        best = best_row(rows, key, criterion.higher_is_better)
        assert best is not None  # key_in found a finite value
        scored = [float(row[key]) for row in rows if finite(row.get(key)) is not None]
        selection = Selection(criterion, key, str(best["job"]), float(best[key]), len(scored))
        if criterion is not PROBE and probe_key is not None:
            both = [row for row in rows if finite(row.get(key)) is not None and finite(row.get(probe_key)) is not None]
            sign = 1.0 if criterion.higher_is_better else -1.0
            proxy, probe = [sign * float(row[key]) for row in both], [float(row[probe_key]) for row in both]
            selection = Selection(criterion, key, selection.job, selection.value, len(both), spearman(proxy, probe), kendall_tau(proxy, probe))
        chosen.append(selection)
    return chosen
