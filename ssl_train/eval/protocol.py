"""The evaluation protocol, one sequence for a training run (run.py), a saved checkpoint (eval/checkpoint.py) and the
online evaluation during training (eval/online.py): the configured evaluators on frozen features (linear probe, kNN,
representation metrics, ...) and on both towers of an image-text model (zero-shot, retrieval), both baselines (the raw
input and the random-init encoder, cached, under a forked RNG so they never move the training's random stream), the
views' alignment and LiDAR, and the one summary line printed at the end.
"""

from __future__ import annotations

import contextlib
import copy
import logging
from collections.abc import Iterator, Mapping
from typing import Any, cast

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from ssl_train.build import build_evaluators
from ssl_train.callbacks import rng_states, set_rng_states
from ssl_train.eval.baselines import ResultCache, prefixed_scores, protocol_key, raw_input_baseline, weights_fingerprint
from ssl_train.eval.metrics import alignment, augmented_view_features, lidar, positive_pair_features
from ssl_train.eval.suite import evaluate_encoder
from ssl_train.eval.zero_shot import evaluate_two_tower, two_tower_evaluators
from ssl_train.metrics import (
    INITIAL_WEIGHTS,
    KNN_TOP1,
    LINEAR_TOP1,
    RANDOM_INIT,
    RANDOM_INIT_LINEAR_TOP1,
    RANDOM_INIT_ZERO_SHOT_TOP1,
    RAW_INPUT,
    RAW_INPUT_LINEAR_TOP1,
    REPR_COLLAPSED,
    REPR_EMBEDDING_STD,
    ZERO_SHOT_CHANCE,
    ZERO_SHOT_TOP1,
    baseline_key,
)
from ssl_train.modalities import modality as kind_named

log = logging.getLogger(__name__)
REPR = "repr"  # the eval option whose scores are prefixed repr_ (RepresentationMetrics); with it a checkpoint gets alignment and LiDAR
HEADLINE_EVALUATORS = ("linear_", "knn_", "zero_shot_")  # their scores lead the summary line; other evaluators' top-1 / R@1 follow


@contextlib.contextmanager
def forked_rng() -> Iterator[None]:
    """Run the block, then put the global RNG states back: a baseline, computed or read from the cache, leaves the run's random stream as it was."""
    states = rng_states()
    try:
        yield
    finally:
        set_rng_states(states)


def view_metrics(
    encoder: nn.Module, views: Any, samples: Any, device: torch.device | str, modality: str, pairs: int = 512, lidar_samples: int = 256, lidar_views: int = 8
) -> dict[str, float]:
    """Alignment of two views of the first `pairs` samples and (images) LiDAR of `lidar_views` views of `lidar_samples`
    samples as surrogate classes; {} for views that perturb the whole graph (no per-sample pairs)."""
    kind = kind_named(modality)
    if not kind.views_pair_samples:
        return {}
    z_a, z_b = positive_pair_features(encoder, views, [samples[i][0] for i in range(min(len(samples), pairs))], device)
    scores = {"alignment": alignment(z_a, z_b)}
    if lidar_samples and kind.lidar:
        images = [samples[i][0] for i in range(min(len(samples), lidar_samples))]
        scores["lidar"] = lidar(augmented_view_features(encoder, views, images, lidar_views, device))
    return scores


