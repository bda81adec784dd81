"""Graphs: DGI's loss equals torch_geometric's, graph views, the GCN read-out, the graph sources, DGI and GRACE steps."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.optional import require

require("torch_geometric")

from torch_geometric.nn import DeepGraphInfomax  # noqa: E402

from ssl_train.build import build  # noqa: E402
from ssl_train.data.graph_views import BatchedGraphView, GraphViewRecipe  # noqa: E402
from ssl_train.data.graphs import (  # noqa: E402
    GraphArrays,
    NodeBatch,
    NodeDataset,
    WordNetNouns,
    graph_splits,
    hashed_bag_of_words,
    knn_edges,
    parse_wordnet_nouns,
)
from ssl_train.encoders.graph import GCNEncoder  # noqa: E402
from ssl_train.errors import DataNotFoundError, UserError  # noqa: E402
from ssl_train.eval.baselines import RawInput  # noqa: E402
from ssl_train.heads import IdentityHead  # noqa: E402
from ssl_train.losses import DeepGraphInfomaxLoss  # noqa: E402
from ssl_train.methods import DeepGraphInfomaxMethod  # noqa: E402
from tests.fixtures import compose_config, karate, make_graph_arrays  # noqa: E402


def test_dgi_loss_equals_torch_geometrics_deep_graph_infomax_loss() -> None:
    torch.manual_seed(0)
    x, edge_index, _ = karate()
    encoder = GCNEncoder(x.shape[1], hidden_dim=16)
    reference = DeepGraphInfomax(
        16,
        encoder=lambda x, ei: encoder.embed(x, ei),
        summary=lambda z, *a, **k: torch.sigmoid(z.mean(dim=0)),
        corruption=lambda x, ei: (x[torch.randperm(len(x))], ei),
    )
    ours = DeepGraphInfomaxLoss(16)
    with torch.no_grad():
        ours.weight.copy_(reference.weight)
    pos, neg, summary = reference(x, edge_index)
    assert ours(pos, neg, summary).item() == pytest.approx(reference.loss(pos, neg, summary).item(), abs=1e-5)


def test_dgi_method_reads_out_batch_nodes_and_trains_the_gcn() -> None:
    torch.manual_seed(0)
    x, edge_index, y = karate()
    splits = graph_splits(x, edge_index, y, torch.arange(34) < 20, "karate")
    encoder = GCNEncoder(splits.input_spec.features, hidden_dim=16)
    method = DeepGraphInfomaxMethod(encoder, IdentityHead(16), DeepGraphInfomaxLoss(16))
    batch, labels = splits.pretrain.collate([splits.pretrain[i] for i in (3, 7, 30)])
    out = method([batch], labels)
    out["loss"].backward()
    assert out["features"].shape == (3, 16) and labels.tolist() == [int(y[3]), int(y[7]), -1]  # test node's label hidden
    assert all(p.grad is not None for p in encoder.parameters())
    full = encoder.embed(splits.train.graph.x, splits.train.graph.edge_index)
    assert torch.allclose(out["features"], full[[3, 7, 30]].detach())


def test_gcn_eval_readout_reuses_one_full_pass_and_forgets_it_when_training_resumes() -> None:
    x, edge_index, y = karate()
    splits = graph_splits(x, edge_index, y, torch.arange(34) < 20, "karate")
    encoder = GCNEncoder(splits.input_spec.features, hidden_dim=8).eval()
    graph = splits.train.graph
    with torch.no_grad():
        first = encoder(NodeBatch(graph, torch.tensor([0, 1])))
        assert encoder._eval_cache is not None
        with torch.no_grad():
            encoder.convs[0].lin.weight.mul_(2)
        cached = encoder(NodeBatch(graph, torch.tensor([0, 1])))  # same eval pass: reused
        encoder.train().eval()
        fresh = encoder(NodeBatch(graph, torch.tensor([0, 1])))
    assert torch.equal(first, cached) and not torch.allclose(first, fresh)
    assert torch.equal(RawInput("graph")(NodeBatch(graph, torch.tensor([2]))), graph.x[[2]])  # raw baseline: node features


def test_graph_views_drop_edges_and_mask_columns_at_their_rates() -> None:
    torch.manual_seed(0)
    n = 400
    edge_index = knn_edges(torch.randn(n, 8), k=6)
    from torch_geometric.data import Data
    from torch_geometric.utils import to_undirected

    graph = Data(x=torch.ones(n, 50), edge_index=to_undirected(edge_index, num_nodes=n))
    view = BatchedGraphView(GraphViewRecipe(drop_edge=0.4, mask_feature=0.3))(NodeBatch(graph, torch.arange(10)))
    kept = view.graph.edge_index.shape[1] / graph.edge_index.shape[1]
    masked_columns = (view.graph.x.sum(dim=0) == 0).float().mean().item()
    assert 0.5 < kept < 0.7 and 0.15 < masked_columns < 0.45 and torch.equal(view.nodes, torch.arange(10))
    assert ((view.graph.x == 0).all(dim=0) | (view.graph.x == 1).all(dim=0)).all()  # whole columns, every node alike


def test_knn_edges_match_brute_force() -> None:
    features = torch.randn(30, 5)
    edges = knn_edges(features, k=3, chunk=7)
    unit = torch.nn.functional.normalize(features, dim=1)
    similarity = unit @ unit.T - 3 * torch.eye(30)
    expected = similarity.topk(3, dim=1).indices
    assert torch.equal(edges[1].view(30, 3).sort(dim=1).values, expected.sort(dim=1).values)


def test_wordnet_parser_reads_hypernyms_labels_and_glosses(tmp_path: Path) -> None:
    (tmp_path / "data.noun").write_text(
        "  1 This software and database is being provided to you, the LICENSEE\n"
        "00001740 03 n 01 entity 0 001 ~ 00001930 n 0000 | that which is perceived\n"
        "00001930 03 n 01 physical_entity 0 002 @ 00001740 n 0000 ~ 00002452 n 0000 | an entity that has physical existence\n"
        "00002452 05 n 02 dog 0 domestic_dog 0 001 @ 00001930 n 0000 | a member of the genus Canis\n"
    )
    offsets, lexfiles, glosses, edges = parse_wordnet_nouns(tmp_path / "data.noun")
    assert offsets == [1740, 1930, 2452] and lexfiles == [3, 3, 5] and edges == [(1930, 1740), (2452, 1930)]
    assert glosses[2].startswith("dog domestic dog") and "Canis" in glosses[2]
    splits = WordNetNouns(str(tmp_path), feature_dim=16, train_fraction=0.5).load()
    assert splits.modality == "graph" and splits.train.graph.edge_index.shape[1] == 4  # undirected
    assert splits.num_classes == 3 and sorted(splits.train.labels.tolist() + splits.test.labels.tolist()) == [0, 0, 2]
    with pytest.raises(DataNotFoundError, match="apt-get install wordnet-base"):
        WordNetNouns(str(tmp_path / "none")).load()


@pytest.mark.needs("wordnet-base")
def test_real_wordnet_has_82k_noun_synsets_in_26_lexicographer_files() -> None:
    offsets, lexfiles, _, edges = parse_wordnet_nouns(Path("/usr/share/wordnet/data.noun"))
    assert len(offsets) == 82115 and set(lexfiles) == set(range(3, 29)) and len(edges) > 80000


def test_bag_of_words_hashing_is_stable_and_normalised() -> None:
    a, b, c = hashed_bag_of_words(["a big dog", "a big dog", "tiny cat"], 64)
    assert torch.equal(a, b) and a.norm().item() == pytest.approx(1.0) and (a * c).sum() < 1  # other words, other buckets
    assert (hashed_bag_of_words(["dog dog"], 64) > 0).sum() == 1


def test_graph_split_errors_are_one_line() -> None:
    x, edge_index, y = karate()
    with pytest.raises(UserError, match="every node needs a label"):
        graph_splits(x, edge_index, y[:10], torch.ones(34, dtype=torch.bool), "g")
    with pytest.raises(UserError, match="outside 0..33"):
        graph_splits(x, edge_index + 40, y, torch.arange(34) < 20, "g")
    with pytest.raises(ValueError, match="3 nodes but 2 labels"):
        NodeDataset(None, torch.arange(3), torch.arange(2))


@pytest.mark.parametrize("method", ["dgi", "grace"])
def test_graph_methods_build_from_config_and_step(method: str, tmp_path: Path) -> None:
    cfg = compose_config([f"method={method}", "data=fmnist_knn_graph", "data.batch_size=16", "backbone.hidden_dim=16"], tmp_path)
    built = build(cfg)
    train = built.datamodule.train_dataloader()
    batch, labels = next(iter(train))
    out = built.method(built.module.batched_views(batch), labels)
    out["loss"].backward()
    assert torch.isfinite(out["loss"]) and out["features"].shape == (16, 16)
    assert set(labels.tolist()) <= set(range(10)) | {-1}  # test nodes' labels are hidden from the online probe


def test_graph_arrays_read_a_user_graph_and_refuse_one_without_labels(tmp_path: Path) -> None:
    splits = GraphArrays(str(make_graph_arrays(tmp_path / "g.npz"))).load()
    assert splits.modality == "graph" and len(splits.train) == 24 and len(splits.test) == 10 and splits.num_classes == 4
    with pytest.raises(UserError, match="lacks y .* node labels y are needed"):
        GraphArrays(str(make_graph_arrays(tmp_path / "nolabels.npz", y=True))).load()
    with pytest.raises(DataNotFoundError, match="no such file"):
        GraphArrays(str(tmp_path / "missing.npz")).load()
