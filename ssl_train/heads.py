"""MLP projection and prediction heads shared by all methods (one builder, as in MoCo v3)."""

from __future__ import annotations

from torch import nn


class MLP(nn.Sequential):
    """Linear layers with BatchNorm + ReLU between them; exposes `out_dim`.

    `num_layers=2` with BN is SimCLR's/BYOL's projector; `last_batch_norm=True` (no affine) is
    MoCo v3's/Barlow Twins' choice. `in_dim` is completed at run time from the encoder.
    """

    def __init__(
        self,
        in_dim: int,
        hidden_dim: int = 512,
        out_dim: int = 128,
        num_layers: int = 2,
        batch_norm: bool = True,
        last_batch_norm: bool = False,
    ) -> None:
        if num_layers < 1:
            raise ValueError(f"MLP: num_layers must be >= 1, got {num_layers}")
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
        super().__init__(*layers)
        self.in_dim, self.out_dim = in_dim, out_dim
