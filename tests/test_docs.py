"""The README stays a user's guide and the documentation stays true: size and form of the README, links that lead
somewhere, CI running the README's own test command, and every `python -m ssl_train ...` shown in the README or in
docs/ composing with the real configs (a command needing an optional package skips, naming it, as other tests do)."""

from __future__ import annotations

import itertools
import re
import shlex
import unicodedata
from pathlib import Path

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser

from tests.fixtures import REPO, compose_config

README = REPO / "README.md"
DOCS = sorted((REPO / "docs").rglob("*.md"))
PAGES = [README, *DOCS]
COMMIT_ID = re.compile(r"\b[0-9a-f]{7,40}\b")
FENCE = re.compile(r"^(```|~~~).*?^\1\s*$", re.S | re.M)
INLINE_CODE = re.compile(r"`[^`\n]+(?:\n[^`\n]+)?`")
LINK = re.compile(r"!?\[[^\]\n]*\]\(([^)\s]+)\)")
# the modules whose command line is a Hydra app, and the config each composes (ssl_train.toolkit is argparse)
HYDRA_APPS = {"ssl_train": "train", "ssl_train.eval": "probe"}
COMMAND = re.compile(r"python -m (ssl_train(?:\.\w+)?)(?=\s|$|`)(.*)")


def rel(path: Path) -> str:
    return str(path.relative_to(REPO))


# --- the README: a user's guide ---


def test_readme_is_short_with_short_lines_and_no_commit_ids() -> None:
    lines = README.read_text().splitlines()
    assert len(lines) <= 300, f"README.md has {len(lines)} lines; at most 300 (detail belongs in docs/)"
    long = [f"{i}: {len(line)} chars" for i, line in enumerate(lines, 1) if len(line) > 120]
    assert not long, f"README.md lines over 120 characters: {long}"
    ids = [f"{i}: {m.group()}" for i, line in enumerate(lines, 1) for m in COMMIT_ID.finditer(line)]
    assert not ids, f"README.md names commits (provenance belongs in docs/results.md): {ids}"


def test_ci_runs_the_readme_test_command_verbatim() -> None:
    """`.ci/run` step 1 is the README's test command, character for character: CI tests what a user runs."""
    code = [line for block in FENCE.finditer(README.read_text()) for line in block.group(0).splitlines()]
    readme_commands = [line for line in code if line.rstrip().endswith("&& pytest")]
    assert len(readme_commands) == 1, f"the README should show one test command ending in '&& pytest': {readme_commands}"
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    step1 = next(i for i, line in enumerate(ci) if line.startswith("# --- 1."))
    assert ci[step1 + 1] == readme_commands[0]


# --- links ---


def slug(heading: str) -> str:
    """The anchor Python-Markdown's toc (mkdocs) gives a heading; GitHub gives the same for headings without '/' or '&'."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).replace("`", "").replace("*", "")
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    text = re.sub(r"[^\w\s-]", "", text).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def anchors(page: Path) -> set[str]:
    prose = FENCE.sub("", page.read_text())
    return {slug(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.+?)\s*#*\s*$", prose, re.M)}


def relative_links(page: Path) -> list[str]:
    prose = INLINE_CODE.sub("", FENCE.sub("", page.read_text()))
    return [target for target in LINK.findall(prose) if not re.match(r"[a-z][a-z0-9+.-]*:", target)]


@pytest.mark.parametrize("page", PAGES, ids=rel)
def test_relative_links_lead_to_existing_files_and_headings(page: Path) -> None:
    broken = []
    for target in relative_links(page):
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target}: no file {file}")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(f"{target}: no heading with anchor #{anchor} in {rel(file)}")
    assert not broken, f"{rel(page)}: {broken}"


REPO_PATH = re.compile(r"(?<![\w/.-])((?:ssl_train|scripts|tests|configs|docs)/[\w./-]*\w)")


@pytest.mark.parametrize("page", PAGES, ids=rel)
def test_repository_paths_named_exist(page: Path) -> None:
    """A file or folder of the repository named in the text (`scripts/bench_quality.py`) exists: a rename that
    forgets the documentation fails here (of `configs/method/<name>.yaml` only the folder is a path)."""
    named = set(REPO_PATH.findall(page.read_text()))
    missing = sorted(p for p in named if not (REPO / p).exists())
    assert not missing, f"{rel(page)} names paths that do not exist: {missing}"


def test_config_comments_point_at_existing_docs() -> None:
    """A config's one-line note of what was measured names the docs page and heading that hold the figures."""
    broken = []
    for config in sorted((REPO / "configs").rglob("*.yaml")):
        for number, line in enumerate(config.read_text().splitlines(), 1):
            comment = line.partition("#")[2]
            for path, anchor in re.findall(r"\b(docs/[\w./-]+\.md)(?:#([\w-]+))?", comment):
                if not (REPO / path).is_file():
                    broken.append(f"{rel(config)}:{number}: no file {path}")
                elif anchor and anchor not in anchors(REPO / path):
                    broken.append(f"{rel(config)}:{number}: no heading #{anchor} in {path}")
    assert not broken, broken


