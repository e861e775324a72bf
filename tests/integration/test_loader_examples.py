"""The note 002 example script runs and reports reproducible batches (spawn workers)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "note002_train.py"


@pytest.mark.slow  # ~20 s on 2 CPUs: five spawn worker starts; the scenario itself runs in CI
@pytest.mark.workers
@pytest.mark.timeout(180)
def test_note002_example_runs() -> None:
    out = subprocess.run(
        [sys.executable, str(EXAMPLE)], capture_output=True, text=True, timeout=170, check=False
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "reproducible: True" in out.stdout
