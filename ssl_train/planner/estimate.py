"""The planner's estimates beside the calibration: the evaluation's time (the configured evaluators and the baselines the
cache lacks, timed on an even subset of the evaluation sets and scaled to their size), memory, and the largest batch that fits."""

from __future__ import annotations

import ctypes
import os
import resource
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.utils.data import Dataset, Subset

from ssl_train.eval.baselines import RawInput, ResultCache, protocol_key, raw_input_evaluators, weights_fingerprint
from ssl_train.eval.suite import evaluate_encoder
from ssl_train.eval.zero_shot import two_tower_evaluators
from ssl_train.metrics import RANDOM_INIT

MiB = 2**20


def even_subset(dataset: Dataset, size: int) -> Dataset:
    """`size` samples spread evenly over `dataset` (evaluation sets may be ordered by class)."""
    n = len(dataset)  # type: ignore[arg-type]
    return dataset if size >= n else Subset(dataset, [i * n // size for i in range(size)])


def timed_evaluation(encoder: nn.Module, datamodule: Any, evaluators: dict[str, Any], device: torch.device, samples: int) -> float:
    """Seconds for `evaluators` on `encoder` over the whole evaluation sets, from a run on `samples` of them scaled by size."""
    if not evaluators:
        return 0.0
    train, test = datamodule.evaluation_datasets()
    n_train, n_test = len(train), len(test)
    m_train = min(n_train, max(1, samples * n_train // (n_train + n_test)))
    m_test = min(n_test, max(1, samples - m_train))
    start = time.perf_counter()
    evaluate_encoder(
        encoder, even_subset(train, m_train), even_subset(test, m_test), datamodule.splits.num_classes, evaluators, device, datamodule.eval_batch_size
    )
    return (time.perf_counter() - start) * (n_train + n_test) / (m_train + m_test)


def cached(cache: ResultCache, kind: str, key: dict[str, Any]) -> bool:
    """Whether the baselines' cache already holds this result (the run then reads it instead of computing it)."""
    path = cache.path(kind, key)
    return path is not None and path.is_file()


@dataclass
class EvaluationEstimate:
    """Seconds of the evaluation after training: the trained encoder's, and the baselines' the cache lacks."""

    trained_s: float
    baselines_s: float
    what: str


def evaluation_estimate(
    cfg: DictConfig, built: Any, initial: nn.Module, evaluators: dict[str, Any], device: torch.device, samples: int = 1024
) -> EvaluationEstimate:
    """The evaluation run.py does after training (cfg.probe), with both baselines (cfg.baseline) unless cached."""
    pairs = two_tower_evaluators(evaluators)  # zero-shot, retrieval: both towers on the test pairs, not estimated
    evaluators = {name: e for name, e in evaluators.items() if name not in pairs}
    if not cfg.probe or not evaluators:
        return EvaluationEstimate(0.0, 0.0, "no probe")
    datamodule = built.datamodule
    trained = timed_evaluation(initial, datamodule, evaluators, device, samples)
    baselines, parts = 0.0, [f"trained encoder {trained:.0f}s"]
    if cfg.baseline:
        cache = ResultCache(cfg.paths.get("cache_dir"))
        data, evaluation = OmegaConf.to_container(cfg.data, resolve=True), OmegaConf.to_container(cfg.eval, resolve=True)
        key = protocol_key(data, evaluation)  # type: ignore[arg-type]
        raw = raw_input_evaluators(evaluators)
        if raw and not cached(cache, "raw_input", key):
            seconds = timed_evaluation(RawInput(datamodule.splits.modality), datamodule, raw, device, samples)
            baselines += seconds
            parts.append(f"raw-input baseline {seconds:.0f}s")
        architecture = {"backbone": OmegaConf.to_container(cfg.backbone, resolve=True), "eval_features": cfg.get("eval_features", "backbone")}
        if not cached(cache, RANDOM_INIT, {**key, **architecture, "weights": weights_fingerprint(initial)}):
            baselines += trained
            parts.append(f"random-init baseline {trained:.0f}s")
    unestimated = f"; not estimated: {', '.join(pairs)}" if pairs else ""
    cached_note = "" if len(parts) > 1 or not cfg.baseline else "; baselines cached"
    return EvaluationEstimate(trained, baselines, ", ".join(parts) + cached_note + unestimated)


def peak_rss() -> int:
    """Peak resident memory of this process so far, in bytes (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def rss() -> int:
    """Resident memory of this process now, in bytes (Linux /proc; 0 elsewhere)."""
    try:
        return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def current_rss() -> int:
    """Resident memory now, after handing freed heap back to the system where glibc allows it."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    return rss()


def system_available() -> int:
    """Memory the system can still give (MemAvailable), in bytes; free pages where /proc/meminfo is missing."""
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def process_age() -> float:
    """Seconds since this process started (its start-up: interpreter and imports), from /proc; 0 where unknown."""
    try:
        start_ticks = int(open("/proc/self/stat").read().rsplit(")", 1)[1].split()[19])
        uptime = float(open("/proc/uptime").read().split()[0])
        return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return 0.0


def rows(views: Sequence[torch.Tensor], labels: torch.Tensor, batch: int) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Views and labels of `batch` rows, cycling the real batch's rows (real shapes and values)."""
    index = torch.arange(batch) % len(labels)
    return [v[index] for v in views], labels[index]


def step_memory(method: nn.Module, views: Sequence[torch.Tensor], labels: torch.Tensor, batch: int, device: torch.device) -> tuple[int, float]:
    """(bytes a forward/backward of `batch` rows holds at its peak, seconds it took): device memory on a GPU, RSS growth on the CPU."""
    x, y = rows(views, labels, batch)
    x, y = [v.to(device) for v in x], y.to(device)
    start = time.perf_counter()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        method(x, y)["loss"].backward()
        used = torch.cuda.max_memory_allocated(device) - before
    else:
        before = current_rss()
        loss = method(x, y)["loss"]
        used = rss() - before  # the graph is alive: activations held
        loss.backward()
    method.zero_grad(set_to_none=True)
    return used, time.perf_counter() - start
