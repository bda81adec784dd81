"""LeJEPA: the loss against transcriptions of the paper's algorithms and of the official code (global and local views
in both terms), its step-seeded directions, 2 ranks = 1 process, one training step of method=lejepa on multi-crop views."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from ssl_train.build import build
from ssl_train.losses.lejepa import LeJEPALoss
from ssl_train.methods.lejepa import LeJEPAMethod
from ssl_train.verify_dist_config import training_batch
from tests.fixtures import compose_config


def reference_directions(dim: int, slices: int, step: int) -> torch.Tensor:
    """The official SlicingUnivariateTest: a generator seeded with the global step, Gaussian columns made unit length."""
    g = torch.Generator().manual_seed(step)
    a = torch.randn(dim, slices, generator=g)
    return a / a.norm(p=2, dim=0)


def reference_sigreg(x: torch.Tensor, a: torch.Tensor, t_max: float = 3.0, knots: int = 17) -> torch.Tensor:
    """The paper's Algorithm 1 for one view (N, D): complex ECF on a symmetric grid of [-t_max, t_max], trapz, x N."""
    t = torch.linspace(-t_max, t_max, 2 * knots - 1, dtype=torch.float64)
    gauss = torch.exp(-0.5 * t**2)
    stats = []
    for k in range(a.shape[1]):
        projected = x.double() @ a[:, k].double()
        ecf = torch.stack([torch.exp(1j * projected * s).mean() for s in t])
        err = (ecf - gauss).abs().square() * gauss
        stats.append(torch.trapz(err, t) * len(x))
    return torch.stack(stats).mean()


def reference_lejepa(global_views: list[torch.Tensor], local_views: list[torch.Tensor], lambd: float, step: int, slices: int) -> torch.Tensor:
    """(1 - lambd) * mean over all views of ||mean of global views - view||^2 / D + lambd * mean over all views of SIGReg."""
    views = global_views + local_views
    n, d = views[0].shape
    a = reference_directions(d, slices, step)
    prediction = 0.0
    for v in views:
        for i in range(n):
            center = sum(g[i].double() for g in global_views) / len(global_views)
            prediction += float((center - v[i].double()).square().sum()) / d
    prediction /= len(views) * n
    sigreg = sum(reference_sigreg(v, a) for v in views) / len(views)
    return ((1 - lambd) * prediction + lambd * sigreg).float()


def official_lejepa(global_views: list[torch.Tensor], local_views: list[torch.Tensor], lambd: float, step: int, slices: int) -> torch.Tensor:
    """galilai-group/lejepa written out as loops: SlicingUnivariateTest's step-seeded directions, EppsPulley's half grid
    t_j = j * 3 / 16 (17 points) with trapezoid weights doubled (dt at the ends, 2 dt inside) times exp(-t^2 / 2), the
    statistic x N per view and slice, averaged; MINIMAL.md's inv_loss over all views against the global views' mean."""
    views = global_views + local_views
    n, d = views[0].shape
    a = reference_directions(d, slices, step).double()
    dt = 3.0 / 16
    sigreg = 0.0
    for v in views:
        for k in range(slices):
            x = [float(v[i].double() @ a[:, k]) for i in range(n)]
            for j in range(17):
                t = j * dt
                cos_mean = sum(math.cos(xi * t) for xi in x) / n
                sin_mean = sum(math.sin(xi * t) for xi in x) / n
                weight = (dt if j in (0, 16) else 2 * dt) * math.exp(-(t**2) / 2)
                sigreg += ((cos_mean - math.exp(-(t**2) / 2)) ** 2 + sin_mean**2) * weight * n
    sigreg /= len(views) * slices
    inv = 0.0
    for v in views:
        for i in range(n):
            for c in range(d):
                center = sum(float(g[i, c]) for g in global_views) / len(global_views)
                inv += (center - float(v[i, c])) ** 2
    inv /= len(views) * n * d
    return torch.tensor((1 - lambd) * inv + lambd * sigreg, dtype=torch.float32)


