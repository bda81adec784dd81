"""LeJEPA: prediction of the global views' mean plus SIGReg (Balestriero & LeCun 2025, arXiv:2511.08544)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

import torch

from ssl_train import dist
from ssl_train.constraints import Number, OpenFraction, Positive, PositiveInt
from ssl_train.counters import HostCounters
from ssl_train.losses.precision import float32

Knots = Annotated[int, Number(integer=True, low=2)]


class LeJEPALoss(HostCounters):
    """(1 - lambd) * prediction + lambd * SIGReg over the embeddings of every view (global and local).

    Prediction (the paper's eq. 6-7 and its Algorithm 2): every view's embedding is pulled to the mean of the global
    views' embeddings of the same image, mean squared error over views, images and dimensions. SIGReg (Sketched Isotropic
    Gaussian Regularisation, Algorithm 1 and the official `SlicingUnivariateTest` + `EppsPulley`): each view's embeddings
    are projected on `num_slices` random unit directions; for each direction, N x the integral over t of
    |ECF(t) - exp(-t^2/2)|^2 exp(-t^2/2), trapezoids on `knots` points of [0, t_max] doubled (the CF gap is even in t,
    the official library's quadrature); averaged over directions and views. The global views enter both terms
    (lightly issue #2002). The directions come from a generator seeded with the step (a buffer, advanced by each
    training forward), as the official code does, so every rank draws the same ones and a resumed run continues.
    Inputs: (N, D) embeddings (not normalised: SIGReg wants them N(0, I)). `forward(z_a, z_b, *more, num_global=2)`
    takes every view, the first `num_global` global (what LeJEPAMethod passes; a pair is two global views); `multi_view`
    the same as two lists. Across ranks every view's rows are gathered with gradients, so the empirical CF and N are
    the global batch's (the official code all-reduces the ECF).
    """

    # buffers (register_buffer below)
    t: torch.Tensor
    phi: torch.Tensor
    weights: torch.Tensor
    step: torch.Tensor

    def __init__(
        self, lambd: OpenFraction = 0.05, num_slices: PositiveInt = 256, knots: Knots = 17, t_max: Positive = 3.0, gather_distributed: bool = True
    ) -> None:
        super().__init__()
        if not 0 < lambd < 1:
            raise ValueError(f"LeJEPALoss: lambd weighs SIGReg against prediction and must be in (0, 1), got {lambd}")
        self.lambd, self.num_slices, self.gather_distributed = lambd, num_slices, gather_distributed
        t = torch.linspace(0, t_max, knots)
        weights = torch.full((knots,), 2 * t_max / (knots - 1))
        weights[[0, -1]] /= 2
        self.register_buffer("t", t, persistent=False)
        self.register_buffer("phi", torch.exp(-t.square() / 2), persistent=False)
        self.register_buffer("weights", weights * self.phi, persistent=False)
        self.register_counter("step")  # seeds the directions: in checkpoints, read on the host without a sync
        self.terms: dict[str, torch.Tensor] = {}

    def directions(self, dim: int, device: torch.device) -> torch.Tensor:
        """(dim, num_slices) unit directions drawn from a generator seeded with the step."""
        generator = torch.Generator(device=device)
        generator.manual_seed(self.counter("step"))
        directions = torch.randn(dim, self.num_slices, generator=generator, device=device)
        return directions / directions.norm(dim=0)

    def sigreg(self, views: torch.Tensor) -> torch.Tensor:
        """The Epps-Pulley statistic of (V, N, D) embeddings along the step's directions, averaged over directions and views."""
        x_t = (views @ self.directions(views.shape[-1], views.device)).unsqueeze(-1) * self.t  # (V, N, slices, knots)
        gap = (x_t.cos().mean(1) - self.phi).square() + x_t.sin().mean(1).square()
        return (gap @ self.weights).mean() * views.shape[1]

    @float32
    def forward(self, z_a: torch.Tensor, z_b: torch.Tensor, *more_views: torch.Tensor, num_global: int = 2) -> torch.Tensor:
        """The loss of views z_a, z_b, *more_views, each (N, D) for the same N images: the first `num_global` global,
        the rest local crops (what LeJEPAMethod passes; a pair from SiameseMethod is two global views)."""
        views = [z_a, z_b, *more_views]
        if not 1 <= num_global <= len(views):
            raise ValueError(f"LeJEPALoss: num_global must be in [1, {len(views)}] (the views given), got {num_global}")
        return self.multi_view(views[:num_global], views[num_global:])

    @float32
    def multi_view(self, global_views: Sequence[torch.Tensor], local_views: Sequence[torch.Tensor] = ()) -> torch.Tensor:
        """The loss of `global_views` (at least one) and `local_views`, each (N, D) for the same N images."""
        views = [*global_views, *local_views]
        if not global_views or len({tuple(v.shape) for v in views}) != 1 or views[0].ndim != 2:
            raise ValueError(f"LeJEPALoss expects global views, then local views, all (N, D); got shapes {[tuple(v.shape) for v in views]}")
        stacked = torch.stack(views, dim=1)  # (N, V, D): the images' rows are gathered together
        if self.gather_distributed and dist.is_distributed():
            stacked = dist.gather_with_grad(stacked)
        stacked = stacked.transpose(0, 1)
        centers = stacked[: len(global_views)].mean(0)
        prediction = (centers - stacked).square().mean()
        sigreg = self.sigreg(stacked)
        self.terms = {"prediction": prediction.detach(), "sigreg": sigreg.detach()}  # the last call's two terms, for the logs
        loss = (1 - self.lambd) * prediction + self.lambd * sigreg
        if self.training:
            self.set_counter("step", self.counter("step") + 1)
        return loss