class EvaluationProtocol:
    """The configured evaluators of one data module on one device, with the baselines' cache; every score is named as
    metrics.json keeps it (linear_top1, raw_input_linear_top1, random_init_zero_shot_top1, ...)."""

    def __init__(
        self, evaluators: dict[str, Any], datamodule: Any, device: torch.device, cache: ResultCache, data_cfg: dict[str, Any], eval_cfg: dict[str, Any]
    ) -> None:
        self.pair_evaluators = two_tower_evaluators(evaluators)  # zero-shot, retrieval: they read the whole image-text model
        self.evaluators = {name: e for name, e in evaluators.items() if name not in self.pair_evaluators}
        self.datamodule, self.device, self.cache = datamodule, device, cache
        self.data_cfg, self.eval_cfg = data_cfg, eval_cfg

    def encoder_scores(self, encoder: nn.Module, evaluators: dict[str, Any] | None = None) -> dict[str, float]:
        """Every feature / encoder evaluator (or only `evaluators`) on the frozen `encoder`: {'linear_top1': ..., ...}."""
        dm = self.datamodule
        chosen = self.evaluators if evaluators is None else evaluators
        train_set, test_set = dm.evaluation_datasets()
        return evaluate_encoder(encoder, train_set, test_set, dm.splits.num_classes, chosen, self.device, dm.eval_batch_size)

    def pair_scores(self, model: nn.Module, tokenizer: Any = None) -> dict[str, float]:
        """The image-text evaluators on the test pairs for `model`'s two towers, captions tokenised by `tokenizer` (default: the data's)."""
        if not self.pair_evaluators:
            return {}
        dm = self.datamodule
        tokenizer = tokenizer or dm.splits.tokenizer
        return evaluate_two_tower(
            model, dm.test_pairs(tokenizer), tokenizer, dm.splits.class_names or (), self.pair_evaluators, self.device, dm.eval_batch_size
        )

    def view_scores(self, encoder: nn.Module) -> dict[str, float]:
        """repr_alignment and repr_lidar of `encoder` under the data module's own views, when eval=repr is configured."""
        if REPR not in self.evaluators:
            return {}
        splits = self.datamodule.splits
        return {f"{REPR}_{k}": v for k, v in view_metrics(encoder, self.datamodule.views(), splits.test, self.device, splits.modality).items()}

    def baselines(
        self,
        initial_encoder: nn.Module | None = None,
        architecture: Mapping[str, Any] | None = None,
        initial_model: nn.Module | None = None,
        tokenizer: Any = None,
    ) -> dict[str, float]:
        """The raw-input scores and, given the untrained encoder (and the `architecture` that reads its weights) or the
        untrained image-text model (captions tokenised by `tokenizer`, default the data's), the random-init scores; each
        cached, all under a forked RNG."""
        scores: dict[str, float] = {}
        with forked_rng():
            if self.evaluators:
                raw = raw_input_baseline(self.cache, self.data_cfg, self.eval_cfg, self.evaluators, self.encoder_scores, self.datamodule.splits.modality)
                scores.update(prefixed_scores(RAW_INPUT, raw))
            if self.evaluators and initial_encoder is not None:
                key = {**protocol_key(self.data_cfg, self.eval_cfg), **(architecture or {}), "weights": weights_fingerprint(initial_encoder)}
                initial = self.cache.get_or_compute(RANDOM_INIT, key, lambda: self.encoder_scores(initial_encoder))
                scores.update(prefixed_scores(RANDOM_INIT, initial))
                log.info("raw input: %s; random-init encoder: %s", *(", ".join(f"{k} {v:.4f}" for k, v in r.items() if "top1" in k) for r in (raw, initial)))
            if initial_model is not None:  # the untrained towers: what zero-shot and retrieval start from
                scores.update({baseline_key(RANDOM_INIT, k): v for k, v in self.pair_scores(initial_model, tokenizer).items()})
        return scores

    def trained(self, encoder: nn.Module, model: nn.Module | None = None) -> dict[str, float]:
        """The trained `model`'s image-text scores (when given), then the trained `encoder`'s; warns when it looks collapsed."""
        scores = self.pair_scores(model) if model is not None else {}
        if self.evaluators:
            scores.update(self.encoder_scores(encoder))
            if scores.get(REPR_COLLAPSED):
                log.warning("the trained encoder looks collapsed (repr_embedding_std %.2e): check the method's settings", scores[REPR_EMBEDDING_STD])
        return scores


