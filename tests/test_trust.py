"""Loading stored files as data (ssl_train/trust.py): weights-only checkpoint reads, the _target_ allowlist, one-line errors
for bad checkpoints, and a red team: every payload class a stranger's file can carry, through every entry that reads one.

Each red-team case asserts what the project promises: no marker file (the stand-in for code run), no existing file
changed, no environment secret in any output, and, where the entry refuses, exactly one line on stderr."""

from __future__ import annotations

import functools
import json
import os
import pickle
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from ssl_train.callbacks import ConfigInCheckpoint
from ssl_train.checkpoint_io import read_checkpoint
from ssl_train.cli import report_user_errors
from ssl_train.errors import UserError
from ssl_train.eval.checkpoint import encoder_from_checkpoint, evaluate_checkpoint
from ssl_train.portable import load_encoder as load_export
from ssl_train.run import run
from ssl_train.toolkit.__main__ import main as toolkit
from ssl_train.trust import is_allowed, targets_in
from tests.fixtures import TINY_DATA, TINY_MODEL, TINY_RUN, WritesMarkerWhenUnpickled, compose_config, crashing_png, make_cifar, make_image_folder

SECRET_NAME, SECRET = "SSL_TRAIN_RED_TEAM_SECRET", "s3cr3t-4a7f19"
QUIET = ["probe=false", "baseline=false"]


def stored_payloads(marker: Path, victim: Path) -> dict[str, Callable[[dict[str, Any]], None]]:
    """Edits of a stored config, one per payload class; each would touch `marker` or `victim` (or read the secret) if run."""
    pickled = pickle.dumps(os.system)  # what a pickle smuggled inside a config would carry
    return {
        "shell_runner": lambda c: c["backbone"].update(widths={"_target_": "torch.utils.collect_env.run", "command": f"touch {marker}"}),
        "unpickler": lambda c: c["backbone"].update(
            widths={"_target_": "torch.serialization.load", "weights_only": False, "f": {"_target_": "io.BytesIO", "_args_": [list(pickled)]}}
        ),
        "file_writer": lambda c: c["head"].update(extra={"_target_": "torch.serialization.save", "obj": [1], "f": str(victim)}),
        "alias_os": lambda c: c["backbone"].update(_target_="torch.os.system", command=f"touch {marker}"),
        "alias_subprocess": lambda c: c["head"].update(_target_="ssl_train.callbacks.subprocess.call", args=["touch", str(marker)]),
        "registered_elsewhere": lambda c: c["backbone"].update(widths={"_target_": "lightning.pytorch.loggers.TensorBoardLogger", "save_dir": str(marker)}),
        "resolver": lambda c: c["backbone"].update(widths=f"${{oc.create:{{_target_: builtins.open, file: {marker}, mode: w}}}}"),
        "environment_read": lambda c: c["method"].update(name=f"${{oc.env:{SECRET_NAME}}}"),
        "special_key": lambda c: c["backbone"].update(_recursive_="yes", __class__="os.system"),
        "non_plain_value": lambda c: c["backbone"].update(widths=torch.tensor([8, 16])),
        "deep_nesting": lambda c: c.update(tags=functools.reduce(lambda inner, _: [inner], range(100), [])),
    }


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("red_team") / "run"
    run(compose_config(QUIET, out))
    return out / "checkpoints" / "last.ckpt"


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """(size, mtime) of every file under root, symlinks as themselves."""
    return {str(p): (p.lstat().st_size, p.lstat().st_mtime_ns) for p in root.rglob("*") if p.is_file() or p.is_symlink()}


def assert_unharmed(before: dict[str, tuple[int, int]], root: Path, marker: Path, outputs: str) -> None:
    """No marker, no file that existed changed or vanished, the secret in no file and no output."""
    assert not marker.exists(), "the payload ran"
    after = snapshot(root)
    changed = [p for p, stat in before.items() if after.get(p) != stat]
    assert not changed, f"files changed: {changed}"
    assert SECRET not in outputs
    leaked = [p for p in after if Path(p).is_file() and SECRET.encode() in Path(p).read_bytes()]
    assert not leaked, f"the secret was written to {leaked}"


