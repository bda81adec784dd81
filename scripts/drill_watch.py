"""Writes outside a case's run directory, for scripts/fault_drill.py: a snapshot of paths, sizes and mtimes of the user's home,
the temp dir and the repository, compared before and after each case; a path new, changed or removed outside the case's own
directories is named.

As root, the drill runs in a private mount namespace where those three folders are overlays (OverlayWatcher): everything the
drill's processes write lands in the overlays' upper layers, so the snapshot compared is of those layers, and the other
processes of a shared machine (an editor saving a file in the repo, another test run in /tmp) cannot be mistaken for the
drill (what it writes through a descriptor opened before the overlays, its own stdout, is not a case's write). Without root,
the folders themselves are compared (SnapshotWatcher): one `find -printf` snapshot at the start, then
around each case only what `find` reports with an mtime or ctime newer than a marker touched before it (a new file, a changed
one, one moved in, the folder a path was removed from); there a concurrent process's write is reported too, and `--ignore`
names paths not to watch. Either way a folder counts by its entries, not its own mtime: a file made and removed within the
case is no change.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

SKIP_NAMES = ("__pycache__",)  # bytecode the interpreter writes when it first imports a module (anywhere: site-packages, the repo)
REPO_SKIPS = (
    ".venv",  # the environment the drill runs in (its own packages' caches)
    ".git",  # git's store: the run only reads HEAD (git rev-parse, for the run's record); other git commands in the tree change it
    ".pytest_cache",
    ".ruff_cache",  # pytest's and ruff's caches: ssl_train never runs them; they change when a test or lint runs beside the drill
)
Entry = tuple[str, int, int]  # kind ('f' file, 'd' folder, 'l' link, 'w' overlay whiteout: removed, 'o' opaque folder: replaced), size, mtime


def watched_roots(repo: Path) -> list[Path]:
    """The user's home, the temp dir and the repository."""
    return [Path.home().resolve(), Path(tempfile.gettempdir()).resolve(), repo.resolve()]


def inside(path: str, folders: list[str]) -> bool:
    """Whether `path` is one of `folders` or lies under one."""
    return any(path == f or path.startswith(f + os.sep) for f in folders)


class Skips:
    """What is not watched: SKIP_NAMES anywhere, REPO_SKIPS in the repo, and `ignore`."""

    def __init__(self, repo: Path, ignore: tuple[Path, ...]) -> None:
        self.paths = [str(repo.resolve() / name) for name in REPO_SKIPS] + [str(p.resolve()) for p in ignore]

    def __call__(self, path: str) -> bool:
        """Whether `path` is not watched."""
        return inside(path, self.paths) or any(part in SKIP_NAMES for part in Path(path).parts)


def report(changes: dict[str, str], allowed: list[str]) -> list[str]:
    """'new|changed|removed|replaced <path>' outside `allowed`, a new folder named once rather than with everything in it."""
    new_folders = [p for p, what in changes.items() if what == "new" and p.endswith(os.sep)]
    named = []
    for path, what in sorted(changes.items()):
        bare = path.rstrip(os.sep)
        if not inside(bare, allowed) and not any(bare != f.rstrip(os.sep) and bare.startswith(f) for f in new_folders):
            named.append(f"{what} {path}")
    return named


