"""Peak memory per process of trainer=fsdp against trainer=ddp: the same short run of `python -m ssl_train` on 2 CPU
processes (gloo), DINO with backbone=vit_small (4 px patches on the 28 px default data), online evaluation, probe and
baselines off, so what differs is how the weights, gradients, optimizer state and EMA teacher are held.

Run: python scripts/bench_memory.py [--steps 3] [--batch 16] [--method dino] [--override KEY=VALUE ...]

The figure is the peak resident set size (VmHWM) of the larger of the two processes, read by the kernel when they exit
(getrusage RUSAGE_CHILDREN: rank 0 waits for rank 1, this script for rank 0), so it includes Python, torch and the
data; the weights' own share comes from the parameter count printed beside it. On CUDA machines the same comparison
is torch.cuda.max_memory_allocated (scripts/gpu_checks.sh).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time

TRAINERS = {
    "ddp": ["trainer=ddp_cpu"],
    "fsdp": ["trainer=fsdp", "trainer.accelerator=cpu", "trainer.precision=32-true"],
}


def peak_rss_mib(overrides: list[str]) -> tuple[float, float]:
    """(peak RSS in MiB of the largest process, seconds) of one run with `overrides`, in a fresh process tree."""
    with tempfile.TemporaryDirectory(prefix="bench_memory_") as tmp:
        code = (
            "import resource, subprocess, sys; "
            "subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE); "
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
        )  # a child of its own: RUSAGE_CHILDREN covers this run only, not the previous rows
        started = time.time()
        out = subprocess.run(
            [sys.executable, "-c", code, sys.executable, "-m", "ssl_train", *overrides, f"hydra.run.dir={tmp}/run"], capture_output=True, text=True
        )
        if out.returncode:
            raise SystemExit(f"run failed ({' '.join(overrides)}):\n{out.stderr[-3000:]}")
        return int(out.stdout.split()[-1]) / 1024, time.time() - started  # ru_maxrss: KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch", type=int, default=16, help="global batch (2 processes x batch/2)")
    parser.add_argument("--method", default="dino")
    parser.add_argument("--override", nargs="*", default=[], help="more overrides for both runs")
    args = parser.parse_args()
    common = [
        f"method={args.method}",
        "backbone=vit_small",
        "backbone.patch_size=4",
        "trainer.devices=2",
        "trainer.max_epochs=1",
        f"trainer.limit_train_batches={args.steps}",
        "trainer.enable_progress_bar=false",
        f"data.batch_size={args.batch}",
        "data.num_workers=0",
        "data.source.train_limit=256",
        "data.source.test_limit=64",
        "callbacks.online_eval=null",
        "probe=false",
        "baseline=false",
        *args.override,
    ]
    setting = f"{args.method}, ViT-S (22 M params, 4 px patches, 28 px), 2 CPU processes (gloo), global batch {args.batch}, {args.steps} steps"
    print(f"| {setting} | peak RSS per process | wall s |")
    print("|---|---|---|")
    for name, trainer in TRAINERS.items():
        mib, seconds = peak_rss_mib([*trainer, *common])
        print(f"| trainer={name} | {mib:,.0f} MiB | {seconds:.0f} |", flush=True)


if __name__ == "__main__":
    main()
