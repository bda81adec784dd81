"""Which rows of two view batches are 'the same thing': shared by the pair and triplet objectives."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def embeddings_and_ids(z_a: torch.Tensor, z_b: torch.Tensor, labels: torch.Tensor | None, normalize: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack two (N, D) views into (2N, D) and give each row an id: its label if given, else its image index."""
    if z_a.shape != z_b.shape or z_a.ndim != 2:
        raise ValueError(f"expected two (N, D) tensors of equal shape, got {tuple(z_a.shape)}, {tuple(z_b.shape)}")
    embeddings = torch.cat([z_a, z_b]).float()
    if normalize:
        embeddings = F.normalize(embeddings, dim=1)
    ids = labels if labels is not None else torch.arange(len(z_a), device=z_a.device)
    return embeddings, torch.cat([ids, ids])


def pairwise_distances(x: torch.Tensor) -> torch.Tensor:
    """Euclidean distances (M, M), with a safe gradient at zero distance."""
    squared = (x[:, None, :] - x[None, :, :]).pow(2).sum(-1)
    return torch.sqrt(squared.clamp_min(1e-12))
