"""ViT recipes and what fits them: LoRA fine-tuning, the weight-decay schedule, gradient clipping from the backbone,
the frozen patch projection, and the GPU recipes dry-run on CPU."""

from __future__ import annotations

import math
from functools import partial
from pathlib import Path

import pytest
import torch
from torch import nn

from ssl_train.optim import OptimRecipe, cosine_between
from tests.fixtures import compose_config, separable_images, tiny_vit
from tests.optional import require

require("timm")


def test_lora_trains_adapters_only_and_saves_a_loadable_adapter(tmp_path: Path) -> None:
    require("peft")
    import peft

    from ssl_train.eval.lora import LoRAFineTune, lora_targets

    g = torch.Generator().manual_seed(0)
    train, test = separable_images(128, g), separable_images(64, g)
    vit = tiny_vit()
    before = {k: v.clone() for k, v in vit.state_dict().items()}
    assert lora_targets(vit) == ["model.blocks.0.attn.qkv", "model.blocks.1.attn.qkv"]
    evaluator = LoRAFineTune(rank=4, alpha=8, epochs=4, lr=2e-2, batch_size=32, warmup_epochs=0.5, crop_scale=(0.9, 1.0), adapter_dir=str(tmp_path / "a"))
    result = evaluator.evaluate_encoder(vit, train, test, 4)
    assert result["top1"] > 0.6  # chance 0.25
    # two qkv layers (192 -> 576): A is 4 x 192, B is 576 x 4; plus the head (192 x 4 + 4)
    assert result["trainable_params"] == 2 * (4 * 192 + 576 * 4) + 192 * 4 + 4
    assert result["total_params"] > 10 * result["trainable_params"]
    assert all(torch.equal(before[k], v) for k, v in vit.state_dict().items())
    assert (tmp_path / "a" / "adapter_model.safetensors").is_file() and (tmp_path / "a" / "adapter_config.json").is_file()
    evaluator.evaluate_encoder(vit, train, test, 4)
    assert (tmp_path / "a-1" / "adapter_model.safetensors").is_file()  # the first adapter is kept
    # the saved adapter reproduces the evaluated classifier on a fresh copy of the encoder
    from ssl_train.eval.lora import _Classifier

    fresh = _Classifier(tiny_vit(), nn.Linear(192, 4))
    fresh.encoder.load_state_dict(before)
    loaded = peft.PeftModel.from_pretrained(fresh, str(tmp_path / "a")).eval()
    images = torch.stack([test[i][0] for i in range(16)])
    with torch.no_grad():
        accuracy = (loaded(images).argmax(1) == torch.stack([test[i][1] for i in range(16)])).float().mean()
    assert accuracy > 0.6


def test_lora_on_a_cnn_and_a_wrong_target(tmp_path: Path) -> None:
    require("peft")
    from ssl_train.encoders.resnet import SmallResNet
    from ssl_train.errors import UserError
    from ssl_train.eval.lora import LoRAFineTune, lora_targets

    cnn = SmallResNet(in_channels=1, widths=(8, 16))
    assert lora_targets(cnn) and all(isinstance(dict(cnn.named_modules())[n], nn.Conv2d | nn.Linear) for n in lora_targets(cnn))
    g = torch.Generator().manual_seed(0)
    train, test = separable_images(64, g), separable_images(32, g)
    result = LoRAFineTune(rank=2, epochs=1, batch_size=32).evaluate_encoder(cnn, train, test, 4)
    assert result["trainable_params"] < sum(p.numel() for p in cnn.parameters())
    with pytest.raises(UserError, match="eval.lora.target_modules"):
        LoRAFineTune(target_modules=["nonexistent"]).evaluate_encoder(cnn, train, test, 4)


