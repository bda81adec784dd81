"""Method settings as stored by checkpoints written before the methods were split (data, no code): rewritten to the
settings the constructors take today, so an old run's config still builds its method."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # annotations only: trust.py reads the settings rewrite without importing torch
    from torch import nn

QUEUE = "ssl_train.methods.queue.FeatureQueue"
TARGET_NETWORK, DINO, IBOT = "ssl_train.methods.TargetNetworkMethod", "ssl_train.methods.DINOMethod", "ssl_train.methods.ibot.IBOTMethod"
IBOT_SETTINGS = {
    "ibot_weight": "patch_weight",
    "ibot_teacher_temp": "patch_teacher_temp",
    "ibot_mask_ratio": "mask_ratio_range",
    "ibot_masked_share": "masked_share",
}


def current_method_settings(method: dict[str, Any]) -> dict[str, Any]:
    """A stored `method` node with today's settings: MoCo's `queue_size` N as an injected queue (0: none), DINO's
    `ibot_*` settings dropped when off (weight 0) or, when on, the node made an IBOTMethod with their new names."""
    method = dict(method)
    if method.get("_target_") == TARGET_NETWORK and "queue_size" in method:
        size = method.pop("queue_size")
        method["queue"] = {"_target_": QUEUE, "_partial_": True, "size": size, "random_init": True} if size else None
    if method.get("_target_") == DINO and "ibot_weight" in method:
        ibot = {IBOT_SETTINGS[key]: method.pop(key) for key in list(method) if key in IBOT_SETTINGS}
        if ibot["patch_weight"] > 0:
            method.update(ibot, _target_=IBOT)
    return method


def initial_values_where_missing(module: nn.Module, state_dict: dict, prefix: str, *args: object) -> None:
    """A load_state_dict pre-hook (with_module=True) for a module added to a method after checkpoints of it were written
    (MAE's and I-JEPA's final token norm, DIM's local network's norm): its missing keys take the module's current (initial)
    values, so an old checkpoint still loads strictly; the backbone, what evaluation reads, is loaded as stored."""
    for key, value in module.state_dict().items():
        state_dict.setdefault(prefix + key, value)


def local_network_before_its_norm(module: nn.Module, state_dict: dict, prefix: str, *args: object) -> None:
    """DIM checkpoints written before its local network became the reference's (a biased shortcut, no LayerNorm): the
    shortcut's bias is dropped and the norm starts at its initial values."""
    if prefix + "norm.weight" not in state_dict:
        state_dict.pop(prefix + "shortcut.bias", None)
    initial_values_where_missing(module, state_dict, prefix)
