"""What the Hydra entry points share: one-line reporting of user errors."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from ssl_train.errors import UserError


def report_user_errors(task: Callable[[], Any]) -> Any:
    """Run `task`; a UserError exits with status 2 and one line on stderr instead of a traceback."""
    try:
        return task()
    except UserError as error:
        print(f"ssl_train error: {error}", file=sys.stderr)
        sys.exit(2)
