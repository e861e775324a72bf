"""Bit-identical batches across worker counts, start methods, persistence and resume points."""

from __future__ import annotations

import multiprocessing
from typing import Any

import pytest
import torch

import wellfed
from tests.helpers_seeding import (
    AugmentDataset,
    BatchedAugmentDataset,
    LambdaDataset,
    digest,
    note002_worker_init_fn,
)

pytestmark = [
    pytest.mark.workers,
    pytest.mark.timeout(120),
    # The done-when matrix asks for 3 workers; CI has 2 CPUs, and torch warns above that.
    pytest.mark.filterwarnings("ignore:This DataLoader will create:UserWarning"),
]

METHODS = [
    m for m in ("fork", "spawn", "forkserver") if m in multiprocessing.get_all_start_methods()
]
N = 20  # samples
BATCH = 3  # 7 batches per epoch, the last one short
EPOCHS = 2


def _make(ds: Any, num_workers: int, method: str | None = None, **kw: Any) -> Any:
    if num_workers:
        kw.setdefault("multiprocessing_context", method)
        kw.setdefault("persistent_workers", False)
    return wellfed.create_dataloader(
        ds,
        batch_size=BATCH,
        shuffle=True,
        seed=11,
        num_workers=num_workers,
        timeout=60,
        **kw,
    )


def _digests(loader: Any, epochs: int = EPOCHS) -> list[str]:
    return [digest(b) for _ in range(epochs) for b in loader]


@pytest.fixture(scope="module")
def reference() -> list[str]:
    """The batches of num_workers=0, computed once."""
    return _digests(_make(AugmentDataset(N), 0))


# Worker starts dominate the cost (spawn/forkserver: ~1-3 s each on the 2-CPU CI machine, for
# `import torch`). CI runs every count under fork and a subset under spawn/forkserver that still
# covers persistent on/off and counts 1 and 3; --runslow runs the whole matrix everywhere.
FULL_MATRIX = [(n, p) for p in (False, True) for n in (1, 2, 3)]
CI_MATRIX = [(1, False), (3, True)]
FULL_RESUME = [(2, 0, 3), (5, 2, 1), (4, 3, 0)]  # (k, workers before, workers after)
CI_RESUME = [(5, 2, 1)]


def _cheap(method: str, runslow: bool) -> bool:
    return method == "fork" or runslow


@pytest.mark.parametrize("method", METHODS)
def test_identical_across_worker_counts_and_persistence(
    method: str, reference: list[str], pytestconfig: pytest.Config
) -> None:
    matrix = FULL_MATRIX if _cheap(method, pytestconfig.getoption("--runslow")) else CI_MATRIX
    for n, persistent in matrix:
        loader = _make(AugmentDataset(N), n, method, persistent_workers=persistent)
        got = _digests(loader)
        del loader  # persistent workers stop here, not at the end of the test
        assert got == reference, f"num_workers={n}, {method}, persistent={persistent}"


@pytest.mark.parametrize("method", METHODS)
def test_resume_into_another_worker_count(
    method: str, reference: list[str], pytestconfig: pytest.Config
) -> None:
    per_epoch = len(reference) // EPOCHS
    cases = FULL_RESUME if _cheap(method, pytestconfig.getoption("--runslow")) else CI_RESUME
    for k, n_before, n_after in cases:
        before = _make(AugmentDataset(N), n_before, method, persistent_workers=n_before == 2)
        it = iter(before)
        got = [digest(next(it)) for _ in range(k)]
        state = before.state_dict()
        del it, before
        assert (state["epoch"], state["batches_done"]) == (0, k)
        after = _make(AugmentDataset(N), n_after, method)
        after.load_state_dict(state)
        got += _digests(after)  # the rest of epoch 0, then epoch 1
        del after
        assert got == reference[: per_epoch * EPOCHS], f"k={k}, {n_before} -> {n_after} workers"


def test_batched_fetch_in_workers() -> None:
    ref = _digests(_make(BatchedAugmentDataset(N), 0))
    assert _digests(_make(BatchedAugmentDataset(N), 2, "fork")) == ref


def test_note002_scenario_spawn_with_seed() -> None:
    """Note 002: set_seed, then seeded train/val loaders with workers under spawn, a module-level
    worker_init_fn, no closures; the result equals the single-process result."""
    flags = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark)
    try:
        wellfed.set_seed(42, deterministic=True, benchmark=False)
        workers = 2
        train = wellfed.create_dataloader(
            AugmentDataset(12),
            batch_size=4,
            shuffle=True,
            num_workers=workers,
            seed=42,
            multiprocessing_context="spawn",
            worker_init_fn=note002_worker_init_fn,
            timeout=60,
        )
        val = wellfed.create_dataloader(
            AugmentDataset(8),
            batch_size=4,
            shuffle=False,
            num_workers=1,
            seed=42,
            multiprocessing_context="spawn",
            worker_init_fn=note002_worker_init_fn,
            timeout=60,
        )
        text = wellfed.format_dataloader_config(train)
        assert "spawn" in text
        got = (_digests(train, 1), _digests(val, 1))
        del train, val
        ref_train = wellfed.create_dataloader(
            AugmentDataset(12), batch_size=4, shuffle=True, num_workers=0, seed=42
        )
        ref_val = wellfed.create_dataloader(AugmentDataset(8), batch_size=4, num_workers=0, seed=42)
        assert got == (_digests(ref_train, 1), _digests(ref_val, 1))
    finally:
        torch.use_deterministic_algorithms(flags[0])
        torch.backends.cudnn.benchmark = flags[1]


def _doctor_ready() -> bool:
    try:
        from wellfed.doctor import diagnose  # noqa: F401
    except ImportError:
        return False
    return True


needs_doctor = pytest.mark.skipif(not _doctor_ready(), reason="wellfed.doctor not landed yet")


@needs_doctor
def test_lambda_under_spawn_raises_naming_the_path() -> None:
    with pytest.raises(wellfed.WorkerSafetyError) as info:
        wellfed.create_dataloader(
            LambdaDataset(), batch_size=2, seed=0, num_workers=2, multiprocessing_context="spawn"
        )
    paths = [f.path for f in info.value.findings]
    assert any(p.startswith("dataset.transform") for p in paths), paths
    assert "dataset.transform" in str(info.value)
    assert info.value.code == "WF205"


@needs_doctor
def test_lambda_under_spawn_fallback_loads_in_the_main_process() -> None:
    with pytest.warns(wellfed.WorkerSafetyWarning, match="dataset.transform"):
        loader = wellfed.create_dataloader(
            LambdaDataset(),
            batch_size=2,
            seed=0,
            num_workers=2,
            multiprocessing_context="spawn",
            on_unsafe="fallback",
            timeout=30,
        )
    assert loader.num_workers == 0
    assert [b.tolist() for b in loader] == [[0, 2], [4, 6], [8, 10], [12, 14]]
