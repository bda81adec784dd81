"""The one never-overwrite / resume-or-refuse policy for output folders: claim a run directory (refused when it holds a
finished run), lock it, decide where the run starts (its finished training, a checkpoint to resume, a preempted run in
it, or nothing), and write files that never replace, or write through, anything already there (a dangling symbolic link
included). Exports, adapters and checkpoint evaluations take fresh folders and files from here too."""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from ssl_train.errors import UserError

log = logging.getLogger(__name__)
TRAINING_DONE = ".training_done"  # training finished, its evaluation not (yet): a rerun in the directory only evaluates
HYDRA_SUBDIR = ".hydra"  # where a run keeps Hydra's config.yaml, hydra.yaml and overrides.yaml (configs/hydra/default.yaml)
PREEMPTED = ".preempted"  # written by callbacks.Preemption: the run stopped on a signal; a rerun here resumes checkpoints/last.ckpt
METRICS_FILE, LAST_CHECKPOINT = "metrics.json", "checkpoints/last.ckpt"


def numbered(path: Path) -> Iterator[Path]:
    """path, then path-1, path-2, ... (the number before the suffix: metrics-1.json)."""
    yield path
    n = 0
    while True:
        n += 1
        yield path.with_name(f"{path.stem}-{n}{path.suffix}")


def write_new(path: Path, text: str) -> Path:
    """Write `text` to `path`, or path-1, path-2, ... when taken; an existing name (a dangling symlink too) is never
    followed or replaced (O_CREAT | O_EXCL | O_NOFOLLOW, so a name taken meanwhile is skipped as well). Returns the file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for candidate in numbered(path):
        try:
            fd = os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        except FileExistsError:
            continue
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        if candidate != path:
            log.info("%s is taken: wrote %s instead (nothing is overwritten)", path, candidate)
        return candidate
    raise AssertionError("unreachable")


def write_metrics(metrics_path: Path, metrics: Mapping[str, Any]) -> Path:
    """metrics.json (metrics-1.json, ... when one appeared meanwhile; never through a symlink), then the training-done
    marker removed: the run is finished, and a rerun in its directory is refused. Returns the file written."""
    written = write_new(metrics_path, json.dumps(metrics, indent=2) + "\n")
    (metrics_path.parent / TRAINING_DONE).unlink(missing_ok=True)
    return written


def keep_or_write_new(path: Path, text: str) -> Path:
    """`path` when it is a regular file that already holds `text` (a resumed run), else `write_new(path, text)`."""
    if not path.is_symlink() and path.is_file() and path.read_text() == text:
        return path
    return write_new(path, text)


def replace_atomically(path: Path, content: str | bytes) -> None:
    """Replace `path` (a file of our own: a marker, report.html, a picture) with `content` in one step; a symlink there is
    replaced, never followed."""
    staging = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    staging.unlink(missing_ok=True)
    fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    with os.fdopen(fd, "wb" if isinstance(content, bytes) else "w") as handle:
        handle.write(content)
    os.replace(staging, path)


def append_line(path: Path, line: str) -> None:
    """Append `line` and a newline to `path` (created when missing), never through a symbolic link (O_APPEND | O_NOFOLLOW)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    with os.fdopen(fd, "a") as handle:
        handle.write(line + "\n")


