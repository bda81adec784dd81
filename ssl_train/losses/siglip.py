"""SigLIP's pairwise sigmoid loss between image and text embeddings (Zhai et al., ICCV 2023) with a learnable temperature and bias."""

from __future__ import annotations

import math
from typing import Annotated

import torch
import torch.nn.functional as F
from torch import nn

from ssl_train import dist
from ssl_train.constraints import Number, Positive
from ssl_train.losses.clip import normalised_pair
from ssl_train.losses.precision import float32

Bias = Annotated[float, Number(low=-100, high=100)]  # SigLIP starts at -10 so that the many negative pairs begin near 0


class SigLIPLoss(nn.Module):
    """-1/N sum_ij log sigmoid(z_ij (t x_i . y_j + b)), z_ij = +1 for an image and its own caption, -1 for every other pair.

    Paper: "Sigmoid Loss for Language Image Pre-Training", Zhai et al. 2023, Algorithm 1: x, y the L2-normalised image
    and text embeddings, t = exp(t') with t' learnable and initialised to log 10, b learnable and initialised to -10,
    the sum over every image-text pair divided by the batch size (big_vision's `siglip`, open_clip's `SigLipLoss`).
    Each pair is scored on its own: no softmax over the batch. Across ranks each rank scores its own images against the
    captions of every rank, gathered with gradients (open_clip's `dist_impl='gather'`; its default exchanges them between
    neighbouring ranks chunk by chunk, the same sum in less memory), divided by its own batch size, so the mean over ranks
    is the one-process loss. `clamp_` keeps t <= max_logit_scale (open_clip's training loop clamps every model at 100).
    Inputs: (N, D) image and text embeddings (the rows of a pair at the same index), normalised here; logits in float32.
    """

    def __init__(
        self,
        init_logit_scale: Positive = 10.0,
        init_logit_bias: Bias = -10.0,
        max_logit_scale: Positive = 100.0,
        learn_temperature: bool = True,
        gather_distributed: bool = True,
    ) -> None:
        super().__init__()
        if not max_logit_scale >= init_logit_scale > 0:
            raise ValueError(f"SigLIPLoss: need 0 < init_logit_scale <= max_logit_scale, got {init_logit_scale}, {max_logit_scale}")
        self.logit_scale = nn.Parameter(torch.tensor(math.log(init_logit_scale)), requires_grad=learn_temperature)
        self.logit_bias = nn.Parameter(torch.tensor(float(init_logit_bias)), requires_grad=learn_temperature)
        self.max_log_scale, self.gather_distributed = math.log(max_logit_scale), gather_distributed

    @torch.no_grad()
    def clamp_(self) -> None:
        """Clip the learnt scale to [1, max_logit_scale], as open_clip does after every optimizer step."""
        self.logit_scale.clamp_(0, self.max_log_scale)

    @float32
    def forward(self, image_embeddings: torch.Tensor, text_embeddings: torch.Tensor) -> torch.Tensor:
        image, text = normalised_pair(image_embeddings, text_embeddings, "SigLIPLoss")
        all_text, offset = text, 0
        if self.gather_distributed and dist.is_distributed():
            all_text, offset = dist.gather_with_grad(text), dist.rank() * len(image)
        logits = self.logit_scale.exp() * image @ all_text.T + self.logit_bias
        signs = -torch.ones_like(logits)
        rows = torch.arange(len(image), device=image.device)
        signs[rows, rows + offset] = 1.0
        return -F.logsigmoid(signs * logits).sum() / len(image)
