"""The target-network family: an online network (with or without predictor) regresses or contrasts a stop-gradient
target network, an EMA of itself or itself (BYOL, SimSiam, MoCo v2, MoCo v3)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Annotated

import torch
from torch import nn

from ssl_train.constraints import POSITIVE_INT, Count, Fraction, PositiveInt, Settings
from ssl_train.methods.common import encode_views, pairs_over_views
from ssl_train.methods.ema import EMATarget, renamed_keys
from ssl_train.methods.queue import FeatureQueue


def in_groups(encoder: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, groups: Sequence[torch.Tensor] | None) -> torch.Tensor:
    """`encoder` applied to each group of rows of x on its own (its own BatchNorm statistics), rows put back in x's order."""
    if not groups:
        return encoder(x)
    order = torch.cat(list(groups))
    encoded = torch.cat([encoder(x[g]) for g in groups])
    return encoded[torch.argsort(order)]


class TargetNetworkMethod(nn.Module):
    """Online network predicts the target network's projection of another view; the target gets no gradients.

    BYOL (Grill et al., NeurIPS 2020): the target is an EMA of the online backbone + projector, with momentum
    following a cosine schedule from `momentum_base` to `momentum_final` over training. With
    `use_target_network=False` the target is the online network itself under stop-gradient (SimSiam,
    Chen & He 2021). Without a predictor and with a `queue` (a FeatureQueue factory, `_partial_` in the config) and
    InfoNCE this is MoCo v2 (He et al. 2020; Chen et al. 2020): the queue of past target projections supplies the
    negatives, and `shuffle_bn_splits` gives the key encoder shuffled BN (each view then on its own). With a predictor,
    InfoNCE and in-batch negatives it is MoCo v3 (Chen, Xie & He, ICCV 2021). The loss is symmetrised over
    view pairs: loss(prediction of view j, target of global view i) for all j != i. `per_view_bn`: online and target
    networks encode each view on its own (its own BatchNorm statistics, the references' separate forwards).
    """

    def __init__(
        self,
        backbone: nn.Module,
        projector: nn.Module,
        loss: nn.Module,
        predictor: Annotated[Callable[..., nn.Module] | None, Settings({"out_dim": POSITIVE_INT})] = None,
        momentum_base: Fraction = 0.99,
        momentum_final: Fraction = 1.0,
        use_target_network: bool = True,
        num_global_views: PositiveInt = 2,
        queue: Callable[..., FeatureQueue] | None = None,
        shuffle_bn_splits: Count = 0,
        per_view_bn: bool = False,
        name: str = "distill",
    ) -> None:
        super().__init__()
        if shuffle_bn_splits < 0 or (shuffle_bn_splits and not use_target_network):
            raise ValueError(f"method.shuffle_bn_splits must be >= 0 and needs a target network, got {shuffle_bn_splits}")
        self.shuffle_bn_splits, self.per_view_bn = shuffle_bn_splits, per_view_bn
        self.backbone, self.projector, self.loss = backbone, projector, loss
        self.predictor = predictor(in_dim=projector.out_dim) if predictor is not None else nn.Identity()
        self.queue = queue(dim=projector.out_dim) if queue is not None else None
        self.num_global_views, self.name = num_global_views, name
        self.target = EMATarget(momentum_base, momentum_final, backbone=backbone, projector=projector) if use_target_network else None
        self._register_load_state_dict_pre_hook(
            renamed_keys({"target_backbone.": "target.backbone.", "target_projector.": "target.projector."}), with_module=True
        )

    def _target(self, x: torch.Tensor) -> torch.Tensor:
        """Target projections of one view, encoded in the key groups of `shuffle_bn_groups` when training with splits."""
        encode = lambda images: self.target["projector"](self.target["backbone"](images))  # type: ignore[index]
        groups = self.shuffle_bn_groups(len(x), x.device)
        return in_groups(encode, x, groups[1]) if groups else encode(x)

    def shuffle_bn_groups(self, n: int, device: torch.device) -> tuple[list[torch.Tensor], list[torch.Tensor]] | None:
        """MoCo's shuffled BN on one device (None when off, in eval, or under 2 images a group): the query groups are
        `shuffle_bn_splits` consecutive runs of the batch (one GPU's batch each in the reference); each run is shuffled
        and dealt round-robin into as many key groups, so a key group holds about one image of every query group and
        never the whole group its own query was normalised with (the reference's key shuffle across GPUs)."""
        splits = self.shuffle_bn_splits
        if not splits or not self.training or n < 2 * splits:
            return None
        queries = list(torch.arange(n, device=device).tensor_split(splits))
        dealt = torch.cat([run[torch.randperm(len(run), device=device)] for run in queries])
        return queries, [dealt[j::splits] for j in range(splits)]

    def forward(self, views: Sequence[torch.Tensor], labels: torch.Tensor | None = None) -> dict:
        if len(views) < 2:
            raise ValueError(f"{self.name} needs at least 2 views per image, got {len(views)}")
        num_global = min(self.num_global_views, len(views))
        groups = self.shuffle_bn_groups(len(views[0]), views[0].device) if isinstance(views[0], torch.Tensor) else None
        if groups:  # split BN: each view on its own, queries in their groups, keys in theirs (as moco's two forwards)
            features = [in_groups(self.backbone, v, groups[0]) for v in views]
        else:
            features = encode_views(self.backbone, views, self.per_view_bn)
        projections = [self.projector(h) for h in features]
        predictions = [self.predictor(z) for z in projections]
        if self.target is None:  # SimSiam: the online projections themselves, detached (one forward, BN updated once)
            targets = [z.detach() for z in projections[:num_global]]
        else:
            with torch.no_grad():
                targets = [self._target(v) for v in views[:num_global]] if groups else encode_views(self._target, views[:num_global], self.per_view_bn)
        pairs = [(j, i) for i, j in pairs_over_views(num_global, len(views), symmetric=True)]  # (prediction, target)
        extra = {"negative_keys": self.queue.get()} if self.queue is not None else {}
        total = sum(self.loss(predictions[p], targets[t].detach(), **extra) for p, t in pairs)
        if self.queue is not None and self.training:
            for target in targets:
                self.queue.push(nn.functional.normalize(target.float(), dim=1))
        return {"loss": total / len(pairs), "features": features[0].detach(), "logs": {"momentum": self.momentum}}

    @property
    def momentum(self) -> float:
        """The target's EMA momentum now (0 without a target network)."""
        return self.target.momentum if self.target is not None else 0.0

    @torch.no_grad()
    def on_optimizer_step(self, step: int, max_steps: int) -> None:
        """After optimizer step `step`: move the target towards the online network (EMA; momentum is a pure function of the step)."""
        if self.target is not None:
            self.target.follow(step, max_steps, backbone=self.backbone, projector=self.projector)
