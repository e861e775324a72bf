"""``wellfed doctor`` in-process: exit codes, --json, --static-only, --start-method."""

from __future__ import annotations

import json

import pytest

from wellfed.cli import main

pytestmark = [pytest.mark.timeout(120)]


def test_errors_found_exit_1(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["doctor", "tests.doctor_corpus.targets:lambda_dataset", "--static-only"])
    out = capsys.readouterr().out
    assert code == 1
    assert "ERRORS" in out
    assert "dataset.transform.transforms[0].lambd" in out
    assert "fix:" in out


@pytest.mark.workers
def test_clean_loader_exit_0_json(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        ["doctor", "tests.doctor_corpus.targets:clean_loader", "--json", "--start-method", "fork"]
    )
    data = json.loads(capsys.readouterr().out)
    assert code == 0
    assert data["has_errors"] is False
    assert data["start_methods"] == ["fork"]
    assert data["probes"][0]["status"] == "ok"


@pytest.mark.workers
def test_live_probe_says_what_it_runs_before_it_runs(capsys: pytest.CaptureFixture[str]) -> None:
    # Issue 15: 10-17 s of silence during the live probe. Off a terminal, one line says it.
    code = main(["doctor", "tests.doctor_corpus.targets:clean_loader", "--start-method", "fork"])
    captured = capsys.readouterr()
    assert code == 0
    assert "live probe: real workers under fork (up to 60 s)..." in captured.err
    assert "(up to 60 s)" not in captured.out


def test_json_static_lists_findings(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        [
            "doctor",
            "tests.doctor_corpus.targets:lambda_dataset",
            "--static-only",
            "--json",
            "--start-method",
            "spawn",
        ]
    )
    data = json.loads(capsys.readouterr().out)
    assert code == 1
    (f,) = data["findings"]
    assert f["code"] == "WF101"
    assert f["start_methods"] == ["spawn"]


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["doctor", "--start-method", "threads"]) == 2
    assert main(["doctor", "no_such_module_wellfed:x", "--static-only"]) == 2
    assert main(["doctor", "tests.doctor_corpus.targets:clean_loader", "--timeout-s", "0"]) == 2