def fresh_dir(path: Path) -> Path:
    """`path`, or path-1, path-2, ... if it exists (a dangling symlink too), made empty: an export or adapter never overwrites an earlier one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    candidate = path
    while True:
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:  # lexists: mkdir refuses any existing name, a dangling symlink included
            n += 1
            candidate = path.with_name(f"{path.name}-{n}")


def claim_output_dir(output_dir: Path) -> Path:
    """Create the run directory; refuse one that already holds a finished run (never overwrite results)."""
    metrics_path = output_dir / METRICS_FILE
    if os.path.lexists(metrics_path):
        what = f"{metrics_path.name}, a symbolic link" if metrics_path.is_symlink() else metrics_path.name
        raise UserError(f"paths.output_dir: {output_dir} already holds a finished run ({what}); refusing to overwrite it")
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"paths.output_dir: cannot create {output_dir} ({error.strerror or error}); point it at a writable directory") from None
    return metrics_path


@contextlib.contextmanager
def exclusive_run_dir(output_dir: Path) -> Iterator[None]:
    """Hold an advisory lock on <output_dir>/.lock while the run lives: a second run given the same directory refuses
    at once and touches nothing. The lock dies with the process (kill -9 included), so a requeued job can take over."""
    if rank_zero_only.rank != 0:  # type: ignore[attr-defined]  # DDP ranks > 0 share rank 0's directory; .rank is set by lightning at import
        yield
        return
    lock = output_dir / ".lock"
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    except OSError as error:
        raise UserError(f"paths.output_dir: cannot open {lock} ({error.strerror or error}; a symbolic link is never followed): remove it") from None
    handle = os.fdopen(fd, "r+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = handle.read().strip() or "?"
        handle.close()
        raise UserError(f"paths.output_dir: {output_dir} is in use by another run (pid {holder}); give this run its own directory") from None
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    try:
        yield
    finally:
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


def save_hydra_files(output_dir: Path, files: Mapping[str, str]) -> None:
    """Write Hydra's config.yaml, hydra.yaml and overrides.yaml (their texts, from __main__) into <output_dir>/.hydra, after
    the run claimed the directory: Hydra itself writes them before the task starts, over those of a finished run a rerun is
    then refused for (configs/hydra/default.yaml sets output_subdir: null). A file already there with the same text is
    kept; a different one is never replaced (config-1.yaml, ...). Rank 0 only; no files (tests, the Python API): nothing."""
    if rank_zero_only.rank != 0:  # type: ignore[attr-defined]  # lightning sets rank_zero_only.rank at import: invisible to mypy
        return
    for name, text in files.items():
        keep_or_write_new(output_dir / HYDRA_SUBDIR / name, text)


@contextlib.contextmanager
def claimed_run_dir(output_dir: Path, hydra_files: Mapping[str, str] | None = None) -> Iterator[Path]:
    """The run directory claimed (a finished run in it refused), locked while the block runs and given Hydra's files; yields
    where metrics.json goes. Training runs and checkpoint evaluations both start here."""
    metrics_path = claim_output_dir(output_dir)
    with exclusive_run_dir(output_dir):
        save_hydra_files(output_dir, hydra_files or {})
        yield metrics_path


def save_resolved_config(cfg: DictConfig, output_dir: Path) -> Path:
    """<output_dir>/config_resolved.yaml (kept when a resumed run's is the same, else config_resolved-1.yaml, ...); written by rank 0."""
    path = output_dir / "config_resolved.yaml"
    return keep_or_write_new(path, OmegaConf.to_yaml(cfg, resolve=True)) if rank_zero_only.rank == 0 else path  # type: ignore[attr-defined]  # lightning sets rank_zero_only.rank at import: invisible to mypy


def finished_training(output_dir: Path) -> dict[str, Any] | None:
    """The record of training that finished in this directory before its evaluation was stopped (a signal, a time limit,
    Ctrl-C): {"checkpoint", "step", "metrics"}; the rerun evaluates that checkpoint and never trains over it."""
    marker = output_dir / TRAINING_DONE
    if not marker.is_file():
        return None
    redo = f"remove {marker} to train again in this directory, or give the run a new paths.output_dir"
    try:
        record = json.loads(marker.read_text())
        checkpoint = output_dir / record["checkpoint"]  # relative to the run directory: the folder may have moved
    except (ValueError, KeyError, TypeError):
        raise UserError(f"paths.output_dir: {marker} (training done, evaluation pending) is unreadable: {redo}") from None
    if not checkpoint.is_file():
        raise UserError(f"paths.output_dir: training finished in {output_dir} but its checkpoint {checkpoint} is gone: {redo}")
    log.info("training finished earlier in %s (step %s): evaluating %s without training again", output_dir, record.get("step"), checkpoint)
    return {**record, "checkpoint": str(checkpoint)}


def mark_training_done(trainer: pl.Trainer, output_dir: Path, training: dict[str, Any]) -> None:
    """After fit, when last.ckpt holds the final step: record it (and what training measured), so a run stopped during
    its evaluation is evaluated, not trained again over last.ckpt and history.jsonl, when rerun in this directory."""
    last = output_dir / LAST_CHECKPOINT
    if getattr(trainer.strategy.checkpoint_io, "steps_saved", {}).get(str(last.resolve())) != trainer.global_step:
        log.info("%s does not hold the final step %d: a rerun after a stop during the evaluation would train again", last, trainer.global_step)
        return
    record = {"checkpoint": str(last.relative_to(output_dir)), "step": trainer.global_step, "metrics": training}
    replace_atomically(output_dir / TRAINING_DONE, json.dumps(record))


def preempted_checkpoint(output_dir: Path) -> str | None:
    """last.ckpt of a run in this very directory that stopped on a preemption signal (a requeued job resumes it)."""
    marker, last = output_dir / PREEMPTED, output_dir / LAST_CHECKPOINT
    return str(last) if marker.is_file() and last.is_file() else None


def resolve_ckpt_path(ckpt_path: str | None, runs_dir: Path, output_dir: Path) -> str | None:
    """`last` means the newest checkpoints/last.ckpt of an earlier run under runs_dir; a path must exist."""
    if ckpt_path is None:
        return None
    if ckpt_path == "last":
        candidates = [p for p in runs_dir.glob(f"**/{LAST_CHECKPOINT}") if output_dir not in p.parents]
        if not candidates:
            raise UserError(f"ckpt_path=last: no {LAST_CHECKPOINT} under {runs_dir.resolve()} (paths.runs_dir) to resume from")
        newest = max(candidates, key=lambda p: p.stat().st_mtime)
        log.info("ckpt_path=last resolves to %s", newest)
        return str(newest)
    if not Path(ckpt_path).expanduser().is_file():
        raise UserError(f"ckpt_path: no checkpoint at {ckpt_path}")
    return str(Path(ckpt_path).expanduser())


@dataclass(frozen=True)
class ResumePoint:
    """Where a run starts: `checkpoint` to resume training from (None: a fresh start), or, with `done` (finished_training's
    record), the checkpoint whose training finished here, to evaluate without training again."""

    checkpoint: str | None = None
    done: dict[str, Any] | None = None


def resume_point(output_dir: Path, pretrain: bool, ckpt_path: str | None, runs_dir: Path) -> ResumePoint:
    """Finished training in this directory, else ckpt_path resolved (`last` or a file), else a preempted run's last.ckpt here."""
    if not pretrain:
        return ResumePoint()
    done = finished_training(output_dir)
    if done:
        return ResumePoint(done["checkpoint"], done)
    checkpoint = resolve_ckpt_path(ckpt_path, runs_dir, output_dir)
    if checkpoint is None and (checkpoint := preempted_checkpoint(output_dir)):
        log.info("resuming the preempted run in %s from %s", output_dir, checkpoint)
    return ResumePoint(checkpoint)
