"""Cluster faults for scripts/fault_drill.py, and what every in-process case shares: the tiny config, one case's outcome, its record."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest.mock import patch

import torch
from hydra.errors import HydraException
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bad_inputs import make_image_folder  # noqa: E402  (scripts/, beside this file)
from drill_watch import OverlayWatcher, SnapshotWatcher  # noqa: E402

from ssl_train import run as run_module  # noqa: E402
from ssl_train.checkpoint_io import first_line  # noqa: E402
from ssl_train.composed import compose_config  # noqa: E402
from ssl_train.data.datamodule import TransformedDataset  # noqa: E402
from ssl_train.errors import UserError  # noqa: E402
from ssl_train.losses import NTXentLoss  # noqa: E402
from ssl_train.module import SSLModule  # noqa: E402
from ssl_train.run import run  # noqa: E402
from ssl_train.run_dir import exclusive_run_dir  # noqa: E402

TINY = [
    "data.source.train_limit=128",
    "data.source.test_limit=64",
    "data.batch_size=32",
    "data.num_workers=0",
    "data.eval_batch_size=64",
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=1",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "eval.linear.max_iter=10",
    "eval.linear.l2_grid=[0.0,0.001]",
    "baseline=false",
]
TINY_MODEL = ["backbone.widths=[8,16]"]
STEPS_PER_EPOCH = 2  # trainer.limit_train_batches=2


def tiny(overrides: list[str]) -> list[str]:
    """TINY (less what the case sets itself), a narrow ResNet unless the case picks the backbone or its widths, then the case."""
    own = {o.split("=", 1)[0] for o in overrides}
    model = [] if any(o.startswith(("backbone=", "backbone.widths=")) for o in overrides) else TINY_MODEL
    return [*(o for o in TINY if o.split("=", 1)[0] not in own), *model, *overrides]


def cfg_for(overrides: list[str], out: Path) -> DictConfig:
    """The composed config of a tiny run with `overrides`, writing to `out`; a bad override raises Hydra's own error."""
    return compose_config([*tiny(overrides), f"paths.output_dir={out}", f"paths.cache_dir={out}/cache"])


@dataclass
class Outcome:
    """How one in-process case ended: 'ran', 'refused' (by 'hydra' at composition or 'user': a UserError), or 'traceback'."""

    status: str
    via: str = ""
    line: str = ""
    value: Any = None


def outcome(action: Callable[[], Any], via: str = "user") -> Outcome:
    """Run `action`: a one-line UserError (or, with via='hydra', a Hydra/OmegaConf composition error) is a refusal."""
    try:
        return Outcome("ran", value=action())
    except (HydraException, OmegaConfBaseException) as error:
        if via == "hydra":  # the CLI prints these without a traceback
            return Outcome("refused", "hydra", str(error).strip().splitlines()[0])
        return Outcome("traceback", line=traceback.format_exc(limit=4))
    except UserError as error:  # the line the CLI prints (one raised in a loader worker carries the worker's traceback: its last line)
        return Outcome("refused", "user", first_line(error))
    except Exception:  # the drill counts exactly these
        return Outcome("traceback", line=traceback.format_exc(limit=4))


def composed_run(overrides: list[str], out: Path) -> Outcome:
    """Compose (a failure there is Hydra's), then run (a failure there must be a one-line UserError)."""
    composed = outcome(lambda: cfg_for(overrides, out), via="hydra")
    return composed if composed.status != "ran" else outcome(lambda: run(composed.value))


@contextmanager
def capture_build() -> Iterator[dict[str, Any]]:
    """{'built': ...}: what ssl_train.run.build made for the run inside the block (the trainer, datamodule, method, module)."""
    box, original = {}, run_module.build

    def build(*args: Any, **kwargs: Any) -> Any:
        box["built"] = original(*args, **kwargs)
        return box["built"]

    with patch.object(run_module, "build", build):
        yield box


