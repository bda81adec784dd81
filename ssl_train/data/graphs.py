"""Graph sources for node-level self-supervision: a kNN graph over the embedded Fashion-MNIST images (zero install) and
WordNet's noun hypernym graph (Debian's wordnet-base). A sample is a node; a batch is a NodeBatch (the whole graph plus
the batch's node indices), so samplers, DDP, the online probe and the offline probes treat nodes like images.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ssl_train.constraints import Limit, OpenFraction, PositiveInt
from ssl_train.data.array_files import check_finite, check_labels, read_npz
from ssl_train.data.datasets import EMBEDDED_FILE, InputSpec, Splits
from ssl_train.errors import DataNotFoundError, UserError

WORDNET_ROOT = "/usr/share/wordnet"
WORDNET_NOUN_FILES = 26  # noun.Tops (03) .. noun.time (28): the lexicographer files that label noun synsets


@dataclass
class NodeBatch:
    """The graph (a torch_geometric Data: x, edge_index) and the indices of the nodes this batch is about."""

    graph: Any
    nodes: torch.Tensor

    def to(self, device: torch.device | str, **kwargs: Any) -> NodeBatch:
        return NodeBatch(self.graph.to(device), self.nodes.to(device))

    def __len__(self) -> int:
        return len(self.nodes)

    def raw_features(self) -> torch.Tensor:
        """The batch nodes' own input features: what the raw-input baseline probes."""
        return self.graph.x[self.nodes]


class NodeDataset(Dataset):
    """The nodes `nodes` of `graph` with their labels (-1: unlabelled here, e.g. test nodes during pretraining);
    items are (node index, label) and `collate` turns a list of them into (NodeBatch, labels)."""

    def __init__(self, graph: Any, nodes: torch.Tensor, labels: torch.Tensor) -> None:
        if len(nodes) != len(labels):
            raise ValueError(f"NodeDataset: {len(nodes)} nodes but {len(labels)} labels")
        self.graph, self.nodes, self.labels = graph, nodes.long(), labels.long()

    def __len__(self) -> int:
        return len(self.nodes)

    def __getitem__(self, index: int) -> tuple[int, int]:
        return int(self.nodes[index]), int(self.labels[index])

    def collate(self, items: list[tuple[int, int]]) -> tuple[NodeBatch, torch.Tensor]:
        nodes, labels = zip(*items, strict=True)
        return NodeBatch(self.graph, torch.tensor(nodes)), torch.tensor(labels)


def require_torch_geometric() -> None:
    """One line naming the extra when torch_geometric is not installed (graph data and encoders need it)."""
    try:
        import torch_geometric  # noqa: F401
    except ImportError:
        raise UserError("graph data and encoders need torch_geometric: pip install -e '.[graph]' (it works without torch-scatter)") from None


def random_train_mask(num_nodes: int, train_fraction: float) -> torch.Tensor:
    """A fixed-seed `train_fraction` of the nodes, for graphs that come without a split."""
    return torch.rand(num_nodes, generator=torch.Generator().manual_seed(0)) < train_fraction


def graph_splits(
    x: torch.Tensor,
    edge_index: torch.Tensor,
    labels: torch.Tensor,
    train_mask: torch.Tensor,
    where: str,
    train_limit: int | None = None,
    test_limit: int | None = None,
) -> Splits:
    """Splits of one graph: the probe fits on the train nodes and is scored on the others; pretraining sees every node
    (transductive, as in DGI), with the test nodes' labels hidden (-1) from the online probe. `train_limit` /
    `test_limit` keep that many (fixed-seed) probe nodes; the graph keeps all of them."""
    require_torch_geometric()
    from torch_geometric.data import Data
    from torch_geometric.utils import to_undirected

    if len(labels) != len(x) or len(train_mask) != len(x):
        raise UserError(f"{where}: {len(x)} nodes but {len(labels)} labels and {len(train_mask)} split flags; every node needs a label")
    if edge_index.numel() and (int(edge_index.min()) < 0 or int(edge_index.max()) >= len(x)):
        raise UserError(f"{where}: an edge names a node outside 0..{len(x) - 1}")
    graph = Data(x=x.float(), edge_index=to_undirected(edge_index.long(), num_nodes=len(x)))
    # probe nodes in a fixed-seed random order, as the image sources shuffle theirs: the first N of them (the online kNN's
    # train sample, train_limit) are then a fair sample, not the first synsets of a file sorted by topic
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    train_nodes, test_nodes = order[train_mask[order]][:train_limit], order[~train_mask[order]][:test_limit]
    if len(train_nodes) == 0 or len(test_nodes) == 0:
        raise UserError(f"{where}: the node split leaves {len(train_nodes)} train and {len(test_nodes)} test nodes; both need some")
    all_nodes = torch.arange(len(x))
    pretrain = NodeDataset(graph, all_nodes, torch.where(train_mask, labels, torch.full_like(labels, -1)))
    return Splits(
        NodeDataset(graph, train_nodes, labels[train_nodes]),
        NodeDataset(graph, test_nodes, labels[test_nodes]),
        int(labels.max()) + 1,
        mean=(0.0,),
        std=(1.0,),
        input_spec=InputSpec(nodes=len(x), features=x.shape[1]),
        pretrain=pretrain,
        modality="graph",
    )


