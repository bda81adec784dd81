"""CLIP's symmetric InfoNCE between image and text embeddings (Radford et al., ICML 2021) with a learnable temperature."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ssl_train import dist
from ssl_train.constraints import Positive, Temperature
from ssl_train.losses.precision import float32


def normalised_pair(image_embeddings: torch.Tensor, text_embeddings: torch.Tensor, loss_name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Check (N, D) image and text embeddings of equal shape and L2-normalise their rows: the input of CLIP's and SigLIP's losses."""
    if image_embeddings.shape != text_embeddings.shape or image_embeddings.ndim != 2:
        shapes = f"{tuple(image_embeddings.shape)}, {tuple(text_embeddings.shape)}"
        raise ValueError(f"{loss_name} expects (N, D) image and text embeddings of equal shape, got {shapes}")
    return F.normalize(image_embeddings, dim=1), F.normalize(text_embeddings, dim=1)


class CLIPLoss(nn.Module):
    """(CE(image -> its caption among all captions) + CE(caption -> its image among all images)) / 2.

    Paper: "Learning Transferable Visual Models From Natural Language Supervision", Radford et al. 2021, Figure 3:
    logits = exp(t) * normalised image @ normalised text.T, t learnable, initialised to log(1 / 0.07) and clipped
    so that exp(t) <= 100 (`clamp_`, called after every optimizer step as open_clip's training loop does).
    Negatives come from every rank, gathered with gradients: each rank scores its own rows against the global batch
    (open_clip's `local_loss=True, gather_with_grad=True`), so the mean over ranks is the one-process loss.
    Logits are float32. `learn_temperature=false` keeps exp(t) at 1 / init_temperature.
    """

    def __init__(
        self, init_temperature: Temperature = 0.07, max_logit_scale: Positive = 100.0, learn_temperature: bool = True, gather_distributed: bool = True
    ) -> None:
        super().__init__()
        if not init_temperature > 0 or not max_logit_scale >= 1 / init_temperature:
            raise ValueError(f"CLIPLoss: need init_temperature > 0 and max_logit_scale >= 1 / init_temperature, got {init_temperature}, {max_logit_scale}")
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / init_temperature)), requires_grad=learn_temperature)
        self.max_log_scale, self.gather_distributed = math.log(max_logit_scale), gather_distributed

    @torch.no_grad()
    def clamp_(self) -> None:
        """Clip the learnt scale to [1, max_logit_scale] (CLIP: 'clipped to prevent scaling the logits by more than 100')."""
        self.logit_scale.clamp_(0, self.max_log_scale)

    @float32
    def forward(self, image_embeddings: torch.Tensor, text_embeddings: torch.Tensor) -> torch.Tensor:
        image, text = normalised_pair(image_embeddings.float(), text_embeddings.float(), "CLIPLoss")
        all_image, all_text, offset = image, text, 0
        if self.gather_distributed and dist.is_distributed():
            all_image, all_text, offset = dist.gather_with_grad(image), dist.gather_with_grad(text), dist.rank() * len(image)
        scale = self.logit_scale.exp()
        labels = torch.arange(len(image), device=image.device) + offset
        return (F.cross_entropy(scale * image @ all_text.T, labels) + F.cross_entropy(scale * text @ all_image.T, labels)) / 2
