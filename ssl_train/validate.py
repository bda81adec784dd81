"""Range and type checks for every setting before anything is built: one line naming the key.

A component's settings are checked against its constructor: a parameter annotated with a constraint
(`temperature: Temperature`, ssl_train/constraints.py) is checked by it, a mapping parameter marked `FieldsOf(Recipe)`
by the annotations of the recipe's fields, and a key the constructor does not take is reported as unknown. Only the
constructors we cannot annotate (THIRD_PARTY_RULES) and the keys of train.yaml itself (TOP_LEVEL_RULES) keep a table.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import logging
import typing
from collections.abc import Iterator
from typing import Any

import torch
from hydra.utils import get_object
from lightning.pytorch import Trainer
from omegaconf import DictConfig, ListConfig, OmegaConf

from ssl_train.constraints import (
    LEARNING_RATE,
    POSITIVE_INT,
    SEED,
    WEIGHT_DECAY,
    Check,
    FieldsOf,
    Number,
    Settings,
)
from ssl_train.errors import UserError
from ssl_train.portable import RUN_KEYS

log = logging.getLogger(__name__)

Rule = Number | Check


def _limit_batches(value: Any) -> bool:
    """Lightning's limit_*_batches: a count of batches (int >= 0) or a fraction of the epoch (float in [0, 1])."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return value >= 0 if isinstance(value, int) else Number(low=0, high=1).problem(value) is None


LIMIT_BATCHES = Check(_limit_batches, "an integer >= 0 (batches) or a fraction in [0, 1]")

THIRD_PARTY_RULES: dict[Any, dict[str, Rule]] = {
    Trainer: {
        "max_epochs": POSITIVE_INT,
        "accumulate_grad_batches": POSITIVE_INT,
        "log_every_n_steps": Number(integer=True, low=0),
        "check_val_every_n_epoch": Number(integer=True, low=1, nullable=True),
        "gradient_clip_val": Number(low=0, open_low=True, nullable=True),
        "limit_train_batches": LIMIT_BATCHES,
        "limit_val_batches": LIMIT_BATCHES,
    },
    torch.optim.SGD: {"lr": LEARNING_RATE, "weight_decay": WEIGHT_DECAY, "momentum": Number(low=0, high=1)},
    torch.optim.AdamW: {"lr": LEARNING_RATE, "weight_decay": WEIGHT_DECAY},
}
"""Rules for the settings of constructors we cannot annotate (Lightning's Trainer, torch's optimizers, as configs/
uses them), keyed by the class itself, so a key that moves between config groups keeps its rule. Our own constructors
carry their rules in their annotations instead; tests/test_validate.py checks that none is missing."""

TOP_LEVEL_RULES: dict[str, Rule] = {"seed": SEED}
"""Rules for the keys of train.yaml itself, which belong to no component (the run reads them)."""


HYDRA_KEYS = ("_target_", "_partial_", "_convert_", "_recursive_", "_args_")
# keys a component's node carries that build.py takes out before the constructor (portable.RUN_KEYS of the backbone)
NOT_ARGUMENTS = {"backbone": RUN_KEYS}


def leaves(node: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted key, value) of every leaf; `_target_` blocks included, Hydra's own node skipped."""
    if isinstance(node, dict):
        for key, value in node.items():
            if path == "" and key == "hydra":
                continue
            yield from leaves(value, f"{path}.{key}" if path else str(key))
    else:
        yield path, node


