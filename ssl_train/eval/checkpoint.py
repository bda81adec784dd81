"""Evaluate a saved encoder (`python -m ssl_train.eval ckpt_path=PATH [eval=[linear,knn]] [data=...]`): load it, evaluate it, write metrics."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any, cast

import lightning.pytorch as pl
import torch
from omegaconf import DictConfig, OmegaConf

from ssl_train.build import build_datamodule, build_encoder, build_method, instantiate, needs_image_size
from ssl_train.callbacks import ConfigInCheckpoint
from ssl_train.checkpoint_io import read_checkpoint, state_dict_mismatch
from ssl_train.errors import UserError
from ssl_train.eval.baselines import weights_fingerprint
from ssl_train.eval.protocol import EvaluationProtocol, configured_protocol, evaluation_device, forked_rng, initial_baselines, summary_line
from ssl_train.launch import Launch, chosen_options, method_name_of
from ssl_train.metrics import CKPT_PATH, EVAL_FEATURES, INITIAL_WEIGHTS, METHOD
from ssl_train.modalities import modality
from ssl_train.modalities.check import modalities_of
from ssl_train.module import INITIAL_BACKBONE_KEY
from ssl_train.run_dir import METRICS_FILE, claimed_run_dir, write_new
from ssl_train.trust import stored_config, targets_in, with_current_targets
from ssl_train.validate import validate

log = logging.getLogger(__name__)
FEATURES = ("backbone", "projector")


def encoder_from_checkpoint(
    ckpt_path: str | Path,
    features: str = "backbone",
    trust: bool = False,
    also_allowed: Iterable[str] = (),
    checkpoint: dict[str, Any] | None = None,
) -> tuple[torch.nn.Module, DictConfig]:
    """The trained encoder stored in an ssl_train checkpoint (backbone, or backbone + projector) and its run config.

    The file is read weights-only and its config is data (ssl_train.trust: registered `_target_`s, plus `also_allowed`, plain values), unless `trust`;
    `checkpoint`: the file's contents where the caller has read them already."""
    if features not in FEATURES:
        raise UserError(f"eval_features={features!r} is not one of {FEATURES}")
    path = Path(ckpt_path).expanduser()
    checkpoint = read_checkpoint(path, trust=trust) if checkpoint is None else checkpoint
    if ConfigInCheckpoint.KEY not in checkpoint:
        raise UserError(f"ckpt_path: {path} is not an ssl_train checkpoint (it has no '{ConfigInCheckpoint.KEY}')")
    stored = checkpoint[ConfigInCheckpoint.KEY]
    train_cfg = OmegaConf.create(with_current_targets(stored)) if trust else stored_config(stored, f"ckpt_path {path}", also_allowed)
    backbone_state = _sub_state(checkpoint["state_dict"], "method.backbone.")
    encoder = build_encoder(train_cfg, *input_of(train_cfg, backbone_state), initial_weights=False, image_size=_image_size_of(train_cfg))
    _load_weights(encoder, backbone_state, path, "backbone")
    if features == "projector":
        projector = instantiate("head", instantiate("head", train_cfg.head), in_dim=encoder.out_dim)
        _load_weights(projector, _sub_state(checkpoint["state_dict"], "method.projector."), path, "projector")
        encoder = torch.nn.Sequential(encoder, projector)
    return encoder, train_cfg


def _image_size_of(train_cfg: DictConfig) -> int | None:
    """The training data's image size, for a backbone built for one (a ViT's patch grid); None for the others."""
    if needs_image_size(train_cfg.backbone):
        splits = build_datamodule(train_cfg.data).splits
        return modality(splits.modality).size(splits.input_spec)
    return None


def _load_weights(module: torch.nn.Module, state: dict[str, torch.Tensor], path: Path, part: str) -> None:
    """load_state_dict, with a mismatch (another version of the backbone, a changed config) as one line."""
    try:
        module.load_state_dict(state)
    except RuntimeError as error:
        raise UserError(
            f"ckpt_path: {path}: its {part} weights do not fit the {part} its config builds ({state_dict_mismatch(error)}): "
            f"a checkpoint from another version of this {part}?"
        ) from None