# --- every command shown composes ---


def shown_commands(page: Path) -> list[tuple[int, str, str]]:
    """(line, module, arguments) of each `python -m ssl_train[.x] ...` in code blocks (continuation lines joined,
    comments dropped, stopping at `&&` / `|` / `;`) and in inline code spans."""
    text = page.read_text()
    found = []
    for block in FENCE.finditer(text):
        first = text.count("\n", 0, block.start()) + 1
        lines = block.group(0).splitlines()
        i = 0
        while i < len(lines):
            line, number = lines[i], first + i
            while line.rstrip().endswith("\\") and i + 1 < len(lines):
                i += 1
                line = line.rstrip()[:-1] + " " + lines[i]
            i += 1
            for match in COMMAND.finditer(line):
                found.append((number, match.group(1), re.split(r"\s(?:&&|\||;)\s", match.group(2))[0]))
    prose = FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), text)
    for span in INLINE_CODE.finditer(prose):
        match = COMMAND.search(" ".join(span.group(0).strip("`").split()))
        if match:
            found.append((prose.count("\n", 0, span.start()) + 1, match.group(1), match.group(2)))
    return found


def overrides_of(arguments: str) -> list[str]:
    """The Hydra overrides among a command's arguments (flags such as -m, --cfg job, --help left out). A placeholder
    `<a|b>` takes its first alternative; another `<...>` (a folder, a number to choose) is left for the caller."""
    tokens = shlex.split(arguments, comments=True)
    return [re.sub(r"<([^<>|]+)\|[^<>]*>", r"\1", token) for token in tokens if not token.startswith("-") and "=" in token]


def sweep_expansions(overrides: list[str]) -> list[list[str]]:
    """A multirun's overrides as single runs: every value of every sweep once (the others at their first value)."""
    parsed = OverridesParser.create().parse_overrides(overrides)
    choices = [[f"{o.get_key_element()}={v}" for v in o.sweep_string_iterator()] if o.is_sweep_override() else [o.input_line] for o in parsed]
    firsts = [c[0] for c in choices]
    runs = [firsts]
    for i, values in enumerate(choices):
        runs += [firsts[:i] + [value] + firsts[i + 1 :] for value in values[1:]]
    return [list(run) for run, _ in itertools.groupby(runs)]


COMMANDS = [(page, line, module, arguments) for page in PAGES for line, module, arguments in shown_commands(page) if module in HYDRA_APPS]


def test_the_commands_are_found() -> None:
    readme = [c for c in COMMANDS if c[0] == README]
    assert len(readme) >= 15 and any(c[3].strip() == "" for c in readme)  # the quick start's bare `python -m ssl_train`
    assert {c[2] for c in COMMANDS} == set(HYDRA_APPS)


@pytest.mark.parametrize(("page", "line", "module", "arguments"), COMMANDS, ids=[f"{rel(c[0])}:{c[1]}" for c in COMMANDS])
def test_shown_command_composes(page: Path, line: int, module: str, arguments: str, tmp_path: Path) -> None:
    overrides = overrides_of(arguments)
    placeholders = [o for o in overrides if "<" in o]
    if any(o.split("=", 1)[0].lstrip("+~") in GROUP_KEYS for o in placeholders):
        pytest.skip(f"a config group chosen by a placeholder: {placeholders}")
    overrides = [re.sub(r"<[^<>]*>", "PLACEHOLDER", o) for o in overrides]  # a value to fill in: any string composes
    for run in sweep_expansions(overrides):
        compose_config(run, tmp_path, config_name=HYDRA_APPS[module], tiny=False)


GROUP_KEYS = {p.name for p in (REPO / "configs").iterdir() if p.is_dir()}
