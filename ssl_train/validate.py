"""Range and type checks for every setting before anything is built: one line naming the key.

A component's settings are checked against its constructor: a parameter annotated with a constraint
(`temperature: Temperature`, ssl_train/constraints.py) is checked by it, and a key the constructor does not take is
reported as unknown. Settings of components whose constructors carry no constraint yet (Lightning's Trainer, torch's
optimizers, the data and evaluation components) and keys outside any component (seed) keep a rule by key name (RULES).
"""

from __future__ import annotations

import functools
import inspect
import logging
import math
import typing
from collections.abc import Iterator
from typing import Any

from hydra.utils import get_object
from omegaconf import DictConfig, ListConfig, OmegaConf

from ssl_train.constraints import (
    COUNT,
    FRACTION,
    LEARNING_RATE,
    NON_NEGATIVE,
    POSITIVE,
    POSITIVE_INT,
    TEMPERATURE,
    WARMUP_EPOCHS,
    WEIGHT_DECAY,
    Number,
)
from ssl_train.errors import UserError
from ssl_train.portable import RUN_KEYS

log = logging.getLogger(__name__)


# key name (the last part of the dotted path) -> rule, for settings whose constructor carries no constraint yet (the 68 names
# below: Trainer, torch optimizers, OptimRecipe, data, views, encoders, evaluators) and for keys outside any component.
# A constructor annotation wins over this table; annotate a constructor and its names can leave it.
RULES: dict[str, Number] = {
    "seed": Number(integer=True, low=0, high=2**32 - 1),
    "batch_size": POSITIVE_INT,
    "eval_batch_size": POSITIVE_INT,
    "base_batch_size": POSITIVE_INT,
    "num_workers": COUNT,
    "max_epochs": POSITIVE_INT,
    "accumulate_grad_batches": POSITIVE_INT,
    "log_every_n_steps": COUNT,
    "check_val_every_n_epoch": Number(integer=True, low=1, nullable=True),
    "every_n_epochs": POSITIVE_INT,
    "lr": LEARNING_RATE,
    "online_probe_lr": LEARNING_RATE,
    "weight_decay": WEIGHT_DECAY,
    "weight_decay_end": Number(low=0, high=10, nullable=True),
    "warmup_epochs": WARMUP_EPOCHS,
    "min_lr_ratio": FRACTION,
    "momentum": FRACTION,
    "trust_coefficient": POSITIVE,
    "temperature": TEMPERATURE,
    "out_dim": POSITIVE_INT,
    "hidden_dim": POSITIVE_INT,
    "num_layers": POSITIVE_INT,
    "pool_size": POSITIVE_INT,
    "blocks_per_stage": POSITIVE_INT,
    "last_width": POSITIVE_INT,
    "num_global": POSITIVE_INT,
    "num_local": COUNT,
    "local_size": POSITIVE_INT,
    "image_size": Number(integer=True, low=1, nullable=True),
    "crop_min": Number(low=0, high=1, open_low=True),
    "jitter_strength": NON_NEGATIVE,
    "flip_prob": FRACTION,
    "jitter_prob": FRACTION,
    "grayscale_prob": FRACTION,
    "blur_prob": FRACTION,
    "solarize_prob": FRACTION,
    "max_iter": POSITIVE_INT,
    "search_max_iter": POSITIVE_INT,
    "max_train_samples": Number(integer=True, low=1, nullable=True),
    "pairs": POSITIVE_INT,
    "holdout_fraction": Number(low=0, high=1, open_low=True, open_high=True),
    "validation_fraction": Number(low=0, high=1, open_high=True),
    "train_limit": Number(integer=True, low=1, nullable=True),
    "test_limit": Number(integer=True, low=1, nullable=True),
    "gradient_clip_val": Number(low=0, open_low=True, nullable=True),
    "test_fraction": Number(low=0, high=1, open_low=True, open_high=True),
    "m_per_class": Number(integer=True, low=1, nullable=True),
    "max_length": Number(integer=True, low=3),
    "captions_per_image": POSITIVE_INT,
    "delete_prob": FRACTION,
    "synonym_fraction": NON_NEGATIVE,
    "insert_fraction": NON_NEGATIVE,
    "swap_fraction": NON_NEGATIVE,
    "patch_size": Number(integer=True, low=1, nullable=True),
    "drop_path_rate": Number(low=0, high=1, open_high=True),
    "layer_decay": Number(low=0, high=1, open_low=True),
    "rank": POSITIVE_INT,
    "alpha": POSITIVE,
    "label_smoothing": Number(low=0, high=1, open_high=True),
    "mixup_alpha": NON_NEGATIVE,
    "cutmix_alpha": NON_NEGATIVE,
    "l2": NON_NEGATIVE,
    "max_queries": Number(integer=True, low=1, nullable=True),
    "lidar_samples": COUNT,
    "lidar_views": Number(integer=True, low=2),
    "max_points": POSITIVE_INT,
    "grid_samples": POSITIVE_INT,
    "every_n_steps": POSITIVE_INT,
}