def initial_baselines(protocol: EvaluationProtocol, run_cfg: DictConfig, method: Any, tokenizer: Any = None, features: str = "backbone") -> dict[str, float]:
    """Both baselines of a run (`run_cfg`) whose untrained `method` is given: the raw input, and the initial encoder
    read as `features` says (the backbone, or with it the projector), cached by its architecture and weights; the
    untrained towers too when image-text evaluators are configured, captions tokenised by `tokenizer` (default: the
    protocol's data's; a checkpoint's evaluation passes its training tokenizer, which its text tower was built for)."""
    encoder = copy.deepcopy(method.backbone)
    initial = nn.Sequential(encoder, method.projector) if features == "projector" else encoder
    # keyed by the architecture as well as the weights: a different pooling reads the same weights differently
    architecture = {"backbone": OmegaConf.to_container(run_cfg.backbone, resolve=True), "eval_features": features}
    return protocol.baselines(initial, architecture, copy.deepcopy(method) if protocol.pair_evaluators else None, tokenizer)


def evaluation_device(trainer: Any = None) -> torch.device:
    """Where the evaluation extracts features: the GPU when training used one (without a trainer: when there is one), else the CPU."""
    if trainer is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device("cuda") if trainer.accelerator.__class__.__name__ == "CUDAAccelerator" else torch.device("cpu")


def configured_protocol(cfg: DictConfig, datamodule: Any, device: torch.device, data_cfg: DictConfig | None = None) -> EvaluationProtocol:
    """The protocol of cfg.eval on `datamodule`; baselines cached under paths.cache_dir, keyed by `data_cfg` (default cfg.data)."""
    data = cast(dict[str, Any], OmegaConf.to_container(cfg.data if data_cfg is None else data_cfg, resolve=True))
    return EvaluationProtocol(
        build_evaluators(cfg.eval),
        datamodule,
        device,
        ResultCache(cfg.paths.get("cache_dir")),
        data,
        cast(dict[str, Any], OmegaConf.to_container(cfg.eval, resolve=True)),
    )


def with_baselines(summary: str, metrics: Mapping[str, Any], input_name: str = "raw pixels") -> str:
    """`summary` followed by both baselines' linear top-1 when known: '... (raw pixels 0.8360, random-init encoder 0.7730)'.
    A run that started from given weights (backbone.weights) calls its initial encoder that, not random-init."""
    initial = "initial encoder (backbone.weights)" if metrics.get(INITIAL_WEIGHTS) else "random-init encoder"
    parts = [f"{label} {metrics[key]:.4f}" for label, key in ((input_name, RAW_INPUT_LINEAR_TOP1), (initial, RANDOM_INIT_LINEAR_TOP1)) if key in metrics]
    return f"{summary} ({', '.join(parts)})" if parts else summary


def summary_line(metrics: Mapping[str, Any], raw_input_name: str) -> str:
    """The scores a person reads first: linear top-1 beside both baselines, kNN, zero-shot beside chance, then any other
    evaluator's top-1 / R@1; 'no probe' when there is none."""
    parts = [with_baselines(f"linear probe top-1 {metrics[LINEAR_TOP1]:.4f}", metrics, raw_input_name)] if LINEAR_TOP1 in metrics else []
    if KNN_TOP1 in metrics:
        parts.append(f"kNN top-1 {metrics[KNN_TOP1]:.4f}")
    if ZERO_SHOT_TOP1 in metrics:
        baseline = f", random-init {metrics[RANDOM_INIT_ZERO_SHOT_TOP1]:.4f}" if RANDOM_INIT_ZERO_SHOT_TOP1 in metrics else ""
        parts.append(f"zero-shot top-1 {metrics[ZERO_SHOT_TOP1]:.4f} (chance {metrics[ZERO_SHOT_CHANCE]:.4f}{baseline})")
    baselines = (f"{RAW_INPUT}_", f"{RANDOM_INIT}_", "online_", *HEADLINE_EVALUATORS)
    parts += [f"{k} {v:.4f}" for k, v in metrics.items() if k.endswith(("_top1", "_r1")) and not k.startswith(baselines) and isinstance(v, float)]
    return ", ".join(parts) or "no probe"
