"""The benchmark scripts run: the GPU throughput rows as a CPU dry run, the quality table from finished runs."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures import REPO


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_gpu_preset_dry_runs_on_cpu() -> None:
    # SimCLR ResNet-18 fp32 per-sample, ResNet-18 bf16 batched, ResNet-50 fp32 batched, BYOL ResNet-18 fp32 batched
    done = subprocess.run(
        [sys.executable, "scripts/bench_throughput.py", "--preset", "gpu", "--dry-run", "--rows", "0", "3", "5", "9"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith(("| simclr", "| byol"))]
    assert len(rows) == 8  # each row printed as measured, then in the final table
    assert {r.split("|")[2].strip() for r in rows} == {"resnet18", "resnet50"} and all(r.rstrip().endswith("MiB |") for r in rows)


def test_quality_table_ranks_against_the_stronger_baseline(tmp_path: Path) -> None:
    bench = load_script("bench_quality")
    run_dir = tmp_path / "quick" / "simclr"
    run_dir.mkdir(parents=True)
    metrics = {
        "method": "simclr",
        "linear_top1": 0.87,
        "knn_k20_top1": 0.82,
        "raw_input_linear_top1": 0.85,
        "raw_input_knn_k20_top1": 0.84,
        "random_init_linear_top1": 0.86,
        "random_init_knn_k20_top1": 0.80,
        "wall_time_s": 150.0,
        "train_images_per_s": 1200.0,
    }
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    row = bench.run_one("simclr", "quick", tmp_path, [])  # a finished run is read, not rerun
    assert bench.margin(row) == pytest.approx(1.0)  # 0.87 - max(0.85, 0.86)
    line = bench.table([row]).splitlines()[-1]
    assert "| 0.8700 | 0.8200 | 0.8500 / 0.8400 | 0.8600 / 0.8000 | +1.0 pts | 150 s | 1200 |" in line and "`method=simclr`" in line
    assert bench.row_overrides("byol", "fmnist30") == ["method=byol", "experiment=fmnist30"]
    assert bench.row_overrides("cpc:spoken_digits", "quick") == ["method=cpc", "data=spoken_digits"]


def test_quality_rows_show_their_overrides_and_refuse_a_run_made_with_others(tmp_path: Path) -> None:
    bench = load_script("bench_quality")
    run_dir = tmp_path / "fmnist30" / "simclr"
    (run_dir / ".hydra").mkdir(parents=True)
    metrics = {
        "method": "simclr",
        "linear_top1": 0.9,
        "knn_k20_top1": 0.89,
        "raw_input_linear_top1": 0.85,
        "raw_input_knn_k20_top1": 0.86,
        "random_init_linear_top1": 0.86,
        "random_init_knn_k20_top1": 0.82,
        "wall_time_s": 1600.0,
        "train_images_per_s": 1100.0,
    }
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    (run_dir / ".hydra" / "overrides.yaml").write_text(
        "- method=simclr\n- experiment=fmnist30\n- trainer.enable_progress_bar=false\n- augment=byol_asymmetric\n"
    )
    row = bench.run_one("simclr", "fmnist30", tmp_path, ["augment=byol_asymmetric"])
    assert "`method=simclr experiment=fmnist30 augment=byol_asymmetric`" in bench.table([row])
    with pytest.raises(SystemExit, match="holds a run of 'method=simclr experiment=fmnist30 augment=byol_asymmetric'"):
        bench.run_one("simclr", "fmnist30", tmp_path, [])  # the default recipe's figures are not read from another recipe's run
    assert (run_dir / "metrics.json").is_file()


@pytest.mark.slow
def test_gpu_recipes_dry_run_on_cpu() -> None:
    """scripts/bench_recipes.py builds and steps the ViT-S/16 GPU recipes on a synthetic image folder (tiny, on the CPU)."""
    done = subprocess.run([sys.executable, "scripts/bench_recipes.py", "--dry-run"], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith("| `experiment=")]
    assert len(rows) == 4 and not any("failed" in r for r in rows), rows  # each printed as measured, then in the final table
    assert {r.split("`")[1] for r in rows} == {"experiment=dino_vit_small", "experiment=mocov3_vit_small"}
    assert all(r.split("|")[5].strip() == "off" and r.rstrip().endswith("|") for r in rows)  # no torch.compile on the CPU


def write_seed_runs(out: Path) -> None:
    """Finished quick-budget runs of simclr and byol at seeds 0, 1, 2 (seed 0 in the folder a run without --seeds uses)."""
    for method, linear, knn in (("simclr", (0.80, 0.82, 0.84), (0.75, 0.75, 0.78)), ("byol", (0.79, 0.815, 0.83), (0.74, 0.76, 0.77))):
        for seed in range(3):
            run_dir = out / "quick" / (method + (f"-seed{seed}" if seed else ""))
            (run_dir / ".hydra").mkdir(parents=True)
            (run_dir / ".hydra" / "overrides.yaml").write_text(f"- method={method}\n" + (f"- seed={seed}\n" if seed else ""))
            metrics = {
                "method": method,
                "linear_top1": linear[seed],
                "knn_k20_top1": knn[seed],
                "raw_input_linear_top1": 0.78 + seed / 100,  # the stronger baseline at every seed
                "raw_input_knn_k20_top1": 0.7,
                "random_init_linear_top1": 0.70,
                "random_init_knn_k20_top1": 0.6,
                "wall_time_s": 100.0,
                "train_images_per_s": 1000.0,
            }
            (run_dir / "metrics.json").write_text(json.dumps(metrics))


def test_quality_over_seeds_mean_interval_and_paired_verdicts(tmp_path: Path) -> None:
    bench = load_script("bench_quality")
    write_seed_runs(tmp_path)
    rows = [bench.run_one(method, "quick", tmp_path, [], seed) for method in ("simclr", "byol") for seed in range(3)]
    assert rows[1]["overrides"] == ["method=simclr", "seed=1"] and "`method=simclr seed=1`" in bench.table(rows[1:2])
    simclr, byol = bench.seed_table(rows).splitlines()[2:]
    # simclr: linear .80 .82 .84 (std .02, half width 4.3027 x .02 / sqrt 3 = .0497); margins over raw .78 .79 .80:
    # 2, 3, 4 points -> 3.00 ± 4.3027 / sqrt 3 = 2.48, an interval above 0
    assert "| quick | 3 | 0.8200 ± 0.0200 | [0.7703, 0.8697] | 0.7600 ± 0.0173 |" in simclr
    assert simclr.endswith("| +3.00 ± 2.48 | better by 3.00 ± 2.48 points |")
    # byol: margins 1, 2.5, 3 points -> 2.17 ± 2.59: the interval holds 0
    assert byol.endswith("| +2.17 ± 2.59 | within seed noise |")
    # simclr - byol per seed: 1, 0.5, 1 points -> 0.83 ± 4.3027 x 0.2887 / sqrt 3 = 0.72
    assert bench.comparisons(rows, [["simclr", "byol"]]) == (
        "- quick: simclr - byol, linear top-1 on 3 shared seed(s): +0.83 ± 0.72 points: better by 0.83 ± 0.72 points"
    )


def test_quality_seeds_from_the_command_line_on_finished_runs(tmp_path: Path) -> None:
    """The script's own --seeds / --compare path, reading finished runs (nothing trains)."""
    write_seed_runs(tmp_path)
    command = [sys.executable, "scripts/bench_quality.py", "--methods", "simclr", "byol", "--seeds", "3", "--compare", "simclr", "byol", "--out", str(tmp_path)]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    written = (tmp_path / "quality_table.md").read_text()
    assert "Over 3 seeds (0..2; interval: Student t, 95 %):" in written and "better by 0.83 ± 0.72 points" in written
    assert written.count("`method=simclr") == 3 and not any(line.startswith("+ ") for line in done.stdout.splitlines())  # read, none run
