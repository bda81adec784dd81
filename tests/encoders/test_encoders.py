"""The encoders package: every encoder config builds from its new module, and checkpoints / exports written before the
move (which store the old dotted names) still load as data, by exact name only."""

from __future__ import annotations

import importlib

import pytest
import torch

from ssl_train.errors import UserError
from ssl_train.portable import build_from_spec
from ssl_train.trust import MOVED_TARGETS, is_allowed, registered_targets, stored_config


def test_every_moved_name_points_at_a_registered_class_of_the_same_name() -> None:
    registered = frozenset().union(*registered_targets().values())
    for old, new in MOVED_TARGETS.items():  # encoders (ssl_train.encoders) and the masked-modelling methods (one module each)
        assert new.startswith(("ssl_train.encoders.", "ssl_train.methods.")) and new.rsplit(".", 1)[-1] == old.rsplit(".", 1)[-1]
        assert new in registered, new
    module, _, name = MOVED_TARGETS["ssl_train.backbones.SmallResNet"].rpartition(".")
    assert hasattr(importlib.import_module(module), name)


def test_an_export_naming_the_old_module_still_builds() -> None:
    encoder = build_from_spec({"_target_": "ssl_train.backbones.SmallResNet", "in_channels": 1, "widths": [8, 16]}, "old-export")
    assert type(encoder).__module__ == "ssl_train.encoders.resnet" and encoder(torch.zeros(2, 1, 28, 28)).shape == (2, encoder.out_dim)


def test_a_stored_config_naming_the_old_module_reads_as_the_new_one() -> None:
    cfg = stored_config(
        {"backbone": {"_target_": "ssl_train.text_encoders.CharCNNEncoder"}, "text_encoder": {"_target_": "ssl_train.text_encoders.CharCNNEncoder"}}, "old.ckpt"
    )
    assert cfg.backbone._target_ == cfg.text_encoder._target_ == "ssl_train.encoders.text.CharCNNEncoder"


def test_old_names_are_exact_never_a_prefix() -> None:
    assert is_allowed("ssl_train.backbones.SmallResNet", "backbone")
    assert not is_allowed("ssl_train.backbones.NORMS", "backbone") and not is_allowed("ssl_train.backbones", "backbone")
    with pytest.raises(UserError, match="not a component"):
        build_from_spec({"_target_": "ssl_train.backbones._norm", "kind": "batch", "channels": 4}, "crafted")
