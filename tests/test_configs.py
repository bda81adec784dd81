"""Every option of every config group composes and instantiates; struct mode rejects typos and unknown options."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.errors import ConfigCompositionException, HydraException
from omegaconf.errors import ConfigKeyError

from ssl_train.build import build, build_evaluators
from tests.fixtures import (
    CONFIG_DIR,
    compose_config,
    make_audio_folder,
    make_cifar,
    make_graph_arrays,
    make_hf_dataset,
    make_hf_model,
    make_image_folder,
    make_sequence_arrays,
    make_shards,
    make_stl10,
)
from tests.optional import require

GROUPS = [
    "data",
    "augment",
    "backbone",
    "head",
    "loss",
    "optim",
    "trainer",
    "eval",
    "logger",
    "callbacks",
    "method",
    "experiment",
    "hparams_search",
    "debug",
    "tokenizer",
    "text_encoder",
]
NOT_OPTIONS = {"hydra", "paths"}  # Hydra's own settings and the output/cache paths: one default each, composed by every test
NEEDS_IDX_ROOT = {("data", "fashion_mnist"), ("data", "mnist"), ("experiment", "fmnist30")}


def data_fixture(option: str, tmp_path: Path) -> list[str]:
    """Overrides pointing a file-based data option at a tiny fixture written under tmp_path."""
    no_limits = ["data.source.train_limit=null", "data.source.test_limit=null", "data.batch_size=8"]
    if option in ("cifar10", "cifar100"):
        return [f"data.source.root={make_cifar(tmp_path / option, 10 if option == 'cifar10' else 100)}", *no_limits]
    if option == "stl10":
        return [f"data.source.root={make_stl10(tmp_path / option)}", *no_limits]
    if option == "image_folder":
        return [f"data.source.root={make_image_folder(tmp_path / option)}", *no_limits]
    if option == "audio_folder":
        return [f"data.source.root={make_audio_folder(tmp_path / 'audio')}", *no_limits]
    if option == "graph_arrays":
        return [f"data.source.path={make_graph_arrays(tmp_path / 'graph.npz')}", "data.batch_size=8"]
    if option == "wordnet_graph":
        return ["data.source.node_limit=400", "data.batch_size=8"]
    if option == "sequence_arrays":
        return [f"data.source.path={make_sequence_arrays(tmp_path / 'seq.npz')}", *no_limits]
    if option == "text_files":
        (tmp_path / "train.csv").write_text("text,label\n" + "".join(f"text number {i},{'ab'[i % 2]}\n" for i in range(20)))
        return [f"data.source.train={tmp_path / 'train.csv'}", "data.batch_size=8"]
    if option in ("caption_folder", "caption_table"):
        from torchvision.io import write_png

        rows = ["image,caption"]
        for i in range(12):
            folder = tmp_path / "pairs" / "ab"[i % 2]
            folder.mkdir(parents=True, exist_ok=True)
            write_png(torch.full((3, 16, 16), 10 * i, dtype=torch.uint8), str(folder / f"{i}.png"))
            (folder / f"{i}.txt").write_text(f"picture {i}\n")
            rows.append(f"pairs/{'ab'[i % 2]}/{i}.png,picture {i}")
        (tmp_path / "pairs.csv").write_text("\n".join(rows) + "\n")
        where = f"data.source.root={tmp_path / 'pairs'}" if option == "caption_folder" else f"data.source.path={tmp_path / 'pairs.csv'}"
        return [where, "data.source.image_size=16", "data.batch_size=4", "data.num_workers=0"]
    if option in ("webdataset", "hf_dataset"):  # tar shards / a saved Hugging Face dataset of a tiny image folder
        require("webdataset" if option == "webdataset" else "datasets")
        where = f"data.source.urls={make_shards(tmp_path)}" if option == "webdataset" else f"data.source.path={make_hf_dataset(tmp_path / 'hf')}"
        return [where, *no_limits]
    if option == "unlabeled_folder":
        return [f"data.source.root={make_image_folder(tmp_path / 'u')}/train", f"data.source.probe.root={make_image_folder(tmp_path / 'l')}", *no_limits]
    return []


VIT_SMALL_RECIPES = {("experiment", p.stem) for p in (CONFIG_DIR / "experiment").glob("*_vit_small.yaml")}  # the ViT-S GPU recipes
NEEDS_GPU = {("trainer", "gpu"), ("trainer", "ddp"), ("trainer", "fsdp"), *VIT_SMALL_RECIPES}
# options for sequence data, composed with the pieces that fit them (an image default would stop with one line)
SEQUENCE_OPTIONS = {
    ("data", "seq_fashion_mnist"),
    ("data", "sequence_arrays"),
    ("augment", "sequence"),
    ("backbone", "recurrent"),
    ("method", "cpc"),
    ("head", "cpc_predictions"),
    ("loss", "cpc"),
    ("data", "spoken_digits"),
    ("data", "audio_folder"),
    ("augment", "audio"),
}
SEQUENCE_CONTEXT = ["method=cpc", "data=seq_fashion_mnist"]
GRAPH_OPTIONS = {
    ("data", "fmnist_knn_graph"),
    ("data", "graph_arrays"),
    ("data", "wordnet_graph"),
    ("augment", "graph"),
    ("augment", "graph_identity"),
    ("backbone", "gcn"),
    ("method", "dgi"),
    ("method", "grace"),
    ("head", "identity"),
    ("loss", "dgi"),
}
TEXT_OPTIONS = {
    ("data", "wordnet_glosses"),
    ("data", "text_files"),
    ("augment", "text_eda"),
    ("augment", "text_identity"),
    ("augment", "text_crop"),
    ("backbone", "transformer_small"),
    ("backbone", "char_cnn"),
    ("backbone", "hf_text"),
    ("backbone", "ngram_bag"),
    ("tokenizer", "bytes"),
    ("tokenizer", "bpe"),
    ("tokenizer", "hf"),
    ("method", "simcse"),
    ("head", "simcse_mlp"),
    ("experiment", "simclr_ngram_wordnet"),
    ("experiment", "simcse_ngram_wordnet"),
}
TEXT_CONTEXT = ["method=simcse", "data.source.train_limit=64", "data.source.test_limit=16"]
PAIR_OPTIONS = {
    ("data", "fmnist_captions"),
    ("data", "caption_folder"),
    ("data", "caption_table"),
    ("augment", "clip"),
    ("method", "clip"),
    ("loss", "clip"),
    ("head", "clip_projection"),
    ("text_encoder", "transformer_small"),
    ("text_encoder", "char_cnn"),
    ("text_encoder", "hf_text"),
}
PAIR_CONTEXT = ["method=clip"]
# the 224 px ViT-S/16 recipe, dry-run on the 28 px test data with 4 px patches and one block (tests/encoders/test_vit.py runs it at 224 px)
VIT_GPU_OPTIONS = {("backbone", "vit_small"), *VIT_SMALL_RECIPES}
VIT_GPU_CONTEXT = ["backbone.patch_size=4", "+backbone.model_kwargs.depth=1"]
GRAPH_CONTEXT = ["method=dgi", "data=fmnist_knn_graph", "data.source.train_limit=200", "data.source.test_limit=50"]


def all_options() -> list[tuple[str, str]]:
    return [(group, path.stem) for group in GROUPS for path in sorted((CONFIG_DIR / group).glob("*.yaml"))]


def test_every_group_has_options() -> None:
    on_disk = {p.name for p in CONFIG_DIR.iterdir() if p.is_dir()}
    assert on_disk - NOT_OPTIONS == set(GROUPS), f"config groups not instantiated here: {sorted(on_disk - NOT_OPTIONS - set(GROUPS))}"
    missing = [g for g in GROUPS if not list((CONFIG_DIR / g).glob("*.yaml"))]
    assert not missing, f"config groups without options: {missing}"


@pytest.mark.parametrize(("group", "option"), all_options(), ids=lambda v: str(v))
def test_option_composes_and_instantiates(group: str, option: str, tmp_path: Path, idx_root: Path) -> None:
    contexts = (
        (SEQUENCE_OPTIONS, SEQUENCE_CONTEXT),
        (GRAPH_OPTIONS, GRAPH_CONTEXT),
        (TEXT_OPTIONS, TEXT_CONTEXT),
        (PAIR_OPTIONS, PAIR_CONTEXT),
        (VIT_GPU_OPTIONS, VIT_GPU_CONTEXT),
    )
    context = next((c for options, c in contexts if (group, option) in options), [])
    overrides = [*context, f"{group}={option}"]
    if (group, option) in NEEDS_IDX_ROOT:
        overrides.append(f"data.source.root={idx_root}")
    if (group, option) in (("backbone", "hf_text"), ("text_encoder", "hf_text"), ("tokenizer", "hf")):  # a local Hugging Face model folder and its tokenizer
        require("transformers")
        overrides += ["backbone=hf_text" if group == "tokenizer" else "tokenizer=hf", f"tokenizer.path={make_hf_model(tmp_path / 'hf')}"]
    if group == "data":
        overrides += data_fixture(option, tmp_path)
    if (group, option) in NEEDS_GPU:
        overrides.append("trainer.accelerator=cpu")  # composes the GPU recipe, builds it on CPU
        overrides.append("trainer.precision=32-true")
        overrides.append("trainer.sync_batchnorm=false")  # SyncBatchNorm is CUDA-only (trainer=ddp turns it on)
    cfg = compose_config([*overrides[len(context) :], *overrides[: len(context)]] if (group, option) in VIT_GPU_OPTIONS else overrides, tmp_path)
    built = build(cfg)
    assert build_evaluators(cfg.eval)
    assert built.backbone.out_dim > 0
    assert built.trainer is not None


def test_misspelled_key_is_rejected(tmp_path: Path) -> None:
    with pytest.raises((ConfigCompositionException, ConfigKeyError), match="lrr"):
        compose_config(["optim.optimizer.lrr=0.1"], tmp_path)


def test_unknown_choice_lists_available_options(tmp_path: Path) -> None:
    with pytest.raises(HydraException, match="(?s)Could not find 'method/simclrr'.*Available options.*simclr"):
        compose_config(["method=simclrr"], tmp_path)
