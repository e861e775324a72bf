"""The note 000 examples run, show stale batches without SharedState and none with it."""

from __future__ import annotations

import importlib
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest

pytestmark = pytest.mark.workers

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _example(name: str) -> ModuleType:
    if str(EXAMPLES) not in sys.path:
        sys.path.insert(0, str(EXAMPLES))
    return importlib.import_module(name)


@pytest.mark.parametrize("name", ["note000_continuous_deformation", "note000_drifting_values"])
def test_example_reproduces_note_000(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    example = _example(name)
    assert example.main(["--tasks", "3", "--samples", "64", "--start-method", "fork"]) == 0
    out = capsys.readouterr().out
    naive = re.search(r"naive: (\d+) of (\d+) batches differ", out)
    shared = re.search(r"shared: (\d+) of (\d+) batches differ", out)
    assert naive is not None
    assert shared is not None
    # Tasks 1 and 2 (two thirds of the batches) ran on task 0's state in persistent workers.
    assert int(naive.group(1)) == 2 * int(naive.group(2)) // 3
    assert int(shared.group(1)) == 0
