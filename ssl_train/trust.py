"""What a config read from a checkpoint may instantiate: `_target_`s in an allowlist, never arbitrary callables."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from ssl_train.errors import UserError

# Packages whose classes ssl_train configs build. Entry points inside them that load or compile code are refused.
ALLOWED_PACKAGES = ("ssl_train.", "torch.", "torchvision.", "lightning.", "timm.")
REFUSED_INSIDE = ("torch.hub", "torch.load", "torch.jit", "torch.package", "torch.utils.cpp_extension", "torch.ops", "torch.save",
                  "timm.models.load_checkpoint", "lightning.pytorch.cli")


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


def is_allowed(target: str, also_allowed: Iterable[str] = ()) -> bool:
    """In ALLOWED_PACKAGES and not a code-loading entry point, or exactly one of `also_allowed` (the user's own config's targets)."""
    if target in set(also_allowed):
        return True
    return target.startswith(ALLOWED_PACKAGES) and not target.startswith(REFUSED_INSIDE)


def check_stored_config(stored: Any, source: str, also_allowed: Iterable[str] = ()) -> None:
    """Stop with one line naming the first `_target_` of a checkpoint's config that is not allowed (before anything is built)."""
    allowed = list(also_allowed)
    for target in targets_in(stored):
        if not is_allowed(target, allowed):
            raise UserError(
                f"{source}: its stored config names _target_ {target!r}, which is outside the allowlist ({', '.join(p.rstrip('.') for p in ALLOWED_PACKAGES)}"
                f" and your own config): refused. If you trust this checkpoint, add trusted_targets=[{target}] or trust_checkpoint=true"
            )
