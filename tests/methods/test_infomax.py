"""Deep InfoMax: its estimators against loops written from the reference's formulas; the backbones' feature maps."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ssl_train.encoders.resnet import SmallResNet, TorchvisionResNet
from ssl_train.heads import MutualInformationNet
from ssl_train.losses import DeepInfoMaxLoss
from ssl_train.methods import DeepInfoMaxMethod
from ssl_train.methods.infomax import LocalMutualInformationNet


def _inputs() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(4, 3, 5, generator=g).double(), torch.randn(4, 3, generator=g).double()


def test_infonce_estimator_matches_a_loop_over_positive_locations() -> None:
    local, global_ = _inputs()
    n, _, locations = local.shape
    total = 0.0
    for i in range(n):
        negatives = [float(global_[i] @ local[j, :, m]) for j in range(n) if j != i for m in range(locations)]
        for loc in range(locations):
            positive = float(global_[i] @ local[i, :, loc])
            total += -positive + math.log(math.exp(positive) + sum(math.exp(s) for s in negatives))
    assert DeepInfoMaxLoss("infonce")(local, global_).item() == pytest.approx(total / (n * locations), abs=1e-6)


def test_jsd_estimator_matches_the_fenchel_dual_formula() -> None:
    local, global_ = _inputs()
    n, _, locations = local.shape
    log2 = math.log(2)
    softplus = lambda x: math.log1p(math.exp(x))
    pos = [log2 - softplus(-float(global_[i] @ local[i, :, m])) for i in range(n) for m in range(locations)]
    neg = [softplus(-u) + u - log2 for i in range(n) for j in range(n) if j != i for u in (float(global_[i] @ local[j, :, m]) for m in range(locations))]
    expected = sum(neg) / len(neg) - sum(pos) / len(pos)
    assert DeepInfoMaxLoss("jsd")(local, global_).item() == pytest.approx(expected, abs=1e-6)


def test_estimators_reward_local_features_that_carry_their_image() -> None:
    global_ = F.normalize(torch.randn(8, 16), dim=1) * 4
    matching = global_[:, :, None].expand(8, 16, 6).clone()  # every location holds its own image's vector
    for estimator in ("infonce", "jsd"):
        loss = DeepInfoMaxLoss(estimator)
        assert loss(matching, global_).item() < loss(torch.randn(8, 16, 6), global_).item()


def test_backbones_expose_stages_whose_pooled_last_map_is_the_forward() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 1, 28, 28)
    small = SmallResNet(in_channels=1, widths=(8, 16, 32), pool_size=2).eval()
    maps = small.stages(x)
    assert [m.shape[1] for m in maps] == [8, 16, 32] and [m.shape[-1] for m in maps] == [14, 7, 4]
    assert torch.allclose(small.pool(maps[-1]), small(x))
    resnet = TorchvisionResNet("resnet18", in_channels=1, small_image_stem=True).eval()
    maps = resnet.stages(torch.randn(2, 1, 16, 16))
    assert list(resnet.stage_widths) == [64, 128, 256, 512] == [m.shape[1] for m in maps]


def test_dim_method_trains_backbone_through_the_local_and_global_paths() -> None:
    torch.manual_seed(0)
    backbone = SmallResNet(in_channels=1, widths=(8, 16), pool_size=1)
    method = DeepInfoMaxMethod(backbone, MutualInformationNet(16, 12), DeepInfoMaxLoss())
    out = method([torch.randn(6, 1, 28, 28)])
    out["loss"].backward()
    assert out["features"].shape == (6, 16) and all(p.grad is not None for p in backbone.parameters())
    assert method.local_net.out_dim == 12 and method.local_net.in_dim == 8  # the map before the last stage
    with pytest.raises(ValueError, match="local_stage=5"):
        DeepInfoMaxMethod(backbone, MutualInformationNet(16, 12), DeepInfoMaxLoss(), local_stage=5)


def test_local_mi_network_is_the_references_layer_normalised_1x1_net_with_an_identity_like_shortcut() -> None:

    torch.manual_seed(0)
    net = LocalMutualInformationNet(4, 6)
    weight = net.shortcut.weight[..., 0]  # (out, in)
    torch.testing.assert_close(weight[:4, :4].diagonal(), torch.ones(4))  # a noisy identity: 1 on the diagonal
    off_diagonal = weight.masked_select(~torch.eye(6, 4, dtype=torch.bool))
    assert net.shortcut.bias is None and off_diagonal.abs().max() <= 0.01 and off_diagonal.abs().max() > 0
    x = 5 * torch.randn(3, 4, 7) + 2  # (N, C, L)
    out = net(x)
    block, shortcut = net.block(x), torch.einsum("oc,ncl->nol", weight, x)
    expected = F.layer_norm((block + shortcut).transpose(1, 2), (6,)).transpose(1, 2)  # the LayerNorm over channels, per location
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(out.mean(1), torch.zeros(3, 7), atol=1e-5, rtol=0)
    wider_in = LocalMutualInformationNet(6, 4)  # out < in: no identity to start from, the default init stays
    assert wider_in.shortcut.weight.abs().max() < 1.0


def test_local_network_loads_checkpoints_from_before_its_norm() -> None:
    """A DIM checkpoint written with the earlier local network (biased shortcut, no norm) loads strictly: the shortcut's
    weight and the block as stored, the bias dropped, the norm at its initial values."""
    torch.manual_seed(0)
    net = LocalMutualInformationNet(4, 8)
    old = {k: torch.randn_like(v) for k, v in net.state_dict().items() if not k.startswith("norm.") and not k.endswith("num_batches_tracked")}
    old["shortcut.bias"], old["block.1.num_batches_tracked"] = torch.randn(8), torch.tensor(3)
    fresh = LocalMutualInformationNet(4, 8)
    fresh.load_state_dict(old, strict=True)
    assert torch.equal(fresh.shortcut.weight, old["shortcut.weight"]) and torch.equal(fresh.block[0].weight, old["block.0.weight"])
    assert torch.equal(fresh.norm.weight, torch.ones(8)) and torch.equal(fresh.norm.bias, torch.zeros(8))
