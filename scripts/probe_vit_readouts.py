"""Linear probe of a ViT checkpoint's encoder read three ways: its class token, the mean of its patch tokens, and both
concatenated (dinov2's linear evaluation with `use_avgpool`), each beside the run's random-init ViT read the same way.

The evaluation's own linear probe and data (the checkpoint's training data and splits); the random-init encoder is the
run's initial one, rebuilt from the checkpoint's config and seed as `python -m ssl_train.eval` does.

Run: python scripts/probe_vit_readouts.py RUN/checkpoints/last.ckpt
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from torch import nn

from ssl_train.build import build_datamodule, instantiate
from ssl_train.checkpoint_io import read_checkpoint
from ssl_train.errors import UserError
from ssl_train.eval.checkpoint import encoder_from_checkpoint, initial_method, stored_fingerprint
from ssl_train.eval.protocol import configured_protocol, evaluation_device

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
READOUTS = ("class token", "mean of patches", "both")


class Readout(nn.Module):
    """A ViT encoder's output tokens pooled one of the READOUTS ways."""

    def __init__(self, encoder: nn.Module, readout: str) -> None:
        super().__init__()
        self.encoder, self.readout = encoder, readout

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        tokens = self.encoder.tokens(images)
        cls, mean = tokens[:, 0], tokens[:, self.encoder.model.num_prefix_tokens :].mean(1)
        return {"class token": cls, "mean of patches": mean, "both": torch.cat([cls, mean], 1)}[self.readout]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("ckpt", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as out, initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        cfg = compose("probe", overrides=[f"ckpt_path={args.ckpt}", "eval=[linear]", f"paths.output_dir={out}"])
    checkpoint = read_checkpoint(args.ckpt)
    encoder, train_cfg = encoder_from_checkpoint(args.ckpt, checkpoint=checkpoint)
    if not getattr(encoder, "is_vit", False):
        raise UserError(f"{args.ckpt}: its backbone is not a ViT (no tokens to read)")
    datamodule = build_datamodule(train_cfg.data, views=instantiate("augment", train_cfg.augment))
    protocol = configured_protocol(cfg, datamodule, evaluation_device(), train_cfg.data)
    initial = initial_method(train_cfg, fingerprint=stored_fingerprint(checkpoint))
    encoders = {"trained": encoder, **({"random-init": initial[0].backbone} if initial is not None else {})}
    print("| readout | " + " | ".join(f"{name} linear top-1" for name in encoders) + " |\n|---|" + "---|" * len(encoders))
    for readout in READOUTS:
        scores = [protocol.encoder_scores(Readout(e.eval(), readout))["linear_top1"] for e in encoders.values()]
        print(f"| {readout} | " + " | ".join(f"{s:.4f}" for s in scores) + " |")


if __name__ == "__main__":
    main()