def test_class_token_attention_equals_timm_unfused_attention() -> None:
    vit = tiny_vit().eval()
    images = torch.randn(2, 1, 28, 28)
    captured: list[torch.Tensor] = []
    last = vit.model.blocks[-1].attn
    last.fused_attn = False  # timm's explicit path: softmax weights go through attn_drop
    handle = last.attn_drop.register_forward_hook(lambda module, inputs, output: captured.append(inputs[0]))
    with torch.no_grad():
        vit(images)
    handle.remove()
    reference = captured[0][:, :, 0, 1:].reshape(2, 3, 7, 7)  # class token's row, patch columns
    torch.testing.assert_close(vit.cls_attention(images), reference)
    assert torch.allclose(vit.cls_attention(images).sum((-1, -2)), 1 - captured[0][:, :, 0, 0], atol=1e-6)  # the rest went to the class token


def test_simmim_mask_counts_blocks_and_the_loss_is_the_reference_l1() -> None:
    from ssl_train.losses import MaskedPixelLoss
    from ssl_train.methods.masks import block_mask
    from ssl_train.methods.patches import patchify

    mask = block_mask(3, 7, 0.6, 2)
    assert mask.shape == (3, 14, 14) and torch.equal(mask[:, ::2, ::2].sum((1, 2)), torch.full((3,), float(math.ceil(49 * 0.6))))
    assert torch.equal(mask, mask[:, ::2, ::2].repeat_interleave(2, 1).repeat_interleave(2, 2))  # constant on each 2 x 2 block
    g = torch.Generator().manual_seed(0)
    images, reconstruction = torch.randn(3, 3, 28, 28, generator=g), torch.randn(3, 3, 28, 28, generator=g)
    pixel_mask = mask.repeat_interleave(2, 1).repeat_interleave(2, 2)[:, None]  # 2 px patches
    reference = ((images - reconstruction).abs() * pixel_mask).sum() / (pixel_mask.sum() + 1e-5) / 3  # models/simmim.py
    ours = MaskedPixelLoss(norm_pix=False, l1=True)(patchify(reconstruction, 2), patchify(images, 2), mask.flatten(1))
    torch.testing.assert_close(ours, reference)


