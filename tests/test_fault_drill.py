"""scripts/fault_drill.py: each case passes only when it ends as it expects (refused in one line naming the key, or run with
the value in the built objects), and a write outside the case's run dir fails it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.fixtures import REPO

SCRIPTS = REPO / "scripts"
sys.path.insert(0, str(SCRIPTS))

from bad_inputs import VALID, Case, number_case  # noqa: E402
from drill_watch import SnapshotWatcher, isolation_unavailable  # noqa: E402
from fault_drill import judge  # noqa: E402

# Without root the drill compares the folders themselves: pytest's temp dirs (this session's, any other's beside it) change meanwhile
PYTEST_TEMP = ["--ignore", str(Path(tempfile.gettempdir()) / "pytest-of-root")]


def drill(tmp_path: Path, *args: str) -> dict[str, dict]:
    """Run the drill; its results by case name (the CLI's prefixed 'cli: ')."""
    out = tmp_path / "results.json"
    done = subprocess.run(
        [sys.executable, str(SCRIPTS / "fault_drill.py"), *args, "--json", str(out), *PYTEST_TEMP], capture_output=True, text=True, timeout=1500
    )
    assert "| category | a case passes when |" in done.stdout, done.stdout[-4000:] + done.stderr[-4000:]
    results = json.loads(out.read_text())
    failed = [f"{r['category']} {r['name']}: {r['detail']} {r['outside']}" for r in results if r["passed"] is False]
    assert not failed and done.returncode == 0, "\n".join(failed)
    return {("cli: " if r["category"].startswith("CLI") else "") + r["name"]: r for r in results}


def test_a_bad_value_that_runs_fails_its_case_and_a_valid_one_must_show_its_effect(tmp_path: Path) -> None:
    bad = number_case([("optim.warmup_epochs", "2.5e38")])
    assert (bad.expect, bad.via, bad.any_of) == ("refused", "validate", ("optim.warmup_epochs",))
    assert judge(bad, "ran", "", "", tmp_path / "run") == (
        False,
        "expected a one-line refusal (validate) naming ('must be', 'optim.warmup_epochs'), got ran : ",
    )
    assert judge(bad, "refused", "user", "optim.warmup_epochs=2.5e+38: must be a finite number in [0, 1000]", tmp_path / "run")[0]
    assert not judge(bad, "refused", "user", "data.batch_size=0: must be an integer >= 1", tmp_path / "run")[0]  # names another key
    (tmp_path / "run").mkdir()
    assert not judge(bad, "refused", "user", "optim.warmup_epochs=2.5e+38: must be a finite number in [0, 1000]", tmp_path / "run")[0]
    valid = number_case([("optim.warmup_epochs", "0.5")])
    assert valid.expect == "runs" and valid.effects == (VALID[("optim.warmup_epochs", "0.5")],)

    keywords = {"warmup_steps": 0}  # what the check reads: the warm-up steps of the trainer's first scheduler
    scheduler = SimpleNamespace(lr_lambdas=[SimpleNamespace(keywords=keywords)])
    built = SimpleNamespace(trainer=SimpleNamespace(lr_scheduler_configs=[SimpleNamespace(scheduler=scheduler)]))
    passed, detail = judge(valid, "ran", "", "", tmp_path / "run", built, {})
    assert not passed and detail == "ran, but schedule warmup_steps (0.5 x 2 steps) is 0, not 1 (half an epoch)"
    keywords["warmup_steps"] = 1
    assert judge(valid, "ran", "", "", tmp_path / "run", built, {})[0]
    hydra = Case("misspelt", ["optim.warmup_epohs=1"], "refused", "hydra", names=("Could not override 'optim.warmup_epohs'",))
    assert not judge(hydra, "refused", "user", "Could not override 'optim.warmup_epohs'.", tmp_path / "x")[0]  # a UserError is not Hydra's


def test_the_snapshot_watcher_names_a_path_written_outside_the_case_dirs_and_not_one_inside(tmp_path: Path) -> None:
    watcher = SnapshotWatcher(REPO, tmp_path / "marker")
    with watcher.case([tmp_path / "run"]) as outside:
        (tmp_path / "run").mkdir()
        (tmp_path / "run" / "metrics.json").write_text("{}")
        (tmp_path / "stray.txt").write_text("x")
    mine = [p for p in outside if str(tmp_path) in p]
    assert mine == [f"new {tmp_path / 'stray.txt'}"]
    with watcher.case([]) as outside:
        (tmp_path / "stray.txt").unlink()
    assert [p for p in outside if str(tmp_path) in p] == [f"removed {tmp_path / 'stray.txt'}"]


OVERLAY_CASE = """
import json, os, sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from drill_watch import OverlayWatcher
base, home, tmp = Path(sys.argv[2]), Path.home(), Path(os.environ["TMPDIR"])
watcher = OverlayWatcher(base / "repo", base / "layers")
(tmp / "run").mkdir()
with watcher.case([tmp / "run"]) as outside:
    (tmp / "run" / "metrics.json").write_text("{}")
    (home / "stray.txt").write_text("x")
    (base / "repo" / "tracked.py").write_text("changed")
    (base / "repo" / "same.py").open("a").close()  # opened for writing, nothing written: the overlay copies it up, no change
    (base / "repo" / "gone.py").unlink()
    (base / "repo" / "__pycache__").mkdir()
    (base / "repo" / "newdir" / "deep").mkdir(parents=True)
    (base / "repo" / "newdir" / "deep" / "file").write_text("x")
print(json.dumps(outside))
"""


@pytest.mark.skipif(isolation_unavailable() is not None, reason=f"needs a private mount namespace with overlays ({isolation_unavailable()})")
def test_the_overlay_watcher_names_only_this_process_trees_writes_outside_the_case_dirs(tmp_path: Path) -> None:
    for folder in ("home", "tmp", "repo", "layers"):
        (tmp_path / folder).mkdir()
    for name in ("tracked.py", "same.py", "gone.py"):
        (tmp_path / "repo" / name).write_text("original")
    env = {**os.environ, "HOME": str(tmp_path / "home"), "TMPDIR": str(tmp_path / "tmp")}
    done = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", sys.executable, "-c", OVERLAY_CASE, str(SCRIPTS), str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == [
        f"new {tmp_path / 'home' / 'stray.txt'}",
        f"removed {tmp_path / 'repo' / 'gone.py'}",
        f"new {tmp_path / 'repo' / 'newdir'}/",
        f"changed {tmp_path / 'repo' / 'tracked.py'}",
    ]
    assert sorted(p.name for p in (tmp_path / "repo").iterdir()) == ["gone.py", "same.py", "tracked.py"]  # the real folders: untouched
    assert (tmp_path / "repo" / "tracked.py").read_text() == "original" and not list((tmp_path / "home").iterdir())


