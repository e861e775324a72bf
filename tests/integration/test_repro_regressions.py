"""Regression tests for verify_reproducibility and its loader factory (review items 4.6, 4.8, 5)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from torch.utils.data import DataLoader

import wellfed
from tests.helpers_seeding import AugmentDataset, HangInWorkerDataset
from wellfed import repro

pytestmark = [pytest.mark.timeout(60)]


@pytest.mark.workers
def test_a_worker_hang_ends_as_a_failed_run_not_a_hang() -> None:
    report = wellfed.verify_reproducibility(
        lambda **kw: DataLoader(HangInWorkerDataset(), batch_size=2, **kw),
        num_workers=(0, 1),
        start_methods="fork",
        epochs=1,
        timeout_s=2.0,
    )
    assert not report.reproducible
    failed = report.runs[1]
    assert failed.error is not None
    assert "timed out" in failed.error


def test_loader_factory_bounds_every_worker_loader() -> None:
    from wellfed.target import resolve_target

    spec = resolve_target("tests/helpers_seeding.py:AugmentDataset")
    for plain in (False, True):
        make = repro.loader_factory(spec, seed=0, plain=plain)
        loader = make(num_workers=1, multiprocessing_context="fork")
        assert loader.timeout > 0, plain
        assert make(num_workers=0, multiprocessing_context=None).timeout == 0


def test_rng_findings_are_picked_by_category_from_the_loader(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: list[Any] = []

    def fake(obj: Any, **kw: Any) -> Any:
        seen.append(obj)
        return SimpleNamespace(
            findings=(
                SimpleNamespace(
                    code="WF101",
                    category="unpicklable",
                    message="a random generator lambda cannot be pickled. [WF101]",
                ),
                SimpleNamespace(
                    code="WF107", category="rng-duplication", message="copied RNG. [WF107]"
                ),
            )
        )

    monkeypatch.setattr("wellfed.doctor.diagnose", fake)
    loader = DataLoader(AugmentDataset(4), batch_size=2)
    found = repro._rng_findings(loader)
    assert [f.code for f in found] == ["WF107"]
    assert seen == [loader]  # the loader, so worker_init_fn and sampler are judged too
