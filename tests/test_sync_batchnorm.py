"""SyncBatchNorm follows the number of processes: trainer=gpu with several devices syncs BN as trainer=ddp does."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra.utils import instantiate

from tests.fixtures import compose_config


@pytest.mark.parametrize(("trainer", "devices", "synced"), [("gpu", 1, False), ("gpu", 2, True), ("ddp", 2, True), ("ddp_cpu", 2, False)])
def test_batchnorm_is_synchronised_whenever_several_gpu_processes_run(tmp_path: Path, trainer: str, devices: int, synced: bool) -> None:
    # the GPU recipes composed as they are, the Trainer built on CPU (the strategy and its layer sync do not need a GPU)
    cfg = compose_config([f"trainer={trainer}", f"trainer.devices={devices}", "trainer.accelerator=cpu", "trainer.precision=32-true"], tmp_path)
    built = instantiate(cfg.trainer, logger=False, enable_checkpointing=False)
    assert built.world_size == devices
    assert (getattr(built.strategy, "_layer_sync", None) is not None) is synced  # Lightning converts BN to SyncBatchNorm at fit
    assert cfg.trainer.sync_batchnorm is (trainer != "ddp_cpu")  # ddp_cpu: gloo on CPU, where SyncBatchNorm cannot run


def test_synchronised_batchnorm_on_several_cpu_processes_is_refused_in_one_line(tmp_path: Path) -> None:
    from ssl_train.build import build
    from ssl_train.errors import UserError

    cfg = compose_config(["trainer=gpu", "trainer.devices=2", "trainer.accelerator=cpu", "trainer.precision=32-true"], tmp_path)
    with pytest.raises(UserError, match="sync_batchnorm=true needs GPUs"):  # one CPU process (devices=1) builds: a no-op there
        build(cfg)