@dataclass
class Result:
    """One case: passed True/False, or None when it could not be run here (said in `detail`)."""

    category: str
    name: str
    passed: bool | None = None
    detail: str = ""
    outside: list[str] = field(default_factory=list)


@dataclass
class Drill:
    """The sandbox, the watcher of writes outside the run dirs, and every case's result."""

    sandbox: Path
    watcher: OverlayWatcher | SnapshotWatcher | None
    results: list[Result] = field(default_factory=list)
    resume_seconds: list[float] = field(default_factory=list)

    @contextmanager
    def case(self, category: str, name: str, allowed: list[Path]) -> Iterator[Result]:
        """Record one case; a write outside `allowed` (the case's own dirs) fails it."""
        result = Result(category, name)
        with self.watcher.case(allowed) if self.watcher else nullcontext([]) as outside:
            try:
                yield result
            except Exception:  # the drill's own checks met something unexpected: that case failed
                result.passed, result.detail = False, f"the case itself stopped: {traceback.format_exc(limit=4)}"
        result.outside = outside
        if outside and result.passed:
            result.passed = False
        self.results.append(result)
        mark = {True: "ok", False: "FAILED", None: "not run"}[result.passed]
        print(f"  {category[:22]:<22} {name[:88]:<88} {mark:<7} {result.detail.splitlines()[0][:140] if result.detail else ''}", flush=True)
        for path in outside:
            print(f"      outside the run dir: {path}", flush=True)


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    """The state dict in a run's last.ckpt."""
    return torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]


def identical(a: Path, b: Path) -> bool:
    """Whether two runs' last.ckpt weights are equal bit for bit."""
    wa, wb = weights(a), weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def fault_in_training_step(when: Callable[[SSLModule], bool], fault: Callable[[], None]) -> Callable:
    """An SSLModule.training_step that runs `fault` once, before the first step at which `when(module)` holds."""
    original, done = SSLModule.training_step, [False]

    def training_step(self, batch, batch_idx):
        if not done[0] and when(self):
            done[0] = True
            fault()
        return original(self, batch, batch_idx)

    return training_step


def signal_at(step: int, signum: int) -> Callable:
    """A training_step that sends this process `signum` before global step `step`."""
    return fault_in_training_step(lambda module: module.global_step == step, lambda: os.kill(os.getpid(), signum))


def crash_at(step: int) -> Callable:
    """A training_step that raises (a crash) before global step `step`."""

    def crash() -> None:
        raise RuntimeError("simulated kill")

    return fault_in_training_step(lambda module: module.global_step == step, crash)


def remove_images_in_epoch_1(folder: Path, every: int) -> Callable:
    """Delete every `every`-th training image of `folder` once epoch 1 starts training (files vanishing mid-run)."""

    def remove() -> None:
        for path in list((folder / "train").rglob("*.png"))[::every]:
            path.unlink()

    return fault_in_training_step(lambda module: module.current_epoch == 1, remove)


def expect_refusal(result: Result, got: Outcome, *says: str) -> None:
    """Pass when `got` is a one-line refusal holding every string in `says`."""
    result.passed = got.status == "refused" and all(s in got.line for s in says)
    result.detail = got.line if result.passed else f"expected a one-line refusal naming {says}, got {got.status}: {got.line}"


