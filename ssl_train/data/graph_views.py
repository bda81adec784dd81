"""Views of a graph for node-level contrastive learning (GRACE, Zhu et al. 2020; GraphCL, You et al. 2020), made on
the device once per batch with torch_geometric's utilities: drop edges, drop nodes, mask feature columns."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated

from torch import nn

from ssl_train.constraints import FieldsOf, Fraction, PositiveInt
from ssl_train.data.graphs import NodeBatch
from ssl_train.data.recipes import ViewList, recipes_per_view


@dataclass(frozen=True)
class GraphViewRecipe:
    """The knobs of one graph view (GRACE's Cora settings are drop_edge 0.2 / 0.4, mask_feature 0.3 / 0.4)."""

    drop_edge: Fraction = 0.2  # probability of removing each (undirected) edge
    drop_node: Fraction = 0.0  # probability of removing a node's edges (GraphCL's node dropping; the node stays)
    mask_feature: Fraction = 0.3  # probability of zeroing each feature column, for every node at once


class BatchedGraphView(nn.Module):
    """One perturbed copy of the batch's graph; the batch's nodes stay the same."""

    def __init__(self, recipe: GraphViewRecipe) -> None:
        super().__init__()
        self.recipe = recipe

    def forward(self, batch: NodeBatch) -> NodeBatch:
        from torch_geometric.utils import dropout_edge, dropout_node, mask_feature

        r, graph = self.recipe, batch.graph
        edge_index, x = graph.edge_index, graph.x
        if r.drop_edge > 0:
            edge_index, _ = dropout_edge(edge_index, p=r.drop_edge, force_undirected=True)
        if r.drop_node > 0:
            edge_index, _, _ = dropout_node(edge_index, p=r.drop_node, num_nodes=graph.num_nodes)
        if r.mask_feature > 0:
            x, _ = mask_feature(x, p=r.mask_feature, mode="col")
        return NodeBatch(graph.__class__(x=x, edge_index=edge_index), batch.nodes)


class GraphViews:
    """The view pipeline for graph data (`augment=graph`, `augment=graph_identity`): `num_global` perturbed copies of
    the graph per batch, `recipe` for all, `per_view` overrides per view. `size`, `mean`, `std` are accepted for the
    common view-pipeline signature and unused."""

    modalities = ("graph",)
    on_device = True

    def __init__(
        self,
        size: PositiveInt,
        mean: Sequence[float],
        std: Sequence[float],
        num_global: PositiveInt = 2,
        recipe: Annotated[Mapping | None, FieldsOf(GraphViewRecipe)] = None,
        per_view: Sequence[Mapping] | None = None,
        fixed_size: bool = True,
    ) -> None:
        _, self.recipes = recipes_per_view(GraphViewRecipe(), recipe, per_view, num_global, pair_fields=())
        self.num_global = num_global

    def batched(self) -> nn.Module:
        return ViewList(BatchedGraphView(r) for r in self.recipes)
