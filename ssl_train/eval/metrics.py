"""Representation metrics: alignment & uniformity (Wang & Isola, ICML 2020), RankMe (Garrido et al., ICML 2023), collapse."""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)


def alignment(z_a: torch.Tensor, z_b: torch.Tensor, alpha: float = 2.0) -> float:
    """E ||f(x) - f(x+)||^alpha over positive pairs of L2-normalised embeddings (lower is better aligned)."""
    a, b = F.normalize(z_a.float(), dim=1), F.normalize(z_b.float(), dim=1)
    return (a - b).norm(dim=1).pow(alpha).mean().item()


def uniformity(z: torch.Tensor, t: float = 2.0, max_samples: int = 4096) -> float:
    """log E exp(-t ||f(x) - f(y)||^2) over pairs of L2-normalised embeddings (lower is more uniform; 0 = all identical)."""
    z = F.normalize(z[:max_samples].float(), dim=1)
    squared = torch.pdist(z).pow(2)
    return torch.logsumexp(-t * squared, dim=0).sub(torch.log(torch.tensor(float(len(squared))))).item()


def rankme(z: torch.Tensor, eps: float = 1e-7) -> float:
    """Effective rank exp(entropy of normalised singular values) of the embedding matrix (Garrido et al. 2023)."""
    singular = torch.linalg.svdvals(z.float())
    p = singular / singular.sum() + eps
    return torch.exp(-(p * torch.log(p)).sum()).item()


def normalised_std(z: torch.Tensor) -> float:
    """Mean over dimensions of the std of L2-normalised embeddings: ~1/sqrt(D) when spread out, 0 when collapsed."""
    return F.normalize(z.float(), dim=1).std(dim=0).mean().item()


def two_views(make: Any) -> tuple[Any, Any]:
    """The first two views `make()` returns; a one-view pipeline (CPC, DIM) is drawn twice (two independent draws)."""
    views = list(make())
    if len(views) < 2:
        views += list(make())
    return views[0], views[1]


@torch.no_grad()
def positive_pair_features(
    encoder: torch.nn.Module, views: Any, images: list[torch.Tensor], device: str | torch.device = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Features (encoder in eval mode) of the first two views that the run's own view pipeline makes of each image: positive pairs."""
    was_training = encoder.training
    encoder.eval().to(device)
    if getattr(views, "on_device", False):
        batched, batch = views.batched().to(device), torch.stack(images).to(device)
        first, second = two_views(lambda: batched(batch))
    else:
        made = [two_views(lambda image=image: views(image)) for image in images]
        first, second = torch.stack([m[0] for m in made]).to(device), torch.stack([m[1] for m in made]).to(device)
    z_a, z_b = encoder(first).float().cpu(), encoder(second).float().cpu()
    encoder.train(was_training)
    return z_a, z_b


def representation_metrics(z: torch.Tensor, z_positive: torch.Tensor | None = None, collapse_threshold: float = 0.01) -> dict[str, float]:
    """uniformity, rankme, normalised std (+ alignment when positives are given); warns when the std signals collapse."""
    result = {"uniformity": uniformity(z), "rankme": rankme(z), "embedding_std": normalised_std(z)}
    if z_positive is not None:
        result["alignment"] = alignment(z, z_positive)
    result["collapsed"] = float(result["embedding_std"] < collapse_threshold)
    if result["collapsed"]:
        log.warning("representation collapse: std of normalised embeddings %.2e < %.2e (all inputs map to nearly one point)",
                    result["embedding_std"], collapse_threshold)
    return result


class RepresentationMetrics:
    """Evaluator wrapper (same interface as LinearProbe/KNNClassifier) reporting metrics of the test features."""

    def __init__(self, collapse_threshold: float = 0.01) -> None:
        self.collapse_threshold = collapse_threshold

    def evaluate_features(self, train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor, num_classes: int) -> dict[str, float]:
        return representation_metrics(test_x, collapse_threshold=self.collapse_threshold)