def one_refusal(capsys: pytest.CaptureFixture[str], entry: Callable[[], Any]) -> str:
    """Run an entry as its CLI does (report_user_errors); it must exit 2 with exactly one `ssl_train error:` line on stderr."""
    with pytest.raises(SystemExit) as stopped:
        report_user_errors(entry)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert stopped.value.code == 2 and len(lines) == 1 and lines[0].startswith("ssl_train error: "), err
    return lines[0]


def entries(ckpt: Path, out: Path) -> dict[str, Callable[[], Any]]:
    """Every entry that reads a checkpoint's stored config: the eval CLI, the toolkit commands."""
    eval_cfg = compose_config([f"ckpt_path={ckpt}", "eval=[linear]"], out / "eval", config_name="probe")
    toolkit_args = {"export": [], "embed": [], "search": [], "anomaly": ["--holdout-class", "0"], "map": ["--method", "pca"], "views": []}
    found: dict[str, Callable[[], Any]] = {"eval": lambda: evaluate_checkpoint(eval_cfg)}
    for command, extra in toolkit_args.items():
        found[command] = lambda command=command, extra=extra: toolkit([command, "--ckpt", str(ckpt), "--out", str(out / command), *extra])
    return found


@pytest.mark.parametrize("payload", list(stored_payloads(Path("m"), Path("v"))))
def test_stored_config_payloads_are_refused_by_every_entry(
    payload: str, trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(SECRET_NAME, SECRET)
    marker, victim = tmp_path / "MARKER", tmp_path / "victim.txt"
    victim.write_text("the user's own file\n")
    checkpoint = torch.load(trained, weights_only=True)
    stored_payloads(marker, victim)[payload](checkpoint[ConfigInCheckpoint.KEY])
    crafted = tmp_path / "crafted.ckpt"
    torch.save(checkpoint, crafted)
    for name, entry in entries(crafted, tmp_path / "out").items():
        before = snapshot(tmp_path)
        line = one_refusal(capsys, entry)
        assert "stored config key" in line and "refused (nothing stored is code)" in line, (name, line)
        assert_unharmed(before, tmp_path, marker, line)
    # resume and backbone.weights read the state dict only: the payload is never looked at, the run goes on
    for name, override in (("resume", f"ckpt_path={crafted}"), ("weights", f"backbone.weights={crafted}")):
        before = snapshot(tmp_path)
        run(compose_config([*QUIET, override], tmp_path / name))
        assert_unharmed(before, tmp_path, marker, capsys.readouterr().err)


def test_pickle_payload_in_the_checkpoint_file_is_refused_by_every_entry(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    marker, crafted = tmp_path / "MARKER", tmp_path / "crafted.ckpt"

    class Payload:
        def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
            return os.system, (f"touch {marker}",)

    torch.save({"state_dict": {}, ConfigInCheckpoint.KEY: {}, "x": Payload()}, crafted)
    calls = {
        **entries(crafted, tmp_path / "out"),
        "resume": lambda: run(compose_config([*QUIET, f"ckpt_path={crafted}"], tmp_path / "resume")),
        "weights": lambda: run(compose_config([*QUIET, f"backbone.weights={crafted}"], tmp_path / "weights")),
    }
    for name, entry in calls.items():
        before = snapshot(tmp_path)
        line = one_refusal(capsys, entry)
        assert "names code (posix.system) that it needs to load" in line, (name, line)
        assert_unharmed(before, tmp_path, marker, line)


def export_folder(trained: Path, where: Path) -> Path:
    """A real export of the trained encoder (config.json + model.safetensors), made before the attack."""
    return Path(toolkit(["export", "--ckpt", str(trained), "--out", str(where)])["export_dir"])


@pytest.mark.parametrize(
    "encoder",
    [
        {"_target_": "torch.utils.collect_env.run", "command": "touch MARKER"},
        {"_target_": "torch.os.system", "command": "touch MARKER"},
        {
            "_target_": "ssl_train.encoders.resnet.SmallResNet",
            "in_channels": 1,
            "widths": {"_target_": "torch.utils.collect_env.run", "command": "touch MARKER"},
        },
        {"_target_": "ssl_train.encoders.resnet.SmallResNet", "in_channels": 1, "_partial_": True, "widths": [8, 16]},
        {"_target_": "ssl_train.encoders.resnet.SmallResNet", "in_channels": f"${{oc.env:{SECRET_NAME}}}"},
        "ssl_train.encoders.resnet.SmallResNet",
        {"_target_": "ssl_train.encoders.resnet.SmallResNet", "in_channels": 1, "widths": [8, 1_000_000]},
        {"_target_": "ssl_train.encoders.timm_encoder.TimmEncoder", "name": 5},
        "DEEP",
    ],
    ids=["shell_runner", "alias", "nested_target", "special_key", "resolver", "not_a_mapping", "absurd_arguments", "wrong_type", "deep_nesting"],
)
def test_export_folder_payloads_are_refused_by_load_encoder(
    encoder: Any, trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(SECRET_NAME, SECRET)
    monkeypatch.chdir(tmp_path)  # where `touch MARKER` would land
    folder = export_folder(trained, tmp_path / "export")
    config = json.loads((folder / "config.json").read_text())
    text = json.dumps({**config, "encoder": encoder})
    (folder / "config.json").write_text(text.replace('"DEEP"', "[" * 100_000 + "]" * 100_000))  # deeper than Python's recursion limit
    before = snapshot(tmp_path)
    line = one_refusal(capsys, lambda: load_export(folder))
    assert str(folder) in line
    assert_unharmed(before, tmp_path, tmp_path / "MARKER", line)


def test_data_pickle_payload_is_refused_as_a_data_option_and_in_a_stored_config(trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    marker = tmp_path / "MARKER"

    class Payload:
        def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
            return os.system, (f"touch {marker}",)

    root = make_cifar(tmp_path / "cifar")
    (root / "cifar-10-batches-py" / "data_batch_1").write_bytes(pickle.dumps({b"data": Payload(), b"labels": [0]}))
    as_option = lambda: run(compose_config([*QUIET, "data=cifar10", f"data.source.root={root}"], tmp_path / "option"))
    checkpoint = torch.load(trained, weights_only=True)
    checkpoint[ConfigInCheckpoint.KEY]["data"] = {"_target_": "ssl_train.data.datamodule.SSLDataModule", **checkpoint[ConfigInCheckpoint.KEY]["data"]}
    checkpoint[ConfigInCheckpoint.KEY]["data"]["source"] = {"_target_": "ssl_train.data.cifar_stl.CIFARSource", "root": str(root), "num_classes": 10}
    crafted = tmp_path / "crafted.ckpt"
    torch.save(checkpoint, crafted)
    for name, entry in {"data_option": as_option, **entries(crafted, tmp_path / "out")}.items():
        before = snapshot(tmp_path)
        line = one_refusal(capsys, entry)
        assert "would need code to load" in line or "stored config key" in line, (name, line)
        assert_unharmed(before, tmp_path, marker, line)


def test_decoder_crash_payload_is_skipped_not_fatal(trained: Path, tmp_path: Path) -> None:
    """The 69-byte PNG that segfaults torchvision's decoder, in an image folder, through the real CLIs (a crash there
    fails this test instead of killing pytest): the folder trains, and embeds, with that file skipped and counted."""
    root = make_image_folder(tmp_path / "images")
    (root / "train" / "class_0" / "crash.png").write_bytes(crashing_png())
    trained_run = subprocess.run(
        [
            sys.executable,
            "-m",
            "ssl_train",
            *TINY_DATA,
            *TINY_MODEL,
            *TINY_RUN,
            *QUIET,
            "data=image_folder",
            f"data.source.root={root}",
            "data.source.train_limit=null",
            "data.source.test_limit=null",
            "data.batch_size=8",
            "data.source.image_size=32",
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert trained_run.returncode == 0, trained_run.stderr[-2000:]
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["skipped_images"] == 1
    embedded = subprocess.run(
        [sys.executable, "-m", "ssl_train.toolkit", "embed", "--ckpt", str(trained), "--images", str(root / "train"), "--out", str(tmp_path / "embed")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert embedded.returncode == 0, embedded.stderr[-2000:]


@pytest.mark.parametrize(
    "runs",
    [
        {"mlflow": {"_target_": "torch.utils.collect_env.run", "command": "touch MARKER"}},
        {"mlflow": f"${{oc.env:{SECRET_NAME}}}"},
        {"mlflow": "x" * 500},
        ["wandb"],
        {"other": "abc"},
    ],
)
def test_tracker_run_ids_in_a_checkpoint_are_plain_ids_or_refused(
    runs: Any, trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Resuming with logger=mlflow or wandb passes the stored run id to the logger's constructor: a mapping there would be
    instantiated, an interpolation resolved (both did, before the ids were checked)."""
    from ssl_train.run import tracker_runs_to_continue
    from ssl_train.tracking.trackers import TRACKER_RUNS_KEY

    monkeypatch.setenv(SECRET_NAME, SECRET)
    monkeypatch.chdir(tmp_path)
    checkpoint = torch.load(trained, weights_only=True)
    checkpoint[TRACKER_RUNS_KEY] = runs
    crafted = tmp_path / "crafted.ckpt"
    torch.save(checkpoint, crafted)
    before = snapshot(tmp_path)
    cfg = compose_config([*QUIET, "logger=mlflow", f"ckpt_path={crafted}"], tmp_path / "resume")
    line = one_refusal(capsys, lambda: tracker_runs_to_continue(cfg, str(crafted)))
    assert "is not a mapping of tracker (mlflow, wandb) to a plain run id" in line
    assert_unharmed(before, tmp_path, tmp_path / "MARKER", line)


# --- weights-only reads, the _target_ allowlist, one-line errors for bad checkpoints -------------------------------


@pytest.fixture(scope="module")
def trained_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("run")
    run(compose_config(QUIET, out / "run"))
    return out / "run" / "checkpoints" / "last.ckpt"


def test_crafted_checkpoint_does_not_run_code(tmp_path: Path) -> None:
    marker, crafted = tmp_path / "marker", tmp_path / "crafted.ckpt"
    torch.save({"state_dict": {}, "payload": WritesMarkerWhenUnpickled(marker)}, crafted)
    for load in (lambda: read_checkpoint(crafted), lambda: encoder_from_checkpoint(crafted)):
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
        encoder_from_checkpoint(tampered, features="projector")
    assert is_allowed("ssl_train.heads.MLP", "head") and is_allowed("ssl_train.encoders.resnet.SmallResNet", "backbone")
    assert not is_allowed("ssl_train.heads.MLP", "backbone.widths")  # exact names where the configs build them, not anywhere
    assert not any(
        is_allowed(t, "backbone")
        for t in (
            "torch.nn.Linear",
            "torch.hub.load",
            "torch.utils.collect_env.run",
            "timm.create_model",
            "torch.os.system",
            "ssl_train.callbacks.subprocess.call",
            "builtins.eval",
        )
    )
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
        empty: "is empty",
        truncated: "truncated or corrupted",
        garbage: "truncated or corrupted",
        foreign: "not a Lightning/ssl_train checkpoint",
        lightning_only: "is not an ssl_train checkpoint",
        tmp_path / "missing.ckpt": "no checkpoint at",
    }
    for path, message in expected.items():
        with pytest.raises(UserError, match=message) as caught:
            encoder_from_checkpoint(path)
        assert "\n" not in str(caught.value)


def test_weights_of_another_backbone_version_stop_with_one_line(trained_checkpoint: Path, tmp_path: Path) -> None:
    checkpoint = torch.load(trained_checkpoint, weights_only=True)
    checkpoint[ConfigInCheckpoint.KEY]["backbone"]["widths"] = [8, 32]  # the config now builds other shapes than the weights
    other = tmp_path / "other.ckpt"
    torch.save(checkpoint, other)
    with pytest.raises(UserError, match=r"its backbone weights do not fit the backbone its config builds \(size mismatch for .*another version") as caught:
        encoder_from_checkpoint(other)
    assert "\n" not in str(caught.value)
    with pytest.raises(UserError, match=r"its weights do not fit this run's model"):  # resuming it into a run with the original widths
        run(compose_config([*QUIET, "backbone.widths=[8,32]", f"ckpt_path={trained_checkpoint}"], tmp_path / "resume"))
