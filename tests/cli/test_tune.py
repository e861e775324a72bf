"""wellfed tune, in-process: exit codes, --json, bad targets."""

from __future__ import annotations

import ast
import dataclasses
import json
from pathlib import Path

import pytest

from tests.cli.helpers_tune import sweep_result
from tests.helpers import SquaresDataset
from wellfed.cli import _render_repro, _render_tune, main
from wellfed.repro import ReproReport, ReproRun
from wellfed.target import spec_from_object
from wellfed.tune._search import _dataloader_code
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
        cells
        for label, cells in rows.items()
        if label.startswith("2 workers, persistent,") and cells[2] == "failed"
    )
    assert failed[0] == "2 workers, persistent, prefetch 4, fork"  # whole: no row wraps
    assert failed[1:3] == ["process", "failed"]


# --- output that survives a pipe and a terminal (issue 15) ----------------------------------


def test_a_multi_line_fix_keeps_its_indentation(capsys: pytest.CaptureFixture[str]) -> None:
    fix = (
        "Move the lambda to module level:\n"
        "def scale(x):\n"
        "    return x * 2  # [i] is not markup\n"
        "dataset.transform = scale"
    )
    finding = {"code": "WF101", "path": "dataset.transform", "message": "m [WF101]", "fix": fix}
    _render_tune(dataclasses.replace(sweep_result(), findings=(finding,)))
    lines = capsys.readouterr().out.splitlines()
    start = lines.index("  fix: Move the lambda to module level:")
    assert lines[start + 1 : start + 4] == [
        "       def scale(x):",
        "           return x * 2  # [i] is not markup",
        "       dataset.transform = scale",
    ]
    assert "error WF101 dataset.transform: m [WF101]" in lines


def _table_rows(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("│")]


def test_piped_tables_never_wrap_a_row(capsys: pytest.CaptureFixture[str]) -> None:
    # capsys: stdout is no terminal, as in `wellfed tune | cat`
    result = sweep_result()
    _render_tune(result)
    rows = _table_rows(capsys.readouterr().out)
    assert len(rows) == len(result.trials) + 1  # one line per trial, plus the ceiling
    assert len({len(row) for row in rows}) == 1
    ceiling = _cells(rows[-1])
    assert ceiling[0] == "ceiling: 1 process x 4 usable CPUs"
    assert ceiling[2] == "400"
    # repro's table too, with a failure text that made its last column wrap
    error = "AttributeError: Can't pickle local object 'make.<locals>.seed_worker' (test)"
    runs = (ReproRun(0, None, 4, 0.2, True), ReproRun(2, "spawn", 0, 0.1, False, error))
    _render_repro(ReproReport(False, 1, runs, likely_cause="(test)"), "squares (test)")
    rows = _table_rows(capsys.readouterr().out)
    assert len(rows) == 2
    assert error[:70] in rows[1]


def _pasted(text: str, columns: int) -> str:
    """``text`` as copied from a terminal of ``columns`` columns that breaks long lines."""
    return "\n".join(
        line[i : i + columns]
        for line in text.splitlines()
        for i in range(0, len(line) or 1, columns)
    )


@pytest.mark.parametrize("columns", [80, 130])
def test_the_recommended_code_pastes_from_a_narrow_terminal(
    columns: int, capsys: pytest.CaptureFixture[str]
) -> None:
    result = sweep_result()
    assert result.recommended is not None
    reasons = {
        "batch_size": "32 (yours; not tuned: it changes training)",
        "num_workers": "2 (measured): 2 worker processes, the fastest, 583 samples/s, 1.81x the "
        "main process per index, and 4 workers gained less than 5% over 2 (410 vs 250)",
        "persistent_workers": "True (measured): workers start once (first batch 0.18s) instead "
        "of at every epoch",
        "multiprocessing_context": "'forkserver' (detected): CUDA is initialised in this "
        "process, so fork would break a worker that touches CUDA",
        "pin_memory": "False (detected): no CUDA device, so pinning would only cost time",
    }
    code = _dataloader_code(spec_from_object(SquaresDataset(8)), result.recommended.config, reasons)
    rec = dataclasses.replace(result.recommended, code=code)
    _render_tune(dataclasses.replace(result, recommended=rec))
    out = capsys.readouterr().out
    printed = out[out.index("DataLoader(\n") :].rstrip("\n")
    assert printed == code
    assert max(len(line) for line in printed.splitlines()) <= 79
    compile(_pasted(printed, columns), "<pasted>", "exec")  # still Python, comments whole
    words = " ".join(line.split("#", 1)[1] for line in printed.splitlines() if "#" in line)
    assert "4 workers gained less than 5% over 2 (410 vs 250)" in " ".join(words.split())
