"""Nothing stored is code: a config read from a checkpoint or an export folder is data, checked before anything is built.

A stored config may name components only by the exact `_target_`s of the project's own configs (the registry below,
never a prefix), with arguments of plain types (str, int, float, bool, None, lists and dicts of those). Configs are
stored resolved, so an interpolation or resolver (`${...}`) left in one is refused rather than resolved: resolving
it could read the environment (`${oc.env:SECRET}`) or build objects (`${oc.create:...}`).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator
from typing import Any

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf

from ssl_train.composed import CONFIG_DIR
from ssl_train.errors import UserError

PLAIN_TYPES = (str, int, float, bool, type(None))
CONVERT_MODES = ("none", "partial", "object", "all")
MAX_DEPTH = 32  # the project's configs nest 5 levels; deeper is a crafted file (and Python's recursion limit)
# targets a stored config may name besides those of configs/: classes the project builds from code, named in exports' config.json
BUILT_IN_CODE = ("ssl_train.encoders.resnet.SmallResNet", "ssl_train.encoders.resnet.TorchvisionResNet", "ssl_train.encoders.timm_encoder.TimmEncoder")
# components that moved (the encoders package): checkpoints and exports written before store the old names, which are read
# as the new ones; exact names only, never a prefix
MOVED_TARGETS = {
    "ssl_train.backbones.SmallResNet": "ssl_train.encoders.resnet.SmallResNet",
    "ssl_train.backbones.TorchvisionResNet": "ssl_train.encoders.resnet.TorchvisionResNet",
    "ssl_train.timm_backbones.TimmEncoder": "ssl_train.encoders.timm_encoder.TimmEncoder",
    "ssl_train.sequence_encoders.RecurrentEncoder": "ssl_train.encoders.sequence.RecurrentEncoder",
    "ssl_train.graph_encoders.GCNEncoder": "ssl_train.encoders.graph.GCNEncoder",
    "ssl_train.text_encoders.TransformerTextEncoder": "ssl_train.encoders.text.TransformerTextEncoder",
    "ssl_train.text_encoders.CharCNNEncoder": "ssl_train.encoders.text.CharCNNEncoder",
    "ssl_train.text_encoders.HFTextEncoder": "ssl_train.encoders.text.HFTextEncoder",
    "ssl_train.text_encoders.NGramBagEncoder": "ssl_train.encoders.text.NGramBagEncoder",
    # the masked-modelling methods, each in its own module (methods/masked.py split)
    "ssl_train.methods.MAEMethod": "ssl_train.methods.mae.MAEMethod",
    "ssl_train.methods.SimMIMMethod": "ssl_train.methods.simmim.SimMIMMethod",
    "ssl_train.methods.IJEPAMethod": "ssl_train.methods.ijepa.IJEPAMethod",
    "ssl_train.methods.masked.MAEMethod": "ssl_train.methods.mae.MAEMethod",
    "ssl_train.methods.masked.SimMIMMethod": "ssl_train.methods.simmim.SimMIMMethod",
    "ssl_train.methods.masked.IJEPAMethod": "ssl_train.methods.ijepa.IJEPAMethod",
}


@functools.cache
def registered_targets() -> dict[str, frozenset[str]]:
    """The `_target_`s the project's own configs name, per top-level key (backbone, data, head, ...): what a stored
    config may build there. A group file counts for its group; a `@package _global_` file (method, experiment) for
    each top-level key it sets."""
    found: dict[str, set[str]] = {"backbone": set(BUILT_IN_CODE)}
    for path in CONFIG_DIR.rglob("*.yaml"):
        text = path.read_text()
        tree = yaml.safe_load(text) or {}
        relative = path.relative_to(CONFIG_DIR).parts
        if relative[0] == "hydra" or not isinstance(tree, dict):
            continue
        packaged = "@package _global_" in text.split("\n", 1)[0] or len(relative) == 1
        by_key = tree.items() if packaged else [(relative[0], tree)]
        for key, subtree in by_key:
            found.setdefault(str(key), set()).update(t for t in targets_in(subtree) if "${" not in t)
    return {key: frozenset(targets) for key, targets in found.items()}


def targets_in(node: Any) -> Iterator[str]:
    """Every `_target_` string anywhere in a config (dicts and lists, nested)."""
    if isinstance(node, (DictConfig, ListConfig)):
        node = OmegaConf.to_container(node, resolve=False)
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "_target_":
                yield str(value)
            else:
                yield from targets_in(value)
    elif isinstance(node, list):
        for value in node:
            yield from targets_in(value)


def is_allowed(target: str, key: str, also_allowed: Iterable[str] = ()) -> bool:
    """Exactly a target the project's configs register under `key`'s top-level key (or its old name, MOVED_TARGETS), or
    exactly one of `also_allowed` (the user's own config's targets): never a prefix."""
    return current_target(target) in registered_targets().get(top_key(key), frozenset()) or target in set(also_allowed)


def current_target(target: str) -> str:
    """The name a component has today: `target` itself, or its new name when it is exactly an old one (MOVED_TARGETS)."""
    return MOVED_TARGETS.get(target, target)


def with_current_targets(node: Any) -> Any:
    """A plain config (dicts and lists) with every `_target_` that is exactly an old name replaced by its new one, and a
    run config's old method settings by today's (methods/legacy.py: MoCo's queue_size, DINO's ibot_*)."""
    if isinstance(node, dict) and isinstance(node.get("method"), dict):
        from ssl_train.methods.legacy import current_method_settings  # local: trust stays importable without torch

        node = {**node, "method": current_method_settings(node["method"])}
    if isinstance(node, dict):
        return {k: (current_target(v) if k == "_target_" and isinstance(v, str) else with_current_targets(v)) for k, v in node.items()}
    if isinstance(node, list):
        return [with_current_targets(v) for v in node]
    return node


def top_key(key: str) -> str:
    """The top-level key of a dotted path ('backbone' of 'backbone.widths[0]._target_')."""
    return key.split(".", 1)[0].split("[", 1)[0]


TRUST_HINT = "if you trust where it came from: trusted_targets=[NAME] or trust_checkpoint=true (toolkit: --trust-checkpoint)"


def _refuse(source: str, key: str, why: str, hint: str = "") -> UserError:
    return UserError(f"{source}: stored config key {key or '<top>'}: {why}: refused (nothing stored is code)" + (f"; {hint}" if hint else ""))


def _check(node: Any, key: str, source: str, also_allowed: frozenset[str], in_args: bool, depth: int = 0) -> None:
    """Walk one node of a stored config, refusing the first thing that is not plain data or a registered component."""
    if depth > MAX_DEPTH:
        raise _refuse(source, key[:200], f"nests deeper than {MAX_DEPTH} levels")
    if isinstance(node, str):
        if "${" in node:
            raise _refuse(source, key, f"{node[:80]!r} is an interpolation or resolver, and stored configs are resolved when written")
        return
    if isinstance(node, PLAIN_TYPES):
        return
    if isinstance(node, list):
        for i, value in enumerate(node):
            _check(value, f"{key}[{i}]", source, also_allowed, in_args, depth + 1)
        return
    if not isinstance(node, dict):
        raise _refuse(source, key, f"a {type(node).__name__} is not plain data (str, number, bool, null, list, dict)")
    for name, value in node.items():
        where = f"{key}.{name}" if key else str(name)
        if not isinstance(name, str):
            raise _refuse(source, where, f"a key of type {type(name).__name__} (keys are strings)")
        if name.startswith("_") and name.endswith("_") and in_args:
            raise _refuse(source, where, "a component inside _args_ (positional arguments must be plain values)")
        if name == "_target_":
            if not isinstance(value, str) or not is_allowed(value, where, also_allowed):
                raise _refuse(
                    source, where, f"{value!r} is not a component that ssl_train's configs build under {top_key(where)}", TRUST_HINT.replace("NAME", str(value))
                )
        elif name in ("_partial_", "_recursive_"):
            if not isinstance(value, bool):
                raise _refuse(source, where, f"{value!r} is not true or false")
        elif name == "_convert_":
            if value not in CONVERT_MODES:
                raise _refuse(source, where, f"{value!r} is not one of {', '.join(CONVERT_MODES)}")
        elif name == "_args_":
            if not isinstance(value, list):
                raise _refuse(source, where, f"a {type(value).__name__}, not a list of plain values")
            _check(value, where, source, also_allowed, True, depth + 1)
        elif name.startswith("_") and name.endswith("_") and len(name) > 2:
            raise _refuse(source, where, "not one of the keys _target_, _partial_, _recursive_, _convert_, _args_")
        else:
            _check(value, where, source, also_allowed, in_args, depth + 1)


def check_stored_config(stored: Any, source: str, also_allowed: Iterable[str] = ()) -> None:
    """Stop with one line naming the key of the first thing in a stored config that is not data or a registered
    component (before anything is built or resolved). `also_allowed`: exact targets of the user's own config."""
    if not isinstance(stored, dict):
        raise _refuse(source, "", f"a {type(stored).__name__}, not a mapping")
    _check(stored, "", source, frozenset(also_allowed), in_args=False)


def stored_config(stored: Any, source: str, also_allowed: Iterable[str] = ()) -> DictConfig:
    """The checked stored config as a DictConfig (it holds no interpolation, so reading it never resolves anything), old
    component names replaced by their new ones."""
    check_stored_config(stored, source, also_allowed)
    return OmegaConf.create(with_current_targets(stored))
