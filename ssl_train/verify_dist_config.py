"""The config half of `python -m ssl_train.verify_dist`: the overrides composed as a run would, one batch of real training
views, and the case to check: the method on them, or (overrides of `loss` only) the loss on what the method hands it."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, cast

import torch
from omegaconf import DictConfig
from torch import nn

from ssl_train.build import build_datamodule, build_method, check_components_fit, instantiate
from ssl_train.composed import compose_run_config
from ssl_train.errors import UserError
from ssl_train.launch import method_name_of
from ssl_train.validate import validate

BATCH = 16  # 2 ranks x 8 rows: enough rows for batch-wide terms, cheap on a CPU
SMALL = [f"data.batch_size={BATCH}", "data.num_workers=0"]  # before the user's overrides: theirs win


@dataclass
class Subject:
    """What to check, as verify_dist.Case takes it, with its name and a line describing it."""

    name: str
    described: str
    module: nn.Module
    inputs: list[Any]
    kwargs: dict[str, Any] = field(default_factory=dict)
    call: Callable[..., torch.Tensor] | None = None
    rows: int | None = None
    rebuild: Callable[[], nn.Module] | None = None


class _Captured(Exception):
    """Raised by the capture hook to stop the method at its loss call (no loss state is updated)."""

    def __init__(self, args: tuple, kwargs: dict) -> None:
        super().__init__("captured")
        self.args, self.kwargs = args, kwargs


def loss_only(overrides: list[str]) -> bool:
    """Whether the overrides touch the loss alone (`loss=dcl`, `loss._target_=my_pkg.MyLoss`, `loss.temperature=0.2`)."""
    keys = [o.lstrip("+~").split("=", 1)[0] for o in overrides]
    return bool(keys) and all(k == "loss" or k.startswith("loss.") or k.startswith("loss/") for k in keys)


def detached(obj: Any) -> Any:
    """A copy of nested tensors without autograd history."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().clone()
    if isinstance(obj, (list, tuple)):
        return type(obj)(detached(item) for item in obj)
    if isinstance(obj, dict):
        return {key: detached(item) for key, item in obj.items()}
    return obj


def captured_loss_call(method: nn.Module, views: list[torch.Tensor], labels: torch.Tensor) -> tuple[tuple, dict]:
    """The arguments of the method's first call of its loss on this batch (the projections, crops, labels it hands over)."""

    def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
        raise _Captured(detached(args), detached(kwargs))

    handle = cast(nn.Module, method.loss).register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad():
            method(views, labels)
    except _Captured as captured:
        return captured.args, captured.kwargs
    finally:
        handle.remove()
    raise UserError("verify_dist: the method never calls its loss as a module (loss(...)); check the method instead (method=...)")


def training_batch(datamodule: Any) -> tuple[list[torch.Tensor], torch.Tensor]:
    """One batch of training views and labels, made as training makes them (on the 'device' for batched views)."""
    views = datamodule.views()
    batch, labels = next(iter(datamodule.train_dataloader()))
    if getattr(views, "on_device", False):
        batch = views.batched()(batch)
    if not all(isinstance(v, torch.Tensor) for v in batch):
        raise UserError(
            "verify_dist: the views of this data are not tensors with a batch dimension (graph data); it checks image, sequence, waveform and text methods"
        )
    return list(batch), labels


def method_call(method: nn.Module, views: list[torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
    """A method's loss on views and labels, as SSLModule.training_step calls it."""
    return method(views, labels)["loss"]


def built(overrides: list[str]) -> tuple[DictConfig, Any, nn.Module]:
    """The composed config, its datamodule and its method, as a run builds them (seeded: the same weights every time)."""
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory(prefix="verify_dist_cfg_") as tmp:
        cfg = compose_run_config(overrides, Path(tmp), SMALL)
        validate(cfg)
        datamodule = build_datamodule(cfg.data, views=instantiate("augment", cfg.augment))
        check_components_fit(cfg, datamodule.splits.modality)
        return cfg, datamodule, build_method(cfg, datamodule.splits)


def rebuilt(overrides: tuple[str, ...], loss: bool) -> nn.Module:
    """The method (or its loss) of the overrides built again, in a spawned rank, for one that does not pickle."""
    method = built(list(overrides))[2]
    return cast(nn.Module, method.loss) if loss else method


def subject_of(overrides: list[str]) -> Subject:
    """What the overrides ask to check: the loss alone when only `loss` is overridden, else the method."""
    cfg, datamodule, method = built(overrides)
    views, labels = training_batch(datamodule)
    rows = int(labels.shape[0])
    where = f"on a batch of {rows} rows: 2 gloo processes x {rows // 2} rows vs 1 process x {rows}"
    if loss_only(overrides):
        args, kwargs = captured_loss_call(method, views, labels)
        name = f"loss {cfg.loss._target_}"
        return Subject(
            name,
            f"{name} (inputs: what {cfg.method._target_} hands it) {where}",
            cast(nn.Module, method.loss),
            list(args),
            dict(kwargs),
            rows=rows,
            rebuild=partial(rebuilt, tuple(overrides), True),
        )
    name = f"method {method_name_of(cfg) or cfg.method._target_}"
    return Subject(
        name,
        f"{name} (loss {cfg.loss._target_}) {where}",
        method,
        [views, labels],
        call=method_call,
        rows=rows,
        rebuild=partial(rebuilt, tuple(overrides), False),
    )
