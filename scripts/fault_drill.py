"""Fault drill: inject the faults a cluster produces and a few hundred malformed or edge-case inputs into tiny runs; a case passes
only when it ends the way it expects to, and the table counts those per category.

Faults (in process, scripts/drill_faults.py): preemption signals mid-epoch and at the last step followed by a rerun in the same
directory (compared with an uninterrupted run, weights bit for bit), a crash resumed with ckpt_path, a real full disk (a small
tmpfs; needs root, else 'not run') at a checkpoint write, an unwritable output dir, a killed loader worker, dataset files that
disappear mid-run, two runs in one directory, NaN in fp32 and inf in bf16.
Inputs (scripts/bad_inputs.py), each with its expected outcome: an unknown option for every config group and a misspelt key
(a Hydra error naming it), numbers for every numeric key (out of range: one line naming the key and its allowed range, before
the run dir exists; in range: the run finishes and the value is in the built trainer / optimizer / method), and corrupt,
truncated, empty or missing dataset files (one line naming the file). A sample of each kind also goes through the real CLI.
Around every case, ~, the temp dir and the repository are compared (scripts/drill_watch.py): a path that is new, changed or
removed outside the case's own directories fails the case.

Run: python scripts/fault_drill.py [--cases 300] [--cli 12] [--cli-data 4] [--seed 0] [--select TEXT] [--json PATH]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import torch
import yaml
from bad_inputs import Case, bad_inputs  # scripts/, beside this file
from drill_faults import ROOT, Drill, Result, capture_build, composed_run, fault_drills, tiny
from drill_watch import OverlayWatcher, SnapshotWatcher, isolation_unavailable, layers_base
from omegaconf import OmegaConf

CATEGORIES = {  # (kind, expected outcome) of a case -> its row in the table and what passing means there
    "faults": "resumed to identical weights, or one line (a run where some images vanish); nothing lost",
    "unknown options": "a Hydra error naming the option",
    "misspelt keys": "a Hydra error naming the key",
    "numbers out of range": "one line naming the key and its allowed range; no run dir",
    "numbers in range": "runs; the value is in the built objects",
    "broken dataset files": "one line naming the file or folder",
    "CLI: out of range": "exit 2, one 'ssl_train error:' line naming the key, no traceback",
    "CLI: Hydra errors": "exit 1, the key named on stderr, no traceback",
    "CLI: broken data": "exit 2, one 'ssl_train error:' line naming the file, no traceback",
    "CLI: in range": "exit 0, the value in config_resolved.yaml",
}


def category(case: Case, cli: bool = False) -> str:
    """The table row a case counts in."""
    if cli:
        return {"hydra": "CLI: Hydra errors", "data": "CLI: broken data", "validate": "CLI: out of range"}.get(case.via, "CLI: in range")
    if case.kind in ("number", "pair"):
        return "numbers out of range" if case.expect == "refused" else "numbers in range"
    return {"group": "unknown options", "misspelt": "misspelt keys", "data": "broken dataset files"}[case.kind]


def names_ok(case: Case, line: str) -> bool:
    """Whether `line` holds every one of the case's `names` and one of its `any_of`."""
    return all(n in line for n in case.names) and (not case.any_of or any(n in line for n in case.any_of))


def judge(case: Case, status: str, via: str, line: str, out: Path, built: object = None, metrics: dict | None = None) -> tuple[bool, str]:
    """(passed, detail) of one in-process case against its expectation."""
    if case.expect == "refused":
        want = "hydra" if case.via == "hydra" else "user"
        if status != "refused" or via != want or not names_ok(case, line):
            return False, f"expected a one-line refusal ({case.via}) naming {case.names + case.any_of}, got {status} {via}: {line}"
        if case.via in ("validate", "hydra") and out.exists():
            return False, f"refused, but only after creating {out}: {line}"
        return True, line
    if status != "ran":
        return False, f"expected to run, got {status}: {line}"
    seen = []
    for why, what, read, expected in case.effects:
        try:
            actual = read(built, metrics or {})
        except Exception as error:  # a check that cannot read its value fails
            actual = f"unreadable ({type(error).__name__}: {error})"
        if actual != expected:
            return False, f"ran, but {what} is {actual!r}, not {expected!r} ({why})"
        seen.append(f"{what}={actual!r}")
    return True, f"ran; {', '.join(seen)} ({'; '.join(e[0] for e in case.effects)})"


