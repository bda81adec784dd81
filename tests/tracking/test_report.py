"""What a run leaves to look at: history.jsonl across resumes, the view grid and embedding maps, report.html and the
sweep's summary.html (structure here; a real headless browser renders them in a slow test)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from pathlib import Path

import pytest
import torch
from torchvision.io import decode_png, read_file

from ssl_train.callbacks import Preempted
from ssl_train.module import SSLModule
from ssl_train.run import run
from ssl_train.sweep import write_summary
from ssl_train.tracking.history import read_history, series
from ssl_train.tracking.report import line_chart, render_report, render_summary, write_summary_html
from ssl_train.tracking.training_pictures import batch_view_grid
from tests.fixtures import compose_config
from tests.optional import browser

THREE_EPOCHS = [
    "baseline=false",
    "eval=[linear,knn]",
    "trainer.max_epochs=3",
    "callbacks.online_eval.every_n_epochs=1",
    "callbacks.pictures.every_n_epochs=2",
    "callbacks.history.every_n_steps=1",
]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("report") / "run"
    run(compose_config(THREE_EPOCHS, out))
    return out


def test_history_has_every_step_and_each_evaluation(finished_run: Path) -> None:
    records = read_history(finished_run / "history.jsonl")
    assert [x for x, _ in series(records, "train/loss")] == [1, 2, 3, 4, 5, 6]  # 3 epochs x 2 batches, one record per step
    assert json.loads((finished_run / "metrics.json").read_text())["online_lidar"] > 1  # LiDAR beside RankMe
    assert series(records, "val/lidar") and series(records, "val/rankme")
    knn = series(records, "val/knn_top1")
    assert knn and knn[-1][1] == pytest.approx(json.loads((finished_run / "metrics.json").read_text())["online_knn_top1"], abs=1e-6)


def test_history_of_a_preempted_then_resumed_run_has_each_step_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    original = SSLModule.training_step
    overrides = [*THREE_EPOCHS, "probe=false", "trainer.limit_train_batches=3"]

    def signalled_at_step_4(self, batch, batch_idx):
        if self.global_step == 4:
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, batch, batch_idx)

    with monkeypatch.context() as patch:
        patch.setattr(SSLModule, "training_step", signalled_at_step_4)
        with pytest.raises(Preempted):
            run(compose_config(overrides, tmp_path / "job"))
    run(compose_config(overrides, tmp_path / "job"))
    steps = [x for x, _ in series(read_history(tmp_path / "job" / "history.jsonl"), "train/loss")]
    assert steps == list(range(1, 10))  # 9 steps, none twice, none missing
    # resuming that run's checkpoint in a new directory starts the new history from the old one
    run(compose_config([*overrides, "trainer.max_epochs=4", f"ckpt_path={tmp_path / 'job' / 'checkpoints' / 'last.ckpt'}"], tmp_path / "next"))
    assert [x for x, _ in series(read_history(tmp_path / "next" / "history.jsonl"), "train/loss")] == list(range(1, 13))


def test_view_grid_shows_each_sample_in_a_row_de_normalised() -> None:
    mean, std = (0.5,), (0.25,)
    first = torch.zeros(4, 1, 8, 8)  # de-normalised: 0.5 -> 128
    second = torch.full((4, 1, 4, 4), 2.0)  # a smaller (multi-crop) view: 0.5 + 2 * 0.25 = 1.0 -> 255, scaled to 8 px
    grid = batch_view_grid([first, second], mean, std, samples=3)
    assert grid.shape == (3, 3 * 10 + 2, 2 * 10 + 2)  # 3 rows (samples) x 2 columns (views), 2 px padding
    assert grid[:, 2:10, 2:10].unique().tolist() == [128] and grid[:, 2:10, 12:20].unique().tolist() == [255]


def test_pictures_written_during_training(finished_run: Path) -> None:
    pictures = finished_run / "pictures"
    assert sorted(p.name for p in pictures.glob("embedding_map-*.png")) == ["embedding_map-epoch002.png", "embedding_map-epoch003.png"]
    views = decode_png(read_file(str(pictures / "views.png")))
    assert views.shape == (3, 8 * 30 + 2, 2 * 30 + 2)  # 8 samples x 2 SimCLR views of 28 px
    events = list((finished_run / "tensorboard").glob("events.*"))
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = set().union(*(EventAccumulator(str(e)).Reload().Tags()["images"] for e in events))
    assert {"pictures/views", "pictures/embedding_map"} <= tags


def test_report_is_self_contained_with_curves_map_grid_and_baseline(finished_run: Path) -> None:
    page = (finished_run / "report.html").read_text()
    metrics = json.loads((finished_run / "metrics.json").read_text())
    assert page.count("<svg") >= 3 and "Training loss" in page and "kNN top-1 (test split)" in page
    assert page.count("data:image/png;base64,") == 3  # latest map, the earlier map, the view grid
    assert f"<th>linear probe top-1</th><td>{metrics['linear_top1']:.4f}</td>" in page
    assert "simclr" in page and "max_epochs: 3" in page  # the config
    assert not re.search(r"""(src|href)=["'](https?:)?//""", page) and "<link" not in page  # nothing fetched from a network


