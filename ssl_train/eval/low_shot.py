"""Low-label evaluation: a linear probe on frozen features fitted on 1% / 10% of the train labels (class-balanced; SimCLR's
and BYOL's label budgets, though their semi-supervised protocol fine-tunes the whole network: eval=finetune) and on k
labelled samples per class, over fixed seeds: mean +- std (the frozen-feature low-shot protocol of MSN, Assran et al.,
ECCV 2022: logistic regression on 1 / 2 / 5 images per class and 1% of the labels, over 3 splits)."""

from __future__ import annotations

import torch

from ssl_train.constraints import FractionsOfData, NonNegative, PositiveInt, PositiveInts, Seeds
from ssl_train.eval.linear_probe import LinearProbe


def balanced_subset(labels: torch.Tensor, per_class: dict[int, int], seed: int) -> torch.Tensor:
    """Indices of `per_class[c]` random samples of each class c (all of them when a class has fewer), seeded."""
    generator = torch.Generator().manual_seed(seed)
    chosen = []
    for label, count in sorted(per_class.items()):
        members = (labels == label).nonzero().flatten()
        chosen.append(members[torch.randperm(len(members), generator=generator)[:count]])
    return torch.cat(chosen).sort().values


class LowShotProbe:
    """Evaluator (`eval=[...,low_shot]`): test top-1 of a linear probe (fixed L2 `l2`: too few labels to hold some out
    for a search) fitted on each label budget — `fractions` of the train split per class, `shots` samples per class —
    once per seed; reports `<budget>_top1_mean` and `_std` (e.g. low_shot_1pct_top1_mean, low_shot_5shot_top1_std)."""

    def __init__(
        self,
        fractions: FractionsOfData = (0.01, 0.1),
        shots: PositiveInts = (1, 5, 10),
        seeds: Seeds = (0, 1, 2),
        l2: NonNegative = 1e-3,
        max_iter: PositiveInt = 50,
    ) -> None:
        if any(not 0 < f < 1 for f in fractions) or any(k < 1 for k in shots) or not seeds:
            raise ValueError(f"eval.low_shot: fractions in (0, 1), shots >= 1 and at least one seed; got {list(fractions)}, {list(shots)}, {list(seeds)}")
        self.fractions, self.shots, self.seeds = tuple(fractions), tuple(shots), tuple(seeds)
        self.probe = LinearProbe(l2_grid=[l2], max_iter=max_iter, search_max_iter=1, extend_grid=0)

    def budgets(self, labels: torch.Tensor) -> dict[str, dict[int, int]]:
        """{'1pct': {class: count}, '5shot': {...}, ...}: how many labelled samples of each class each budget keeps."""
        classes, counts = labels[labels >= 0].unique(return_counts=True)
        out = {f"{round(f * 100):g}pct": {int(c): max(1, round(f * int(n))) for c, n in zip(classes, counts, strict=True)} for f in self.fractions}
        out.update({f"{k}shot": {int(c): k for c in classes} for k in self.shots})
        return out

    def evaluate_features(self, train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor, num_classes: int) -> dict[str, float]:
        results: dict[str, float] = {}
        for name, per_class in self.budgets(train_y).items():
            scores = []
            for seed in self.seeds:
                subset = balanced_subset(train_y, per_class, seed)
                scores.append(self.probe.evaluate_features(train_x[subset], train_y[subset], test_x, test_y, num_classes)["top1"])
            values = torch.tensor(scores)
            results[f"{name}_top1_mean"] = values.mean().item()
            results[f"{name}_top1_std"] = values.std(unbiased=False).item()
        return results
