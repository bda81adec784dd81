"""Method settings as stored by checkpoints written before the methods were split (data, no code): rewritten to the
settings the constructors take today, so an old run's config still builds its method."""

from __future__ import annotations

from typing import Any

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