def test_line_chart_scales_points_into_the_plot() -> None:
    svg = line_chart("t", [("a", [(0.0, 1.0), (10.0, 3.0)])], width=200, height=100)
    points = re.search(r'points="([^"]+)"', svg).group(1).split()
    (x0, y0), (x1, y1) = (tuple(map(float, p.split(","))) for p in points)
    assert (x0, x1) == (56.0, 188.0) and (y0, y1) == (66.0, 28.0)  # left/right margins; y grows downwards
    assert line_chart("empty", [("a", [])]) == ""


def test_sweep_summary_html_is_sortable_and_links_reports(tmp_path: Path) -> None:
    for job, top1 in (("0", 0.5), ("1", 0.75)):
        (tmp_path / job / ".hydra").mkdir(parents=True)
        (tmp_path / job / ".hydra" / "overrides.yaml").write_text(f"- optim.optimizer.lr={job}\n")
        (tmp_path / job / "metrics.json").write_text(json.dumps({"method": "simclr", "linear_top1": top1}))
    (tmp_path / "1" / "report.html").write_text("<html></html>")
    write_summary(tmp_path)
    page = (tmp_path / "summary.html").read_text()
    assert '<a href="1/report.html">1</a>' in page and 'href="0/report.html"' not in page  # job 0 has no report
    assert page.count('<th class="sortable">') == 4 and "addEventListener('click'" in page
    assert '<td data-value="0.75">0.7500</td>' in page
    assert render_summary([], ["job"], "t").count("<tr>") == 1  # header only


HOSTILE_JOBS = ("javascript:alert(1)", '"><script>alert(1)', "a|b")  # a folder name cannot hold '/', so no '</script>'; the metrics do


def test_sweep_summary_escapes_hostile_job_folders(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    for job in HOSTILE_JOBS:
        (sweep / job).mkdir(parents=True)
        (sweep / job / "metrics.json").write_text(json.dumps({"method": "</script><img src=x onerror=alert(1)>", "linear_top1": 0.5}))
        (sweep / job / "report.html").write_text("<html></html>")
    (sweep / "a|b" / ".hydra").mkdir()
    (sweep / "a|b" / ".hydra" / "overrides.yaml").write_text('- "data.name=x\\n| injected | row |"\n')  # a line break and pipes in a cell
    write_summary(sweep)
    page = (sweep / "summary.html").read_text()
    hrefs = re.findall(r'href="([^"]*)"', page)
    assert sorted(hrefs) == ["%22%3E%3Cscript%3Ealert%281%29/report.html", "a%7Cb/report.html", "javascript%3Aalert%281%29/report.html"]
    assert not any(":" in h or h.startswith(("/", ".")) for h in hrefs)  # no scheme, nothing outside the sweep
    assert page.count("<script>") == page.count("</script>") == 1 and "&lt;script&gt;alert(1)" in page  # only the page's own sort script
    assert "<img" not in page and 'data-value="&quot;&gt;&lt;script&gt;' in page  # a quote cannot leave the attribute
    summary = (sweep / "summary.md").read_text()
    table = summary.split("\n\n")[0].splitlines()  # the jobs' table; the best-by section follows
    assert len({len(re.split(r"(?<!\\)\|", line)) for line in table}) == 1 and len(table) == 2 + len(HOSTILE_JOBS)  # same column count everywhere
    best_by = summary.split("## Best by\n\n")[1].splitlines()
    assert len({len(re.split(r"(?<!\\)\|", line)) for line in best_by}) == 1 and len(best_by) == 3  # header, rule, the probe's row
    text = summary
    assert "<script>" not in text and "</script>" not in text and "<img" not in text and any(line.startswith("| a\\|b | ") for line in table)


def test_summary_links_only_direct_child_folders(tmp_path: Path) -> None:
    outside = tmp_path / "x"
    outside.mkdir()
    (outside / "report.html").write_text("<html></html>")
    (tmp_path / "sweep").mkdir()
    (tmp_path / "sweep" / "link").symlink_to(outside)  # a job folder that resolves outside the sweep
    rows = [{"job": job} for job in ("../x", "..", "link", "/etc", "javascript:alert(1)")]
    page = (write_summary_html(tmp_path / "sweep", rows, ["job"])).read_text()
    assert "href=" not in page
    assert 'href="' not in render_summary([{"job": "..", "report": True}, {"job": "a/b", "report": True}], ["job"], "t")


def test_report_escapes_metrics_config_and_title() -> None:
    attack = '"><script>alert(1)</script>'
    page = render_report({attack: attack, "method": attack, "linear_top1": 0.5}, f"name: {attack}", [], None, f"run {attack}")
    assert "<script>" not in page and page.count("&lt;script&gt;alert(1)&lt;/script&gt;") >= 5


@pytest.mark.slow
@pytest.mark.needs("chromium")
def test_report_renders_in_a_headless_browser(finished_run: Path, tmp_path: Path) -> None:
    shot = tmp_path / "report.png"
    done = subprocess.run(
        [
            browser(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--window-size=1200,2400",
            f"--screenshot={shot}",
            (finished_run / "report.html").resolve().as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert shot.is_file(), done.stderr[-2000:]
    image = decode_png(read_file(str(shot)))
    assert image.shape[1:] == (2400, 1200)
    coloured = ((image[0].int() - image[2].int()).abs() > 60).float().mean().item()  # the curves' and map's colours, not a blank page
    assert coloured > 0.001 and (image < 200).any(dim=0).float().mean().item() > 0.02
