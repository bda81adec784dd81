"""`python -m ssl_train.eval ckpt_path=PATH [eval=[linear,knn,repr,sgd_linear]] [data=...] [eval_features=projector]`."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from ssl_train.__main__ import launch_of  # the one reader of Hydra's runtime state
from ssl_train.cli import report_user_errors
from ssl_train.composed import CONFIG_DIR
from ssl_train.eval.checkpoint import evaluate_checkpoint
from ssl_train.metrics import LINEAR_TOP1


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="probe")
def main(cfg: DictConfig) -> float | None:
    """Hydra entry: evaluate a checkpoint's encoder, write metrics.json beside it."""
    return report_user_errors(lambda: evaluate_checkpoint(cfg, launch_of(cfg))).get(LINEAR_TOP1)


if __name__ == "__main__":
    main()
