"""Optimizers and schedules: param groups without weight decay on bias/norm, ViT layer-wise lr decay, LARS, warmup + cosine."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from typing import Annotated

import torch
from torch import nn

from ssl_train.constraints import Fraction, LearningRate, Number, OptionalWeightDecay, Positive, PositiveInt, WarmupEpochs, WeightDecay
from ssl_train.errors import UserError

LR_SCALING_RULES = ("none", "linear", "sqrt")


def scaled_lr(base_lr: float, global_batch: int, rule: str, base_batch: int = 256) -> float:
    """Effective LR: base_lr x (global_batch / base_batch) for 'linear' (Goyal et al. 2017), its sqrt for 'sqrt'."""
    if rule not in LR_SCALING_RULES:
        raise UserError(f"optim.lr_scaling={rule!r} is not one of {LR_SCALING_RULES}")
    ratio = global_batch / base_batch
    return base_lr * {"none": 1.0, "linear": ratio, "sqrt": math.sqrt(ratio)}[rule]


def warmup_cosine(step: int, total_steps: int, warmup_steps: int, min_ratio: float = 0.0) -> float:
    """LR multiplier at `step`: linear warmup from ~0 to 1, then cosine decay to `min_ratio` (SGDR, Loshchilov & Hutter 2017)."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


# a ViT's parameters below its first block (dinov2's get_vit_lr_decay_rate: layer 0)
VIT_INPUT_PARAMETERS = ("pos_embed", "patch_embed", "mask_token", "cls_token", "reg_token", "register_tokens")
VIT_BLOCK = re.compile(r"(?:^|\.)blocks\.(\d+)\.")


class LayerwiseLR:
    """Per-parameter LR multipliers of a ViT (dinov2 utils/param_groups.py, as BEiT's layer-wise decay, Bao et al. 2022):
    block i of n gets `decay` ** (n - i), the tokens and patch embedding `decay` ** (n + 1), the backbone's final norm 1,
    and the patch embedding a further `patch_embed_lr_mult`. Parameters outside `backbone.` (heads, predictors) get 1,
    except a method's own top-level `mask_token`, which dinov2 keeps in its backbone (layer 0): right for iBOT, DINOv2
    and SimMIM, whose student masks its input; MAE's and I-JEPA's belong to their decoder or predictor, which this rule
    would decay too (dinov2's rule has no decoder)."""

    def __init__(self, decay: float, patch_embed_lr_mult: float, num_blocks: int) -> None:
        self.decay, self.patch_embed_lr_mult, self.num_blocks = decay, patch_embed_lr_mult, num_blocks

    @classmethod
    def for_model(cls, model: nn.Module, decay: float, patch_embed_lr_mult: float) -> LayerwiseLR:
        blocks = {int(m.group(1)) for name, _ in model.named_parameters() if name.startswith("backbone.") and (m := VIT_BLOCK.search(name))}
        if not blocks:
            raise UserError(
                f"optim.layer_decay / optim.patch_embed_lr_mult are for ViT backbones (parameters backbone.*.blocks.<i>.*); "
                f"{type(getattr(model, 'backbone', model)).__name__} has none: leave them at null and 1.0"
            )
        return cls(decay, patch_embed_lr_mult, max(blocks) + 1)

    def __call__(self, name: str) -> float:
        in_backbone = name.startswith("backbone.") or name == "mask_token"
        if not in_backbone:
            return 1.0
        layer = self.num_blocks + 1  # the final norm and anything after the blocks
        if any(part in name for part in VIT_INPUT_PARAMETERS):
            layer = 0
        elif block := VIT_BLOCK.search(name):
            layer = int(block.group(1)) + 1
        multiplier = self.decay ** (self.num_blocks + 1 - layer)
        return multiplier * (self.patch_embed_lr_mult if "patch_embed" in name else 1.0)


