"""Hydra callback: after a -m sweep, a summary table (CSV, markdown, sortable HTML) of every job's metrics at the sweep
root, with the best job by the probe and by each label-free proxy (and how well each proxy ranked the jobs against the
probe), and the jobs that differ only by seed= as one row with mean ± std and a 95 % interval."""

from __future__ import annotations

import csv
import html
import io
import json
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, cast

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from ssl_train.eval.seeds import interval, mean_std, paired_difference, summarize, verdict
from ssl_train.eval.selection import Selection, finite, select
from ssl_train.metrics import (
    BACKBONE,
    DATA,
    EPOCHS,
    IMAGES_PER_S,
    KNN_TOP1,
    LINEAR_TOP1,
    METHOD,
    RANDOM_INIT_LINEAR_TOP1,
    SEED,
    STEPS,
    WALL_TIME_S,
)
from ssl_train.run_dir import HYDRA_SUBDIR, METRICS_FILE, replace_atomically
from ssl_train.tracking.report import write_summary_html

SUMMARY_COLUMNS = (METHOD, BACKBONE, DATA, LINEAR_TOP1, KNN_TOP1, RANDOM_INIT_LINEAR_TOP1, EPOCHS, STEPS, WALL_TIME_S, IMAGES_PER_S)
SEED_METRICS = (LINEAR_TOP1, KNN_TOP1)  # summarised over seeds; the first present is the one compared between rows
Table = tuple[str, list[str], list[list[str]]]  # (title, header, rows): one section of summary.md / .html / <name>.csv


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


def _number(value: float) -> str:
    return "n/a" if not math.isfinite(value) else f"{value:.4f}" if abs(value) < 10 else f"{value:.2f}"


def best_by_table(rows: Sequence[Mapping[str, Any]], selections: Sequence[Selection]) -> Table:
    """The best job by each criterion; for a proxy, Spearman's rho and Kendall's tau of its ranking against the probe's."""
    overrides = {str(row["job"]): str(row.get("overrides", "")) for row in rows}
    lines = [
        [
            s.criterion.name,
            s.key,
            "higher" if s.criterion.higher_is_better else "lower",
            s.job,
            overrides.get(s.job, ""),
            _number(s.value),
            str(s.n),
            "" if s.key == LINEAR_TOP1 else f"{s.spearman:+.2f}" if math.isfinite(s.spearman) else "n/a",
            "" if s.key == LINEAR_TOP1 else f"{s.kendall:+.2f}" if math.isfinite(s.kendall) else "n/a",
        ]
        for s in selections
    ]
    header = ["best by", "key", "better", "job", "overrides", "value", "runs", "Spearman rho vs probe", "Kendall tau vs probe"]
    return ("Best by", header, lines)


def seed_of(row: Mapping[str, Any]) -> int | None:
    """The seed a job was given on the command line (its seed=N override), or None."""
    found = [o for o in str(row.get("overrides", "")).split(" ") if o.startswith(f"{SEED}=")]
    try:
        return int(found[-1].split("=", 1)[1]) if found else None
    except ValueError:
        return None


def seed_groups(rows: Sequence[Mapping[str, Any]]) -> dict[str, list[Mapping[str, Any]]]:
    """The jobs keyed by their overrides without seed=N, in job order: jobs that differ only by seed share a key (a job
    without a seed= override keeps its own)."""
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        key = " ".join(o for o in str(row.get("overrides", "")).split(" ") if o and not o.startswith(f"{SEED}="))
        groups.setdefault(key if seed_of(row) is not None else f"job {row['job']}: {key}", []).append(row)
    return groups


def _by_seed(rows: Sequence[Mapping[str, Any]], key: str) -> dict[int, float]:
    return {seed: float(row[key]) for row in rows if (seed := seed_of(row)) is not None and finite(row.get(key)) is not None}


