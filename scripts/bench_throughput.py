"""Throughput benchmark: ssl_train end to end vs a plain PyTorch loop (the ceiling), the probe, and a peer.

Training table: for each row (method x backbone x precision x augmentation path x num_workers) the steady-state
source images/s of (a) the framework end to end (loader + augmentation + Lightning step), (b) the framework step
on pre-made views (no augmentation: Lightning's overhead) and (c) the same model step in a plain PyTorch loop on
the same pre-made views, each the median of `--rounds` alternated rounds; ratios b/c (framework overhead, target
>= 0.97) and a/c (end to end vs the ceiling, target >= 0.9); peak memory of the row (process RSS on CPU,
torch.cuda.max_memory_allocated on GPU).
Column "Python ms/step": framework step minus plain loop in milliseconds per step (batch / rate), the framework's
own cost per step: the median of each round's difference [lowest, highest] (paired, each first in turn: drift cancels;
not derivable from the rate columns); measured on the tiny-encoder row, where the model costs little (target <= 1 ms).
Then: the offline linear probe (L2 grid included) on 50k x 512 features (target <= 5 s), and, when lightly is
installed (pip install -e '.[bench]'), lightly's idiomatic SimCLR (per-sample SimCLRTransform, its NTXentLoss and
projection head, a LightningModule) on the same encoder, data and batch, as the ratio of end-to-end images/s.

Run: python scripts/bench_throughput.py [--preset cpu|gpu] [--rows 0 2] [--steps 30] [--warmup 5] [--rounds 3] [--override compile=false]
     python scripts/bench_throughput.py --preset gpu --dry-run     # the GPU rows on the CPU with tiny inputs (a slow test)
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Dataset

from ssl_train.build import build
from ssl_train.composed import compose_run_config
from ssl_train.module import online_probe_loss

# the overrides every benchmark run takes: no validation, progress bar, summary, probe, baseline, logger or checkpoints
QUIET_OVERRIDES = [
    "trainer.limit_val_batches=0",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "probe=false",
    "baseline=false",
    "~logger",
    "callbacks.model_checkpoint=null",
    "callbacks.last_checkpoint=null",
    "callbacks.lr_monitor=null",
    "callbacks.online_eval=null",
]

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
        # a tiny encoder (widths 4, 8) on 32 images: the model step costs little, so step minus plain loop is the framework's
        # own Python work per step, as it is on a GPU, where the model step is fast for any model
        ("simclr", "tiny", "32-true", "batched", 0, 32),
    ],
    "gpu": [
        (m, b, p, a, w, 256)
        for m in ("simclr", "byol")
        for b in ("resnet18", "resnet50")
        for p in ("32-true", "bf16-mixed")
        for a, w in (("per-sample", 8), ("batched", 4))
    ],
}


class SteadyThroughput(pl.Callback):
    """Images/s over training batches after the first `warmup` ones (excludes worker start-up and first-call costs)."""

    def __init__(self, warmup: int) -> None:
        self.warmup, self.images, self.started, self.elapsed = warmup, 0, None, 0.0

    def on_train_batch_start(self, trainer: pl.Trainer, module: pl.LightningModule, batch, batch_idx: int) -> None:
        if batch_idx == self.warmup:
            self.started = time.perf_counter()

    def on_train_batch_end(self, trainer: pl.Trainer, module: pl.LightningModule, outputs, batch, batch_idx: int) -> None:
        if batch_idx >= self.warmup:
            self.images += len(batch[1])
            self.elapsed = time.perf_counter() - self.started

    @property
    def rate(self) -> float:
        return self.images / self.elapsed if self.elapsed else float("nan")


class PeakMemory:
    """Peak memory while the block runs, in MiB: torch.cuda.max_memory_allocated on GPU, else process RSS sampled every 10 ms."""

    def __enter__(self) -> PeakMemory:
        self.peak, self._stop = 0.0, threading.Event()
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        else:
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        page = os.sysconf("SC_PAGE_SIZE")
        while not self._stop.is_set():
            with open("/proc/self/statm") as handle:
                self.peak = max(self.peak, int(handle.read().split()[1]) * page / 2**20)
            time.sleep(0.01)

    def __exit__(self, *exc: object) -> None:
        if torch.cuda.is_available():
            self.peak = torch.cuda.max_memory_allocated() / 2**20
        else:
            self._stop.set()
            self._thread.join()


class PremadeViews(Dataset):
    """Fixed, already augmented views: the input of the framework-overhead and plain-loop measurements."""

    def __init__(self, views: list[torch.Tensor], labels: torch.Tensor) -> None:
        self.views, self.labels = views, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[list[torch.Tensor], int]:
        return [v[i] for v in self.views], int(self.labels[i])


def bare_trainer(callbacks: list, **limits) -> pl.Trainer:
    """A Lightning Trainer with nothing of its own around the step (no logger, checkpoints, progress bar or summary)."""
    return pl.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, callbacks=callbacks, **limits)


def compose_row(
    method: str, backbone: str, precision: str, path: str, workers: int, batch: int, steps: int, out: str, dry_run: bool = False, extra: tuple[str, ...] = ()
):
    tiny = backbone == "tiny"
    overrides = [
        f"method={method}",
        f"backbone={'small_resnet' if tiny else backbone}",
        *(["backbone.widths=[4,8]"] if tiny else []),
        f"trainer.precision={precision}",
        f"augment.on_device={path == 'batched'}",
        f"data.num_workers={workers}",
        f"data.batch_size={batch}",
        "trainer.max_epochs=1",
        f"trainer.limit_train_batches={steps}",
        *QUIET_OVERRIDES,
    ]
    if dry_run:  # a GPU row on the CPU with tiny inputs: checks the row composes, builds and steps
        overrides += ["trainer.accelerator=cpu", "data.source.train_limit=64", "data.source.test_limit=16"]
    return compose_run_config([*overrides, *extra], out)


def premade_views(built, batch: int, steps: int) -> PremadeViews:
    """Views made once (by the row's own pipeline) for steps + 1 batches: no augmentation cost in what uses them."""
    views_fn = built.datamodule.views()
    base = built.datamodule.splits.pretrain_set
    n = batch * (steps + 1)
    samples = [base[i % len(base)] for i in range(n)]
    if getattr(views_fn, "on_device", False):
        images = torch.stack([image for image, _ in samples])
        made_views = [torch.cat(chunk) for chunk in zip(*[views_fn.batched()(images[i : i + batch]) for i in range(0, n, batch)], strict=True)]
    else:
        made_views = [torch.stack(v) for v in zip(*[views_fn(image) for image, _ in samples], strict=True)]
    return PremadeViews(made_views, torch.tensor([label for _, label in samples]))


def framework_step(cfg, premade: PremadeViews, batch: int, warmup: int) -> float:
    """ssl_train's Lightning step on pre-made views: what the framework adds to the model step."""
    pl.seed_everything(0, verbose=False)
    built = build(cfg)
    meter = SteadyThroughput(warmup)
    built.trainer.callbacks.append(meter)
    built.trainer.fit(built.module, train_dataloaders=DataLoader(premade, batch_size=batch, shuffle=False, drop_last=True))
    return meter.rate


def measure(row: tuple, steps: int, warmup: int, rounds: int, dry_run: bool = False, extra: tuple[str, ...] = ()) -> dict:
    method, backbone, precision, path, workers, batch = row
    with tempfile.TemporaryDirectory() as out:
        cfg = compose_row(*row, steps, out, dry_run, extra)
        pl.seed_everything(0, verbose=False)
        built = build(cfg)
        meter = SteadyThroughput(warmup)
        built.trainer.callbacks.append(meter)
        with PeakMemory() as memory:
            built.trainer.fit(built.module, datamodule=built.datamodule)
        premade = premade_views(built, batch, steps)
        cfg_premade = compose_row(method, backbone, precision, "per-sample", 0, batch, steps, out, dry_run, extra)
        step_rates, plain_rates = [], []
        for i in range(rounds):  # alternated, so that drifts of the machine hit both alike; each first in every other round
            if i % 2:
                plain_rates.append(plain_loop(cfg_premade, premade, batch, steps, warmup, precision))
            step_rates.append(framework_step(cfg_premade, premade, batch, warmup))
            if not i % 2:
                plain_rates.append(plain_loop(cfg_premade, premade, batch, steps, warmup, precision))
    python_ms = sorted(1000 * batch * (1 / step - 1 / plain) for step, plain in zip(step_rates, plain_rates, strict=True))
    return {
        "row": row,
        "end_to_end": meter.rate,
        "framework_step": statistics.median(step_rates),
        "plain": statistics.median(plain_rates),
        "python_ms": statistics.median(python_ms),  # paired by round: a drift of the machine between rounds cancels
        "python_ms_range": (python_ms[0], python_ms[-1]),
        "memory_mib": memory.peak,
    }


def plain_loop(cfg, premade: PremadeViews, batch: int, steps: int, warmup: int, precision: str, online_probe: bool = False) -> float:
    """The same method, optimizer recipe (e.g. LARS + warm-up cosine) and memory format in a bare PyTorch loop:
    forward, backward, optimizer and scheduler step, EMA hook — what a user would write by hand, without the online probe
    (`online_probe`: with SSLModule's, trained as it trains it: its loss added, its own param group)."""
    pl.seed_everything(0, verbose=False)
    built = build(cfg)
    device = torch.device("cuda" if torch.cuda.is_available() and cfg.trainer.accelerator != "cpu" else "cpu")
    method = built.method.train().to(device)
    probe = built.module.online_probe.to(device) if online_probe else None
    probe_groups = built.module.online_probe_param_groups() if probe is not None else []
    optimizer, scheduler, _ = built.module.optim.build(method, probe_groups, batch, steps, steps)
    loader = DataLoader(premade, batch_size=batch, shuffle=False, drop_last=True)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16-mixed")
    channels_last = built.module.channels_last
    images, started = 0, time.perf_counter()
    for i, (views, labels) in enumerate(loader):
        if i == warmup:
            started = time.perf_counter()
        views, labels = [v.to(device, non_blocking=True) for v in views], labels.to(device)
        if channels_last:
            views = [v.contiguous(memory_format=torch.channels_last) for v in views]
        with autocast:
            out = method(views, labels)
            loss = out["loss"]
            if probe is not None:
                loss = loss + online_probe_loss(probe(out["features"].detach().float()), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        if hasattr(method, "on_optimizer_step"):
            method.on_optimizer_step(i + 1, steps)
        if i >= warmup:
            images += len(labels)
        if i + 1 >= steps:
            break
    return images / (time.perf_counter() - started)


def probe_seconds(n: int = 50_000, dim: int = 512) -> tuple[float, str]:
    """Seconds of the default offline linear probe (L2 grid, hold-out, refit) on n x dim features of a random-init encoder.

    Real conv features (SmallResNet with a 2x2 pooling grid, 512 dims) of Fashion-MNIST when it is installed,
    else of the embedded subset repeated with flips: correlated, badly scaled features, as a trained encoder gives.
    """
    from ssl_train.data.datasets import DEBIAN_FASHION_MNIST_ROOT, EmbeddedFashionMNIST, IdxSource
    from ssl_train.encoders.resnet import SmallResNet
    from ssl_train.eval.linear_probe import LinearProbe

    root = Path(DEBIAN_FASHION_MNIST_ROOT)
    splits = IdxSource(str(root)).load() if root.is_dir() else EmbeddedFashionMNIST().load()
    images = torch.stack([splits.train[i][0] for i in range(len(splits.train))])
    labels = torch.tensor([splits.train[i][1] for i in range(len(splits.train))])
    while len(images) < n + 10_000:
        images, labels = torch.cat([images, images.flip(-1)]), torch.cat([labels, labels])
    images, labels = images[: n + 10_000], labels[: n + 10_000]
    torch.manual_seed(0)
    encoder = SmallResNet(in_channels=1, widths=(32, 64, dim // 4), pool_size=2).eval()
    with torch.no_grad():
        features = torch.cat([encoder(chunk.float() / 255) for chunk in images.split(1024)])
    started = time.perf_counter()
    LinearProbe().evaluate_features(features[:n], labels[:n], features[n:], labels[n:], 10)
    source = "Fashion-MNIST" if root.is_dir() else "embedded subset, repeated"
    return time.perf_counter() - started, f"{n} x {features.shape[1]} features of a random-init SmallResNet on {source}"


def lightly_ratio(steps: int, warmup: int, batch: int = 256) -> tuple[float, float] | None:
    """(ssl_train, lightly) end-to-end images/s of SimCLR on the same encoder, data, batch and loader workers; None without lightly."""
    try:
        from lightly.loss import NTXentLoss
        from lightly.models.modules import SimCLRProjectionHead
        from lightly.transforms import SimCLRTransform
    except ImportError:
        return None
    from torchvision.transforms.v2 import functional as TF

    from ssl_train.encoders.resnet import SmallResNet

    with tempfile.TemporaryDirectory() as out:
        cfg = compose_row("simclr", "small_resnet", "32-true", "batched", 1, batch, steps, out)
        cfg.data.num_workers = 1
        pl.seed_everything(0, verbose=False)
        built = build(cfg)
        ours = SteadyThroughput(warmup)
        built.trainer.callbacks.append(ours)
        built.trainer.fit(built.module, datamodule=built.datamodule)
        splits = built.datamodule.splits

    class PILImages(Dataset):
        """The same train images as PIL, each turned into lightly's pair of SimCLR views."""

        def __init__(self) -> None:
            normalize = {"mean": list(splits.mean), "std": list(splits.std)}
            self.transform = SimCLRTransform(input_size=splits.input_spec.size, gaussian_blur=0.0, normalize=normalize)

        def __len__(self) -> int:
            return len(splits.train)

        def __getitem__(self, i: int) -> tuple[list[torch.Tensor], int]:
            image, label = splits.train[i]
            return self.transform(TF.to_pil_image(image)), label

    class LightlySimCLR(pl.LightningModule):
        """lightly's documented SimCLR LightningModule, with ssl_train's default encoder and projector sizes."""

        def __init__(self) -> None:
            super().__init__()
            self.backbone = SmallResNet(in_channels=splits.input_spec.channels)
            self.projection_head = SimCLRProjectionHead(self.backbone.out_dim, 512, 128)
            self.criterion = NTXentLoss(temperature=0.2)

        def training_step(self, batch, batch_idx: int) -> torch.Tensor:
            (x0, x1), _ = batch
            return self.criterion(self.projection_head(self.backbone(x0)), self.projection_head(self.backbone(x1)))

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.5, momentum=0.9, weight_decay=5e-4)

    pl.seed_everything(0, verbose=False)
    theirs = SteadyThroughput(warmup)
    trainer = bare_trainer([theirs], accelerator="cpu" if not torch.cuda.is_available() else "auto", max_steps=steps)
    trainer.fit(LightlySimCLR(), DataLoader(PILImages(), batch_size=batch, shuffle=True, drop_last=True, num_workers=1, persistent_workers=True))
    return ours.rate, theirs.rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3, help="alternated rounds of framework step vs plain loop (median)")
    parser.add_argument("--rows", type=int, nargs="*", help="indices of preset rows to run (default: all)")
    parser.add_argument("--dry-run", action="store_true", help="tiny inputs on the CPU, 2 steps: check the rows run (GPU preset on a CPU machine)")
    parser.add_argument("--override", nargs="*", default=[], help="config overrides for every row, e.g. compile=false")
    parser.add_argument("--skip-probe", action="store_true")
    parser.add_argument("--skip-peers", action="store_true")
    args = parser.parse_args()
    if args.dry_run:
        args.steps, args.warmup, args.rounds, args.skip_probe, args.skip_peers = 2, 0, 1, True, True
    rows = [r for i, r in enumerate(PRESETS[args.preset]) if not args.rows or i in args.rows]
    if args.dry_run:
        rows = [(m, b, p, a, 0, 8) for m, b, p, a, _, _ in rows]
    header = (
        "| method | backbone | precision | augmentation | workers | batch | end-to-end img/s | framework step img/s | plain loop img/s "
        "| step / plain | end-to-end / plain | Python ms/step | peak memory |"
    )
    lines = [header, "|" + "---|" * 13]
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"cpu, {torch.get_num_threads()} threads"
    print(
        f"torch {torch.__version__}, {device}; {args.steps} steps after {args.warmup} warm-up, median of {args.rounds} alternated rounds"
        + (f"; overrides: {' '.join(args.override)}" if args.override else "")
    )
    if args.dry_run:
        print("DRY RUN: tiny inputs on the CPU; the figures below check that the rows run, they are not measurements")
    for row in rows:
        r = measure(row, args.steps, args.warmup, args.rounds, args.dry_run, tuple(args.override))
        m, b, p, a, w, bs = row
        lines.append(
            f"| {m} | {b} | {p} | {a} | {w} | {bs} | {r['end_to_end']:.0f} | {r['framework_step']:.0f} | {r['plain']:.0f} "
            f"| {r['framework_step'] / r['plain']:.2f} | {r['end_to_end'] / r['plain']:.2f} "
            f"| {r['python_ms']:.2f} [{r['python_ms_range'][0]:.2f}, {r['python_ms_range'][1]:.2f}] | {r['memory_mib']:.0f} MiB |"
        )
        print(lines[-1], flush=True)
    print("\n".join(lines))
    if not args.skip_probe:
        seconds, what = probe_seconds()
        print(f"\nlinear probe (default L2 grid, hold-out, refit): {seconds:.1f} s on {what}")
    if not args.skip_peers:
        print(
            "\nsolo-learn: no row — its latest release (1.0.2) pins torch==1.9.1 and does not install beside torch "
            f"{torch.__version__} (pip install solo-learn: ResolutionImpossible)"
        )
        rates = lightly_ratio(args.steps, args.warmup)
        if rates is None:
            print("\nlightly not installed (pip install -e '.[bench]'): no peer row")
        else:
            print(
                f"\nSimCLR end to end, same encoder/data/batch/workers: ssl_train {rates[0]:.0f} img/s, lightly {rates[1]:.0f} img/s "
                f"-> ssl_train / lightly = {rates[0] / rates[1]:.2f}"
            )


if __name__ == "__main__":
    main()
