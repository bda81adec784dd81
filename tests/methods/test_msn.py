"""MSN: the method's computation against the same steps written out (target view, masked anchor, focal anchors,
prototypes), what each view's encoder sees, the EMA target, frozen prototypes, refusals, and the config's recipe."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from ssl_train.build import build
from ssl_train.heads import MLP
from ssl_train.losses.msn import MSNLoss
from ssl_train.methods.masks import random_masking
from ssl_train.methods.msn import MSNMethod
from ssl_train.optim import param_groups
from tests.fixtures import compose_config, tiny_vit


def _method(**kwargs) -> MSNMethod:
    torch.manual_seed(0)
    vit = tiny_vit().eval()  # BatchNorm and drop-path aside: the same numbers on every pass
    return MSNMethod(vit, MLP(192, 32, 16, num_layers=3), MSNLoss(), image_size=28, channels=1, num_prototypes=12, **kwargs)


def _views() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [
        torch.randn(4, 1, 28, 28, generator=g),
        torch.randn(4, 1, 28, 28, generator=g),
        torch.randn(4, 1, 12, 12, generator=g),
        torch.randn(4, 1, 12, 12, generator=g),
    ]


def test_msn_matches_its_steps_written_out_and_trains_backbone_head_and_prototypes() -> None:
    method, views = _method(mask_ratio=0.3).eval(), _views()
    torch.manual_seed(2)
    out = method(views)
    # by hand: the target network on view 0, the masks the method drew (same RNG stream) on view 1, the focal crops unmasked
    torch.manual_seed(2)
    keep = random_masking(4, 49, 0.3)[0]
    vit, head = method.backbone, method.projector
    target = method.target["projector"](method.target["backbone"](views[0]))
    anchors = [head(vit.pool(vit.tokens(views[1], keep))), head(vit(views[2])), head(vit(views[3]))]
    torch.testing.assert_close(out["loss"], MSNLoss()(anchors, target, method.prototypes))
    torch.testing.assert_close(out["features"], vit.pool(vit.tokens(views[1], keep)))
    assert set(out["logs"]) == {"momentum", "msn_ce", "me_max"}
    out["loss"].backward()
    assert vit.model.blocks[0].attn.qkv.weight.grad.abs().sum() > 0 and method.prototypes.grad.abs().sum() > 0
    assert all(p.grad is None for p in method.target.parameters())


def test_only_the_masked_anchor_loses_tokens() -> None:
    method, seen = _method(mask_ratio=0.15), []
    for vit in (method.backbone, method.target["backbone"]):
        vit.model.blocks[0].register_forward_hook(lambda module, args, output: seen.append(tuple(output.shape[:2])))
    method(_views())
    # target: 4 images x (class + 49 patches); anchor: class + int(49 x 0.85) = 41 patches; focal 12 px crops: class + 9
    assert seen == [(4, 50), (4, 42), (8, 10)]


def test_msn_target_follows_by_ema_and_prototypes_stay_frozen_for_their_steps() -> None:
    method = _method(momentum_base=0.5, freeze_prototypes_steps=2)
    before = method.target["backbone"].model.blocks[0].attn.qkv.weight.clone()
    with torch.no_grad():
        method.backbone.model.blocks[0].attn.qkv.weight.add_(1.0)
    method.on_optimizer_step(0, 10)  # momentum 0.5 at step 0: halfway to the online weights
    torch.testing.assert_close(method.target["backbone"].model.blocks[0].attn.qkv.weight, 0.5 * before + 0.5 * method.backbone.model.blocks[0].attn.qkv.weight)
    method(_views())["loss"].backward()
    method.on_after_backward(step=1, epoch=0)
    assert method.prototypes.grad is None
    method(_views())["loss"].backward()
    method.on_after_backward(step=2, epoch=0)
    assert method.prototypes.grad is not None and method.prototypes.grad.abs().sum() > 0


def test_msn_prototypes_start_uniform_in_the_references_range() -> None:
    bound = 16**-0.5  # 1 / sqrt(the head's width)
    prototypes = _method().prototypes
    assert prototypes.shape == (12, 16) and prototypes.abs().max() <= bound and prototypes.abs().max() > 0.5 * bound


def test_msn_refuses_masking_without_a_vit_and_a_single_view() -> None:
    cnn = nn.Sequential(nn.Flatten(), nn.Linear(784, 16))
    cnn.out_dim = 16
    with pytest.raises(ValueError, match="drops patch tokens .* and needs a vision transformer backbone"):
        MSNMethod(cnn, MLP(16, 8, 8), MSNLoss(), image_size=28, channels=1, mask_ratio=0.15)
    unmasked = MSNMethod(cnn, MLP(16, 8, 8), MSNLoss(), image_size=28, channels=1, mask_ratio=0.0)  # no masks: any encoder
    assert torch.isfinite(unmasked([torch.randn(4, 1, 28, 28), torch.randn(4, 1, 28, 28)])["loss"])
    with pytest.raises(ValueError, match="method.mask_ratio"):
        _method(mask_ratio=0.99)  # keeps no patch of 49
    with pytest.raises(ValueError, match="a target view and at least one anchor view"):
        _method()([torch.randn(4, 1, 28, 28)])


def test_method_msn_config_is_the_reference_recipe_and_trains_a_step(tmp_path: Path) -> None:
    cfg = compose_config(["method=msn", "data.batch_size=8"], tmp_path)
    built = build(cfg)
    method = built.method
    assert isinstance(method, MSNMethod) and method.prototypes.shape == (1024, 256) and method.mask_ratio == 0.15
    assert (method.loss.temperature, method.loss.sharpen_temperature, method.loss.sinkhorn_iterations, method.loss.me_max_weight) == (0.1, 0.25, 3, 1.0)
    no_decay = param_groups(method, cfg.optim.optimizer.weight_decay, True, cfg.optim.no_decay_names)[1]["params"]
    assert any(p is method.prototypes for p in no_decay)  # the reference's WD_exclude
    images = torch.stack([built.datamodule.splits.train[i][0] for i in range(8)])
    views = built.module.batched_views(images)
    assert [v.shape[-1] for v in views] == [28, 28, 12, 12, 12, 12]
    out = method(views)
    out["loss"].backward()
    assert torch.isfinite(out["loss"]) and method.prototypes.grad is not None
