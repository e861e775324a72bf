"""The hazard corpus, judged statically: 100% recall and no false positives required."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from tests.doctor_corpus.cases import CLEAN, HAZARDS, Case
from wellfed.doctor import diagnose
from wellfed.platform import collect_platform_info

_PLATFORM = collect_platform_info(include_gpus=False)


@pytest.fixture(autouse=True)
def _strict_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    """A crashing check fails the test instead of being skipped silently."""
    monkeypatch.setenv("WELLFED_DOCTOR_STRICT", "1")


def _run(case: Case, tmp: Path) -> set[tuple[str, str]]:
    closers: list[Any] = []
    try:
        obj, kwargs = case.build(tmp, closers)
        report = diagnose(
            obj,
            loader_kwargs=kwargs,
            live=False,
            start_methods=case.start_methods,
            platform_info=dataclasses.replace(_PLATFORM, **case.platform),
        )
    finally:
        for close in closers:
            close()
    return {(f.category, f.path) for f in report.findings if f.severity in ("error", "warning")}


def test_corpus_size() -> None:
    assert len(HAZARDS) >= 30
    assert len(CLEAN) >= 10
    assert len({c.name for c in HAZARDS + CLEAN}) == len(HAZARDS + CLEAN)


@pytest.mark.parametrize("case", HAZARDS, ids=[c.name for c in HAZARDS])
def test_hazard_found_at_path(case: Case, tmp_path: Path) -> None:
    got = _run(case, tmp_path)
    missing = set(case.expect) - got
    assert not missing, f"{case.name}: missing {missing}; got {sorted(got)} ({case.source})"


@pytest.mark.parametrize("case", CLEAN, ids=[c.name for c in CLEAN])
def test_clean_dataset_is_clean(case: Case, tmp_path: Path) -> None:
    got = _run(case, tmp_path)
    assert not got, f"{case.name} is clean but the doctor reported {sorted(got)}"


def test_recall_and_false_positives(tmp_path: Path) -> None:
    """The issue's bar: recall 100% over the hazards, 0 false positives over the clean cases."""
    expected = found = 0
    false_positives: list[str] = []
    for i, case in enumerate(HAZARDS + CLEAN):
        tmp = tmp_path / str(i)
        tmp.mkdir()
        got = _run(case, tmp)
        if case.expect:
            expected += len(case.expect)
            found += len(set(case.expect) & got)
        elif got:
            false_positives.append(case.name)
    recall = found / expected
    assert recall == 1.0, f"recall {recall:.1%} ({found}/{expected})"
    assert not false_positives, f"false positives: {false_positives}"
