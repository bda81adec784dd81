"""trainer=fsdp without processes: the config builds Lightning's Trainer with ssl_train.fsdp.FSDPStrategy, precision
maps to FSDP2's mixed-precision policy, and a sharded checkpoint (a file naming a DCP shard folder) is read whole, as
data only. The 2-process equivalence with DDP: tests/test_fsdp_equivalence.py; a whole run: tests/test_fsdp_e2e.py."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import hydra
import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch import nn

from ssl_train.checkpoint_io import read_checkpoint
from ssl_train.errors import UserError
from ssl_train.fsdp import FSDPStrategy, is_encoder, mixed_precision_policy
from ssl_train.sharded_checkpoint import SHARDS_KEY
from tests.fixtures import compose_config, one_line, tiny_vit

pytest.importorskip("timm")


def test_fsdp_config_builds_the_strategy_on_cpu(tmp_path: Path) -> None:
    cfg = compose_config(["trainer=fsdp", "trainer.accelerator=cpu", "trainer.precision=32-true", "backbone=vit_tiny"], tmp_path)
    trainer = hydra.utils.instantiate(cfg.trainer, _convert_="all")
    strategy = trainer.strategy
    assert isinstance(strategy, FSDPStrategy)
    assert strategy.wrap == ["Block"] and strategy.num_processes == 2 and strategy._save_distributed_checkpoint
    assert strategy.policy.param_dtype is None  # 32-true: fp32 throughout


def test_precision_follows_the_trainer() -> None:
    mixed = mixed_precision_policy("bf16-mixed")
    assert (mixed.param_dtype, mixed.reduce_dtype) == (torch.bfloat16, torch.float32)
    with pytest.raises(UserError) as error:
        mixed_precision_policy("16-mixed")
    assert "trainer.precision=16-mixed" in one_line(error) and "bf16-mixed" in one_line(error)


def test_encoders_are_units_and_other_modules_are_not() -> None:
    assert is_encoder(tiny_vit())
    assert not is_encoder(nn.Linear(2, 2))


def _sharded_checkpoint(folder: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    """A checkpoint file + shard folder as trainer=fsdp writes them (one process: no_dist), of a small model and its AdamW."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.randn(5, 3)).sum().backward()
    optimizer.step()
    name = "last.ckpt.shards-1-7"
    dcp.save({"state_dict": model.state_dict(), "optimizer_0": optimizer.state_dict()}, checkpoint_id=folder / name, no_dist=True)
    torch.save({"state_dict": {}, SHARDS_KEY: name, "global_step": 1, "epoch": 0}, folder / "last.ckpt")
    return folder / "last.ckpt", {k: v.clone() for k, v in model.state_dict().items()}


def test_a_sharded_checkpoint_is_read_whole(tmp_path: Path) -> None:
    path, expected = _sharded_checkpoint(tmp_path)
    checkpoint = read_checkpoint(path)
    assert checkpoint["global_step"] == 1 and SHARDS_KEY not in checkpoint
    assert set(checkpoint["state_dict"]) == set(expected)
    for key, value in expected.items():
        assert torch.equal(checkpoint["state_dict"][key], value), key


class _Payload:
    def __reduce__(self) -> tuple:
        return (os.system, ("echo pwned",))


def test_shard_metadata_that_names_code_is_refused(tmp_path: Path) -> None:
    path, _ = _sharded_checkpoint(tmp_path)
    (tmp_path / "last.ckpt.shards-1-7" / ".metadata").write_bytes(pickle.dumps(_Payload()))
    with pytest.raises(UserError) as error:
        read_checkpoint(path)
    assert "posix.system" in one_line(error) or "os.system" in one_line(error)
    assert "trust_checkpoint=true" in one_line(error)


def test_missing_shards_are_named(tmp_path: Path) -> None:
    path, _ = _sharded_checkpoint(tmp_path)
    for file in (tmp_path / "last.ckpt.shards-1-7").iterdir():
        file.unlink()
    with pytest.raises(UserError) as error:
        read_checkpoint(path)
    assert "shards" in one_line(error) and "missing" in one_line(error)
