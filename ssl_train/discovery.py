"""A package's public classes found in its modules, so no list of losses or methods is kept by hand."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from collections.abc import Callable, Iterable


def classes_in(package: str, path: Iterable[str], accept: Callable[[str, type], bool]) -> dict[str, type]:
    """{name: class} of every public class defined in a module of `package` (not re-exported ones) that `accept(name, cls)`."""
    found: dict[str, type] = {}
    for info in sorted(pkgutil.iter_modules(list(path)), key=lambda i: i.name):
        module = importlib.import_module(f"{package}.{info.name}")
        found.update(
            {
                name: value
                for name, value in vars(module).items()
                if inspect.isclass(value) and not name.startswith("_") and value.__module__ == module.__name__ and accept(name, value)
            }
        )
    return dict(sorted(found.items()))