def in_process(drill: Drill, cases: list[Case]) -> None:
    """Every case through compose + ssl_train.run.run, judged against what it expects."""
    for i, case in enumerate(cases):
        out = drill.sandbox / "cases" / f"{i:03d}"
        with drill.case(category(case), case.label, [out]) as result, capture_build() as box:
            got = composed_run(case.overrides, out)
            result.passed, result.detail = judge(case, got.status, got.via, got.line, out, box.get("built"), got.value)


def cli_case(drill: Drill, case: Case, out: Path) -> tuple[bool, str]:
    """One case through `python -m ssl_train`: the exit code, the stderr lines and, for a run, the saved config."""
    command = [sys.executable, "-m", "ssl_train", *tiny(case.overrides), f"hydra.run.dir={out}", f"paths.cache_dir={out}/cache"]
    done = subprocess.run(command, capture_output=True, text=True, cwd=drill.sandbox, timeout=600)
    errors = [line for line in done.stderr.splitlines() if line.startswith("ssl_train error:")]
    last = errors[0] if errors else (done.stderr.strip().splitlines() or ["(nothing on stderr)"])[-1]
    if "Traceback" in done.stderr:
        return False, f"exit {done.returncode}, a traceback on stderr: {done.stderr[-1500:]}"
    if case.via == "hydra":
        ok = done.returncode == 1 and not errors and names_ok(case, done.stderr)
        return ok, f"exit {done.returncode}: {done.stderr.strip().splitlines()[0] if done.stderr.strip() else ''}"
    if case.expect == "refused":
        ok = done.returncode == 2 and len(errors) == 1 and names_ok(case, errors[0])
        return ok, f"exit {done.returncode}, {len(errors)} 'ssl_train error:' line(s): {last}"
    if done.returncode != 0 or not (out / "metrics.json").is_file():
        return False, f"exit {done.returncode}, expected a finished run: {last}"
    saved = OmegaConf.load(out / "config_resolved.yaml")
    values = [(o.split("=", 1)[0], yaml.safe_load(o.split("=", 1)[1])) for o in case.overrides if not o.startswith("method=")]
    wrong = [f"{k}={OmegaConf.select(saved, k)!r}, not {v!r}" for k, v in values if OmegaConf.select(saved, k) != v]
    return not wrong, f"exit 0; {'; '.join(wrong) if wrong else ', '.join(f'{k}={v!r}' for k, v in values)} in config_resolved.yaml"


def cli_sample(drill: Drill, cases: list[Case], n: int, n_data: int, rng: random.Random) -> None:
    """`n` of the option and number cases (at least one that runs, where n > 1) and `n_data` broken-data cases through the CLI."""
    data = [c for c in cases if c.kind == "data"]
    others = [c for c in cases if c.kind != "data"]
    sample = rng.sample(others, min(n, len(others)))
    runs = [c for c in others if c.expect == "runs"]
    if n > 1 and runs and not any(c.expect == "runs" for c in sample):
        sample[-1] = rng.choice(runs)
    for i, case in enumerate(sample + rng.sample(data, min(n_data, len(data)))):
        out = drill.sandbox / "cli" / f"{i:02d}"
        with drill.case(category(case, cli=True), case.label, [out]) as result:
            result.passed, result.detail = cli_case(drill, case, out)


