"""Schedules, LR scaling, param groups and LARS."""

from __future__ import annotations

import math
from functools import partial

import pytest
import torch
from torch import nn

from ssl_train.optim import LARS, OptimRecipe, param_groups, scaled_lr, warmup_cosine


def test_warmup_cosine_shape() -> None:
    values = [warmup_cosine(s, total_steps=100, warmup_steps=10, min_ratio=0.1) for s in range(100)]
    assert values[0] == pytest.approx(0.1) and values[9] == pytest.approx(1.0)
    assert values[10] == pytest.approx(1.0)
    assert values[55] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 45 / 90)))
    assert all(a >= b for a, b in zip(values[10:], values[11:], strict=False))


def test_lr_scaling_rules() -> None:
    assert scaled_lr(0.3, 512, "linear") == pytest.approx(0.6)
    assert scaled_lr(0.3, 1024, "sqrt") == pytest.approx(0.6)
    assert scaled_lr(0.3, 1024, "none") == pytest.approx(0.3)


def test_no_weight_decay_on_bias_and_norm() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
    decay, no_decay = param_groups(model, 0.1)
    assert [p.shape for p in decay["params"]] == [torch.Size([4, 4])]
    assert len(no_decay["params"]) == 3 and no_decay["weight_decay"] == 0.0


def test_recipe_gives_probe_group_its_own_constant_lr() -> None:
    model, probe = nn.Linear(4, 4), nn.Linear(4, 2)
    recipe = OptimRecipe(partial(torch.optim.SGD, lr=0.5, weight_decay=1e-4), lr_scaling="linear", warmup_epochs=1)
    optimizer, scheduler, lr = recipe.build(model, [{"params": list(probe.parameters()), "lr": 0.1}], global_batch=128, steps_per_epoch=5, total_steps=20)
    assert lr == pytest.approx(0.25)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.25 / 5)  # first warmup step
    for _ in range(12):
        optimizer.step()
        scheduler.step()
    assert optimizer.param_groups[-1]["lr"] == pytest.approx(0.1) and optimizer.param_groups[-1]["weight_decay"] == 0.0
    assert optimizer.param_groups[0]["lr"] < 0.25


def test_lars_trust_ratio_scales_update_and_skips_excluded() -> None:
    w, b = nn.Parameter(torch.full((3,), 2.0)), nn.Parameter(torch.full((3,), 2.0))
    optimizer = LARS([{"params": [w]}, {"params": [b], "lars_exclude": True}], lr=1.0, momentum=0.0, trust_coefficient=0.01)
    w.grad, b.grad = torch.ones(3), torch.ones(3)
    optimizer.step()
    trust = 0.01 * (2 * math.sqrt(3)) / math.sqrt(3)
    torch.testing.assert_close(w.detach(), torch.full((3,), 2.0 - trust))
    torch.testing.assert_close(b.detach(), torch.full((3,), 1.0))


def _solo_learn_lars_step(w: torch.Tensor, g: torch.Tensor, lr: float, wd: float, eta: float, clip: bool) -> torch.Tensor:
    """Reference: solo-learn's LARS (solo/utils/lars.py) for one step without momentum, written out plainly."""
    p_norm, g_norm = float(w.norm()), float(g.norm())
    lars_lr = eta * p_norm / (g_norm + p_norm * wd + 1e-8)
    if clip:
        lars_lr = min(lars_lr / lr, 1.0)
    return w - lr * (g + wd * w) * lars_lr


@pytest.mark.parametrize(("lr", "clip"), [(0.3, False), (0.3, True), (0.001, True)])
def test_lars_matches_solo_learn_formula(lr: float, clip: bool) -> None:
    g = torch.Generator().manual_seed(0)
    w0, grad = torch.randn(4, 5, generator=g), torch.randn(4, 5, generator=g) * 3
    w = nn.Parameter(w0.clone())
    optimizer = LARS([{"params": [w]}], lr=lr, momentum=0.0, weight_decay=1e-4, trust_coefficient=0.02, clip_lr=clip)
    w.grad = grad.clone()
    optimizer.step()
    torch.testing.assert_close(w.detach(), _solo_learn_lars_step(w0, grad, lr, 1e-4, 0.02, clip))


