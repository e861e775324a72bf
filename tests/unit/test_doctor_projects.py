"""The doctor on patterns reduced from real projects' code (tests/doctor_corpus/projects.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.doctor_corpus.cases import Case
from tests.doctor_corpus.projects import HAZARDS_PROJECTS
from wellfed.doctor import diagnose

#: Measured before the fix: case name -> what the doctor missed.
MISSED_BEFORE_FIX: dict[str, str] = {
    # fixed: a collate_fn bound to the dataset is worker code (Context.worker_hooks); before,
    # only __getitem__ and its callees were read:
    # "yolov3_multiscale_collate_mutates_dataset"
}


@pytest.mark.parametrize(
    "case",
    [
        pytest.param(c, marks=pytest.mark.xfail(strict=True, reason=MISSED_BEFORE_FIX[c.name]))
        if c.name in MISSED_BEFORE_FIX
        else c
        for c in HAZARDS_PROJECTS
    ],
    ids=[c.name for c in HAZARDS_PROJECTS],
)
def test_project_hazard_found_at_path(case: Case, tmp_path: Path) -> None:
    closers: list[Any] = []
    obj, kwargs = case.build(tmp_path, closers)
    try:
        report = diagnose(obj, loader_kwargs=kwargs, live=False, start_methods=case.start_methods)
    finally:
        for close in closers:
            close()
    got = {(f.category, f.path) for f in report.findings if f.severity in ("error", "warning")}
    missing = set(case.expect) - got
    assert not missing, f"{case.name}: missing {missing}; got {sorted(got)} ({case.source})"
