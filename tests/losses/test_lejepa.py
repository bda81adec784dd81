"""LeJEPA: the loss against a transcription of the paper's algorithms (global views in both terms), its step-seeded
directions, 2 ranks = 1 process, one training step of method=lejepa."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ssl_train.build import build
from ssl_train.losses.lejepa import LeJEPALoss
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


def test_method_lejepa_trains_a_step_from_its_config(tmp_path: Path) -> None:
    built = build(compose_config(["method=lejepa"], tmp_path))
    method, data = built.method, built.datamodule
    assert type(method).__name__ == "SiameseMethod" and type(method.loss).__name__ == "LeJEPALoss"
    images = torch.stack([data.splits.train[i][0] for i in range(8)])
    views = built.module.batched_views(images) if built.module.batched_views is not None else [images, images]
    out = method(views)
    out["loss"].backward()
    assert torch.isfinite(out["loss"]) and any(p.grad is not None for p in method.backbone.parameters())
    assert int(method.loss.step) == 1
