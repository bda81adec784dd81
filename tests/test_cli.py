"""The command line as a user meets it: help, config printing, one-line errors, a real run and a probe of its checkpoint."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures import REPO, TINY_DATA, TINY_MODEL, TINY_RUN

pytestmark = pytest.mark.slow


def cli(*args: str, module: str = "ssl_train", cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_help_lists_groups() -> None:
    out = cli("--help")
    assert out.returncode == 0
    for group in ("method:", "data:", "backbone:", "augment:", "optim:", "trainer:", "experiment:"):
        assert group in out.stdout, group
    method_line = next(line for line in out.stdout.splitlines() if line.startswith("method:"))
    methods = {name.strip() for name in method_line.split(":", 1)[1].split(",")}
    assert {"simclr", "byol", "mocov3", "dino", "swav", "vicreg"} <= methods, method_line


def test_cfg_job_prints_config() -> None:
    out = cli("--cfg", "job", "method=byol")
    assert out.returncode == 0 and "momentum_base: 0.99" in out.stdout and "_target_: ssl_train.methods.TargetNetworkMethod" in out.stdout


def test_unknown_method_exits_with_options_and_no_traceback() -> None:
    out = cli("method=simclrr", "--cfg", "job")
    assert out.returncode != 0
    assert "Could not find 'method/simclrr'" in out.stderr and "simclr" in out.stderr and "Traceback" not in out.stderr


def test_misspelled_key_exits_without_traceback() -> None:
    out = cli("optim.optimizer.lrr=0.1", "--cfg", "job")
    assert out.returncode != 0 and "lrr" in out.stderr and "Traceback" not in out.stderr


def test_missing_data_is_one_line(tmp_path: Path) -> None:
    out = cli("data=fashion_mnist", f"data.source.root={tmp_path}/nowhere", f"hydra.run.dir={tmp_path}/run")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert f"data=fashion_mnist: data.source.root: folder {tmp_path}/nowhere does not exist" in out.stderr


def test_train_then_evaluate_checkpoint(tmp_path: Path) -> None:
    out = cli(*TINY_DATA, *TINY_MODEL, *TINY_RUN, f"hydra.run.dir={tmp_path}/run", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "linear probe top-1" in out.stdout
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["steps"] == 2 and (tmp_path / "run" / ".hydra" / "config.yaml").is_file()
    ckpt = f"ckpt_path={tmp_path}/run/checkpoints/last.ckpt"
    probe = cli(ckpt, "eval.linear.max_iter=10", f"hydra.run.dir={tmp_path}/probe", module="ssl_train.eval", cwd=tmp_path)
    assert probe.returncode == 0, probe.stderr[-2000:]
    assert json.loads((tmp_path / "probe" / "metrics.json").read_text())["method"] == "simclr"


def test_two_runs_get_separate_directories(tmp_path: Path) -> None:
    args = (*TINY_DATA, *TINY_MODEL, *TINY_RUN, "probe=false", "baseline=false")
    assert cli(*args, cwd=tmp_path).returncode == 0
    assert cli(*args, cwd=tmp_path).returncode == 0
    assert len(list((tmp_path / "outputs").glob("*/*/metrics.json"))) == 2


SWEEP_TINY = (*TINY_DATA, *TINY_MODEL, *TINY_RUN)


@pytest.mark.parametrize("launcher", ["basic", "submitit_local"])
def test_sweep_runs_each_job_in_own_dir_and_writes_summary(tmp_path: Path, launcher: str) -> None:
    out = cli("-m", f"hydra/launcher={launcher}", "method=simclr,byol", *SWEEP_TINY, f"paths.sweeps_dir={tmp_path}", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    (sweep_dir,) = [p.parent for p in tmp_path.glob("*/*/summary.md")]
    assert sorted(p.parent.name for p in sweep_dir.glob("*/metrics.json")) == ["0", "1"]
    summary = (sweep_dir / "summary.md").read_text()
    assert "| 0 | method=simclr | simclr |" in summary and "| 1 | method=byol | byol |" in summary
    page = (sweep_dir / "summary.html").read_text()
    assert '<a href="0/report.html">0</a>' in page and '<a href="1/report.html">1</a>' in page and (sweep_dir / "1" / "report.html").is_file()


def test_local_multirun_with_ddp_is_refused(tmp_path: Path) -> None:
    out = cli("-m", "trainer=ddp_cpu", "method=simclr,byol", *SWEEP_TINY, f"paths.sweeps_dir={tmp_path}", cwd=tmp_path)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "with a local -m sweep: Lightning would re-launch the whole sweep" in out.stderr


def test_optuna_search_maximises_the_returned_probe_metric(tmp_path: Path) -> None:
    """hparams_search=optuna: trials run as separate jobs and Optuna records the best returned linear top-1."""
    out = cli(
        "hparams_search=optuna",
        "hydra.sweeper.n_trials=2",
        "hydra.sweeper.sampler.n_startup_trials=2",
        *SWEEP_TINY,
        f"paths.sweeps_dir={tmp_path}",
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    (results,) = tmp_path.glob("*/*/optimization_results.yaml")
    jobs = [json.loads(p.read_text())["linear_top1"] for p in results.parent.glob("*/metrics.json")]
    assert len(jobs) == 2
    assert f"best_value: {max(jobs)}" in results.read_text()
