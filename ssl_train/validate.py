"""Range and type checks for every numeric setting, by key name, before anything is built: one line naming the key."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from ssl_train.errors import UserError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Number:
    """An int or a finite float in [low, high] (an open end where `open_low` / `open_high`); None where `nullable`."""

    integer: bool = False
    low: float = -math.inf
    high: float = math.inf
    open_low: bool = False
    open_high: bool = False
    nullable: bool = False

    def problem(self, value: Any) -> str | None:
        if value is None:
            return None if self.nullable else "a value (not null)"
        kind = "an integer" if self.integer else "a finite number"
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (self.integer and not isinstance(value, int)):
            return f"{kind}{self._range()}"
        inside = math.isfinite(value) and self.low <= value <= self.high
        on_open_end = (self.open_low and value == self.low) or (self.open_high and value == self.high)
        return None if inside and not on_open_end else f"{kind}{self._range()}"

    def _range(self) -> str:
        if self.low == -math.inf and self.high == math.inf:
            return ""
        if self.high == math.inf:
            return f" {'>' if self.open_low else '>='} {self.low:g}"
        return f" in {'(' if self.open_low else '['}{self.low:g}, {self.high:g}{')' if self.open_high else ']'}"


TEMPERATURE = Number(low=0, high=100, open_low=True)  # softmax temperatures live in 0.01-1; above 100 every logit is ~0
# Upper ends for values whose absurd magnitudes (1e12, 2.5e38: an exponent gone wrong) would otherwise start a run that
# diverges, never warms up, or is all one loss term. Each bound is far above every recipe here:
LEARNING_RATE = Number(low=0, high=100, open_low=True)  # base LRs in configs/ are 5e-5-1.25 (before batch scaling)
WEIGHT_DECAY = Number(low=0, high=10)  # recipes use 1e-6-0.4 (DINO's weight_decay_end)
WARMUP_EPOCHS = Number(low=0, high=1000)  # 10-40 in the reference ViT recipes (800-1600 epochs); a longer warm-up is a typo
LOSS_WEIGHT = Number(low=0, high=1000)  # VICReg's 25 is the largest loss weight a recipe uses
POSITIVE_INT, COUNT, POSITIVE, NON_NEGATIVE, FRACTION = (
    Number(integer=True, low=1), Number(integer=True, low=0), Number(low=0, open_low=True), Number(low=0), Number(low=0, high=1))
# key name (the last part of the dotted path) -> rule; the same name means the same thing in every config group
RULES: dict[str, Number] = {
    "seed": Number(integer=True, low=0, high=2**32 - 1),
    "batch_size": POSITIVE_INT, "eval_batch_size": POSITIVE_INT, "base_batch_size": POSITIVE_INT, "num_workers": COUNT,
    "max_epochs": POSITIVE_INT, "accumulate_grad_batches": POSITIVE_INT, "log_every_n_steps": COUNT,
    "check_val_every_n_epoch": Number(integer=True, low=1, nullable=True), "every_n_epochs": POSITIVE_INT,
    "lr": LEARNING_RATE, "online_probe_lr": LEARNING_RATE, "weight_decay": WEIGHT_DECAY,
    "weight_decay_end": Number(low=0, high=10, nullable=True), "warmup_epochs": WARMUP_EPOCHS, "min_lr_ratio": FRACTION,
    "momentum": FRACTION, "momentum_base": FRACTION, "momentum_final": FRACTION, "center_momentum": FRACTION, "trust_coefficient": POSITIVE,
    "temperature": TEMPERATURE, "teacher_temp": TEMPERATURE, "student_temp": TEMPERATURE, "warmup_teacher_temp": TEMPERATURE,
    "margin": NON_NEGATIVE,
    "warmup_teacher_temp_steps": COUNT, "queue_size": COUNT, "support_set_size": POSITIVE_INT, "num_prototypes": POSITIVE_INT,
    "sinkhorn_iterations": POSITIVE_INT, "epsilon": POSITIVE, "freeze_prototypes_steps": COUNT,
    "sim_weight": LOSS_WEIGHT, "var_weight": LOSS_WEIGHT, "cov_weight": LOSS_WEIGHT, "lambda_offdiag": LOSS_WEIGHT,
    "out_dim": POSITIVE_INT, "hidden_dim": POSITIVE_INT, "bottleneck_dim": POSITIVE_INT, "num_layers": POSITIVE_INT,
    "pool_size": POSITIVE_INT, "blocks_per_stage": POSITIVE_INT, "last_width": POSITIVE_INT,
    "num_global": POSITIVE_INT, "num_local": COUNT, "local_size": POSITIVE_INT, "image_size": Number(integer=True, low=1, nullable=True),
    "crop_min": Number(low=0, high=1, open_low=True), "jitter_strength": NON_NEGATIVE,
    "flip_prob": FRACTION, "jitter_prob": FRACTION, "grayscale_prob": FRACTION, "blur_prob": FRACTION, "solarize_prob": FRACTION,
    "max_iter": POSITIVE_INT, "search_max_iter": POSITIVE_INT, "max_train_samples": Number(integer=True, low=1, nullable=True), "pairs": POSITIVE_INT,
    "holdout_fraction": Number(low=0, high=1, open_low=True, open_high=True), "validation_fraction": Number(low=0, high=1, open_high=True),
    "train_limit": Number(integer=True, low=1, nullable=True), "test_limit": Number(integer=True, low=1, nullable=True),
    "gradient_clip_val": Number(low=0, open_low=True, nullable=True),
    "test_fraction": Number(low=0, high=1, open_low=True, open_high=True), "m_per_class": Number(integer=True, low=1, nullable=True),
    "hard_negative_beta": NON_NEGATIVE, "init_temperature": TEMPERATURE, "max_length": Number(integer=True, low=3),
    "captions_per_image": POSITIVE_INT, "delete_prob": FRACTION, "synonym_fraction": NON_NEGATIVE, "insert_fraction": NON_NEGATIVE,
    "swap_fraction": NON_NEGATIVE,
    "mask_ratio": Number(low=0, high=1, open_low=True, open_high=True), "mask_patch_size": POSITIVE_INT,
    "num_targets": POSITIVE_INT, "min_keep": COUNT, "predictor_dim": POSITIVE_INT, "predictor_depth": POSITIVE_INT,
    "predictor_heads": POSITIVE_INT, "koleo_weight": LOSS_WEIGHT, "ibot_weight": LOSS_WEIGHT,
    "ibot_teacher_temp": TEMPERATURE, "ibot_masked_share": Number(low=0, high=1, open_low=True), "decoder_dim": POSITIVE_INT, "decoder_depth": POSITIVE_INT,
    "decoder_heads": POSITIVE_INT, "patch_size": Number(integer=True, low=1, nullable=True), "drop_path_rate": Number(low=0, high=1, open_high=True),
    "layer_decay": Number(low=0, high=1, open_low=True), "rank": POSITIVE_INT, "alpha": POSITIVE,
    "label_smoothing": Number(low=0, high=1, open_high=True), "mixup_alpha": NON_NEGATIVE,
    "cutmix_alpha": NON_NEGATIVE, "l2": NON_NEGATIVE, "max_queries": Number(integer=True, low=1, nullable=True),
    "lidar_samples": COUNT, "lidar_views": Number(integer=True, low=2), "max_points": POSITIVE_INT, "grid_samples": POSITIVE_INT,
    "every_n_steps": POSITIVE_INT,
}

# where a key's rule differs by place: a head's out_dim may be null (the encoder's width: SimCSE's Linear(d, d));
# a loss's or predictor's may not
RULES_AT: dict[str, Number] = {"head.out_dim": Number(integer=True, low=1, nullable=True)}


def leaves(node: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted key, value) of every leaf; `_target_` blocks included, Hydra's own node skipped."""
    if isinstance(node, dict):
        for key, value in node.items():
            if path == "" and key == "hydra":
                continue
            yield from leaves(value, f"{path}.{key}" if path else str(key))
    else:
        yield path, node


def validate(cfg: DictConfig) -> None:
    """Stop with one line at the first setting whose value is out of range or of the wrong type."""
    try:
        tree = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, (DictConfig, ListConfig)) else cfg
    except Exception as error:  # noqa: BLE001 - an interpolation that cannot resolve is itself bad input
        raise UserError(f"the config does not resolve: {str(error).splitlines()[0]}") from None
    for key, value in leaves(tree):
        name = key.rsplit(".", 1)[-1]
        rule, special = RULES_AT.get(key, RULES.get(name)), SPECIAL.get(name)
        problem = (rule.problem(value) if rule is not None else None) or (special(value) if special is not None else None)
        if problem is not None:
            written = dict(leaves(OmegaConf.to_container(cfg, resolve=False))) if isinstance(cfg, (DictConfig, ListConfig)) else {}
            source = written.get(key)  # an interpolation names the setting the value came from, e.g. ${head.out_dim}
            origin = f" (from {source})" if isinstance(source, str) and source.startswith("${") else ""
            raise UserError(f"{key}={value!r}{origin}: must be {problem}")
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
