"""trainer=fsdp: FSDP2 (torch's `fully_shard`) through Lightning's ModelParallelStrategy, for ViT-sized encoders.

Every parameter becomes a DTensor sharded on its first dimension across the ranks (per-parameter sharding, not FSDP1's
flat buffers). An EMA teacher is a deep copy of the student, wrapped by the same rule, so each teacher parameter holds
the same rows of the same shape as its student parameter on every rank: the EMA update runs on the local shards with no
communication (ssl_train.methods.ema). Lightning's FSDP1 strategy is not used: it refuses CPU accelerators, and FSDP1's
flat parameters mix teacher and student rows in one buffer. Checkpoints: ssl_train.sharded_checkpoint.
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.fabric.utilities.init import _materialize_distributed_module
from lightning.fabric.utilities.optimizer import _optimizers_to_device
from lightning.pytorch.strategies import ModelParallelStrategy
from lightning.pytorch.trainer.states import TrainerFn, TrainerStatus
from lightning.pytorch.utilities import rank_zero_info
from torch import nn
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method
from torch.distributed.tensor import DTensor

from ssl_train import sharded_checkpoint
from ssl_train.errors import UserError

# encoder methods called from a method's forward or from evaluation, not through forward(): FSDP2 gathers their parameters too
ENCODER_ENTRY_POINTS = ("tokens", "cls_attention", "stages", "pool")
PARAM_DTYPES = {"bf16-mixed": torch.bfloat16}  # trainer.precision -> the dtype FSDP gathers parameters in (fp32 gradients reduced)
PRECISIONS = ("32-true", "bf16-mixed", "bf16-true")
# callbacks that run the encoder on rank 0 alone during fit (class name -> its config key): a sharded encoder cannot, its
# every forward is an all-gather the other ranks must join (rank 0 waited in it forever: the hang after an epoch's end)
RANK_ZERO_ENCODER_CALLBACKS = {"OnlineEvaluation": "callbacks.online_eval", "TrainingPictures": "callbacks.pictures"}


def mixed_precision_policy(precision: str) -> MixedPrecisionPolicy:
    """FSDP2's policy for `trainer.precision`: bf16-mixed gathers bf16 parameters for compute and reduces fp32 gradients
    (sharded parameters and optimizer state stay fp32); 32-true and bf16-true compute in the parameters' own dtype."""
    if str(precision) not in PRECISIONS:
        raise UserError(f"trainer=fsdp: trainer.precision={precision} is not supported by FSDP2; use one of {', '.join(PRECISIONS)}")
    dtype = PARAM_DTYPES.get(str(precision))
    return MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32 if dtype else None)


def without_rank_zero_encoder_callbacks(callbacks: list[Any]) -> tuple[list[Any], list[str]]:
    """`callbacks` less those that run the encoder on rank 0 alone (RANK_ZERO_ENCODER_CALLBACKS), and the config keys of those taken out."""
    dropped = [c for c in callbacks if type(c).__name__ in RANK_ZERO_ENCODER_CALLBACKS]
    return [c for c in callbacks if c not in dropped], sorted({RANK_ZERO_ENCODER_CALLBACKS[type(c).__name__] for c in dropped})


def is_encoder(module: nn.Module) -> bool:
    """An ssl_train encoder (it declares the modalities it serves): the student's backbone and its EMA copies."""
    return isinstance(getattr(type(module), "modalities", None), tuple) and hasattr(module, "out_dim")


def shard(module: nn.Module, mesh: Any, wrap: list[str], policy: MixedPrecisionPolicy, reshard_after_forward: bool = True) -> list[str]:
    """`fully_shard` bottom-up: every submodule whose class name is in `wrap` (timm's transformer `Block`), every encoder
    (its `tokens`/`pool`/... registered as forward methods), then each direct child of `module` that holds parameters
    (the method, the online probe): each is a unit that all-gathers its parameters for its forward and frees them after.
    Returns the wrapped modules' names (students and teachers alike: the same rule wraps both)."""
    units = [(name, m) for name, m in module.named_modules() if name and (type(m).__name__ in wrap or is_encoder(m))]
    units += [(name, m) for name, m in module.named_children() if any(True for _ in m.parameters()) and not isinstance(m, FSDPModule)]
    wrapped = []
    for name, unit in sorted(units, key=lambda item: -item[0].count(".")):  # innermost first
        if isinstance(unit, FSDPModule) or not any(p.numel() for p in unit.parameters()):
            continue
        fully_shard(unit, mesh=mesh, mp_policy=policy, reshard_after_forward=reshard_after_forward)
        for entry in ENCODER_ENTRY_POINTS if is_encoder(unit) else ():
            if callable(getattr(unit, entry, None)):
                register_fsdp_forward_method(unit, entry)
        wrapped.append(name)
    return wrapped


