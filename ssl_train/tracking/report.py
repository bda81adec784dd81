"""report.html per run and summary.html per sweep: self-contained pages (inline SVG curves, PNGs as data URIs, no
script or style from the network) that open from disk."""

from __future__ import annotations

import base64
import html
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

from ssl_train.metrics import (
    BACKBONE,
    DATA,
    EPOCHS,
    FIT_TIME_S,
    GLOBAL_BATCH_SIZE,
    IMAGE_RETRIEVAL_MAP_AT_R,
    IMAGES_PER_S,
    INITIAL_WEIGHTS,
    KNN_TOP1,
    LINEAR_TOP1,
    METHOD,
    OUTPUT_DIR,
    PROBE_ONLINE_TOP1,
    RANDOM_INIT_LINEAR_TOP1,
    RAW_INPUT_LINEAR_TOP1,
    STEPS,
    TRAIN_LOSS,
    VAL_KNN_TOP1,
    VAL_LIDAR,
    VAL_ONLINE_TOP1,
    VAL_RANKME,
    WALL_TIME_S,
    ZERO_SHOT_TOP1,
)
from ssl_train.run_dir import METRICS_FILE, replace_atomically
from ssl_train.tracking.history import FILE as HISTORY_FILE
from ssl_train.tracking.history import read_history, series
from ssl_train.tracking.reference import ALARM_KEY, BAND_FILE, Band, BandError, read_band

REPORT_FILE, SUMMARY_FILE = "report.html", "summary.html"
VIEWS_FILE, MAP_PATTERN = "views.png", "embedding_map-epoch{epoch:03d}.png"  # written by tracking.training_pictures
COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b")
CURVES = (  # (title, [(label, history key)], the reference band's curve drawn behind them)
    ("Training loss", [(TRAIN_LOSS, TRAIN_LOSS)], TRAIN_LOSS),
    ("Online linear probe top-1", [("train batches", PROBE_ONLINE_TOP1), ("test split", VAL_ONLINE_TOP1)], None),
    ("kNN top-1 (test split)", [("k=20", VAL_KNN_TOP1)], VAL_KNN_TOP1),
    ("Effective rank", [("RankMe", VAL_RANKME), ("LiDAR", VAL_LIDAR)], VAL_RANKME),
)
HEADLINE = (  # (label, metrics.json key)
    ("linear probe top-1", LINEAR_TOP1),
    ("kNN top-1 (k=20)", KNN_TOP1),
    ("raw input, same probe", RAW_INPUT_LINEAR_TOP1),
    ("random-init encoder, same probe", RANDOM_INIT_LINEAR_TOP1),
    ("zero-shot top-1", ZERO_SHOT_TOP1),
    ("retrieval mAP@R", IMAGE_RETRIEVAL_MAP_AT_R),
)
THROUGHPUT = (
    ("training images/s", IMAGES_PER_S),
    ("optimizer steps", STEPS),
    ("global batch", GLOBAL_BATCH_SIZE),
    ("fit time (s)", FIT_TIME_S),
    ("wall time (s)", WALL_TIME_S),
)
STYLE = """body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2em auto;max-width:1100px;color:#222;padding:0 1em}
h1{font-size:1.5em}h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #ddd}table{border-collapse:collapse;margin:.5em 0}
td,th{border:1px solid #ddd;padding:.25em .6em;text-align:left;font-variant-numeric:tabular-nums}th{background:#f4f4f4}
th.sortable{cursor:pointer}.grid{display:flex;flex-wrap:wrap;gap:1em}figure{margin:0}figcaption{font-size:.85em;color:#555}
img.pixels{image-rendering:pixelated;border:1px solid #ddd}pre{background:#f7f7f7;padding:1em;overflow:auto;font-size:.8em;max-height:40em}
.muted{color:#777}.alarm{color:#b00}"""


def _esc(value: Any) -> str:
    """Any value as HTML text, safe in element content and in a quoted attribute."""
    return html.escape(str(value), quote=True)