def components(node: Any, path: str = "") -> Iterator[tuple[str, dict]]:
    """(dotted path, node) of every node with a `_target_`, nested ones included."""
    if isinstance(node, dict):
        if "_target_" in node:
            yield path, node
        for key, value in node.items():
            if not (path == "" and key == "hydra"):
                yield from components(value, f"{path}.{key}" if path else str(key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from components(value, f"{path}[{i}]")


def is_rule(meta: Any) -> bool:
    """Whether an annotation's metadata is a constraint (it has `problem(value)`)."""
    return isinstance(meta, (Number, Check))


def field_rules(recipe: type) -> dict[str, Rule]:
    """{field: its constraint} of the dataclass `recipe`, from its fields' annotations."""
    hints = typing.get_type_hints(recipe, include_extras=True)
    names = {f.name for f in dataclasses.fields(recipe)}
    return {name: meta for name, hint in hints.items() if name in names for meta in getattr(hint, "__metadata__", ()) if is_rule(meta)}


@functools.cache
def signature_rules(target: str) -> tuple[dict[str, Rule], dict[str, Rule], frozenset[str] | None]:
    """({setting, or setting.field of a FieldsOf mapping: its constraint}, {setting.key: constraint the constructor
    places on a component it is given (Settings)}, the parameter names, or None where the constructor takes **kwargs
    or has no signature) of the class or function `target`; ({}, {}, None) where it does not import (instantiate
    reports that). THIRD_PARTY_RULES stand in for the annotations of the classes there."""
    try:
        component = get_object(target)
        signature = inspect.signature(component)
        hints = typing.get_type_hints(component.__init__ if inspect.isclass(component) else component, include_extras=True)
    except Exception:  # an unknown target or unreadable signature: no derived rules, no unknown-key check
        return {}, {}, None
    rules: dict[str, Rule] = dict(THIRD_PARTY_RULES.get(component, {}))
    placed: dict[str, Rule] = {}
    for name, hint in hints.items():
        for meta in getattr(hint, "__metadata__", ()):
            if is_rule(meta):
                rules[name] = meta
            elif isinstance(meta, FieldsOf):
                rules |= {f"{name}.{field}": rule for field, rule in field_rules(meta.recipe).items()}
            elif isinstance(meta, Settings):
                placed |= {f"{name}.{key}": rule for key, rule in meta.rules.items()}
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values())
    return rules, placed, None if takes_any else frozenset(signature.parameters)


def settings_rules(tree: dict) -> tuple[dict[str, Rule], str | None]:
    """({dotted key: constraint} from the annotated constructors of every component in `tree`, the first line naming a
    key that its component's constructor does not take, or None)."""
    rules: dict[str, Rule] = {}
    placed: dict[str, Rule] = {}  # a constructor's rules for the component it is given win over that component's own
    for path, node in components(tree):
        found, settings, accepted = signature_rules(str(node["_target_"]))
        prefix = f"{path}." if path else ""
        rules |= {prefix + key: rule for key, rule in found.items() if key.split(".", 1)[0] in node}
        placed |= {prefix + key: rule for key, rule in settings.items()}
        skip = NOT_ARGUMENTS.get(path, ())
        for key in node:
            if key in HYDRA_KEYS or key in skip:
                continue
            if accepted is not None and key not in accepted:
                names = ", ".join(sorted(a for a in accepted if a not in ("self", "args", "kwargs")))
                return rules | placed, f"{path}.{key}: unknown setting; {node['_target_']} takes {names}"
    return rules | placed, None


def validate(cfg: DictConfig) -> None:
    """Stop with one line at the first unknown setting of a component, or the first value out of range or of the wrong type."""
    try:
        tree = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, (DictConfig, ListConfig)) else cfg
    except Exception as error:  # an interpolation that cannot resolve is itself bad input
        raise UserError(f"the config does not resolve: {str(error).splitlines()[0]}") from None
    derived, unknown = settings_rules(tree) if isinstance(tree, dict) else ({}, None)
    for key, value in leaves(tree):
        rule = derived.get(key) or TOP_LEVEL_RULES.get(key)
        problem = rule.problem(value) if rule is not None else None
        if problem is not None:
            written = dict(leaves(OmegaConf.to_container(cfg, resolve=False))) if isinstance(cfg, (DictConfig, ListConfig)) else {}
            source = written.get(key)  # an interpolation names the setting the value came from, e.g. ${head.out_dim}
            origin = f" (from {source})" if isinstance(source, str) and source.startswith("${") else ""
            raise UserError(f"{key}={value!r}{origin}: must be {problem}")
    if unknown is not None:
        raise UserError(unknown)
    warmup, epochs = OmegaConf.select(cfg, "optim.warmup_epochs"), OmegaConf.select(cfg, "trainer.max_epochs")
    if isinstance(warmup, (int, float)) and isinstance(epochs, int) and warmup > epochs:
        log.warning("optim.warmup_epochs=%s is longer than trainer.max_epochs=%s: the learning rate never leaves warm-up", warmup, epochs)
