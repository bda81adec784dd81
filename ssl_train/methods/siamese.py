"""The siamese family: one encoder + projector, a loss on pairs of projected views (SimCLR, ...)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ssl_train.methods.common import encode_views, pairs_over_views


class SiameseMethod(nn.Module):
    """Encode every view with the same backbone + projector and average `loss(z_i, z_j)` over view pairs.

    SimCLR (Chen et al., ICML 2020) is this with NT-Xent. With more than two views (multi-crop) each global
    view is paired with every later view. Losses that use labels (SupCon) get them as a third argument.
    """

    def __init__(self, backbone: nn.Module, projector: nn.Module, loss: nn.Module, num_global_views: int = 2, name: str = "siamese") -> None:
        super().__init__()
        self.backbone, self.projector, self.loss = backbone, projector, loss
        self.num_global_views, self.name = num_global_views, name

    def forward(self, views: Sequence[torch.Tensor], labels: torch.Tensor | None = None) -> dict:
        if len(views) < 2:
            raise ValueError(f"{self.name} needs at least 2 views per image, got {len(views)}")
        features = encode_views(self.backbone, views)
        projections = [self.projector(h) for h in features]
        pairs = pairs_over_views(min(self.num_global_views, len(views)), len(views), symmetric=False)
        uses_labels = getattr(self.loss, "uses_labels", False)
        total = sum(self.loss(projections[i], projections[j], *( [labels] if uses_labels else [])) for i, j in pairs)
        return {"loss": total / len(pairs), "features": features[0].detach(), "logs": {}}
