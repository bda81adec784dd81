"""Exact cosine nearest-neighbour search in torch (FAISS when installed) and label recall@k."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def knn_search(queries: torch.Tensor, gallery: torch.Tensor, k: int, use_faiss: bool = True, chunk: int = 2048) -> tuple[torch.Tensor, torch.Tensor]:
    """(similarities, indices), each (Q, k): the k gallery rows most cosine-similar to each query, best first."""
    k = min(k, len(gallery))
    q, g = F.normalize(queries.float(), dim=1), F.normalize(gallery.float(), dim=1)
    if use_faiss:
        try:
            import faiss

            index = faiss.IndexFlatIP(g.shape[1])
            index.add(g.numpy())
            sims, idx = index.search(q.numpy(), k)
            return torch.from_numpy(sims), torch.from_numpy(idx).long()
        except ImportError:
            pass
    sims, idx = zip(*((q[i : i + chunk] @ g.T).topk(k, dim=1) for i in range(0, len(q), chunk)), strict=True)
    return torch.cat(sims), torch.cat(idx)


def label_recall_at_k(query_labels: torch.Tensor, gallery_labels: torch.Tensor, indices: torch.Tensor, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """Label recall@k: the fraction of queries with at least one same-label gallery item among their top k (k in ks).
    Not ssl_train.eval.zero_shot.paired_recall_at_k, where each query has one matching item (its pair)."""
    hits = gallery_labels[indices] == query_labels[:, None]
    return {f"recall@{k}": hits[:, :k].any(dim=1).float().mean().item() for k in ks if k <= indices.shape[1]}