def param_groups(
    module: nn.Module,
    weight_decay: float,
    exclude_bias_and_norm: bool = True,
    no_decay_names: Sequence[str] = (),
    lr_multiplier: Callable[[str], float] | None = None,
) -> list[dict]:
    """Weights with decay; biases and norm parameters (ndim <= 1) and parameters whose name contains one of
    `no_decay_names` (a ViT's pos_embed, cls_token) without it, and not LARS-adapted. With `lr_multiplier` (name ->
    factor), each of the two splits further by factor, each group carrying it as 'lr_multiplier'; the decayed
    group(s) come first."""
    grouped: dict[tuple[bool, float], list[nn.Parameter]] = {}
    for name, param in module.named_parameters():
        if not param.requires_grad:
            continue
        excluded = exclude_bias_and_norm and (param.ndim <= 1 or any(part in name for part in no_decay_names))
        grouped.setdefault((excluded, lr_multiplier(name) if lr_multiplier else 1.0), []).append(param)
    groups = []
    for (excluded, multiplier), params in sorted(grouped.items(), key=lambda item: (item[0][0], -item[0][1])):
        group: dict = {"params": params, "weight_decay": 0.0 if excluded else weight_decay}
        if excluded:
            group["lars_exclude"] = True
        if lr_multiplier is not None:
            group["lr_multiplier"] = multiplier
        groups.append(group)
    if not groups or groups[0].get("lars_exclude"):  # sorted: a decayed group, if any, is first
        groups.insert(0, {"params": [], "weight_decay": weight_decay})  # always a decayed group first, even empty
    return groups


class LARS(torch.optim.Optimizer):
    """SGD with momentum and layer-wise adaptive rate scaling (You et al. 2017), as used by SimCLR/BYOL.

    For each parameter not in a `lars_exclude=True` group (biases, norms, the online probe):
        trust = trust_coefficient * ||w|| / (||g|| + weight_decay * ||w|| + eps)   (when ||w|| > 0 and ||g|| > 0, else 1)
        update = trust * (g + weight_decay * w)
    and with `clip_lr=True` the trust ratio is clipped as in solo-learn: trust = min(trust / lr, 1), so the adapted
    step never exceeds the scheduled LR. The update then goes through momentum and `lr` like SGD. Excluded groups
    get plain SGD with momentum (their weight decay is 0).
    """

    def __init__(
        self,
        params: Iterable,
        lr: LearningRate,
        momentum: Fraction = 0.9,
        weight_decay: WeightDecay = 0.0,
        trust_coefficient: Positive = 0.001,
        eps: Positive = 1e-8,
        clip_lr: bool = False,
    ) -> None:
        if lr <= 0:
            raise ValueError(f"LARS: lr must be > 0, got {lr}")
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, trust_coefficient=trust_coefficient, eps=eps, lars_exclude=False, clip_lr=clip_lr)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable | None = None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad, weight_decay = p.grad, group["weight_decay"]
                if weight_decay:
                    grad = grad.add(p, alpha=weight_decay)
                if not group["lars_exclude"]:
                    w_norm, g_norm = torch.norm(p), torch.norm(p.grad)  # the raw gradient's norm; decay enters the denominator
                    trust = group["trust_coefficient"] * w_norm / (g_norm + weight_decay * w_norm + group["eps"])
                    if group["clip_lr"]:
                        trust = torch.clamp(trust / group["lr"], max=1.0)
                    grad = grad.mul(torch.where((w_norm > 0) & (g_norm > 0), trust, torch.ones_like(w_norm)))
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.clone(grad).detach()
                else:
                    state["momentum_buffer"].mul_(group["momentum"]).add_(grad)
                p.add_(state["momentum_buffer"], alpha=-group["lr"])
        return loss


def cosine_between(start: float, end: float, step: int, total_steps: int) -> float:
    """Cosine from `start` (step 0) to `end` (last step), no warmup: DINO's weight-decay schedule (utils.cosine_scheduler)."""
    progress = min(1.0, step / max(1, total_steps - 1))
    return end + (start - end) * 0.5 * (1 + math.cos(math.pi * progress))


class WarmupCosineSchedule(torch.optim.lr_scheduler.LambdaLR):
    """Per-step LR multipliers (LambdaLR), and the weight decay of the groups that carry a `weight_decay_end` moved along a
    cosine from their initial decay to it (DINO, iBOT: 0.04 -> 0.4 for ViTs). Resumes from its state dict like LambdaLR."""

    def __init__(self, optimizer: torch.optim.Optimizer, lr_lambdas: list[Callable[[int], float]], total_steps: int) -> None:
        self.total_steps = total_steps
        for group in optimizer.param_groups:
            group.setdefault("initial_weight_decay", group.get("weight_decay", 0.0))
        super().__init__(optimizer, lr_lambdas)

    def step(self, epoch: int | None = None) -> None:
        super().step(epoch)
        for group in self.optimizer.param_groups:
            if group.get("weight_decay_end") is not None:
                group["weight_decay"] = cosine_between(group["initial_weight_decay"], group["weight_decay_end"], self.last_epoch, self.total_steps)


