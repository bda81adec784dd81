"""Hydra callback: after a -m sweep, a summary table (CSV, markdown, sortable HTML) of every job's metrics at the sweep root."""

from __future__ import annotations

import csv
import html
import io
import json
import re
from pathlib import Path
from typing import Any, cast

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from ssl_train.metrics import (
    BACKBONE,
    DATA,
    EPOCHS,
    IMAGES_PER_S,
    KNN_TOP1,
    LINEAR_TOP1,
    METHOD,
    RANDOM_INIT_LINEAR_TOP1,
    STEPS,
    WALL_TIME_S,
)
from ssl_train.run_dir import HYDRA_SUBDIR, METRICS_FILE, replace_atomically
from ssl_train.tracking.report import write_summary_html

SUMMARY_COLUMNS = (METHOD, BACKBONE, DATA, LINEAR_TOP1, KNN_TOP1, RANDOM_INIT_LINEAR_TOP1, EPOCHS, STEPS, WALL_TIME_S, IMAGES_PER_S)


def markdown_cell(value: Any) -> str:
    """A value as one Markdown table cell: HTML escaped (<, >, &), pipes backslash-escaped, line breaks as spaces."""
    return re.sub(r"[\r\n]+", " ", html.escape(str(value), quote=False)).replace("|", "\\|")


def collect_sweep(sweep_dir: Path) -> list[dict[str, Any]]:
    """One row per finished job under sweep_dir: its overrides and metrics.json, in job order."""
    jobs = []
    for metrics_path in sorted(sweep_dir.glob(f"*/{METRICS_FILE}"), key=lambda p: (len(p.parent.name), p.parent.name)):
        overrides_path = metrics_path.parent / HYDRA_SUBDIR / "overrides.yaml"
        overrides = [str(o) for o in cast(list, OmegaConf.to_container(OmegaConf.load(overrides_path)))] if overrides_path.is_file() else []  # a list
        jobs.append((metrics_path, overrides))
    shared = set.intersection(*(set(o) for _, o in jobs)) if len(jobs) > 1 else set()
    # only the overrides that tell the jobs apart
    return [{"job": p.parent.name, "overrides": " ".join(o for o in overrides if o not in shared), **json.loads(p.read_text())} for p, overrides in jobs]


def write_summary(sweep_dir: Path) -> list[dict[str, Any]]:
    """Write summary.csv (every key), summary.md and summary.html (the main columns; jobs link to their report.html) into
    sweep_dir, each replacing the last sweep's in one step (a symbolic link there is replaced, never written through)."""
    rows = collect_sweep(sweep_dir)
    if not rows:
        return rows
    keys = ["job", "overrides"] + sorted({k for row in rows for k in row} - {"job", "overrides"})
    table = io.StringIO(newline="")
    writer = csv.DictWriter(table, fieldnames=keys)
    writer.writeheader()
    writer.writerows(rows)
    replace_atomically(sweep_dir / "summary.csv", table.getvalue())
    columns = ["job", "overrides"] + [c for c in SUMMARY_COLUMNS if any(c in row for row in rows)]
    lines = ["| " + " | ".join(markdown_cell(c) for c in columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = [f"{row[c]:.4f}" if isinstance(row.get(c), float) and c.endswith("top1") else markdown_cell(row.get(c, "")) for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    replace_atomically(sweep_dir / "summary.md", "\n".join(lines) + "\n")
    write_summary_html(sweep_dir, rows, columns)
    return rows


class SweepSummary(Callback):
    """On multirun end, summarise the jobs' metrics.json files at the sweep root (summary.csv, summary.md, summary.html)."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        rows = write_summary(sweep_dir)
        if rows:
            print(f"[ssl_train] sweep summary of {len(rows)} job(s): {sweep_dir / 'summary.md'}")
            print((sweep_dir / "summary.md").read_text())
