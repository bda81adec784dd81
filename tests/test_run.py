"""End to end: run(cfg) trains a few steps, probes, writes metrics.json; resume continues; reruns never overwrite."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from ssl_train.errors import UserError
from ssl_train.run import run
from tests.fixtures import CONFIG_DIR, compose_config

METHODS = sorted(p.stem for p in (CONFIG_DIR / "method").glob("*.yaml"))


# methods for other modalities: (data option, encoder class, source class) they run on here
OTHER_MODALITY = {
    "cpc": ("seq_fashion_mnist", "RecurrentEncoder", "SequentialFashionMNIST"),
    "dgi": ("fmnist_knn_graph", "GCNEncoder", "FashionMNISTKNNGraph"),
    "grace": ("fmnist_knn_graph", "GCNEncoder", "FashionMNISTKNNGraph"),
    "simcse": ("wordnet_glosses", "TransformerTextEncoder", "WordNetGlosses"),
    "clip": ("fmnist_captions", "SmallResNet", "CaptionedFashionMNIST"),
    "mae": ("default", "TimmEncoder", "EmbeddedFashionMNIST"),
    "simmim": ("default", "TimmEncoder", "EmbeddedFashionMNIST"),
    "ijepa": ("default", "TimmEncoder", "EmbeddedFashionMNIST"),
    "ibot": ("default", "TimmEncoder", "EmbeddedFashionMNIST"),
    "dinov2": ("default", "TimmEncoder", "EmbeddedFashionMNIST"),
    "msn": ("default", "TimmEncoder", "EmbeddedFashionMNIST"),
}


@pytest.mark.parametrize("method", METHODS)
def test_run_writes_metrics_and_checkpoints(method: str, tmp_path: Path) -> None:
    data, encoder, source = OTHER_MODALITY.get(method, ("default", "SmallResNet", "EmbeddedFashionMNIST"))
    cfg = compose_config([f"method={method}", f"data={data}"], tmp_path / "run")
    metrics = run(cfg)
    written = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert written == metrics
    # graph views perturb the whole graph; a pair's views are an image and a caption
    per_sample_pairs = ("online_alignment",) if source not in ("FashionMNISTKNNGraph", "CaptionedFashionMNIST") else ()
    for key in (
        "linear_top1",
        "linear_top5",
        "random_init_linear_top1",
        "knn_k20_top1",
        "random_init_knn_k20_top1",
        "raw_input_linear_top1",
        "online_probe_top1",
        "online_knn_top1",
        *per_sample_pairs,
        "repr_rankme",
        "repr_uniformity",
        "repr_embedding_std",
        "method",
        "backbone",
        "data",
        "epochs",
        "seed",
        "wall_time_s",
        "train_images_per_s",
        "steps",
    ):
        assert key in written, key
    assert written["method"] == method and written["steps"] == 2
    assert written["backbone"] == encoder and written["data"] == source  # named outside a Hydra app too
    assert written["train_images_per_s"] > 0 and written["eval_split"] == "test"
    if method == "clip":  # the two towers' evaluations, beside the untrained ones
        for key in ("zero_shot_top1", "zero_shot_chance", "random_init_zero_shot_top1", "retrieval_image_to_text_r1", "retrieval_text_to_image_r10"):
            assert key in written, key
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()
    assert OmegaConf.load(tmp_path / "run" / "config_resolved.yaml").method_name == method  # export and evaluation read it there
    assert list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))
    assert (tmp_path / "run" / "config_resolved.yaml").is_file()


def test_rerun_into_a_finished_run_dir_is_refused(tmp_path: Path) -> None:
    cfg = compose_config(["probe=false", "baseline=false"], tmp_path / "run")
    run(cfg)
    before = (tmp_path / "run" / "metrics.json").read_text()
    with pytest.raises(UserError, match="already holds a finished run"):
        run(cfg)
    assert (tmp_path / "run" / "metrics.json").read_text() == before


def test_resume_from_checkpoint_continues_step_count(tmp_path: Path) -> None:
    first = run(compose_config(["method=byol", "probe=false", "baseline=false"], tmp_path / "first"))
    assert first["steps"] == 2
    ckpt = tmp_path / "first" / "checkpoints" / "last.ckpt"
    resumed = run(compose_config(["method=byol", "probe=false", "baseline=false", "trainer.max_epochs=2", f"ckpt_path={ckpt}"], tmp_path / "second"))
    assert resumed["steps"] == 4  # 2 restored + 2 new, in a new directory; the first run is untouched
    assert (tmp_path / "first" / "metrics.json").is_file()


def test_a_rerun_that_reads_the_baselines_from_the_cache_trains_the_same_weights(tmp_path: Path) -> None:
    import torch

    cache = f"paths.cache_dir={tmp_path / 'cache'}"
    first = run(compose_config([cache], tmp_path / "first"))  # computes both baselines
    second = run(compose_config([cache], tmp_path / "second"))  # reads them: no probe runs before training
    assert first["random_init_linear_top1"] == second["random_init_linear_top1"]
    weights = [torch.load(d / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"] for d in (tmp_path / "first", tmp_path / "second")]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert first["linear_top1"] == second["linear_top1"]
