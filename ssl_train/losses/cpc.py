"""CPC's InfoNCE over future time steps (Contrastive Predictive Coding, van den Oord, Li & Vinyals 2018)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ssl_train import dist
from ssl_train.constraints import Temperature
from ssl_train.losses.precision import float32


class CPCLoss(nn.Module):
    """For every step ahead k and every (sequence b, time t): -log softmax of the score of the true future latent
    z_{b, t+k} among the latents z_{b', t'+k} of every sequence and time step of the (global) batch.

    Inputs: latents z (B, T, D) and predictions (B, T, K, D), predictions[:, t, k-1] being W_k c_t. The score is the
    bilinear f_k = exp(z^T W_k c_t) of the paper, divided by `temperature` (1 = the paper). Negatives are the other
    time steps of the same sequence and all steps of the other sequences, gathered from every rank with gradients
    when `gather_distributed`. Returns the mean over k of each step's mean loss (float32 logits under autocast).
    """

    def __init__(self, temperature: Temperature = 1.0, gather_distributed: bool = True) -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"CPCLoss: temperature must be > 0, got {temperature}")
        self.temperature, self.gather_distributed = float(temperature), gather_distributed

    def step_logits(self, z: torch.Tensor, predictions: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Scores (B * (T - k), candidates) of the k-step predictions against every candidate latent, and the target index."""
        length = z.shape[1]
        queries = predictions[:, : length - k, k - 1].reshape(-1, z.shape[-1]).float()
        keys = z[:, k:].reshape(-1, z.shape[-1]).float()
        offset = 0
        if self.gather_distributed and dist.is_distributed():
            keys, offset = dist.gather_with_grad(keys), dist.rank() * len(queries)
        targets = torch.arange(len(queries), device=z.device) + offset
        return queries @ keys.T / self.temperature, targets

    @float32
    def loss_and_accuracy(self, z: torch.Tensor, predictions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The loss and how often the true future latent scores highest (the paper's accuracy), both averaged over k."""
        if z.ndim != 3 or predictions.ndim != 4 or predictions.shape[:2] != z.shape[:2] or predictions.shape[-1] != z.shape[-1]:
            raise ValueError(f"CPCLoss expects z (B, T, D) and predictions (B, T, K, D), got {tuple(z.shape)} and {tuple(predictions.shape)}")
        steps = predictions.shape[2]
        if z.shape[1] <= steps:
            raise ValueError(f"CPCLoss: {z.shape[1]} time steps cannot score {steps} steps ahead; shorten head.steps")
        losses, hits = [], []
        for k in range(1, steps + 1):
            logits, targets = self.step_logits(z, predictions, k)
            losses.append(F.cross_entropy(logits, targets))
            hits.append((logits.detach().argmax(1) == targets).float().mean())
        return torch.stack(losses).mean(), torch.stack(hits).mean()

    def forward(self, z: torch.Tensor, predictions: torch.Tensor) -> torch.Tensor:
        return self.loss_and_accuracy(z, predictions)[0]
