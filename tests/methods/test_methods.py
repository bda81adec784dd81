"""Methods: gradients reach the online encoder; teachers (BYOL's target, DINO's) get no gradients and move by their rule;
queues, support sets, prototypes and centres update."""

from __future__ import annotations

import copy
import math
from functools import partial
from pathlib import Path

import pytest
import torch
import yaml
from hydra.utils import get_class

from ssl_train.build import build
from ssl_train.encoders.resnet import SmallResNet
from ssl_train.errors import UserError
from ssl_train.heads import MLP, DINOHead
from ssl_train.losses import DINOLoss, InfoNCELoss, NegativeCosineSimilarity, NTXentLoss, SupConLoss, SwAVLoss
from ssl_train.methods import DINOMethod, NNCLRMethod, SiameseMethod, SwAVMethod, TargetNetworkMethod
from ssl_train.methods.common import encode_views
from ssl_train.methods.ema import cosine_momentum
from ssl_train.methods.queue import FeatureQueue
from tests.fixtures import CONFIG_DIR, compose_config, is_pair_loss


def _backbone() -> SmallResNet:
    return SmallResNet(in_channels=1, widths=(8, 16))


def _views(n: int = 8, sizes: tuple[int, ...] = (16, 16)) -> list[torch.Tensor]:
    return [torch.randn(n, 1, s, s) for s in sizes]


def test_feature_queue_is_fifo_and_tracks_fill() -> None:
    queue = FeatureQueue(5, 2)
    assert len(queue.get()) == 0
    queue.push(torch.ones(3, 2))
    queue.push(torch.full((3, 2), 2.0))
    assert len(queue.get()) == 5 and int(queue.pointer) == 1
    assert queue.features[0].tolist() == [2.0, 2.0] and queue.features[1].tolist() == [1.0, 1.0]
    assert "features" in queue.state_dict()  # saved in checkpoints


def test_mocov2_queue_receives_normalised_keys_and_supplies_negatives() -> None:
    backbone = _backbone()
    method = TargetNetworkMethod(backbone, MLP(16, 32, 8), InfoNCELoss(0.2), predictor=None, queue=partial(FeatureQueue, 32, random_init=True))
    before = method.queue.features.clone()
    out = method(_views())
    out["loss"].backward()
    changed = (method.queue.features != before).any(1)
    assert int(changed.sum()) == 16  # two global views x 8 keys
    torch.testing.assert_close(method.queue.features[changed].norm(dim=1), torch.ones(16))
    assert all(p.grad is None for p in method.target["backbone"].parameters())


def test_nnclr_uses_support_set_neighbours() -> None:
    method = NNCLRMethod(_backbone(), MLP(16, 32, 8), InfoNCELoss(0.1), predictor=lambda in_dim: MLP(in_dim, 16, in_dim), support_set_size=64)
    method(_views())["loss"].backward()
    assert int(method.support_set.filled) == 8
    z = torch.randn(3, 8)
    neighbours = method.nearest_neighbour(z)
    support = method.support_set.get()
    for row in neighbours:
        assert any(torch.allclose(row, s) for s in support)


def test_dino_teacher_gets_no_grad_moves_by_ema_and_sees_global_views_only() -> None:
    backbone = _backbone()
    method = DINOMethod(backbone, DINOHead(16, 32, 8, 20), DINOLoss(out_dim=20), momentum_base=0.9)
    seen = []
    method.teacher["backbone"].register_forward_hook(lambda m, i, o: seen.append(tuple(i[0].shape)))
    out = method(_views(sizes=(16, 16, 8, 8)))
    out["loss"].backward()
    assert seen == [(16, 1, 16, 16)]
    assert all(p.grad is None for p in method.teacher["backbone"].parameters())
    assert all(p.grad is not None for p in method.backbone.parameters())
    before = copy.deepcopy(method.teacher["projector"].state_dict())
    online = copy.deepcopy(method.projector.state_dict())
    method.on_optimizer_step(0, 100)
    key = "last_layer.weight"
    torch.testing.assert_close(method.teacher["projector"].state_dict()[key], 0.9 * before[key] + 0.1 * online[key])
    assert method.loss.center.abs().sum() > 0


