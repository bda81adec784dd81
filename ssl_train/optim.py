"""Optimizers and schedules: param groups without weight decay on bias/norm, LARS, warmup + cosine."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from functools import partial

import torch
from torch import nn

from ssl_train.constraints import Fraction, LearningRate, OptionalWeightDecay, Positive, PositiveInt, WarmupEpochs, WeightDecay
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


def param_groups(module: nn.Module, weight_decay: float, exclude_bias_and_norm: bool = True, no_decay_names: Sequence[str] = ()) -> list[dict]:
    """Two groups: weights with decay; biases and norm parameters (ndim <= 1) and parameters whose name contains one of
    `no_decay_names` (a ViT's pos_embed, cls_token) without it, and not LARS-adapted."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for name, param in module.named_parameters():
        if not param.requires_grad:
            continue
        excluded = exclude_bias_and_norm and (param.ndim <= 1 or any(part in name for part in no_decay_names))
        (no_decay if excluded else decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0, "lars_exclude": True})
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

    @property
    def base_lr(self) -> float:
        return float(self.optimizer.keywords["lr"])

    def effective_lr(self, global_batch: int) -> float:
        return scaled_lr(self.base_lr, global_batch, self.lr_scaling, self.base_batch_size)

    def build(self, model: nn.Module, extra_groups: list[dict], global_batch: int, steps_per_epoch: int, total_steps: int):
        """Optimizer over `model` (+ `extra_groups`, each with its own 'lr'), and a per-step LambdaLR."""
        lr = self.effective_lr(global_batch)
        weight_decay = float(self.optimizer.keywords.get("weight_decay", 0.0))
        groups = param_groups(model, weight_decay, self.exclude_bias_and_norm, self.no_decay_names)
        if self.weight_decay_end is not None:
            groups[0]["weight_decay_end"] = self.weight_decay_end  # the decayed group; biases, norms and extras stay at 0
        extra = [{"weight_decay": 0.0, "lars_exclude": True, **g} for g in extra_groups]
        optimizer = self.optimizer(groups + extra, lr=lr)
        warmup_steps = int(round(self.warmup_epochs * steps_per_epoch))
        schedule = partial(warmup_cosine, total_steps=total_steps, warmup_steps=warmup_steps, min_ratio=self.min_lr_ratio)
        constant: Callable[[int], float] = lambda step: 1.0
        scheduler = WarmupCosineSchedule(optimizer, [schedule] * len(groups) + [constant] * len(extra), total_steps)
        return optimizer, scheduler, lr
