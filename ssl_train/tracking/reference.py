"""Reference bands: a shipped recipe's online kNN top-1, training loss and representation metrics against the fraction
of training, mean and spread over seeds (written by scripts/bench_reference.py, read as data by tracking.alarm and the
report). A band names the recipe it describes by a fingerprint of the config keys listed in callbacks.reference_alarm.recipe."""

from __future__ import annotations

import hashlib
import json
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ssl_train.metrics import TRAIN_LOSS, VAL_EMBEDDING_STD, VAL_KNN_TOP1, VAL_RANKME

SCHEMA = 1
ALARM_KEY = "reference_alarm"  # the early alarm's line in a history.jsonl record (tracking.alarm writes it, the report shows it)
BAND_FILE = "reference_band.json"  # the matched band's copy in a run directory (callbacks.reference_alarm.band_copy), for the report
PACKAGE_BANDS = Path(__file__).resolve().parents[1] / "references"  # ssl_train/references/<method>.<data>.json (package data)
EVALUATED = (VAL_KNN_TOP1, VAL_RANKME, VAL_EMBEDDING_STD)  # logged at each online evaluation: one point per evaluation
REQUIRED = VAL_KNN_TOP1


class BandError(ValueError):
    """A band file that is not a valid band (the message names the file and what is wrong)."""


def fingerprint(recipe: Mapping[str, Any]) -> str:
    """What makes two runs the same recipe, as 16 hex digits: a hash of the recipe keys' values (key order ignored)."""
    return hashlib.sha256(json.dumps(dict(recipe), sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Curve:
    """Mean and spread (standard deviation over seeds) of one quantity at increasing fractions of training."""

    fraction: tuple[float, ...]
    mean: tuple[float, ...]
    spread: tuple[float, ...]

    def at(self, fraction: float, reach: float = 0.02) -> tuple[float, float] | None:
        """(mean, spread) at `fraction`, linear between the two nearest points; None outside the curve (`reach` beyond its ends)."""
        xs = self.fraction
        if not xs or fraction < xs[0] - reach or fraction > xs[-1] + reach:
            return None
        if fraction <= xs[0]:
            return self.mean[0], self.spread[0]
        for i in range(1, len(xs)):
            if fraction <= xs[i]:
                w = (fraction - xs[i - 1]) / (xs[i] - xs[i - 1])
                return (1 - w) * self.mean[i - 1] + w * self.mean[i], (1 - w) * self.spread[i - 1] + w * self.spread[i]
        return self.mean[-1], self.spread[-1]

    def to_json(self) -> dict[str, list[float]]:
        return {"fraction": list(self.fraction), "mean": list(self.mean), "spread": list(self.spread)}


@dataclass(frozen=True)
class Band:
    """One recipe's reference: its recipe keys, their fingerprint, the seeds, the curves and what the runs measured."""

    recipe: dict[str, Any]
    seeds: tuple[int, ...]
    curves: dict[str, Curve]
    effective_lr: float | None = None
    warmup_fraction: float | None = None
    images_per_s: float | None = None
    measured_on: str = ""
    command: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.recipe)

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "fingerprint": self.fingerprint,
            "recipe": self.recipe,
            "seeds": list(self.seeds),
            "measured_on": self.measured_on,
            "command": self.command,
            "effective_lr": self.effective_lr,
            "warmup_fraction": self.warmup_fraction,
            "images_per_s": self.images_per_s,
            "curves": {name: curve.to_json() for name, curve in self.curves.items()},
            **self.extra,
        }


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise BandError(f"{where} must be a finite number, got {value!r}")
    return float(value)


def _optional_number(data: Mapping[str, Any], key: str, where: str) -> float | None:
    return None if data.get(key) is None else _number(data[key], f"{where}: {key}")


def _curve(data: Any, where: str) -> Curve:
    if not isinstance(data, Mapping) or not all(isinstance(data.get(k), list) for k in ("fraction", "mean", "spread")):
        raise BandError(f"{where} must hold lists 'fraction', 'mean' and 'spread'")
    columns = [[_number(v, f"{where}.{k}[{i}]") for i, v in enumerate(data[k])] for k in ("fraction", "mean", "spread")]
    fraction, mean, spread = columns
    if not fraction or not len(fraction) == len(mean) == len(spread):
        raise BandError(f"{where}: 'fraction', 'mean' and 'spread' must be non-empty lists of one length")
    if any(not 0 < f <= 1 for f in fraction) or any(b <= a for a, b in zip(fraction, fraction[1:], strict=False)):
        raise BandError(f"{where}.fraction must increase strictly within (0, 1]")
    if any(s < 0 for s in spread):
        raise BandError(f"{where}.spread must be >= 0")
    return Curve(tuple(fraction), tuple(mean), tuple(spread))


