"""The interfaces the generic parts rely on (methods, their hooks, evaluators), as typed protocols instead of attribute probing."""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any, Protocol, cast, runtime_checkable

import torch
from torch import nn
from torch.utils.data import Dataset


@runtime_checkable
class Method(Protocol):
    """A self-supervised method: forward(views, labels) -> {"loss", "features" (backbone, detached), "logs"}."""

    backbone: nn.Module
    projector: nn.Module

    def __call__(self, views: Sequence[torch.Tensor], labels: torch.Tensor | None = None) -> dict[str, Any]: ...


def is_method(candidate: object) -> bool:
    """Whether `candidate` satisfies Method. Not isinstance(candidate, Method): from Python 3.12 a runtime Protocol check
    looks members up statically, and an nn.Module keeps its submodules in `_modules`, so every method would fail it."""
    return callable(candidate) and all(isinstance(getattr(candidate, name, None), nn.Module) for name in ("backbone", "projector"))


def width_of(module: nn.Module) -> int:
    """The width of an encoder's or a head's output: the `out_dim` every encoder and head sets. A plain attribute, which
    nn.Module's __getattr__ (the stubs' only account of attributes set in __init__) types as Tensor | Module."""
    return cast(int, module.out_dim)


@runtime_checkable
class UpdatesAfterOptimizerStep(Protocol):
    """A method with state that follows the optimizer step (EMA targets, schedules): called after every real step."""

    def on_optimizer_step(self, step: int, max_steps: int) -> None: ...


@runtime_checkable
class EditsGradients(Protocol):
    """A method that edits gradients between backward and the optimizer step (frozen prototypes or last layer)."""

    def on_after_backward(self, step: int, epoch: int) -> None: ...


@runtime_checkable
class PatchTokenEncoder(Protocol):
    """An encoder of image patches (a ViT): `tokens(images, keep=, masked=, mask_token=)` -> (N, prefix + L, D), `pool`,
    `num_patches(image_size)`; `patch_size` is None when the same class wraps a CNN (TimmEncoder)."""

    patch_size: int | None

    def tokens(
        self, images: torch.Tensor, keep: torch.Tensor | None = None, masked: torch.Tensor | None = None, mask_token: torch.Tensor | None = None
    ) -> torch.Tensor: ...

    def pool(self, tokens: torch.Tensor) -> torch.Tensor: ...

    def num_patches(self, image_size: int) -> int: ...


def is_vit(backbone: object) -> bool:
    """Whether `backbone` encodes patch tokens (PatchTokenEncoder with a patch size)."""
    return isinstance(backbone, PatchTokenEncoder) and backbone.patch_size is not None


@runtime_checkable
class FeatureMapEncoder(Protocol):
    """A CNN that exposes its stages: `stages(x)` -> feature maps (widths `stage_widths`), `pool(last map)` -> vector."""

    def stages(self, x: torch.Tensor) -> list[torch.Tensor]: ...

    def pool(self, feature_map: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class GraphEncoder(Protocol):
    """A graph encoder: node embeddings of a whole graph, `embed(x, edge_index)` -> (nodes, D)."""

    def embed(self, x: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class StepEncoder(Protocol):
    """A sequence encoder for predictive coding: per-step latents, causal context, pooled vector."""

    def encode_steps(self, x: torch.Tensor) -> torch.Tensor: ...

    def context(self, z: torch.Tensor) -> torch.Tensor: ...

    def pool(self, c: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class StepPredictor(Protocol):
    """A head that predicts `steps` future latents (N, T, steps, D) instead of one vector: for CPC only."""

    steps: int

    def __call__(self, context: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class PrefersChannelsLast(Protocol):
    """An encoder that says whether NHWC memory is faster for it (conv nets)."""

    prefers_channels_last: bool


def prefers_channels_last(backbone: object) -> bool:
    return isinstance(backbone, PrefersChannelsLast) and bool(backbone.prefers_channels_last)


@runtime_checkable
class CountsSkippedImages(Protocol):
    """A datamodule that counts the images its guarded decoders skipped."""

    def skipped_images(self) -> int: ...


def takes(component: Any, argument: str) -> bool:
    """Whether a class's constructor or a callable takes `argument` by name (a loss's forward `labels`, a method's
    `image_size`): the signature is the declaration."""
    try:
        return argument in inspect.signature(component).parameters
    except (TypeError, ValueError):
        return False


@runtime_checkable
class FeatureEvaluator(Protocol):
    """An evaluator on frozen features extracted once per encoder (linear probe, kNN, representation metrics)."""

    def evaluate_features(
        self, train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor, num_classes: int
    ) -> dict[str, float]: ...


@runtime_checkable
class EncoderEvaluator(Protocol):
    """An evaluator that needs the encoder and the images (e.g. the SGD probe, which augments)."""

    def evaluate_encoder(self, encoder: nn.Module, train_set: Dataset, test_set: Dataset, num_classes: int, device: str | torch.device) -> dict[str, float]: ...


@runtime_checkable
class TwoTowerEvaluator(Protocol):
    """An evaluator of image-text models on test-pair embeddings (zero-shot classification, retrieval); `embed_texts`
    embeds any texts (class-name prompts) with the model's text tower."""

    def evaluate_two_tower(
        self, image_embeddings: torch.Tensor, caption_embeddings: torch.Tensor, labels: torch.Tensor, embed_texts: Any, class_names: Sequence[str]
    ) -> dict[str, float]: ...
