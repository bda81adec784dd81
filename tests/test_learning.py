"""A learning test per method family: a few hundred steps on a tiny set of shapes at random places in noise must raise
the kNN accuracy of the encoder clearly above the same encoder at its initial weights (both from one run())."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ssl_train.run import run
from tests.fixtures import compose_config, write_idx


def make_shapes(root: Path, n_train: int = 512, n_test: int = 256, seed: int = 0) -> Path:
    """28 px idx files: class 0 a horizontal bar, 1 a vertical bar, 2 a hollow square, 3 a plus sign; random position,
    random brightness, noisy background. Position and noise are what augmentations teach an encoder to ignore."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = (np.arange(n) % 4).astype(np.uint8)
        images = rng.integers(0, 90, size=(n, 28, 28)).astype(np.float32)
        for i, c in enumerate(labels):
            y, x, level = rng.integers(4, 17), rng.integers(4, 17), rng.uniform(150, 255)
            patch = np.zeros((8, 8), dtype=bool)
            if c == 0:
                patch[3:5, :] = True
            elif c == 1:
                patch[:, 3:5] = True
            elif c == 2:
                patch[[0, 7], :] = patch[:, [0, 7]] = True
            else:
                patch[3:5, :] = patch[:, 3:5] = True
            images[i, y : y + 8, x : x + 8][patch] = level
        write_idx(root / f"{prefix}-images-idx3-ubyte", images.clip(0, 255).astype(np.uint8), compress=False)
        write_idx(root / f"{prefix}-labels-idx1-ubyte", labels, compress=False)
    return root


FAMILIES = {  # family -> (method, epochs of 8 steps, overrides); measured kNN top-1, seeds 0-4 (initial encoder 0.613
    # 0.602 0.617 0.523 0.668): SimCLR in 30 epochs 0.984 1.0 0.992 0.965 0.984; BYOL in 60 0.824 0.812 0.785 0.801 0.797
    # (its EMA target, momentum 0.99 -> 1, moves slowly: 0.609 in 30); SwAV in 60 with two views and 16 prototypes (4x
    # the 4 classes) 0.840 0.945 0.906 0.957 0.816 -- the default 100 prototypes spread to 0.660 0.770 0.684 0.820 0.926
    # and failed at seed 0, 40 prototypes 0.836 0.742 0.703 0.824 0.633. Multi-crop is what held the clustering family
    # back here: 6-15 px local crops of these 28 px images mostly miss the 8 px shape, and SwAV with 4 local crops reads
    # 0.500 (0.500 with global crops [0.5, 1] too). DINO with two views needs more steps and AdamW (its ViT recipe's
    # optimiser): in 60 epochs 0.609 (LARS, the ResNet recipe), 0.676 (AdamW), 0.625 (momentum 0.996, frozen g); AdamW
    # in 120 epochs 0.863 0.832 0.781 0.836 0.926 (DINO's centre, measured before method=dino took Sinkhorn-Knopp).
    "siamese (SimCLR)": ("simclr", 30, []),
    "target network, EMA (BYOL)": ("byol", 60, []),
    "clustering, Sinkhorn codes (SwAV)": ("swav", 60, ["augment.num_local=0", "method.num_prototypes=16"]),
    "self-distillation, EMA teacher (DINO)": ("dino", 120, ["augment.num_local=0", "optim=adamw", "loss.centering=centering"]),
}


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_training_raises_knn_accuracy_above_the_initial_encoder(family: str, tmp_path: Path) -> None:
    method, epochs, overrides = FAMILIES[family]
    cfg = compose_config(
        [
            f"method={method}",
            "data=fashion_mnist",
            f"data.source.root={make_shapes(tmp_path / 'shapes')}",
            "data.source.train_limit=null",
            "data.source.test_limit=null",
            "data.batch_size=64",
            f"trainer.max_epochs={epochs}",
            "trainer.limit_train_batches=1.0",
            "eval=[knn]",
            "callbacks.online_eval=null",
            "callbacks.model_checkpoint=null",
            "trainer.check_val_every_n_epoch=100",
            "backbone.widths=[16,32]",
            *overrides,
        ],
        tmp_path / "run",
    )
    metrics = run(cfg)
    assert metrics["steps"] == 8 * epochs
    gain = metrics["knn_k20_top1"] - metrics["random_init_knn_k20_top1"]
    assert gain > 0.1, f"{family}: kNN {metrics['knn_k20_top1']:.3f} vs initial encoder {metrics['random_init_knn_k20_top1']:.3f}"
