"""Training throughput table: ssl_train end to end vs a plain PyTorch loop on pre-made views (the ceiling).

For each row (method x backbone x precision x augmentation path x num_workers) it measures steady-state
source images/s of (a) the framework end to end (loader + augmentation + Lightning step), (b) the framework
step on pre-made views (no augmentation: Lightning's overhead), and (c) the same model step in a plain
PyTorch loop on the same pre-made views. Ratios: b/c (framework overhead, target >= 0.95) and a/c
(end to end vs the ceiling, target >= 0.85 with batched augmentation).

Run: python scripts/bench_throughput.py [--preset cpu|gpu] [--steps 12] [--warmup 3]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import lightning.pytorch as pl
import torch
from hydra import compose, initialize_config_dir
from torch.utils.data import DataLoader, Dataset

from ssl_train.build import build

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
PRESETS = {
    # (method, backbone, precision, augmentation path, num_workers, global batch)
    "cpu": [
        ("simclr", "small_resnet", "32-true", "per-sample", 1, 256),
        ("simclr", "small_resnet", "32-true", "per-sample", 0, 256),
        ("simclr", "small_resnet", "32-true", "batched", 0, 256),
        ("byol", "small_resnet", "32-true", "per-sample", 1, 256),
        ("byol", "small_resnet", "32-true", "batched", 0, 256),
        ("simclr", "small_resnet", "bf16-mixed", "batched", 0, 256),
        ("simclr", "resnet18", "32-true", "batched", 0, 64),
    ],
    "gpu": [
        (m, b, p, a, w, 256) for m in ("simclr", "byol") for b in ("resnet18", "resnet50") for p in ("32-true", "bf16-mixed")
        for a, w in (("per-sample", 8), ("batched", 4))
    ],
}


class SteadyThroughput(pl.Callback):
    """Images/s over training batches after the first `warmup` ones (excludes worker start-up and first-call costs)."""

    def __init__(self, warmup: int) -> None:
        self.warmup, self.images, self.started = warmup, 0, None

    def on_train_batch_start(self, trainer: pl.Trainer, module: pl.LightningModule, batch, batch_idx: int) -> None:  # noqa: ANN001
        if batch_idx == self.warmup:
            self.started = time.perf_counter()

    def on_train_batch_end(self, trainer: pl.Trainer, module: pl.LightningModule, outputs, batch, batch_idx: int) -> None:  # noqa: ANN001
        if batch_idx >= self.warmup:
            self.images += len(batch[1])
            self.elapsed = time.perf_counter() - self.started

    @property
    def rate(self) -> float:
        return self.images / self.elapsed


class PremadeViews(Dataset):
    """Fixed, already augmented views: the input of the framework-overhead and plain-loop measurements."""

    def __init__(self, views: list[torch.Tensor], labels: torch.Tensor) -> None:
        self.views, self.labels = views, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[list[torch.Tensor], int]:
        return [v[i] for v in self.views], int(self.labels[i])


def compose_row(method: str, backbone: str, precision: str, path: str, workers: int, batch: int, steps: int, out: str):  # noqa: ANN201
    overrides = [
        f"method={method}", f"backbone={backbone}", f"trainer.precision={precision}", f"augment.on_device={path == 'batched'}",
        f"data.num_workers={workers}", f"data.batch_size={batch}", "trainer.max_epochs=1", f"trainer.limit_train_batches={steps}",
        "trainer.limit_val_batches=0", "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false", "probe=false", "baseline=false",
        "~logger", "callbacks.model_checkpoint=null", "callbacks.last_checkpoint=null", "callbacks.lr_monitor=null",
        "callbacks.online_eval=null", f"paths.output_dir={out}",
    ]
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        return compose("train", overrides=overrides)


def measure(row: tuple, steps: int, warmup: int) -> dict:
    method, backbone, precision, path, workers, batch = row
    with tempfile.TemporaryDirectory() as out:
        cfg = compose_row(*row, steps, out)
        pl.seed_everything(0, verbose=False)
        built = build(cfg)
        meter = SteadyThroughput(warmup)
        built.trainer.callbacks.append(meter)
        built.trainer.fit(built.module, datamodule=built.datamodule)
        end_to_end = meter.rate
        # Pre-made views (made once by the per-sample pipeline): no augmentation cost in what follows.
        views_fn = built.datamodule.views()
        base = built.datamodule.splits.pretrain_set
        n = batch * (steps + 1)
        samples = [base[i % len(base)] for i in range(n)]
        made = [views_fn(image) for image, _ in samples] if not getattr(views_fn, "on_device", False) else None
        if made is None:
            images = torch.stack([image for image, _ in samples])
            made_views = [torch.cat(chunk) for chunk in zip(*[views_fn.batched()(images[i:i + batch]) for i in range(0, n, batch)], strict=True)]
        else:
            made_views = [torch.stack(v) for v in zip(*made, strict=True)]
        labels = torch.tensor([label for _, label in samples])
        premade = PremadeViews(made_views, labels)
        cfg2 = compose_row(method, backbone, precision, "per-sample", 0, batch, steps, out)
        pl.seed_everything(0, verbose=False)
        built2 = build(cfg2)
        meter2 = SteadyThroughput(warmup)
        built2.trainer.callbacks.append(meter2)
        built2.trainer.fit(built2.module, train_dataloaders=DataLoader(premade, batch_size=batch, shuffle=False, drop_last=True))
        framework_step = meter2.rate
        plain = plain_loop(cfg2, premade, batch, steps, warmup, precision)
    return {"row": row, "end_to_end": end_to_end, "framework_step": framework_step, "plain": plain}


def plain_loop(cfg, premade: PremadeViews, batch: int, steps: int, warmup: int, precision: str) -> float:  # noqa: ANN001
    """The same method and optimizer in a bare PyTorch loop: forward, backward, step, EMA hook."""
    pl.seed_everything(0, verbose=False)
    built = build(cfg)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    method = built.method.train().to(device)
    optimizer = torch.optim.SGD(method.parameters(), lr=0.01, momentum=0.9)
    loader = DataLoader(premade, batch_size=batch, shuffle=False, drop_last=True)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16-mixed")
    images, started = 0, None
    for i, (views, labels) in enumerate(loader):
        if i == warmup:
            started = time.perf_counter()
        views, labels = [v.to(device, non_blocking=True) for v in views], labels.to(device)
        with autocast:
            loss = method(views, labels)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if hasattr(method, "on_optimizer_step"):
            method.on_optimizer_step(i + 1, steps)
        if i >= warmup:
            images += len(labels)
        if i + 1 >= steps:
            break
    return images / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rows", type=int, nargs="*", help="indices of preset rows to run (default: all)")
    args = parser.parse_args()
    rows = [r for i, r in enumerate(PRESETS[args.preset]) if not args.rows or i in args.rows]
    header = ("| method | backbone | precision | augmentation | workers | batch | end-to-end img/s | framework step img/s | plain loop img/s "
              "| step / plain | end-to-end / plain |")
    lines = [header, "|" + "---|" * 11]
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"cpu, {torch.get_num_threads()} threads"
    print(f"torch {torch.__version__}, {device}")
    for row in rows:
        r = measure(row, args.steps, args.warmup)
        m, b, p, a, w, bs = row
        lines.append(f"| {m} | {b} | {p} | {a} | {w} | {bs} | {r['end_to_end']:.0f} | {r['framework_step']:.0f} | {r['plain']:.0f} "
                     f"| {r['framework_step'] / r['plain']:.2f} | {r['end_to_end'] / r['plain']:.2f} |")
        print(lines[-1], flush=True)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