class OverlayWatcher:
    """~, the temp dir and the repo as overlays in this (private) mount namespace; each case compares their upper layers."""

    def __init__(self, repo: Path, base: Path, ignore: tuple[Path, ...] = ()) -> None:
        if os.readlink("/proc/self/ns/mnt") == os.readlink(f"/proc/{os.getppid()}/ns/mnt"):  # the parent: the drill that ran `unshare`
            raise RuntimeError("not in a mount namespace of its own: refusing to mount overlays that other processes would see")
        self.roots, self.skips, self.layers = watched_roots(repo), Skips(repo, ignore), []
        subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(base)], check=True, capture_output=True)
        for i, root in enumerate(r for r in self.roots if not any(r != o and inside(str(r), [str(o)]) for o in self.roots)):
            upper, work = base / f"{i}-upper", base / f"{i}-work"
            upper.mkdir()
            work.mkdir()
            lower = os.open(root, os.O_RDONLY | os.O_DIRECTORY)  # /proc/self/fd/<lower>/... reads the folder under the overlay
            options = f"lowerdir={root},upperdir={upper},workdir={work}"
            done = subprocess.run(["mount", "-t", "overlay", "overlay", "-o", options, str(root)], capture_output=True, text=True)
            if done.returncode != 0:
                raise RuntimeError(f"mount overlay on {root}: {done.stderr.strip()}")
            self.layers.append((str(root), upper, lower))

    def describe(self) -> str:
        """What is watched, and how, for the drill's first line."""
        return f"watching {', '.join(map(str, self.roots))} as overlays (only this drill's writes are in their upper layers)"

    def _snapshot(self) -> dict[str, Entry]:
        """path -> entry of everything in the upper layers (the drill's writes since the overlays were mounted)."""
        entries: dict[str, Entry] = {}
        for root, upper, _ in self.layers:
            for folder, dirs, files in os.walk(upper):
                for name in dirs + files:
                    path = os.path.join(root, os.path.relpath(os.path.join(folder, name), upper))
                    if self.skips(path):
                        continue
                    st = os.lstat(os.path.join(folder, name))
                    if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
                        entries[path] = ("w", 0, 0)
                    elif stat.S_ISDIR(st.st_mode):
                        opaque = _xattr(os.path.join(folder, name), "trusted.overlay.opaque") == b"y"
                        entries[path + os.sep] = ("o" if opaque else "d", 0, 0)
                    else:
                        entries[path] = ("l" if stat.S_ISLNK(st.st_mode) else "f", st.st_size, st.st_mtime_ns)
        return entries

    def _below(self, path: str) -> Entry | None:
        """The entry the overlay hides at `path`: what the folder held before the drill."""
        for root, _, lower in self.layers:
            if inside(path.rstrip(os.sep), [root]):
                try:
                    st = os.lstat(f"/proc/self/fd/{lower}/{os.path.relpath(path.rstrip(os.sep), root)}")
                except OSError:
                    return None
                return ("d", 0, 0) if stat.S_ISDIR(st.st_mode) else ("l" if stat.S_ISLNK(st.st_mode) else "f", st.st_size, st.st_mtime_ns)
        return None

    @contextmanager
    def case(self, allowed: list[Path]) -> Iterator[list[str]]:
        """Yields a list that, after the block, names each change outside `allowed`."""
        before, problems = self._snapshot(), []
        try:
            yield problems
        finally:
            after, changes = self._snapshot(), {}
            for path, entry in after.items():
                if before.get(path) == entry:
                    continue
                below = self._below(path)
                if entry[0] == "w":
                    changes[path] = "removed"
                elif entry[0] == "o" and below is not None:
                    changes[path] = "replaced"
                elif below is None:
                    changes[path] = "new"
                elif entry[0] != "d" and below != entry:  # a copy-up alone (opened for writing, nothing changed) is no change
                    changes[path] = "changed"
            for path in set(before) - set(after):  # made by an earlier case or by the drill, gone now
                changes[path] = "removed"
            problems += report(changes, [str(p.resolve()) for p in allowed])


def _xattr(path: str, name: str) -> bytes | None:
    """An extended attribute of `path` (not followed through a link), or None."""
    try:
        return os.getxattr(path, name, follow_symlinks=False)
    except OSError:
        return None


