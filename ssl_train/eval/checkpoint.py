"""Evaluate a saved encoder (`python -m ssl_train.eval ckpt_path=PATH [eval=[linear,knn]] [data=...]`): load it, probe it, write metrics."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from ssl_train.build import build_datamodule, build_encoder, build_evaluators, instantiate, needs_image_size
from ssl_train.callbacks import ConfigInCheckpoint
from ssl_train.checkpoint_io import read_checkpoint, state_dict_mismatch
from ssl_train.errors import UserError
from ssl_train.eval.baselines import ResultCache, prefixed_scores, raw_input_baseline, with_baselines
from ssl_train.eval.metrics import alignment, augmented_view_features, lidar, positive_pair_features
from ssl_train.eval.suite import evaluate_encoder
from ssl_train.eval.zero_shot import evaluate_two_tower, two_tower_evaluators
from ssl_train.modalities import modality
from ssl_train.modalities.check import modalities_of
from ssl_train.run_dir import claim_output_dir, save_hydra_files, write_new
from ssl_train.trust import stored_config, targets_in, with_current_targets
from ssl_train.validate import validate

log = logging.getLogger(__name__)
FEATURES = ("backbone", "projector")


def load_encoder(
    ckpt_path: str | Path, features: str = "backbone", trust: bool = False, also_allowed: Iterable[str] = (),
) -> tuple[torch.nn.Module, DictConfig]:
    """The trained encoder stored in an ssl_train checkpoint (backbone, or backbone + projector) and its run config.

    The file is read weights-only and its config is data (ssl_train.trust: registered `_target_`s, plus `also_allowed`, plain values), unless `trust`."""
    if features not in FEATURES:
        raise UserError(f"eval_features={features!r} is not one of {FEATURES}")
    path = Path(ckpt_path).expanduser()
    checkpoint = read_checkpoint(path, trust=trust)
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
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


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


def load_method(ckpt_path: Path, train_cfg: DictConfig, train_splits: Any, trust: bool = False) -> torch.nn.Module:
    """The whole trained method of a checkpoint (both towers of CLIP), rebuilt from its config for its training data's
    splits (input and tokenizer), weights loaded; for evaluations that need more than the encoder (zero-shot, retrieval)."""
    from ssl_train.build import build_method

    method = build_method(train_cfg, train_splits, initial_weights=False)
    _load_weights(method, _sub_state(read_checkpoint(ckpt_path, trust=trust)["state_dict"], "method."), ckpt_path, "method")
    return method


def evaluate_checkpoint_towers(ckpt_path: Path, train_cfg: DictConfig, datamodule: Any, evaluators: dict[str, Any], device: torch.device,
                               trust: bool = False, on_training_data: bool = False) -> dict[str, float]:
    """Zero-shot / retrieval of an image-text checkpoint on `datamodule`'s test pairs, captions tokenised as in training
    (`on_training_data`: `datamodule` is the checkpoint's own training data, not loaded a second time)."""
    if not evaluators:
        return {}
    if "image_text" not in (modalities_of(train_cfg.method) or ()):
        raise UserError(f"eval={','.join(evaluators)}: {'/'.join(evaluators)} need an image-text checkpoint (method=clip); "
                        f"{ckpt_path} holds method={train_cfg.method.get('name')}")
    train_splits = datamodule.splits if on_training_data else build_datamodule(train_cfg.data).splits
    method = load_method(ckpt_path, train_cfg, train_splits, trust)
    tokenizer = train_splits.tokenizer
    return evaluate_two_tower(method, datamodule.test_pairs(tokenizer), tokenizer, datamodule.splits.class_names or (), evaluators, device,
                              datamodule.eval_batch_size)


def probe_checkpoint(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate the checkpoint on its own training data, or on `data=...` when given; write metrics.json beside it."""
    validate(cfg)
    metrics_path = claim_output_dir(Path(cfg.paths.output_dir))
    save_hydra_files(cfg, metrics_path.parent)
    ckpt_path = Path(cfg.ckpt_path).expanduser()
    own_targets = [*targets_in(cfg), *cfg.get("trusted_targets", [])]  # what the user's own eval config builds is trusted
    encoder, train_cfg = load_encoder(ckpt_path, cfg.get("eval_features", "backbone"), cfg.get("trust_checkpoint", False), own_targets)
    data_cfg = cfg.data if cfg.get("data") is not None else train_cfg.data
    datamodule = build_datamodule(data_cfg, views=instantiate("augment", train_cfg.augment))  # views: alignment's positive pairs
    splits = datamodule.splits
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    evaluators = build_evaluators(cfg.eval)
    pair_evaluators = two_tower_evaluators(evaluators)
    evaluators = {name: e for name, e in evaluators.items() if name not in pair_evaluators}
    pair_metrics = evaluate_checkpoint_towers(ckpt_path, train_cfg, datamodule, pair_evaluators, device, cfg.get("trust_checkpoint", False),
                                              on_training_data=cfg.get("data") is None)
    result = pair_metrics | evaluate_encoder(encoder, *datamodule.probe_datasets(), splits.num_classes, evaluators, device, datamodule.eval_batch_size)
    metrics = {"ckpt_path": str(ckpt_path.resolve()), "method": train_cfg.method.get("name"), "eval_features": cfg.get("eval_features", "backbone"), **result}
    if "repr" in evaluators and modality(splits.modality).views_pair_samples:  # alignment: the run's own views of test samples
        test = splits.test
        pairs = positive_pair_features(encoder, datamodule.views(), [test[i][0] for i in range(min(len(test), 512))], device)
        metrics["repr_alignment"] = alignment(*pairs)
        if modality(splits.modality).lidar:  # LiDAR: 8 views of each of 256 test images as surrogate classes, as during training
            images = [test[i][0] for i in range(min(len(test), 256))]
            metrics["repr_lidar"] = lidar(augmented_view_features(encoder, datamodule.views(), images, 8, device))
    raw = raw_input_baseline(
        ResultCache(cfg.paths.get("cache_dir")), OmegaConf.to_container(data_cfg, resolve=True), OmegaConf.to_container(cfg.eval, resolve=True),
        evaluators, lambda model, chosen: evaluate_encoder(model, *datamodule.probe_datasets(), splits.num_classes, chosen, device, datamodule.eval_batch_size),
        splits.modality,
    )
    metrics.update(prefixed_scores("raw_input", raw))
    text = json.dumps(metrics, indent=2) + "\n"  # metrics-1.json, ... when taken; never written through a symlink, a dangling one included
    metrics_path = write_new(metrics_path, text)
    next_to_ckpt = write_new(ckpt_path.parent / "metrics.json", text)
    scores = ", ".join(f"{k} {v:.4f}" for k, v in result.items() if k.endswith("top1") or k.endswith("_r1"))
    raw_name = modality(splits.modality).raw_input_name
    print(f"[ssl_train] {with_baselines(scores, metrics, raw_name)} for {cfg.ckpt_path}; results in {next_to_ckpt} and {metrics_path}")
    return metrics
