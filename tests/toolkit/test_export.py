"""Portable encoders: safetensors + config.json + model card, loaded back without Hydra and without ssl_train at all,
giving the same embeddings; backbone.weights starts training or evaluation from them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

import ssl_train
from ssl_train.errors import UserError
from ssl_train.eval.checkpoint import encoder_from_checkpoint
from ssl_train.run import run
from ssl_train.toolkit import export_backbone
from ssl_train.toolkit.export import model_card
from tests.fixtures import compose_config

QUIET = ["probe=false", "baseline=false"]
RESNET18 = ["backbone=resnet18", "data.batch_size=8", "trainer.limit_train_batches=1", "trainer.limit_val_batches=1"]
CLEAN_INTERPRETER = """
import sys
sys.modules["ssl_train"] = None  # any import of ssl_train fails: only torch, safetensors (+ torchvision) are used
sys.path.insert(0, sys.argv[1])  # the export folder (modeling.py for ssl_train's own CNN)
import json, torch
namespace = {}
snippet = json.load(open(sys.argv[1] + "/config.json"))["how_to_load"]["standalone"]
exec(snippet.replace("'model.safetensors'", repr(sys.argv[1] + "/model.safetensors")), namespace)
torch.save(namespace["model"](torch.load(sys.argv[2])), sys.argv[3])
"""


@pytest.fixture(scope="module")
def small_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("export") / "run"
    run(compose_config(["eval=linear"], out))
    return out / "checkpoints" / "last.ckpt"


def embeddings_in_a_clean_interpreter(export_dir: Path, x: torch.Tensor, tmp_path: Path) -> torch.Tensor:
    torch.save(x, tmp_path / "x.pt")
    done = subprocess.run(
        [sys.executable, "-I", "-c", CLEAN_INTERPRETER, str(export_dir), str(tmp_path / "x.pt"), str(tmp_path / "z.pt")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return torch.load(tmp_path / "z.pt")


@pytest.mark.parametrize("arch", ["small_resnet", "resnet18"])
def test_export_loads_everywhere_with_the_same_embeddings(arch: str, small_checkpoint: Path, tmp_path: Path) -> None:
    if arch == "small_resnet":
        ckpt = small_checkpoint
    else:
        run(compose_config([*QUIET, *RESNET18], tmp_path / "run"))
        ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    card = export_backbone(ckpt, tmp_path / "export")
    export_dir = Path(card["export_dir"])
    files = {p.name for p in export_dir.iterdir()}
    assert {"model.safetensors", "config.json", "README.md"} <= files and ("modeling.py" in files) == (arch == "small_resnet")
    x = torch.randn(3, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    trained, _ = encoder_from_checkpoint(ckpt)
    expected = trained.eval()(x)
    torch.testing.assert_close(ssl_train.load_encoder(export_dir)(x), expected, rtol=0, atol=1e-6)  # no Hydra
    torch.testing.assert_close(embeddings_in_a_clean_interpreter(export_dir, x, tmp_path), expected, rtol=0, atol=1e-6)  # no ssl_train
    readme = (export_dir / "README.md").read_text()
    assert readme.startswith("---\nlibrary_name: ssl_train\n") and "ssl_train.load_encoder" in readme
    if arch == "resnet18":  # the stem changes the card names are exactly the ones torchvision's resnet18 needs
        assert "model.conv1 = torch.nn.Conv2d(1, 64, 3, 1, 1, bias=False)" in readme and "model.maxpool = torch.nn.Identity()" in readme


def test_model_card_shows_the_probe_beside_the_baselines(small_checkpoint: Path, tmp_path: Path) -> None:
    metrics = json.loads((small_checkpoint.parent.parent / "metrics.json").read_text())
    card = export_backbone(small_checkpoint, tmp_path / "export")
    readme = (Path(card["export_dir"]) / "README.md").read_text()
    assert f"| linear probe top-1 | {metrics['linear_top1']:.4f} |" in readme
    assert f"| raw input, same linear probe | {metrics['raw_input_linear_top1']:.4f} |" in readme
    assert f"| random-init encoder, same linear probe | {metrics['random_init_linear_top1']:.4f} |" in readme
    assert card["encoder"]["_target_"] == "ssl_train.encoders.resnet.SmallResNet" and card["encoder"]["in_channels"] == 1
    assert card["method"] == metrics["method"] == "simclr"  # the option chosen, from the stored config (no method.name there)
    assert export_backbone(small_checkpoint, tmp_path / "export")["export_dir"].endswith("export-1")  # never overwritten


def test_model_card_front_matter_and_body_resist_hostile_names() -> None:
    method = "simclr]\nlicense: mit\nevil: [x <script>alert(1)</script> `<img src=x onerror=alert(1)>` [a](javascript:alert(1))"
    config = {
        "method": method,
        "data": "Data<script>",
        "modality": "image",
        "encoder": {"_target_": "ssl_train.encoders.resnet.SmallResNet"},
        "out_dim": 8,
        "input": {"channels": 1, "image_size": 28, "mean": [0.5], "std": [0.25]},
        "checkpoint": "/runs/`<script>`/last.ckpt",
        "commit": "<b>c</b>",
    }
    card = model_card(config, None, {"ssl_train": "import ssl_train"})
    assert card.startswith("---\nlibrary_name: ssl_train\n")
    front, body = card.removeprefix("---\n").split("\n---\n", 1)
    meta = yaml.safe_load(front)
    assert set(meta) == {"library_name", "tags", "pipeline_tag"} and meta["library_name"] == "ssl_train"  # no license:, no evil:
    assert meta["pipeline_tag"] == "image-feature-extraction" and len(meta["tags"]) == 3 and meta["tags"][1].startswith("simclr] license: mit")
    assert "<script>" not in body and "<img" not in body and "<b>" not in body and "&lt;script&gt;alert(1)&lt;/script&gt;" in body
    heading = next(line for line in body.splitlines() if line.startswith("# "))
    assert "](javascript:" not in heading and "\\[a\\]\\(javascript" in heading  # no Markdown link in the heading (in a code span it is text)
    assert "`/runs/'&lt;script&gt;'/last.ckpt`" in body  # a backtick cannot end the code span early


def test_torch_format_and_torchscript(small_checkpoint: Path, tmp_path: Path) -> None:
    card = export_backbone(small_checkpoint, tmp_path / "export", fmt="torch", torchscript=True)
    export_dir = Path(card["export_dir"])
    state = torch.load(export_dir / "backbone.pt", weights_only=True)
    trained, _ = encoder_from_checkpoint(small_checkpoint)
    assert state.keys() == trained.state_dict().keys()
    x = torch.randn(2, 1, 28, 28)
    torch.testing.assert_close(torch.jit.load(str(export_dir / "backbone.torchscript.pt"))(x), trained.eval()(x))
    with pytest.raises(UserError, match=r"--format 'onnx2': choose one of safetensors, torch"):
        export_backbone(small_checkpoint, tmp_path / "x", fmt="onnx2")


@pytest.mark.parametrize("source", ["folder", "safetensors", "checkpoint"])
def test_backbone_weights_start_from_given_weights(source: str, small_checkpoint: Path, tmp_path: Path) -> None:
    export_dir = Path(export_backbone(small_checkpoint, tmp_path / "export")["export_dir"])
    weights = {"folder": export_dir, "safetensors": export_dir / "model.safetensors", "checkpoint": small_checkpoint}[source]
    cfg = compose_config([*QUIET, "pretrain=false", f"backbone.weights={weights}"], tmp_path / "probe")
    from ssl_train.build import build

    backbone = build(cfg).backbone
    trained, _ = encoder_from_checkpoint(small_checkpoint)
    for key, value in trained.state_dict().items():
        torch.testing.assert_close(backbone.state_dict()[key], value, rtol=0, atol=0, msg=key)


def test_backbone_weights_that_do_not_fit_are_one_line(small_checkpoint: Path, tmp_path: Path) -> None:
    export_dir = Path(export_backbone(small_checkpoint, tmp_path / "export")["export_dir"])
    cfg = compose_config([*QUIET, f"backbone.weights={export_dir}", "backbone.widths=[8,32]"], tmp_path / "run")
    with pytest.raises(UserError, match=r"^backbone.weights=.*: its weights do not fit this encoder \(.*size mismatch"):
        run(cfg)
    with pytest.raises(UserError, match=r"^backbone.weights=/nowhere: no such file or folder"):
        run(compose_config([*QUIET, "backbone.weights=/nowhere"], tmp_path / "run2"))
    with pytest.raises(UserError, match=r"not an ssl_train export"):
        ssl_train.load_encoder(tmp_path)


def test_continued_pretraining_from_an_export_changes_the_weights(small_checkpoint: Path, tmp_path: Path) -> None:
    export_dir = Path(export_backbone(small_checkpoint, tmp_path / "export")["export_dir"])
    metrics = run(compose_config([*QUIET, f"backbone.weights={export_dir}"], tmp_path / "run"))
    assert metrics["steps"] == 2
    after, _ = encoder_from_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")
    before = ssl_train.load_encoder(export_dir)
    assert not torch.equal(after.state_dict()["net.0.weight"], before.state_dict()["net.0.weight"])


def test_a_checkpoint_written_before_the_encoders_moved_still_loads(small_checkpoint: Path, tmp_path: Path) -> None:
    """Its stored config names ssl_train.backbones.SmallResNet (the module before ssl_train/encoders/): read as the new name."""
    checkpoint = torch.load(small_checkpoint, weights_only=True)
    assert checkpoint["ssl_train_config"]["backbone"]["_target_"] == "ssl_train.encoders.resnet.SmallResNet"
    checkpoint["ssl_train_config"]["backbone"]["_target_"] = "ssl_train.backbones.SmallResNet"
    torch.save(checkpoint, tmp_path / "old.ckpt")
    encoder, cfg = encoder_from_checkpoint(tmp_path / "old.ckpt")
    x = torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    assert cfg.backbone._target_ == "ssl_train.encoders.resnet.SmallResNet"
    torch.testing.assert_close(encoder.eval()(x), encoder_from_checkpoint(small_checkpoint)[0].eval()(x))
