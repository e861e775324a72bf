"""The measuring core with real worker processes: ok, crash, kill, hang; nothing left behind."""

from __future__ import annotations

import pytest

from tests.helpers import (
    BallastDataset,
    FailingDataset,
    HangingDataset,
    KilledWorkerDataset,
    SquaresDataset,
)
from wellfed.measure import LoaderConfig, measure
from wellfed.target import spec_from_object

pytestmark = pytest.mark.workers

FAST = {"measure_s": 0.3, "min_batches": 4, "warmup_batches": 1}


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_measure_with_workers(method: str) -> None:
    spec = spec_from_object(SquaresDataset(64))
    cfg = LoaderConfig(
        num_workers=2, batch_size=8, persistent_workers=True, multiprocessing_context=method
    )
    trial = measure(spec, cfg, timeout_s=60, **FAST)
    assert trial.status == "ok", trial.error
    assert trial.samples_per_s is not None
    assert trial.samples_per_s > 0
    assert trial.first_batch_s is not None
    assert trial.first_batch_s > 0
    assert trial.samples >= 4 * 8
    assert trial.peak_memory_bytes is not None
    assert trial.peak_memory_bytes > 0
    assert trial.memory_kind in ("rss+uss", "rss")
    assert trial.wait_s_p90 is not None
    assert trial.wait_s_p50 is not None
    assert trial.wait_s_p90 >= trial.wait_s_p50


def test_a_short_trials_peak_memory_counts_its_workers() -> None:
    # Each loading process keeps 64 MiB of its own. The parent samples the tree once a second,
    # so a trial this short was read only at its start, before its workers existed: before
    # note_memory, 2 fork workers read less than the main process alone.
    spec = spec_from_object(BallastDataset(64, mib=64))
    alone = measure(spec, LoaderConfig(batch_size=8), timeout_s=60, **FAST)
    two = measure(
        spec,
        LoaderConfig(num_workers=2, batch_size=8, multiprocessing_context="fork"),
        timeout_s=60,
        **FAST,
    )
    assert alone.status == "ok", alone.error
    assert two.status == "ok", two.error
    assert alone.peak_memory_bytes is not None
    assert two.peak_memory_bytes is not None
    # the main process's 64 MiB is gone from the workers' trial; each worker adds its own
    assert two.peak_memory_bytes - alone.peak_memory_bytes > 50 * 2**20


def test_measure_in_main_process() -> None:
    trial = measure(
        spec_from_object(SquaresDataset(64)), LoaderConfig(batch_size=8), timeout_s=30, **FAST
    )
    assert trial.ok, trial.error


@pytest.mark.parametrize("workers", [0, 2])
def test_dataset_error_is_a_failed_trial_with_its_message(workers: int) -> None:
    spec = spec_from_object(FailingDataset(64, fail_at=5))
    cfg = LoaderConfig(num_workers=workers, batch_size=4, persistent_workers=workers > 0)
    trial = measure(spec, cfg, timeout_s=60, **FAST)
    assert trial.status == "failed"
    assert trial.error is not None
    assert "sample 5 is corrupt (test)" in trial.error


def test_killed_worker_is_a_failed_trial() -> None:
    spec = spec_from_object(KilledWorkerDataset(64))
    cfg = LoaderConfig(num_workers=1, batch_size=4, persistent_workers=True)
    trial = measure(spec, cfg, timeout_s=60, **FAST)
    assert trial.status == "failed"
    assert trial.error is not None
    assert "was killed by SIGKILL" in trial.error
    assert trial.error_code in ("WF301", "WF302")


@pytest.mark.parametrize(("workers", "in_main"), [(2, False), (0, True)])
def test_hang_is_a_timeout_and_leaves_no_process(workers: int, in_main: bool) -> None:
    spec = spec_from_object(HangingDataset(64, hang_at=8, in_main=in_main))
    cfg = LoaderConfig(num_workers=workers, batch_size=4, persistent_workers=workers > 0)
    trial = measure(spec, cfg, timeout_s=6, **FAST)
    assert trial.status == "timeout"
    assert trial.elapsed_s < 20
    # the autouse no_leaked_processes fixture fails the test if a worker survived
