"""scripts/fault_drill.py: faults and malformed inputs end in one clear line or a correct run, never a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "fault_drill.py"


def drill(*args: str) -> str:
    done = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, done.stdout[-4000:]
    return done.stdout


@pytest.mark.slow
def test_fault_drill_bad_inputs_sample_has_no_tracebacks() -> None:
    table = drill("--skip-faults", "--cases", "40", "--cli", "2").splitlines()[-1]
    cells = [c.strip() for c in table.strip("|").split("|")]
    assert cells[2] == "40" and int(cells[3]) + int(cells[4]) == 40 and cells[6:9] == ["0", "0", "0"]


@pytest.mark.slow
def test_full_fault_drill_zero_tracebacks_zero_lost_files() -> None:
    table = drill("--cases", "300", "--cli", "12").splitlines()[-1]
    cells = [c.strip() for c in table.strip("|").split("|")]
    assert cells[0] == "12" and cells[1] == "4 of 4" and cells[6:9] == ["0", "0", "0"]
