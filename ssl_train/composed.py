"""The run's config composed outside a Hydra app (verify_dist, plan): the same tree and overrides as `python -m ssl_train`."""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from ssl_train.checkpoint_io import first_line
from ssl_train.errors import UserError

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


def compose_run_config(overrides: list[str], output_dir: Path, extra: list[str] | None = None) -> DictConfig:
    """configs/train.yaml with `extra` then the user's `overrides` (theirs win), paths.output_dir set to `output_dir` (the
    run's ${hydra:runtime.output_dir} does not exist outside a run); a bad override is one line naming it."""
    try:
        with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
            return compose("train", overrides=[*(extra or []), *overrides, f"paths.output_dir={output_dir}"])
    except (HydraException, OmegaConfBaseException) as error:
        raise UserError(f"overrides {' '.join(overrides) or '(none)'}: {first_line(error)}") from None