class SnapshotWatcher:
    """Snapshot of (kind, size, mtime) per path under ~, the temp dir and the repo; `case()` names what changed outside the allowed paths."""

    def __init__(self, repo: Path, marker: Path, ignore: tuple[Path, ...] = ()) -> None:
        self.roots, self.repo, self.marker, self.skips = watched_roots(repo), repo.resolve(), marker, Skips(repo, ignore)
        marker.touch()
        self.state: dict[str, Entry] = {}
        self.children: dict[str, set[str]] = {}
        for path, entry in self._find(newer=False).items():
            self._set(path, entry)

    def describe(self) -> str:
        """What is watched, and how, for the drill's first line."""
        return f"watching {', '.join(map(str, self.roots))} ({len(self.state)} paths; other processes' writes there are reported too)"

    def _find(self, newer: bool) -> dict[str, Entry]:
        """path -> (kind, size, mtime) of every path under the roots, or of those changed since the marker was touched."""
        found: dict[str, Entry] = {}
        test = ["(", "-newer", str(self.marker), "-o", "-cnewer", str(self.marker), ")"] if newer else []
        for root in self.roots:
            nested = [str(o) for o in self.roots if o != root and inside(str(o), [str(root)])]
            prunes = ["(", "-name", SKIP_NAMES[0], *(a for p in [*self.skips.paths, *nested] for a in ("-o", "-path", p)), ")", "-prune", "-o"]
            command = ["find", str(root), "-xdev", *prunes, *test, "-printf", r"%y\t%s\t%T@\t%p\0"]
            listing = subprocess.run(command, capture_output=True, check=False).stdout.decode(errors="surrogateescape")
            for line in filter(None, listing.split("\0")):
                kind, size, mtime, path = line.split("\t", 3)
                found[path] = (kind, 0, 0) if kind == "d" else (kind, int(size), int(mtime.replace(".", "")))
        return found

    def _set(self, path: str, entry: Entry | None) -> None:
        """Record (or, with None, forget with what lay under it) one path of the snapshot."""
        parent = os.path.dirname(path)
        if entry is None:
            self.state.pop(path, None)
            self.children.get(parent, set()).discard(path)
            for child in list(self.children.pop(path, ())):
                self._set(child, None)
        else:
            self.state[path] = entry
            self.children.setdefault(parent, set()).add(path)

    @contextmanager
    def case(self, allowed: list[Path]) -> Iterator[list[str]]:
        """Yields a list that, after the block, names each change outside `allowed`."""
        os.utime(self.marker)
        time.sleep(0.02)  # file times come from a coarse clock: a write in the same tick as the marker would not be newer
        problems: list[str] = []
        try:
            yield problems
        finally:
            problems += report(self._changes(), [str(self.marker), *(str(p.resolve()) for p in allowed)])

    def _changes(self) -> dict[str, str]:
        """What changed since the marker was touched; the snapshot takes the changes in."""
        changes: dict[str, str] = {}
        for path, entry in sorted(self._find(newer=True).items()):
            fresh = path not in self.state
            if entry[0] == "d":  # a folder: the entries removed from it (the new ones are listed themselves)
                try:
                    present = {os.path.join(path, name) for name in os.listdir(path)}
                except OSError:
                    present = set()
                for gone in sorted(self.children.get(path, set()) - present):
                    changes[gone] = "removed"
                    self._set(gone, None)
                if fresh:
                    changes[path + os.sep] = "new"
            elif fresh or self.state[path] != entry:
                changes[path] = "new" if fresh else "changed"
            self._set(path, entry)
        return changes


def isolation_unavailable() -> str | None:
    """None where this process may run itself in a private mount namespace with overlays (root, unshare, overlayfs), else why not."""
    if os.geteuid() != 0:
        return "not root"
    if shutil.which("unshare") is None or shutil.which("mount") is None:
        return "no unshare / mount command"
    done = subprocess.run(["unshare", "--mount", "--propagation", "private", "true"], capture_output=True, text=True)
    if done.returncode != 0:
        return f"unshare --mount: {done.stderr.strip()}"
    try:
        overlay = "overlay" in Path("/proc/filesystems").read_text()
    except OSError:
        overlay = False
    return None if overlay else "no overlayfs in this kernel"


def layers_base() -> Path:
    """An empty folder outside ~, the temp dir and the repo (overlay layers may not lie inside what they cover), for the upper layers."""
    for parent in ("/var/tmp", "/dev/shm"):
        if os.path.isdir(parent) and not inside(os.path.realpath(parent), [str(Path.home().resolve()), str(Path(tempfile.gettempdir()).resolve())]):
            return Path(tempfile.mkdtemp(prefix="fault-drill-layers-", dir=parent))
    raise RuntimeError("no folder outside ~ and the temp dir for the overlay layers")