def test_dino_rejects_mismatched_loss_dim() -> None:
    with pytest.raises(ValueError, match="out_dim"):
        DINOMethod(_backbone(), DINOHead(16, 32, 8, 20), DINOLoss(out_dim=10))
    with pytest.raises(ValueError, match="DINO needs head=dino"):
        DINOMethod(_backbone(), MLP(16, 32, 20), DINOLoss(out_dim=20))


def test_dino_last_layer_frozen_in_first_epoch_and_weight_normalised_like_the_official_head() -> None:
    """Official DINO: weight_norm(Linear) with g filled with 1 (frozen when norm_last_layer), and
    cancel_gradients_last_layer for epochs < freeze_last_layer."""
    head = DINOHead(16, 32, 8, 20, norm_last_layer=False)
    reference = torch.nn.utils.parametrizations.weight_norm(torch.nn.Linear(8, 20, bias=False))
    with torch.no_grad():
        reference.parametrizations.weight.original0.fill_(1)  # g = 1, as the official head sets it
        reference.parametrizations.weight.original1.copy_(head.last_layer.weight)
    x = torch.randn(4, 8)
    torch.testing.assert_close(torch.nn.functional.linear(x, head.last_layer_norm * torch.nn.functional.normalize(head.last_layer.weight, dim=1)), reference(x))
    assert head.last_layer_norm.requires_grad and not DINOHead(16, 32, 8, 20, norm_last_layer=True).last_layer_norm.requires_grad
    method = DINOMethod(_backbone(), head, DINOLoss(out_dim=20), freeze_last_layer_epochs=1)
    method(_views(sizes=(16, 16, 8)))["loss"].backward()
    method.on_after_backward(step=3, epoch=0)
    assert head.last_layer.weight.grad is None and head.last_layer_norm.grad is None
    assert all(p.grad is not None for p in head.mlp.parameters())
    method(_views(sizes=(16, 16, 8)))["loss"].backward()
    method.on_after_backward(step=40, epoch=1)
    assert head.last_layer.weight.grad is not None