def test_two_global_and_six_local_views_equal_the_official_code_in_loops() -> None:
    """Every view (2 global + 6 local) in both terms, as the official code: forward(*views, num_global=2) and multi_view."""
    g = torch.Generator().manual_seed(4)
    global_views = [torch.randn(10, 6, generator=g) for _ in range(2)]
    local_views = [torch.randn(10, 6, generator=g) * 0.5 + 0.3 for _ in range(6)]
    expected = official_lejepa(global_views, local_views, 0.05, 0, 12)
    torch.testing.assert_close(LeJEPALoss(num_slices=12)(*global_views, *local_views, num_global=2), expected, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(LeJEPALoss(num_slices=12).multi_view(global_views, local_views), expected, atol=1e-5, rtol=1e-4)
    global_only = official_lejepa(global_views, [], 0.05, 0, 12)  # the local views change the loss: they are not dropped
    assert abs(float(global_only) - float(expected)) > 1e-3
    with pytest.raises(ValueError, match="num_global"):
        LeJEPALoss()(*global_views, num_global=3)


def test_lejepa_equals_the_reference_with_local_views_over_two_steps() -> None:
    g = torch.Generator().manual_seed(0)
    loss = LeJEPALoss(lambd=0.3, num_slices=8)
    for step in range(2):  # the second call draws the next step's directions
        global_views = [torch.randn(12, 5, generator=g) for _ in range(2)]
        local_views = [torch.randn(12, 5, generator=g) * 0.7 for _ in range(3)]
        expected = reference_lejepa(global_views, local_views, 0.3, step, 8)
        torch.testing.assert_close(loss.multi_view(global_views, local_views), expected, atol=1e-5, rtol=1e-4)
    assert int(loss.step) == 2 and "step" in loss.state_dict()


def test_lejepa_pair_is_two_global_views_and_the_global_views_enter_both_terms() -> None:
    g = torch.Generator().manual_seed(1)
    z_a, z_b = torch.randn(16, 4, generator=g), torch.randn(16, 4, generator=g)
    torch.testing.assert_close(LeJEPALoss(num_slices=16)(z_a, z_b), reference_lejepa([z_a, z_b], [], 0.05, 0, 16), atol=1e-5, rtol=1e-4)
    z_a.requires_grad_(True)
    LeJEPALoss(num_slices=16).multi_view([z_a], [z_b]).backward()  # a lone global view: its own prediction error is 0
    sigreg_only = z_a.grad.clone()
    z_a.grad = None
    LeJEPALoss(lambd=0.999, num_slices=16).multi_view([z_a], [z_b]).backward()
    assert sigreg_only.abs().sum() > 0 and not torch.allclose(sigreg_only, z_a.grad)


def test_lejepa_step_survives_a_reload_and_eval_keeps_it() -> None:
    loss = LeJEPALoss(num_slices=8)
    z_a, z_b = torch.randn(8, 4), torch.randn(8, 4)
    loss(z_a, z_b), loss(z_a, z_b)
    resumed = LeJEPALoss(num_slices=8)
    resumed.load_state_dict(loss.state_dict())
    torch.testing.assert_close(resumed(z_a, z_b), loss(z_a, z_b))  # the same (third) step's directions
    loss.eval()
    first = loss(z_a, z_b)
    torch.testing.assert_close(loss(z_a, z_b), first)
    with pytest.raises(ValueError, match="lambd"):
        LeJEPALoss(lambd=1.0)
    with pytest.raises(ValueError, match="all \\(N, D\\)"):
        LeJEPALoss().multi_view([torch.randn(8, 4)], [torch.randn(6, 4)])


def test_gaussian_embeddings_score_lower_than_collapsed_ones() -> None:
    g = torch.Generator().manual_seed(3)
    gaussian = torch.randn(256, 8, generator=g)
    collapsed = gaussian[:, :1].repeat(1, 8)
    assert LeJEPALoss().sigreg(gaussian[None]) < 0.2 * LeJEPALoss().sigreg(collapsed[None])


def _multi_view(loss: LeJEPALoss, *views: torch.Tensor) -> torch.Tensor:
    return loss.multi_view(list(views[:2]), list(views[2:]))


@pytest.mark.slow
@pytest.mark.ddp
def test_two_ranks_equal_one_process() -> None:
    """2 gloo processes with half the images each = 1 process with all: loss, input gradients, the step buffer."""
    from ssl_train.verify_dist import EQUAL, Case, verify  # the project's 2-process harness (spawned gloo ranks)

    g = torch.Generator().manual_seed(2)
    views = [torch.randn(8, 6, generator=g) for _ in range(4)]
    verdicts = verify(
        {"lejepa": Case(LeJEPALoss(lambd=0.5, num_slices=16), views, call=_multi_view), "lejepa_pair": Case(LeJEPALoss(lambd=0.5, num_slices=16), views[:2])}
    )
    for verdict in verdicts.values():
        assert verdict.verdict == EQUAL, verdict.line()


def test_method_lejepa_trains_a_step_on_two_global_and_six_local_views(tmp_path: Path) -> None:
    """method=lejepa's training batch (made as training makes it) has 2 global 28 px + 6 local 12 px views; the loss
    receives all 8 embeddings with num_global=2, and the step's loss equals the loss of those embeddings."""
    built = build(compose_config(["method=lejepa", "loss.num_slices=8"], tmp_path))  # 8 directions: the loops stay fast
    method = built.method
    assert isinstance(method, LeJEPAMethod) and isinstance(method.loss, LeJEPALoss)
    views, labels = training_batch(built.datamodule)
    assert [v.shape[-1] for v in views] == [28, 28] + [12] * 6
    calls: list[tuple[tuple, dict]] = []
    method.loss.register_forward_hook(lambda module, args, kwargs, out: calls.append((args, kwargs)), with_kwargs=True)
    out = method(views, labels)
    out["loss"].backward()
    ((embeddings, kwargs),) = calls
    assert len(embeddings) == 8 and kwargs == {"num_global": 2} and out["logs"]["num_local_views"] == 6.0
    detached = [e.detach() for e in embeddings]
    reference = official_lejepa(detached[:2], detached[2:], 0.05, 0, 8)
    torch.testing.assert_close(out["loss"].detach(), reference, atol=1e-4, rtol=1e-4)
    assert all(p.grad is not None for p in method.backbone.parameters() if p.requires_grad)
    assert int(method.loss.step) == 1
