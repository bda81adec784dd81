"""Rows of local text, CSV and JSONL files read as data: undecodable, invalid or incomplete rows skipped and counted
(`SkipCount`), reported in one line; an over-long CSV field refused in one line naming the file and row."""

from __future__ import annotations

import csv
import io
import json
import logging
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ssl_train.errors import DataNotFoundError, UserError

log = logging.getLogger(__name__)


@dataclass
class SkipCount:
    """Why rows were left out of one file, for the one-line report."""

    path: Path
    reasons: Counter = field(default_factory=Counter)

    def total(self) -> int:
        return sum(self.reasons.values())

    def report(self) -> None:
        if self.reasons:
            log.warning("%s: skipped %d row(s): %s", self.path, self.total(), ", ".join(f"{n} {why}" for why, n in self.reasons.most_common()))


SURROGATES = re.compile("[\udc80-\udcff]")  # undecodable bytes, as `surrogateescape` decoding marks them


def _read_text(path: Path) -> str:
    if not path.is_file():
        raise DataNotFoundError(f"{path}: no such file")
    return path.read_bytes().decode("utf-8", errors="surrogateescape")  # a row holding undecodable bytes is skipped, not the file


def _csv_rows(raw: str, path: Path, columns: Sequence[str]) -> list[dict[str, Any]]:
    """Every row of a CSV text whose header names `columns`; a field over the csv module's limit (or any CSV syntax
    error) is one UserError naming the file, the row and the line it starts on."""
    reader, rows, header, start = csv.DictReader(io.StringIO(raw)), [], None, 1
    try:
        header = reader.fieldnames or []
        missing = [c for c in columns if c not in header]
        if missing:
            raise UserError(f"{path}: no column {', '.join(map(repr, missing))}; the header has {', '.join(header) or 'nothing'}")
        start = reader.reader.line_num + 1
        for row in reader:
            rows.append(row)
            start = reader.reader.line_num + 1
    except csv.Error as error:
        where = f"{path}: {'the header row' if header is None else f'row {len(rows) + 1}'} (starting at line {start})"
        if "field limit" in str(error):
            raise UserError(
                f"{where}: a field longer than {csv.field_size_limit()} characters; an unclosed quote makes the rest of the file "
                "one field: check the file's quoting"
            ) from None
        raise UserError(f"{where}: not valid CSV ({error})") from None
    return rows


def read_records(path: Path, columns: Sequence[str]) -> tuple[list[dict[str, str]], SkipCount]:
    """The rows of a .csv (header row) or .jsonl file as {column: value} for `columns`; rows that do not decode as UTF-8,
    are not valid JSON, lack a column or hold an empty value are skipped and counted."""
    suffix, skips = path.suffix.lower(), SkipCount(path)
    if suffix not in (".csv", ".jsonl", ".json"):
        raise UserError(f"{path}: unknown table format {suffix!r}; allowed: .csv, .jsonl")
    raw, rows = _read_text(path), []
    if suffix == ".csv":
        candidates: list[Any] = _csv_rows(raw, path, columns)
    else:
        candidates = []
        for line in raw.splitlines():
            if not line.strip():
                skips.reasons["empty line"] += 1
                continue
            try:
                candidates.append(json.loads(line))
            except (ValueError, RecursionError):  # RecursionError: nested deeper than the interpreter's recursion limit
                skips.reasons["not UTF-8" if SURROGATES.search(line) else "not valid JSON"] += 1
    for row in candidates:
        if not isinstance(row, dict):
            skips.reasons["not a JSON object"] += 1
            continue
        try:
            values = {c: None if row.get(c) is None else str(row.get(c)).strip() for c in columns}
        except RecursionError:  # a value nested just under json's limit can still be too deep to turn into text
            skips.reasons["nested too deep"] += 1
            continue
        missing = [c for c, v in values.items() if not v]
        if missing:
            skips.reasons[f"no {missing[0]!r}"] += 1
        elif any(SURROGATES.search(v) for v in values.values() if v is not None):
            skips.reasons["not UTF-8"] += 1
        else:
            rows.append({c: v for c, v in values.items() if v is not None})  # all of them: none is missing
    skips.report()
    return rows, skips


def read_rows(path: Path, text_column: str, label_column: str | None) -> tuple[list[str], list[str | None], SkipCount]:
    """(texts, label strings or None, skip count) of a .txt (one text per line, or `label<TAB>text` with a label
    column), .csv (header row) or .jsonl file."""
    if path.suffix.lower() != ".txt":
        rows, skips = read_records(path, [text_column] + ([label_column] if label_column else []))
        return [r[text_column] for r in rows], [r[label_column] if label_column else None for r in rows], skips
    skips, texts, labels = SkipCount(path), [], []
    for line in _read_text(path).splitlines():
        label, tab, text = line.partition("\t") if label_column is not None else (None, "\t", line)
        if not tab:
            skips.reasons["no label<TAB>text"] += 1
        elif SURROGATES.search(line):
            skips.reasons["not UTF-8"] += 1
        elif not text.strip() or (label is not None and not label.strip()):
            skips.reasons["empty text" if not text.strip() else "empty label"] += 1
        else:
            texts.append(text.strip())
            labels.append(label.strip() if label is not None else None)
    skips.report()
    return texts, labels, skips