# where a key's rule differs by place: a head's out_dim may be null (the encoder's width: SimCSE's Linear(d, d));
# a loss's or predictor's may not
RULES_AT: dict[str, Number] = {"head.out_dim": Number(integer=True, low=1, nullable=True)}


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


@functools.cache
def signature_rules(target: str) -> tuple[dict[str, Number], frozenset[str] | None]:
    """({parameter: its constraint}, the parameter names, or None where the constructor takes **kwargs or has no
    signature) of the class or function `target`; ({}, None) where it does not import (instantiate reports that)."""
    try:
        component = get_object(target)
        signature = inspect.signature(component)
        hints = typing.get_type_hints(component.__init__ if inspect.isclass(component) else component, include_extras=True)
    except Exception:  # an unknown target or unreadable signature: no derived rules, no unknown-key check
        return {}, None
    rules = {name: meta for name, hint in hints.items() for meta in getattr(hint, "__metadata__", ()) if isinstance(meta, Number)}
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values())
    return rules, None if takes_any else frozenset(signature.parameters)


def settings_rules(tree: dict) -> tuple[dict[str, Number], str | None]:
    """({dotted key: constraint} from the annotated constructors of every component in `tree`, the first line naming a
    key that its component's constructor does not take, or None)."""
    rules: dict[str, Number] = {}
    for path, node in components(tree):
        found, accepted = signature_rules(str(node["_target_"]))
        skip = NOT_ARGUMENTS.get(path, ())
        for key in node:
            if key in HYDRA_KEYS or key in skip:
                continue
            if accepted is not None and key not in accepted:
                settings = ", ".join(sorted(a for a in accepted if a not in ("self", "args", "kwargs")))
                return rules, f"{path}.{key}: unknown setting; {node['_target_']} takes {settings}"
            if key in found:
                rules[f"{path}.{key}" if path else key] = found[key]
    return rules, None


def validate(cfg: DictConfig) -> None:
    """Stop with one line at the first unknown setting of a component, or the first value out of range or of the wrong type."""
    try:
        tree = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, (DictConfig, ListConfig)) else cfg
    except Exception as error:  # an interpolation that cannot resolve is itself bad input
        raise UserError(f"the config does not resolve: {str(error).splitlines()[0]}") from None
    derived, unknown = settings_rules(tree) if isinstance(tree, dict) else ({}, None)
    for key, value in leaves(tree):
        name = key.rsplit(".", 1)[-1]
        rule, special = derived.get(key) or RULES_AT.get(key, RULES.get(name)), SPECIAL.get(name)
        problem = (rule.problem(value) if rule is not None else None) or (special(value) if special is not None else None)
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


def _crop_scale(value: Any) -> str | None:
    ok = isinstance(value, list) and len(value) == 2 and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    return None if ok and 0 < value[0] <= value[1] <= 1 else "a pair [low, high] with 0 < low <= high <= 1"


def _positive_ints(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value)


def _widths(value: Any) -> str | None:
    return None if _positive_ints(value) else "a non-empty list of integers >= 1"


def _neighbours(value: Any) -> str | None:
    return None if POSITIVE_INT.problem(value) is None or _positive_ints(value) else "an integer >= 1 or a list of them"


def _limit_batches(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "an integer >= 0 (batches) or a fraction in [0, 1]"
    if isinstance(value, int):
        return None if value >= 0 else "an integer >= 0 (batches) or a fraction in [0, 1]"
    return None if math.isfinite(value) and 0 <= value <= 1 else "an integer >= 0 (batches) or a fraction in [0, 1]"


SPECIAL = {"crop_scale": _crop_scale, "widths": _widths, "k": _neighbours, "limit_train_batches": _limit_batches, "limit_val_batches": _limit_batches}
