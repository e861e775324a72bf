"""On a CUDA device the data wait is the GPU's idle time, from CUDA events (needs a GPU).

The step queues a known amount of GPU work (``torch.cuda._sleep``, calibrated first) and
returns at once, as a real step's kernel launches do; the loader takes 16 ms per batch in the
main process. The host blocks in ``next()`` for the whole 16 ms, but the GPU is busy for
part of it: the GPU-clock fraction is 1 - busy / step, well below the host clock's.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

import wellfed
from tests.helpers_watch import SleepyDataset

pytestmark = [pytest.mark.gpu, pytest.mark.timeout(120)]


def _gpu_ms(cycles: int) -> float:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    torch.cuda._sleep(cycles)
    end.record()
    end.synchronize()
    return float(start.elapsed_time(end))


def test_cuda_clock_counts_only_gpu_idle_time() -> None:
    cycles = 1_000_000
    for _ in range(3):  # warm the device up, then calibrate to ~10 ms of GPU work
        ms = _gpu_ms(cycles)
    cycles = int(cycles * 10.0 / ms)
    busy_ms = _gpu_ms(cycles)
    loader = DataLoader(SleepyDataset(n=160, ms_per_sample=2.0), batch_size=8)
    watched = wellfed.watch(loader, device="cuda")
    for _ in watched:
        torch.cuda._sleep(cycles)  # the step: asynchronous GPU work, no synchronisation
    stats = watched.stats()
    assert stats.clock == "cuda"
    assert stats.steps == 19
    host_fraction = stats.host_data_wait_s / stats.step_s
    assert stats.data_bound_fraction is not None
    assert stats.data_bound_fraction < host_fraction
    expected = 1.0 - busy_ms / 1e3 / (stats.step_s / stats.steps)
    assert abs(stats.data_bound_fraction - expected) <= 0.05, (stats, expected)