def parse_band(data: Any, where: str) -> Band:
    """A Band from a band file's parsed JSON, validated; BandError naming `where` and the bad field otherwise."""
    if not isinstance(data, Mapping):
        raise BandError(f"{where}: a band file holds one JSON object")
    if data.get("schema") != SCHEMA:
        raise BandError(f"{where}: schema must be {SCHEMA}, got {data.get('schema')!r}")
    recipe, curves, seeds = data.get("recipe"), data.get("curves"), data.get("seeds")
    if not isinstance(recipe, Mapping) or not recipe:
        raise BandError(f"{where}: 'recipe' must be a non-empty object (the config keys the band describes)")
    if data.get("fingerprint") != fingerprint(recipe):
        raise BandError(f"{where}: 'fingerprint' {data.get('fingerprint')!r} is not the fingerprint of its 'recipe' ({fingerprint(recipe)})")
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise BandError(f"{where}: 'seeds' must be a non-empty list of integers")
    if not isinstance(curves, Mapping) or REQUIRED not in curves:
        raise BandError(f"{where}: 'curves' must be an object holding at least {REQUIRED!r}")
    for key in ("measured_on", "command"):
        if not isinstance(data.get(key, ""), str):
            raise BandError(f"{where}: {key!r} must be a string")
    return Band(
        recipe=dict(recipe),
        seeds=tuple(seeds),
        curves={str(name): _curve(curve, f"{where}: curves[{name!r}]") for name, curve in curves.items()},
        effective_lr=_optional_number(data, "effective_lr", where),
        warmup_fraction=_optional_number(data, "warmup_fraction", where),
        images_per_s=_optional_number(data, "images_per_s", where),
        measured_on=str(data.get("measured_on", "")),
        command=str(data.get("command", "")),
    )


def read_band(path: Path) -> Band:
    """The band in `path`; BandError (one line naming the file) when it is not readable JSON or not a valid band."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError) as error:  # ValueError: JSONDecodeError, UnicodeDecodeError; RecursionError: too deeply nested
        raise BandError(f"{path}: not a readable JSON file ({str(error)[:80] or type(error).__name__})") from None
    return parse_band(data, str(path))


def load_bands(directory: Path) -> tuple[list[Band], list[str]]:
    """Every valid band in `directory` (*.json) and one problem line per file that is not one."""
    bands, problems = [], []
    for path in sorted(directory.glob("*.json")) if directory.is_dir() else []:
        try:
            bands.append(read_band(path))
        except BandError as error:
            problems.append(str(error))
    return bands, problems


def matching_band(bands: Sequence[Band], recipe: Mapping[str, Any]) -> Band | None:
    """The band whose fingerprint is the recipe's, if any."""
    wanted = fingerprint(recipe)
    return next((band for band in bands if band.fingerprint == wanted), None)


def spread_of(values: Sequence[float]) -> float:
    """Sample standard deviation over seeds (0 for one seed)."""
    return statistics.stdev(values) if len(values) > 1 else 0.0


def evaluated_curve(runs: Sequence[Sequence[tuple[float, float]]], digits: int = 4) -> Curve | None:
    """Mean and spread at the fractions every run evaluated at (each run: (fraction, value) points)."""
    by_run = [{round(f, digits): v for f, v in points} for points in runs]
    shared = sorted(set.intersection(*(set(r) for r in by_run))) if by_run else []
    shared = [f for f in shared if 0 < f <= 1]
    if not shared:
        return None
    values = [[r[f] for r in by_run] for f in shared]
    return Curve(tuple(shared), tuple(statistics.fmean(v) for v in values), tuple(spread_of(v) for v in values))


def binned_curve(runs: Sequence[Sequence[tuple[float, float]]], bins: int) -> Curve | None:
    """Step values (the loss) averaged per run in `bins` equal slices of training, then mean and spread over runs,
    at each slice's end; a slice some run has no point in is left out."""
    edges = [(i + 1) / bins for i in range(bins)]
    fractions, means, spreads = [], [], []
    for i, end in enumerate(edges):
        start = i / bins
        per_run = [[v for f, v in points if start < f <= end + 1e-9] for points in runs]
        if not runs or any(not values for values in per_run):
            continue
        averages = [statistics.fmean(values) for values in per_run]
        fractions.append(round(end, 4))
        means.append(statistics.fmean(averages))
        spreads.append(spread_of(averages))
    return Curve(tuple(fractions), tuple(means), tuple(spreads)) if fractions else None


def run_points(records: Sequence[Mapping[str, Any]], key: str, total_steps: int) -> list[tuple[float, float]]:
    """(fraction of training, value) of one logged quantity in a run's history.jsonl records."""
    points = []
    for record in records:
        value = record.get(key)
        if isinstance(value, int | float) and math.isfinite(value) and "step" in record:
            points.append((float(record["step"]) / total_steps, float(value)))
    return sorted(points)


def band_curves(histories: Sequence[tuple[Sequence[Mapping[str, Any]], int]], loss_bins: int) -> dict[str, Curve]:
    """The curves of a band from the runs' (history records, total optimizer steps)."""
    curves: dict[str, Curve] = {}
    for key in EVALUATED:
        curve = evaluated_curve([run_points(records, key, total) for records, total in histories])
        if curve is not None:
            curves[key] = curve
    loss = binned_curve([run_points(records, TRAIN_LOSS, total) for records, total in histories], loss_bins)
    if loss is not None:
        curves[TRAIN_LOSS] = loss
    return curves
