"""Bad input gives one clear line naming the key and what to do, never a deep traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from ssl_train.build import build
from ssl_train.errors import DataNotFoundError, UserError
from tests.fixtures import compose_config


def test_missing_dataset_folder_names_key_and_fix(tmp_path: Path) -> None:
    cfg = compose_config(["data=fashion_mnist", f"data.source.root={tmp_path / 'nowhere'}"], tmp_path)
    with pytest.raises(DataNotFoundError, match=r"data\.source\.root: folder .*nowhere does not exist.*dataset-fashion-mnist"):
        build(cfg)


def test_missing_dataset_file_names_the_file(tmp_path: Path, idx_root: Path) -> None:
    (idx_root / "t10k-labels-idx1-ubyte.gz").unlink()
    cfg = compose_config(["data=fashion_mnist", f"data.source.root={idx_root}"], tmp_path)
    with pytest.raises(DataNotFoundError, match=r"expected t10k-labels-idx1-ubyte\[\.gz\] in"):
        build(cfg)


def test_batch_that_does_not_divide_across_devices(tmp_path: Path) -> None:
    cfg = compose_config(["data.batch_size=33", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy=ddp"], tmp_path)
    with pytest.raises(UserError, match=r"data\.batch_size=33 .* does not divide across 2 processes"):
        build(cfg)


def test_bad_component_argument_names_the_group(tmp_path: Path) -> None:
    cfg = compose_config(["backbone.norm=weird"], tmp_path)
    with pytest.raises(UserError, match=r"backbone=\?: ValueError: SmallResNet: norm must be one of"):
        build(cfg)


def test_unknown_lr_scaling_lists_allowed_values(tmp_path: Path) -> None:
    cfg = compose_config(["optim.lr_scaling=cubic"], tmp_path)
    with pytest.raises(UserError, match=r"optim.lr_scaling='cubic' is not one of \('none', 'linear', 'sqrt'\)"):
        build(cfg)
