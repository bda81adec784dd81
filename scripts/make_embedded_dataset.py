"""Build the embedded default dataset: a class-balanced Fashion-MNIST subset shipped in the package.

Reads the idx files of Debian's `dataset-fashion-mnist` (or any folder holding them) and
writes `ssl_train/data/embedded/fashion_mnist_subset.npz` (uint8, compressed).
Run: python scripts/make_embedded_dataset.py [--root DIR] [--train-per-class 1000] [--test-per-class 200]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from ssl_train.data.datasets import DEBIAN_FASHION_MNIST_ROOT, read_idx_split

OUTPUT = Path(__file__).resolve().parents[1] / "ssl_train/data/embedded/fashion_mnist_subset.npz"


def balanced_subset(labels: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of `per_class` random samples of every class, sorted."""
    picks = [rng.choice(np.flatnonzero(labels == c), per_class, replace=False) for c in np.unique(labels)]
    return np.sort(np.concatenate(picks))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--root", default=DEBIAN_FASHION_MNIST_ROOT)
    parser.add_argument("--train-per-class", type=int, default=1000)
    parser.add_argument("--test-per-class", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    arrays = {}
    for split, prefix, per_class in (("train", "train", args.train_per_class), ("test", "t10k", args.test_per_class)):
        images, labels = read_idx_split(Path(args.root), prefix)
        keep = balanced_subset(labels, per_class, rng)
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = images[keep], labels[keep]
    np.savez_compressed(OUTPUT, **arrays)
    print(f"wrote {OUTPUT} ({OUTPUT.stat().st_size / 1e6:.1f} MB): " + ", ".join(f"{k} {v.shape}" for k, v in arrays.items()))


if __name__ == "__main__":
    main()
