"""DINOv2 (method=dinov2: iBOT's class with a separate patch head, Sinkhorn-Knopp teachers, KoLeo, layer scale) and
DINOv3's Gram anchoring (method.gram_weight): the whole loss by hand, the schedules, the configs and a short run."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import pytest
import torch

from tests.fixtures import compose_config, tiny_vit
from tests.optional import require

require("timm")


def _dinov2(**kwargs):
    from ssl_train.heads import DINOHead
    from ssl_train.losses import DINOLoss, GramLoss
    from ssl_train.methods import IBOTMethod

    torch.manual_seed(0)
    vit = tiny_vit().eval()  # no drop-path randomness between passes
    head = DINOHead(in_dim=192, out_dim=64, hidden_dim=32, bottleneck_dim=16)
    loss = DINOLoss(out_dim=64, teacher_temp=0.07, warmup_teacher_temp=0.04, warmup_teacher_temp_steps=10, centering="sinkhorn_knopp")
    patch_head = partial(DINOHead, out_dim=48, hidden_dim=32, bottleneck_dim=16)
    settings = {"koleo_weight": 0.1, "masked_share": 1.0, "mask_ratio_range": [0.3, 0.3], "patch_head": patch_head, "gram_loss": GramLoss(), **kwargs}
    return IBOTMethod(vit, head, loss, **settings)


def test_dinov2_loss_is_sinkhorn_dino_plus_the_separate_head_patch_term_plus_koleo() -> None:
    from ssl_train.losses import DINOLoss, IBOTPatchLoss, KoLeoLoss
    from ssl_train.methods.masks import beit_block_masks

    method = _dinov2()
    vit, head, patch_head = method.backbone, method.projector, method.patch_head
    assert patch_head is not None and patch_head.out_dim == 48 and set(method.teacher) == {"backbone", "projector", "patch_head"}
    assert method.patch_loss.centering == "sinkhorn_knopp" and method.patch_loss.center.shape == (1, 48)
    with torch.no_grad():
        method.mask_token.normal_()
    views = [torch.randn(4, 1, 28, 28), torch.randn(4, 1, 28, 28), torch.randn(4, 1, 12, 12)]
    torch.manual_seed(1)
    out = method(views)
    torch.manual_seed(1)  # the masks the method drew, then everything by hand
    masks = beit_block_masks(torch.where(torch.rand(8) < 1.0, 0.3 + torch.rand(8) * 0.0, 0.0), 7).flatten(1)
    images = torch.cat(views[:2])
    tokens = vit.tokens(images, masked=masks, mask_token=method.mask_token)
    features = vit.pool(tokens).chunk(2)
    student = [head(h) for h in features] + [head(vit(views[2]))]
    teacher_tokens = method.teacher["backbone"].tokens(images)
    teacher = method.teacher["projector"](teacher_tokens[:, 0]).chunk(2)
    sinkhorn = {"centering": "sinkhorn_knopp", "warmup_teacher_temp": 0.04, "warmup_teacher_temp_steps": 10}
    cls = DINOLoss(out_dim=64, teacher_temp=0.07, **sinkhorn)(student, teacher)
    patch_out, teacher_patch_out = patch_head(tokens[:, 1:]).chunk(2), method.teacher["patch_head"](teacher_tokens[:, 1:]).chunk(2)
    patches = IBOTPatchLoss(out_dim=48, teacher_temp=0.07, **sinkhorn)(patch_out, teacher_patch_out, masks.chunk(2))
    koleo = KoLeoLoss()(features[0]) + KoLeoLoss()(features[1])
    torch.testing.assert_close(out["loss"], cls + patches + 0.1 * koleo)
    assert "gram" not in out["logs"]  # gram_weight 0: no Gram teacher, no term
    out["loss"].backward()
    assert patch_head.mlp[0].weight.grad.abs().sum() > 0 and method.mask_token.grad.abs().sum() > 0
    method.on_after_backward(0, 0)  # epoch 0: both heads' last layers frozen, as dinov2 zeroes every `last_layer`'s lr
    assert patch_head.last_layer.weight.grad is None and head.last_layer.weight.grad is None


def test_the_masked_patches_alone_give_the_sinkhorn_patch_term_of_every_patch() -> None:
    """DINOv2's forward_masked: the heads' outputs for the masked patches only, weighted one over their image's count and
    summed over all images (one with no masked patch included), equal the loss over every patch with masks."""
    from ssl_train.losses import IBOTPatchLoss
    from ssl_train.methods.masks import masked_patch_index

    torch.manual_seed(0)
    student, teacher = torch.randn(2, 5, 9, 16, requires_grad=True), torch.randn(2, 5, 9, 16)  # views x images x patches x K
    masks = (torch.rand(10, 9) < 0.3).float()
    masks[3] = 0.0  # an image with nothing masked counts 0
    masks[7, :] = 1.0
    loss = IBOTPatchLoss(out_dim=16, teacher_temp=0.06, centering="sinkhorn_knopp")
    everywhere = loss(list(student), list(teacher), list(masks.view(2, 5, 9)))
    index, weights = masked_patch_index(masks, torch.device("cpu"))
    assert len(index) == int(masks.sum())
    torch.testing.assert_close(weights[index // 9 == 7], torch.full((9,), 1 / 9))
    alone = loss.masked_patches(student.flatten(0, 2)[index], teacher.flatten(0, 2)[index], weights, num_images=10)
    torch.testing.assert_close(alone, everywhere)
    (grad_everywhere,) = torch.autograd.grad(everywhere, student)
    (grad_alone,) = torch.autograd.grad(alone, student)
    torch.testing.assert_close(grad_alone, grad_everywhere)  # the same gradient, zero on every unmasked patch
    assert grad_alone[masks.view(2, 5, 9) == 0].abs().max() == 0
    with pytest.raises(ValueError, match="sinkhorn_knopp"):
        IBOTPatchLoss(out_dim=16).masked_patches(student.detach().flatten(0, 2)[index], teacher.flatten(0, 2)[index], weights, 10)


def test_both_teacher_temperatures_warm_up_and_the_patch_head_teacher_follows_by_ema() -> None:
    method = _dinov2(patch_teacher_temp=0.07)
    with torch.no_grad():
        method.patch_head.last_layer.weight.add_(1.0)
    before = method.teacher["patch_head"].last_layer.weight.clone()
    method.on_optimizer_step(5, 100)
    assert method.loss.current_teacher_temp == pytest.approx(0.055) and method.patch_loss.current_teacher_temp == pytest.approx(0.055)
    m = method.teacher.momentum
    torch.testing.assert_close(method.teacher["patch_head"].last_layer.weight, m * before + (1 - m) * method.patch_head.last_layer.weight)
    method.on_optimizer_step(10, 100)
    assert method.patch_loss.current_teacher_temp == pytest.approx(0.07)
    method.train()
    assert method.backbone.training and not method.teacher.training  # the ViT teacher runs without drop-path


def test_gram_teacher_is_frozen_refreshed_exactly_on_schedule_and_adds_the_weighted_gram_loss() -> None:
    from ssl_train.losses import GramLoss

    method = _dinov2(gram_weight=0.5, gram_start=2, gram_refresh_every=3, gram_max_updates=2, mask_ratio_range=[0.0, 0.0])
    gram = method.gram.backbone
    assert all(not p.requires_grad for p in gram.parameters()) and not bool(method.gram.loaded)
    views = [torch.randn(4, 1, 28, 28), torch.randn(4, 1, 28, 28)]
    assert "gram" not in method(views)["logs"]  # before gram_start: no Gram teacher yet
    copied = []
    for step in range(1, 13):
        with torch.no_grad():  # the EMA teacher moves every step: a copy shows as equality with it
            for p in method.teacher["backbone"].parameters():
                p.add_(0.01)
        method.on_optimizer_step(step, 100)
        weight, teacher_weight = gram.model.blocks[0].attn.qkv.weight, method.teacher["backbone"].model.blocks[0].attn.qkv.weight
        if torch.equal(weight, teacher_weight):
            copied.append(step)
    assert copied == [2, 3, 6]  # loaded at gram_start, then every multiple of 3 after it, 2 refreshes at most
    assert int(method.gram.updates) == 2
    method.train()
    assert not gram.training
    out = method(views)  # ratio 0: nothing masked, so the student's patch tokens are the plain ones
    images = torch.cat(views)
    expected = GramLoss()(method.backbone.tokens(images)[:, 1:], gram.tokens(images)[:, 1:]).detach()
    assert float(out["logs"]["gram"]) == pytest.approx(float(expected)) and float(expected) > 0
    off = _dinov2(mask_ratio_range=[0.0, 0.0])
    assert not any(k.startswith("gram.") for k in off.state_dict())  # off: checkpoints as before Gram anchoring
    off.load_state_dict({k: v for k, v in method.state_dict().items() if not k.startswith("gram.")})
    torch.testing.assert_close(out["loss"], off(views)["loss"] + 0.5 * expected)
    out["loss"].backward()
    assert all(p.grad is None for p in gram.parameters())
    resumed = _dinov2(gram_weight=0.5, gram_start=2, gram_refresh_every=3, gram_max_updates=2)
    resumed.load_state_dict(method.state_dict())  # the Gram teacher and its schedule travel in the checkpoint
    assert bool(resumed.gram.loaded) and int(resumed.gram.updates) == 2 and not resumed.gram.due(9)


def test_the_configs_build_dinov2_and_refuse_a_bad_gram_schedule(tmp_path: Path) -> None:
    from ssl_train.build import build
    from ssl_train.errors import UserError

    cfg = compose_config(["method=dinov2", "backbone.model_kwargs.depth=1"], tmp_path / "a")
    built = build(cfg)
    method = built.method
    assert method.name == "dinov2" and method.loss.centering == "sinkhorn_knopp" and method.koleo.weight == 0.1
    assert method.patch_head is not None and method.gram.backbone is None  # Gram anchoring off by default: no copy
    gamma = method.backbone.model.blocks[0].ls1.gamma  # timm's layer scale, from backbone.model_kwargs.init_values
    assert torch.equal(gamma, torch.ones_like(gamma)) and gamma.requires_grad  # 1.0 on this budget (dinov2: 1e-5)
    optimizer, _, lr = built.module.optim.build(method, [], 256, 39, 78)
    assert lr == pytest.approx(2e-3)  # dinov2's sqrt_wrt_1024: 4e-3 x sqrt(256 / 1024)
    no_decay = [group for group in optimizer.param_groups if group["weight_decay"] == 0.0]
    assert any(p is gamma for group in no_decay for p in group["params"])  # trained, without weight decay (dinov2's gamma)
    with pytest.raises(UserError, match="gram_refresh_every"):
        build(compose_config(["method=dinov2", "method.gram_weight=1.0", "method.gram_refresh_every=-1"], tmp_path / "b"))


@pytest.mark.parametrize("experiment", ["dinov2_vit_small", "dinov3_vit_small"])
def test_gpu_recipes_compose_and_step_on_cpu_with_tiny_inputs(experiment: str, tmp_path: Path) -> None:
    from ssl_train.build import build

    tiny = ["trainer.accelerator=cpu", "trainer.precision=32-true", "trainer=default", "backbone.patch_size=4", "+backbone.model_kwargs.depth=1"]
    tiny += ["augment.local_size=12", "augment.num_local=2", "head.out_dim=256", "data.num_workers=0", "data.pin_memory=false"]
    cfg = compose_config([f"experiment={experiment}", *tiny], tmp_path)
    assert cfg.loss.centering == "sinkhorn_knopp" and cfg.backbone.model_kwargs.init_values == 1e-5
    assert cfg.optim.lr_scaling == "sqrt" and cfg.loss.warmup_teacher_temp_steps == 37500
    method = build(cfg).method
    assert (method.gram.backbone is not None) == (experiment == "dinov3_vit_small")
    if experiment == "dinov3_vit_small":
        assert cfg.method.gram_start == 62500 and method.backbone.model.num_prefix_tokens == 5  # class + 4 registers
    views = [torch.randn(2, 1, 28, 28), torch.randn(2, 1, 28, 28), torch.randn(2, 1, 12, 12)]
    method.train()
    method(views)["loss"].backward()
    method.on_optimizer_step(62500, 125000)
    out = method(views)
    assert torch.isfinite(out["loss"]) and ("gram" in out["logs"]) == (experiment == "dinov3_vit_small")


@pytest.mark.slow  # a whole run: ~15 s on 2 shared cores
def test_dinov2_with_gram_anchoring_trains_from_the_config(tmp_path: Path) -> None:
    from ssl_train.run import run

    overrides = ["probe=false", "baseline=false", "method=dinov2", "backbone.model_kwargs.depth=1"]
    metrics = run(compose_config([*overrides, "method.gram_weight=1.0", "method.gram_start=1", "method.gram_refresh_every=1"], tmp_path))
    assert metrics["method"] == "dinov2" and metrics["steps"] == 2
    state = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    teacher, gram = "method.teacher.backbone.model.blocks.0.attn.qkv.weight", "method.gram.backbone.model.blocks.0.attn.qkv.weight"
    assert int(state["method.gram.updates"]) == 1 and torch.equal(state[gram], state[teacher])  # copied at step 1, refreshed at 2
    assert not torch.equal(state[teacher], state["method.backbone.model.blocks.0.attn.qkv.weight"])
