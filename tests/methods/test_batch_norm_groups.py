"""Which images share a BatchNorm batch: MoCo v2's shuffled BN keeps each key apart from its own query's statistics."""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

from ssl_train.heads import MLP
from ssl_train.losses import InfoNCELoss
from ssl_train.methods import TargetNetworkMethod
from ssl_train.methods.queue import FeatureQueue


def _bn_first_backbone() -> nn.Module:
    """BatchNorm straight on the pixels, so a hook on its input reads which image (and view) each row is."""
    return nn.Sequential(nn.Flatten(), nn.BatchNorm1d(4), nn.Linear(4, 16))


def _tagged_views(n: int) -> list[torch.Tensor]:
    """View v of image i is the constant i + v / 4: its BN input row names both."""
    return [(torch.arange(n, dtype=torch.float32)[:, None] + v / 4).expand(n, 4).reshape(n, 1, 2, 2).clone() for v in (0, 1)]


def _record(module: nn.Module, calls: list[list[tuple[int, int]]]) -> None:
    bn = next(m for m in module.modules() if isinstance(m, nn.BatchNorm1d))
    bn.register_forward_pre_hook(lambda m, args: calls.append([(int(r), round(float(r % 1) * 4)) for r in args[0][:, 0]]))


def test_mocov2_split_bn_never_normalises_a_key_with_its_own_querys_statistics() -> None:
    torch.manual_seed(0)
    method = TargetNetworkMethod(
        _bn_first_backbone(), MLP(16, 32, 8, batch_norm=False), InfoNCELoss(0.2), queue=partial(FeatureQueue, 32, random_init=True), shuffle_bn_splits=4
    )
    online: list[list[tuple[int, int]]] = []
    keys: list[list[tuple[int, int]]] = []
    _record(method.backbone, online)
    _record(method.target["backbone"], keys)
    for _ in range(5):  # several random key shuffles
        online.clear(), keys.clear()
        method(_tagged_views(16))["loss"].backward()
        for calls in (online, keys):
            assert all(len({view for _, view in call}) == 1 for call in calls)  # a BN batch never mixes the two views
            assert sorted(x for call in calls for x in call) == [(i, v) for i in range(16) for v in (0, 1)]  # each once
            assert [len(call) for call in calls] == [4] * 8  # 4 groups per view
        query_group = {x: {i for i, _ in call} for call in online for x in call}
        key_group = {x: {i for i, _ in call} for call in keys for x in call}
        for i in range(16):  # query of view q is paired with the key of the other view
            for q in (0, 1):
                assert query_group[(i, q)] != key_group[(i, 1 - q)]
                assert len(query_group[(i, q)] & key_group[(i, 1 - q)]) == 1  # the image itself only: one from each run


def test_mocov2_split_bn_returns_keys_in_the_batch_order() -> None:
    method = TargetNetworkMethod(_bn_first_backbone(), MLP(16, 32, 8, batch_norm=False), InfoNCELoss(0.2), shuffle_bn_splits=4)
    x = torch.randn(16, 1, 2, 2)
    encode = lambda images: method.target["projector"](method.target["backbone"](images))
    torch.manual_seed(1)
    keys = method._target(x)
    torch.manual_seed(1)  # the same draw again: the groups _target used
    queries, key_groups = method.shuffle_bn_groups(16, x.device)
    assert [g.tolist() for g in queries] == [list(range(s, s + 4)) for s in (0, 4, 8, 12)]  # consecutive runs
    expected = torch.empty_like(keys)
    for g in key_groups:  # each group on its own (its own batch statistics), then row by row back in place
        expected[g] = encode(x[g])
    torch.testing.assert_close(keys, expected)
    method.eval()  # running statistics: no batch dependence, no groups
    assert method.shuffle_bn_groups(16, x.device) is None
    torch.testing.assert_close(method._target(x), encode(x))


def _per_view_methods(per_view_bn: bool) -> dict[str, nn.Module]:
    from ssl_train.encoders.resnet import SmallResNet
    from ssl_train.losses import BarlowTwinsLoss, NegativeCosineSimilarity
    from ssl_train.methods import NNCLRMethod, SiameseMethod

    backbone = lambda: SmallResNet(in_channels=1, widths=(8, 16))  # BatchNorm in every block
    predictor = partial(MLP, hidden_dim=16, out_dim=8)
    return {
        "byol": TargetNetworkMethod(backbone(), MLP(16, 32, 8), NegativeCosineSimilarity(), predictor=predictor, per_view_bn=per_view_bn),
        "barlow_twins": SiameseMethod(backbone(), MLP(16, 32, 8), BarlowTwinsLoss(), per_view_bn=per_view_bn),
        "nnclr": NNCLRMethod(backbone(), MLP(16, 32, 8), InfoNCELoss(0.1), predictor=predictor, per_view_bn=per_view_bn),
    }


def _first_view_outputs(method: nn.Module, views: list[torch.Tensor]) -> list[torch.Tensor]:
    """What the projector (and a target network's projector) makes of the first view."""
    seen: list[torch.Tensor] = []
    projectors = [method.projector] + ([method.target["projector"]] if getattr(method, "target", None) is not None else [])
    handles = [p.register_forward_hook(lambda m, args, out: seen.append(out.detach().clone())) for p in projectors]
    method(views)
    for handle in handles:
        handle.remove()
    return [seen[i] for i in range(0, len(seen), 2)]  # per projector: view 0 first, then view 1


def test_per_view_bn_normalises_each_view_with_its_own_statistics() -> None:
    torch.manual_seed(0)
    first, second, other_second = torch.randn(8, 1, 16, 16), torch.randn(8, 1, 16, 16), 3 * torch.randn(8, 1, 16, 16) + 2
    for per_view_bn in (True, False):
        for name, method in _per_view_methods(per_view_bn).items():
            with torch.no_grad():
                a, b = _first_view_outputs(method, [first, second]), _first_view_outputs(method, [first, other_second])
            same = all(torch.allclose(x, y, atol=1e-6) for x, y in zip(a, b, strict=True))
            assert same == per_view_bn, name  # shared BN: replacing view 2 moves view 1's statistics, hence its output
            assert len(a) == (2 if name == "byol" else 1)  # BYOL's target network too
