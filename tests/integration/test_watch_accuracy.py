"""wellfed.watch measures the data-bound fraction a loop's own clocks see (issue 13).

A loader whose samples take a known time (2 ms of sleep each, batch 8: 16 ms per batch per
worker) feeds a step of a known time (10 ms of sleep), at 0, 1 and 4 workers: the meter's
``data_bound_fraction`` must be within 3 points of the fraction the test computes from its
own clocks around the same ``next()`` calls (the warm-up left out, as the meter does: the
first ``max(1, num_workers)`` batches of each epoch, which carry the workers' start-up).
Only the agreement is asserted, and one ordering (0 workers waits more than 4), never a
speed.
"""

from __future__ import annotations

import itertools
import time

import pytest
from torch.utils.data import DataLoader

import wellfed
from tests.helpers_watch import SleepyDataset

pytestmark = [
    pytest.mark.workers,
    pytest.mark.timeout(120),
    # 4 workers on a machine with fewer CPUs: torch warns; the workers sleep, so they fit
    pytest.mark.filterwarnings("ignore:This DataLoader will create:UserWarning"),
]

STEP_S = 0.010
BATCH = 8
SLEEPY = SleepyDataset(n=160, ms_per_sample=2.0)  # 20 batches per epoch


def _run(num_workers: int, epochs: int = 2) -> tuple[wellfed.WatchStats, float]:
    loader = DataLoader(
        SLEEPY,
        batch_size=BATCH,
        num_workers=num_workers,
        timeout=60 if num_workers else 0,
    )
    watched = wellfed.watch(loader, name=f"{num_workers} workers")
    wait = total = 0.0
    warmup = max(1, num_workers)  # each worker's first batch carries its start-up
    for _ in range(epochs):
        it = iter(watched)
        previous = None
        for k in itertools.count():
            asked = time.perf_counter()
            try:
                next(it)
            except StopIteration:
                break
            got = time.perf_counter()
            if k >= warmup:
                wait += got - asked
                total += got - previous  # type: ignore[operator]
            previous = got
            time.sleep(STEP_S)
        del it
    return watched.stats(), wait / total


@pytest.mark.parametrize("num_workers", [0, 1, 4])
def test_data_bound_fraction_matches_the_loops_own_clocks(num_workers: int) -> None:
    stats, own = _run(num_workers)
    warmup = max(1, num_workers)
    assert stats.steps == 2 * (len(SLEEPY) // BATCH - warmup)
    assert stats.warmup_steps == 2 * warmup
    assert stats.epochs == 2
    assert stats.samples == stats.steps * BATCH
    assert stats.data_bound_fraction is not None
    assert abs(stats.data_bound_fraction - own) <= 0.03, (stats, own)
    assert stats.data_wait_s <= stats.step_s


def test_more_workers_wait_less() -> None:
    zero, _ = _run(0, epochs=1)
    four, _ = _run(4, epochs=1)
    assert zero.data_bound_fraction is not None
    assert four.data_bound_fraction is not None
    assert zero.data_bound_fraction > four.data_bound_fraction
    # in the training process, the wait is the loading itself: the thread sleeps, so its
    # CPU time inside next() is a small part of the wait
    assert zero.wait_cpu_s < zero.host_data_wait_s
