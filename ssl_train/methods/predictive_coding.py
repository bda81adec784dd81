"""The predictive-coding family: predict future latents of a sequence from its past (CPC)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ssl_train.protocols import StepEncoder, StepPredictor


class CPCMethod(nn.Module):
    """Contrastive Predictive Coding (van den Oord, Li & Vinyals 2018): z = g_enc(x) per time step, c = g_ar(z) (a GRU),
    and W_k c_t must pick z_{t+k} out of the batch's latents (CPCLoss) for k = 1..K.

    `backbone` is a RecurrentEncoder (encode_steps, context, pool), `projector` the StepPredictions head (K maps).
    One view per sample: CPC's positives come from the sequence's own future, not from augmentation. The probe
    reads the backbone's pooled context (`features`).
    """

    loss: Any  # a CPCLoss: loss_and_accuracy(z, predictions)

    modalities = ("sequence", "waveform")

    def __init__(self, backbone: nn.Module, projector: StepPredictor, loss: nn.Module, name: str = "cpc") -> None:
        super().__init__()
        if not isinstance(backbone, StepEncoder):
            raise ValueError(f"method={name} needs a backbone with encode_steps/context/pool (backbone=recurrent), got {type(backbone).__name__}")
        if not isinstance(projector, StepPredictor):
            raise ValueError(f"method={name} needs head=cpc_predictions (K linear predictions of future latents), got {type(projector).__name__}")
        self.backbone, self.projector, self.loss, self.name = backbone, projector, loss, name

    def forward(self, views: Sequence[torch.Tensor], labels: torch.Tensor | None = None) -> dict:
        z = self.backbone.encode_steps(views[0])
        c = self.backbone.context(z)
        predictions = self.projector(c)
        loss, accuracy = self.loss.loss_and_accuracy(z, predictions)
        return {"loss": loss, "features": self.backbone.pool(c).detach(), "logs": {"cpc_accuracy": accuracy}}