def main() -> list[Result]:
    """Run the drill (as root: again, inside a private mount namespace); print the table; every case's result."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=300, help="inputs to try in process")
    parser.add_argument("--cli", type=int, default=12, help="how many option / number cases also go through the real CLI")
    parser.add_argument("--cli-data", type=int, default=4, help="how many broken-data cases also go through the real CLI")
    parser.add_argument("--skip-faults", action="store_true")
    parser.add_argument(
        "--ignore",
        type=Path,
        action="append",
        default=[],
        help="a path not to watch (listed in the output): without root, where other processes of a shared machine write",
    )
    parser.add_argument("--no-isolation", action="store_true", help="as root too, compare the folders themselves rather than overlays")
    parser.add_argument("--layers", type=Path, help=argparse.SUPPRESS)  # set by the rerun in a private mount namespace
    parser.add_argument("--json-fd", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--select", action="append", default=[], help="only the cases whose overrides contain this text (of all of them)")
    parser.add_argument("--json", type=Path, help="also write every case's result here")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if (status := isolated_rerun(args)) is not None:
        sys.exit(status)
    rng, started = random.Random(args.seed), time.time()
    watcher = OverlayWatcher(ROOT, args.layers, tuple(args.ignore)) if args.layers else None
    with tempfile.TemporaryDirectory(prefix="fault-drill-") as tmp:
        sandbox = Path(tmp)
        os.chdir(sandbox)  # a relative path written by mistake lands here, outside every case's run dir: the watcher names it
        for folder in ("cases", "cli"):  # the drill's own: each case's run dir is made in one of them
            (sandbox / folder).mkdir()
        drill = Drill(sandbox, watcher or SnapshotWatcher(ROOT, sandbox / ".drill-marker", tuple(args.ignore)))
        print(drill.watcher.describe() + (f"; not watched: {', '.join(map(str, args.ignore))}" if args.ignore else ""))
        if not args.skip_faults:
            print("faults:")
            fault_drills(drill)
        cases = bad_inputs(rng, None if args.select else args.cases, sandbox)  # with --select: chosen from every (key, number)
        cases = [c for c in cases if any(s in c.label for s in args.select)] if args.select else cases
        print(f"inputs ({len(cases)}):")
        in_process(drill, cases)
        if args.cli or args.cli_data:
            print(f"through the CLI ({args.cli} + {args.cli_data} broken data):")
            cli_sample(drill, cases, args.cli, args.cli_data, rng)
        os.chdir(ROOT)
    typed = [a for i, a in enumerate(sys.argv[1:]) if a not in ("--layers", "--json-fd") and sys.argv[i] not in ("--layers", "--json-fd")]
    print_table(drill, time.time() - started, typed)  # the command as typed (not the rerun's --layers / --json-fd)
    if args.json or args.json_fd is not None:
        with open(args.json_fd if args.json_fd is not None else args.json, "w") as out:  # the fd: opened outside the namespace's overlays
            out.write(json.dumps([asdict(r) for r in drill.results], indent=1) + "\n")
    return drill.results


def isolated_rerun(args: argparse.Namespace) -> int | None:
    """As root, run this drill again in a private mount namespace whose ~, temp dir and repo are overlays (scripts/drill_watch.py);
    its exit status, or None where the drill runs here (already inside, --no-isolation, or not possible: said why)."""
    if args.layers or args.no_isolation:
        return None
    if (why := isolation_unavailable()) is not None:
        print(f"no private mount namespace ({why}): comparing ~, the temp dir and the repo themselves")
        return None
    base, out = layers_base(), open(args.json, "w") if args.json else None  # handed to the rerun as a descriptor
    try:
        fds = ["--json-fd", str(out.fileno())] if out else []
        command = ["unshare", "--mount", "--propagation", "private", sys.executable, str(Path(__file__).resolve()), *sys.argv[1:], "--layers", str(base), *fds]
        return subprocess.run(command, pass_fds=(out.fileno(),) if out else (), check=False).returncode
    finally:
        if out:
            out.close()
        with contextlib.suppress(OSError):
            base.rmdir()  # empty again: its tmpfs went with the namespace


def print_table(drill: Drill, seconds: float, argv: list[str]) -> None:
    """One row per category: cases, passed, failed, not run; then every failure with its detail."""
    results = drill.results
    resume = f"{min(drill.resume_seconds):.1f}-{max(drill.resume_seconds):.1f} s" if drill.resume_seconds else "-"
    print(f"\n`python scripts/fault_drill.py {' '.join(argv)}`: torch {torch.__version__}, {seconds:.0f} s; rerun to finish after an interruption {resume}")
    print("| category | a case passes when | cases | passed | failed | not run |")
    print("|---|---|---|---|---|---|")
    rows = [(name, meaning, [r for r in results if r.category == name]) for name, meaning in CATEGORIES.items()]
    rows.append(("no writes outside the run dir", "~, the temp dir and the repo unchanged outside the case's dirs", results))
    for name, meaning, group in rows:
        if not group:
            continue
        if name.startswith("no writes"):
            passed, failed, not_run = sum(not r.outside for r in group), sum(bool(r.outside) for r in group), 0
        else:
            passed, failed, not_run = (sum(r.passed is v for r in group) for v in (True, False, None))
        print(f"| {name} | {meaning} | {len(group)} | {passed} | {failed} | {not_run} |")
    for r in results:
        if r.passed is not True:
            print(
                f"\n{'!! FAILED' if r.passed is False else '-- not run'} [{r.category}] {r.name}: {r.detail}"
                + "".join(f"\n   outside the run dir: {p}" for p in r.outside)
            )


if __name__ == "__main__":
    sys.exit(1 if any(r.passed is False for r in main()) else 0)
