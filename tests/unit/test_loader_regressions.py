"""Regression tests for the loader review (items 1.x, 2.4, 4.x, S): main process only."""

from __future__ import annotations

import logging
import sys
import threading
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    DistributedSampler,
    RandomSampler,
    SequentialSampler,
)

import wellfed
from tests.helpers_seeding import (
    AugmentDataset,
    NumpyShuffleSampler,
    StaleStateDataset,
    ThreadYieldingDataset,
    digest,
)
from wellfed import loader as wf_loader


def _digests(loader: Any) -> list[str]:
    return [digest(b) for b in loader]


# --- 1.1 threads ------------------------------------------------------------------------------


def test_two_threads_loading_seeded_loaders_do_not_mix() -> None:
    def make() -> Any:
        return wellfed.create_dataloader(
            ThreadYieldingDataset(64), batch_size=4, shuffle=True, seed=1, num_workers=0
        )

    ref = _digests(make())
    got: dict[int, list[str]] = {}

    def run(k: int) -> None:
        got[k] = _digests(make())

    threads = [threading.Thread(target=run, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(v == ref for v in got.values())


# --- 1.2 public sampler attributes ----------------------------------------------------------


def test_public_samplers_are_the_users_or_torchs() -> None:
    ds = AugmentDataset(8)
    loader = wellfed.create_dataloader(ds, batch_size=4, seed=1, num_workers=0)
    assert isinstance(loader.sampler, SequentialSampler)
    assert isinstance(loader.batch_sampler, BatchSampler)
    # what Accelerate and Lightning do: rebuild from the public attributes
    rebuilt = DataLoader(loader.dataset, batch_sampler=loader.batch_sampler)
    assert [b["index"].tolist() for b in rebuilt] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert list(loader.sampler) == list(range(8))

    dist = DistributedSampler(ds, num_replicas=2, rank=0, shuffle=True, seed=0)
    dl = wellfed.create_dataloader(ds, batch_size=2, sampler=dist, seed=1, num_workers=0)
    assert dl.sampler is dist
    assert isinstance(dl.sampler, DistributedSampler)

    bs = BatchSampler(RandomSampler(ds), 3, False)
    bl = wellfed.create_dataloader(ds, batch_sampler=bs, seed=1, num_workers=0)
    assert bl.batch_sampler is bs

    shuffled = wellfed.create_dataloader(ds, batch_size=4, shuffle=True, seed=1, num_workers=0)
    assert isinstance(shuffled.sampler, RandomSampler)
    rebuilt = DataLoader(shuffled.dataset, batch_sampler=shuffled.batch_sampler)
    assert sorted(int(i) for b in rebuilt for i in b["index"]) == list(range(8))


# --- 1.3 a sampler epoch set before the loader exists ------------------------------------


def test_sampler_epoch_set_before_the_loader_is_followed() -> None:
    ds = AugmentDataset(20)

    def dist() -> DistributedSampler[Any]:
        return DistributedSampler(ds, num_replicas=2, rank=0, shuffle=True, seed=0)

    s = dist()
    s.set_epoch(5)
    loader = wellfed.create_dataloader(ds, batch_size=4, sampler=s, seed=3, num_workers=0)
    got = [int(i) for b in loader for i in b["index"]]
    expected = dist()
    expected.set_epoch(5)
    assert got == list(expected)
    assert loader.epoch == 5
    assert s.epoch == 5
    # the usual loop, starting at 5
    s.set_epoch(6)
    list(loader)
    assert loader.epoch == 6


# --- 1.4 full kwargs to the safety check; auto persistence and stale state ----------------


def test_safety_check_gets_the_full_resolved_kwargs(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[dict[str, Any]] = []

    def check(dataset: Any, kwargs: dict[str, Any], method: str) -> tuple[bool, tuple[Any, ...]]:
        seen.append(dict(kwargs))
        return True, ()

    monkeypatch.setattr(wf_loader, "_safety_check", check)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    wellfed.create_dataloader(
        AugmentDataset(8),
        batch_size=2,
        seed=0,
        num_workers=2,
        multiprocessing_context="spawn",
    )
    kw = seen[0]
    for name in (
        "num_workers",
        "persistent_workers",
        "prefetch_factor",
        "pin_memory",
        "batch_size",
        "sampler",
        "batch_sampler",
        "collate_fn",
        "worker_init_fn",
        "multiprocessing_context",
    ):
        assert name in kw, name
    assert kw["persistent_workers"] is True
    assert kw["prefetch_factor"] == 2
    assert kw["pin_memory"] is False
    assert kw["batch_size"] == 2
    assert kw["num_workers"] == 2
    assert kw["multiprocessing_context"] == "spawn"


def test_auto_persistence_is_off_when_worker_state_would_go_stale(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.INFO, logger="wellfed.loader"):
        loader = wellfed.create_dataloader(
            StaleStateDataset(), batch_size=4, seed=0, num_workers=2, multiprocessing_context="fork"
        )
    assert loader.persistent_workers is False
    reason = loader.plan.setting("persistent_workers").reason
    assert "WF111" in reason
    assert "dataset.difficulty" in reason
    assert any("persistent_workers=auto -> False" in r.getMessage() for r in caplog.records)
    # an explicit persistent_workers=True is kept and judged: the doctor's error stands
    with pytest.raises(wellfed.WorkerSafetyError) as info:
        wellfed.create_dataloader(
            StaleStateDataset(),
            batch_size=4,
            seed=0,
            num_workers=2,
            multiprocessing_context="fork",
            persistent_workers=True,
        )
    assert [f.code for f in info.value.findings] == ["WF111"]


# --- 1.5 num_workers="auto" -> 0 ----------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"multiprocessing_context": "spawn"},
        {"persistent_workers": True},
        {"prefetch_factor": 4},
        {"timeout": 5.0},
    ],
)
def test_worker_options_are_dropped_with_a_log_when_auto_gives_no_workers(
    kwargs: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv("WELLFED_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr("wellfed.platform.usable_cpus_per_rank", lambda: 1)
    with caplog.at_level(logging.INFO, logger="wellfed.loader"):
        loader = wellfed.create_dataloader(AugmentDataset(8), batch_size=4, seed=0, **kwargs)
    assert loader.num_workers == 0
    assert len(list(loader)) == 2
    (name,) = kwargs
    lines = [r.getMessage() for r in caplog.records if name in r.getMessage()]
    assert any("not used" in line for line in lines), lines
    assert (
        name in loader.plan.setting(name).reason or "not used" in loader.plan.setting(name).reason
    )


def test_explicit_timeout_without_workers_is_named_in_the_plan(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.INFO, logger="wellfed.loader"):
        loader = wellfed.create_dataloader(
            AugmentDataset(8), batch_size=4, seed=0, num_workers=0, timeout=5.0
        )
    assert loader.timeout == 0
    s = loader.plan.setting("timeout")
    assert (s.requested, s.value) == (5.0, 0)
    assert any("timeout=5.0" in r.getMessage() for r in caplog.records)


# --- 1.6 samplers that shuffle with numpy or random ----------------------------------------


def test_numpy_shuffling_sampler_is_a_function_of_the_seed() -> None:
    out = []
    for global_seed in (1, 2):
        np.random.seed(global_seed)  # whatever the script did before
        loader = wellfed.create_dataloader(
            AugmentDataset(12),
            batch_size=4,
            sampler=NumpyShuffleSampler(12),
            seed=7,
            num_workers=0,
        )
        out.append([int(i) for b in loader for i in b["index"]])
    assert out[0] == out[1]
    assert sorted(out[0]) == list(range(12))


# --- 1.7 positional arguments -------------------------------------------------------------


def test_positional_arguments_are_not_dropped() -> None:
    ds = AugmentDataset(8)
    # DataLoader(dataset, batch_size, shuffle, sampler, batch_sampler, num_workers, collate_fn,
    #            pin_memory, drop_last, timeout, worker_init_fn, multiprocessing_context,
    #            generator)
    head = (2, False, None, None, 0, None, False, False, 0, None)
    with pytest.raises(wellfed.ConfigError) as info:
        wellfed.SeededDataLoader(ds, *head, None, torch.Generator(), seed=0)
    assert info.value.attribute == "generator"
    with pytest.raises(ValueError, match="multiprocessing_context"):
        wellfed.SeededDataLoader(ds, *head, "spawn", seed=0)
    with pytest.raises(TypeError, match="positional"):
        wellfed.SeededDataLoader(ds, *head, None, None, "extra", seed=0)
    with pytest.raises(TypeError, match="batch_size"):
        wellfed.SeededDataLoader(ds, 2, batch_size=2, seed=0)


# --- 2.4 the code appears once per finding -----------------------------------------------


def test_safety_error_names_each_code_once(monkeypatch: pytest.MonkeyPatch) -> None:
    finding = SimpleNamespace(
        code="WF101",
        category="unpicklable",
        severity="error",
        path="dataset.transform",
        message="a lambda cannot be pickled. [WF101]",
        fix="Use a module-level function.",
    )
    monkeypatch.setattr(wf_loader, "_safety_check", lambda d, k, m: (True, (finding,)))
    with pytest.raises(wellfed.WorkerSafetyError) as info:
        wellfed.create_dataloader(AugmentDataset(8), seed=0, num_workers=2)
    text = str(info.value)
    assert text.count("[WF101]") == 1
    assert "Fix: Use a module-level function." in text


# --- 4.1 / 4.2 one place for platform facts ----------------------------------------------


def test_platform_facts_come_from_wellfed_platform(monkeypatch: pytest.MonkeyPatch) -> None:
    assert not hasattr(wf_loader, "_local_world_size")
    assert not hasattr(wf_loader, "_default_start_method")
    monkeypatch.setattr("wellfed.platform.usable_cpus_per_rank", lambda: 5)
    assert wf_loader.recommend_num_workers()[0] == 4
    monkeypatch.setattr("wellfed.platform.default_start_method", lambda: "spawn")
    loader = wellfed.create_dataloader(AugmentDataset(8), seed=0, num_workers=1)
    assert loader.plan.start_method == "spawn"


# --- 4.3 the safety check is never silently skipped ---------------------------------------


def test_a_missing_doctor_is_an_error_not_a_skipped_check(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "wellfed.doctor", None)  # import raises ImportError
    with pytest.raises(ImportError):
        wellfed.create_dataloader(AugmentDataset(8), seed=0, num_workers=2)


# --- 4.5 one finding-to-dict -------------------------------------------------------------


def test_plan_findings_use_finding_to_dict() -> None:
    from wellfed import repro

    assert not hasattr(wf_loader, "_finding_dict")
    assert not hasattr(repro, "_finding_dict")


# --- S: epochs advance when an iteration ends -------------------------------------------


def test_each_new_iteration_is_the_next_epoch() -> None:
    """Issue 4: each new iteration is the next epoch, also after an early stop."""

    def make() -> Any:
        return wellfed.create_dataloader(
            AugmentDataset(12), batch_size=4, shuffle=True, seed=2, num_workers=0
        )

    ref = make()
    epochs = [_digests(ref), _digests(ref), _digests(ref)]
    early = make()
    first = digest(next(iter(early)))  # a step-limited epoch 0: one batch
    assert first == epochs[0][0]
    assert early.epoch == 0
    assert _digests(early) == epochs[1]  # the next iteration is epoch 1
    # a peek uses up epoch 0; set_epoch(0) starts training at epoch 0 again
    peeked = make()
    next(iter(peeked))
    peeked.set_epoch(0)
    assert _digests(peeked) == epochs[0]
    assert _digests(peeked) == epochs[1]