def _fmt(value: Any) -> str:
    """Scores with 4 decimals, larger figures (times, images/s) with 1, whole numbers as such; anything else HTML-escaped."""
    if isinstance(value, float):
        if value.is_integer() and abs(value) >= 1:
            return f"{value:.0f}"
        return f"{value:.4f}" if abs(value) < 10 else f"{value:,.1f}"
    return _esc(value)


def line_chart(
    title: str,
    lines: Sequence[tuple[str, Sequence[tuple[float, float]]]],
    width: int = 500,
    height: int = 260,
    band: Sequence[tuple[float, float, float]] = (),
    band_label: str = "reference",
) -> str:
    """An inline SVG line chart of (x, y) series with min/max axis labels and a legend; '' when there is nothing to draw.
    `band` ((x, low, high) points) is shaded behind the lines, with its middle dashed."""
    lines = [(label, points) for label, points in lines if points]
    if not lines:
        return ""
    xs = [x for _, pts in lines for x, _ in pts] + [x for x, _, _ in band]
    ys = [y for _, pts in lines for _, y in pts] + [y for _, low, high in band for y in (low, high)]
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    x1, y1 = (x1 if x1 > x0 else x0 + 1), (y1 if y1 > y0 else y0 + abs(y0) * 0.1 + 1e-6)
    left, right, top, bottom = 56, 12, 28, 34
    sx = lambda x: left + (x - x0) / (x1 - x0) * (width - left - right)
    sy = lambda y: height - bottom - (y - y0) / (y1 - y0) * (height - top - bottom)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" aria-label="{_esc(title)}">',
        f'<text x="{left}" y="16" font-size="13" font-weight="600">{_esc(title)}</text>',
        f'<line x1="{left}" y1="{height - bottom}" x2="{width - right}" y2="{height - bottom}" stroke="#999"/>',
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{height - bottom}" stroke="#999"/>',
        f'<text x="{left - 4}" y="{sy(y1) + 4:.1f}" font-size="10" text-anchor="end">{y1:.4g}</text>',
        f'<text x="{left - 4}" y="{sy(y0) + 4:.1f}" font-size="10" text-anchor="end">{y0:.4g}</text>',
        f'<text x="{left}" y="{height - bottom + 14}" font-size="10">{x0:.0f}</text>',
        f'<text x="{width - right}" y="{height - bottom + 14}" font-size="10" text-anchor="end">{x1:.0f}</text>',
        f'<text x="{(left + width - right) / 2:.0f}" y="{height - 6}" font-size="10" text-anchor="middle">optimizer step</text>',
    ]
    if band:
        outline = [(x, high) for x, _, high in band] + [(x, low) for x, low, _ in reversed(band)]
        parts.append(f'<polygon fill="#999" fill-opacity="0.25" stroke="none" points="{" ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in outline)}"/>')
        middle = " ".join(f"{sx(x):.1f},{sy((low + high) / 2):.1f}" for x, low, high in band)
        parts.append(f'<polyline fill="none" stroke="#777" stroke-width="1" stroke-dasharray="4 3" points="{middle}"/>')
        parts.append(f'<text x="{width - right - 4}" y="{top + 12 + 13 * len(lines)}" font-size="11" text-anchor="end" fill="#777">{_esc(band_label)}</text>')
    for i, (label, points) in enumerate(lines):
        colour = COLOURS[i % len(COLOURS)]
        coords = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in points)
        parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="1.6" points="{coords}"/>')
        if len(points) < 12:
            parts += [f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="2.5" fill="{colour}"/>' for x, y in points]
        parts.append(f'<text x="{width - right - 4}" y="{top + 12 + 13 * i}" font-size="11" text-anchor="end" fill="{colour}">{_esc(label)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _png(path: Path, caption: str, width: int) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (
        f'<figure><img class="pixels" src="data:image/png;base64,{data}" width="{width}" alt="{_esc(caption)}">'
        f"<figcaption>{_esc(caption)}</figcaption></figure>"
    )


def _epoch_of(path: Path) -> int:
    found = re.search(r"epoch(\d+)", path.name)
    return int(found.group(1)) if found else -1


def _table(rows: Sequence[tuple[str, Any]]) -> str:
    return "<table>" + "".join(f"<tr><th>{_esc(label)}</th><td>{_fmt(value)}</td></tr>" for label, value in rows) + "</table>"


def band_points(reference: Band | None, key: str | None, steps: Any) -> list[tuple[float, float, float]]:
    """The reference band of one curve as (optimizer step, mean - spread, mean + spread), its fractions scaled by this run's steps."""
    curve = reference.curves.get(key) if reference is not None and key is not None else None
    if curve is None or not isinstance(steps, int | float) or steps <= 0:
        return []
    return [(f * steps, m - s, m + s) for f, m, s in zip(curve.fraction, curve.mean, curve.spread, strict=True)]


def reference_note(reference: Band | None, history: list[dict[str, Any]]) -> str:
    """The early alarm's lines (history.jsonl), or which band the curves are drawn against; '' without a band."""
    alarms = [str(r[ALARM_KEY]) for r in history if r.get(ALARM_KEY)]
    if alarms:
        return "".join(f'<p class="alarm"><strong>{_esc(line)}</strong></p>' for line in alarms)
    if reference is None:
        return ""
    return (
        f'<p class="muted">shaded: the reference band of this recipe (mean ± spread over seeds {_esc(list(reference.seeds))}, '
        f"{_esc(reference.measured_on)}); no early alarm</p>"
    )


def render_report(
    metrics: Mapping[str, Any], config_text: str, history: list[dict[str, Any]], pictures_dir: Path | None, title: str, reference: Band | None = None
) -> str:
    """The report page as a string (no file access beyond reading the PNGs under `pictures_dir`); `reference`: the
    recipe's band (tracking.reference), drawn behind the loss, kNN and RankMe curves."""
    headline = [(label, metrics[key]) for label, key in HEADLINE if key in metrics]
    if metrics.get(INITIAL_WEIGHTS):
        headline = [(label.replace("random-init", "initial (backbone.weights)"), value) for label, value in headline]
    charts = [
        line_chart(name, [(label, series(history, key)) for label, key in lines], band=band_points(reference, band_key, metrics.get(STEPS)))
        for name, lines, band_key in CURVES
    ]
    charts = [c for c in charts if c]
    pictures = []
    if pictures_dir is not None and pictures_dir.is_dir():
        maps = sorted(pictures_dir.glob("embedding_map-epoch*.png"), key=_epoch_of)
        if maps:
            pictures.append(_png(maps[-1], f"embedding map of the test split after epoch {_epoch_of(maps[-1])}, coloured by label", 420))
            pictures += [_png(p, f"after epoch {_epoch_of(p)}", 160) for p in maps[:-1][-4:]]
        if (pictures_dir / VIEWS_FILE).is_file():
            pictures.append(_png(pictures_dir / VIEWS_FILE, "augmented views fed to the model (one row per image, one column per view)", 160))
    body = [
        f"<h1>{_esc(title)}</h1>",
        f'<p class="muted">{_fmt(metrics.get(OUTPUT_DIR, ""))}: method {_fmt(metrics.get(METHOD, "?"))}, backbone '
        f"{_fmt(metrics.get(BACKBONE, '?'))}, data {_fmt(metrics.get(DATA, '?'))}, {_fmt(metrics.get(EPOCHS, '?'))} epochs</p>",
        "<h2>Results</h2>",
        _table(headline) if headline else '<p class="muted">no probe in this run</p>',
        "<h2>Curves</h2>",
        reference_note(reference, history),
        '<div class="grid">' + "".join(charts) + "</div>" if charts else '<p class="muted">no history.jsonl</p>',
        "<h2>Pictures</h2>",
        '<div class="grid">' + "".join(pictures) + "</div>" if pictures else '<p class="muted">no pictures</p>',
        "<h2>Throughput</h2>",
        _table([(label, metrics[key]) for label, key in THROUGHPUT if key in metrics]),
        "<h2>All metrics (metrics.json)</h2>",
        _table(sorted(metrics.items())),
        "<h2>Config</h2>",
        f"<pre>{_esc(config_text)}</pre>",
    ]
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{_esc(title)}</title>'
        f"<style>{STYLE}</style></head><body>{''.join(body)}</body></html>\n"
    )