def resume_drill(drill: Drill, name: str, interrupt: Callable, overrides: list[str], resume_with_path: bool = False) -> None:
    """Interrupt a run, rerun it in the same directory (or from its last.ckpt), compare with the uninterrupted run."""
    full, job, resumed_dir = (drill.sandbox / f"{name}-{part}" for part in ("full", "job", "resumed"))
    with drill.case("faults", name, [full, job, resumed_dir]) as result:
        run(cfg_for(overrides, full))
        with patch.object(SSLModule, "training_step", interrupt):
            first = outcome(lambda: run(cfg_for(overrides, job)))
            if first.status == "traceback" and "simulated kill" in first.line:  # the crash itself (not a UserError): the kill we injected
                first = Outcome("refused", "crash", "simulated kill")
        started = time.perf_counter()
        extra, end_dir = ([f"ckpt_path={job / 'checkpoints' / 'last.ckpt'}"], resumed_dir) if resume_with_path else ([], job)
        resumed = outcome(lambda: run(cfg_for([*overrides, *extra], end_dir)))
        drill.resume_seconds.append(time.perf_counter() - started)
        # what the uninterrupted run ends with must all be there (ModelCheckpoint's own top-k rotation is not a loss)
        lost = sorted({p.name for p in (full / "checkpoints").iterdir()} - {p.name for p in (end_dir / "checkpoints").glob("*")})
        same = resumed.status == "ran" and identical(end_dir, full)
        result.passed = first.status == "refused" and same and not lost
        result.detail = f"{first.line} -> resumed {'identical' if same else 'DIFFERENT: ' + resumed.line}" + (f"; lost {lost}" if lost else "")


def mount_tmpfs(where: Path, size: int) -> str | None:
    """Mount a tmpfs of `size` bytes at `where`; None, or why it could not be mounted."""
    where.mkdir(parents=True)
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True, text=True)
    except FileNotFoundError:
        return "no mount command"
    return None if done.returncode == 0 else done.stderr.strip() or f"mount exit {done.returncode}"


