"""Pieces every method family uses: encoding views of mixed sizes in as few passes as possible, pairing views for the loss."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch


def encode_views(encoder: Callable[[torch.Tensor], torch.Tensor], views: Sequence[torch.Tensor], per_view: bool = False) -> list[torch.Tensor]:
    """Run `encoder` once per group of consecutive same-sized views (global crops, then local crops: one BatchNorm batch
    for the group), or with `per_view` once per view (each view normalised with its own BatchNorm statistics, as the
    references' separate forwards); views that are not tensors (graph views: NodeBatch) are encoded one by one."""
    if per_view or not all(isinstance(v, torch.Tensor) for v in views):
        return [encoder(v) for v in views]
    outputs: list[torch.Tensor] = []
    start = 0
    while start < len(views):
        end = start
        while end < len(views) and views[end].shape == views[start].shape:
            end += 1
        outputs.extend(encoder(torch.cat(list(views[start:end]))).chunk(end - start))
        start = end
    return outputs


def pairs_over_views(num_global: int, num_views: int, symmetric: bool) -> list[tuple[int, int]]:
    """(i, j) pairs for the loss: i a global view, j any other view; with symmetric=False only j > i."""
    return [(i, j) for i in range(num_global) for j in range(num_views) if j != i and (symmetric or j > i)]
