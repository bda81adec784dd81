"""The two yardsticks every probe is read against, computed once per dataset and cached.

- raw input: the flattened, standardised input itself (pixels for images), probed with the same protocol;
  a representation a linear classifier reads worse than its input has not earned its training.
- random init: the very encoder the method starts from, before any training.

Both depend only on the data, the evaluation protocol and (for random init) the initial weights, so their
results are cached under `paths.cache_dir`, keyed by a hash of exactly those: a rerun pays for them once.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ssl_train.modalities import modality
from ssl_train.run_dir import replace_atomically  # a per-process staging file, never written through a symlink

log = logging.getLogger(__name__)

RAW_INPUT_EVALUATORS = ("linear", "knn", "image_retrieval")  # the representation metrics and the SGD probe say nothing about raw pixels


class RawInput(nn.Module):
    """The identity encoder: a batch of evaluation inputs as (N, D) float features, as the data's kind makes them
    (ssl_train.modalities: pixels, average-pooled to at most `max_dim` values for 96-224 px images so the probe stays
    tractable; the flattened sequence; the batch nodes' own features; a hashed bag of token n-grams of texts)."""

    def __init__(self, kind: str = "image", max_dim: int = 4096) -> None:
        super().__init__()
        self.kind, self.max_dim = modality(kind), max_dim

    def forward(self, x: Any) -> torch.Tensor:
        return self.kind.raw_features(x, self.max_dim)


def weights_fingerprint(module: nn.Module) -> str:
    """A short hash of a module's parameters and buffers (names, shapes and values): equal weights, equal key."""
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


class ResultCache:
    """JSON results in `root/<kind>-<hash of key>.json`; a corrupt or unreadable entry is recomputed, never fatal."""

    def __init__(self, root: str | Path | None) -> None:
        self.root = Path(root).expanduser() if root else None

    def path(self, kind: str, key: dict[str, Any]) -> Path | None:
        if self.root is None:
            return None
        digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:20]
        return self.root / f"{kind}-{digest}.json"

    def get_or_compute(self, kind: str, key: dict[str, Any], compute: Callable[[], dict[str, float]]) -> dict[str, float]:
        """The cached result for (kind, key), or compute() stored atomically for the next run."""
        path = self.path(kind, key)
        if path is not None and path.is_file():
            try:
                stored = json.loads(path.read_text())
                if stored.get("key") == json.loads(json.dumps(key, sort_keys=True, default=str)):
                    log.info("%s baseline from cache %s", kind, path)
                    return stored["result"]
            except (OSError, ValueError, KeyError):
                log.warning("ignoring unreadable cache entry %s", path)
        result = compute()
        if path is not None:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                replace_atomically(path, json.dumps({"key": key, "result": result}, sort_keys=True, default=str, indent=1))
            except OSError as error:  # a read-only cache must not cost the run its results
                log.warning("could not cache the %s baseline in %s: %s", kind, path, error)
        return result


def raw_input_evaluators(evaluators: dict[str, Any]) -> dict[str, Any]:
    """The configured evaluators that also make sense on raw inputs (linear probe, kNN)."""
    return {name: e for name, e in evaluators.items() if name in RAW_INPUT_EVALUATORS}


def protocol_key(data: dict[str, Any], evaluation: dict[str, Any]) -> dict[str, Any]:
    """What a baseline depends on: the data source and held-out split, and the evaluators' settings (not loader knobs)."""
    return {"source": data.get("source"), "validation_fraction": data.get("validation_fraction", 0.0), "eval": evaluation}


def prefixed_scores(prefix: str, result: dict[str, float]) -> dict[str, float]:
    """The top-k accuracies of an evaluation under `prefix` ('raw_input_linear_top1', ...), as metrics.json keeps them."""
    return {f"{prefix}_{k}": v for k, v in result.items() if "top" in k}


def raw_input_baseline(
    cache: ResultCache,
    data: dict[str, Any],
    evaluation: dict[str, Any],
    evaluators: dict[str, Any],
    evaluate: Callable[[nn.Module, dict[str, Any]], dict[str, float]],
    kind: str,
) -> dict[str, float]:
    """The raw-input probe (linear, kNN) of this data (of modality `kind`) and protocol, from the cache or computed once by `evaluate`."""
    chosen = raw_input_evaluators(evaluators)
    if not chosen:
        return {}
    return cache.get_or_compute("raw_input", protocol_key(data, evaluation), lambda: evaluate(RawInput(kind), chosen))
