"""Graph nodes: a sample is a node index, a batch the whole graph and its nodes; the raw-input baseline probes node features."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ssl_train.data.datasets import InputSpec, Splits
from ssl_train.modalities.base import Modality


def node_itself(node: Any) -> Any:
    """The evaluation transform of a node: none (the encoder reads the graph); a function, so loader workers can pickle it."""
    return node


class GraphModality(Modality):
    """Nodes of one graph (transductive); batches are NodeBatch(graph, nodes)."""

    name, holds, raw_input_name = "graph", "graphs", "raw node features"
    views_pair_samples, spec_fields = False, ("nodes", "features")

    def in_channels(self, spec: InputSpec) -> int:
        return int(spec.features)  # type: ignore[arg-type]

    def size(self, spec: InputSpec) -> int:
        return int(spec.nodes)  # type: ignore[arg-type]

    def eval_transform(self, splits: Splits) -> Callable[[Any], Any]:
        return node_itself

    def raw_features(self, batch: Any, max_dim: int) -> torch.Tensor:
        return batch.raw_features().float()


GRAPH = GraphModality()
