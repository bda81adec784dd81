"""Steady-state training steps under torch.cuda.set_sync_debug_mode("error"): any host-device sync stops the check.

The default run on the GPU (trainer=gpu: bf16-mixed, views made on the device), progress bar on, logging pushed past
the window (logging steps may sync by design, one in `trainer.log_every_n_steps`); sync-debug is switched on for
`--steps` batches after `--warmup`. Prints PASS, or FAIL with the operation that synchronised and where.
Without CUDA (a dry run on the CPU) the same steps run and the CPU-side count of tests/test_sync_free_step.py applies.

Run: python scripts/sync_debug.py [--steps 20] [--warmup 5] [overrides ...]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import traceback
from typing import Any

import lightning.pytorch as pl
import torch

from ssl_train.build import build
from ssl_train.composed import compose_run_config


class SyncDebugWindow(pl.Callback):
    """Sync-debug mode "error" from batch `start` to batch `stop` (exclusive), "default" outside it."""

    def __init__(self, start: int, stop: int) -> None:
        self.start, self.stop, self.cuda = start, stop, torch.cuda.is_available()
        self.checked = 0

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        if self.cuda and batch_idx == self.start:
            torch.cuda.synchronize()
            torch.cuda.set_sync_debug_mode("error")

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.start <= batch_idx < self.stop:
            self.checked += 1
        if self.cuda and batch_idx + 1 == self.stop:
            torch.cuda.set_sync_debug_mode("default")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("overrides", nargs="*", help="config overrides (default: trainer=gpu)")
    args = parser.parse_args()
    total = args.warmup + args.steps + 1
    with tempfile.TemporaryDirectory() as out:
        device = ["trainer=gpu"] if torch.cuda.is_available() else ["data.source.train_limit=2048"]
        cfg = compose_run_config(
            [
                *device,
                *args.overrides,
                "trainer.max_epochs=1",
                f"trainer.limit_train_batches={total}",
                "trainer.limit_val_batches=0",
                "trainer.log_every_n_steps=1000",
                "probe=false",
                "baseline=false",
                "callbacks.online_eval=null",
                "callbacks.pictures=null",
            ],
            out,
        )
        built = build(cfg)
        window = SyncDebugWindow(args.warmup, args.warmup + args.steps)
        built.trainer.callbacks.append(window)
        try:
            built.trainer.fit(built.module, datamodule=built.datamodule)
        except RuntimeError as error:
            if "synchroniz" not in str(error).lower():
                raise
            frames = [f for f in traceback.extract_tb(error.__traceback__) if "site-packages/torch" not in f.filename][-4:]
            print(f"FAIL: a host-device sync in a steady-state step: {str(error).splitlines()[0]}")
            print("".join(traceback.format_list(frames)))
            return 1
    where = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU (dry run: no sync-debug mode without CUDA)"
    print(f"PASS: {window.checked} steady-state steps under set_sync_debug_mode('error') on {where}, {' '.join(device + args.overrides) or 'the default run'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