def unwrap(model: nn.Module) -> None:
    """After training, on every rank at once: each parameter gathered whole (a collective) and FSDP taken off every unit
    (its hooks removed, its class restored), so the evaluation that runs on rank 0 alone uses a plain module."""
    reshard_all(model)
    full = {name: (p.full_tensor() if isinstance(p, DTensor) else p.detach()).clone() for name, p in model.named_parameters()}
    trains = {name: p.requires_grad for name, p in model.named_parameters()}
    for unit in [m for m in model.modules() if isinstance(m, FSDPModule)]:
        state = unit._get_fsdp_state()
        state._pre_forward_hook_handle.remove()
        state._post_forward_hook_handle.remove()
        for entry in ENCODER_ENTRY_POINTS:
            unit.__dict__.pop(entry, None)  # the instance attribute register_fsdp_forward_method set
        unit.__class__ = type(unit).__bases__[1]  # FSDP<Class>(FSDPModule, Class) -> Class
    for name, value in full.items():
        owner, _, attr = name.rpartition(".")
        model.get_submodule(owner)._parameters[attr] = nn.Parameter(value, requires_grad=trains[name])


def reshard_all(module: nn.Module) -> None:
    """Free every gathered (unsharded) parameter of `module`'s FSDP units: after it, each parameter is its local shard."""
    for unit in module.modules():
        if isinstance(unit, FSDPModule):
            unit.reshard()


class FSDPStrategy(ModelParallelStrategy):
    """Lightning's ModelParallelStrategy with data parallelism only (a 1-D mesh over all ranks) and the sharding of `shard`
    applied in setup (no `configure_model` needed in the LightningModule). `wrap`: class names of the blocks that become
    their own units; `precision`: trainer.precision; `sharded_checkpoint`: each rank writes its shards (a checkpoint file
    of metadata plus a folder of shards, read back whole for export), else rank 0 gathers one full checkpoint file."""

    def __init__(
        self,
        wrap: list[str],
        precision: str,
        reshard_after_forward: bool = True,
        sharded_checkpoint: bool = True,
        process_group_backend: str | None = None,
    ) -> None:
        super().__init__(save_distributed_checkpoint=sharded_checkpoint, process_group_backend=process_group_backend)
        self.wrap, self.policy, self.reshard_after_forward = list(wrap), mixed_precision_policy(precision), reshard_after_forward
        self.wrapped: list[str] = []

    def setup_environment(self) -> None:
        self._data_parallel_size, self._tensor_parallel_size = self.num_nodes * self.num_processes, 1
        super().setup_environment()

    def setup(self, trainer: Any) -> None:
        """ModelParallelStrategy.setup, with `shard` in place of the LightningModule's configure_model."""
        assert self.model is not None and self.accelerator is not None and self.lightning_module is not None
        self.accelerator.setup(trainer)
        trainer.callbacks, dropped = without_rank_zero_encoder_callbacks(trainer.callbacks)
        if dropped:
            rank_zero_info(
                f"[ssl_train] trainer=fsdp: {', '.join(dropped)} off (they run the encoder on rank 0 alone, which a sharded encoder "
                "cannot); the evaluation after training runs as usual"
            )
        if not self.wrapped:
            self.wrapped = shard(self.lightning_module, self.device_mesh["data_parallel"], self.wrap, self.policy, self.reshard_after_forward)
        _materialize_distributed_module(self.model, self.root_device)
        self.model = self.precision_plugin.convert_module(self.model)
        self.model_to_device()
        self.barrier()
        if trainer.state.fn == TrainerFn.FITTING:
            self.setup_optimizers(trainer)
        self.setup_precision_plugin()
        if trainer.state.fn == TrainerFn.FITTING:
            _optimizers_to_device(self.optimizers, self.root_device)

    def teardown(self) -> None:
        """After a fit that ended normally: the model unwrapped (`unwrap`) for the evaluation on rank 0, then Lightning's teardown."""
        trainer = self.lightning_module._trainer if self.lightning_module is not None else None
        if self.wrapped and self.model is not None and trainer is not None and trainer.state.status == TrainerStatus.RUNNING:
            unwrap(self.model)
            self.wrapped = []
        super().teardown()

    def optimizer_step(self, *args: Any, **kwargs: Any) -> Any:
        """The step, then every unit resharded: after-step hooks (the EMA update) see local shards only, never a gathered
        copy that FSDP would discard."""
        result = super().optimizer_step(*args, **kwargs)
        assert self.model is not None
        reshard_all(self.model)
        return result

    def save_checkpoint(self, checkpoint: dict[str, Any], filepath: Any, storage_options: Any | None = None) -> None:
        if not self._save_distributed_checkpoint:
            super().save_checkpoint(checkpoint, filepath, storage_options)
            return
        sharded_checkpoint.save(self, checkpoint, filepath)

    def load_checkpoint(self, checkpoint_path: Any, weights_only: bool | None = None) -> dict[str, Any]:
        if sharded_checkpoint.is_sharded(checkpoint_path, trust=getattr(self.checkpoint_io, "trust", False)):
            return sharded_checkpoint.load(self, checkpoint_path)
        return super().load_checkpoint(checkpoint_path, weights_only=weights_only)

    def remove_checkpoint(self, filepath: Any) -> None:
        super().remove_checkpoint(filepath)
        if self.is_global_zero:
            sharded_checkpoint.remove_shards(filepath)
