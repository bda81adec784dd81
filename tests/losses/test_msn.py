"""MSN's loss: equal to the official init_msn_loss written out plainly (and to lightly's MSNLoss where installed), the
properties every loss here shares (descent, view-order invariance, refusals), and 2 ranks = 1 process."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from ssl_train.losses.msn import MSNLoss


def reference_sinkhorn(q: list[list[float]], iterations: int) -> list[list[float]]:
    """facebookresearch/msn src/losses.py distributed_sinkhorn in one process, on (N, K) lists: rows of Q^T to 1/K each,
    columns to 1/B each, `iterations` times, then scaled so that each sample's row sums to 1."""
    n, k = len(q), len(q[0])
    total = sum(sum(row) for row in q)
    q = [[v / total for v in row] for row in q]
    for _ in range(iterations):
        for j in range(k):  # a prototype's total weight -> 1/K
            column = sum(q[i][j] for i in range(n))
            for i in range(n):
                q[i][j] = q[i][j] / column / k
        for i in range(n):  # a sample's total weight -> 1/B
            row = sum(q[i])
            q[i] = [v / row / n for v in q[i]]
    return [[v * n for v in row] for row in q]


def reference_msn(
    anchors: list[torch.Tensor], targets: torch.Tensor, prototypes: torch.Tensor, tau: float, sharpen_t: float, use_sinkhorn: bool, me_max_weight: float
) -> float:
    """init_msn_loss's loss(...) + memax_weight x rloss, one anchor at a time: snn = softmax(cos / tau) @ one-hot labels,
    targets sharpen(snn(target), T) then Sinkhorn, loss = mean_i sum_k log(p_ik^(-t_ik)), rloss = -sum log(pbar^(-pbar)) + log K."""
    unit = [(p / p.norm()).double() for p in prototypes]
    k = len(unit)

    def snn(x: torch.Tensor) -> list[float]:
        x = (x / x.norm()).double()
        e = [math.exp(float(x @ p) / tau) for p in unit]
        return [v / sum(e) for v in e]

    def sharpen(p: list[float]) -> list[float]:
        s = [v ** (1.0 / sharpen_t) for v in p]
        return [v / sum(s) for v in s]

    target = [sharpen(snn(t)) for t in targets]
    if use_sinkhorn:
        target = reference_sinkhorn(target, 3)
    probs = [snn(a[i]) for a in anchors for i in range(len(targets))]  # view-major: the reference's torch.cat of views
    target = target * len(anchors)
    loss = sum(sum(math.log(p[j] ** -t[j]) for j in range(k)) for p, t in zip(probs, target, strict=True)) / len(probs)
    mean = [sum(p[j] for p in probs) / len(probs) for j in range(k)]
    rloss = -sum(math.log(m**-m) for m in mean) + math.log(k)
    return loss + me_max_weight * rloss


def _inputs(views: int, seed: int, n: int = 6, d: int = 5, k: int = 7) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, d, generator=g) for _ in range(views)], torch.randn(n, d, generator=g), torch.randn(k, d, generator=g)


@pytest.mark.parametrize(("views", "sinkhorn", "weight"), [(1, True, 1.0), (3, True, 1.0), (3, False, 1.0), (2, True, 0.0), (2, False, 2.5)])
def test_msn_equals_the_official_formula_written_out(views: int, sinkhorn: bool, weight: float) -> None:
    anchors, targets, prototypes = _inputs(views, seed=views)
    loss = MSNLoss(temperature=0.1, sharpen_temperature=0.25, sinkhorn_iterations=3 if sinkhorn else 0, me_max_weight=weight)
    expected = reference_msn(anchors, targets, prototypes, 0.1, 0.25, sinkhorn, weight)
    assert loss(anchors, targets, prototypes).item() == pytest.approx(expected, abs=1e-5)
    assert loss.terms["me_max"].item() == pytest.approx(
        reference_msn(anchors, targets, prototypes, 0.1, 0.25, sinkhorn, 1.0) - reference_msn(anchors, targets, prototypes, 0.1, 0.25, sinkhorn, 0.0), abs=1e-5
    )


