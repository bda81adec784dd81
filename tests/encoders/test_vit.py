"""Vision transformers and masked modelling: timm encoders, MAE's patchify / masking / loss against plain computations,
the MAE method, fine-tuning with layer-wise LR decay and the low-label probe."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ssl_train.errors import UserError
from ssl_train.eval.finetune import FineTune, layer_decay_groups, layer_of
from ssl_train.eval.low_shot import LowShotProbe, balanced_subset
from ssl_train.losses import MaskedPixelLoss
from ssl_train.methods.mae import MAEMethod
from ssl_train.methods.masks import random_masking
from ssl_train.methods.patches import patchify, sincos_2d, unpatchify
from ssl_train.run import run
from tests.fixtures import compose_config, separable_images, tiny_vit
from tests.optional import require

require("timm")
import timm  # noqa: E402

from ssl_train.encoders.timm_encoder import TimmEncoder  # noqa: E402

QUIET = ["probe=false", "baseline=false"]


def test_timm_vit_tokens_pooling_and_other_sizes() -> None:
    vit = tiny_vit()
    x = torch.randn(2, 1, 28, 28)
    assert vit.is_vit and vit.patch_size == 4 and vit.num_patches(28) == 49 and vit.out_dim == 192
    tokens = vit.eval().tokens(x)
    assert tokens.shape == (2, 1 + 49, 192)
    torch.testing.assert_close(vit.pool(tokens), vit(x))  # forward = pooled tokens (class token)
    assert vit(torch.randn(2, 1, 32, 32)).shape == (2, 192)  # position embeddings interpolated to 8 x 8 patches
    keep = torch.tensor([[0, 5, 9], [1, 2, 48]])
    assert vit.tokens(x, keep).shape == (2, 1 + 3, 192)


def test_timm_state_dict_keeps_timm_key_names() -> None:
    vit = tiny_vit()
    reference = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, num_classes=0, in_chans=1, img_size=28, patch_size=4, depth=2, dynamic_img_size=True
    )
    reference.load_state_dict(vit.portable_module.state_dict())  # strict: the same keys and shapes
    x = torch.randn(2, 1, 28, 28)
    torch.testing.assert_close(reference.eval()(x), vit.eval()(x))


def test_any_timm_cnn_and_a_wrong_name() -> None:
    cnn = TimmEncoder("convnext_atto", in_channels=1, image_size=32)
    assert not cnn.is_vit and cnn(torch.randn(2, 1, 32, 32)).shape == (2, cnn.out_dim) == (2, 320)
    dilated = TimmEncoder("convnext_atto", in_channels=1, image_size=28)  # stride 32 leaves nothing of 28 px: output_stride 16
    assert dilated.model.stages[3].downsample[1].stride == (1, 1) and dilated.stages(torch.randn(2, 1, 28, 28))[0].shape == (2, 320, 1, 1)
    assert dilated.state_dict().keys() == cnn.state_dict().keys()  # the same weights, dilated instead of strided
    with pytest.raises(UserError, match=r"^backbone.name='convnext_atto' cannot encode 28 px images \(it downsamples them to nothing"):
        TimmEncoder("convnext_atto", in_channels=1, image_size=28, model_kwargs={"output_stride": 32})  # the user's stride is kept
    with pytest.raises(UserError, match=r"^backbone.name='vit_tiny_patch16_22' is not a timm model; close matches: .*vit_tiny_patch16_224"):
        TimmEncoder("vit_tiny_patch16_22")
    with pytest.raises(UserError, match=r"backbone.patch_size=5 does not divide the image size 28"):
        TimmEncoder("vit_tiny_patch16_224", image_size=28, patch_size=5)


def test_patchify_orders_patches_row_major_and_round_trips() -> None:
    images = torch.randn(2, 3, 8, 12)
    patches = patchify(images, 4)
    assert patches.shape == (2, 6, 4 * 4 * 3)
    # patch 4 = row 1, column 1: pixels (row, col, channel) of images[:, :, 4:8, 4:8]
    torch.testing.assert_close(patches[:, 4], images[:, :, 4:8, 4:8].permute(0, 2, 3, 1).reshape(2, -1))
    torch.testing.assert_close(unpatchify(patches, 4, 3, height=8), images)
    square = torch.randn(1, 1, 28, 28)
    torch.testing.assert_close(unpatchify(patchify(square, 4), 4, 1), square)


def test_random_masking_keeps_exactly_a_quarter_and_restores_the_order() -> None:
    torch.manual_seed(0)
    keep, mask, restore = random_masking(5, 49, 0.75)
    assert keep.shape == (5, 12) and mask.sum(dim=1).tolist() == [37.0] * 5  # int(49 x 0.25) = 12 visible
    for row in range(5):
        assert sorted(keep[row].tolist()) == (mask[row] == 0).nonzero().flatten().tolist()
    visible = torch.gather(torch.arange(49).expand(5, -1), 1, keep)  # what the decoder puts back: visible first, then masked
    shuffled = torch.cat([visible, torch.full((5, 37), -1)], dim=1)
    back = torch.gather(shuffled, 1, restore)
    assert ((back == torch.arange(49)) | (back == -1)).all() and ((back == -1) == (mask == 1)).all()
    with pytest.raises(ValueError, match=r"keeps 0 of 4 patches"):
        random_masking(1, 4, 0.9)


def test_masked_pixel_loss_equals_the_reference_and_ignores_visible_patches() -> None:
    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(3, 10, 12, generator=g), torch.randn(3, 10, 12, generator=g)
    mask = (torch.rand(3, 10, generator=g) > 0.5).float()
    total, count = 0.0, 0.0
    for n in range(3):
        for i in range(10):
            if mask[n, i]:
                t = target[n, i]
                t = (t - t.mean()) / (t.var() + 1e-6).sqrt()  # the reference's norm_pix_loss (unbiased variance)
                total += ((pred[n, i] - t) ** 2).mean().item()
                count += 1
    loss = MaskedPixelLoss(norm_pix=True)
    assert loss(pred, target, mask).item() == pytest.approx(total / count, rel=1e-5)
    changed = pred.clone()
    changed[mask == 0] = 100.0  # visible patches: any prediction
    assert loss(changed, target, mask).item() == pytest.approx(total / count, rel=1e-5)


def test_mae_encodes_only_visible_patches_and_learns_from_masked_ones() -> None:
    torch.manual_seed(0)
    vit = tiny_vit()
    method = MAEMethod(vit, torch.nn.Identity(), MaskedPixelLoss(), image_size=28, channels=1, decoder_dim=32, decoder_depth=1, decoder_heads=2)
    seen: list[int] = []
    vit.model.blocks[0].register_forward_pre_hook(lambda module, args: seen.append(args[0].shape[1]))
    images = torch.randn(4, 1, 28, 28)
    out = method([images])
    assert seen == [1 + 12] and out["features"].shape == (4, 192)  # class token + 12 of 49 patches
    out["loss"].backward()
    assert vit.model.patch_embed.proj.weight.grad.abs().sum() > 0 and method.decoder.predict.weight.grad.abs().sum() > 0
    optimizer = torch.optim.AdamW(method.parameters(), lr=1e-3)
    fixed = torch.randn(8, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    first = method([fixed])["loss"].item()
    for _ in range(30):
        optimizer.zero_grad()
        method([fixed])["loss"].backward()
        optimizer.step()
    assert method([fixed])["loss"].item() < 0.9 * first
    with pytest.raises(ValueError, match=r"needs a vision transformer backbone"):
        MAEMethod(TimmEncoder("resnet10t", in_channels=1, image_size=28), torch.nn.Identity(), MaskedPixelLoss(), 28, 1)


def test_sincos_positions_are_distinct_and_bounded() -> None:
    table = sincos_2d(32, 7)
    assert table.shape == (49, 32) and table.abs().max() <= 1
    assert torch.cdist(table, table).add(torch.eye(49)).min() > 0.1  # every position differs from every other


def test_layer_decay_follows_block_depth() -> None:
    assert [
        layer_of(n, 6)
        for n in ("model.cls_token", "model.patch_embed.proj.weight", "model.blocks.0.attn.qkv.weight", "model.blocks.5.mlp.fc2.bias", "model.norm.weight")
    ] == [0, 0, 1, 6, 7]
    vit = tiny_vit()  # 2 blocks: embeddings x 0.5^3, block 0 x 0.5^2, block 1 x 0.5, norm x 1
    groups = layer_decay_groups(vit, lr=1.0, weight_decay=0.05, layer_decay=0.5)
    lr_of = {id(p): g["lr"] for g in groups for p in g["params"]}
    decay_of = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    m = vit.model
    assert [lr_of[id(p)] for p in (m.pos_embed, m.blocks[0].attn.qkv.weight, m.blocks[1].attn.qkv.weight, m.norm.weight)] == [0.125, 0.25, 0.5, 1.0]
    assert decay_of[id(m.pos_embed)] == decay_of[id(m.cls_token)] == decay_of[id(m.norm.weight)] == 0.0 and decay_of[id(m.blocks[0].attn.qkv.weight)] == 0.05


def test_finetune_learns_and_leaves_the_encoder_untouched() -> None:
    g = torch.Generator().manual_seed(0)
    train, test = separable_images(128, g), separable_images(64, g)
    vit = tiny_vit()
    before = {k: v.clone() for k, v in vit.state_dict().items()}
    result = FineTune(epochs=4, lr=2e-3, batch_size=32, warmup_epochs=0.5, crop_scale=(0.9, 1.0)).evaluate_encoder(vit, train, test, 4)
    assert result["top1"] > 0.6  # chance is 0.25
    assert result["trainable_params"] == sum(p.numel() for p in vit.parameters()) + 192 * 4 + 4
    assert all(torch.equal(before[k], v) for k, v in vit.state_dict().items())


def test_low_shot_budgets_are_class_balanced_and_seeded() -> None:
    labels = torch.arange(1000) % 10
    probe = LowShotProbe(fractions=(0.01, 0.1), shots=(2,), seeds=(0, 1))
    budgets = probe.budgets(labels)
    assert budgets["1pct"] == {c: 1 for c in range(10)} and budgets["10pct"] == {c: 10 for c in range(10)} and budgets["2shot"][3] == 2
    subset = balanced_subset(labels, budgets["10pct"], seed=0)
    assert torch.bincount(labels[subset]).tolist() == [10] * 10
    assert torch.equal(subset, balanced_subset(labels, budgets["10pct"], seed=0)) and not torch.equal(subset, balanced_subset(labels, budgets["10pct"], 1))
    g = torch.Generator().manual_seed(0)
    centres = 3 * torch.randn(10, 16, generator=g)
    train_x, test_y = centres[labels] + torch.randn(1000, 16, generator=g), torch.arange(200) % 10
    test_x = centres[test_y] + torch.randn(200, 16, generator=g)
    result = probe.evaluate_features(train_x, labels, test_x, test_y, 10)
    assert set(result) == {f"{b}_top1_{s}" for b in ("1pct", "10pct", "2shot") for s in ("mean", "std")}
    assert result["10pct_top1_mean"] > 0.8 and result["1pct_top1_mean"] > 0.3 and result["1pct_top1_std"] >= 0


def test_mae_run_and_a_timm_cnn_run_from_the_configs(tmp_path: Path) -> None:
    mae = run(compose_config([*QUIET, "method=mae", "backbone.model_kwargs.depth=2"], tmp_path / "mae"))
    assert mae["method"] == "mae" and mae["steps"] == 2
    byol = run(compose_config([*QUIET, "method=byol", "backbone=timm"], tmp_path / "byol"))  # timm's resnet10t
    assert byol["steps"] == 2
    with pytest.raises(UserError, match=r"method=mae needs a vision transformer backbone"):
        run(compose_config([*QUIET, "method=mae", "backbone=timm"], tmp_path / "bad"))


def test_vit_checkpoint_evaluates_and_exports_with_timm_keys(tmp_path: Path) -> None:
    from ssl_train.eval.checkpoint import encoder_from_checkpoint
    from ssl_train.toolkit import export_backbone

    run(compose_config([*QUIET, "backbone=vit_tiny", "backbone.model_kwargs.depth=2"], tmp_path / "run"))
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    encoder, _ = encoder_from_checkpoint(ckpt)
    card = export_backbone(ckpt, tmp_path / "export")
    assert card["encoder"]["image_size"] == 28 and card["encoder"]["name"] == "vit_tiny_patch16_224"
    from safetensors.torch import load_file

    reference = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, num_classes=0, in_chans=1, img_size=28, patch_size=4, depth=2, dynamic_img_size=True
    )
    reference.load_state_dict(load_file(str(Path(card["export_dir"]) / "model.safetensors")))
    x = torch.randn(2, 1, 28, 28)
    torch.testing.assert_close(reference.eval()(x), encoder.eval()(x))
    from ssl_train.toolkit.__main__ import main as toolkit

    shown = toolkit(["attention", "--ckpt", str(ckpt), "--count", "3"])
    assert shown["heads"] == 3 and shown["grid"] == 7 and Path(shown["out"]).is_file()
    from torchvision.io import read_image

    picture = read_image(shown["out"])
    assert picture.shape[0] == 3 and picture.shape[1] == 3 * 30 + 2  # 3 rows of 28 px images with 2 px padding


def test_vit_small_224_recipe_takes_one_mae_step() -> None:
    """The GPU recipe's shapes (ViT-S/16 at 224 px: 196 patches, 49 visible), dry-run on the CPU with one block."""
    vit = TimmEncoder("vit_small_patch16_224", in_channels=3, image_size=224, patch_size=16, model_kwargs={"depth": 1})
    method = MAEMethod(vit, torch.nn.Identity(), MaskedPixelLoss(), image_size=224, channels=3)
    out = method([torch.randn(2, 3, 224, 224)])
    out["loss"].backward()
    assert vit.num_patches(224) == 196 and out["logs"]["visible_patches"] == 49 and out["features"].shape == (2, 384)


def test_mae_trains_the_class_token_through_the_decoder() -> None:
    """As in the reference, the class token goes through the decoder blocks, so its embedding gets a gradient."""
    vit = tiny_vit()
    method = MAEMethod(vit, torch.nn.Identity(), MaskedPixelLoss(), image_size=28, channels=1, decoder_dim=32, decoder_depth=1, decoder_heads=2)
    method([torch.randn(4, 1, 28, 28)])["loss"].backward()
    assert vit.model.cls_token.grad is not None and vit.model.cls_token.grad.abs().sum() > 0
    assert method.decoder.positions[0, 0].abs().sum() == 0  # the class token's decoder position is zero
