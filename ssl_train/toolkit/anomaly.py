"""Anomaly scores from embeddings: kNN distance to normal training data, or Mahalanobis distance; AUROC."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ssl_train.toolkit.search import knn_search


def knn_anomaly_scores(normal: torch.Tensor, samples: torch.Tensor, k: int = 5) -> torch.Tensor:
    """Mean cosine distance of each sample to its k nearest normal embeddings (higher = more anomalous)."""
    sims, _ = knn_search(samples, normal, k, use_faiss=False)
    return (1 - sims).mean(dim=1)


def mahalanobis_scores(normal: torch.Tensor, samples: torch.Tensor, shrinkage: float = 1e-3) -> torch.Tensor:
    """Mahalanobis distance of L2-normalised samples to the Gaussian fitted on normal embeddings (shrunk covariance)."""
    x, y = F.normalize(normal.double(), dim=1), F.normalize(samples.double(), dim=1)
    mean = x.mean(0)
    cov = torch.cov((x - mean).T) + shrinkage * torch.eye(x.shape[1], dtype=x.dtype)
    diff = y - mean
    return torch.sqrt((diff @ torch.linalg.inv(cov) * diff).sum(1).clamp_min(0)).float()


def auroc(scores: torch.Tensor, is_anomaly: torch.Tensor) -> float:
    """Area under the ROC curve of `scores` for the positive class `is_anomaly` (Mann-Whitney U with tie ranks)."""
    is_anomaly = is_anomaly.bool()
    n_pos, n_neg = int(is_anomaly.sum()), int((~is_anomaly).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("auroc needs both anomalies and normal samples")
    order = scores.double().argsort()
    ranks = torch.empty_like(order, dtype=torch.double)
    ranks[order] = torch.arange(1, len(scores) + 1, dtype=torch.double)
    sorted_scores = scores.double()[order]
    unique, inverse, counts = torch.unique_consecutive(sorted_scores, return_inverse=True, return_counts=True)
    if len(unique) < len(scores):  # average ranks over ties
        ends = counts.cumsum(0).double()
        average = ends - (counts.double() - 1) / 2
        ranks[order] = average[inverse]
    return ((ranks[is_anomaly].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)).item()
