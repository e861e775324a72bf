"""wellfed.__all__ is right, every public name resolves and has a docstring; import is cheap."""

from __future__ import annotations

import inspect
import subprocess
import sys

import wellfed


def test_all_is_sorted_and_complete() -> None:
    assert wellfed.__all__ == sorted(wellfed.__all__)
    assert set(wellfed.__all__) == {"__version__", *wellfed._EXPORTS}


def test_every_public_name_has_a_docstring() -> None:
    for name in wellfed.__all__:
        if name == "__version__":
            continue
        obj = getattr(wellfed, name)
        assert inspect.getdoc(obj), f"wellfed.{name} has no docstring"


def test_import_is_cheap_and_leaves_torch_alone() -> None:
    code = "import sys, wellfed; print('torch' in sys.modules, 'wellfed.cli' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.split() == ["False", "False"]
