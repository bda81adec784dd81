"""The embedding toolkit (embed, search, map) on checkpoints of sequence, audio and graph runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ssl_train.run import run
from ssl_train.toolkit.__main__ import main as toolkit
from tests.conftest import compose_config


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
    assert searched["queries"] == 40 and 0 < searched["recall@5"] <= 1
    mapped = toolkit(["map", "--ckpt", ckpt, "--method", "pca", "--limit", "40"])
    assert Path(mapped["out"]).is_file() and mapped["points"] == 40
