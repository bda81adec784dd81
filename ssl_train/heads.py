"""MLP projection and prediction heads shared by all methods (one builder, as in MoCo v3)."""

from __future__ import annotations

import torch
from torch import nn

from ssl_train.constraints import Limit, PositiveInt
from ssl_train.losses.precision import float32_linear

LAST_ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU, "gelu": nn.GELU}


class MLP(nn.Sequential):
    """Linear layers with BatchNorm + ReLU between them; exposes `out_dim`.

    `num_layers=2` with BN is SimCLR's/BYOL's projector; `last_batch_norm=True` (no affine) is
    MoCo v3's/Barlow Twins' choice; `last_activation='tanh'` with one layer and `out_dim=None` (the encoder's width)
    is SimCSE's pooler MLP, Linear(d, d) + tanh. `in_dim` is completed at run time from the encoder.
    """

    def __init__(
        self,
        in_dim: int,
        hidden_dim: PositiveInt = 512,
        out_dim: Limit = 128,  # null: the encoder's width (a head's; a method that takes a predictor refuses null there: Settings)
        num_layers: PositiveInt = 2,
        batch_norm: bool = True,
        last_batch_norm: bool = False,
        last_activation: str | None = None,
    ) -> None:
        if num_layers < 1:
            raise ValueError(f"MLP: num_layers must be >= 1, got {num_layers}")
        out_dim = in_dim if out_dim is None else out_dim
        layers: list[nn.Module] = []
        dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [out_dim]
        for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
            last = i == num_layers - 1
            layers.append(nn.Linear(d_in, d_out, bias=not (batch_norm and not last) and not (last and last_batch_norm)))
            if not last:
                if batch_norm:
                    layers.append(nn.BatchNorm1d(d_out))
                layers.append(nn.ReLU(inplace=True))
            elif last_batch_norm:
                layers.append(nn.BatchNorm1d(d_out, affine=False))
        if last_activation is not None:
            if last_activation not in LAST_ACTIVATIONS:
                raise ValueError(f"head.last_activation must be one of {sorted(LAST_ACTIVATIONS)} or null, got {last_activation!r}")
            layers.append(LAST_ACTIVATIONS[last_activation]())
        super().__init__(*layers)
        self.in_dim, self.out_dim = in_dim, out_dim


class DINOHead(nn.Module):
    """DINO's head (Caron et al. 2021): MLP (GELU) -> bottleneck -> L2-normalise -> weight-normalised linear to K outputs.

    The MLP starts as the official code's (N(0, 0.02) weights, zero biases); the last layer is weight-normalised as
    there (weight = g * v / ||v||, g initialised to 1):
    `norm_last_layer=True` freezes g at 1, `false` trains it.
    """

    def __init__(
        self,
        in_dim: int,
        hidden_dim: PositiveInt = 512,
        bottleneck_dim: PositiveInt = 128,
        out_dim: PositiveInt = 1024,
        num_layers: PositiveInt = 3,
        norm_last_layer: bool = True,
    ) -> None:
        super().__init__()
        dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [bottleneck_dim]
        layers: list[nn.Module] = []
        for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
            layers.append(nn.Linear(d_in, d_out))
            if i < num_layers - 1:
                layers.append(nn.GELU())
        self.mlp = nn.Sequential(*layers)
        for layer in layers:  # the official _init_weights (dino and dinov2 dino_head.py): N(0, 0.02) weights, zero biases
            if isinstance(layer, nn.Linear):
                nn.init.trunc_normal_(layer.weight, std=0.02)
                nn.init.zeros_(layer.bias)
        self.last_layer = nn.Linear(bottleneck_dim, out_dim, bias=False)  # the direction v (default init there too)
        self.last_layer_norm = nn.Parameter(torch.ones(out_dim, 1), requires_grad=not norm_last_layer)  # the magnitude g
        self.norm_last_layer, self.in_dim, self.out_dim = norm_last_layer, in_dim, out_dim

    def forward(self, x):  # tensor in, tensor out
        x = nn.functional.normalize(self.mlp(x), dim=-1)
        weight = self.last_layer_norm * nn.functional.normalize(self.last_layer.weight, dim=1)
        return float32_linear(x, weight)  # logits the loss divides by 0.04-0.1: float32 under mixed precision


class StepPredictions(nn.Module):
    """CPC's predictions (van den Oord et al. 2018): one linear map W_k per step ahead k = 1..steps, from the context c_t
    to the latent z_{t+k}; (..., in_dim) -> (..., steps, out_dim). The K maps are one Linear of K x out_dim outputs."""

    def __init__(self, in_dim: int, out_dim: PositiveInt = 128, steps: PositiveInt = 4) -> None:
        super().__init__()
        if steps < 1:
            raise ValueError(f"StepPredictions: steps must be >= 1, got {steps}")
        self.linear = nn.Linear(in_dim, steps * out_dim)
        self.in_dim, self.out_dim, self.steps = in_dim, out_dim, steps

    def forward(self, context: torch.Tensor) -> torch.Tensor:
        return self.linear(context).unflatten(-1, (self.steps, self.out_dim))


class MutualInformationNet(nn.Module):
    """DIM's encoders of local and global features into a shared space (the reference's MI1x1ConvNet / MIFCNet):
    a 2-layer MLP plus a linear shortcut, applied per location for feature maps (as 1x1 convolutions)."""

    def __init__(self, in_dim: int, out_dim: PositiveInt = 256, per_location: bool = False) -> None:
        super().__init__()
        self.in_dim, self.out_dim = in_dim, out_dim
        if per_location:
            self.block: nn.Module = nn.Sequential(
                nn.Conv1d(in_dim, out_dim, 1, bias=False), nn.BatchNorm1d(out_dim), nn.ReLU(inplace=True), nn.Conv1d(out_dim, out_dim, 1)
            )
            self.shortcut: nn.Module = nn.Conv1d(in_dim, out_dim, 1)
        else:
            self.block = nn.Sequential(nn.Linear(in_dim, out_dim, bias=False), nn.BatchNorm1d(out_dim), nn.ReLU(inplace=True), nn.Linear(out_dim, out_dim))
            self.shortcut = nn.Linear(in_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x) + self.shortcut(x)


class IdentityHead(nn.Identity):
    """No head: the encoder's output is the representation the loss reads (Deep Graph Infomax)."""

    def __init__(self, in_dim: int) -> None:
        super().__init__()
        self.in_dim = self.out_dim = in_dim
