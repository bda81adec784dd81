"""The one build-time check that data, views, encoder and method fit the data's kind (ssl_train.modalities).

Data sources put their modality on `Splits.modality`; view pipelines, encoders and methods say which modalities
they take in a class attribute `modalities` (a tuple; a method without one is modality-free: a siamese loss works
on any encoder). An impossible combination stops with one line naming the options of each group that do fit.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import yaml
from hydra.utils import get_class

from ssl_train.composed import CONFIG_DIR
from ssl_train.errors import UserError
from ssl_train.modalities import modality as kind_named


def modalities_of(target: Any) -> tuple[str, ...] | None:
    """The modalities a class (or the `_target_` of a config node, or a dotted path) declares; None when it declares none."""
    if isinstance(target, str):
        try:
            target = get_class(target)
        except Exception:  # an unknown target is reported by instantiate, with its own message
            return None
    elif not isinstance(target, type):
        node_target = getattr(target, "get", lambda *_: None)("_target_")
        return modalities_of(node_target) if node_target else None
    declared = getattr(target, "modalities", None)
    return tuple(declared) if declared is not None else None


@cache
def options_for(group: str, modality: str) -> tuple[str, ...]:
    """The options of config group `group` (configs/<group>/*.yaml) whose `_target_` takes `modality` (or declares nothing)."""
    fitting = []
    for path in sorted((CONFIG_DIR / group).glob("*.yaml")):
        try:
            node = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError:
            continue
        if not isinstance(node, dict):
            continue
        if group == "data":  # a data option's modality is its source's; image sources declare none
            node = node["data"] if isinstance(node.get("data"), dict) else node  # an option in the global package nests under `data`
            target = (node.get("source") or {}).get("_target_")
            declared = (modalities_of(target) or ("image",)) if target else None
        else:
            target = node.get("_target_") or (node.get(group) or {}).get("_target_")
            declared = modalities_of(target) if target else None
        if target is None:
            continue
        if declared is None or modality in declared:
            fitting.append(path.stem)
    return tuple(fitting)


def check_fits(modality: str, data_choice: str, components: dict[str, tuple[str, Any]]) -> None:
    """Stop with one line when a component cannot take the data's modality.

    `components` maps a group ('method', 'backbone', 'augment': checked in that order) to (its chosen option, its
    config node or class).
    """
    kind = kind_named(modality, f"data={data_choice}")
    for group, (choice, target) in components.items():
        declared = modalities_of(target)
        needed = kind.reads(group)
        if declared is not None and needed not in declared:
            if group == "method":  # the method is what the user asked for: say which data it takes
                fits = tuple(dict.fromkeys(o for m in declared for o in options_for("data", m)))
                hint = f"; data options for {'/'.join(declared)} data: {', '.join(fits)}"
            else:
                fits = options_for(group, needed)
                hint = f"; {group} options for {needed} data: {', '.join(fits)}" if fits else f"; no {group} option takes {needed} data"
            raise UserError(f"{group}={choice} takes {'/'.join(declared)} data, but data={data_choice} holds {kind.holds}{hint}")
