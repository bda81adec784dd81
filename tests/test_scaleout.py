"""Scale-out semantics on one CPU: resume from `last`, NaN stop, atomic checkpoints, accumulation LR, precision, speed switches."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ssl_train.checkpoint_io import AtomicCheckpointIO
from ssl_train.encoders.resnet import SmallResNet
from ssl_train.errors import UserError
from ssl_train.losses import NTXentLoss
from ssl_train.module import SSLModule
from ssl_train.run import run
from ssl_train.sweep import write_summary
from tests.fixtures import compose_config

QUIET = ["probe=false", "baseline=false"]


def test_ckpt_path_last_resumes_newest_run(tmp_path: Path) -> None:
    runs = tmp_path / "outputs"
    run(compose_config([*QUIET, f"paths.runs_dir={runs}"], runs / "a"))
    resumed = run(compose_config([*QUIET, f"paths.runs_dir={runs}", "ckpt_path=last", "trainer.max_epochs=2"], runs / "b"))
    assert resumed["steps"] == 4


def test_ckpt_path_last_without_runs_is_clear(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="ckpt_path=last: no checkpoints/last.ckpt under"):
        run(compose_config([*QUIET, f"paths.runs_dir={tmp_path / 'none'}", "ckpt_path=last"], tmp_path / "run"))


def test_run_killed_mid_epoch_resumes_state_and_finishes_with_same_step_count(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A crash mid-epoch 2 of 3 (MoCo v2: EMA target + queue): resuming from last.ckpt restores them and ends at the same step."""
    overrides = [*QUIET, "method=mocov2", "trainer.max_epochs=3"]
    uninterrupted = run(compose_config(overrides, tmp_path / "full"))
    original_step = SSLModule.training_step

    def crash_at_step_3(self, batch, batch_idx):  # same signature as the real training_step
        if self.global_step == 3:
            raise RuntimeError("simulated kill")
        return original_step(self, batch, batch_idx)

    monkeypatch.setattr(SSLModule, "training_step", crash_at_step_3)
    with pytest.raises(RuntimeError, match="simulated kill"):
        run(compose_config(overrides, tmp_path / "killed"))
    monkeypatch.setattr(SSLModule, "training_step", original_step)
    checkpoint = torch.load(tmp_path / "killed" / "checkpoints" / "last.ckpt", weights_only=False)
    assert checkpoint["global_step"] == 2  # end of epoch 1: the half-done epoch 2 is redone
    seen = {}

    def record_restored_state(self) -> None:
        seen.update({k: v.detach().clone() for k, v in self.state_dict().items() if "queue" in k or "target.backbone" in k})

    monkeypatch.setattr(SSLModule, "on_train_start", record_restored_state, raising=False)
    resumed = run(compose_config([*overrides, f"ckpt_path={tmp_path / 'killed' / 'checkpoints' / 'last.ckpt'}"], tmp_path / "resumed"))
    assert resumed["steps"] == uninterrupted["steps"] == 6
    assert any("queue" in k for k in seen) and any("target.backbone" in k for k in seen)
    for key, value in seen.items():
        torch.testing.assert_close(value, checkpoint["state_dict"][key], msg=key)


def test_nan_loss_stops_with_message_and_keeps_last_good_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"n": 0}
    original = NTXentLoss.forward

    def poisoned(self, z_a, z_b):  # same signature as the real forward
        calls["n"] += 1
        return original(self, z_a, z_b) * (float("nan") if calls["n"] > 2 else 1.0)

    monkeypatch.setattr(NTXentLoss, "forward", poisoned)
    with pytest.raises(UserError, match=r"train/loss is nan at step 2: training stopped; the last good checkpoint is kept"):
        run(compose_config([*QUIET, "trainer.max_epochs=3"], tmp_path / "run"))
    checkpoint = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=False)
    assert checkpoint["global_step"] == 2 and all(torch.isfinite(v).all() for v in checkpoint["state_dict"].values() if v.is_floating_point())


def test_atomic_checkpoint_io_replaces_whole_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"step": 1}, target)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt("killed mid-write")

    monkeypatch.setattr(torch, "save", killed)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"step": 2}, target)
    monkeypatch.undo()
    assert torch.load(target) == {"step": 1}  # the old file is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]  # no staging file left behind


