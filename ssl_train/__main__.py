"""`python -m ssl_train [overrides]`: pretrain and linear-probe; see configs/train.yaml."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from ssl_train.cli import report_user_errors
from ssl_train.run import run


@hydra.main(version_base="1.3", config_path="../configs", config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Hydra entry; returns the probe top-1 so sweepers can optimise it."""
    metrics = report_user_errors(lambda: run(cfg))
    return metrics.get("linear_top1")


if __name__ == "__main__":
    main()
