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

from ssl_train.build import instantiate
from ssl_train.checkpoint_io import read_checkpoint
from ssl_train.errors import UserError
from ssl_train.fsdp import FSDPStrategy, is_encoder, mixed_precision_policy, without_rank_zero_encoder_callbacks
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


def test_callbacks_that_run_the_encoder_on_rank_zero_alone_are_taken_out(tmp_path: Path) -> None:
    """The online evaluation and the training pictures (its embedding maps) run the encoder on rank 0 alone: sharded, rank 0
    waited forever in its first all-gather (the 2-process run hung at its last epoch's end). Every other callback stays."""
    cfg = compose_config(["trainer=fsdp", "trainer.accelerator=cpu", "trainer.precision=32-true", "backbone=vit_tiny"], tmp_path)
    callbacks = [instantiate("callbacks", node) for node in cfg.callbacks.values() if node is not None]
    kept, dropped = without_rank_zero_encoder_callbacks(callbacks)
    assert dropped == ["callbacks.online_eval", "callbacks.pictures"]
    assert {type(c).__name__ for c in callbacks} - {type(c).__name__ for c in kept} == {"OnlineEvaluation", "TrainingPictures"}
    assert len(kept) == len(callbacks) - 2 and sum(type(c).__name__ in ("ModelCheckpoint", "BestCheckpoint") for c in kept) == 2


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


def test_shard_metadata_reaching_code_through_an_allowed_module_is_refused(tmp_path: Path) -> None:
    """A protocol-4 pickle naming os.system as an attribute chain of DCP's metadata module (which imports os) runs nothing."""
    path, _ = _sharded_checkpoint(tmp_path)
    marker = tmp_path / "pwned"
    command = f"touch {marker}".encode()
    payload = b"\x80\x04ctorch.distributed.checkpoint.metadata\nos.system\nX" + len(command).to_bytes(4, "little") + command + b"\x85R."
    (tmp_path / "last.ckpt.shards-1-7" / ".metadata").write_bytes(payload)
    with pytest.raises(UserError) as error:
        read_checkpoint(path)
    assert not marker.exists() and "os.system is not DCP metadata" in one_line(error)


def test_shard_entries_and_folder_names_stay_inside_the_checkpoint_folder(tmp_path: Path) -> None:
    """Storage entries naming a file elsewhere (absolute or ../), and a checkpoint naming '..' as its shard folder, are one line."""
    path, _ = _sharded_checkpoint(tmp_path)
    secret = tmp_path.parent / f"{tmp_path.name}-secret.pt"
    torch.save({"w": torch.arange(4.0)}, secret)
    metadata_path = tmp_path / "last.ckpt.shards-1-7" / ".metadata"
    metadata = pickle.loads(metadata_path.read_bytes())
    for escape in (str(secret), f"../../{secret.name}"):
        for info in metadata.storage_data.values():
            info.relative_path = escape
        metadata_path.write_bytes(pickle.dumps(metadata))
        with pytest.raises(UserError) as error:
            read_checkpoint(path)
        assert "not a file of the shard folder" in one_line(error)
    torch.save({"state_dict": {}, SHARDS_KEY: "..", "global_step": 1}, path)
    with pytest.raises(UserError) as error:
        read_checkpoint(path)
    assert "names the shard folder '..'" in one_line(error)


def test_optimizer_states_load_as_saved_when_a_parameter_had_no_gradient(tmp_path: Path) -> None:
    """A parameter without a gradient before the save (DINO's last layer, frozen in the first epoch) has no optimizer
    state: resuming reads the states the checkpoint holds and gives that parameter none, as in the run that saved it
    (the template torch makes for loading holds every parameter's state: DCP stopped on the missing key)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict, set_optimizer_state_dict

    from ssl_train.optim import LARS
    from ssl_train.sharded_checkpoint import saved_states_only

    def trained() -> tuple[nn.Module, torch.optim.Optimizer]:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
        return model, LARS(model.parameters(), lr=0.1, weight_decay=1e-4)

    model, optimizer = trained()
    model(torch.randn(5, 3)).sum().backward()
    model[1].weight.grad = None  # frozen this step: no state for it
    optimizer.step()
    dcp.save({"optimizer_0": get_optimizer_state_dict(model, optimizer)}, checkpoint_id=tmp_path, no_dist=True)
    saved = set(dcp.FileSystemReader(tmp_path).read_metadata().state_dict_metadata)

    resumed, fresh = trained()
    template = get_optimizer_state_dict(resumed, fresh)
    assert "1.weight" in template["state"]  # torch initialises every state for loading
    state = {"optimizer_0": saved_states_only(template, "optimizer_0", saved)}
    dcp.load(state, checkpoint_id=tmp_path, no_dist=True)
    set_optimizer_state_dict(resumed, fresh, optim_state_dict=state["optimizer_0"], options=StateDictOptions(strict=False))
    assert resumed[1].weight not in fresh.state and len(fresh.state) == len(optimizer.state) == 3
    for before, after in zip(model.parameters(), resumed.parameters(), strict=True):
        if before in optimizer.state:
            assert torch.equal(fresh.state[after]["momentum_buffer"], optimizer.state[before]["momentum_buffer"])
