"""The EMA target network (BYOL, MoCo, DINO, iBOT, I-JEPA): stop-gradient copies of online modules, the momentum schedule
and the update, in one component."""

from __future__ import annotations

import copy
import math
from typing import Literal

import torch
from torch import nn
from torch.distributed.tensor import DTensor


def cosine_momentum(step: int, max_steps: int, base: float, final: float = 1.0) -> float:
    """BYOL's EMA coefficient: tau = final - (final - base) * (cos(pi * step / max_steps) + 1) / 2."""
    progress = min(1.0, step / max(1, max_steps))
    return final - (final - base) * (math.cos(math.pi * progress) + 1) / 2


def linear_momentum(step: int, max_steps: int, base: float, final: float = 1.0) -> float:
    """I-JEPA's EMA coefficient: base + (final - base) * step / max_steps."""
    return base + (final - base) * min(1.0, step / max(1, max_steps))


SCHEDULES = {"cosine": cosine_momentum, "linear": linear_momentum}


def local_shard(name: str, target: torch.Tensor, online: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The rows of a parameter pair this process holds. Under trainer=fsdp (ssl_train.fsdp) both are DTensors sharded the
    same way (a teacher is a copy of its student, wrapped by the same rule), so their local shards are the same rows and
    the update needs no communication; anything else (one side gathered or laid out differently) is refused."""
    if not isinstance(target, DTensor) and not isinstance(online, DTensor):
        return target, online
    if not (isinstance(target, DTensor) and isinstance(online, DTensor) and target.placements == online.placements and target.shape == online.shape):
        raise RuntimeError(f"EMA update of {name}: the target and online parameters are not sharded alike ({type(target).__name__}, {type(online).__name__})")
    return target.to_local(), online.to_local()


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, momentum: float) -> None:
    """target <- momentum * target + (1 - momentum) * online, for parameters and float buffers (BN stats); on local shards
    when the modules are sharded (FSDP2)."""
    for (name, t), o in zip(target.named_parameters(), online.parameters(), strict=True):
        t_local, o_local = local_shard(name, t, o)
        t_local.mul_(momentum).add_(o_local.detach(), alpha=1 - momentum)
    for buffer, source in zip(target.buffers(), online.buffers(), strict=True):
        if buffer.dtype.is_floating_point:
            buffer.mul_(momentum).add_(source.detach(), alpha=1 - momentum)
        else:
            buffer.copy_(source)


class EMATarget(nn.ModuleDict):
    """Frozen copies of the online modules given by name (`EMATarget(backbone=b, projector=p)` -> `target["backbone"]`),
    moved towards them after each optimizer step with momentum from `base` to `final` (`schedule`: cosine or linear)."""

    def __init__(self, base: float = 0.99, final: float = 1.0, schedule: Literal["cosine", "linear"] = "cosine", **online: nn.Module) -> None:
        if not 0.0 <= base <= final <= 1.0:
            raise ValueError(f"method.momentum_base/final must satisfy 0 <= base <= final <= 1, got {base}, {final}")
        super().__init__({name: copy.deepcopy(module).requires_grad_(False) for name, module in online.items()})
        self.base, self.final, self.schedule, self.momentum = base, final, SCHEDULES[schedule], base

    @torch.no_grad()
    def follow(self, step: int, max_steps: int, **online: nn.Module) -> None:
        """After optimizer step `step`: the momentum of the schedule at that step, then every copy moved towards its online module."""
        self.momentum = self.schedule(step, max_steps, self.base, self.final)
        for name, module in online.items():
            ema_update(self[name], module, self.momentum)


def renamed_keys(renames: dict[str, str]):  # a state_dict pre-hook
    """A load_state_dict pre-hook reading checkpoints written before EMATarget (`target_backbone.` -> `target.backbone.`)."""

    def hook(module: nn.Module, state_dict: dict, prefix: str, *args: object) -> None:
        for key in [k for k in state_dict if k.startswith(prefix)]:
            for old, new in renames.items():
                if key[len(prefix) :].startswith(old):
                    state_dict[prefix + new + key[len(prefix) + len(old) :]] = state_dict.pop(key)
                    break

    return hook
