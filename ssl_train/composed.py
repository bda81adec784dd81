"""The project's config tree and the run's config composed outside a Hydra app: the one home of both.

CONFIG_DIR is what `python -m ssl_train` and `python -m ssl_train.eval` read (their `@hydra.main(config_path=...)`), what
ssl_train.trust and ssl_train.modalities.check scan, and what verify_dist, plan, the toolkit and scripts/ compose from.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from ssl_train.errors import UserError

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


def compose_config(overrides: list[str], config_name: str = "train") -> DictConfig:
    """configs/<config_name>.yaml with `overrides`, as Hydra composes it, with `method_name` the method option Hydra chose
    (as `python -m ssl_train` stores it); a bad override raises Hydra's own error."""
    from hydra import compose, initialize_config_dir  # here: reading CONFIG_DIR (ssl_train.trust, load_encoder) needs no Hydra

    from ssl_train.launch import from_composed

    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        return from_composed(compose(config_name, overrides=overrides, return_hydra_config=True))


def compose_run_config(overrides: list[str], output_dir: Path | str | None = None, extra: list[str] | None = None) -> DictConfig:
    """configs/train.yaml with `extra` then the user's `overrides` (theirs win), paths.output_dir set to `output_dir` when
    given (the run's ${hydra:runtime.output_dir} does not exist outside a run); a bad override is one line naming it."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from ssl_train.checkpoint_io import first_line  # here, as Hydra: importing CONFIG_DIR stays light (no Lightning)

    output = [] if output_dir is None else [f"paths.output_dir={output_dir}"]
    try:
        return compose_config([*(extra or []), *overrides, *output])
    except (HydraException, OmegaConfBaseException) as error:
        raise UserError(f"overrides {' '.join(overrides) or '(none)'}: {first_line(error)}") from None
