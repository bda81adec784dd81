"""MSN's prototype loss with target sharpening, Sinkhorn and mean-entropy maximisation (Assran et al., ECCV 2022)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ssl_train import dist
from ssl_train.constraints import Count, LossWeight, Temperature
from ssl_train.losses.precision import float32
from ssl_train.losses.swav import sinkhorn


class MSNLoss(nn.Module):
    """Masked Siamese Networks' loss (facebookresearch/msn src/losses.py `init_msn_loss`; lightly's MSNLoss).

    Anchors, targets and prototypes are L2-normalised; p = softmax(a . prototypes^T / temperature) for each anchor; the
    target's distribution is the same softmax sharpened by `sharpen_temperature` T (p^(1/T), renormalised: a softmax at
    temperature x T, 0.1 x 0.25 = 0.025), then balanced by `sinkhorn_iterations` Sinkhorn-Knopp steps over the global
    batch (0: off), with no gradient. Loss = mean over anchors of H(target of its image, p) + `me_max_weight` x
    (sum_k pbar_k log pbar_k + log K), pbar the mean anchor distribution over every anchor of every rank (the reference's
    AllReduce): mean-entropy maximisation, which keeps all K prototypes in use.
    Inputs: anchors, a list of V tensors (N, D) (the masked views and the focal views of the same N images), targets (N, D)
    (the EMA encoder's view), prototypes (K, D). After each call `terms` holds the two parts, detached, for logging.
    """

    def __init__(
        self, temperature: Temperature = 0.1, sharpen_temperature: Temperature = 0.25, sinkhorn_iterations: Count = 3, me_max_weight: LossWeight = 1.0
    ) -> None:
        super().__init__()
        if temperature <= 0 or sharpen_temperature <= 0 or sinkhorn_iterations < 0 or me_max_weight < 0:
            raise ValueError(
                "MSNLoss: loss.temperature and loss.sharpen_temperature must be > 0, loss.sinkhorn_iterations >= 0 and "
                f"loss.me_max_weight >= 0, got {temperature}, {sharpen_temperature}, {sinkhorn_iterations}, {me_max_weight}"
            )
        self.temperature, self.sharpen_temperature = temperature, sharpen_temperature
        self.sinkhorn_iterations, self.me_max_weight = sinkhorn_iterations, me_max_weight
        self.terms: dict[str, torch.Tensor] = {}

    @float32
    def forward(self, anchors: Sequence[torch.Tensor], targets: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
        if not len(anchors) or any(a.shape != targets.shape for a in anchors):
            raise ValueError(f"MSNLoss needs >= 1 anchor view shaped like the targets {tuple(targets.shape)}, got {[tuple(a.shape) for a in anchors]}")
        prototypes = F.normalize(prototypes, dim=1)
        scores = F.normalize(torch.cat(list(anchors)), dim=1) @ prototypes.T  # (V x N, K), view-major
        log_probs = F.log_softmax(scores / self.temperature, dim=1)
        with torch.no_grad():
            target_scores = F.normalize(targets.detach(), dim=1) @ prototypes.detach().T
            sharpened = F.log_softmax(target_scores / (self.temperature * self.sharpen_temperature), dim=1)  # log of sharpen(softmax)
            # SwAV's Sinkhorn exponentiates scores / epsilon: with epsilon 1 it starts from these probabilities, as MSN's does
            target = sinkhorn(sharpened, 1.0, self.sinkhorn_iterations) if self.sinkhorn_iterations else sharpened.exp()
        cross_entropy = -(target.repeat(len(anchors), 1) * log_probs).sum(dim=1).mean()
        mean_probs = log_probs.exp().mean(dim=0, keepdim=True)
        if dist.is_distributed():  # every rank's anchors: the mean over the global batch, gradients back to each rank's rows
            mean_probs = dist.gather_with_grad(mean_probs).mean(dim=0, keepdim=True)
        me_max = (mean_probs * torch.log(mean_probs)).sum() + math.log(mean_probs.shape[1])
        self.terms = {"msn_ce": cross_entropy.detach(), "me_max": me_max.detach()}
        return cross_entropy + self.me_max_weight * me_max
