"""`python -m ssl_train [overrides]`: pretrain and linear-probe; see configs/train.yaml."""

from __future__ import annotations

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from ssl_train.cli import report_user_errors
from ssl_train.errors import UserError
from ssl_train.run import run


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


@hydra.main(version_base="1.3", config_path="../configs", config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Hydra entry; returns the probe top-1 so sweepers can optimise it."""
    def task() -> dict:
        refuse_local_multirun_with_ddp(cfg)
        return run(cfg)

    metrics = report_user_errors(task)
    return metrics.get("linear_top1")


if __name__ == "__main__":
    main()
