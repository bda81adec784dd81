"""The interfaces the generic parts rely on (methods, their hooks, evaluators), as typed protocols instead of attribute probing."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

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


@runtime_checkable
class UpdatesAfterOptimizerStep(Protocol):
    """A method with state that follows the optimizer step (EMA targets, schedules): called after every real step."""

    def on_optimizer_step(self, step: int, max_steps: int) -> None: ...


@runtime_checkable
class EditsGradients(Protocol):
    """A method that edits gradients between backward and the optimizer step (frozen prototypes or last layer)."""

    def on_after_backward(self, step: int, epoch: int) -> None: ...


@runtime_checkable
class FeatureEvaluator(Protocol):
    """An evaluator on frozen features extracted once per encoder (linear probe, kNN, representation metrics)."""

    def evaluate_features(self, train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
                          num_classes: int) -> dict[str, float]: ...


@runtime_checkable
class EncoderEvaluator(Protocol):
    """An evaluator that needs the encoder and the images (e.g. the SGD probe, which augments)."""

    def evaluate_encoder(self, encoder: nn.Module, train_set: Dataset, test_set: Dataset, num_classes: int,
                         device: str | torch.device) -> dict[str, float]: ...


@runtime_checkable
class TwoTowerEvaluator(Protocol):
    """An evaluator of image-text models on test-pair embeddings (zero-shot classification, retrieval); `embed_texts`
    embeds any texts (class-name prompts) with the model's text tower."""

    def evaluate_two_tower(self, image_embeddings: torch.Tensor, caption_embeddings: torch.Tensor, labels: torch.Tensor,
                           embed_texts: Any, class_names: Sequence[str]) -> dict[str, float]: ...