def test_dino_head_mlp_starts_as_the_official_init() -> None:
    """dino/dinov2 DINOHead._init_weights: trunc_normal(std=0.02) weights and zero biases in the MLP (PyTorch's default
    init has uniform weights of std 1/sqrt(3 fan_in) and random biases)."""
    torch.manual_seed(0)
    head = DINOHead(256, 512, 128, 20)
    linears = [m for m in head.mlp if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 3
    for layer in linears:
        assert torch.count_nonzero(layer.bias) == 0
        assert abs(layer.weight.std().item() - 0.02) < 0.002


def test_swav_prototypes_normalised_and_frozen_early() -> None:
    method = SwAVMethod(_backbone(), MLP(16, 32, 8), SwAVLoss(), num_prototypes=12, freeze_prototypes_steps=5)
    out = method(_views(sizes=(16, 16, 8)))
    torch.testing.assert_close(method.prototypes.weight.norm(dim=1), torch.ones(12))
    out["loss"].backward()
    assert method.prototypes.weight.grad is not None
    method.on_after_backward(step=2, epoch=0)
    assert method.prototypes.weight.grad is None
    method(_views())["loss"].backward()
    method.on_after_backward(step=5, epoch=0)
    assert method.prototypes.weight.grad is not None


def test_supcon_method_passes_labels() -> None:
    method = SiameseMethod(_backbone(), MLP(16, 32, 8), SupConLoss(0.1))
    out = method(_views(), labels=torch.tensor([0, 1, 0, 1, 2, 2, 0, 1]))
    assert torch.isfinite(out["loss"])
    with pytest.raises(ValueError, match="needs class labels"):
        method(_views(), labels=None)


def _loss_target(option: str) -> str:
    """The `_target_` of a loss option, through its defaults (dcl extends ntxent)."""
    tree = yaml.safe_load((CONFIG_DIR / "loss" / f"{option}.yaml").read_text())
    return tree["_target_"] if "_target_" in tree else _loss_target(tree["defaults"][0])


PAIR_LOSS_OPTIONS = sorted(p.stem for p in (CONFIG_DIR / "loss").glob("*.yaml") if is_pair_loss(get_class(_loss_target(p.stem))))  # none listed


@pytest.mark.parametrize("loss", PAIR_LOSS_OPTIONS)
def test_pair_losses_train_the_siamese_method_from_config(loss: str, tmp_path: Path) -> None:
    """`method=simclr loss=<name>`: each pair objective composes into the siamese method and its gradient reaches the encoder."""
    torch.manual_seed(0)
    method = build(compose_config(["method=simclr", f"loss={loss}"], tmp_path)).method
    views = [torch.rand(8, 1, 28, 28) for _ in range(2)]
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    out = method(views, labels)
    assert torch.isfinite(out["loss"])
    out["loss"].backward()
    grads = [p.grad for p in method.backbone.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)


HEADS = sorted(p.stem for p in (CONFIG_DIR / "head").glob("*.yaml"))


@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("method", sorted(p.stem for p in (CONFIG_DIR / "method").glob("*.yaml")))
def test_every_method_with_every_head_steps_or_says_why(method: str, head: str, tmp_path: Path) -> None:
    """One optimizer step of `method=<m> head=<h>` on a tiny batch, or one clear line naming what does not fit."""
    try:
        data = {
            "cpc": ["data=seq_fashion_mnist"],
            "dgi": ["data=fmnist_knn_graph"],
            "grace": ["data=fmnist_knn_graph"],
            "simcse": ["data=wordnet_glosses"],
            "clip": ["data=fmnist_captions"],
        }.get(method, [])
        built = build(compose_config([f"method={method}", *data, f"head={head}", "data.batch_size=8"], tmp_path))
    except UserError as error:
        assert "\n" not in str(error) and "head" in str(error), str(error)
        return
    train = built.datamodule.splits.train
    if built.module.batched_views is not None:
        items = [train[i] for i in range(8)]
        collate = getattr(train, "collate", None)
        images = collate(items)[0] if collate else torch.stack([item[0] for item in items])
        views = built.module.batched_views(images)
    else:  # texts, image-caption pairs: the loader makes the views
        views = next(iter(built.datamodule.train_dataloader()))[0]
    labels = torch.arange(8) % 4
    out = built.method(views, labels)
    out["loss"].backward()
    assert torch.isfinite(out["loss"]) and any(p.grad is not None for p in built.method.backbone.parameters())


def test_shuffle_bn_needs_a_target_network() -> None:
    with pytest.raises(ValueError, match="shuffle_bn_splits"):
        TargetNetworkMethod(_backbone(), MLP(16, 32, 8), InfoNCELoss(0.2), use_target_network=False, shuffle_bn_splits=2)


def test_reference_recipes_in_the_method_configs(tmp_path: Path) -> None:
    mocov2 = build(compose_config(["method=mocov2"], tmp_path / "v2")).method
    assert mocov2.shuffle_bn_splits == 4 and not any(isinstance(m, torch.nn.BatchNorm1d) for m in mocov2.projector.modules())
    mocov3 = build(compose_config(["method=mocov3"], tmp_path / "v3")).method
    linears = [m for m in mocov3.projector.modules() if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 2 and isinstance(list(mocov3.projector.modules())[-1], torch.nn.BatchNorm1d)  # 2 layers, last BN
    assert not isinstance(list(mocov3.predictor.modules())[-1], torch.nn.BatchNorm1d)  # the ResNet predictor: no last BN
    assert mocov3.loss.factor == pytest.approx(2 * 0.2)
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        assert compose("train", overrides=["trainer=ddp"]).trainer.sync_batchnorm is True
        assert compose("train", overrides=["trainer=ddp_cpu"]).trainer.sync_batchnorm is False


def test_swav_queue_joins_sinkhorn_once_full_after_its_start_step_and_lives_in_the_state_dict() -> None:
    torch.manual_seed(0)
    method = SwAVMethod(_backbone(), MLP(16, 32, 8), SwAVLoss(), num_prototypes=12, queue_size=16, queue_start_steps=3)
    views = _views(n=8, sizes=(16, 16, 8))
    assert method(views)["logs"]["queue_in_use"] == 0.0 and int(method.queues[0].filled) == 0  # before step 3: not even filled
    method.on_optimizer_step(3, 100)
    for _ in range(2):  # 2 batches of 8 fill the 16-slot queues; only then are they used
        assert method(views)["logs"]["queue_in_use"] == 0.0
    stored = [q.get().clone() for q in method.queues]
    method.eval()  # same BatchNorm statistics for the reference computation below
    method.train(False)
    features = [method.backbone(v) for v in views]
    embeddings = [torch.nn.functional.normalize(method.projector(h), dim=1) for h in features]
    scores = [e @ method.prototypes.weight.T for e in embeddings]
    expected = SwAVLoss()(scores, num_global=2, queue_scores=[s @ method.prototypes.weight.T for s in stored])
    method.training = True  # forward in "training" for the queue path, modules (BN) stay in eval mode
    out = method(views)
    assert out["logs"]["queue_in_use"] == 1.0
    torch.testing.assert_close(out["loss"], expected)
    state = method.state_dict()
    assert "queues.0.features" in state and "step" in state and int(state["step"]) == 3


# --- SimCLR and BYOL: gradients, the target's EMA rule, encode_views -----------------------------------------------


def _byol(**kwargs) -> TargetNetworkMethod:
    backbone = SmallResNet(in_channels=1, widths=(8, 16))
    predictor = lambda in_dim: MLP(in_dim, 32, in_dim)
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
    from tests.fixtures import compose_config

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
    old_keys = {k.replace("target.backbone.", "target_backbone.").replace("target.projector.", "target_projector."): v for k, v in method.state_dict().items()}
    fresh = _byol(momentum_base=0.9)
    fresh.load_state_dict(old_keys)  # keys written before EMATarget: target_backbone.* / target_projector.*
    for key, value in method.state_dict().items():
        torch.testing.assert_close(fresh.state_dict()[key], value)
    moco = current_method_settings({"_target_": "ssl_train.methods.TargetNetworkMethod", "queue_size": 4096})
    assert moco["queue"] == {"_target_": "ssl_train.methods.queue.FeatureQueue", "_partial_": True, "size": 4096, "random_init": True}
    assert current_method_settings({"_target_": "ssl_train.methods.TargetNetworkMethod", "queue_size": 0})["queue"] is None
    dino = {
        "_target_": "ssl_train.methods.DINOMethod",
        "ibot_weight": 0.0,
        "ibot_teacher_temp": 0.07,
        "ibot_mask_ratio": [0.1, 0.5],
        "ibot_masked_share": 0.5,
        "koleo_weight": 0.0,
    }
    assert with_current_targets({"method": dino})["method"] == {"_target_": "ssl_train.methods.DINOMethod", "koleo_weight": 0.0}
    ibot = current_method_settings({**dino, "ibot_weight": 1.0})
    assert ibot["_target_"] == "ssl_train.methods.ibot.IBOTMethod" and ibot["patch_weight"] == 1.0 and ibot["mask_ratio_range"] == [0.1, 0.5]
    mae = with_current_targets({"method": {"_target_": "ssl_train.methods.MAEMethod"}})
    assert mae["method"]["_target_"] == "ssl_train.methods.mae.MAEMethod"