def disk_full(drill: Drill) -> None:
    """A real full disk at the second checkpoint: a tmpfs with room for what one epoch writes plus half a checkpoint."""
    overrides = ["probe=false", "trainer.max_epochs=3", "callbacks.model_checkpoint=null"]
    reference, disk = drill.sandbox / "disk-full-reference", drill.sandbox / "disk-full"
    with drill.case("faults", "disk-full-at-second-checkpoint (real tmpfs)", [reference, disk]) as result:
        run(cfg_for([*overrides[:1], "trainer.max_epochs=1", *overrides[2:]], reference))
        checkpoint = (reference / "checkpoints" / "last.ckpt").stat().st_size
        pages = sum(-(-p.stat().st_size // 4096) * 4096 for p in reference.rglob("*") if p.is_file())
        if (why := mount_tmpfs(disk, pages + checkpoint // 2)) is not None:
            result.detail = f"not run: needs root to mount tmpfs ({why})"
            return
        try:
            got = outcome(lambda: run(cfg_for(overrides, disk / "run")))
            last = disk / "run" / "checkpoints" / "last.ckpt"
            step = torch.load(last, weights_only=True)["global_step"] if last.is_file() else None
        finally:
            if subprocess.run(["umount", str(disk)], capture_output=True).returncode != 0:  # a file still open there: detach it
                subprocess.run(["umount", "-l", str(disk)], capture_output=True)
        expect_refusal(result, got, "No space left on device", "the previous last.ckpt is intact")
        if step != STEPS_PER_EPOCH:
            result.passed, result.detail = False, f"{result.detail}; last.ckpt holds step {step}, not epoch 1's {STEPS_PER_EPOCH}"


def fault_drills(drill: Drill) -> None:
    """Preemption signals, a crash, a full disk, an unwritable dir, a killed worker, vanishing files, a busy dir, non-finite losses."""
    sandbox, two_epochs = drill.sandbox, ["probe=false", "trainer.max_epochs=2", "trainer.limit_train_batches=3"]
    resume_drill(drill, "sigterm-mid-epoch", signal_at(4, signal.SIGTERM), two_epochs)
    resume_drill(drill, "sigusr1-first-epoch", signal_at(1, signal.SIGUSR1), two_epochs)
    resume_drill(drill, "sigusr2-last-step", signal_at(5, signal.SIGUSR2), two_epochs)
    resume_drill(drill, "kill-mid-epoch+ckpt_path", crash_at(4), [*two_epochs, "method=mocov2"], resume_with_path=True)
    disk_full(drill)

    with drill.case("faults", "unwritable-output-dir", [sandbox / "a_file"]) as result:
        (sandbox / "a_file").write_text("")
        expect_refusal(result, outcome(lambda: run(cfg_for([], sandbox / "a_file" / "run"))), str(sandbox / "a_file"))

    original_get = TransformedDataset.__getitems__  # what a loader worker reads a batch with

    def dies(self, indices):
        if torch.utils.data.get_worker_info() is not None:
            os.kill(os.getpid(), signal.SIGKILL)
        return original_get(self, indices)

    with drill.case("faults", "loader-worker-killed", [sandbox / "worker"]) as result, patch.object(TransformedDataset, "__getitems__", dies):
        expect_refusal(result, outcome(lambda: run(cfg_for(["data.num_workers=1"], sandbox / "worker"))), "a data loader worker died")

    folder = make_image_folder(sandbox / "images")
    vanishing = ["data=image_folder", f"data.source.root={folder}", "data.batch_size=8", "data.num_workers=1", "trainer.max_epochs=2", "probe=false"]
    with drill.case("faults", "half-the-images-vanish-mid-run", [folder, sandbox / "vanishing-some"]) as result:
        with patch.object(SSLModule, "training_step", remove_images_in_epoch_1(folder, every=2)):
            got = outcome(lambda: run(cfg_for(vanishing, sandbox / "vanishing-some")))
        skipped = json.loads((sandbox / "vanishing-some" / "metrics.json").read_text())["skipped_images"] if got.status == "ran" else 0
        result.passed, result.detail = got.status == "ran" and skipped > 0, f"{got.status} {got.line[:300]} skipped_images={skipped}"

    gone = make_image_folder(sandbox / "images-gone")
    with drill.case("faults", "all-images-vanish-mid-run", [gone, sandbox / "vanishing-all"]) as result:
        with patch.object(SSLModule, "training_step", remove_images_in_epoch_1(gone, every=1)):
            got = outcome(lambda: run(cfg_for([vanishing[0], f"data.source.root={gone}", *vanishing[2:]], sandbox / "vanishing-all")))
        expect_refusal(result, got, str(gone))

    busy = sandbox / "busy"
    with drill.case("faults", "second-run-same-output-dir", [busy]) as result:
        busy.mkdir()
        (busy / "first_run.txt").write_text("mine")
        with exclusive_run_dir(busy):
            expect_refusal(result, outcome(lambda: run(cfg_for([], busy))), str(busy))
        if sorted(p.name for p in busy.iterdir()) != [".lock", "first_run.txt"]:
            result.passed, result.detail = False, f"{result.detail}; the second run wrote into the first run's directory"

    for precision, poison in (("32-true", float("nan")), ("bf16-mixed", float("inf"))):
        count, original_loss, out = {"n": 0}, NTXentLoss.forward, sandbox / f"nonfinite-{precision}"

        def poisoned(self, z_a, z_b, count=count, poison=poison, original_loss=original_loss):
            count["n"] += 1
            return original_loss(self, z_a, z_b) * (poison if count["n"] > 2 else 1.0)

        with drill.case("faults", f"non-finite-loss-{precision}", [out]) as result:
            with patch.object(NTXentLoss, "forward", poisoned):
                got = outcome(lambda out=out, precision=precision: run(cfg_for(["trainer.max_epochs=3", f"trainer.precision={precision}"], out)))
            # whichever check meets it first (the loss at a logging step or checkpoint, the online evaluation's features) stops the run
            result.passed = got.status == "refused" and any(s in got.line for s in ("is nan", "is inf", "not finite"))
            result.detail = got.line if result.passed else f"expected a one-line refusal naming the non-finite value, got {got.status}: {got.line}"
            if not (out / "checkpoints" / "last.ckpt").is_file():
                result.passed, result.detail = False, f"{result.detail}; no last.ckpt"
            elif not all(torch.isfinite(v).all() for v in weights(out).values() if v.is_floating_point()):
                result.passed, result.detail = False, f"{result.detail}; last.ckpt holds non-finite weights"
