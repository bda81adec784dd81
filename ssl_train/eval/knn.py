"""Weighted k-nearest-neighbour classifier on frozen features (Wu et al., CVPR 2018; as in DINO's eval_knn)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ssl_train.constraints import Neighbours, PositiveInt, Temperature


class KNNClassifier:
    """Cosine-similarity kNN: each of the k nearest train samples votes for its class with weight exp(sim / T).

    Reports top-1 (and top-5 for > 5 classes) for each k in `k`; temperature 0.07 and k = 20, 200 follow
    Wu et al. 2018 / DINO. Computed in chunks of test samples, exact (no approximation).
    """

    def __init__(self, k: Neighbours = (20, 200), temperature: Temperature = 0.07, chunk_size: PositiveInt = 1024) -> None:
        if not k or min(k) < 1:
            raise ValueError(f"eval.knn.k must be a non-empty list of positive ints, got {k}")
        if temperature <= 0:
            raise ValueError(f"eval.knn.temperature must be > 0, got {temperature}")
        self.k, self.temperature, self.chunk_size = [int(v) for v in k], temperature, chunk_size

    @torch.no_grad()
    def evaluate_features(self, train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor, num_classes: int) -> dict[str, float]:
        train_x, test_x = F.normalize(train_x.float(), dim=1), F.normalize(test_x.float(), dim=1)
        max_k = min(max(self.k), len(train_x))
        correct = {(k, top): 0 for k in self.k for top in (1, 5)}
        for start in range(0, len(test_x), self.chunk_size):
            sims, idx = (test_x[start : start + self.chunk_size] @ train_x.T).topk(max_k, dim=1)
            labels = test_y[start : start + self.chunk_size]
            for k in self.k:
                kk = min(k, max_k)
                votes = torch.zeros(len(labels), num_classes)
                votes.scatter_add_(1, train_y[idx[:, :kk]], (sims[:, :kk] / self.temperature).exp())
                ranked = votes.topk(min(5, num_classes), dim=1).indices
                correct[(k, 1)] += int((ranked[:, 0] == labels).sum())
                correct[(k, 5)] += int((ranked == labels[:, None]).any(1).sum())
        result = {f"k{k}_top1": correct[(k, 1)] / len(test_x) for k in self.k}
        if num_classes > 5:
            result.update({f"k{k}_top5": correct[(k, 5)] / len(test_x) for k in self.k})
        return result