@pytest.mark.slow
def test_a_sample_of_each_kind_ends_as_it_expects_in_process_and_through_the_cli(tmp_path: Path) -> None:
    selected = ["optim.warmup_epochs=", "data.num_workers=", "no_such_data", "data.bach_size", "idx-garbage", "does-not-exist"]
    results = drill(tmp_path, "--skip-faults", *(a for s in selected for a in ("--select", s)), "--cli", "3", "--cli-data", "1", "--seed", "0")
    refused = results["optim.warmup_epochs=2.5e38"]
    assert refused["category"] == "numbers out of range" and refused["detail"] == "optim.warmup_epochs=2.5e+38: must be a finite number in [0, 1000]"
    assert results["optim.warmup_epochs=1e12"]["detail"] == "optim.warmup_epochs=1000000000000.0: must be a finite number in [0, 1000]"
    assert results["optim.warmup_epochs=abc"]["detail"] == "optim.warmup_epochs='abc': must be a finite number in [0, 1000]"
    warmup = results["optim.warmup_epochs=0.5"]
    assert warmup["category"] == "numbers in range" and "schedule warmup_steps (0.5 x 2 steps)=1" in warmup["detail"]
    assert results["data.num_workers=0"]["detail"].startswith("ran; train loader num_workers=0")
    assert results["data=no_such_data"]["detail"] == "In 'train': Could not find 'data/no_such_data'"
    garbage = next(r for name, r in results.items() if "idx-garbage" in name and not name.startswith("cli"))
    assert garbage["category"] == "broken dataset files" and "train-images-idx3-ubyte.gz: not an idx file" in garbage["detail"]
    cli = [r for name, r in results.items() if name.startswith("cli: ")]
    assert len(cli) == 4 and any(r["category"] == "CLI: broken data" for r in cli)
    for r in cli:
        if r["category"] in ("CLI: out of range", "CLI: broken data"):
            assert r["detail"].startswith("exit 2, 1 'ssl_train error:' line(s): ssl_train error: ")
    assert all(r["passed"] is True and not r["outside"] for r in results.values())


@pytest.mark.slow
def test_the_full_drill_every_case_ends_as_it_expects(tmp_path: Path) -> None:
    results = drill(tmp_path)  # the default: 12 faults, 300 inputs, 12 + 4 through the CLI
    categories = {r["category"] for r in results.values()}
    assert {"faults", "unknown options", "misspelt keys", "numbers out of range", "numbers in range", "broken dataset files"} <= categories
    for name in ("sigterm-mid-epoch", "sigusr1-first-epoch", "sigusr2-last-step", "kill-mid-epoch+ckpt_path"):
        assert results[name]["detail"].endswith("-> resumed identical")
    disk = results["disk-full-at-second-checkpoint (real tmpfs)"]
    assert "No space left on device" in disk["detail"] if os.geteuid() == 0 else disk["detail"].startswith("not run: needs root to mount tmpfs")
    assert [r["name"] for r in results.values() if r["passed"] is not True] == ([] if os.geteuid() == 0 else [disk["name"]])
    assert len(results) == 12 + 300 + 16
