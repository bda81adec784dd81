"""pytest's hooks (the `needs` marker, the log of tests skipped for something optional) and the shared fixtures; what
the fixtures write, and every helper tests share, lives in tests/fixtures.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.fixtures import make_idx_dataset
from tests.optional import record_skipped_for_needs, require


def pytest_runtest_setup(item: pytest.Item) -> None:
    """`@pytest.mark.needs("wordnet-base", ...)`: skip, naming what is missing and how to install it (tests/optional.py)."""
    for marker in item.iter_markers("needs"):
        require(*marker.args)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """With SSL_TRAIN_NEEDS_LOG=FILE, list the tests skipped for something optional (CI reruns them once it is installed)."""
    record_skipped_for_needs(report)


def pytest_collectreport(report: pytest.CollectReport) -> None:
    record_skipped_for_needs(report)  # a module skipped at its top (require(...) before its imports)


@pytest.fixture
def idx_root(tmp_path: Path) -> Path:
    return make_idx_dataset(tmp_path / "idx")


@pytest.fixture(autouse=True)
def _seed_and_threads() -> None:
    torch.manual_seed(0)
    torch.set_num_threads(2)
