"""Properties every pair loss shares: descent under gradient steps, invariance to swapping the views (where the loss is
symmetric), and one-line refusals of bad arguments; the losses are found in ssl_train.losses, not listed."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable

import pytest
import torch

from ssl_train import losses
from ssl_train.losses import (
    BarlowTwinsLoss,
    ContrastiveMarginLoss,
    DINOLoss,
    InfoNCELoss,
    NCELoss,
    NTXentLoss,
    SupConLoss,
    SwAVLoss,
    TripletLoss,
    VICRegLoss,
)
from ssl_train.protocols import takes
from tests.fixtures import is_pair_loss

# --- shared properties --------------------------------------------------------------------------------


def _pair_losses() -> dict[str, Callable[[], torch.nn.Module]]:
    """Every loss of ssl_train.losses.__all__ that scores two (N, D) views, built with its defaults (a required width: 8),
    so a new loss is covered without being listed; plus the decoupled NT-Xent (DCL) and every-triplet mining."""
    found: dict[str, Callable[[], torch.nn.Module]] = {}
    for name in losses.__all__:
        loss_class = getattr(losses, name)
        if is_pair_loss(loss_class):
            required = [
                p.name
                for p in inspect.signature(loss_class).parameters.values()
                if p.default is inspect.Parameter.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
            ]
            found[name] = functools.partial(loss_class, **dict.fromkeys(required, 8))
    return {**found, "TripletLoss": lambda: TripletLoss(mining="all"), "DCL": lambda: NTXentLoss(0.5, decoupled=True)}


PAIR_LOSSES = _pair_losses()


def _call(loss: torch.nn.Module, z_a: torch.Tensor, z_b: torch.Tensor) -> torch.Tensor:
    return loss(z_a, z_b, torch.arange(len(z_a))) if takes(loss.forward, "labels") else loss(z_a, z_b)


@pytest.mark.parametrize("name", sorted(PAIR_LOSSES))
def test_pair_loss_decreases_under_gradient_steps(name: str) -> None:
    loss = PAIR_LOSSES[name]()
    z_a, z_b = torch.randn(16, 8, requires_grad=True), torch.randn(16, 8, requires_grad=True)
    optimizer = torch.optim.SGD([z_a, z_b], lr=0.05)
    if any(True for _ in loss.buffers()):  # a stateful loss (TiCo's covariance EMA): one step of state, then scored with it frozen
        _call(loss, z_a, z_b)
        loss.eval()
    first = _call(loss, z_a, z_b).item()
    for _ in range(30):
        optimizer.zero_grad()
        _call(loss, z_a, z_b).backward()
        optimizer.step()
    assert _call(loss, z_a, z_b).item() < first


@pytest.mark.parametrize("name", ["SupConLoss", "BarlowTwinsLoss", "VICRegLoss", "ContrastiveMarginLoss", "TripletLoss", "DCL"])
def test_symmetric_losses_are_invariant_to_view_swap(name: str) -> None:
    loss, z_a, z_b = PAIR_LOSSES[name](), torch.randn(8, 4), torch.randn(8, 4)
    assert _call(loss, z_a, z_b).item() == pytest.approx(_call(loss, z_b, z_a).item(), abs=1e-5)


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        (lambda: InfoNCELoss(0), "temperature"),
        (lambda: SupConLoss(-1), "temperature"),
        (lambda: BarlowTwinsLoss(-1), "lambda"),
        (lambda: VICRegLoss(-1), "weights"),
        (lambda: TripletLoss(mining="hardest"), "mining"),
        (lambda: ContrastiveMarginLoss(0), "margin"),
        (lambda: NCELoss(0), "temperature"),
        (lambda: DINOLoss(4, student_temp=0), "temperatures"),
        (lambda: SwAVLoss(epsilon=0), "epsilon"),
        (lambda: NTXentLoss(debiased_tau_plus=1.0), "tau_plus"),
    ],
)
def test_losses_validate_arguments(factory, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        factory()
