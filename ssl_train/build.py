"""The one place that calls hydra.utils.instantiate: config groups in, plain objects out.

Any failure is reported as one line naming the group and choice, e.g. "backbone=small_resnet: <reason>".
"""

from __future__ import annotations

import copy
import typing
from dataclasses import dataclass
from typing import Any, cast

import hydra
import lightning.pytorch as pl
from lightning.pytorch.callbacks import LearningRateMonitor, ProgressBar
from lightning.pytorch.utilities import rank_zero_info
from omegaconf import DictConfig, OmegaConf, open_dict

from ssl_train.callbacks import ConfigInCheckpoint, ResumeState, skip_inherited_batch_hooks
from ssl_train.checkpoint_io import AtomicCheckpointIO
from ssl_train.data.datamodule import SSLDataModule
from ssl_train.errors import UserError
from ssl_train.launch import group_choice, method_name_of  # the options the command line chose (error lines), the method's name
from ssl_train.modalities import modality
from ssl_train.modalities.check import check_fits, modalities_of
from ssl_train.module import SSLModule
from ssl_train.portable import RUN_KEYS, load_initial_weights
from ssl_train.protocols import StepPredictor, prefers_channels_last, takes
from ssl_train.tracking.trackers import TrackerRunsInCheckpoint, build_loggers
from ssl_train.validate import validate


def _root_cause(error: BaseException) -> BaseException:
    while error.__cause__ is not None:
        error = error.__cause__
    return error


def instantiate(group: str, node: Any, *args: Any, **kwargs: Any) -> Any:
    """hydra.utils.instantiate(node), or a callable's call, with errors turned into one line naming the group."""
    try:
        if callable(node) and not isinstance(node, DictConfig):
            return node(*args, **kwargs)
        return hydra.utils.instantiate(node, *args, _convert_="all", **kwargs)
    except UserError:
        raise
    except Exception as error:  # re-raised as a user-facing error with its cause chained
        cause = _root_cause(error)
        if isinstance(cause, UserError):  # a component's own one-line message, raised inside hydra's instantiate
            raise cause from None
        raise UserError(f"{group}={group_choice(group)}: {type(cause).__name__}: {cause}") from error


@dataclass
class Built:
    """Everything a run needs, built from one config."""

    datamodule: SSLDataModule
    method: Any
    module: SSLModule
    trainer: pl.Trainer

    @property
    def backbone(self) -> Any:
        return self.method.backbone


def needs_image_size(backbone_cfg: DictConfig) -> bool:
    """Whether the backbone class takes `image_size` (a ViT is built for the data's patch grid)."""
    return takes(hydra.utils.get_class(backbone_cfg._target_), "image_size")


def build_encoder(cfg: DictConfig, in_channels: int, modality: str = "image", initial_weights: bool = True, image_size: int | None = None) -> Any:
    """The backbone of `cfg` for inputs with `in_channels` channels (features per step for sequences): random init, or
    `backbone.weights` (ssl_train.portable.load_initial_weights) unless `initial_weights` is false (a checkpoint's own
    weights replace them anyway).

    An encoder class that serves several modalities (the recurrent encoder: sequences and waveforms) is told which; one
    that declares `needs_image_size` (a ViT) gets `image_size`."""
    serves = modalities_of(cfg.backbone) or ()
    extra: dict[str, Any] = {"modality": modality} if len(serves) > 1 else {}
    if needs_image_size(cfg.backbone):  # ViTs: patches and position embeddings
        if image_size is None:
            raise UserError(f"backbone={group_choice('backbone')} needs the data's image size")
        extra["image_size"] = image_size
    node = copy.copy(cfg.backbone)
    with open_dict(node):
        run_settings = {key: node.pop(key, None) for key in RUN_KEYS}  # not constructor arguments
    weights = run_settings["weights"]
    encoder = instantiate("backbone", instantiate("backbone", node), in_channels=in_channels, **extra)
    return load_initial_weights(encoder, weights, trust=bool(cfg.get("trust_checkpoint", False))) if weights and initial_weights else encoder


