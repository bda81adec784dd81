"""Vision transformers on this machine: training images/s of ViT-tiny (the CPU config, 28 px, 4 px patches) beside the
small ResNet for the same method, the masked-modelling methods (MAE, SimMIM, I-JEPA), and MAE's speed-up from encoding
only the visible patches.

Run: python scripts/bench_vit.py [--steps 5] [--rounds 3] [--batch 256]

Every figure is the median of `--rounds` timed rounds after a warm-up, built from the real configs.
"""

from __future__ import annotations

import argparse

import torch
from bench_modalities import built_from, timed  # the same timing and config building as the other modality benchmarks

from ssl_train.methods.masks import random_masking
from ssl_train.methods.patches import patchify


def training_step_time(built, batch: int, steps: int, rounds: int) -> float:
    """Seconds per optimizer step (views made on the device, forward + backward + step) of the method on `batch` images."""
    datamodule, method = built.datamodule, built.method
    images = torch.stack([datamodule.splits.train[i][0] for i in range(batch)])
    views = datamodule.views().batched()
    optimizer = torch.optim.AdamW(method.parameters(), lr=1e-4)
    method.train()

    def work() -> None:
        for _ in range(steps):
            out = method(views(images), torch.zeros(batch, dtype=torch.long))
            optimizer.zero_grad()
            out["loss"].backward()
            optimizer.step()

    return timed(work, rounds) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=256)
    args = parser.parse_args()
    print(f"| training step (batch {args.batch}, 28 px, {torch.get_num_threads()} threads) | params | images/s |")
    print("|---|---|---|")
    configs = (
        ("SimCLR, small ResNet (default)", ["method=simclr"]),
        ("SimCLR, ViT-tiny (6 blocks, 4 px patches)", ["method=simclr", "backbone=vit_tiny"]),
        ("DINO, ViT-tiny", ["method=dino", "backbone=vit_tiny"]),
        ("MAE, ViT-tiny (25% visible)", ["method=mae"]),
        ("SimMIM, ViT-tiny (all patches, 60% masked)", ["method=simmim"]),
        ("SimMIM, small ResNet (masked pixels)", ["method=simmim", "backbone=small_resnet"]),
        ("I-JEPA, ViT-tiny (context + EMA target)", ["method=ijepa"]),
    )
    for name, overrides in configs:
        built = built_from(overrides)
        seconds = training_step_time(built, args.batch, args.steps, args.rounds)
        params = sum(p.numel() for p in built.backbone.parameters())
        print(f"| {name} | {params / 1e6:.2f} M | {args.batch / seconds:,.0f} |", flush=True)
    built = built_from(["method=mae"])
    encoder = built.backbone.train()
    images = torch.randn(args.batch, 1, 28, 28)
    length = patchify(images, encoder.patch_size).shape[1]

    def encode(visible_only: bool) -> None:
        keep = random_masking(args.batch, length, 0.75)[0] if visible_only else None
        encoder.tokens(images, keep).sum().backward()

    all_patches = timed(lambda: encode(False), args.rounds)
    visible = timed(lambda: encode(True), args.rounds)
    print(
        f"\nMAE encoder forward + backward on {args.batch} images: all {length} patches {all_patches * 1000:.0f} ms, "
        f"visible {int(length * 0.25)} patches {visible * 1000:.0f} ms: {all_patches / visible:.1f}x faster"
    )


if __name__ == "__main__":
    main()
