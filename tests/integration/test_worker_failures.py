"""A worker that dies or hangs under a wellfed loader is named: the signal, when, and the fix.

torch reports a dead worker as a bare RuntimeError ("exited unexpectedly", or "killed by
signal: Killed."); wellfed's loaders (create_dataloader, and the loader tune measures) raise
WorkerStartError / WorkerCrashedError / WorkerTimeoutError instead, which subclass
RuntimeError and keep torch's text.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import time

import pytest
import torch
from torch.utils.data import get_worker_info

import wellfed
from tests.helpers import HangingDataset, SquaresDataset

pytestmark = [
    pytest.mark.workers,
    pytest.mark.timeout(120),
    pytest.mark.skipif(
        "fork" not in multiprocessing.get_all_start_methods(), reason="needs the fork start method"
    ),
]


class KilledWorkerDataset(SquaresDataset):
    """In a worker, index 4 waits, then SIGKILLs its own process (as the OOM killer would).

    The wait lets the main process reach ``next()`` and block there: torch reports a dead
    worker from its SIGCHLD handler, in whatever Python code the main process runs at that
    moment, and only inside ``next()`` can a loader name it.
    """

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if get_worker_info() is not None and index == 4:
            time.sleep(1.0)
            os.kill(os.getpid(), signal.SIGKILL)
        return super().__getitem__(index)


def _loader(ds: object, batch_size: int = 1, timeout: float = 30) -> wellfed.SeededDataLoader:
    return wellfed.create_dataloader(
        ds,
        batch_size=batch_size,
        num_workers=1,
        multiprocessing_context="fork",
        persistent_workers=False,
        timeout=timeout,
        on_unsafe="warn",
    )


def _consume(loader: wellfed.SeededDataLoader) -> int:
    from wellfed.measure import iterate

    seen = 0
    for _ in iterate(loader):
        seen += 1
    return seen


def test_a_sigkilled_worker_is_named_with_the_oom_hint() -> None:
    with pytest.raises(wellfed.WorkerCrashedError) as info:
        _consume(_loader(KilledWorkerDataset(16)))
    err = info.value
    assert isinstance(err, RuntimeError)  # `except RuntimeError` keeps working
    assert err.code == "WF302"
    assert err.signal == "SIGKILL"
    assert err.batches_delivered >= 1
    assert "likely the OOM killer; memory at death: " in str(err) or (
        "the kernel's OOM killer; memory at death: " in str(err)
    )
    assert err.pid is not None
    assert err.worker_id == 0
    assert 4 in err.indices  # index 4 killed it


def test_a_worker_killed_before_its_first_batch_is_a_start_error() -> None:
    # batch_size 8: indices 0-7 are the first batch and index 4 kills the worker within it.
    with pytest.raises(wellfed.WorkerStartError) as info:
        _consume(_loader(KilledWorkerDataset(16), batch_size=8))
    assert info.value.code == "WF301"
    assert info.value.batches_delivered == 0
    assert info.value.signal == "SIGKILL"


def test_a_hung_worker_is_a_timeout_error() -> None:
    with pytest.raises(wellfed.WorkerTimeoutError) as info:
        _consume(_loader(HangingDataset(16, hang_at=2), timeout=2))
    err = info.value
    assert isinstance(err, TimeoutError)
    assert isinstance(err, RuntimeError)
    assert err.code == "WF303"
    assert err.timeout_s == 2
    assert "wellfed doctor" in str(err)


def test_an_error_in_getitem_is_not_renamed() -> None:
    from tests.helpers import FailingDataset

    with pytest.raises(ValueError, match="sample 5 is corrupt"):
        _consume(_loader(FailingDataset(16, fail_at=5)))
