"""The main-process RNG lock and fork: a forked worker never inherits it locked."""

from __future__ import annotations

import multiprocessing
import threading

import pytest
from torch.utils.data import DataLoader

from tests.helpers_seeding import NestedSeededDataset, digest
from wellfed.seeding import _RNG_LOCK

pytestmark = [
    pytest.mark.workers,
    pytest.mark.timeout(60),
    pytest.mark.skipif(
        "fork" not in multiprocessing.get_all_start_methods(), reason="needs the fork start method"
    ),
]


def test_worker_forked_while_another_thread_holds_the_rng_lock() -> None:
    ref = [digest(b) for b in DataLoader(NestedSeededDataset(), batch_size=None)]
    held, done = threading.Event(), threading.Event()

    def hold() -> None:
        with _RNG_LOCK:
            held.set()
            done.wait(30)

    t = threading.Thread(target=hold)
    t.start()
    try:
        assert held.wait(10)
        loader = DataLoader(
            NestedSeededDataset(),
            batch_size=None,
            num_workers=1,
            multiprocessing_context="fork",
            timeout=10,
        )
        got = [digest(b) for b in loader]
    finally:
        done.set()
        t.join()
    assert got == ref
