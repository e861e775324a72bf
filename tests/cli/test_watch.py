"""wellfed watch, in-process: usage errors, and a small script run through cli.main."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest

from wellfed.cli import main

SCRIPT = textwrap.dedent(
    """
    import sys
    import time
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    data = TensorDataset(torch.arange(48.0).reshape(48, 1))
    loader = DataLoader(data, batch_size=4)
    for (x,) in loader:
        time.sleep(0.002)
    print("argv", sys.argv[1:])
    sys.exit(int(sys.argv[1]) if len(sys.argv) > 1 else 0)
    """
)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["watch", "no_such_script.py"], "Script not found: 'no_such_script.py' is not a file"),
        (["watch", "-m", "no_such_module_xyz"], "Module not found: -m no_such_module_xyz"),
        (["watch"], "no SCRIPT given"),
        (["watch", "-m"], "-m needs a module name"),
        (["watch", "--plot", "out.txt", "x.py"], "--plot='out.txt' is not a file name ending"),
    ],
)
def test_usage_errors_exit_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "[WF602]" in err or "[WF010]" in err


def test_a_script_runs_in_process_and_its_exit_code_is_passed_on(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    out = tmp_path / "watch.json"
    argv_before = sys.argv[:]
    assert main(["watch", "--json", str(out), str(script), "4"]) == 4
    assert sys.argv == argv_before
    captured = capsys.readouterr()
    assert "argv ['4']" in captured.out
    assert "exited with 4" in captured.err
    report = json.loads(out.read_text())
    (loader,) = report["loaders"]
    assert loader["name"] == "#1 TensorDataset at train.py:9"
    assert loader["target"] == f"{script}:loader"  # a module-level name for wellfed tune
    assert loader["stats"]["steps"] == 11
    assert loader["verdict"]["kind"] in ("data-bound", "not-data-bound")
