"""Every command takes --json [FILE], and TARGET / --data the same way (issue 11, item 6)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from wellfed.cli import build_parser, main

COMMANDS = ("info", "tune", "doctor", "repro", "precompute")


def _actions(command: str) -> dict[str, object]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {a.dest: a for a in sub.choices[command]._actions}


@pytest.mark.parametrize("command", COMMANDS)
def test_json_takes_an_optional_file(command: str) -> None:
    action = _actions(command)["json"]
    assert getattr(action, "nargs", None) == "?"
    assert getattr(action, "const", None) == "-"


@pytest.mark.parametrize("command", ["tune", "doctor", "repro", "precompute"])
def test_target_is_optional_and_data_matches(command: str) -> None:
    actions = _actions(command)
    assert getattr(actions["target"], "nargs", None) == "?"
    if command != "doctor":
        assert "data" in actions
        assert "on_bad_file" in actions


def test_info_json_to_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "info.json"
    assert main(["info", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["usable_cpus"] >= 1
    assert capsys.readouterr().out.strip()  # the table still prints


def test_doctor_json_to_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "doctor.json"
    code = main(["doctor", "tests.helpers:squares", "--static-only", "--json", str(out)])
    assert code == 0
    assert "findings" in json.loads(out.read_text())
    assert capsys.readouterr().out.strip()


def test_precompute_target_and_data_conflict(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["precompute", "tests.helpers:squares", "--data", str(tmp_path)]
    code = main([*args, "--fn", "tests.helpers:make_squares", "--out", str(tmp_path / "o")])
    assert code == 2
    assert "WF011" in capsys.readouterr().err
