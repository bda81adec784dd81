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

from ssl_train.data.tokenizers import hashed_ngrams

log = logging.getLogger(__name__)

RAW_INPUT_EVALUATORS = ("linear", "knn", "image_retrieval")  # the representation metrics and the SGD probe say nothing about raw pixels


def bag_of_ngrams(tokens: torch.Tensor, dim: int = 4096, orders: tuple[int, ...] = (1, 2, 3)) -> torch.Tensor:
    """(N, L) token ids (0 = padding) -> (N, dim) log(1 + counts) of their 1-, 2- and 3-grams hashed into `dim` buckets:
    the classic bag-of-n-grams text baseline (with byte tokens: character n-grams), no vocabulary needed."""
    buckets, valid = hashed_ngrams(tokens, dim, orders)
    counts = torch.zeros(tokens.shape[0], dim, device=tokens.device).scatter_add_(1, buckets, valid.float())
    return counts.log1p()


class RawInput(nn.Module):
    """The identity encoder: (N, ...) inputs flattened to (N, D) float features (the probe standardises them); for a
    batch of graph nodes, their feature vectors; for token ids (N, L) of texts, their hashed bag of n-grams.

    Images with more than `max_dim` values (96 px STL-10, 224 px folders) are first average-pooled to the largest
    square grid that fits (e.g. 3 x 36 x 36 for 4096), so the raw-input probe stays tractable: a linear probe on
    150k raw values would cost more than the run and say no more.
    """

    def __init__(self, max_dim: int = 4096) -> None:
        super().__init__()
        self.max_dim = max_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if callable(getattr(x, "raw_features", None)):  # graph nodes: their own feature vectors
            x = x.raw_features()
        if x.dtype == torch.long and x.ndim == 2:  # token ids of texts
            return bag_of_ngrams(x)
        x = x.float()
        if x.ndim == 4 and x[0].numel() > self.max_dim:
            side = max(1, int((self.max_dim / x.shape[1]) ** 0.5))
            x = nn.functional.adaptive_avg_pool2d(x, side)
        return x.flatten(1)


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
                staging = path.with_name(path.name + ".tmp")
                staging.write_text(json.dumps({"key": key, "result": result}, sort_keys=True, default=str, indent=1))
                staging.replace(path)
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
    cache: ResultCache, data: dict[str, Any], evaluation: dict[str, Any], evaluators: dict[str, Any],
    evaluate: Callable[[nn.Module, dict[str, Any]], dict[str, float]],
) -> dict[str, float]:
    """The raw-input probe (linear, kNN) of this data and protocol, from the cache or computed once by `evaluate`."""
    chosen = raw_input_evaluators(evaluators)
    if not chosen:
        return {}
    return cache.get_or_compute("raw_input", protocol_key(data, evaluation), lambda: evaluate(RawInput(), chosen))


def with_baselines(summary: str, metrics: dict[str, Any], input_name: str = "raw pixels") -> str:
    """`summary` followed by both baselines' linear top-1 when known: '... (raw pixels 0.8360, random-init encoder 0.7730)'.
    A run that started from given weights (backbone.weights) calls its initial encoder that, not random-init."""
    initial = "initial encoder (backbone.weights)" if metrics.get("initial_weights") else "random-init encoder"
    parts = [f"{label} {metrics[key]:.4f}" for label, key in ((input_name, "raw_input_linear_top1"), (initial, "random_init_linear_top1"))
             if key in metrics]
    return f"{summary} ({', '.join(parts)})" if parts else summary
