"""The one home for what a test may need beyond `pip install -e '.[dev]'`: an extra, a Debian package, a browser, a GPU.

A test says what it needs with `@pytest.mark.needs("wordnet-base")` (or `require("wordnet-base")` inside it); a test of a
composed config calls `require_what_config_needs(cfg)`, which derives the needs from the config itself: a value under a
system data folder needs the Debian package that installs it, a `_target_` in a module that imports an extra needs that
extra. Whatever is missing is named in the skip reason with the command that installs it.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from omegaconf import DictConfig, OmegaConf

from ssl_train.data.datasets import DEBIAN_FASHION_MNIST_ROOT
from ssl_train.data.text import WORDNET_ROOT


@dataclass(frozen=True)
class Need:
    """Something a test may need: how to tell it is here, and how a user installs it."""

    present: Callable[[], bool]
    install: str


def _module(name: str) -> Callable[[], bool]:
    return lambda: importlib.util.find_spec(name) is not None


def browser() -> str | None:
    """A headless-capable Chromium (Debian's chromium, or another Chrome on the PATH), or None."""
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


# Debian data folders the configs may point at, and the package that installs each
SYSTEM_DATA = {WORDNET_ROOT: "wordnet-base", DEBIAN_FASHION_MNIST_ROOT: "dataset-fashion-mnist"}

OPTIONAL: dict[str, Need] = {
    "wordnet-base": Need(lambda: (Path(WORDNET_ROOT) / "data.noun").is_file(), "apt-get install wordnet-base"),
    "dataset-fashion-mnist": Need(lambda: Path(DEBIAN_FASHION_MNIST_ROOT).is_dir(), "apt-get install dataset-fashion-mnist"),
    "chromium": Need(lambda: browser() is not None, "apt-get install chromium"),
    "gpu": Need(torch.cuda.is_available, "a CUDA device"),
    "torch_geometric": Need(_module("torch_geometric"), "pip install -e '.[graph]'"),
    "timm": Need(_module("timm"), "pip install -e '.[vit]'"),
    "peft": Need(_module("peft"), "pip install -e '.[lora]'"),
    "transformers": Need(_module("transformers"), "pip install -e '.[hf]'"),
    "tokenizers": Need(_module("tokenizers"), "pip install -e '.[text]'"),
    "open_clip": Need(_module("open_clip"), "pip install open_clip_torch"),
    "webdataset": Need(_module("webdataset"), "pip install -e '.[shards]'"),
    "datasets": Need(_module("datasets"), "pip install -e '.[hfdata]'"),
    "wandb": Need(_module("wandb"), "pip install -e '.[trackers]'"),
    "mlflow": Need(_module("mlflow"), "pip install -e '.[trackers]'"),
}

# ssl_train modules whose components import an extra when built
MODULE_NEEDS = {
    "ssl_train.encoders.graph": "torch_geometric",
    "ssl_train.data.graphs": "torch_geometric",
    "ssl_train.data.graph_views": "torch_geometric",
    "ssl_train.encoders.timm_encoder": "timm",
    "ssl_train.eval.lora": "peft",
    "ssl_train.data.shards": "webdataset",
    "ssl_train.data.shard_stream": "webdataset",
    "ssl_train.data.hf_datasets": "datasets",
}


def missing(*needs: str) -> list[str]:
    """The needs among `needs` that this machine lacks (an unknown name is a mistake in the test, not a skip)."""
    unknown = [n for n in needs if n not in OPTIONAL]
    if unknown:
        raise KeyError(f"tests/optional.py knows no optional {unknown}; known: {sorted(OPTIONAL)}")
    return [n for n in needs if not OPTIONAL[n].present()]


SKIP_PREFIX = "needs optional "


def skip_reason(absent: list[str]) -> str:
    return SKIP_PREFIX + "; ".join(f"{n} ({OPTIONAL[n].install})" for n in absent)


def record_skipped_for_needs(report: pytest.TestReport | pytest.CollectReport) -> None:
    """Append the node id of a test (or module) skipped by `require` to $SSL_TRAIN_NEEDS_LOG, when that is set."""
    log = os.environ.get("SSL_TRAIN_NEEDS_LOG")
    longrepr = report.longrepr
    if log and report.skipped and isinstance(longrepr, tuple) and SKIP_PREFIX in str(longrepr[2]):
        with open(log, "a") as handle:
            handle.write(report.nodeid + "\n")


def require(*needs: str) -> None:
    """Skip the running test (or the whole module, at its top), naming what is missing and how to install it."""
    absent = missing(*needs)
    if absent:
        pytest.skip(skip_reason(absent), allow_module_level=True)


def _leaves(node: Any, key: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _leaves(v, f"{key}.{k}" if key else str(k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _leaves(v, f"{key}[{i}]")
    else:
        yield key, node


def config_needs(cfg: DictConfig) -> list[str]:
    """What a composed config needs beyond the dev install, read from its own values (resolved where they resolve)."""
    try:
        tree = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    except Exception:  # an interpolation that only resolves inside a Hydra app: read the values as written
        tree = OmegaConf.to_container(cfg, resolve=False)
    needs: list[str] = []
    for key, value in _leaves(tree):
        if not isinstance(value, str):
            continue
        if key.endswith("_target_"):
            needs += [need for module, need in MODULE_NEEDS.items() if value.startswith(module + ".")]
        needs += [package for root, package in SYSTEM_DATA.items() if value == root or value.startswith(root.rstrip("/") + "/")]
    return sorted(set(needs))


def require_what_config_needs(cfg: DictConfig) -> None:
    """Skip when the composed config needs something this machine lacks (derived from the config, not a hand list)."""
    require(*config_needs(cfg))