def knn_edges(features: torch.Tensor, k: int, chunk: int = 2048) -> torch.Tensor:
    """Directed edges from every row to its k most cosine-similar other rows, (2, N * k)."""
    unit = torch.nn.functional.normalize(features.float(), dim=1)
    targets = []
    for start in range(0, len(unit), chunk):
        similarity = unit[start : start + chunk] @ unit.T
        similarity[torch.arange(len(similarity)), torch.arange(start, start + len(similarity))] = -2  # no self-loops
        targets.append(similarity.topk(k, dim=1).indices)
    target = torch.cat(targets)
    return torch.stack([torch.arange(len(unit)).repeat_interleave(k), target.flatten()])


class FashionMNISTKNNGraph:
    """The embedded 10k + 2k Fashion-MNIST images as one graph: a node per image (features: its 784 pixels in [0, 1]),
    edges to its k nearest neighbours in pixel space (cosine), made symmetric. Train nodes are the train images, test
    nodes the test images. Nothing to install."""

    modalities = ("graph",)

    def __init__(self, k: PositiveInt = 10, train_limit: Limit = None, test_limit: Limit = None) -> None:
        if k < 1:
            raise UserError(f"data.source.k must be >= 1, got {k}")
        self.k, self.train_limit, self.test_limit = k, train_limit, test_limit

    def load(self) -> Splits:
        if not EMBEDDED_FILE.is_file():
            raise DataNotFoundError(f"the embedded dataset {EMBEDDED_FILE} is missing: reinstall ssl_train")
        with np.load(EMBEDDED_FILE) as arrays:
            train_x, train_y = arrays["train_images"][: self.train_limit], arrays["train_labels"][: self.train_limit]
            test_x, test_y = arrays["test_images"][: self.test_limit], arrays["test_labels"][: self.test_limit]
        x = torch.from_numpy(np.concatenate([train_x, test_x]).reshape(len(train_x) + len(test_x), -1)).float() / 255
        labels = torch.from_numpy(np.concatenate([train_y, test_y]).astype(np.int64))
        train_mask = torch.arange(len(x)) < len(train_x)
        return graph_splits(x, knn_edges(x, min(self.k, len(x) - 1)), labels, train_mask, "data=fmnist_knn_graph")


def hashed_bag_of_words(texts: list[str], dim: int) -> torch.Tensor:
    """Each text as an L2-normalised count vector of its lower-cased words hashed into `dim` buckets (no vocabulary)."""
    rows, cols = [], []
    for row, text in enumerate(texts):
        for word in re.findall(r"[a-z]+", text.lower()):
            rows.append(row)
            cols.append(int.from_bytes(hashlib.blake2b(word.encode(), digest_size=4).digest(), "little") % dim)
    counts = torch.zeros(len(texts), dim)
    counts.index_put_((torch.tensor(rows, dtype=torch.long), torch.tensor(cols, dtype=torch.long)), torch.ones(len(rows)), accumulate=True)
    return torch.nn.functional.normalize(counts, dim=1)


def parse_wordnet_nouns(path: Path) -> tuple[list[int], list[int], list[str], list[tuple[int, int]]]:
    """(offsets, lexicographer-file numbers, glosses, hypernym edges as offset pairs) of WordNet's data.noun; a line
    that is not a synset line is one UserError naming the file and the line (a graph missing nodes would be silently wrong)."""
    offsets, lexfiles, glosses, edges = [], [], [], []
    with open(path, encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, 1):
            if line.startswith(" ") or not line.strip():  # the licence header lines start with two spaces
                continue
            head, _, gloss = line.partition(" | ")
            fields = head.split()
            try:
                offset, lexfile, words = int(fields[0]), int(fields[1]), int(fields[3], 16)
                pointers_at = 4 + 2 * words
                pointers = int(fields[pointers_at])
                if not 3 <= lexfile < 3 + WORDNET_NOUN_FILES:
                    raise ValueError(f"lexicographer file {lexfile} is not a noun file (03..28)")
                if words < 1 or not 0 <= pointers <= (len(fields) - pointers_at - 1) // 4:
                    raise ValueError(f"{words} words and {pointers} pointers do not fit its {len(fields)} fields")
                for p in range(pointers):
                    symbol, target, pos = fields[pointers_at + 1 + 4 * p : pointers_at + 4 + 4 * p]
                    if symbol in ("@", "@i") and pos == "n":  # hypernym / instance hypernym, to another noun synset
                        edges.append((offset, int(target)))
            except (ValueError, IndexError) as error:
                raise UserError(
                    f"{path}: line {number} is not a WordNet data.noun synset line "
                    f"('offset lex_filenum n w_cnt word lex_id ... p_cnt pointers ... | gloss'): {str(error)[:200]}"
                ) from None
            offsets.append(offset)
            lexfiles.append(lexfile)
            glosses.append(" ".join(fields[4:pointers_at:2]).replace("_", " ") + " " + gloss)
    return offsets, lexfiles, glosses, edges