def _sub_state(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def input_of(train_cfg: DictConfig, state: dict[str, torch.Tensor]) -> tuple[int, str]:
    """(input channels, modality) the stored backbone was built for: an image encoder's from its first conv, a
    sequence/waveform encoder's from its training data (a recurrent encoder has no 2-D conv to read them from)."""
    if not state:
        raise UserError("ckpt_path: the checkpoint holds no backbone weights (method.backbone.*)")
    if "image" in (modalities_of(train_cfg.backbone) or ("image",)):
        first_conv = next((v for v in state.values() if v.ndim == 4), None)
        if first_conv is None:
            raise UserError("ckpt_path: the checkpoint holds no convolutional backbone weights (method.backbone.*)")
        return int(first_conv.shape[1]), "image"
    splits = build_datamodule(train_cfg.data).splits
    return modality(splits.modality).in_channels(splits.input_spec), splits.modality


def stored_fingerprint(checkpoint: dict[str, Any]) -> str | None:
    """The fingerprint of the run's initial encoder a checkpoint keeps (module.SSLModule), None where it keeps none
    (older checkpoints) or keeps something that is not one (a stranger's file: its values are data), with a warning."""
    stored = checkpoint.get(INITIAL_BACKBONE_KEY)
    if stored is not None and not isinstance(stored, str):
        log.warning("the checkpoint's initial-encoder fingerprint is not a string (%s): the rebuilt encoder is not checked", type(stored).__name__)
        return None
    return stored


def initial_method(train_cfg: DictConfig, trust: bool = False, fingerprint: str | None = None) -> tuple[Any, Any] | None:
    """(The checkpoint's method before training, its training data's tokenizer): the method rebuilt as `python -m
    ssl_train` built it, seeded with the run's seed, for its training data's splits, so its encoder has the run's very
    initial weights (tested). None, with a warning, when that cannot be rebuilt here (no seed stored, the training
    data or backbone.weights missing), or when `fingerprint` (the checkpoint's, of the run's initial encoder) is given and
    the rebuilt encoder's weights differ from it (backbone.weights changed since, or another torch draws other random
    weights). backbone.weights are read as the evaluation's `trust` says, never as the stored config's trust_checkpoint."""
    seed = train_cfg.get("seed")
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**32:  # a stored value is data: checked
        log.warning("random-init baseline skipped: the checkpoint's config stores no seed in [0, 2**32) (seed: %r)", seed)
        return None
    train_cfg = cast(DictConfig, OmegaConf.merge(train_cfg, {"trust_checkpoint": trust}))  # a stored `true` must not unpickle backbone.weights
    seed_env = {name: os.environ.get(name) for name in ("PL_GLOBAL_SEED", "PL_SEED_WORKERS")}  # seed_everything sets them
    with forked_rng():  # the evaluation's own random stream is left as it was
        pl.seed_everything(seed, workers=True, verbose=False)
        try:
            datamodule = build_datamodule(train_cfg.data, views=instantiate("augment", train_cfg.augment))
            method = build_method(train_cfg, datamodule.splits)
            if fingerprint is not None and weights_fingerprint(method.backbone) != fingerprint:
                log.warning(
                    "random-init baseline skipped: the encoder rebuilt from the checkpoint's config and seed does not have the "
                    "run's initial weights (their fingerprint differs: backbone.weights changed since, or another torch version)"
                )
                return None
            return method, datamodule.splits.tokenizer
        except UserError as error:
            log.warning("random-init baseline skipped: the run's initial encoder cannot be rebuilt here (%s)", error)
            return None
        finally:
            for name, value in seed_env.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value


def load_method(ckpt_path: Path, train_cfg: DictConfig, train_splits: Any, trust: bool = False) -> torch.nn.Module:
    """The whole trained method of a checkpoint (both towers of CLIP), rebuilt from its config for its training data's
    splits (input and tokenizer), weights loaded; for evaluations that need more than the encoder (zero-shot, retrieval)."""
    from ssl_train.build import build_method

    method = build_method(train_cfg, train_splits, initial_weights=False)
    _load_weights(method, _sub_state(read_checkpoint(ckpt_path, trust=trust)["state_dict"], "method."), ckpt_path, "method")
    return method


def checkpoint_pair_scores(
    ckpt_path: Path, train_cfg: DictConfig, protocol: EvaluationProtocol, trust: bool = False, on_training_data: bool = False
) -> dict[str, float]:
    """Zero-shot / retrieval of an image-text checkpoint on the protocol's test pairs, captions tokenised as in training
    (`on_training_data`: the protocol's data is the checkpoint's own training data, not loaded a second time)."""
    evaluators = protocol.pair_evaluators
    if not evaluators:
        return {}
    if not any(modality(kind).captioned for kind in modalities_of(train_cfg.method) or ()):  # a method of captioned data (CLIP)
        raise UserError(
            f"eval={','.join(evaluators)}: {'/'.join(evaluators)} need an image-text checkpoint (method=clip); "
            f"{ckpt_path} holds method={method_name_of(train_cfg)}"
        )
    train_splits = protocol.datamodule.splits if on_training_data else build_datamodule(train_cfg.data).splits
    return protocol.pair_scores(load_method(ckpt_path, train_cfg, train_splits, trust), train_splits.tokenizer)


def evaluate_checkpoint(cfg: DictConfig, launch: Launch | None = None) -> dict[str, Any]:
    """Evaluate the checkpoint on its own training data, or on `data=...` when given; write metrics.json beside it."""
    launch = launch or Launch()
    validate(cfg)
    with claimed_run_dir(Path(cfg.paths.output_dir), launch.hydra_files) as metrics_path, chosen_options(launch.choices):
        return _evaluate(cfg, metrics_path)


def _evaluate(cfg: DictConfig, metrics_path: Path) -> dict[str, Any]:
    """Load, evaluate with the shared protocol (trained scores, views' alignment and LiDAR, both baselines), write, say."""
    ckpt_path, trust = Path(cfg.ckpt_path).expanduser(), bool(cfg.get("trust_checkpoint", False))
    own_targets = [*targets_in(cfg), *cfg.get("trusted_targets", [])]  # what the user's own eval config builds is trusted
    checkpoint = read_checkpoint(ckpt_path, trust=trust)
    encoder, train_cfg = encoder_from_checkpoint(ckpt_path, cfg.get("eval_features", "backbone"), trust, own_targets, checkpoint)
    data_cfg = cfg.data if cfg.get("data") is not None else train_cfg.data
    datamodule = build_datamodule(data_cfg, views=instantiate("augment", train_cfg.augment))  # views: alignment's positive pairs
    protocol = configured_protocol(cfg, datamodule, evaluation_device(), data_cfg)
    result = checkpoint_pair_scores(ckpt_path, train_cfg, protocol, trust, on_training_data=cfg.get("data") is None) | protocol.trained(encoder)
    features, initial = cfg.get("eval_features", "backbone"), initial_method(train_cfg, trust, stored_fingerprint(checkpoint))
    metrics = {
        CKPT_PATH: str(ckpt_path.resolve()),
        METHOD: method_name_of(train_cfg),
        EVAL_FEATURES: features,
        **result,
        **protocol.view_scores(encoder),
        **(initial_baselines(protocol, train_cfg, *initial, features) if initial is not None else protocol.baselines()),
    }
    if initial is not None and train_cfg.backbone.get("weights"):  # the initial encoder is then those weights, not random
        metrics[INITIAL_WEIGHTS] = str(train_cfg.backbone.weights)
    text = json.dumps(metrics, indent=2) + "\n"  # metrics-1.json, ... when taken; never written through a symlink, a dangling one included
    metrics_path = write_new(metrics_path, text)
    next_to_ckpt = write_new(ckpt_path.parent / METRICS_FILE, text)
    summary = summary_line(metrics, modality(datamodule.splits.modality).raw_input_name)
    print(f"[ssl_train] {summary} for {cfg.ckpt_path}; results in {next_to_ckpt} and {metrics_path}")
    return metrics
