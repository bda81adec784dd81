"""`python -m ssl_train.probe ckpt_path=PATH [data=...]`: linear-probe the encoder of a saved checkpoint."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from ssl_train.build import build_datamodule, build_encoder, build_evaluators
from ssl_train.callbacks import ConfigInCheckpoint
from ssl_train.cli import report_user_errors
from ssl_train.errors import UserError
from ssl_train.eval.suite import evaluate_encoder
from ssl_train.run import claim_output_dir

log = logging.getLogger(__name__)


def load_encoder(ckpt_path: str | Path) -> tuple[torch.nn.Module, DictConfig]:
    """The trained backbone stored in an ssl_train checkpoint, and the run config saved with it."""
    path = Path(ckpt_path).expanduser()
    if not path.is_file():
        raise UserError(f"ckpt_path: no checkpoint at {path}")
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    if ConfigInCheckpoint.KEY not in checkpoint:
        raise UserError(f"ckpt_path: {path} is not an ssl_train checkpoint (it has no '{ConfigInCheckpoint.KEY}')")
    train_cfg = OmegaConf.create(checkpoint[ConfigInCheckpoint.KEY])
    prefix = "method.backbone."
    state = {k[len(prefix):]: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)}
    in_channels = _input_channels(state)
    encoder = build_encoder(train_cfg, in_channels)
    encoder.load_state_dict(state)
    return encoder, train_cfg


def _input_channels(state: dict[str, torch.Tensor]) -> int:
    """The input channels of the first conv in a backbone state_dict."""
    first_conv = next(v for v in state.values() if v.ndim == 4)
    return int(first_conv.shape[1])


def probe_checkpoint(cfg: DictConfig) -> dict[str, Any]:
    """Probe the checkpoint on its own training data, or on `data=...` when given; write metrics.json."""
    metrics_path = claim_output_dir(Path(cfg.paths.output_dir))
    encoder, train_cfg = load_encoder(cfg.ckpt_path)
    data_cfg = cfg.data if cfg.get("data") is not None else train_cfg.data
    datamodule = build_datamodule(data_cfg)
    splits = datamodule.splits
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    result = evaluate_encoder(encoder, *datamodule.probe_datasets(), splits.num_classes, build_evaluators(cfg.eval), device)
    metrics = {"ckpt_path": str(Path(cfg.ckpt_path).resolve()), "method": train_cfg.method.get("name"), **result}
    metrics_path.write_text(json.dumps(metrics, indent=2) + "\n")
    scores = ", ".join(f"{k} {v:.4f}" for k, v in result.items() if k.endswith("top1"))
    print(f"[ssl_train] {scores} for {cfg.ckpt_path}; results in {metrics_path}")
    return metrics


@hydra.main(version_base="1.3", config_path="../configs", config_name="probe")
def main(cfg: DictConfig) -> float:
    """Hydra entry for probing a checkpoint."""
    return report_user_errors(lambda: probe_checkpoint(cfg))["linear_top1"]


if __name__ == "__main__":
    main()
