"""Representation metrics: alignment & uniformity (Wang & Isola, ICML 2020), RankMe (Garrido et al., ICML 2023), LiDAR
(Thilak et al., ICLR 2024), collapse."""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F

from ssl_train.constraints import NonNegative

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


def lidar(features: torch.Tensor, delta: float = 1e-4, eps: float = 1e-7) -> float:
    """LiDAR (Thilak et al. 2024): the effective rank exp(entropy) of the eigenvalues of the LDA matrix
    Sigma_w^-1/2 Sigma_b Sigma_w^-1/2, where each of n samples is a surrogate class whose members are its q augmented views.
    features: (n, q, d). Sigma_b = cov of the n class means, Sigma_w = mean within-class cov + delta * I (delta keeps it
    invertible when q * n < d or views coincide); eps smooths the entropy as in RankMe."""
    if features.ndim != 3 or features.shape[1] < 2:
        raise ValueError(f"lidar: need (n samples, q >= 2 views, d) features, got shape {tuple(features.shape)}")
    z = features.double()
    if not bool(torch.isfinite(z).all()):
        return float("nan")  # diverged features: nothing to rank (the probe's feature check reports the divergence)
    n, q, d = z.shape
    means = z.mean(dim=1)
    centred_means = means - means.mean(dim=0)
    between = centred_means.T @ centred_means / n
    deviations = (z - means[:, None]).reshape(n * q, d)
    within = deviations.T @ deviations / (n * q) + delta * torch.eye(d, dtype=z.dtype)
    try:
        values, vectors = torch.linalg.eigh(within)
        inverse_sqrt = vectors @ torch.diag(values.clamp_min(delta).rsqrt()) @ vectors.T
        spectrum = torch.linalg.eigvalsh(inverse_sqrt @ between @ inverse_sqrt).clamp_min(0)
    except torch.linalg.LinAlgError:  # eigen-solver did not converge (huge, ill-conditioned features)
        return float("nan")
    if not bool(torch.isfinite(spectrum).all()) or spectrum.sum() <= 0:
        return float("nan")
    p = spectrum / spectrum.sum() + eps
    return torch.exp(-(p * torch.log(p)).sum()).item()


def normalised_std(z: torch.Tensor) -> float:
    """Mean over dimensions of the std of L2-normalised embeddings: ~1/sqrt(D) when spread out, 0 when collapsed."""
    return F.normalize(z.float(), dim=1).std(dim=0).mean().item()


def two_views(make: Any) -> tuple[Any, Any]:
    """The first two views `make()` returns; a one-view pipeline (CPC, DIM) is drawn twice (two independent draws)."""
    return tuple(draw_views(make, 2, same_shape=False))


def draw_views(make: Any, count: int, same_shape: bool = True) -> list[Any]:
    """`count` views from repeated calls of `make()` (each returns a list of views); with `same_shape`, only views shaped
    like the first (multi-crop's small local crops are left out)."""
    views: list[Any] = []
    while len(views) < count:
        made = list(make())
        if not made:
            raise ValueError("the view pipeline made no views")
        reference = views[0] if views else made[0]
        views += [v for v in made if not same_shape or v.shape == reference.shape]
    return views[:count]


def _one_batch(views: Any, images: list[torch.Tensor]) -> bool:
    """Whether the views can be made on one stacked batch: views made on the device, images of one size (an image
    folder's files differ in size: those go through the per-sample pipeline)."""
    return bool(getattr(views, "on_device", False)) and len({tuple(image.shape) for image in images}) == 1


@torch.no_grad()
def positive_pair_features(
    encoder: torch.nn.Module, views: Any, images: list[torch.Tensor], device: str | torch.device = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Features (encoder in eval mode) of the first two views that the run's own view pipeline makes of each image: positive pairs."""
    was_training = encoder.training
    encoder.eval().to(device)
    if _one_batch(views, images):
        batched, batch = views.batched().to(device), torch.stack(images).to(device)
        first, second = two_views(lambda: batched(batch))
    else:
        made = [two_views(lambda image=image: views(image)) for image in images]
        first, second = torch.stack([m[0] for m in made]).to(device), torch.stack([m[1] for m in made]).to(device)
    z_a, z_b = encoder(first).float().cpu(), encoder(second).float().cpu()
    encoder.train(was_training)
    return z_a, z_b


@torch.no_grad()
def augmented_view_features(encoder: torch.nn.Module, views: Any, images: list[torch.Tensor], count: int, device: str | torch.device = "cpu") -> torch.Tensor:
    """(n, count, d) features (encoder in eval mode) of `count` views of each image made by the run's own view pipeline:
    LiDAR's surrogate classes."""
    was_training = encoder.training
    encoder.eval().to(device)
    if _one_batch(views, images):
        batched, batch = views.batched().to(device), torch.stack(images).to(device)
        made = draw_views(lambda: batched(batch), count)  # each: (n, C, H, W)
        features = torch.stack([encoder(v).float().cpu() for v in made], dim=1)
    else:
        per_image = [draw_views(lambda image=image: views(image), count) for image in images]
        features = torch.stack([encoder(torch.stack([m[j] for m in per_image]).to(device)).float().cpu() for j in range(count)], dim=1)
    encoder.train(was_training)
    return features


def representation_metrics(z: torch.Tensor, z_positive: torch.Tensor | None = None, collapse_threshold: float = 0.01) -> dict[str, float]:
    """uniformity, rankme, normalised std (+ alignment when positives are given); warns when the std signals collapse."""
    result = {"uniformity": uniformity(z), "rankme": rankme(z), "embedding_std": normalised_std(z)}
    if z_positive is not None:
        result["alignment"] = alignment(z, z_positive)
    result["collapsed"] = float(result["embedding_std"] < collapse_threshold)
    if result["collapsed"]:
        log.warning(
            "representation collapse: std of normalised embeddings %.2e < %.2e (all inputs map to nearly one point)",
            result["embedding_std"],
            collapse_threshold,
        )
    return result


class RepresentationMetrics:
    """Evaluator wrapper (same interface as LinearProbe/KNNClassifier) reporting metrics of the test features."""

    def __init__(self, collapse_threshold: NonNegative = 0.01) -> None:
        self.collapse_threshold = collapse_threshold

    def evaluate_features(self, train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor, num_classes: int) -> dict[str, float]:
        return representation_metrics(test_x, collapse_threshold=self.collapse_threshold)
