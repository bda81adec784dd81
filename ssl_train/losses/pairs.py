"""Which rows of two view batches are 'the same thing': shared by the pair and triplet objectives."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ssl_train import dist


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


def distances_and_masks(z_a: torch.Tensor, z_b: torch.Tensor, labels: torch.Tensor | None, normalize: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pairwise distances (2N, 2N) of the stacked views, the mask of positive pairs (same id, not self) and of negatives."""
    x, ids = embeddings_and_ids(z_a, z_b, labels, normalize)
    d = pairwise_distances(x)
    same = ids[:, None] == ids[None, :]
    return d, same & ~torch.eye(len(x), dtype=torch.bool, device=x.device), ~same


def float_pair(name: str, z_a: torch.Tensor, z_b: torch.Tensor, gather: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Check two (N, D) views, cast to float32 and, when `gather` under DDP, concatenate every rank's rows (with gradients)."""
    if z_a.shape != z_b.shape or z_a.ndim != 2:
        raise ValueError(f"{name} expects two (N, D) tensors of equal shape, got {tuple(z_a.shape)}, {tuple(z_b.shape)}")
    z_a, z_b = z_a.float(), z_b.float()
    if gather and dist.is_distributed():
        z_a, z_b = dist.gather_with_grad(z_a), dist.gather_with_grad(z_b)
    return z_a, z_b
