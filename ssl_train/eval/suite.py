"""Evaluate a frozen encoder with every configured evaluator on features extracted once."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from ssl_train.eval.linear_probe import extract_features
from ssl_train.protocols import EncoderEvaluator, FeatureEvaluator


def evaluate_encoder(
    encoder: nn.Module,
    train_set: Dataset,
    test_set: Dataset,
    num_classes: int,
    evaluators: dict[str, Any],
    device: str | torch.device = "cpu",
    batch_size: int = 512,
) -> dict[str, float]:
    """{'<name>_<metric>': value} for each evaluator, e.g. linear_top1, knn_k20_top1.

    Evaluators with `evaluate_features` share features extracted once; those with `evaluate_encoder` (the SGD
    probe, which augments images) get the encoder and datasets.
    """
    results: dict[str, float] = {}
    on_features = {n: e for n, e in evaluators.items() if isinstance(e, FeatureEvaluator)}
    if on_features:
        train_x, train_y = extract_features(encoder, train_set, batch_size, device)
        test_x, test_y = extract_features(encoder, test_set, batch_size, device)
        for name, evaluator in on_features.items():
            for key, value in evaluator.evaluate_features(train_x, train_y, test_x, test_y, num_classes).items():
                results[f"{name}_{key}"] = value
    for name, evaluator in evaluators.items():
        if name not in on_features:
            if not isinstance(evaluator, EncoderEvaluator):
                raise TypeError(f"eval.{name}: {type(evaluator).__name__} has neither evaluate_features nor evaluate_encoder")
            for key, value in evaluator.evaluate_encoder(encoder, train_set, test_set, num_classes, device).items():
                results[f"{name}_{key}"] = value
    return results
