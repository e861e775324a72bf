"""The live probe over legal loaders and the clean corpus: no false findings.

The default run covers the loader shapes the probe once misjudged (batch_size=None with a
per-sample collate_fn, a sampler of string keys, an empty dataset, a batch_sampler over
indices that do not start at 0) and a few clean corpus datasets; ``--runslow`` runs every
clean corpus case live. fork only: it is the fast start method, and what is judged here is
how the probe picks indices and batches, not the start method.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from tests.doctor_corpus.cases import CLEAN, Case
from wellfed.doctor import DoctorReport, diagnose
from wellfed.platform import collect_platform_info

pytestmark = [pytest.mark.workers, pytest.mark.timeout(120)]

_PLATFORM = collect_platform_info(include_gpus=False)

#: Clean cases run live in the default run: the review's loader shapes plus three datasets.
_DEFAULT_LIVE = (
    "unbatched_per_sample_collate",
    "string_key_sampler",
    "empty_dataset",
    "offset_batch_sampler",
    "batch_indexed_sampler",
    "global_rng_augment",
    "pil_image_folder",
    "sharded_iterable",
)


@pytest.fixture(autouse=True)
def _strict_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WELLFED_DOCTOR_STRICT", "1")


def _live(case: Case, tmp: Path) -> DoctorReport:
    if case.start_methods is not None and "fork" not in case.start_methods:
        pytest.skip(f"{case.name} is judged without fork")
    closers: list[Any] = []
    try:
        obj, kwargs = case.build(tmp, closers)
        return diagnose(
            obj,
            loader_kwargs=kwargs,
            start_methods=["fork"],
            timeout_s=30,
            platform_info=dataclasses.replace(_PLATFORM, **case.platform),
        )
    finally:
        for close in closers:
            close()


def _assert_clean_live(case: Case, report: DoctorReport) -> None:
    bad = [(f.code, f.severity, f.path, f.evidence[:200]) for f in report.findings]
    assert report.is_clean, f"{case.name}: live probe reported {bad}"
    (run,) = report.probes
    assert run.status in ("ok", "not_probed"), (case.name, run)


_BY_NAME = {c.name: c for c in CLEAN}


@pytest.mark.parametrize("name", _DEFAULT_LIVE)
def test_clean_loader_shapes_are_clean_live(name: str, tmp_path: Path) -> None:
    case = _BY_NAME[name]
    report = _live(case, tmp_path)
    _assert_clean_live(case, report)
    (run,) = report.probes
    if name == "empty_dataset":
        assert run.status == "not_probed"
        assert "empty" in (run.error or "")
    else:
        assert run.status == "ok", run
        assert run.batches > 0


@pytest.mark.slow
@pytest.mark.parametrize("case", CLEAN, ids=[c.name for c in CLEAN])
def test_clean_corpus_is_clean_live(case: Case, tmp_path: Path) -> None:
    _assert_clean_live(case, _live(case, tmp_path))
