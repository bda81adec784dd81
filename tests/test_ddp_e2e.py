"""End to end: SimCLR for a few steps with trainer=ddp_cpu (2 gloo processes x batch B) matches one process with batch 2B.

Deterministic views (full-image crop, no jitter/flip), no shuffling and batch-independent normalisation (GroupNorm,
BN-free head: torch's SyncBatchNorm is CUDA-only) make both runs see the same global batches, so the trained weights
must agree to float tolerance; any rank-local negative breaks this.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = [pytest.mark.slow, pytest.mark.ddp]
COMMON = [
    "data.source.train_limit=128",
    "data.source.test_limit=64",
    "data.batch_size=64",
    "data.num_workers=0",
    "data.shuffle=false",
    "augment=simclr",  # SimCLR's own views: its default blur draws a random sigma per image
    "backbone.widths=[8,16]",
    "backbone.norm=group",
    "head.batch_norm=false",
    "augment.recipe.crop_scale=[1.0,1.0]",
    "augment.recipe.flip_prob=0",
    "augment.recipe.jitter_prob=0",
    "trainer.max_epochs=2",
    "trainer.enable_progress_bar=false",
    "probe=false",
    "baseline=false",
]


def _train(tmp_path: Path, name: str, *extra: str) -> dict[str, torch.Tensor]:
    run_dir = tmp_path / name
    out = subprocess.run(
        [sys.executable, "-m", "ssl_train", *COMMON, *extra, f"hydra.run.dir={run_dir}"], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads((run_dir / "metrics.json").read_text())["steps"] == 4
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert checkpoint["global_step"] == 4  # last.ckpt is the final state, not a stale earlier epoch
    return checkpoint["state_dict"]


def test_ddp_cpu_matches_single_process(tmp_path: Path) -> None:
    single = _train(tmp_path, "single", "trainer.devices=1")
    ddp = _train(tmp_path, "ddp", "trainer=ddp_cpu", "trainer.devices=2")
    moved = 0
    for key, value in single.items():
        if value.dtype.is_floating_point:
            torch.testing.assert_close(ddp[key], value, atol=2e-4, rtol=1e-3, msg=key)
            moved += 1
    assert moved > 10
