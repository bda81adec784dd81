"""What the Hydra entry points share: one-line reporting of user errors."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from ssl_train.checkpoint_io import first_line
from ssl_train.errors import UserError


def report_user_errors(task: Callable[[], Any]) -> Any:
    """Run `task`; a UserError exits with one line on stderr instead of a traceback (status 2, or its `exit_code`)."""
    try:
        return task()
    except UserError as error:  # raised in a DataLoader worker, its message is the worker's traceback: keep the last line
        print(f"ssl_train error: {first_line(error)}", file=sys.stderr)
        sys.exit(getattr(error, "exit_code", 2))  # 75 after a preemption signal (retry), 2 for bad input
