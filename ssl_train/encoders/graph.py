"""Graph encoders (torch_geometric): node embeddings of a whole graph, read out for a batch's nodes."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ssl_train.constraints import PositiveInt


class GCNEncoder(nn.Module):
    """Graph convolutional network (Kipf & Welling 2017) with PReLU: DGI's transductive encoder (one 512-unit layer on
    Cora). forward(NodeBatch) -> (batch nodes, out_dim): the GCN runs on the batch's graph and its nodes are read out;
    in eval mode the embeddings of an unchanged graph are computed once and reused (feature extraction batches)."""

    modalities = ("graph",)

    def __init__(self, in_channels: PositiveInt, hidden_dim: PositiveInt = 512, num_layers: PositiveInt = 1) -> None:
        super().__init__()
        from ssl_train.data.graphs import require_torch_geometric

        require_torch_geometric()
        from torch_geometric.nn import GCNConv

        if num_layers < 1:
            raise ValueError(f"backbone.num_layers must be >= 1, got {num_layers}")
        dims = [in_channels] + [hidden_dim] * num_layers
        self.convs = nn.ModuleList(GCNConv(a, b, cached=False) for a, b in zip(dims[:-1], dims[1:], strict=True))
        self.activations = nn.ModuleList(nn.PReLU(hidden_dim) for _ in range(num_layers))
        self.out_dim = hidden_dim
        self._eval_cache: tuple[int, torch.Tensor] | None = None

    def embed(self, x: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
        """Embeddings of every node, (num_nodes, out_dim)."""
        for conv, activation in zip(self.convs, self.activations, strict=True):
            x = activation(conv(x, edge_index))
        return x

    def train(self, mode: bool = True) -> GCNEncoder:
        self._eval_cache = None  # weights may change from here on
        return super().train(mode)

    def forward(self, batch: Any) -> torch.Tensor:
        graph = batch.graph
        if self.training or torch.is_grad_enabled():
            return self.embed(graph.x, graph.edge_index)[batch.nodes]
        if self._eval_cache is None or self._eval_cache[0] != id(graph):
            self._eval_cache = (id(graph), self.embed(graph.x, graph.edge_index))
        return self._eval_cache[1][batch.nodes]
