"""Losses against independent reference computations, invariances, and descent under gradient steps."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ssl_train.losses import NegativeCosineSimilarity, NTXentLoss


def ntxent_naive(z_a: torch.Tensor, z_b: torch.Tensor, temperature: float) -> float:
    """SimCLR eq. (1) written as a loop over the 2N anchors with explicit sums (no matrix tricks)."""
    z = [F.normalize(v, dim=0) for v in torch.cat([z_a, z_b]).double()]
    n = z_a.shape[0]
    total = 0.0
    for i in range(2 * n):
        positive = (i + n) % (2 * n)
        numerator = math.exp(float(z[i] @ z[positive]) / temperature)
        denominator = sum(math.exp(float(z[i] @ z[k]) / temperature) for k in range(2 * n) if k != i)
        total += -math.log(numerator / denominator)
    return total / (2 * n)


@pytest.mark.parametrize("temperature", [0.1, 0.5, 1.0])
def test_ntxent_matches_naive_loop(temperature: float) -> None:
    z_a, z_b = torch.randn(6, 5), torch.randn(6, 5)
    assert NTXentLoss(temperature)(z_a, z_b).item() == pytest.approx(ntxent_naive(z_a, z_b, temperature), abs=1e-5)


def test_ntxent_is_symmetric_in_views_and_scale_invariant() -> None:
    z_a, z_b = torch.randn(8, 4), torch.randn(8, 4)
    loss = NTXentLoss(0.3)
    assert loss(z_a, z_b).item() == pytest.approx(loss(z_b, z_a).item(), abs=1e-6)
    assert loss(3 * z_a, 0.5 * z_b).item() == pytest.approx(loss(z_a, z_b).item(), abs=1e-5)


def test_ntxent_aligned_orthogonal_views_beat_random_views() -> None:
    eye = torch.eye(8)
    loss = NTXentLoss(0.1)
    assert loss(eye, eye).item() < loss(eye, torch.randn(8, 8)).item()
    assert loss(eye, eye).item() < 0.01  # near the minimum: positives at cos 1, negatives at cos 0


def test_ntxent_decreases_under_gradient_steps() -> None:
    z_a, z_b = torch.randn(16, 8, requires_grad=True), torch.randn(16, 8, requires_grad=True)
    loss, optimizer = NTXentLoss(0.5), torch.optim.SGD([z_a, z_b], lr=0.5)
    first = loss(z_a, z_b).item()
    for _ in range(20):
        optimizer.zero_grad()
        loss(z_a, z_b).backward()
        optimizer.step()
    assert loss(z_a, z_b).item() < first - 0.1


def test_ntxent_validates_arguments() -> None:
    with pytest.raises(ValueError, match="temperature"):
        NTXentLoss(0.0)
    with pytest.raises(ValueError, match="equal shape"):
        NTXentLoss()(torch.randn(4, 3), torch.randn(5, 3))


def test_negative_cosine_matches_reference_and_minimum() -> None:
    p, z = torch.randn(7, 5), torch.randn(7, 5)
    expected = -sum(float(p[i] @ z[i] / (p[i].norm() * z[i].norm())) for i in range(7)) / 7
    loss = NegativeCosineSimilarity()
    assert loss(p, z).item() == pytest.approx(expected, abs=1e-6)
    assert loss(z, 2 * z).item() == pytest.approx(-1.0, abs=1e-6)