def write_report(run_dir: Path) -> Path:
    """<run_dir>/report.html from metrics.json, history.jsonl, pictures/ and config_resolved.yaml."""
    metrics = json.loads((run_dir / METRICS_FILE).read_text())
    config_path = run_dir / "config_resolved.yaml"
    config_text = config_path.read_text() if config_path.is_file() else ""
    title = f"ssl_train run: {metrics.get(METHOD, '?')} on {metrics.get(DATA, '?')}"
    try:  # the band callbacks.reference_alarm matched, read as data; a damaged copy only loses the shading
        reference = read_band(run_dir / BAND_FILE) if (run_dir / BAND_FILE).is_file() else None
    except BandError:
        reference = None
    path = run_dir / REPORT_FILE
    replace_atomically(path, render_report(metrics, config_text, read_history(run_dir / HISTORY_FILE), run_dir / "pictures", title, reference))
    return path


SORT_SCRIPT = """document.querySelectorAll('th.sortable').forEach(function(th){th.addEventListener('click',function(){
var table=th.closest('table'),body=table.tBodies[0],i=Array.prototype.indexOf.call(th.parentNode.children,th),
up=th.dataset.order!=='asc';th.dataset.order=up?'asc':'desc';var rows=Array.prototype.slice.call(body.rows);
rows.sort(function(a,b){var x=a.cells[i].dataset.value||a.cells[i].textContent,y=b.cells[i].dataset.value||b.cells[i].textContent,
p=parseFloat(x),q=parseFloat(y),c=(!isNaN(p)&&!isNaN(q))?p-q:x.localeCompare(y);return up?c:-c;});
rows.forEach(function(r){body.appendChild(r);});});});"""


