"""Every loss, DINO's last layer and SwAV's prototype scores compute in float32 under bf16 autocast (mixed precision)."""

from __future__ import annotations

import functools
from collections.abc import Callable

import pytest
import torch

from ssl_train import losses
from ssl_train.heads import DINOHead
from ssl_train.losses import (
    BarlowTwinsLoss,
    ContrastiveMarginLoss,
    DINOLoss,
    InfoNCELoss,
    NCELoss,
    NegativeCosineSimilarity,
    NTXentLoss,
    SupConLoss,
    SwAVLoss,
    TripletLoss,
    VICRegLoss,
)
from ssl_train.protocols import takes
from tests.fixtures import is_pair_loss


def _pair(n: int = 16, d: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, d, generator=g)
    return a, a + 0.3 * torch.randn(n, d, generator=g)


LABELS = torch.arange(16) % 4
CASES: dict[str, tuple[Callable[[], torch.nn.Module], Callable[[], tuple]]] = {
    "ntxent": (lambda: NTXentLoss(0.1), lambda: _pair()),
    "dcl": (lambda: NTXentLoss(0.1, decoupled=True), lambda: _pair()),
    "debiased": (lambda: NTXentLoss(0.1, debiased_tau_plus=0.1), lambda: _pair()),
    "infonce": (lambda: InfoNCELoss(0.07), lambda: _pair()),
    "nce": (lambda: NCELoss(0.1), lambda: _pair()),
    "supcon": (lambda: SupConLoss(0.1), lambda: (*_pair(), LABELS)),
    "margin": (lambda: ContrastiveMarginLoss(), lambda: _pair()),
    "triplet": (lambda: TripletLoss(mining="all"), lambda: (*_pair(), LABELS)),
    "barlow_twins": (lambda: BarlowTwinsLoss(), lambda: _pair()),
    "vicreg": (lambda: VICRegLoss(), lambda: _pair()),
    "negative_cosine": (lambda: NegativeCosineSimilarity(), lambda: _pair()),
    "dino": (lambda: DINOLoss(out_dim=32, student_temp=0.1, teacher_temp=0.04), lambda: ([*_pair(), _pair()[0] * 2], list(_pair()))),
    "swav": (lambda: SwAVLoss(temperature=0.1), lambda: ([torch.nn.functional.normalize(v, dim=1) for v in (*_pair(), _pair()[1] * 3)],)),
}
# every other loss on two views in ssl_train.losses.__all__ (a new one joins without being listed), with its defaults
CASES.update(
    {
        name: (functools.partial(getattr(losses, name), **{k: 32 for k in ("dim", "out_dim") if takes(getattr(losses, name), k)}), lambda: _pair())
        for name in losses.__all__
        if is_pair_loss(getattr(losses, name)) and getattr(losses, name) not in {type(make()) for make, _ in CASES.values()}
    }
)


def _as(value: object, dtype: torch.dtype) -> object:
    if isinstance(value, torch.Tensor):
        return value.to(dtype) if value.is_floating_point() else value
    if isinstance(value, list):
        return [_as(v, dtype) for v in value]
    return value


@pytest.mark.parametrize("name", sorted(CASES))
def test_loss_under_bf16_autocast_equals_float32(name: str) -> None:
    make_loss, make_inputs = CASES[name]
    inputs = [_as(v, torch.bfloat16) for v in make_inputs()]  # what a bf16 projector hands the loss
    reference = make_loss()(*[_as(v, torch.float32) for v in inputs])  # the same values, float32, no autocast
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = make_loss()(*inputs)
    assert mixed.dtype == torch.float32
    assert mixed.item() == pytest.approx(reference.item(), rel=1e-4, abs=1e-6)


def test_dino_head_and_swav_scores_are_float32_under_autocast() -> None:
    from ssl_train.encoders.resnet import SmallResNet
    from ssl_train.heads import MLP
    from ssl_train.methods.multicrop import SwAVMethod

    torch.manual_seed(0)
    head, x = DINOHead(16, hidden_dim=32, bottleneck_dim=8, out_dim=64), torch.randn(4, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = head(x)
    assert logits.dtype == torch.float32
    method = SwAVMethod(SmallResNet(1, widths=(8, 16)), MLP(16, 32, 8, num_layers=2), SwAVLoss(), num_prototypes=10)
    views = [torch.randn(6, 1, 28, 28), torch.randn(6, 1, 28, 28)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = method(views, torch.zeros(6, dtype=torch.long))
    assert out["loss"].dtype == torch.float32
