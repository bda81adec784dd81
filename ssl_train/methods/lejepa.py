"""LeJEPA's method: one encoder + projector over every multi-crop view, the loss over all views at once."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ssl_train.constraints import PositiveInt
from ssl_train.methods.common import encode_views
from ssl_train.protocols import takes


class LeJEPAMethod(nn.Module):
    """LeJEPA (Balestriero & LeCun 2025, arXiv:2511.08544): every view, global and local, goes through the same backbone
    and projector; the loss (LeJEPALoss) gets every view's embeddings, the first `num_global_views` global, in one call, so
    every view predicts the global views' mean and every view's embeddings enter SIGReg (the paper's Algorithm 2).

    No EMA target, no stop-gradient, no predictor. Views come global first (`num_global_views`), then local crops, as
    the multi-crop pipeline (augment=multicrop) hands them; same-sized views share one backbone pass (encode_views) unless
    `per_view_bn`.
    """

    def __init__(
        self, backbone: nn.Module, projector: nn.Module, loss: nn.Module, num_global_views: PositiveInt = 2, per_view_bn: bool = False, name: str = "lejepa"
    ) -> None:
        super().__init__()
        if not takes(loss.forward, "num_global"):
            raise ValueError(f"LeJEPA: the loss must take every view and num_global (loss(*views, num_global=...): LeJEPALoss), got {type(loss).__name__}")
        self.backbone, self.projector, self.loss, self.per_view_bn = backbone, projector, loss, per_view_bn
        self.num_global_views, self.name = num_global_views, name

    def forward(self, views: Sequence[torch.Tensor], labels: torch.Tensor | None = None) -> dict:
        if len(views) < 2:
            raise ValueError(f"{self.name} needs at least 2 views per image (augment.num_global + augment.num_local), got {len(views)}")
        num_global = min(self.num_global_views, len(views))
        features = encode_views(self.backbone, views, self.per_view_bn)
        embeddings = [self.projector(h) for h in features]
        loss = self.loss(*embeddings, num_global=num_global)
        logs = {"num_local_views": float(len(views) - num_global), **getattr(self.loss, "terms", {})}
        return {"loss": loss, "features": features[0].detach(), "logs": logs}
