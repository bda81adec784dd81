"""NNCLR's neighbour search: fp32 under autocast."""

from __future__ import annotations

import math
from functools import partial

import torch

from ssl_train.encoders.resnet import SmallResNet
from ssl_train.heads import MLP
from ssl_train.losses import InfoNCELoss
from ssl_train.methods import NNCLRMethod


def _unit(cosine: float) -> torch.Tensor:
    """A unit vector at `cosine` to the first axis."""
    v = torch.zeros(8)
    v[0], v[1] = cosine, math.sqrt(1 - cosine**2)
    return v


def test_nnclr_neighbour_search_runs_in_fp32_under_bf16_autocast() -> None:
    method = NNCLRMethod(
        SmallResNet(in_channels=1, widths=(8, 16)), MLP(16, 32, 8), InfoNCELoss(0.1), predictor=partial(MLP, hidden_dim=16, out_dim=8), support_set_size=4
    )
    method.support_set.push(torch.stack([_unit(0.9990), _unit(0.9996), _unit(0.5), _unit(0.2)]))
    query = _unit(1.0)[None]
    with torch.autocast("cpu", dtype=torch.bfloat16):  # bf16 rounds both top similarities to 1.0 and would pick the first
        neighbour = method.nearest_neighbour(query)
    torch.testing.assert_close(neighbour, _unit(0.9996)[None])
    assert neighbour.dtype == torch.float32