def test_simmim_vit_replaces_masked_embeddings_and_a_cnn_learns_to_fill_blocks() -> None:
    from ssl_train.encoders.resnet import SmallResNet
    from ssl_train.losses import MaskedPixelLoss
    from ssl_train.methods import SimMIMMethod

    vit = tiny_vit().eval()
    images = torch.randn(2, 1, 28, 28)
    token = torch.randn(192)
    nothing = torch.zeros(2, 49)
    torch.testing.assert_close(vit.tokens(images, masked=nothing, mask_token=token), vit.tokens(images))
    one = nothing.clone()
    one[:, 10] = 1
    changed = vit.tokens(images, masked=one, mask_token=token)
    other = images.clone()
    other[:, :, 4:8, 12:16] = 5.0  # patch 10 (row 1, col 3) differs: masked, so it cannot matter
    torch.testing.assert_close(vit.tokens(other, masked=one, mask_token=token), changed)
    method = SimMIMMethod(vit.train(), nn.Identity(), MaskedPixelLoss(norm_pix=False, l1=True), image_size=28, channels=1)
    out = method([images])
    out["loss"].backward()
    assert method.mask_token.grad.abs().sum() > 0 and out["features"].shape == (2, 192) and abs(float(out["logs"]["masked_fraction"]) - 30 / 49) < 1e-6

    torch.manual_seed(0)
    cnn = SimMIMMethod(
        SmallResNet(in_channels=1, widths=(8, 16)), nn.Identity(), MaskedPixelLoss(norm_pix=False, l1=True), image_size=28, channels=1, mask_patch_size=7
    )
    assert cnn.stride == 4  # a 7 x 7 last feature map: the 1x1 conv + pixel shuffle restore 28 x 28
    smooth = torch.nn.functional.avg_pool2d(torch.randn(16, 1, 28, 28), 7, 1, 3) * 3  # low-frequency images: masked blocks are predictable
    optimizer = torch.optim.Adam(cnn.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        loss = cnn([smooth])["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5  # measured 0.73


def test_ijepa_masks_are_blocks_and_the_context_never_sees_a_target() -> None:
    from ssl_train.methods.masks import multiblock_masks

    g = torch.Generator().manual_seed(0)
    context, targets = multiblock_masks(8, 7, num_targets=4, generator=g)
    assert len(targets) == 4 and all(t.shape == targets[0].shape for t in targets)
    for i in range(8):
        seen = set(context[i].tolist())
        for target in targets:
            rows, cols = target[i] // 7, target[i] % 7
            area = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
            assert area == len(target[i]) and len(set(target[i].tolist())) == len(target[i])  # a full rectangle
            assert not seen & set(target[i].tolist())
        assert len(seen) == context.shape[1] > 4
    # 15-20% of 49 patches -> 7-9: the block is 3 x 3, 2 x 4 or 3 x 2-ish
    assert 4 <= targets[0].shape[1] <= 12
    crowded, _ = multiblock_masks(16, 7, num_targets=8, target_scale=(0.3, 0.35), generator=torch.Generator().manual_seed(1))
    assert crowded.shape[1] > 4  # targets covering the context: the reference's relaxation lets some overlap, never a failure
    again = multiblock_masks(8, 7, num_targets=4, generator=torch.Generator().manual_seed(0))
    assert torch.equal(again[0], context) and all(torch.equal(a, b) for a, b in zip(again[1], targets, strict=True))


def test_latent_prediction_and_koleo_losses_equal_plain_computations() -> None:
    from ssl_train.losses import KoLeoLoss, LatentPredictionLoss

    g = torch.Generator().manual_seed(0)
    p, t = 2 * torch.randn(4, 5, 6, generator=g), 2 * torch.randn(4, 5, 6, generator=g)
    d = (p - t).abs()
    torch.testing.assert_close(LatentPredictionLoss()(p, t), torch.where(d < 1, 0.5 * d**2, d - 0.5).mean())
    x = torch.randn(6, 3, generator=g)
    unit = x / x.norm(dim=1, keepdim=True)
    nearest = [min((float((unit[i] - unit[j]).norm()), j) for j in range(6) if j != i)[0] for i in range(6)]
    torch.testing.assert_close(KoLeoLoss()(x), -torch.log(torch.tensor(nearest) + 1e-8).mean())
    spread, bunched = torch.eye(4), torch.eye(4) + 5.0  # spread-out rows score lower than nearly parallel ones
    assert KoLeoLoss()(spread) < KoLeoLoss()(bunched)


def test_ijepa_predicts_targets_from_context_and_moves_its_target_encoder() -> None:
    from ssl_train.losses import LatentPredictionLoss
    from ssl_train.methods import IJEPAMethod

    torch.manual_seed(0)
    vit = tiny_vit()
    method = IJEPAMethod(
        vit, nn.Identity(), LatentPredictionLoss(), image_size=28, channels=1, predictor_dim=32, predictor_depth=1, predictor_heads=2, momentum_base=0.5
    )
    out = method([torch.randn(4, 1, 28, 28)])
    out["loss"].backward()
    assert out["features"].shape == (4, 192) and out["logs"]["context_patches"] + out["logs"]["target_patches"] <= 49  # disjoint
    assert vit.model.blocks[0].attn.qkv.weight.grad is not None and method.predictor.mask_token.grad.abs().sum() > 0
    assert all(p.grad is None for p in method.target["encoder"].parameters())
    before = method.target["encoder"].model.blocks[0].attn.qkv.weight.clone()
    with torch.no_grad():
        vit.model.blocks[0].attn.qkv.weight.add_(1.0)
    method.on_optimizer_step(0, 10)  # momentum 0.5 at step 0: halfway to the online weights
    torch.testing.assert_close(method.target["encoder"].model.blocks[0].attn.qkv.weight, 0.5 * before + 0.5 * vit.model.blocks[0].attn.qkv.weight)


def test_dino_koleo_term_adds_the_weighted_regulariser() -> None:
    from ssl_train.heads import DINOHead
    from ssl_train.losses import DINOLoss, KoLeoLoss
    from ssl_train.methods import DINOMethod

    torch.manual_seed(0)
    vit = tiny_vit()
    views = [torch.randn(4, 1, 28, 28), torch.randn(4, 1, 28, 28)]
    plain = DINOMethod(vit, DINOHead(in_dim=192, out_dim=64, hidden_dim=32, bottleneck_dim=16), DINOLoss(out_dim=64))
    with_koleo = DINOMethod(vit, plain.projector, DINOLoss(out_dim=64), koleo_weight=0.1)
    with_koleo.teacher["backbone"].load_state_dict(plain.teacher["backbone"].state_dict())
    with_koleo.teacher["projector"].load_state_dict(plain.teacher["projector"].state_dict())
    vit.eval()  # no drop-path randomness between the two passes
    base, regularised = plain(views), with_koleo(views)
    koleo = sum(KoLeoLoss()(vit(v)) for v in views)
    torch.testing.assert_close(regularised["loss"], base["loss"] + 0.1 * koleo)
    assert "koleo" in regularised["logs"] and "koleo" not in base["logs"]


def test_ibot_patch_loss_equals_a_per_image_loop_over_masked_patches() -> None:
    from ssl_train.losses import IBOTPatchLoss

    g = torch.Generator().manual_seed(0)
    student = [torch.randn(3, 5, 8, generator=g) for _ in range(2)]
    teacher = [torch.randn(3, 5, 8, generator=g) for _ in range(2)]
    masks = [torch.tensor([[1, 0, 1, 0, 0], [0, 0, 0, 0, 0], [1, 1, 1, 1, 1]]), torch.tensor([[0, 1, 0, 0, 0]] * 3)]
    loss_fn = IBOTPatchLoss(out_dim=8, student_temp=0.1, teacher_temp=0.07, warmup_teacher_temp=0.04, warmup_teacher_temp_steps=10)
    loss_fn.center.fill_(0.3)
    loss_fn.set_step(5)  # halfway through the warm-up: 0.055
    expected = 0.0
    for s, t, m in zip(student, teacher, masks, strict=True):
        per_view = 0.0
        for i in range(3):
            masked = [p for p in range(5) if m[i, p]]
            cross = [-(torch.softmax((t[i, p] - 0.3) / 0.055, 0) * torch.log_softmax(s[i, p] / 0.1, 0)).sum() for p in masked]
            per_view += sum(cross) / len(masked) if masked else 0.0  # an image with no masked patch adds 0
        expected += per_view / 3
    torch.testing.assert_close(loss_fn(student, teacher, masks), torch.as_tensor(expected / 2))
    mean_patch = torch.cat([t.mean(1) for t in teacher]).mean(0, keepdim=True)  # the reference's center2: per-image patch means
    torch.testing.assert_close(loss_fn.center, 0.9 * torch.full((1, 8), 0.3) + 0.1 * mean_patch)


def test_beit_block_masks_never_exceed_the_ratio_and_leave_ratio_zero_images_whole() -> None:
    from ssl_train.methods.masks import beit_block_masks

    ratios = torch.tensor([0.0, 0.3, 0.5, 0.45] * 16)
    masks = beit_block_masks(ratios, 14, generator=torch.Generator().manual_seed(0))
    counts = masks.flatten(1).sum(1).float()
    assert masks.shape == (64, 14, 14) and masks.dtype == torch.bool
    assert (counts[::4] == 0).all() and (counts <= ratios * 196).all()
    masked = ratios > 0
    assert (counts[masked] >= ratios[masked] * 196 - 20).all()  # rectangles fill each ratio to within about a block
    first = masks[1]  # a block-wise mask: its masked patches touch other masked patches, unlike a random one
    neighbours = first[1:, :] & first[:-1, :]
    assert neighbours.sum() > 0.5 * first.sum()
    again = beit_block_masks(ratios, 14, generator=torch.Generator().manual_seed(0))
    assert torch.equal(masks, again)


def test_ibot_adds_the_masked_patch_distillation_to_dino_and_trains_the_mask_token() -> None:
    from ssl_train.heads import DINOHead
    from ssl_train.losses import DINOLoss, IBOTPatchLoss
    from ssl_train.methods import DINOMethod, IBOTMethod
    from ssl_train.methods.masks import beit_block_masks

    torch.manual_seed(0)
    vit = tiny_vit().eval()  # no drop-path randomness between passes
    head = DINOHead(in_dim=192, out_dim=64, hidden_dim=32, bottleneck_dim=16)
    method = IBOTMethod(vit, head, DINOLoss(out_dim=64), patch_weight=0.5, masked_share=1.0, mask_ratio_range=[0.3, 0.3])
    with torch.no_grad():
        method.mask_token.normal_()
    views = [torch.randn(4, 1, 28, 28), torch.randn(4, 1, 28, 28), torch.randn(4, 1, 12, 12)]
    torch.manual_seed(1)
    out = method(views)
    # the same computation by hand: the masks the method drew (same RNG stream), the student on masked global views
    torch.manual_seed(1)
    ratios = torch.where(torch.rand(8) < 1.0, 0.3 + torch.rand(8) * 0.0, 0.0)
    masks = beit_block_masks(ratios, 7).flatten(1)
    images = torch.cat(views[:2])
    tokens = vit.tokens(images, masked=masks, mask_token=method.mask_token)
    student = [head(h) for h in vit.pool(tokens).chunk(2)] + [head(vit(views[2]))]
    teacher = [method.teacher["projector"](method.teacher["backbone"](v)) for v in views[:2]]
    teacher_patches = method.teacher["projector"](method.teacher["backbone"].tokens(images)[:, 1:]).chunk(2)
    cls = DINOLoss(out_dim=64)(student, teacher)
    patches = IBOTPatchLoss(out_dim=64, teacher_temp=0.07)(head(tokens[:, 1:]).chunk(2), teacher_patches, masks.chunk(2))
    torch.testing.assert_close(out["loss"], cls + 0.5 * patches)
    assert 0.2 < float(out["logs"]["masked_fraction"]) <= 0.3 and float(out["logs"]["ibot_patch"]) > 0
    out["loss"].backward()
    assert method.mask_token.grad.abs().sum() > 0
    assert not hasattr(DINOMethod(vit, head, DINOLoss(out_dim=64)), "mask_token")  # plain DINO: no extra parameter
    with pytest.raises(ValueError, match="masks patch tokens and needs a vision transformer backbone"):
        IBOTMethod(nn.Sequential(nn.Flatten(), nn.Linear(784, 192)), head, DINOLoss(out_dim=64))


def test_weight_decay_follows_a_cosine_on_decayed_weights_only() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
    recipe = OptimRecipe(partial(torch.optim.AdamW, lr=1e-3, weight_decay=0.04), warmup_epochs=0, weight_decay_end=0.4)
    probe = [{"params": [nn.Parameter(torch.zeros(2))], "lr": 0.1}]
    optimizer, scheduler, _ = recipe.build(model, probe, global_batch=256, steps_per_epoch=10, total_steps=11)
    seen = []
    for _ in range(11):
        seen.append([g["weight_decay"] for g in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    decayed = [s[0] for s in seen]
    expected = [0.4 + (0.04 - 0.4) * 0.5 * (1 + math.cos(math.pi * i / 10)) for i in range(11)]  # DINO's cosine_scheduler
    assert decayed == pytest.approx(expected) and decayed[0] == pytest.approx(0.04) and decayed[-1] == pytest.approx(0.4)
    assert all(s[1] == 0.0 and s[2] == 0.0 for s in seen)  # biases/norms and the online probe: never decayed
    assert cosine_between(1.0, 0.0, 5, 11) == pytest.approx(0.5)
    state = scheduler.state_dict()  # a resumed run continues the schedule from the optimizer's saved groups
    again, again_scheduler, _ = recipe.build(model, probe, global_batch=256, steps_per_epoch=10, total_steps=11)
    again.load_state_dict(optimizer.state_dict())
    again_scheduler.load_state_dict(state)
    assert again.param_groups[0]["weight_decay"] == pytest.approx(0.4)


def test_vit_backbones_clip_gradients_by_default_and_the_recipes_compose(tmp_path: Path) -> None:
    from ssl_train.build import build

    default = compose_config([], tmp_path / "a")
    vit = compose_config(["backbone=vit_tiny"], tmp_path / "b")
    off = compose_config(["backbone=vit_tiny", "trainer.gradient_clip_val=null"], tmp_path / "c")
    assert default.trainer.gradient_clip_val is None and vit.trainer.gradient_clip_val == 3.0 and off.trainer.gradient_clip_val is None
    assert build(vit).trainer.gradient_clip_val == 3.0
    dino = compose_config(["experiment=dino_vit_tiny"], tmp_path / "d")
    assert dino.optim.optimizer._target_ == "torch.optim.AdamW" and "clip_lr" not in dino.optim.optimizer and dino.optim.weight_decay_end == 0.4
    # the ViT recipes keep the reference's centre; method=dino's ResNet default is DINOv2's Sinkhorn-Knopp teacher
    dino_resnet = compose_config(["method=dino"], tmp_path / "f")
    assert dino.loss.centering == "centering" and dino_resnet.loss.centering == "sinkhorn_knopp"
    assert build(dino_resnet).method.loss.centering == "sinkhorn_knopp"
    moco = compose_config(
        ["experiment=mocov3_vit_small", "backbone.patch_size=4", "+backbone.model_kwargs.depth=1", "trainer.accelerator=cpu", "trainer.precision=32-true"],
        tmp_path / "e",
    )
    built = build(moco)
    patch = built.backbone.model.patch_embed.proj
    assert not patch.weight.requires_grad and isinstance(built.method.predictor[-1], nn.BatchNorm1d)


def test_simmim_ijepa_runs_from_the_configs_and_lora_evaluates_a_checkpoint(tmp_path: Path) -> None:
    from ssl_train.eval.checkpoint import evaluate_checkpoint
    from ssl_train.run import run

    quiet = ["probe=false", "baseline=false"]
    simmim = run(compose_config([*quiet, "method=simmim", "backbone.model_kwargs.depth=2"], tmp_path / "simmim"))
    cnn = run(compose_config([*quiet, "method=simmim", "backbone=resnet18"], tmp_path / "simmim_cnn"))
    ijepa = run(compose_config([*quiet, "method=ijepa", "backbone.model_kwargs.depth=2"], tmp_path / "ijepa"))
    assert simmim["steps"] == cnn["steps"] == ijepa["steps"] == 2 and simmim["method"] == "simmim" and ijepa["method"] == "ijepa"
    require("peft")
    cfg = compose_config(
        [f"ckpt_path={tmp_path / 'ijepa' / 'checkpoints' / 'last.ckpt'}", "eval=lora", "eval.lora.epochs=1", "eval.lora.max_train_samples=64"],
        tmp_path / "lora",
        config_name="probe",
    )  # the run's own 128 / 64 images
    metrics = evaluate_checkpoint(cfg)
    assert metrics["lora_trainable_params"] == 2 * (8 * 192 + 576 * 8) + 192 * 10 + 10 and 0.0 < metrics["lora_top1"]
    assert (tmp_path / "lora" / "lora_adapter" / "adapter_model.safetensors").is_file()