def seeds_table(rows: Sequence[Mapping[str, Any]]) -> Table | None:
    """One row per group of jobs that differ only by seed: mean ± std, n and the 95 % t interval of each score, and the
    paired difference (same seeds) of the main score to the best group's, with a verdict; None when no seed repeats."""
    groups = {name: members for name, members in seed_groups(rows).items() if seed_of(members[0]) is not None}
    metrics = [key for key in SEED_METRICS if any(finite(row.get(key)) is not None for row in rows)]
    if not metrics or all(len({seed_of(row) for row in members}) < 2 for members in groups.values()):
        return None
    main = metrics[0]
    scores = {name: _by_seed(members, main) for name, members in groups.items()}
    best = max((name for name in groups if scores[name]), key=lambda name: summarize(list(scores[name].values())).mean)
    lines = []
    for name, members in groups.items():
        line = [name or "(seed only)", " ".join(str(row["job"]) for row in members), " ".join(str(seed_of(row)) for row in members)]
        for key in metrics:
            values = list(_by_seed(members, key).values())
            summary = summarize(values) if values else None
            line += [str(summary.n), mean_std(summary), interval(summary)] if summary else ["0", "", ""]
        difference = paired_difference(scores[name], scores[best]) if name != best else None
        if name == best:
            line += ["", f"best mean {main}"]
        elif difference is None:
            line += ["", "no shared seed"]
        else:
            line += [f"{100 * difference.mean:+.2f} ± {100 * difference.half_width:.2f} (n={difference.n})", verdict(difference)]
        lines.append(line)
    header = ["overrides (seed aside)", "jobs", "seeds"]
    for key in metrics:
        header += [f"{key} n", f"{key} mean ± std", f"{key} 95 % interval"]
    header += [f"{main} - best, paired (points, 95 %)", "verdict"]
    return ("Over seeds", header, lines)


def markdown_table(header: Sequence[str], lines: Sequence[Sequence[Any]]) -> list[str]:
    return ["| " + " | ".join(markdown_cell(c) for c in header) + " |", "|" + "---|" * len(header)] + [
        "| " + " | ".join(markdown_cell(c) for c in line) + " |" for line in lines
    ]


def html_section(title: str, header: Sequence[str], lines: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in line) + "</tr>" for line in lines)
    return f"<h2>{html.escape(title)}</h2><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def write_summary(sweep_dir: Path) -> list[dict[str, Any]]:
    """Write summary.csv (every key), summary.md and summary.html (the main columns; jobs link to their report.html; the
    best-by and over-seeds sections, also as best_by.csv and seeds.csv) into sweep_dir, each replacing the last sweep's
    in one step (a symbolic link there is replaced, never written through)."""
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
    cells = [[f"{row[c]:.4f}" if isinstance(row.get(c), float) and c.endswith("top1") else row.get(c, "") for c in columns] for row in rows]
    lines = markdown_table(columns, cells)
    selections = select(rows)
    found = {"best_by": best_by_table(rows, selections) if selections else None, "seeds": seeds_table(rows)}
    sections = [(name, section) for name, section in found.items() if section is not None]
    for name, (title, header, body) in sections:
        lines += ["", f"## {title}", "", *markdown_table(header, body)]
        section = io.StringIO(newline="")
        csv.writer(section).writerows([header, *body])
        replace_atomically(sweep_dir / f"{name}.csv", section.getvalue())
    if selections and any(s.key != LINEAR_TOP1 and s.n >= 2 and math.isfinite(s.spearman) for s in selections):
        lines += ["", "rho, tau: how a proxy orders the runs against the linear probe (+1 the same order, 0 unrelated, -1 reversed); few runs make them noisy."]
    replace_atomically(sweep_dir / "summary.md", "\n".join(lines) + "\n")
    write_summary_html(sweep_dir, rows, columns, "".join(html_section(*section) for _, section in sections))
    return rows


class SweepSummary(Callback):
    """On multirun end, summarise the jobs' metrics.json files at the sweep root (summary.csv, summary.md, summary.html)."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        rows = write_summary(sweep_dir)
        if rows:
            print(f"[ssl_train] sweep summary of {len(rows)} job(s): {sweep_dir / 'summary.md'}")
            print((sweep_dir / "summary.md").read_text())