def test_msn_equals_lightly_msnloss() -> None:
    lightly_loss = pytest.importorskip("lightly.loss", reason="lightly is not installed (pip install lightly); the official formula is checked above")

    anchors, targets, prototypes = _inputs(3, seed=7)
    expected = lightly_loss.MSNLoss(temperature=0.1, sinkhorn_iterations=3, regularization_weight=1.0)(
        torch.cat(anchors), targets, prototypes, target_sharpen_temperature=0.25
    )
    assert MSNLoss()(anchors, targets, prototypes).item() == pytest.approx(expected.item(), abs=1e-5)


def test_msn_gradients_reach_anchors_and_prototypes_not_targets() -> None:
    anchors, targets, prototypes = _inputs(2, seed=3)
    anchors = [a.requires_grad_() for a in anchors]
    targets.requires_grad_()
    prototypes.requires_grad_()
    MSNLoss()(anchors, targets, prototypes).backward()
    assert all(a.grad is not None and a.grad.abs().sum() > 0 for a in anchors) and prototypes.grad.abs().sum() > 0
    assert targets.grad is None  # the target assignment is a fixed label, as the reference's torch.no_grad block


def test_msn_decreases_under_gradient_steps_and_ignores_the_order_of_anchor_views() -> None:
    anchors, targets, prototypes = _inputs(3, seed=4, n=16, d=8, k=10)
    loss = MSNLoss()
    torch.testing.assert_close(loss(anchors, targets, prototypes), loss(anchors[::-1], targets, prototypes))
    params = [nn.Parameter(a) for a in anchors] + [nn.Parameter(prototypes)]
    optimizer = torch.optim.SGD(params, lr=0.05)
    first = loss(params[:3], targets, params[3]).item()
    for _ in range(30):
        optimizer.zero_grad()
        loss(params[:3], targets, params[3]).backward()
        optimizer.step()
    assert loss(params[:3], targets, params[3]).item() < first


def test_me_max_is_zero_when_prototypes_are_used_equally_and_log_k_when_collapsed() -> None:
    prototypes = torch.eye(4)
    loss = MSNLoss(temperature=0.05)
    loss([torch.eye(4)], torch.eye(4), prototypes)  # each anchor on its own prototype: the mean distribution is uniform
    assert loss.terms["me_max"].item() == pytest.approx(0.0, abs=1e-5)
    loss([torch.eye(4)[[0, 0, 0, 0]]], torch.eye(4), prototypes)  # every anchor on prototype 0
    assert loss.terms["me_max"].item() == pytest.approx(math.log(4), abs=1e-4)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"temperature": 0}, "temperature"),
        ({"sharpen_temperature": -1}, "sharpen_temperature"),
        ({"sinkhorn_iterations": -1}, "sinkhorn_iterations"),
        ({"me_max_weight": -0.5}, "me_max_weight"),
    ],
)
def test_msn_refuses_bad_arguments(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        MSNLoss(**kwargs)
    with pytest.raises(ValueError, match="anchor view shaped like the targets"):
        MSNLoss()([torch.randn(4, 3)], torch.randn(5, 3), torch.randn(6, 3))


class WithPrototypes(nn.Module):
    """The loss with its prototypes as a parameter (as the method holds them), so that their gradient is compared too."""

    def __init__(self, prototypes: torch.Tensor) -> None:
        super().__init__()
        self.loss, self.prototypes = MSNLoss(), nn.Parameter(prototypes.clone())

    def forward(self, first: torch.Tensor, second: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.loss([first, second], targets, self.prototypes)


@pytest.mark.slow
@pytest.mark.ddp
def test_two_ranks_equal_one_process() -> None:
    """2 gloo processes with half the images each = 1 process with all: Sinkhorn over the global batch, me-max on every
    rank's anchors; the loss, the anchors' and the prototypes' gradients."""
    from ssl_train.verify_dist import EQUAL, Case, verify  # the project's 2-process harness (spawned gloo ranks)

    anchors, targets, prototypes = _inputs(2, seed=5, n=8, d=6, k=5)
    verdicts = verify({"msn": Case(WithPrototypes(prototypes), [*anchors, targets])})
    assert verdicts["msn"].verdict == EQUAL, verdicts["msn"].line()