def check_components_fit(cfg: DictConfig, modality: str) -> None:
    """One line when the data's modality does not fit the views, the encoder or the method (ssl_train.modalities.check)."""
    check_fits(modality, group_choice("data"), {group: (group_choice(group), cfg[group]) for group in ("method", "backbone", "augment")})


def build_datamodule(data_cfg: DictConfig, views: Any = None, world_size: int = 1) -> SSLDataModule:
    """The datamodule of a `data` config (with the partial view pipeline `views` when it trains), splits loaded now
    so that missing files fail here, early."""
    datamodule = instantiate("data", data_cfg, views=views, world_size=world_size)
    try:
        datamodule.splits  # noqa: B018 - load now
    except UserError as error:
        raise type(error)(f"data={group_choice('data')}: {error}") from error
    return datamodule


def build_evaluators(eval_cfg: DictConfig) -> dict[str, Any]:
    """{'linear': LinearProbe, 'knn': KNNClassifier, ...} from the `eval` group; null entries are skipped."""
    return {str(name): instantiate("eval", node) for name, node in eval_cfg.items() if node is not None}


def use_channels_last(setting: bool | str, backbone: Any) -> bool:
    """`channels_last`: true/false as given; `auto` follows the backbone's `prefers_channels_last` (conv nets: measured faster)."""
    if setting == "auto":
        return prefers_channels_last(backbone)
    if isinstance(setting, bool):
        return setting
    raise UserError(f"channels_last must be true, false or auto, got {setting!r}")


def use_compile(setting: bool | str, on_cuda: bool) -> bool:
    """`compile`: true/false as given; `auto` compiles on CUDA only (on 2 CPU cores torch.compile measured no gain)."""
    if setting == "auto":
        return on_cuda
    if isinstance(setting, bool):
        return setting
    raise UserError(f"compile must be true, false or auto, got {setting!r}")


def build_method(cfg: DictConfig, splits: Any, initial_weights: bool = True) -> Any:
    """Encoder (for the data's input), head, loss -> the method, random init; image-text methods also get a text tower
    (`text_encoder` group) for the data's tokenizer."""
    kind, spec = modality(splits.modality), splits.input_spec
    backbone = build_encoder(cfg, kind.in_channels(spec), splits.modality, initial_weights, kind.size(spec))
    projector = instantiate("head", instantiate("head", cfg.head), in_dim=backbone.out_dim)
    loss = instantiate("loss", cfg.loss)
    method_class = hydra.utils.get_class(cfg.method._target_)
    if isinstance(projector, StepPredictor) and typing.get_type_hints(method_class.__init__).get("projector") is not StepPredictor:  # type: ignore[misc]  # a class's __init__, for its annotations
        raise UserError(
            f"head={group_choice('head')} predicts future time steps for method=cpc; method={group_choice('method')} needs a vector head "
            "(projector, byol_projector, mlp3_last_bn, wide_projector, dino)"
        )
    name = method_name_of(cfg)  # the option chosen, stored in the config by the run (older checkpoints: method.name)
    extra: dict[str, Any] = {"name": name} if takes(method_class, "name") and name is not None else {}
    if takes(method_class, "image_size"):  # masked modelling: the patch grid of the data's images
        extra.update(image_size=kind.size(spec), channels=kind.in_channels(spec))
    if takes(method_class, "text_encoder"):
        if cfg.get("text_encoder") is None:
            raise UserError(f"method={group_choice('method')} needs a text tower: text_encoder=transformer_small, char_cnn or hf_text")
        extra["text_encoder"] = instantiate("text_encoder", instantiate("text_encoder", cfg.text_encoder), in_channels=splits.tokenizer.vocab_size)
    return instantiate("method", cfg.method, backbone=backbone, projector=projector, loss=loss, **extra)


