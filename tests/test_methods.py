"""Methods: gradients reach the online encoder; BYOL's target gets none and moves by the EMA rule."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from ssl_train.encoders.resnet import SmallResNet
from ssl_train.heads import MLP
from ssl_train.losses import NegativeCosineSimilarity, NTXentLoss
from ssl_train.methods import SiameseMethod, TargetNetworkMethod
from ssl_train.methods.common import encode_views
from ssl_train.methods.ema import cosine_momentum


def _views(n: int = 8, size: int = 16) -> list[torch.Tensor]:
    return [torch.randn(n, 1, size, size), torch.randn(n, 1, size, size)]


def _byol(**kwargs) -> TargetNetworkMethod:
    backbone = SmallResNet(in_channels=1, widths=(8, 16))
    predictor = lambda in_dim: MLP(in_dim, 32, in_dim)  # noqa: E731
    return TargetNetworkMethod(backbone, MLP(backbone.out_dim, 32, 16), NegativeCosineSimilarity(), predictor, **kwargs)


def test_simclr_gradients_reach_encoder() -> None:
    backbone = SmallResNet(in_channels=1, widths=(8, 16))
    method = SiameseMethod(backbone, MLP(backbone.out_dim, 32, 16), NTXentLoss(0.5))
    out = method(_views())
    out["loss"].backward()
    assert out["features"].shape == (8, 16) and not out["features"].requires_grad
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in backbone.parameters())


def test_byol_target_gets_no_gradients_online_does() -> None:
    method = _byol()
    method(_views())["loss"].backward()
    targets = list(method.target["backbone"].parameters()) + list(method.target["projector"].parameters())
    assert all(p.grad is None and not p.requires_grad for p in targets)
    assert all(p.grad is not None for p in method.predictor.parameters())
    assert all(p.grad is not None for p in method.backbone.parameters())


def test_byol_target_moves_by_ema_rule() -> None:
    method = _byol(momentum_base=0.9, momentum_final=1.0)
    with torch.no_grad():
        for p in method.backbone.parameters():
            p.add_(1.0)  # pretend an optimizer step moved the online network
    before = copy.deepcopy(method.target["backbone"].state_dict())
    online = copy.deepcopy(method.backbone.state_dict())
    method.on_optimizer_step(step=25, max_steps=100)
    tau = 1 - (1 - 0.9) * (math.cos(math.pi * 25 / 100) + 1) / 2
    assert method.momentum == pytest.approx(tau)
    for key, value in method.target["backbone"].state_dict().items():
        if value.dtype.is_floating_point:
            torch.testing.assert_close(value, tau * before[key] + (1 - tau) * online[key])


def test_cosine_momentum_schedule_endpoints() -> None:
    assert cosine_momentum(0, 100, 0.99) == pytest.approx(0.99)
    assert cosine_momentum(100, 100, 0.99) == pytest.approx(1.0)
    assert cosine_momentum(50, 100, 0.99) == pytest.approx(0.995)


def test_simsiam_mode_has_no_target_network() -> None:
    method = _byol(momentum_base=0.0, momentum_final=0.0, use_target_network=False)
    assert method.target is None
    method(_views())["loss"].backward()
    assert all(p.grad is not None for p in method.backbone.parameters())


def test_simsiam_runs_the_encoder_once_and_updates_batchnorm_once() -> None:
    """The stop-gradient targets are the online projections themselves (Chen & He 2021, Algorithm 1), not a second pass."""
    method = _byol(momentum_base=0.0, momentum_final=0.0, use_target_network=False)
    calls: list[int] = []
    method.backbone.register_forward_hook(lambda module, args, output: calls.append(len(args[0])))
    bn = next(m for m in method.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d))
    views = _views()
    method(views)
    assert calls == [2 * len(views[0])]  # both views in one forward, no target pass
    assert int(bn.num_batches_tracked) == 1


def test_encode_views_groups_by_size() -> None:
    calls = []

    def encoder(x: torch.Tensor) -> torch.Tensor:
        calls.append(tuple(x.shape))
        return x.flatten(1)[:, :3]

    views = [torch.randn(4, 1, 8, 8), torch.randn(4, 1, 8, 8), torch.randn(4, 1, 4, 4), torch.randn(4, 1, 4, 4)]
    out = encode_views(encoder, views)
    assert calls == [(8, 1, 8, 8), (8, 1, 4, 4)]
    torch.testing.assert_close(out[2], views[2].flatten(1)[:, :3])


def test_small_resnet_pooling_grid_sets_out_dim_and_keeps_layout() -> None:
    global_pool, grid_pool = SmallResNet(in_channels=1, widths=(8, 16), pool_size=1), SmallResNet(in_channels=1, widths=(8, 16), pool_size=2)
    grid_pool.load_state_dict(global_pool.state_dict())  # same convolutions: only the pooling differs
    images = torch.randn(3, 1, 32, 32)  # 32 -> 16 -> 8: the 8x8 map splits into four equal 4x4 cells
    coarse, fine = global_pool.eval()(images), grid_pool.eval()(images)
    assert global_pool.out_dim == 16 and grid_pool.out_dim == 64 and fine.shape == (3, 64)
    assert not torch.allclose(fine.view(3, 16, 4)[..., 0], fine.view(3, 16, 4)[..., 3])  # the cells differ: layout kept
    assert torch.allclose(fine.view(3, 16, 2, 2).mean((2, 3)), coarse, atol=1e-5)  # and average to the global pool


def test_resnet_small_image_stem_auto_follows_the_image_size() -> None:
    from ssl_train.encoders.resnet import TorchvisionResNet

    small = TorchvisionResNet("resnet18", in_channels=3, small_image_stem="auto", image_size=32)
    assert small.model.conv1.kernel_size == (3, 3) and small.model.conv1.stride == (1, 1) and isinstance(small.model.maxpool, torch.nn.Identity)
    large = TorchvisionResNet("resnet18", in_channels=3, small_image_stem="auto", image_size=224)  # ImageNet stem: 224 -> 56 before layer1
    assert large.model.conv1.kernel_size == (7, 7) and large.model.conv1.stride == (2, 2) and isinstance(large.model.maxpool, torch.nn.MaxPool2d)
    assert large.stages(torch.zeros(1, 3, 224, 224))[0].shape[-1] == 56 and small.stages(torch.zeros(1, 3, 32, 32))[0].shape[-1] == 32
    with pytest.raises(ValueError, match="small_image_stem must be true, false or auto"):
        TorchvisionResNet("resnet18", small_image_stem="yes")


def test_every_method_is_recognised_without_a_static_member_lookup(tmp_path) -> None:
    """SSLModule accepts a method by its backbone and projector submodules. Python 3.12's runtime Protocol check looks
    members up statically, where an nn.Module's submodules are not (they live in _modules): on a 3.12 GPU machine every
    method was refused with 'is not a method'. The check must not depend on that lookup."""
    import inspect

    from ssl_train.build import build
    from ssl_train.protocols import is_method
    from tests.conftest import compose_config

    method = build(compose_config(["method=byol", "probe=false", "baseline=false"], tmp_path)).method
    assert inspect.getattr_static(method, "backbone", None) is None  # what a 3.12 isinstance(method, Method) sees
    assert is_method(method)
    assert not is_method(torch.nn.Linear(2, 2)) and not is_method(method.backbone)


def test_checkpoints_from_before_the_ema_component_load_and_old_method_settings_read_as_todays() -> None:
    from ssl_train.methods.legacy import current_method_settings
    from ssl_train.trust import with_current_targets

    method = _byol(momentum_base=0.9)
    with torch.no_grad():
        for p in method.target.parameters():
            p.add_(1.0)
    old_keys = {k.replace("target.backbone.", "target_backbone.").replace("target.projector.", "target_projector."): v
                for k, v in method.state_dict().items()}
    fresh = _byol(momentum_base=0.9)
    fresh.load_state_dict(old_keys)  # keys written before EMATarget: target_backbone.* / target_projector.*
    for key, value in method.state_dict().items():
        torch.testing.assert_close(fresh.state_dict()[key], value)
    moco = current_method_settings({"_target_": "ssl_train.methods.TargetNetworkMethod", "queue_size": 4096})
    assert moco["queue"] == {"_target_": "ssl_train.methods.queue.FeatureQueue", "_partial_": True, "size": 4096, "random_init": True}
    assert current_method_settings({"_target_": "ssl_train.methods.TargetNetworkMethod", "queue_size": 0})["queue"] is None
    dino = {"_target_": "ssl_train.methods.DINOMethod", "ibot_weight": 0.0, "ibot_teacher_temp": 0.07, "ibot_mask_ratio": [0.1, 0.5],
            "ibot_masked_share": 0.5, "koleo_weight": 0.0}
    assert with_current_targets({"method": dino})["method"] == {"_target_": "ssl_train.methods.DINOMethod", "koleo_weight": 0.0}
    ibot = current_method_settings({**dino, "ibot_weight": 1.0})
    assert ibot["_target_"] == "ssl_train.methods.ibot.IBOTMethod" and ibot["patch_weight"] == 1.0 and ibot["mask_ratio_range"] == [0.1, 0.5]
    mae = with_current_targets({"method": {"_target_": "ssl_train.methods.MAEMethod"}})
    assert mae["method"]["_target_"] == "ssl_train.methods.mae.MAEMethod"
