"""The infomax family: maximise mutual information between parts of an input and its whole (Deep InfoMax)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ssl_train.heads import MutualInformationNet


class DeepInfoMaxMethod(nn.Module):
    """Deep InfoMax, local objective (Hjelm et al., ICLR 2019): the global vector y = E(x) (the backbone's pooled output,
    what the probe reads) must be recognisable from every location of an intermediate feature map of the same image,
    against the locations of the other images in the batch (DeepInfoMaxLoss).

    The backbone exposes its stages (`stages(x)` -> feature maps, `pool(last)` -> y); `local_stage` picks the map (-2:
    the one before the last, 7 x 7 for 28 px inputs in the small ResNet). `projector` encodes y for the score
    (the reference's global MI network); the local MI network is built here from the chosen map's width. The prior
    matching term (adversarial, gamma = 0.1 in the paper) is not included: it shapes the marginal of y, and the
    paper's classification results come from the local term.
    """

    modalities = ("image",)

    def __init__(self, backbone: nn.Module, projector: nn.Module, loss: nn.Module, local_stage: int = -2, name: str = "dim") -> None:
        super().__init__()
        if not (callable(getattr(backbone, "stages", None)) and callable(getattr(backbone, "pool", None))):
            raise ValueError(f"method={name} needs a backbone that exposes its feature maps (stages/pool), got {type(backbone).__name__}")
        widths = list(backbone.stage_widths)
        if not -len(widths) <= local_stage < len(widths):
            raise ValueError(f"method.local_stage={local_stage} is not a stage of the backbone ({len(widths)} stages)")
        self.backbone, self.projector, self.loss, self.local_stage, self.name = backbone, projector, loss, local_stage, name
        self.local_net = MutualInformationNet(widths[local_stage], projector.out_dim, per_location=True)

    def forward(self, views: Sequence[torch.Tensor], labels: torch.Tensor | None = None) -> dict:
        maps = self.backbone.stages(views[0])
        y = self.backbone.pool(maps[-1])
        local = self.local_net(maps[self.local_stage].flatten(2))  # (N, D, H x W)
        loss = self.loss(local, self.projector(y))
        return {"loss": loss, "features": y.detach(), "logs": {}}