@pytest.mark.parametrize("option", ["sgd", "lars", "lars_solo", "adamw"])
def test_each_recipe_online_probe_lr_fits_a_hard_probe(option: str, tmp_path) -> None:
    """The online probe trains with the recipe's optimizer at `online_probe_lr`: on 45 overlapping classes, 256 labels
    a step, it must end well below chance loss (3.8 nats). AdamW at SGD's 0.1 ended at 7.7 nats, SGD at 0.1 at 1.3."""
    from hydra.utils import instantiate

    from tests.fixtures import compose_config

    recipe = instantiate(compose_config([f"optim={option}"], tmp_path).optim)
    torch.manual_seed(0)
    classes, dim = 45, 512
    means = torch.randn(classes, dim) * 0.12

    def batch(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.randint(0, classes, (n,))
        return nn.functional.layer_norm(means[labels] + torch.randn(n, dim), (dim,)), labels

    probe = nn.Linear(dim, classes)
    optimizer, _, _ = recipe.build(
        nn.Linear(2, 2), [{"params": list(probe.parameters()), "lr": recipe.online_probe_lr}], global_batch=256, steps_per_epoch=10, total_steps=200
    )
    for _ in range(200):
        features, labels = batch(256)
        loss = nn.functional.cross_entropy(probe(features), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    features, labels = batch(2000)
    with torch.no_grad():
        held_out = nn.functional.cross_entropy(probe(features), labels).item()
    assert held_out < 0.75 * math.log(classes), held_out


def test_adamw_option_is_fused_and_follows_the_per_step_lr_and_weight_decay(tmp_path) -> None:
    """optim=adamw builds torch's fused AdamW (7x faster steps on CPU); it must take the LR warm-up/cosine and the
    weight-decay cosine that WarmupCosineSchedule writes into the groups each step exactly as the for-loop AdamW does."""
    from hydra.utils import instantiate

    from tests.fixtures import compose_config

    recipe = instantiate(compose_config(["optim=adamw", "optim.weight_decay_end=0.4"], tmp_path).optim)
    assert recipe.optimizer.keywords["fused"] is True
    reference = OptimRecipe(
        partial(torch.optim.AdamW, **{**recipe.optimizer.keywords, "fused": False}),
        lr_scaling=recipe.lr_scaling,
        warmup_epochs=recipe.warmup_epochs,
        min_lr_ratio=recipe.min_lr_ratio,
        weight_decay_end=0.4,
    )
    weights = []
    for chosen in (recipe, reference):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(8, 16), nn.LayerNorm(16), nn.Linear(16, 4))
        optimizer, scheduler, _ = chosen.build(model, [], global_batch=256, steps_per_epoch=3, total_steps=12)
        for step in range(12):
            loss = model(torch.randn(32, 8, generator=torch.Generator().manual_seed(step))).square().mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
        assert optimizer.param_groups[0]["weight_decay"] == pytest.approx(0.4)
        weights.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    torch.testing.assert_close(weights[0], weights[1], rtol=1e-5, atol=1e-6)


def test_fused_adamw_is_unfused_only_where_lightning_clips_gradients_under_mixed_precision(tmp_path) -> None:
    """Lightning refuses to clip gradients for a fused optimizer under mixed precision (a ViT recipe with optim=adamw
    stopped at its first step on a GPU): that combination trains with the unfused AdamW, every other keeps fused."""
    from ssl_train.build import build
    from ssl_train.run import run
    from tests.fixtures import compose_config

    vit = ["backbone=vit_tiny", "backbone.model_kwargs.depth=1", "optim=adamw", "probe=false", "baseline=false"]

    def fused(overrides: list[str], name: str) -> bool:
        built = build(compose_config(overrides, tmp_path / name))
        return built.module.optim.optimizer.keywords["fused"]

    assert fused(vit, "fp32_clipped") is True  # 32-true clips outside any precision plugin: fused stays
    assert fused([*vit, "trainer.precision=bf16-mixed", "trainer.gradient_clip_val=null"], "mixed_unclipped") is True
    assert fused([*vit, "trainer.precision=bf16-mixed"], "mixed_clipped") is False
    result = run(compose_config([*vit, "trainer.precision=bf16-mixed"], tmp_path / "trains"))  # stopped with a RuntimeError before
    assert result["steps"] == 2


def _dinov2_lr_multiplier(name: str, decay: float, num_layers: int, patch_embed_lr_mult: float) -> float:
    """Reference: dinov2 utils/param_groups.py, get_vit_lr_decay_rate (force_is_backbone) + the patch_embed multiplier,
    written out for names relative to the backbone (ours carry a `backbone.model.` prefix)."""
    layer_id = num_layers + 1
    if any(f".{token}" in f".{name}" for token in ("pos_embed", "patch_embed", "mask_token", "cls_token", "register_tokens")):
        layer_id = 0
    elif "blocks." in name:
        layer_id = int(name[name.find("blocks.") :].split(".")[1]) + 1
    rate = decay ** (num_layers + 1 - layer_id)
    return rate * patch_embed_lr_mult if "patch_embed" in name else rate


def test_layer_wise_lr_decay_matches_dinov2_and_keeps_heads_at_the_full_lr() -> None:
    from tests.fixtures import tiny_vit

    class WithHead(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.backbone, self.projector = tiny_vit(), nn.Linear(4, 4)
            self.mask_token = nn.Parameter(torch.zeros(4))  # a method's own mask token: dinov2 keeps it in the backbone

    model = WithHead()
    recipe = OptimRecipe(partial(torch.optim.AdamW, lr=1e-3, weight_decay=0.04), lr_scaling="none", warmup_epochs=0, layer_decay=0.9, patch_embed_lr_mult=0.2)
    optimizer, _, lr = recipe.build(model, [], global_batch=256, steps_per_epoch=10, total_steps=10)
    lr_of = {id(p): group["lr"] for group in optimizer.param_groups for p in group["params"]}
    num_layers = len(model.backbone.model.blocks)
    assert num_layers >= 2
    checked = 0
    for name, param in model.named_parameters():
        if name.startswith("backbone."):
            expected = _dinov2_lr_multiplier(name.removeprefix("backbone.model."), 0.9, num_layers, 0.2)
        else:
            expected = _dinov2_lr_multiplier(name, 0.9, num_layers, 0.2) if name == "mask_token" else 1.0
        assert lr_of[id(param)] == pytest.approx(lr * expected), name
        checked += 1
    assert checked == len(lr_of)
    assert lr_of[id(model.backbone.model.patch_embed.proj.weight)] == pytest.approx(lr * 0.2 * 0.9 ** (num_layers + 1))
    assert lr_of[id(model.backbone.model.blocks[0].attn.qkv.weight)] == pytest.approx(lr * 0.9**num_layers)


def test_layer_wise_lr_decay_on_a_backbone_without_blocks_is_one_clear_error() -> None:
    from ssl_train.errors import UserError

    class Convnet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.backbone = nn.Conv2d(1, 4, 3)

    recipe = OptimRecipe(partial(torch.optim.AdamW, lr=1e-3), layer_decay=0.9)
    with pytest.raises(UserError, match="optim.layer_decay"):
        recipe.build(Convnet(), [], global_batch=256, steps_per_epoch=10, total_steps=10)
