"""TiCo: the loss against a plain transcription of the reference formula, and one training step from the config."""

from __future__ import annotations

from pathlib import Path

import torch

from ssl_train.build import build
from ssl_train.losses.tico import TiCoLoss
from tests.fixtures import compose_config


def reference_tico(z_a: torch.Tensor, z_b: torch.Tensor, C: torch.Tensor, beta: float, rho: float) -> tuple[torch.Tensor, torch.Tensor]:
    """lightly's TiCoLoss.forward (lightly/loss/tico_loss.py), one sample at a time: returns (loss, the new C)."""
    n, d = z_a.shape
    a = [z_a[i] / z_a[i].norm() for i in range(n)]
    b = [z_b[i] / z_b[i].norm() for i in range(n)]
    B = sum(torch.outer(a[i], a[i]) for i in range(n)) / n
    C = beta * C + (1 - beta) * B
    agreement = sum(float(a[i] @ b[i]) for i in range(n)) / n
    contrast = sum(float(a[i] @ C @ a[i]) for i in range(n)) / n
    return torch.tensor(1 - agreement + rho * contrast), C


def test_tico_equals_the_reference_over_steps_and_keeps_its_covariance() -> None:
    g = torch.Generator().manual_seed(0)
    loss_fn, C = TiCoLoss(dim=6, beta=0.9, rho=20.0), torch.zeros(6, 6)
    for _ in range(3):  # the covariance is state: the second and third steps read the EMA of the earlier ones
        z_a, z_b = torch.randn(8, 6, generator=g), torch.randn(8, 6, generator=g)
        expected, C = reference_tico(z_a, z_b, C, 0.9, 20.0)
        torch.testing.assert_close(loss_fn(z_a, z_b), expected)
        torch.testing.assert_close(loss_fn.covariance, C)
    assert "covariance" in loss_fn.state_dict()  # a resumed run continues the same EMA
    loss_fn.eval()
    loss_fn(torch.randn(8, 6), torch.randn(8, 6))
    torch.testing.assert_close(loss_fn.covariance, C)  # evaluation leaves it alone


def test_tico_gradient_reaches_both_terms_and_aligned_views_score_lower() -> None:
    z_a, z_b = torch.randn(16, 8, requires_grad=True), torch.randn(16, 8)
    TiCoLoss(dim=8)(z_a, z_b).backward()
    assert z_a.grad is not None and z_a.grad.abs().sum() > 0
    z = torch.randn(16, 8)
    assert TiCoLoss(dim=8)(z, z) < TiCoLoss(dim=8)(z, torch.randn(16, 8))


def test_method_tico_trains_a_step_from_its_config(tmp_path: Path) -> None:
    built = build(compose_config(["method=tico"], tmp_path))
    method, data = built.method, built.datamodule
    images = torch.stack([data.splits.train[i][0] for i in range(8)])
    views = built.module.batched_views(images) if built.module.batched_views is not None else [images, images]
    out = method(views)
    out["loss"].backward()
    assert torch.isfinite(out["loss"]) and any(p.grad is not None for p in method.backbone.parameters())
    assert method.loss.covariance.abs().sum() > 0
    method.on_optimizer_step(1, 10)
    assert 0.99 < method.momentum < 1
