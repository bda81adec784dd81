"""The infomax family: maximise mutual information between parts of an input and its whole (Deep InfoMax)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import torch
from torch import nn

from ssl_train.losses.dgi import DeepGraphInfomaxLoss
from ssl_train.methods.legacy import local_network_before_its_norm
from ssl_train.protocols import FeatureMapEncoder, GraphEncoder, width_of


class LocalMutualInformationNet(nn.Module):
    """DIM's local MI network (the reference's MI1x1ConvNet, rdevon/DIM mi_networks.py), per location of (N, C, L) maps:
    LayerNorm over channels of [Conv1x1-BN-ReLU-Conv1x1 (x) + shortcut (x)], the bias-free shortcut starting as a noisy
    identity (weight U(-0.01, 0.01), 1 on the diagonal) when out_dim >= in_dim, so each location's code starts as its features."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.in_dim, self.out_dim = in_dim, out_dim
        self.block = nn.Sequential(nn.Conv1d(in_dim, out_dim, 1, bias=False), nn.BatchNorm1d(out_dim), nn.ReLU(inplace=True), nn.Conv1d(out_dim, out_dim, 1))
        self.shortcut = nn.Conv1d(in_dim, out_dim, 1, bias=False)
        self.norm = nn.LayerNorm(out_dim)
        self._register_load_state_dict_pre_hook(local_network_before_its_norm, with_module=True)
        if out_dim >= in_dim:
            with torch.no_grad():
                self.shortcut.weight.uniform_(-0.01, 0.01)
                self.shortcut.weight[torch.arange(in_dim), torch.arange(in_dim), 0] = 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm((self.block(x) + self.shortcut(x)).transpose(1, 2)).transpose(1, 2)


class DeepInfoMaxMethod(nn.Module):
    """Deep InfoMax, local objective (Hjelm et al., ICLR 2019): the global vector y = E(x) (the backbone's pooled output,
    what the probe reads) must be recognisable from every location of an intermediate feature map of the same image,
    against the locations of the other images in the batch (DeepInfoMaxLoss).

    The backbone exposes its stages (`stages(x)` -> feature maps, `pool(last)` -> y); `local_stage` picks the map (-2:
    the one before the last, 7 x 7 for 28 px inputs in the small ResNet). `projector` encodes y for the score
    (the reference's global MI network); the local MI network (LocalMutualInformationNet) is built here from the chosen
    map's width. The prior
    matching term (adversarial, gamma = 0.1 in the paper) is not included: it shapes the marginal of y, and the
    paper's classification results come from the local term.
    """

    modalities = ("image",)

    def __init__(self, backbone: nn.Module, projector: nn.Module, loss: nn.Module, local_stage: int = -2, name: str = "dim") -> None:
        super().__init__()
        if not isinstance(backbone, FeatureMapEncoder):
            raise ValueError(f"method={name} needs a backbone that exposes its feature maps (stages/pool), got {type(backbone).__name__}")
        widths = list(cast(Sequence[int], backbone.stage_widths))  # declared by FeatureMapEncoder's docstring, not its members
        if not -len(widths) <= local_stage < len(widths):
            raise ValueError(f"method.local_stage={local_stage} is not a stage of the backbone ({len(widths)} stages)")
        self.backbone, self.projector, self.loss, self.local_stage, self.name = backbone, projector, loss, local_stage, name
        self.local_net = LocalMutualInformationNet(widths[local_stage], width_of(projector))

    def forward(self, views: Sequence[torch.Tensor], labels: torch.Tensor | None = None) -> dict:
        maps = self.backbone.stages(views[0])
        y = self.backbone.pool(maps[-1])
        local = self.local_net(maps[self.local_stage].flatten(2))  # (N, D, H x W)
        loss = self.loss(local, self.projector(y))
        return {"loss": loss, "features": y.detach(), "logs": {}}


class DeepGraphInfomaxMethod(nn.Module):
    """Deep Graph Infomax (Velickovic et al., ICLR 2019): node embeddings of the real graph must be told apart from those
    of a corrupted graph (node features shuffled across nodes, same edges) by a bilinear discriminator against the
    summary s = sigmoid(mean of the real embeddings) (DeepGraphInfomaxLoss).

    One view per batch (a NodeBatch: the graph and the batch's nodes); the GCN runs on the whole graph, the summary
    averages every node, the loss covers the batch's nodes (all of them when data.batch_size is the node count, as in
    the paper). `projector` is the identity (DGI has no head).
    """

    modalities = ("graph",)

    def __init__(self, backbone: nn.Module, projector: nn.Module, loss: nn.Module, name: str = "dgi") -> None:
        super().__init__()
        if not isinstance(backbone, GraphEncoder):
            raise ValueError(f"method={name} needs a graph encoder with embed(x, edge_index) (backbone=gcn), got {type(backbone).__name__}")
        dim = loss.weight.shape[0] if isinstance(loss, DeepGraphInfomaxLoss) else projector.out_dim
        if projector.out_dim != dim:
            raise ValueError(f"method={name}: the head gives {projector.out_dim}-d embeddings but loss.dim is {dim}; DGI uses head=identity")
        self.backbone, self.projector, self.loss, self.name = backbone, projector, loss, name

    def forward(self, views: Sequence, labels: torch.Tensor | None = None) -> dict:
        batch = views[0]
        graph = batch.graph
        z = self.backbone.embed(graph.x, graph.edge_index)
        corrupted = self.backbone.embed(graph.x[torch.randperm(len(graph.x), device=graph.x.device)], graph.edge_index)
        summary = torch.sigmoid(z.mean(dim=0))
        loss = self.loss(self.projector(z[batch.nodes]), self.projector(corrupted[batch.nodes]), summary)
        return {"loss": loss, "features": z[batch.nodes].detach(), "logs": {}}
