"""Offline linear probe: frozen features once, then multinomial logistic regression by full-batch L-BFGS."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset


@torch.no_grad()
def extract_features(encoder: nn.Module, dataset: Dataset, batch_size: int = 512, device: str | torch.device = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Features (N, D) in float32 and labels (N,) of `dataset` under `encoder` in eval mode (restores its mode)."""
    was_training = encoder.training
    encoder.eval().to(device)
    features, labels = [], []
    for images, targets in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        features.append(encoder(images.to(device)).float().cpu())
        labels.append(targets)
    encoder.train(was_training)
    return torch.cat(features), torch.cat(labels)


def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    """Fraction of rows whose label is among the k largest logits."""
    return (logits.topk(k, dim=1).indices == labels[:, None]).any(dim=1).float().mean().item()


def fit_logistic_regression(
    x: torch.Tensor, y: torch.Tensor, num_classes: int, l2: float, max_iter: int = 100, init: nn.Linear | None = None
) -> nn.Linear:
    """Multinomial logistic regression minimising mean cross-entropy + l2 * ||W||^2 by L-BFGS, from zeros or from `init`.

    The objective is convex, so a warm start (the solution for a nearby L2 strength, or for a subset of the
    rows) reaches the same optimum in fewer iterations; from zeros the fit is deterministic.
    """
    model = nn.Linear(x.shape[1], num_classes)
    with torch.no_grad():
        model.weight.copy_(init.weight if init is not None else torch.zeros_like(model.weight))
        model.bias.copy_(init.bias if init is not None else torch.zeros_like(model.bias))
    optimizer = torch.optim.LBFGS(
        model.parameters(), lr=1.0, max_iter=max_iter, history_size=20, line_search_fn="strong_wolfe", tolerance_grad=1e-6, tolerance_change=1e-9
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), y) + l2 * model.weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return model


class LinearProbe:
    """Linear evaluation protocol on cached frozen features (as in SimCLR/BYOL's linear eval, without augmentation).

    Features are standardised with train statistics; the L2 strength is chosen from `l2_grid` on a held-out
    `holdout_fraction` of the train split (never on test), then the classifier is refit on the whole train split.
    """

    def __init__(
        self, l2_grid: Sequence[float] = (0.0, 1e-5, 1e-4, 1e-3, 1e-2), holdout_fraction: float = 0.1, max_iter: int = 100, batch_size: int = 512, seed: int = 0
    ) -> None:
        if not l2_grid:
            raise ValueError("eval.l2_grid must hold at least one value")
        if not 0 < holdout_fraction < 1:
            raise ValueError(f"eval.holdout_fraction must be in (0, 1), got {holdout_fraction}")
        self.l2_grid, self.holdout_fraction = [float(v) for v in l2_grid], holdout_fraction
        self.max_iter, self.batch_size, self.seed = max_iter, batch_size, seed

    def evaluate_features(self, train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor, num_classes: int) -> dict[str, float]:
        """Fit on train features, choose L2 on a held-out part, report test top-1 (and top-5 for > 5 classes)."""
        mean, std = train_x.mean(0), train_x.std(0).clamp_min(1e-6)
        train_x, test_x = (train_x - mean) / std, (test_x - mean) / std
        order = torch.randperm(len(train_x), generator=torch.Generator().manual_seed(self.seed))
        n_hold = max(1, int(len(train_x) * self.holdout_fraction))
        hold, fit = order[:n_hold], order[n_hold:]
        fit_x, fit_y, hold_x, hold_y = train_x[fit], train_y[fit], train_x[hold], train_y[hold]
        scores, models, previous = {}, {}, None
        for l2 in sorted(self.l2_grid, reverse=True):  # strongest regularisation first; each fit warm-starts the next
            previous = models[l2] = fit_logistic_regression(fit_x, fit_y, num_classes, l2, self.max_iter, init=previous)
            with torch.no_grad():
                scores[l2] = topk_accuracy(previous(hold_x), hold_y, 1)
        best_l2 = max(self.l2_grid, key=lambda v: (scores[v], v))  # ties: the stronger regularisation
        model = fit_logistic_regression(train_x, train_y, num_classes, best_l2, self.max_iter, init=models[best_l2])
        with torch.no_grad():
            logits = model(test_x)
        result = {"top1": topk_accuracy(logits, test_y, 1), "l2": best_l2, "holdout_top1": scores[best_l2]}
        if num_classes > 5:
            result["top5"] = topk_accuracy(logits, test_y, 5)
        return result

    def __call__(self, encoder: nn.Module, train_set: Dataset, test_set: Dataset, num_classes: int, device: str | torch.device = "cpu") -> dict[str, float]:
        train_x, train_y = extract_features(encoder, train_set, self.batch_size, device)
        test_x, test_y = extract_features(encoder, test_set, self.batch_size, device)
        return self.evaluate_features(train_x, train_y, test_x, test_y, num_classes)
