"""Label-based retrieval on frozen features: the test split queries the train split (the gallery) by cosine similarity.

mAP@R (Musgrave et al., "A Metric Learning Reality Check", ECCV 2020): for a query whose label has R gallery items,
the mean over its top R results of precision@i at each relevant rank i, divided by R; recall@k: the fraction of queries
with a same-label item among their k nearest (the metric-learning literature's recall@k)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ssl_train.constraints import Limit, PositiveInts
from ssl_train.toolkit.search import knn_search, label_recall_at_k


def map_at_r(queries: torch.Tensor, query_labels: torch.Tensor, gallery: torch.Tensor, gallery_labels: torch.Tensor, chunk: int = 256) -> float:
    """Mean over queries (with at least one relevant gallery item) of AP@R, by cosine similarity, computed in query chunks."""
    q, g = F.normalize(queries.float(), dim=1), F.normalize(gallery.float(), dim=1)
    per_label = torch.bincount(gallery_labels.clamp_min(0), minlength=int(max(query_labels.max(), gallery_labels.max())) + 1)
    r_all = per_label[query_labels.clamp_min(0)] * (query_labels >= 0)
    max_r = int(r_all.max()) if len(r_all) else 0
    total, counted = 0.0, 0
    for start in range(0, len(q), chunk):
        r = r_all[start : start + chunk]
        keep = r > 0
        if not bool(keep.any()) or max_r == 0:
            continue
        order = (q[start : start + chunk][keep] @ g.T).topk(max_r, dim=1).indices
        relevant = (gallery_labels[order] == query_labels[start : start + chunk][keep][:, None]).float()
        r = r[keep]
        ranks = torch.arange(1, max_r + 1, dtype=torch.float32)
        within_r = ranks[None, :] <= r[:, None]
        relevant = relevant * within_r
        precision_at_i = relevant.cumsum(dim=1) / ranks
        total += ((precision_at_i * relevant).sum(dim=1) / r).sum().item()
        counted += int(keep.sum())
    return total / counted if counted else 0.0


class LabelRetrieval:
    """Evaluator (`eval=[...,image_retrieval]`): mAP@R and recall@k of test-split queries against the train-split gallery."""

    def __init__(self, ks: PositiveInts = (1, 5, 10), max_queries: Limit = None) -> None:
        if not ks or min(ks) < 1:
            raise ValueError(f"eval.image_retrieval.ks must be positive, got {list(ks)}")
        self.ks, self.max_queries = tuple(ks), max_queries

    def evaluate_features(self, train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor, num_classes: int) -> dict[str, float]:
        if self.max_queries:
            test_x, test_y = test_x[: self.max_queries], test_y[: self.max_queries]
        _, indices = knn_search(test_x, train_x, max(self.ks))
        recalls = label_recall_at_k(test_y, train_y, indices, self.ks)
        recall = {f"recall_at_{k}": recalls[f"recall@{k}"] for k in self.ks if f"recall@{k}" in recalls}
        return {"map_at_r": map_at_r(test_x, test_y, train_x, train_y), **recall}