def _is_folder_name(name: str) -> bool:
    """A single path component (no separator, not '.' or '..'): a direct child of the folder the page sits in."""
    return name not in ("", ".", "..") and "/" not in name and "\\" not in name and "\0" not in name


def report_href(job: str) -> str | None:
    """The relative link to <job>/report.html, built from the job's folder name alone (URL-quoted, so never a scheme); None if not a folder name."""
    return f"{quote(job, safe='')}/{REPORT_FILE}" if _is_folder_name(job) else None


def render_summary(rows: Sequence[Mapping[str, Any]], columns: Sequence[str], title: str, sections: str = "") -> str:
    """A sortable table (click a header; inline script, no network), one row per job; a row whose 'report' is true links
    <job>/report.html; then `sections`, HTML made and escaped by the caller (the sweep's best-by and over-seeds tables)."""
    head = "".join(f'<th class="sortable">{_esc(c)}</th>' for c in columns)
    body = []
    for row in rows:
        cells = []
        for column in columns:
            value = row.get(column, "")
            href = report_href(str(value)) if column == "job" and row.get("report") else None
            if href is not None:
                cells.append(f'<td data-value="{_esc(value)}"><a href="{_esc(href)}">{_fmt(value)}</a></td>')
            else:
                cells.append(f'<td data-value="{_esc(value)}">{_fmt(value)}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{_esc(title)}</title><style>{STYLE}</style></head>'
        f'<body><h1>{_esc(title)}</h1><p class="muted">{len(rows)} job(s); click a column header to sort</p>'
        f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>{sections}<script>{SORT_SCRIPT}</script></body></html>\n"
    )


def _has_report(sweep_dir: Path, job: str) -> bool:
    """Whether <sweep_dir>/<job> is a direct child folder of sweep_dir (also once links are resolved) holding report.html."""
    if not _is_folder_name(job):
        return False
    folder = sweep_dir / job
    return folder.parent == sweep_dir and folder.resolve().parent == sweep_dir.resolve() and (folder / REPORT_FILE).is_file()


def write_summary_html(sweep_dir: Path, rows: Sequence[Mapping[str, Any]], columns: Sequence[str], sections: str = "") -> Path:
    """<sweep_dir>/summary.html; each job's name links to its report.html when the job is a folder directly under sweep_dir holding one."""
    linked = [{**row, "report": _has_report(sweep_dir, str(row["job"]))} for row in rows]
    path = sweep_dir / SUMMARY_FILE
    replace_atomically(path, render_summary(linked, columns, f"ssl_train sweep {sweep_dir.name}", sections))
    return path
