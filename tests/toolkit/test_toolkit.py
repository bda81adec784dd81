"""Embedding toolkit: search/recall, anomaly AUROC on a planted outlier, pictures, CLI; embed, search and map on checkpoints
of sequence, audio and graph runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ssl_train.run import run
from ssl_train.toolkit import auroc, knn_anomaly_scores, knn_search, label_recall_at_k, mahalanobis_scores, render_scatter
from ssl_train.toolkit.__main__ import main as toolkit
from tests.fixtures import compose_config

QUIET = ["probe=false", "baseline=false"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("toolkit") / "run"
    run(compose_config(QUIET, out))
    return out / "checkpoints" / "last.ckpt"


def test_search_finds_itself_and_recall() -> None:
    gallery = torch.randn(50, 8)
    sims, idx = knn_search(gallery[:10] + 1e-3, gallery, k=3, use_faiss=False)
    assert idx[:, 0].tolist() == list(range(10)) and sims.shape == (10, 3)
    labels = torch.arange(50) % 5
    assert label_recall_at_k(labels[:10], labels, idx, ks=(1,)) == {"recall@1": 1.0}


def test_auroc_matches_pairwise_definition() -> None:
    scores, positive = torch.tensor([0.1, 0.4, 0.35, 0.8, 0.4]), torch.tensor([0, 0, 1, 1, 1])
    pairs = [(p, n) for p in scores[positive == 1] for n in scores[positive == 0]]
    expected = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in pairs) / len(pairs)
    assert auroc(scores, positive) == pytest.approx(expected)


@pytest.mark.parametrize("scorer", [knn_anomaly_scores, mahalanobis_scores])
def test_planted_outlier_class_gets_auroc_near_one(scorer) -> None:
    g = torch.Generator().manual_seed(0)
    normal = torch.randn(300, 16, generator=g) + torch.tensor([3.0] + [0.0] * 15)
    test_normal = torch.randn(100, 16, generator=g) + torch.tensor([3.0] + [0.0] * 15)
    outliers = torch.randn(20, 16, generator=g) + torch.tensor([0.0, 6.0] + [0.0] * 14)  # a clearly different class
    scores = scorer(normal, torch.cat([test_normal, outliers]))
    assert auroc(scores, torch.cat([torch.zeros(100), torch.ones(20)])) > 0.97


def test_render_scatter_colours_points() -> None:
    image = render_scatter(torch.tensor([[0.0, 0.0], [1.0, 1.0]]), torch.tensor([0, 1]), size=64)
    assert image.shape == (3, 64, 64) and image.dtype == torch.uint8
    assert (image != 255).any(dim=0).sum() > 0


def test_cli_commands_on_checkpoint(checkpoint: Path, tmp_path: Path) -> None:
    common = ["--ckpt", str(checkpoint), "--limit", "64"]
    embedded = toolkit(["embed", *common, "--out", str(tmp_path / "embed")])
    assert np.load(tmp_path / "embed" / "test_embeddings.npy").shape == (64, 64) and embedded["splits"]["train"] == [64, 64]  # 16 ch x 2x2 grid
    searched = toolkit(["search", *common, "--k", "5", "--out", str(tmp_path / "search")])
    assert (searched["recall@1"] * 64).is_integer() and searched["recall@1"] <= searched["recall@5"]  # 64 queries; recall grows with k
    detected = toolkit(["anomaly", *common, "--holdout-class", "3", "--out", str(tmp_path / "anomaly")])
    scores, anomalous = np.load(tmp_path / "anomaly" / "scores.npy"), np.load(tmp_path / "embed" / "test_labels.npy") == 3
    pairs = scores[anomalous][:, None] - scores[~anomalous][None, :]  # Mann-Whitney: AUROC = P(anomalous scores higher)
    assert detected["auroc"] == pytest.approx(float((pairs > 0).mean() + 0.5 * (pairs == 0).mean()), abs=1e-6)
    assert toolkit(["map", *common, "--method", "pca", "--out", str(tmp_path / "map")])["method"] == "pca"
    assert (tmp_path / "map" / "embedding_map.png").is_file() and list((tmp_path / "map" / "tensorboard").glob("events.*"))
    assert toolkit(["views", "--ckpt", str(checkpoint), "--count", "3", "--out", str(tmp_path / "views")])["views_per_image"] == 2


def test_cli_embed_image_folder(checkpoint: Path, tmp_path: Path) -> None:
    from tests.fixtures import make_image_folder

    folder = make_image_folder(tmp_path / "imgs", n_per_class=1, classes=3, size=40)
    result = toolkit(["embed", "--ckpt", str(checkpoint), "--images", str(folder / "train"), "--out", str(tmp_path / "e")])
    assert result["splits"]["images"] == [3, 64]
    assert len((tmp_path / "e" / "images_ids.txt").read_text().split()) == 3


def test_embedding_map_of_a_single_sample_is_a_point_not_an_error() -> None:
    """A test split of one sample (a text file whose other rows were skipped): pca_lowrank would refuse q=2."""
    from ssl_train.toolkit.pictures import embedding_map

    coords, method = embedding_map(torch.randn(1, 8), "pca")
    assert method == "pca" and coords.tolist() == [[0.0, 0.0]]
    assert embedding_map(torch.randn(5, 8), "pca")[0].shape == (5, 2)


# --- checkpoints of sequence, audio and graph runs -----------------------------------------------------------------


@pytest.mark.parametrize(("method", "data"), [("cpc", "seq_fashion_mnist"), ("cpc", "spoken_digits"), ("grace", "fmnist_knn_graph")])
def test_embed_search_and_map_work_on_checkpoints_beyond_images(method: str, data: str, tmp_path: Path) -> None:
    extra = ["data.source.train_limit=200", "data.source.test_limit=50"] if data == "fmnist_knn_graph" else []
    run(compose_config([f"method={method}", f"data={data}", "probe=false", "baseline=false", *extra], tmp_path / "run"))
    ckpt = str(tmp_path / "run" / "checkpoints" / "last.ckpt")
    embedded = toolkit(["embed", "--ckpt", ckpt, "--limit", "40"])
    out = Path(embedded["out"])
    train = np.load(out / "train_embeddings.npy")
    assert train.shape[0] == 40 and np.isfinite(train).all() and (out / "test_labels.npy").is_file()
    searched = toolkit(["search", "--ckpt", ckpt, "--k", "5", "--limit", "40"])
    # recall@5 recomputed from the embeddings `embed` saved: cosine similarity, each test row's 5 nearest train rows
    test, train_y, test_y = (np.load(out / f"{name}.npy") for name in ("test_embeddings", "train_labels", "test_labels"))
    unit = lambda a: a / np.linalg.norm(a, axis=1, keepdims=True)
    nearest = np.argsort(-(unit(test) @ unit(train).T), axis=1, kind="stable")[:, :5]
    expected = np.mean([(train_y[row] == label).any() for row, label in zip(nearest, test_y, strict=True)])
    assert searched["queries"] == 40 and searched["recall@5"] == pytest.approx(expected)
    mapped = toolkit(["map", "--ckpt", ckpt, "--method", "pca", "--limit", "40"])
    assert Path(mapped["out"]).is_file() and mapped["points"] == 40
