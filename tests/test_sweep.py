"""The sweep summary (ssl_train.sweep): best job by the probe and by each label-free proxy with its rank correlation to the
probe, and jobs differing only by seed= as one row with mean ± std and interval; on written jobs and on a real -m sweep."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from ssl_train.eval.ranking import kendall_tau, spearman
from ssl_train.sweep import write_summary
from tests.fixtures import TINY_DATA, TINY_MODEL, TINY_RUN

JOBS = [  # (overrides, linear top-1, RankMe, uniformity)
    (["optim.optimizer.lr=0.1", "seed=0"], 0.70, 10.0, -1.0),
    (["optim.optimizer.lr=0.1", "seed=1"], 0.72, 12.0, -1.1),
    (["optim.optimizer.lr=0.2", "seed=0"], 0.75, 11.0, -1.5),
    (["optim.optimizer.lr=0.2", "seed=1"], 0.78, 13.0, -1.6),
]


def write_jobs(sweep: Path) -> None:
    for job, (overrides, top1, rankme, uniformity) in enumerate(JOBS):
        (sweep / str(job) / ".hydra").mkdir(parents=True)
        (sweep / str(job) / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in ["method=simclr", *overrides]))
        metrics = {"method": "simclr", "seed": int(overrides[1][-1]), "linear_top1": top1, "repr_rankme": rankme, "repr_uniformity": uniformity}
        (sweep / str(job) / "metrics.json").write_text(json.dumps(metrics))


def section(summary: str, title: str) -> list[list[str]]:
    """The cells of the markdown table under '## <title>', header first."""
    lines = summary.split(f"## {title}\n\n")[1].split("\n\n")[0].splitlines()
    return [[cell.strip() for cell in line.strip("|").split(" | ")] for line in lines if not line.startswith("|---")]


def test_best_by_and_over_seeds_on_written_jobs(tmp_path: Path) -> None:
    write_jobs(tmp_path)
    write_summary(tmp_path)
    summary = (tmp_path / "summary.md").read_text()
    best = {row[0]: row for row in section(summary, "Best by")[1:]}
    assert list(best) == ["linear probe top-1", "RankMe", "uniformity"]
    assert [best[c][3] for c in best] == ["3", "3", "3"]  # the job each names
    # RankMe 10, 12, 11, 13 against the probe .70, .72, .75, .78: ranks [1, 3, 2, 4] vs [1, 2, 3, 4] -> rho 0.8, tau 2/3
    assert best["RankMe"][1:3] == ["repr_rankme", "higher"] and best["RankMe"][7:] == ["+0.80", "+0.67"]
    assert best["uniformity"][2] == "lower" and best["uniformity"][7:] == ["+1.00", "+1.00"]  # lower uniformity, higher top-1
    assert best["linear probe top-1"][7:] == ["", ""]
    seeds = section(summary, "Over seeds")
    assert seeds[0][:6] == ["overrides (seed aside)", "jobs", "seeds", "linear_top1 n", "linear_top1 mean ± std", "linear_top1 95 % interval"]
    low, high = seeds[1], seeds[2]
    assert low[:6] == ["optim.optimizer.lr=0.1", "0 1", "0 1", "2", "0.7100 ± 0.0141", "[0.5829, 0.8371]"]  # t(1) = 12.706
    assert high[:5] == ["optim.optimizer.lr=0.2", "2 3", "0 1", "2", "0.7650 ± 0.0212"] and high[-1] == "best mean linear_top1"
    # paired by seed: -0.05 and -0.06 -> mean -5.50 points, std 0.707, half width 12.706 * 0.707 / sqrt(2) = 6.35: holds 0
    assert low[-2:] == ["-5.50 ± 6.35 (n=2)", "within seed noise"]
    with (tmp_path / "best_by.csv").open() as f:
        assert [row[3] for row in csv.reader(f)] == ["job", "3", "3", "3"]
    assert (tmp_path / "seeds.csv").read_text().splitlines()[1].startswith("optim.optimizer.lr=0.1,0 1,0 1,2,0.7100 ± 0.0141")
    page = (tmp_path / "summary.html").read_text()
    assert "<h2>Best by</h2>" in page and "<h2>Over seeds</h2>" in page and "<td>+0.80</td>" in page


def test_no_seed_section_without_a_seed_sweep(tmp_path: Path) -> None:
    for job, lr in enumerate(("0.1", "0.2")):
        (tmp_path / str(job) / ".hydra").mkdir(parents=True)
        (tmp_path / str(job) / ".hydra" / "overrides.yaml").write_text(f"- optim.optimizer.lr={lr}\n- seed=3\n")  # seed shared
        (tmp_path / str(job) / "metrics.json").write_text(json.dumps({"linear_top1": 0.5 + job / 10}))
    write_summary(tmp_path)
    summary = (tmp_path / "summary.md").read_text()
    assert "## Over seeds" not in summary and not (tmp_path / "seeds.csv").exists()
    assert section(summary, "Best by")[1][:4] == ["linear probe top-1", "linear_top1", "higher", "1"]


@pytest.mark.slow
def test_real_sweep_selects_by_proxy_and_ranks_the_proxies(tmp_path: Path) -> None:
    """`python -m ssl_train -m method=simclr,byol seed=0,1` on tiny data: the summary names a job by each proxy, shows
    Spearman and Kendall equal to those recomputed from the jobs' metrics.json, and groups the seeds."""
    command = [sys.executable, "-m", "ssl_train", "-m", "method=simclr,byol", "seed=0,1", *TINY_DATA, *TINY_MODEL, *TINY_RUN, f"paths.sweeps_dir={tmp_path}"]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    (sweep,) = [p.parent for p in tmp_path.glob("*/*/summary.md")]
    summary = (sweep / "summary.md").read_text()
    assert "## Best by" in summary and "## Over seeds" in summary
    jobs = {p.parent.name: json.loads(p.read_text()) for p in sweep.glob("*/metrics.json")}
    assert sorted(jobs) == ["0", "1", "2", "3"]
    best = {row[0]: row for row in section(summary, "Best by")[1:]}
    assert {"linear probe top-1", "RankMe", "LiDAR", "uniformity", "alignment"} <= set(best)
    for name, sign in (("RankMe", 1.0), ("LiDAR", 1.0), ("uniformity", -1.0), ("alignment", -1.0)):
        key, job = best[name][1], best[name][3]
        values = {j: m[key] for j, m in jobs.items()}
        assert values[job] == (max if sign > 0 else min)(values.values())  # selection by the proxy names its best job
        proxy, probe = [sign * jobs[j][key] for j in sorted(jobs)], [jobs[j]["linear_top1"] for j in sorted(jobs)]
        for cell, expected in zip(best[name][7:], (spearman(proxy, probe), kendall_tau(proxy, probe)), strict=True):
            assert cell == (f"{expected:+.2f}" if math.isfinite(expected) else "n/a")
    groups = section(summary, "Over seeds")[1:]
    assert sorted(row[0] for row in groups) == ["method=byol", "method=simclr"] and all(row[2] == "0 1" and row[3] == "2" for row in groups)
    assert "Spearman rho vs probe" in done.stdout  # printed at the end of the sweep
