"""Whole experiment recipes end to end: steady-state training images/s and peak memory of `experiment=<e>` as
`python -m ssl_train` trains it (loader workers, per-sample augmentation, the Lightning step, the recipe's precision
and torch.compile setting), e.g. the ViT-S/16 GPU recipes on a folder of 224 px JPEGs.

Run: python scripts/bench_recipes.py [--experiments dino_vit_small mocov3_vit_small] [--root DIR] [--steps 10] [--warmup 3]
     python scripts/bench_recipes.py --dry-run      # the same recipes on the CPU with tiny inputs: they compose, build and step

Without --root it writes a synthetic image folder (the embedded Fashion-MNIST images upsampled to --image-px, grey as
RGB, 10 classes) into a temporary directory: the figures measure the pipeline, not accuracy. A recipe whose compiled
run fails is measured again with compile=false, and the failure is printed beside it.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from bench_throughput import QUIET_OVERRIDES, PeakMemory, SteadyThroughput  # the same meters and quiet overrides as the throughput benchmark

from ssl_train.build import build, use_compile
from ssl_train.composed import compose_run_config
from ssl_train.data.datasets import embedded_arrays


def write_image_folder(root: Path, train: int, test: int, image_px: int) -> Path:
    """<root>/train/<class>/*.jpg and <root>/val/<class>/*.jpg from the embedded Fashion-MNIST, upsampled, as RGB JPEGs."""
    from torchvision.io import write_jpeg

    train_x, train_y, test_x, test_y = embedded_arrays(None, None)
    jobs = []
    for split, images, labels, n in (("train", train_x, train_y, train), ("val", test_x, test_y, test)):
        for i in range(n):  # the embedded split repeated (and mirrored on every other pass) to reach n images
            jobs.append((root / split / f"class_{int(labels[i % len(labels)])}" / f"{i:06d}.jpg", images[i % len(images)], (i // len(images)) % 2))
    for folder in {path.parent for path, _, _ in jobs}:
        folder.mkdir(parents=True, exist_ok=True)

    def write(job: tuple[Path, object, int]) -> None:
        path, image, mirrored = job
        grey = torch.from_numpy(image).reshape(1, 1, 28, 28).float()
        grey = grey.flip(-1) if mirrored else grey
        big = torch.nn.functional.interpolate(grey, size=(image_px, image_px), mode="bilinear", align_corners=False)
        write_jpeg(big[0].clamp(0, 255).to(torch.uint8).expand(3, -1, -1).contiguous(), str(path), quality=90)

    with ThreadPoolExecutor(os.cpu_count()) as pool:
        list(pool.map(write, jobs))
    return root


def recipe_overrides(experiment: str, root: Path, steps: int, out: str, dry_run: bool) -> list[str]:
    overrides = [
        f"experiment={experiment}",
        "data=image_folder",
        f"data.source.root={root}",
        "trainer.max_epochs=1",
        f"trainer.limit_train_batches={steps}",
        *QUIET_OVERRIDES,
        f"paths.output_dir={out}",
    ]
    if dry_run:  # one 4 px-patch block at 32 px, 8 images a batch, on the CPU in fp32
        overrides += [
            "trainer.accelerator=cpu",
            "trainer.precision=32-true",
            "data.source.image_size=32",
            "backbone.patch_size=4",
            "+backbone.model_kwargs.depth=1",
            "data.batch_size=8",
            "data.num_workers=0",
            "data.pin_memory=false",
        ]
        if experiment.startswith("dino"):
            overrides += ["augment.local_size=16"]
    return overrides


def measure(overrides: list[str], warmup: int) -> dict:
    """Steady images/s after `warmup` steps, peak memory and what the run was built with."""
    cfg = compose_run_config(overrides)
    torch.manual_seed(0)
    built = build(cfg)
    meter = SteadyThroughput(warmup)
    built.trainer.callbacks.append(meter)
    started = time.perf_counter()
    with PeakMemory() as memory:
        built.trainer.fit(built.module, datamodule=built.datamodule)
    return {
        "rate": meter.rate,
        "memory_mib": memory.peak,
        "seconds": time.perf_counter() - started,
        "batch": built.datamodule.batch_size,
        "params": sum(p.numel() for p in built.backbone.parameters()),
        "precision": cfg.trainer.precision,
        "workers": cfg.data.num_workers,
        "compile": "on" if use_compile(cfg.get("compile", False), built.trainer.accelerator.__class__.__name__ == "CUDAAccelerator") else "off",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiments", nargs="+", default=["dino_vit_small", "mocov3_vit_small"])
    parser.add_argument("--root", type=Path, help="an image folder (train/<class>, val/<class>); default: a synthetic one")
    parser.add_argument("--image-px", type=int, default=224, help="side of the synthetic folder's JPEGs")
    parser.add_argument("--train-images", type=int, default=14_336, help="synthetic train images (>= batch x (warmup + steps): one epoch)")
    parser.add_argument("--steps", type=int, default=10, help="timed optimizer steps after the warm-up")
    parser.add_argument("--warmup", type=int, default=3, help="untimed first steps (worker start, compilation, cuDNN autotuning)")
    parser.add_argument("--dry-run", action="store_true", help="tiny inputs on the CPU, 2 steps: check the recipes run")
    args = parser.parse_args()
    if args.dry_run:
        args.image_px, args.train_images, args.steps, args.warmup = 40, 32, 1, 1
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"cpu, {torch.get_num_threads()} threads"
    print(f"torch {torch.__version__}, {device}, {os.cpu_count()} CPUs; {args.steps} timed steps after {args.warmup} warm-up")
    if args.dry_run:
        print("DRY RUN: tiny inputs on the CPU; the figures check that the recipes run, they are not measurements")
    lines = ["| recipe | encoder params | global batch | precision | compile | loader workers | images/s | peak memory | run (s) |", "|" + "---|" * 9]
    with tempfile.TemporaryDirectory() as scratch:
        root = args.root
        if root is None:
            started = time.perf_counter()
            root = write_image_folder(Path(scratch) / "images", args.train_images, max(args.train_images // 10, 16), args.image_px)
            print(f"synthetic image folder: {args.train_images} train JPEGs of {args.image_px} px in {time.perf_counter() - started:.0f} s")
        for experiment in args.experiments:
            overrides = recipe_overrides(experiment, root, args.warmup + args.steps, str(Path(scratch) / experiment), args.dry_run)
            note, r = "", None
            for attempt in (overrides, [*overrides, "compile=false"]):  # a failed compiled run is measured again uncompiled
                try:
                    r = measure(attempt, args.warmup)
                    break
                except Exception as error:  # a benchmark reports the failure and goes on
                    first_line = (str(error).splitlines() or [""])[0][:160]
                    note += f" ({'compile=false' if attempt is not overrides else 'as configured'} failed: {type(error).__name__}: {first_line})"
            if r is None:
                lines.append(f"| `experiment={experiment}`{note} |" + " |" * 8)
                print(lines[-1], flush=True)
                continue
            lines.append(
                f"| `experiment={experiment}`{note} | {r['params'] / 1e6:.1f} M | {r['batch']} | {r['precision']} | {r['compile']} "
                f"| {r['workers']} | {r['rate']:,.0f} | {r['memory_mib']:,.0f} MiB | {r['seconds']:.0f} |"
            )
            print(lines[-1], flush=True)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
