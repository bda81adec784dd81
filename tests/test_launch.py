"""The method's name comes from the option chosen (method=..., or an experiment's), is stored with the run's config, and
is read back from there (older checkpoints: their method.name)."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from ssl_train.composed import CONFIG_DIR, compose_run_config
from ssl_train.launch import method_name_of, with_method_name


def test_method_files_do_not_name_themselves() -> None:
    """The option's file name is the method's name: a `name:` line could only disagree with it."""
    named = [p.name for p in (CONFIG_DIR / "method").glob("*.yaml") if "name" in (OmegaConf.load(p).get("method") or {})]
    assert not named


@pytest.mark.parametrize(
    ("overrides", "name"),
    [
        ([], "simclr"),
        (["method=ibot"], "ibot"),
        (["method=tico"], "tico"),
        (["experiment=dino_vit_tiny"], "dino"),
        (["experiment=simcse_ngram_wordnet"], "simcse"),
    ],
)
def test_a_composed_config_names_the_method_hydra_chose(overrides: list[str], name: str, tmp_path: Path) -> None:
    """Outside a Hydra app (plan, verify_dist, the toolkit) the compose API's choices name it, as the command line's do."""
    assert method_name_of(compose_run_config(overrides, tmp_path)) == name


def test_the_launch_choice_is_stored_and_old_configs_are_read_by_method_name() -> None:
    cfg = OmegaConf.create({"method_name": None, "method": {"_target_": "x"}})
    assert method_name_of(cfg) is None
    named = with_method_name(cfg, {"method": "byol", "backbone": "small_resnet"})
    assert method_name_of(named) == "byol" and cfg.method_name is None  # the caller's config is left as it was
    assert with_method_name(cfg, {}) is cfg and with_method_name(cfg, {"method": "None"}) is cfg
    assert method_name_of({"method": {"_target_": "x", "name": "mocov2"}}) == "mocov2"  # a checkpoint written before
    assert method_name_of({"method_name": "swav", "method": {"name": "old"}}) == "swav"