def optim_for(optim: DictConfig, trainer: pl.Trainer) -> DictConfig:
    """The optim node, with a fused optimizer unfused when the trainer clips gradients under mixed precision: Lightning
    refuses to clip for an optimizer that unscales gradients itself (measured on a GPU: every ViT recipe with optim=adamw
    stopped at its first step). The unfused AdamW (foreach on CUDA) makes the same updates."""
    fused = OmegaConf.select(optim, "optimizer.fused", default=False)
    if not (fused and trainer.gradient_clip_val and "mixed" in str(trainer.precision)):
        return optim
    rank_zero_info(
        f"[ssl_train] optim.optimizer.fused=true -> false: Lightning clips gradients (trainer.gradient_clip_val={trainer.gradient_clip_val}) "
        f"under precision={trainer.precision} only for an unfused optimizer"
    )
    unfused = copy.deepcopy(optim)
    unfused.optimizer.fused = False
    return unfused


def build(cfg: DictConfig, tracker_runs: dict[str, str] | None = None) -> Built:
    """One pass, each object finished when made: Trainer -> data + views -> encoder, head, loss -> method -> module.

    `tracker_runs` ({'wandb': id, 'mlflow': run id} from the checkpoint being resumed) makes those trackers continue their runs."""
    validate(cfg)
    # ResumeState first: its batch-end position must be current when another callback (Preemption) saves a checkpoint
    callbacks = [ResumeState(), *(instantiate("callbacks", node) for node in (cfg.get("callbacks") or {}).values() if node is not None)]
    callbacks += [ConfigInCheckpoint(cast(dict[str, Any], OmegaConf.to_container(cfg, resolve=True))), TrackerRunsInCheckpoint()]
    loggers = build_loggers(cfg.get("logger"), lambda node, **extra: instantiate("logger", node, **extra), tracker_runs)
    logger = loggers or False
    if logger is False:  # nothing to log learning rates to (Lightning would stop with a MisconfigurationException)
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    if not cfg.trainer.get("enable_progress_bar", True):  # a progress bar callback with the bar off is another MisconfigurationException
        callbacks = [c for c in callbacks if not isinstance(c, ProgressBar)]
    checkpoint_io = AtomicCheckpointIO(trust=bool(cfg.get("trust_checkpoint", False)))
    trainer = instantiate("trainer", cfg.trainer, callbacks=callbacks, logger=logger, plugins=[checkpoint_io])
    skip_inherited_batch_hooks(trainer.callbacks)  # Lightning's own callbacks included
    if cfg.trainer.get("sync_batchnorm") and trainer.world_size > 1 and trainer.accelerator.__class__.__name__ == "CPUAccelerator":  # one process: a no-op
        raise UserError("trainer.sync_batchnorm=true needs GPUs (torch's SyncBatchNorm is CUDA-only); on CPU use backbone.norm=group")
    datamodule = build_datamodule(cfg.data, views=instantiate("augment", cfg.augment), world_size=trainer.world_size)
    check_components_fit(cfg, datamodule.splits.modality)
    splits, views = datamodule.splits, datamodule.views()
    method = build_method(cfg, splits)
    backbone = method.backbone
    compiled = use_compile(cfg.get("compile", False), trainer.accelerator.__class__.__name__ == "CUDAAccelerator")
    if compiled:
        method.backbone.compile()  # in place: state_dict keys stay those of the plain model
    channels_last = use_channels_last(cfg.get("channels_last", False), backbone)
    rank_zero_info(
        f"[ssl_train] memory format: {'channels_last (NHWC)' if channels_last else 'contiguous (NCHW)'} (channels_last={cfg.get('channels_last')}); "
        f"torch.compile of the backbone: {'on' if compiled else 'off'} (compile={cfg.get('compile')})"
    )
    module = SSLModule(
        method,
        instantiate("optim", optim_for(cfg.optim, trainer)),
        num_classes=splits.num_classes,
        global_batch_size=datamodule.batch_size,
        channels_last=channels_last,
        batched_views=views.batched() if views.on_device else None,
    )
    return Built(datamodule, method, module, trainer)
