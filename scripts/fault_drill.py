"""Fault drill: inject the faults a cluster produces and a few hundred malformed inputs, then print one table.

Faults (in process, tiny runs): preemption signals mid-epoch and during validation followed by a rerun in the same
directory (compared with an uninterrupted run, weights bit for bit), a crash mid-epoch resumed with ckpt_path, a full
disk at a checkpoint write, an unwritable output dir, a killed loader worker, dataset files that disappear mid-run,
two runs in one directory, NaN in fp32 and inf in bf16.
Bad inputs: unknown options for every config group, misspelt keys, invalid numbers (0, negative, NaN, inf, huge,
text) for batch sizes, learning rates, epochs, temperatures, queue sizes..., and corrupt / truncated / empty / missing
dataset files. Each must end in one clear line or a correct run; a sample also goes through the real CLI (exit code,
no traceback on stderr). Nothing may be written outside the case's own run directory.

Run: python scripts/fault_drill.py [--cases 300] [--cli 12] [--seed 0]
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from unittest.mock import patch

import torch
from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bad_inputs import bad_inputs, make_image_folder  # noqa: E402  (scripts/, beside this file)

from ssl_train import checkpoint_io  # noqa: E402
from ssl_train.callbacks import Preempted  # noqa: E402
from ssl_train.data.datamodule import TransformedDataset  # noqa: E402
from ssl_train.errors import UserError  # noqa: E402
from ssl_train.losses import NTXentLoss  # noqa: E402
from ssl_train.module import SSLModule  # noqa: E402
from ssl_train.run import exclusive_run_dir, run  # noqa: E402

CONFIG_DIR = ROOT / "configs"
TINY = [
    "data.source.train_limit=128", "data.source.test_limit=64", "data.batch_size=32", "data.num_workers=0", "data.eval_batch_size=64",
    "trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1", "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false", "eval.linear.max_iter=10", "eval.linear.l2_grid=[0.0,0.001]", "baseline=false",
]
TINY_MODEL = ["backbone.widths=[8,16]"]

@dataclass
class Tally:
    faults: int = 0
    resumed_identical: int = 0
    resumable: int = 0
    bad_inputs: int = 0
    clear_errors: int = 0
    correct_runs: int = 0
    tracebacks: list[str] = field(default_factory=list)
    files_lost: list[str] = field(default_factory=list)
    outside_writes: list[str] = field(default_factory=list)
    resume_seconds: list[float] = field(default_factory=list)
    cli_cases: int = 0
    cli_clean: int = 0


def cfg_for(overrides: list[str], out: Path, tiny_model: bool = True):  # noqa: ANN201
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        backbone = next((o.split("=", 1)[1] for o in overrides if o.startswith("backbone=")), "small_resnet")
        model = TINY_MODEL if tiny_model and backbone == "small_resnet" else []
        return compose("train", overrides=[*TINY, *model, *overrides, f"paths.output_dir={out}", f"paths.cache_dir={out}/cache"])


def outcome(action: Callable[[], object]) -> tuple[str, str]:
    """('ran' | 'clear' | 'traceback', detail) for one case run in process."""
    try:
        action()
        return "ran", ""
    except (UserError, Preempted) as error:
        message = checkpoint_io.first_line(error)
        return ("clear", message) if "\n" not in message else ("traceback", f"multi-line UserError: {error}")
    except (HydraException, OmegaConfBaseException) as error:  # the CLI prints Hydra's composition errors without a traceback
        return "clear", str(error).splitlines()[0]
    except Exception:  # noqa: BLE001 - the drill counts exactly these
        return "traceback", traceback.format_exc(limit=3)


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]


def identical(a: Path, b: Path) -> bool:
    wa, wb = weights(a), weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def fault_in_training_step(when: Callable[[SSLModule], bool], fault: Callable[[], None]) -> Callable:
    """An SSLModule.training_step that runs `fault` once, before the first step at which `when(module)` holds."""
    original, done = SSLModule.training_step, [False]

    def training_step(self, batch, batch_idx):  # noqa: ANN001, ANN202
        if not done[0] and when(self):
            done[0] = True
            fault()
        return original(self, batch, batch_idx)
    return training_step


def signal_at(step: int, signum: int) -> Callable:
    return fault_in_training_step(lambda module: module.global_step == step, lambda: os.kill(os.getpid(), signum))


def crash_at(step: int) -> Callable:
    def crash() -> None:
        raise RuntimeError("simulated kill")
    return fault_in_training_step(lambda module: module.global_step == step, crash)


def remove_images_in_epoch_1(folder: Path, every: int) -> Callable:
    """Delete every `every`-th training image of `folder` once epoch 1 starts training (files vanishing mid-run)."""
    def remove() -> None:
        for path in list((folder / "train").rglob("*.png"))[::every]:
            path.unlink()
    return fault_in_training_step(lambda module: module.current_epoch == 1, remove)


def record(tally: Tally, name: str, result: tuple[str, str], expect: str = "clear") -> None:
    tally.faults += 1
    status, detail = result
    if status == "traceback":
        tally.tracebacks.append(f"fault {name}: {detail}")
    elif status != expect:
        tally.tracebacks.append(f"fault {name}: expected {expect}, got {status} {detail}")
    print(f"  fault {name:<34} {status:<9} {detail[:150]}", flush=True)


def resume_drill(tally: Tally, sandbox: Path, name: str, interrupt: Callable, overrides: list[str], resume_with_path: bool = False) -> None:
    """Interrupt a run, rerun it in the same directory (or from its last.ckpt), compare with the uninterrupted run."""
    full, job = sandbox / f"{name}-full", sandbox / f"{name}-job"
    run(cfg_for(overrides, full))
    with patch.object(SSLModule, "training_step", interrupt):
        try:
            run(cfg_for(overrides, job))
            first = ("ran", "not interrupted")
        except (Preempted, RuntimeError) as error:
            first = ("clear", checkpoint_io.first_line(error))
    started = time.perf_counter()
    if resume_with_path:
        resumed = outcome(lambda: run(cfg_for([*overrides, f"ckpt_path={job / 'checkpoints' / 'last.ckpt'}"], sandbox / f"{name}-resumed")))
        end_dir = sandbox / f"{name}-resumed"
    else:
        resumed = outcome(lambda: run(cfg_for(overrides, job)))
        end_dir = job
    tally.resume_seconds.append(time.perf_counter() - started)
    tally.resumable += 1
    # what the uninterrupted run ends with must all be there (ModelCheckpoint's own top-k rotation is not a loss)
    lost = {p.name for p in (full / "checkpoints").iterdir()} - {p.name for p in (end_dir / "checkpoints").iterdir()}
    tally.files_lost += [f"{name}: {f}" for f in sorted(lost)]
    same = resumed[0] == "ran" and identical(end_dir, full)
    tally.resumed_identical += same
    record(tally, name, ("clear" if first[0] == "clear" and same else "wrong", f"{first[1]} -> resumed {'identical' if same else 'DIFFERENT'}"))


def fault_drills(tally: Tally, sandbox: Path) -> None:
    two_epochs = ["probe=false", "trainer.max_epochs=2", "trainer.limit_train_batches=3"]
    resume_drill(tally, sandbox, "sigterm-mid-epoch", signal_at(4, signal.SIGTERM), two_epochs)
    resume_drill(tally, sandbox, "sigusr1-first-epoch", signal_at(1, signal.SIGUSR1), two_epochs)
    resume_drill(tally, sandbox, "sigusr2-last-step", signal_at(5, signal.SIGUSR2), two_epochs)
    resume_drill(tally, sandbox, "kill-mid-epoch+ckpt_path", crash_at(4), [*two_epochs, "method=mocov2"], resume_with_path=True)

    real_save, calls = torch.save, {"n": 0}

    def full_disk(obj, handle, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        calls["n"] += 1
        if calls["n"] > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, handle, *args, **kwargs)

    disk = sandbox / "disk-full"
    with patch.object(checkpoint_io.torch, "save", full_disk):
        result = outcome(lambda: run(cfg_for(["probe=false", "trainer.max_epochs=3", "callbacks.model_checkpoint=null"], disk)))
    if not (disk / "checkpoints" / "last.ckpt").is_file() or torch.load(disk / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] != 2:
        tally.files_lost.append("disk-full: last.ckpt of epoch 1")
    record(tally, "disk-full-at-second-checkpoint", result)

    (sandbox / "a_file").write_text("")
    record(tally, "unwritable-output-dir", outcome(lambda: run(cfg_for([], sandbox / "a_file" / "run"))))

    original_get = TransformedDataset.__getitems__  # what a loader worker reads a batch with

    def dies(self, indices):  # noqa: ANN001, ANN202
        if torch.utils.data.get_worker_info() is not None:
            os.kill(os.getpid(), signal.SIGKILL)
        return original_get(self, indices)

    with patch.object(TransformedDataset, "__getitems__", dies):
        record(tally, "loader-worker-killed", outcome(lambda: run(cfg_for(["data.num_workers=1"], sandbox / "worker"))))

    folder = make_image_folder(sandbox / "images")
    vanishing = ["data=image_folder", f"data.source.root={folder}", "data.batch_size=8", "data.num_workers=1", "trainer.max_epochs=2", "probe=false"]
    with patch.object(SSLModule, "training_step", remove_images_in_epoch_1(folder, every=2)):
        result = outcome(lambda: run(cfg_for(vanishing, sandbox / "vanishing-some")))
    skipped = json.loads((sandbox / "vanishing-some" / "metrics.json").read_text())["skipped_images"] if result[0] == "ran" else 0
    record(tally, "half-the-images-vanish-mid-run", (result[0], f"{result[1]} skipped_images={skipped}"), expect="ran")

    gone = make_image_folder(sandbox / "images-gone")
    with patch.object(SSLModule, "training_step", remove_images_in_epoch_1(gone, every=1)):
        all_gone = [*vanishing[:1], f"data.source.root={gone}", *vanishing[2:]]
        record(tally, "all-images-vanish-mid-run", outcome(lambda: run(cfg_for(all_gone, sandbox / "vanishing-all"))))

    busy = sandbox / "busy"
    busy.mkdir()
    (busy / "first_run.txt").write_text("mine")
    with exclusive_run_dir(busy):
        result = outcome(lambda: run(cfg_for([], busy)))
    if sorted(p.name for p in busy.iterdir()) != [".lock", "first_run.txt"]:
        tally.files_lost.append("busy: the second run wrote into the first run's directory")
    record(tally, "second-run-same-output-dir", result)

    for precision, poison in (("32-true", float("nan")), ("bf16-mixed", float("inf"))):
        count, original_loss = {"n": 0}, NTXentLoss.forward

        def poisoned(self, z_a, z_b, count=count, poison=poison, original_loss=original_loss):  # noqa: ANN001, ANN202
            count["n"] += 1
            return original_loss(self, z_a, z_b) * (poison if count["n"] > 2 else 1.0)

        out = sandbox / f"nonfinite-{precision}"
        with patch.object(NTXentLoss, "forward", poisoned):
            result = outcome(lambda out=out, precision=precision: run(cfg_for(["trainer.max_epochs=3", f"trainer.precision={precision}"], out)))
        state = weights(out)
        if not all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point()):
            tally.files_lost.append(f"nonfinite-{precision}: last.ckpt holds non-finite weights")
        record(tally, f"non-finite-loss-{precision}", result)


def fuzz(tally: Tally, sandbox: Path, cases: list[list[str]]) -> None:
    for i, overrides in enumerate(cases):
        out = sandbox / "fuzz" / f"{i:03d}"
        status, detail = outcome(lambda overrides=overrides, out=out: run(cfg_for(overrides, out, tiny_model=not any("widths" in o for o in overrides))))
        tally.bad_inputs += 1
        tally.clear_errors += status == "clear"
        tally.correct_runs += status == "ran"
        if status == "traceback":
            tally.tracebacks.append(f"{' '.join(overrides)}: {detail}")
        print(f"  {i:3d} {' '.join(overrides)[:90]:<90} {status:<9} {detail.splitlines()[0][:110] if detail else ''}", flush=True)


def cli_sample(tally: Tally, sandbox: Path, cases: list[list[str]], n: int, rng: random.Random) -> None:
    """Run `n` of the cases through `python -m ssl_train`: a failing one must exit non-zero with no traceback on stderr."""
    for i, overrides in enumerate(rng.sample(cases, min(n, len(cases)))):
        out = sandbox / "cli" / f"{i:02d}"
        command = [sys.executable, "-m", "ssl_train", *TINY, *TINY_MODEL, *overrides, f"hydra.run.dir={out}", f"paths.cache_dir={out}/cache"]
        done = subprocess.run(command, capture_output=True, text=True, cwd=sandbox, timeout=600)
        clean = "Traceback" not in done.stderr and (done.returncode == 0 or done.stderr.strip() != "")
        tally.cli_cases += 1
        tally.cli_clean += clean
        if not clean:
            tally.tracebacks.append(f"CLI {' '.join(overrides)}: exit {done.returncode}\n{done.stderr[-1500:]}")
        last = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "(ok)"
        print(f"  cli {' '.join(overrides)[:80]:<80} exit {done.returncode:<3} {last[:110]}", flush=True)


def snapshot(root: Path) -> dict[str, int]:
    skip = {".git", ".venv", "__pycache__", ".pytest_cache", ".ruff_cache"}
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file() and not skip & set(p.relative_to(root).parts)}


def main() -> Tally:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=300, help="bad inputs to try in process")
    parser.add_argument("--cli", type=int, default=12, help="how many of them also go through the real CLI")
    parser.add_argument("--skip-faults", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng, tally = random.Random(args.seed), Tally()
    started = time.time()
    repo_before = snapshot(ROOT)
    with tempfile.TemporaryDirectory(prefix="fault-drill-") as tmp:
        sandbox = Path(tmp)
        os.chdir(sandbox)  # a relative path written by mistake lands here and is caught below
        if not args.skip_faults:
            print("faults:")
            fault_drills(tally, sandbox)
        cases = bad_inputs(rng, args.cases, sandbox)
        print(f"bad inputs ({len(cases)}):")
        fuzz(tally, sandbox, cases)
        if args.cli:
            print(f"bad inputs through the CLI ({args.cli}):")
            cli_sample(tally, sandbox, [c for c in cases if not any("=" in c[0] and "root=" in o for o in c)], args.cli, rng)
        strays = [p.name for p in sandbox.iterdir() if p.name not in {"fuzz", "cli", "data", "a_file", "images", "images-gone", "busy"}
                  and not any(p.name.startswith(prefix) for prefix in ("sigterm", "sigusr", "kill", "disk", "worker", "vanishing", "nonfinite"))]
        tally.outside_writes += [f"sandbox/{name}" for name in strays]
        os.chdir(ROOT)
    repo_after = snapshot(ROOT)
    tally.outside_writes += [f"repo/{p}" for p in sorted(set(repo_after) - set(repo_before))]
    print_table(tally, time.time() - started)
    return tally


def print_table(tally: Tally, seconds: float) -> None:
    resume = f"{min(tally.resume_seconds):.1f}-{max(tally.resume_seconds):.1f} s" if tally.resume_seconds else "-"
    print(f"\ntorch {torch.__version__}; drill took {seconds:.0f} s")
    print("| faults injected | resumed to the identical step and weights | bad inputs tried | clear one-line errors | correct runs "
          "| CLI sample clean | tracebacks | files lost | writes outside the run dir | resume (rerun to finish) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    print(f"| {tally.faults} | {tally.resumed_identical} of {tally.resumable} | {tally.bad_inputs} | {tally.clear_errors} | {tally.correct_runs} "
          f"| {tally.cli_clean} of {tally.cli_cases} | {len(tally.tracebacks)} | {len(tally.files_lost)} | {len(tally.outside_writes)} | {resume} |")
    for problem in tally.tracebacks + tally.files_lost + tally.outside_writes:
        print(f"\n!! {problem}")


if __name__ == "__main__":
    result = main()
    sys.exit(1 if result.tracebacks or result.files_lost or result.outside_writes else 0)
