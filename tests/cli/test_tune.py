"""wellfed tune, in-process: exit codes, --json, bad targets."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from tests.cli.helpers_tune import sweep_result
from wellfed.cli import _render_tune, main
from wellfed.workloads import PHOTOS_DIR


@pytest.mark.parametrize(
    ("target", "code"),
    [
        ("no_such_module_xyz:data", "WF001"),
        ("tests.helpers:no_such_attr", "WF002"),
        ("tests.helpers:broken_factory", "WF003"),
        ("tests.helpers:not_a_dataset", "WF004"),
        ("tests.helpers:empty", "WF005"),
        ("tests.helpers", "WF006"),
    ],
)
def test_bad_target_is_one_paragraph_and_exit_2(
    target: str, code: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["tune", target]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ")
    assert f"[{code}]" in err
    assert "Traceback" not in err


def test_target_and_data_conflict(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["tune", "tests.helpers:squares", "--data", str(PHOTOS_DIR)]) == 2
    assert "WF011" in capsys.readouterr().err


def test_bad_file_reported_with_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "cls").mkdir()
    bad = tmp_path / "cls" / "x.jpg"
    bad.write_text("not a jpeg")
    assert main(["tune", "--data", str(tmp_path)]) == 1
    assert str(bad) in capsys.readouterr().err


@pytest.mark.workers
def test_tune_writes_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out.json"
    code = main(
        [
            "tune",
            "tests.helpers:squares",
            "--batch-size",
            "8",
            "--max-workers",
            "1",
            "--budget-s",
            "20",
            "--json",
            str(out),
        ]
    )
    assert code == 0
    data = json.loads(out.read_text())
    assert data["recommended"]["config"]["batch_size"] == 8
    workers = [t["config"]["num_workers"] for t in data["trials"]]
    assert workers[0] == 0
    assert max(workers) == 1  # --max-workers caps the processes
    text = capsys.readouterr().out
    assert "Recommended" in text
    header = next(line for line in text.splitlines() if "configuration" in line)
    assert [c.strip() for c in header.split("┃")[1:3]] == ["configuration", "backend"]
    assert any(" process " in line and "1 worker" in line for line in text.splitlines())
    start = text.index("wellfed.create_dataloader(" if "num_threads=" in text else "DataLoader(")
    call = text[start:]
    ast.parse(call[: call.index("\n)\n") + 2])  # the printed call pastes as Python


@pytest.mark.workers
def test_tune_refuses_workers_the_doctor_rejects(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out.json"
    code = main(
        [
            "tune",
            "tests.helpers:lambda_squares",
            "--start-method",
            "spawn",
            "--batch-size",
            "4",
            "--budget-s",
            "20",
            "--json",
            str(out),
        ]
    )
    assert code == 1
    data = json.loads(out.read_text())
    # no worker process is measured; thread workers (nothing pickled) still are
    assert {t["config"]["num_workers"] for t in data["trials"]} == {0}
    assert data["findings"]
    assert any(f["path"].startswith("dataset.transform") for f in data["findings"])
    text = capsys.readouterr().out
    assert "dataset.transform" in text


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.split("│")[1:-1]]


def test_tune_table_names_each_rows_backend(capsys: pytest.CaptureFixture[str]) -> None:
    _render_tune(sweep_result())
    rows = {
        cells[0]: cells
        for cells in map(_cells, capsys.readouterr().out.splitlines())
        if len(cells) > 3
    }
    assert rows["main process"][1:3] == ["main", "100"]
    assert rows["main process, batched fetch"][1:3] == ["main", "150"]
    assert rows["4 threads, prefetch 4"][1:3] == ["thread", "200"]
    assert rows["4 threads, batched fetch"][1:3] == ["thread", "260"]
    assert rows["2 workers, persistent, fork"][1:3] == ["process", "250"]
    assert rows["2 workers, persistent, fork"][-1] == "<- recommended"
    assert rows["4 workers, persistent, fork"][-1] == "fastest"
    failed = next(
        cells for label, cells in rows.items() if label.startswith("2 workers, persistent, p")
    )
    assert failed[1:3] == ["process", "failed"]  # its label may wrap