class WordNetNouns:
    """WordNet 3.0's noun synsets as a graph (Debian: apt-get install wordnet-base): ~82k nodes, hypernym edges, each
    node labelled by its lexicographer file (26 classes: noun.animal, noun.artifact, ...). Node features are the hashed
    bag of words of the synset's lemmas and gloss (`feature_dim` buckets). A fixed-seed `train_fraction` of the nodes
    is the probe's train split (`train_limit` / `test_limit` cap the probe's nodes)."""

    modalities = ("graph",)

    def __init__(
        self,
        root: str = WORDNET_ROOT,
        feature_dim: PositiveInt = 512,
        train_fraction: OpenFraction = 0.5,
        node_limit: Limit = None,
        train_limit: Limit = None,
        test_limit: Limit = None,
    ) -> None:
        if not 0 < train_fraction < 1:
            raise UserError(f"data.source.train_fraction must be in (0, 1), got {train_fraction}")
        self.root, self.feature_dim, self.train_fraction, self.node_limit = Path(root).expanduser(), feature_dim, train_fraction, node_limit
        self.train_limit, self.test_limit = train_limit, test_limit

    def load(self) -> Splits:
        path = self.root / "data.noun"
        if not path.is_file():
            raise DataNotFoundError(f"data.source.root: {path} not found; apt-get install wordnet-base puts WordNet 3.0 in {WORDNET_ROOT}")
        offsets, lexfiles, glosses, edges = parse_wordnet_nouns(path)
        if not offsets:
            raise UserError(f"{path}: holds no WordNet synset line; expected WordNet 3.0's data.noun")
        keep = len(offsets) if self.node_limit is None else min(self.node_limit, len(offsets))
        index = {offset: i for i, offset in enumerate(offsets[:keep])}
        pairs = [(index[a], index[b]) for a, b in edges if a in index and b in index]
        edge_index = torch.tensor(pairs, dtype=torch.long).T if pairs else torch.zeros(2, 0, dtype=torch.long)
        labels = torch.tensor(lexfiles[:keep]) - 3  # noun lexicographer files are numbered 03..28
        if labels.min() < 0 or labels.max() >= WORDNET_NOUN_FILES:
            raise UserError(f"{path}: lexicographer file numbers outside noun.Tops..noun.time (03..28)")
        train_mask = random_train_mask(keep, self.train_fraction)
        x = hashed_bag_of_words(glosses[:keep], self.feature_dim)
        return graph_splits(x, edge_index, labels, train_mask, f"data.source.root={self.root}", self.train_limit, self.test_limit)


class GraphArrays:
    """Your own graph in one `.npz`: `x` (N, F) node features, `edge_index` (2, E) int node pairs, `y` (N,) integer
    labels, optional `train_mask` (N,) bool (default: a fixed-seed `train_fraction` of the nodes). Read as data by
    ssl_train.data.array_files: numeric dtypes only, headers checked, NaN/inf features and absurd labels refused."""

    modalities = ("graph",)

    def __init__(self, path: str, train_fraction: OpenFraction = 0.5, train_limit: Limit = None, test_limit: Limit = None) -> None:
        if not 0 < train_fraction < 1:
            raise UserError(f"data.source.train_fraction must be in (0, 1), got {train_fraction}")
        self.path, self.train_fraction, self.train_limit, self.test_limit = Path(path).expanduser(), train_fraction, train_limit, test_limit

    def load(self) -> Splits:
        """Splits of the user's graph, every array checked (dtype, shape, NaN/inf, labels) before use."""
        where = f"data.source.path={self.path}"
        if not self.path.is_file():
            raise DataNotFoundError(f"{where}: no such file; give a .npz with x (N, F), edge_index (2, E), y (N,) [, train_mask (N,)]")
        arrays = read_npz(self.path, ("x", "edge_index", "y"), where, optional=("train_mask",), lacks_hint="; node labels y are needed for the probe")
        x, edge_index, y, mask = arrays["x"], arrays["edge_index"], arrays["y"], arrays.get("train_mask")
        if x.ndim != 2 or edge_index.ndim != 2 or edge_index.shape[0] != 2 or not np.issubdtype(edge_index.dtype, np.integer):
            raise UserError(f"{where}: x must be (N, F) and edge_index (2, E) integers, got {x.shape} and {edge_index.shape} {edge_index.dtype}")
        check_labels(y, where, "y")
        check_finite(x, where, "x")
        if mask is not None and mask.shape != (len(x),):
            raise UserError(f"{where}: array train_mask must be ({len(x)},) flags, one per node, got shape {mask.shape}")
        train_mask = torch.from_numpy(mask.astype(bool)) if mask is not None else random_train_mask(len(x), self.train_fraction)
        return graph_splits(
            torch.from_numpy(x.astype(np.float32)),
            torch.from_numpy(edge_index.astype(np.int64)),
            torch.from_numpy(y.astype(np.int64)),
            train_mask,
            where,
            self.train_limit,
            self.test_limit,
        )
