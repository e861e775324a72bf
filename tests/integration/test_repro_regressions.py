"""Regression tests for verify_reproducibility and its loader factory (review items 4.6, 4.8, 5)."""

from __future__ import annotations

import random
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader, RandomSampler

import wellfed
from tests.helpers_seeding import (
    AugmentDataset,
    GlobalAugmentDataset,
    HangInWorkerDataset,
    IndexDataset,
)
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


# --- issue 15: the cause of a mismatch with a seeded shuffle; a closure worker_init_fn ---------


@pytest.mark.workers
@pytest.mark.parametrize("where", ["loader.generator", "loader.sampler.generator"])
def test_a_seeded_shuffle_is_not_blamed(where: str) -> None:
    ds = GlobalAugmentDataset(16)

    def make(**kw: Any) -> Any:
        gen = torch.Generator().manual_seed(0)  # a fresh seeded generator per build
        if where == "loader.generator":
            return DataLoader(ds, batch_size=4, shuffle=True, generator=gen, **kw)
        return DataLoader(ds, batch_size=4, sampler=RandomSampler(ds, generator=gen), **kw)

    report = wellfed.verify_reproducibility(make, start_methods="fork", epochs=1)
    assert not report.reproducible  # global random in __getitem__, seeded per worker by torch
    cause = report.likely_cause or ""
    assert f"seeded by {where} (initial seed 0)" in cause
    assert "same order" in cause
    assert "__getitem__" in cause
    assert "global RNG)" not in cause  # the old text: "(and a shuffle draws from the global RNG)"
    assert "seed=<int>" in cause


@pytest.mark.workers
@pytest.mark.parametrize(
    ("shuffle", "said"),
    [
        (True, "a RandomSampler without a generator) draws from the global RNG"),
        (False, "The order is sequential (a SequentialSampler: no shuffle), so every run"),
    ],
)
def test_an_unseeded_or_absent_shuffle_is_named_as_such(shuffle: bool, said: str) -> None:
    ds = GlobalAugmentDataset(16)
    report = wellfed.verify_reproducibility(
        lambda **kw: DataLoader(ds, batch_size=4, shuffle=shuffle, **kw),
        start_methods="fork",
        epochs=1,
    )
    assert said in (report.likely_cause or "")


@pytest.mark.workers
def test_a_generator_every_build_shares_starts_each_run_from_its_seed() -> None:
    # one generator object for all builds (a DataLoader target's own): each run advances it
    gen = torch.Generator().manual_seed(0)
    ds = IndexDataset(16)
    report = wellfed.verify_reproducibility(
        lambda **kw: DataLoader(ds, batch_size=4, shuffle=True, generator=gen, **kw),
        start_methods="fork",
        epochs=2,
    )
    assert report.reproducible, report.likely_cause


def _closure_loader(seeded: bool) -> Any:
    """Note 002's factory: its ``seed_worker`` is defined inside it (a closure)."""
    base = 7

    def seed_worker(worker_id: int) -> None:
        random.seed(base + worker_id)

    def make(**kw: Any) -> Any:
        if seeded:  # wellfed's own refusal (on_unsafe="raise"): WF205, naming WF101
            return wellfed.create_dataloader(
                IndexDataset(8), batch_size=4, seed=0, worker_init_fn=seed_worker, **kw
            )
        return DataLoader(IndexDataset(8), batch_size=4, worker_init_fn=seed_worker, **kw)

    return make


@pytest.mark.workers
def test_a_closure_worker_init_fn_under_spawn_says_it_is_not_needed() -> None:
    report = wellfed.verify_reproducibility(
        _closure_loader(seeded=False),
        num_workers=(0, 2),
        start_methods=("fork", "spawn"),
        epochs=1,
    )
    fork, spawn = report.runs[1], report.runs[2]
    assert fork.error is None  # fork inherits the closure: nothing pickled, nothing refused
    assert fork.matches_reference
    assert spawn.error is not None
    assert spawn.error.startswith("WorkerSafetyError: loader.worker_init_fn cannot reach spawn")
    assert spawn.batches == 0  # refused before any worker started
    cause = report.likely_cause or ""
    assert cause.startswith("The run num_workers=2, spawn was refused before its workers started")
    assert "'_closure_loader.<locals>.seed_worker' is defined inside another function" in cause
    assert "its code calls seed" in cause
    assert "is not needed with wellfed's seeding" in cause
    assert "Fix: build the loader without worker_init_fn: wellfed.create_dataloader(" in cause
    assert cause.endswith("[WF214]")


@pytest.mark.workers
def test_create_dataloaders_refusal_of_the_closure_says_it_is_not_needed_too() -> None:
    report = wellfed.verify_reproducibility(
        _closure_loader(seeded=True), num_workers=(0, 2), start_methods="spawn", epochs=1
    )
    assert report.runs[1].error is not None
    assert "[WF205]" in report.runs[1].error
    cause = report.likely_cause or ""
    assert "loader.worker_init_fn: " in cause  # the doctor's WF101 finding
    assert "is not needed with wellfed's seeding" in cause
