"""`python -m ssl_train [overrides]`: pretrain and evaluate; see configs/train.yaml. The one place that reads Hydra's runtime state."""

from __future__ import annotations

from typing import cast

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from ssl_train.cli import report_user_errors
from ssl_train.composed import CONFIG_DIR
from ssl_train.errors import UserError
from ssl_train.launch import Launch
from ssl_train.metrics import LINEAR_TOP1
from ssl_train.run import run


def hydra_files(task_cfg: DictConfig) -> dict[str, str]:
    """The texts of Hydra's config.yaml, hydra.yaml and overrides.yaml, for run_dir to write into <run dir>/.hydra once the
    run owns the directory (configs/hydra/default.yaml sets output_subdir: null); none when Hydra writes them itself, or
    when the config was composed (the compose API) rather than run by Hydra."""
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.output_subdir is not None or OmegaConf.select(cast(DictConfig, hydra_cfg), "runtime.output_dir", default=None, throw_on_missing=False) is None:
        return {}
    return {
        "config.yaml": OmegaConf.to_yaml(task_cfg),
        "hydra.yaml": OmegaConf.to_yaml(HydraConfig.instance().cfg),
        "overrides.yaml": OmegaConf.to_yaml(hydra_cfg.overrides.task),
    }


def launch_of(task_cfg: DictConfig) -> Launch:
    """What run(cfg) needs from Hydra's runtime state: the chosen options, the typed overrides and Hydra's config files."""
    hydra_cfg = HydraConfig.get()
    choices = {str(group): str(choice) for group, choice in hydra_cfg.runtime.choices.items()}  # a null choice reads 'None'
    return Launch(choices=choices, overrides=list(hydra_cfg.overrides.task), hydra_files=hydra_files(task_cfg))


def refuse_local_multirun_with_ddp(cfg: DictConfig) -> None:
    """A local (-m, basic launcher) sweep cannot run multi-process DDP: Lightning re-executes the whole command per rank."""
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode != RunMode.MULTIRUN or "BasicLauncher" not in str(hydra_cfg.launcher.get("_target_", "")):
        return
    devices, nodes = cfg.trainer.devices, cfg.trainer.num_nodes
    if nodes > 1 or (isinstance(devices, int) and devices > 1) or devices in (-1, "auto") and "ddp" in str(cfg.trainer.strategy):
        raise UserError(
            f"trainer.devices={devices}, trainer.num_nodes={nodes} with a local -m sweep: Lightning would re-launch the whole sweep "
            "in every DDP process. Use hydra/launcher=slurm (or submitit_local), or launch the runs one at a time"
        )


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Hydra entry; returns the probe top-1 so sweepers can optimise it."""

    def task() -> dict:
        refuse_local_multirun_with_ddp(cfg)
        return run(cfg, launch_of(cfg))

    metrics = report_user_errors(task)
    return metrics.get(LINEAR_TOP1)


if __name__ == "__main__":
    import sys

    if sys.argv[1:2] == ["plan"]:  # `python -m ssl_train plan <overrides>`, before Hydra reads argv (ssl_train/planner)
        from ssl_train.planner.command import main as plan

        sys.exit(plan(sys.argv[2:]))
    main()
