"""Where the framework's Python cost per step comes from: ssl_train's step, a bare LightningModule (automatic and manual
optimization) and a plain PyTorch loop, on the same method, optimizer recipe and pre-made views.

bench_throughput.py's tiny-encoder row (SimCLR, small ResNet with widths 4 and 8, batch 32: the model costs little, so
the launch work of Python dominates as on a GPU) is run six ways, alternated over --rounds:
- "ssl_train": the framework's step (SSLModule, its callbacks, the online probe), as bench_throughput's column;
- "bare automatic": a LightningModule whose training_step returns the method's loss (Lightning's automatic optimization:
  closure, hooks, progress tracking), no callbacks, no logger, no checkpointing;
- "bare manual": the same with automatic_optimization = False and the raw optimizer (zero_grad, backward, step and the
  scheduler's step in training_step), which skips the optimizer loop's closure and hooks (and leaves global_step at 0);
- "bare manual, Lightning's optimizer": manual optimization as Lightning documents it (`self.optimizers()`,
  `manual_backward`, the LightningOptimizer's step, which counts global_step and runs the precision plugin and hooks);
- "plain": bench_throughput.plain_loop;
- "plain + online probe": the same loop also training SSLModule's online probe as SSLModule does (its loss added, its
  own param group): ssl_train's row minus this one is the framework's cost without the probe's own work.
Each figure is the median over rounds, in ms per step; "over plain" is the Python cost of that way of stepping.
`--calls` adds the Python function calls per step of each way (cProfile's count over 2N steps less that over N, so the
set-up cancels): the same figure on every run of every machine, where the milliseconds move by +-0.5 ms between runs.

Run: python scripts/bench_lightning_floor.py [--steps 200] [--warmup 20] [--rounds 4] [--threads 1] [--calls]
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import tempfile
from collections.abc import Callable

import bench_throughput as bt
import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader

from ssl_train.build import build

ROW = bt.PRESETS["cpu"][7]  # simclr, tiny encoder, fp32, batched views, 0 workers, batch 32


class BareModule(pl.LightningModule):
    """The method's loss and optimizer recipe in a LightningModule with nothing else."""

    def __init__(self, method, optim, batch: int, steps: int, manual: str | None) -> None:
        super().__init__()
        self.method, self.recipe, self.batch, self.steps, self.manual = method, optim, batch, steps, manual
        self.automatic_optimization = manual is None

    def training_step(self, batch, batch_idx: int):
        views, labels = batch
        loss = self.method(views, labels)["loss"]
        if self.manual is not None:
            optimizer, scheduler = self.optimizers(use_pl_optimizer=self.manual == "lightning"), self.lr_schedulers()
            optimizer.zero_grad(set_to_none=True)
            if self.manual == "lightning":
                self.manual_backward(loss)
            else:
                loss.backward()
            optimizer.step()
            scheduler.step()
        return loss

    def configure_optimizers(self):
        optimizer, scheduler, _ = self.recipe.build(self.method, [], self.batch, self.steps, self.steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def bare_step(cfg, premade: bt.PremadeViews, batch: int, steps: int, warmup: int, manual: str | None) -> float:
    """Images/s of the bare LightningModule on the pre-made views; `manual`: None (automatic), "raw" or "lightning"."""
    pl.seed_everything(0, verbose=False)
    built = build(cfg)
    meter = bt.SteadyThroughput(warmup)
    trainer = bt.bare_trainer([meter], max_epochs=1, limit_train_batches=steps, accelerator="cpu", devices=1, num_sanity_val_steps=0)
    module = BareModule(built.method, built.module.optim, batch, steps, manual)
    trainer.fit(module, train_dataloaders=DataLoader(premade, batch_size=batch, shuffle=False, drop_last=True))
    return meter.rate


def ways_of_stepping(steps: int, warmup: int, out: str, premade: bt.PremadeViews) -> dict[str, Callable[[], float]]:
    """Each way of stepping, as a call returning images/s over `steps` steps (the first `warmup` not timed)."""
    batch = ROW[5]
    cfg = bt.compose_row(ROW[0], ROW[1], ROW[2], "per-sample", 0, batch, steps, out)
    return {
        "ssl_train": lambda: bt.framework_step(cfg, premade, batch, warmup),
        "bare automatic": lambda: bare_step(cfg, premade, batch, steps, warmup, manual=None),
        "bare manual": lambda: bare_step(cfg, premade, batch, steps, warmup, manual="raw"),
        "bare manual, Lightning's optimizer": lambda: bare_step(cfg, premade, batch, steps, warmup, manual="lightning"),
        "plain + online probe": lambda: bt.plain_loop(cfg, premade, batch, steps, warmup, ROW[2], online_probe=True),
        "plain": lambda: bt.plain_loop(cfg, premade, batch, steps, warmup, ROW[2]),
    }


def python_calls(run: Callable[[], float]) -> int:
    """Python function calls (builtins included) made by `run`, counted by cProfile."""
    profile = cProfile.Profile()
    profile.runcall(run)
    return pstats.Stats(profile).total_calls


def calls_per_step(steps: int, warmup: int, out: str, premade: bt.PremadeViews) -> dict[str, float]:
    """Python calls per steady step of each way: the count over 2 x steps less the count over steps, divided by steps."""
    short, long = ways_of_stepping(steps, warmup, out, premade), ways_of_stepping(2 * steps, warmup, out, premade)
    return {name: (python_calls(long[name]) - python_calls(short[name])) / steps for name in short}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    parser.add_argument("--calls", action="store_true", help="also count each way's Python calls per step (cProfile)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    batch = ROW[5]
    with tempfile.TemporaryDirectory() as out:
        length = 2 * args.steps if args.calls else args.steps  # --calls also steps 2 x steps
        premade = bt.premade_views(build(bt.compose_row(*ROW, length, out)), batch, length)
        ways = ways_of_stepping(args.steps, args.warmup, out, premade)
        rates: dict[str, list[float]] = {name: [] for name in ways}
        for _ in range(args.rounds):  # alternated, so that drifts of the machine hit every way alike
            for name, run in ways.items():
                rates[name].append(run())
        calls = calls_per_step(args.steps, args.warmup, out, premade) if args.calls else {}
    ms = {name: batch / statistics.median(r) * 1e3 for name, r in rates.items()}
    calls_header = " Python calls per step | over plain |" if calls else ""
    print(f"\n| way of stepping | ms per step (median of {args.rounds}) | over plain, ms |{calls_header}\n|---|---|---|{'---|---|' if calls else ''}")
    for name, value in ms.items():
        calls_cells = f" {calls[name]:.0f} | {calls[name] - calls['plain']:.0f} |" if calls else ""
        print(f"| {name} | {value:.3f} | {value - ms['plain']:.3f} |{calls_cells}")
    flags = f"--steps {args.steps} --warmup {args.warmup} --rounds {args.rounds} --threads {args.threads}{' --calls' if calls else ''}"
    print(f"\ncommand: python scripts/bench_lightning_floor.py {flags}")


if __name__ == "__main__":
    main()
