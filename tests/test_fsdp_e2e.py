"""trainer=fsdp end to end on 2 gloo CPU processes: DINO (EMA teacher, LARS, gradient clipping) with a 2-block ViT trains
2 epochs, writing a sharded checkpoint (a checkpoint file naming one shard folder) at each epoch's end; a run resumed from
the epoch-0 checkpoint of that same run (same schedules: a shorter run's learning-rate and momentum schedules differ)
reaches its final step with its weights, evaluates after training, and exports the same model.safetensors keys as DDP."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ssl_train.checkpoint_io import read_checkpoint
from ssl_train.sharded_checkpoint import SHARDS_KEY

pytestmark = [pytest.mark.slow, pytest.mark.ddp]
pytest.importorskip("timm")
COMMON = [
    "method=dino",
    "backbone=vit_tiny",
    "backbone.model_kwargs.depth=2",
    "augment.num_local=2",
    "data.source.train_limit=64",
    "data.source.test_limit=32",
    "data.batch_size=16",
    "data.num_workers=0",
    "trainer.limit_train_batches=2",
    "trainer.enable_progress_bar=false",
    "eval.linear.max_iter=10",
    "baseline=false",
]
FSDP = ["trainer=fsdp", "trainer.accelerator=cpu", "trainer.precision=32-true", "trainer.devices=2"]


def _run(cwd: Path, *args: str) -> None:
    out = subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]


def _train(tmp_path: Path, name: str, *extra: str) -> Path:
    run_dir = tmp_path / name
    _run(tmp_path, "-m", "ssl_train", *COMMON, *extra, f"hydra.run.dir={run_dir}")
    return run_dir


def test_sharded_checkpoint_resumes_exactly_and_exports_like_ddp(tmp_path: Path) -> None:
    every_epoch = [  # besides last.ckpt: epoch0.ckpt and epoch1.ckpt, each naming its own shard folder
        "+callbacks.epochs._target_=lightning.pytorch.callbacks.ModelCheckpoint",
        f"+callbacks.epochs.dirpath={tmp_path / 'whole' / 'checkpoints'}",
        "+callbacks.epochs.filename='epoch{epoch}'",
        "+callbacks.epochs.auto_insert_metric_name=false",
        "+callbacks.epochs.save_top_k=-1",
        "+callbacks.epochs.mode=max",  # without a monitor no effect, but a state key other than last_checkpoint's (Lightning refuses twins)
    ]
    whole = _train(tmp_path, "whole", *FSDP, "trainer.max_epochs=2", "probe=false", *every_epoch)
    first = whole / "checkpoints" / "epoch0.ckpt"
    meta = torch.load(first, weights_only=True)
    assert meta["state_dict"] == {} and meta["global_step"] == 2
    assert [p.name for p in first.parent.glob("epoch0.ckpt.shards-*")] == [meta[SHARDS_KEY]]
    last = whole / "checkpoints" / "last.ckpt"
    assert [p.name for p in last.parent.glob("last.ckpt.shards-*")] == [torch.load(last, weights_only=True)[SHARDS_KEY]]  # epoch 0's removed
    resumed = _train(tmp_path, "resumed", *FSDP, "trainer.max_epochs=2", f"ckpt_path={first}")

    expected, actual = (read_checkpoint(run / "checkpoints" / "last.ckpt") for run in (whole, resumed))
    assert actual["global_step"] == expected["global_step"] == 4
    teacher = [k for k in expected["state_dict"] if k.startswith("method.teacher.")]
    assert teacher
    assert set(actual["state_dict"]) == set(expected["state_dict"])
    for key, value in expected["state_dict"].items():
        torch.testing.assert_close(actual["state_dict"][key], value, atol=1e-5, rtol=1e-4, msg=key)
    assert "linear_top1" in json.loads((resumed / "metrics.json").read_text())  # the evaluation after training ran (unwrapped model)

    ddp = _train(tmp_path, "ddp", "trainer=ddp_cpu", "trainer.max_epochs=1", "probe=false")
    exports = {}
    for name, run in (("fsdp", resumed), ("ddp", ddp)):
        _run(tmp_path, "-m", "ssl_train.toolkit", "export", "--ckpt", str(run / "checkpoints" / "last.ckpt"), "--out", str(tmp_path / f"export_{name}"))
        exports[name] = load_file(tmp_path / f"export_{name}" / "model.safetensors")
    assert {k: v.shape for k, v in exports["fsdp"].items()} == {k: v.shape for k, v in exports["ddp"].items()}
    for key, value in exports["fsdp"].items():  # the export holds the gathered student backbone
        assert torch.equal(value, actual["state_dict"][f"method.backbone.model.{key}"]), key