def test_gradient_accumulation_scales_effective_lr_with_images_per_step(tmp_path: Path) -> None:
    cfg = compose_config([*QUIET, "trainer.accumulate_grad_batches=2", "trainer.limit_train_batches=4"], tmp_path / "run")
    metrics = run(cfg)
    assert metrics["effective_lr"] == pytest.approx(cfg.optim.optimizer.lr * (32 * 2) / 256)  # base lr x images per optimizer step / 256
    assert metrics["steps"] == 2


@pytest.mark.parametrize(
    "overrides",
    [
        ["trainer.precision=bf16-mixed"],
        ["channels_last=false"],
        ["method=byol", "channels_last=true"],
        ["augment.on_device=true"],
        ["method=dino", "augment.on_device=true"],
    ],
)
def test_precision_and_memory_format_switches_train(tmp_path: Path, overrides: list[str]) -> None:
    metrics = run(compose_config(overrides, tmp_path / "run"))
    assert metrics["steps"] == 2 and (metrics["linear_top1"] * 64).is_integer()  # trained and probed on the 64 test images


def test_channels_last_auto_follows_the_backbone(tmp_path: Path) -> None:
    from ssl_train.build import build, use_channels_last
    from ssl_train.eval.baselines import RawInput

    assert use_channels_last("auto", SmallResNet()) is True and use_channels_last("auto", RawInput()) is False
    assert use_channels_last(False, SmallResNet()) is False
    # stages narrower than 16 channels stay NCHW under auto: torch 2.14.1 aborts (heap corruption) in the NHWC backward
    # of their strided 1x1 conv at >= 64 px, e.g. widths (8, 16) on an image folder
    assert use_channels_last("auto", SmallResNet(widths=(8, 16))) is False and use_channels_last("auto", SmallResNet(widths=(16, 32))) is True
    with pytest.raises(UserError, match="channels_last must be true, false or auto"):
        use_channels_last("yes", SmallResNet())
    module = build(compose_config(["backbone.widths=[16,32]"], tmp_path / "run")).module
    assert module.channels_last and module.method.backbone.net[0].weight.is_contiguous(memory_format=torch.channels_last)


def test_compile_auto_only_on_cuda(tmp_path: Path) -> None:
    from ssl_train.build import build, use_compile

    assert use_compile("auto", on_cuda=True) is True and use_compile("auto", on_cuda=False) is False
    assert use_compile(True, on_cuda=False) is True and use_compile(False, on_cuda=True) is False
    with pytest.raises(UserError, match="compile must be true, false or auto"):
        use_compile("yes", on_cuda=True)
    backbone = build(compose_config([], tmp_path / "run")).method.backbone
    assert not hasattr(backbone, "_compiled_call_impl") or backbone._compiled_call_impl is None  # the CPU default stays eager


def test_sweep_summary_tables(tmp_path: Path) -> None:
    for job, top1 in (("0", 0.5), ("1", 0.75)):
        (tmp_path / job / ".hydra").mkdir(parents=True)
        (tmp_path / job / ".hydra" / "overrides.yaml").write_text(f"- optim.optimizer.lr={job}\n- seed=3\n")
        (tmp_path / job / "metrics.json").write_text(json.dumps({"method": "simclr", "linear_top1": top1}))
    rows = write_summary(tmp_path)
    assert [r["linear_top1"] for r in rows] == [0.5, 0.75]
    table = (tmp_path / "summary.md").read_text()
    assert "| 1 | optim.optimizer.lr=1 | simclr | 0.7500 |" in table
    assert (tmp_path / "summary.csv").read_text().splitlines()[0].startswith("job,overrides,")


def test_ema_hook_fires_once_per_optimizer_step_under_accumulation(tmp_path: Path) -> None:
    from ssl_train.build import build

    built = build(compose_config([*QUIET, "method=byol", "trainer.accumulate_grad_batches=2", "trainer.limit_train_batches=4"], tmp_path / "run"))
    calls: list[int] = []
    original = built.method.on_optimizer_step
    built.method.on_optimizer_step = lambda step, max_steps: (calls.append(step), original(step, max_steps))
    built.trainer.fit(built.module, datamodule=built.datamodule)
    assert calls == [1, 2]  # not after the first micro-batch (no optimizer step yet), once per step after


def test_last_checkpoint_every_epoch_even_when_validation_is_sparse(tmp_path: Path) -> None:
    run(compose_config([*QUIET, "trainer.check_val_every_n_epoch=5"], tmp_path / "run"))  # 1 epoch, no validation
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()