class OptimRecipe:
    """How to optimise: an optimizer partial (base LR at batch 256), LR scaling rule, warmup and cosine schedule.

    `build` returns (optimizer, scheduler, effective_lr). Extra param groups (the online probe) keep their own
    constant LR and are never weight-decayed or LARS-adapted. `weight_decay_end`: the decayed weights' weight decay
    follows a cosine from optimizer.weight_decay to it over training (DINO's ViT recipe: 0.04 -> 0.4); null keeps it fixed.
    `layer_decay` (a ViT's layer-wise LR decay, dinov2 0.9) and `patch_embed_lr_mult` (dinov2 0.2): see LayerwiseLR.
    """

    def __init__(
        self,
        optimizer: Callable[..., torch.optim.Optimizer],
        lr_scaling: str = "linear",
        base_batch_size: PositiveInt = 256,
        warmup_epochs: WarmupEpochs = 1.0,
        min_lr_ratio: Fraction = 0.0,
        exclude_bias_and_norm: bool = True,
        online_probe_lr: LearningRate = 0.1,
        no_decay_names: Sequence[str] = (),
        weight_decay_end: OptionalWeightDecay = None,
        layer_decay: Annotated[float | None, Number(low=0, high=1, open_low=True, nullable=True)] = None,
        patch_embed_lr_mult: Annotated[float, Number(low=0, open_low=True)] = 1.0,
    ) -> None:
        if not isinstance(optimizer, partial):
            raise UserError("optim.optimizer must be a partial (set `_partial_: true`)")
        if lr_scaling not in LR_SCALING_RULES:
            raise UserError(f"optim.lr_scaling={lr_scaling!r} is not one of {LR_SCALING_RULES}")
        self.optimizer, self.lr_scaling, self.base_batch_size = optimizer, lr_scaling, base_batch_size
        self.warmup_epochs, self.min_lr_ratio, self.exclude_bias_and_norm = warmup_epochs, min_lr_ratio, exclude_bias_and_norm
        self.online_probe_lr, self.no_decay_names = online_probe_lr, tuple(no_decay_names)
        if weight_decay_end is not None and weight_decay_end < 0:
            raise UserError(f"optim.weight_decay_end={weight_decay_end} must be >= 0 (or null for a fixed weight decay)")
        self.weight_decay_end = weight_decay_end
        if layer_decay is not None and not 0 < layer_decay <= 1:
            raise UserError(f"optim.layer_decay={layer_decay} must be in (0, 1] (dinov2: 0.9), or null for none")
        if patch_embed_lr_mult <= 0:
            raise UserError(f"optim.patch_embed_lr_mult={patch_embed_lr_mult} must be > 0 (dinov2: 0.2; 1.0 for none)")
        self.layer_decay, self.patch_embed_lr_mult = layer_decay, patch_embed_lr_mult

    @property
    def base_lr(self) -> float:
        return float(self.optimizer.keywords["lr"])

    def effective_lr(self, global_batch: int) -> float:
        return scaled_lr(self.base_lr, global_batch, self.lr_scaling, self.base_batch_size)

    def build(self, model: nn.Module, extra_groups: list[dict], global_batch: int, steps_per_epoch: int, total_steps: int):
        """Optimizer over `model` (+ `extra_groups`, each with its own 'lr'), and a per-step LambdaLR."""
        lr = self.effective_lr(global_batch)
        weight_decay = float(self.optimizer.keywords.get("weight_decay", 0.0))
        layerwise = self.layer_decay is not None or self.patch_embed_lr_mult != 1.0
        multiplier = LayerwiseLR.for_model(model, self.layer_decay or 1.0, self.patch_embed_lr_mult) if layerwise else None
        groups = param_groups(model, weight_decay, self.exclude_bias_and_norm, self.no_decay_names, multiplier)
        for group in groups:
            if not group.get("lars_exclude") and self.weight_decay_end is not None:
                group["weight_decay_end"] = self.weight_decay_end  # the decayed groups; biases, norms and extras stay at 0
            if "lr_multiplier" in group:
                group["lr"] = lr * group["lr_multiplier"]  # the schedule multiplies each group's own initial lr
        extra = [{"weight_decay": 0.0, "lars_exclude": True, **g} for g in extra_groups]
        optimizer = self.optimizer(groups + extra, lr=lr)
        warmup_steps = int(round(self.warmup_epochs * steps_per_epoch))
        schedule = partial(warmup_cosine, total_steps=total_steps, warmup_steps=warmup_steps, min_ratio=self.min_lr_ratio)
        constant: Callable[[int], float] = lambda step: 1.0
        scheduler = WarmupCosineSchedule(optimizer, [schedule] * len(groups) + [constant] * len(extra), total_steps)
        return optimizer, scheduler, lr
