"""Loading without trusting the file: weights-only reads, the _target_ allowlist, one-line errors for bad checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ssl_train.callbacks import ConfigInCheckpoint
from ssl_train.checkpoint_io import read_checkpoint
from ssl_train.errors import UserError
from ssl_train.eval.checkpoint import load_encoder
from ssl_train.run import run
from ssl_train.trust import is_allowed, targets_in
from tests.conftest import compose_config

QUIET = ["probe=false", "baseline=false"]


class WritesMarkerWhenUnpickled:
    """A pickle payload that creates a file when loaded: stands in for code a crafted checkpoint would run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return open, (str(self.marker), "w")


@pytest.fixture(scope="module")
def trained_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("run")
    run(compose_config(QUIET, out / "run"))
    return out / "run" / "checkpoints" / "last.ckpt"


def test_crafted_checkpoint_does_not_run_code(tmp_path: Path) -> None:
    marker, crafted = tmp_path / "marker", tmp_path / "crafted.ckpt"
    torch.save({"state_dict": {}, "payload": WritesMarkerWhenUnpickled(marker)}, crafted)
    for load in (lambda: read_checkpoint(crafted), lambda: load_encoder(crafted)):
        with pytest.raises(UserError, match=r"names code \(_?io.open\) that it needs to load.*refused.*trust_checkpoint=true"):
            load()
    assert not marker.exists()
    with pytest.raises(UserError, match="refused"):  # resuming from it: Lightning reads through our checkpoint IO
        run(compose_config([*QUIET, f"ckpt_path={crafted}"], tmp_path / "resume"))
    assert not marker.exists()
    read_checkpoint(crafted, trust=True)  # the explicit opt-in does unpickle: the payload was real
    assert marker.exists()


def test_own_checkpoints_load_weights_only(trained_checkpoint: Path) -> None:
    checkpoint = torch.load(trained_checkpoint, weights_only=True)
    assert checkpoint["global_step"] == 2 and ConfigInCheckpoint.KEY in checkpoint
    assert "rng" in checkpoint["callbacks"]["ResumeState"]


def test_stored_config_targets_outside_the_registry_are_refused(trained_checkpoint: Path, tmp_path: Path) -> None:
    checkpoint = torch.load(trained_checkpoint, weights_only=True)
    checkpoint[ConfigInCheckpoint.KEY]["head"]["_target_"] = "os.system"
    tampered = tmp_path / "tampered.ckpt"
    torch.save(checkpoint, tampered)
    with pytest.raises(UserError, match=r"stored config key head._target_: 'os.system' is not a component that ssl_train's configs build under head"):
        load_encoder(tampered, features="projector")
    assert is_allowed("ssl_train.heads.MLP", "head") and is_allowed("ssl_train.encoders.resnet.SmallResNet", "backbone")
    assert not is_allowed("ssl_train.heads.MLP", "backbone.widths")  # exact names where the configs build them, not anywhere
    assert not any(is_allowed(t, "backbone") for t in ("torch.nn.Linear", "torch.hub.load", "torch.utils.collect_env.run", "timm.create_model",
                                                       "torch.os.system", "ssl_train.callbacks.subprocess.call", "builtins.eval"))
    assert is_allowed("mylab.nets.Net", "backbone", also_allowed=["mylab.nets.Net"])
    assert not is_allowed("mylab.nets.Other", "backbone", also_allowed=["mylab.nets.Net"])
    assert sorted(targets_in({"a": {"_target_": "x.A", "b": [{"_target_": "y.B"}]}})) == ["x.A", "y.B"]


def test_bad_checkpoint_files_stop_with_one_line(trained_checkpoint: Path, tmp_path: Path) -> None:
    data = trained_checkpoint.read_bytes()
    empty, truncated, garbage, foreign, lightning_only = (tmp_path / f"{n}.ckpt" for n in ("empty", "truncated", "garbage", "foreign", "plain"))
    empty.write_bytes(b"")
    truncated.write_bytes(data[: len(data) // 2])
    garbage.write_bytes(bytes(range(256)) * 40)
    torch.save({"weights": torch.zeros(3)}, foreign)
    checkpoint = torch.load(trained_checkpoint, weights_only=True)
    del checkpoint[ConfigInCheckpoint.KEY]
    torch.save(checkpoint, lightning_only)
    expected = {
        empty: "is empty", truncated: "truncated or corrupted", garbage: "truncated or corrupted",
        foreign: "not a Lightning/ssl_train checkpoint", lightning_only: "is not an ssl_train checkpoint", tmp_path / "missing.ckpt": "no checkpoint at",
    }
    for path, message in expected.items():
        with pytest.raises(UserError, match=message) as caught:
            load_encoder(path)
        assert "\n" not in str(caught.value)


def test_weights_of_another_backbone_version_stop_with_one_line(trained_checkpoint: Path, tmp_path: Path) -> None:
    checkpoint = torch.load(trained_checkpoint, weights_only=True)
    checkpoint[ConfigInCheckpoint.KEY]["backbone"]["widths"] = [8, 32]  # the config now builds other shapes than the weights
    other = tmp_path / "other.ckpt"
    torch.save(checkpoint, other)
    with pytest.raises(UserError, match=r"its backbone weights do not fit the backbone its config builds \(size mismatch for .*another version") as caught:
        load_encoder(other)
    assert "\n" not in str(caught.value)
    with pytest.raises(UserError, match=r"its weights do not fit this run's model"):  # resuming it into a run with the original widths
        run(compose_config([*QUIET, "backbone.widths=[8,32]", f"ckpt_path={trained_checkpoint}"], tmp_path / "resume"))
