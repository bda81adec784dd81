"""What the command line chose, handed in by the entry points (ssl_train.__main__ reads it from Hydra's runtime state, the
one place that does): the option per config group, the overrides typed, Hydra's config files for <run dir>/.hydra.

Error lines name options as typed (`backbone=small_resnet: ...`): `group_choice` reads the choices of the launch being
run, set by `chosen_options` around it (run, checkpoint evaluation); outside one (tests, the Python API) it says '?'.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

_CHOICES: ContextVar[Mapping[str, str]] = ContextVar("ssl_train_choices", default={})  # noqa: B039 - never mutated


@dataclass(frozen=True)
class Launch:
    """What the command line knows and the config does not; empty outside a Hydra app (tests, the Python API)."""

    choices: Mapping[str, str] = field(default_factory=dict)
    overrides: list[str] | None = None
    hydra_files: Mapping[str, str] = field(default_factory=dict)


@contextlib.contextmanager
def chosen_options(choices: Mapping[str, str]) -> Iterator[None]:
    """Within the block, `group_choice` names the options in `choices` (group -> option, e.g. backbone -> small_resnet)."""
    token = _CHOICES.set({str(group): str(option) for group, option in choices.items()})  # a null choice reads 'None', as Hydra says it
    try:
        yield
    finally:
        _CHOICES.reset(token)


def group_choice(group: str) -> str:
    """The option chosen for a config group (e.g. 'small_resnet' for 'backbone'), or '?' when no launch named one."""
    return _CHOICES.get().get(group, "?")


def with_method_name(cfg: DictConfig, choices: Mapping[str, str]) -> DictConfig:
    """`cfg` with `method_name` set to the method option the launch chose (method=..., or the one an experiment picks), so
    the saved config and the checkpoint name the method; without a choice (the compose API) `cfg` as it is."""
    chosen = choices.get("method")
    if chosen in (None, "None") or cfg.get("method_name") == chosen:
        return cfg
    named = cfg.copy()
    with open_dict(named):
        named.method_name = chosen
    return named


def method_name_of(cfg: Any) -> str | None:
    """The method option a run config names: `method_name` (runs that store it), else `method.name` (older checkpoints,
    whose method files named themselves); None when neither does."""
    node = cfg if isinstance(cfg, DictConfig) else OmegaConf.create(cfg)
    name = node.get("method_name") or OmegaConf.select(node, "method.name", default=None)
    return None if name is None else str(name)


def from_composed(cfg: DictConfig) -> DictConfig:
    """A config composed with `return_hydra_config=True` (the compose API), without Hydra's node and with `method_name`
    from Hydra's choices: what `python -m ssl_train` runs for the same overrides."""
    choices = {str(group): str(option) for group, option in (OmegaConf.select(cfg, "hydra.runtime.choices", default=None) or {}).items()}
    plain = cfg.copy()
    with open_dict(plain):
        plain.pop("hydra", None)
    return with_method_name(plain, choices)
