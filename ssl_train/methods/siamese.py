"""The siamese family: one encoder + projector, a loss on pairs of projected views (SimCLR, ...)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Annotated

import torch
from torch import nn

from ssl_train.constraints import POSITIVE_INT, PositiveInt, Settings
from ssl_train.methods.common import encode_views, pairs_over_views
from ssl_train.methods.queue import FeatureQueue
from ssl_train.protocols import takes, width_of


class SiameseMethod(nn.Module):
    """Encode every view with the same backbone + projector and average `loss(z_i, z_j)` over view pairs.

    SimCLR (Chen et al., ICML 2020) is this with NT-Xent. With more than two views (multi-crop) each global
    view is paired with every later view. Losses that use labels (SupCon) get them as a third argument.
    `per_view_bn`: the backbone encodes each view on its own (its own BatchNorm statistics) instead of all same-sized views
    in one batch.
    """

    def __init__(
        self, backbone: nn.Module, projector: nn.Module, loss: nn.Module, num_global_views: PositiveInt = 2, per_view_bn: bool = False, name: str = "siamese"
    ) -> None:
        super().__init__()
        self.backbone, self.projector, self.loss, self.per_view_bn = backbone, projector, loss, per_view_bn
        self.num_global_views, self.name = num_global_views, name
        self.loss_takes_labels = takes(loss.forward, "labels")  # SupCon, and the margin / triplet losses with uses_labels

    def forward(self, views: Sequence[torch.Tensor], labels: torch.Tensor | None = None) -> dict:
        if len(views) < 2:
            raise ValueError(f"{self.name} needs at least 2 views per image, got {len(views)}")
        features = encode_views(self.backbone, views, self.per_view_bn)
        projections = [self.projector(h) for h in features]
        pairs = pairs_over_views(min(self.num_global_views, len(views)), len(views), symmetric=False)
        extra = [labels] if self.loss_takes_labels else []
        total = sum(self.loss(projections[i], projections[j], *extra) for i, j in pairs)
        return {"loss": total / len(pairs), "features": features[0].detach(), "logs": {}}


class NNCLRMethod(nn.Module):
    """NNCLR (Dwibedi et al., ICCV 2021): the positive of a view is the nearest neighbour of its projection in a
    support set of past projections; loss(NN(z_i), predictor(z_j)) with in-batch negatives, symmetrised.

    The support set (a FeatureQueue of `support_set_size`) is updated with the first view's projections.
    Until it holds anything, a projection is its own neighbour (plain SimCLR-with-predictor). `per_view_bn`: each
    view through the backbone on its own (its own BatchNorm statistics).
    """

    def __init__(
        self,
        backbone: nn.Module,
        projector: nn.Module,
        loss: nn.Module,
        predictor: Annotated[Callable[..., nn.Module], Settings({"out_dim": POSITIVE_INT})],
        support_set_size: PositiveInt = 4096,
        per_view_bn: bool = False,
        name: str = "nnclr",
    ) -> None:
        super().__init__()
        self.backbone, self.projector, self.loss, self.name, self.per_view_bn = backbone, projector, loss, name, per_view_bn
        self.predictor = predictor(in_dim=width_of(projector))
        self.support_set = FeatureQueue(support_set_size, width_of(projector))

    @torch.no_grad()
    def nearest_neighbour(self, z: torch.Tensor) -> torch.Tensor:
        """The support-set vector with the highest cosine similarity to each row of z (z itself if the set is empty); the
        search in fp32 even under autocast (bf16 similarities tie or swap neighbours closer than ~0.004)."""
        support = self.support_set.get()
        if len(support) == 0:
            return z.detach()
        with torch.autocast(z.device.type, enabled=False):
            z_unit, support_unit = nn.functional.normalize(z.float(), dim=1), nn.functional.normalize(support.float(), dim=1)
            nearest = (z_unit @ support_unit.T).argmax(dim=1)
        return support[nearest].to(z.dtype)

    def forward(self, views: Sequence[torch.Tensor], labels: torch.Tensor | None = None) -> dict:
        if len(views) != 2:
            raise ValueError(f"{self.name} uses exactly 2 views, got {len(views)}")
        features = encode_views(self.backbone, views, self.per_view_bn)
        z = [self.projector(h) for h in features]
        p = [self.predictor(v) for v in z]
        neighbours = [self.nearest_neighbour(v) for v in z]
        loss = 0.5 * (self.loss(neighbours[0], p[1]) + self.loss(neighbours[1], p[0]))
        if self.training:
            self.support_set.push(z[0])
        return {"loss": loss, "features": features[0].detach(), "logs": {}}
