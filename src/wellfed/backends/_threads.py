"""Thread workers: daemon threads that fetch whole batches inside the main process.

The iterator keeps ``num_threads * prefetch_factor`` batches in flight (the same depth as
torch's worker processes: ``prefetch_factor`` batches per worker) and delivers them in sampler
order. Index sampling stays in the main thread, so a sampler's own RNG draws happen exactly as
with ``num_workers=0``. The threads are daemons of our own (not ``ThreadPoolExecutor``'s, whose
interpreter-exit hook joins every thread without a timeout, so one hung ``__getitem__`` would
hang the exit), stopped when the epoch ends, when the iterator is closed
(``_shutdown_workers``, as the loader driver does), or when it is garbage collected.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeoutError
from typing import Any

from torch.utils.data._utils.pin_memory import pin_memory
from torch.utils.data.dataloader import _BaseDataLoaderIter, _DatasetKind

from wellfed.errors import ConfigError, SampleError, WorkerTimeoutError

__all__ = [
    "JOIN_TIMEOUT_S",
    "THREAD_NAME_PREFIX",
    "ThreadWorkersIter",
    "current_index",
    "live_threads",
    "set_current_index",
]

logger = logging.getLogger("wellfed.loader")

#: Seconds closing a loader waits, in all, for fetches still running in its threads. Python
#: cannot stop a thread from outside, so a fetch that hangs past this is left to its daemon
#: thread (logged); a normal fetch finishes in milliseconds.
JOIN_TIMEOUT_S = 10.0

#: Name prefix of every thread worker (``threading.enumerate()`` finds them by it).
THREAD_NAME_PREFIX = "wellfed-thread"

_LOCAL = threading.local()


def set_current_index(index: Any) -> None:
    """Record the sample index this thread is loading (so a failure can name it)."""
    _LOCAL.index = index


def current_index() -> Any:
    """The sample index this thread is loading, or None."""
    return getattr(_LOCAL, "index", None)


def live_threads() -> list[threading.Thread]:
    """The thread workers of every wellfed loader alive now (for tests and leak checks)."""
    return [t for t in threading.enumerate() if t.name.startswith(THREAD_NAME_PREFIX)]


class _Failure:
    """A fetch that raised: the exception, the index being loaded, the thread's name."""

    __slots__ = ("exc", "index", "thread")

    def __init__(self, exc: BaseException, index: Any, thread: str) -> None:
        self.exc = exc
        self.index = index
        self.thread = thread


class _Fetch:
    """What a thread runs for one batch: fetch (per index, or batched), then collate.

    Holds no reference to the iterator, so a dropped iterator is collected (and its threads
    stopped) even while fetches are in flight.
    """

    def __init__(self, dataset: Any, auto_collation: bool, collate_fn: Callable[[Any], Any]):
        self.dataset = dataset
        self.auto_collation = auto_collation
        self.collate_fn = collate_fn

    def __call__(self, index: Any) -> Any:
        dataset = self.dataset
        set_current_index(None)
        if self.auto_collation:
            getitems = getattr(dataset, "__getitems__", None)
            if getitems is not None:
                data = getitems(index)
            else:
                data = []
                for i in index:
                    set_current_index(i)
                    data.append(dataset[i])
                set_current_index(None)
        else:
            # batch_size=None: one item per step (a list of indices with batched fetch)
            set_current_index(index)
            data = dataset[index]
        return self.collate_fn(data)


def _work(tasks: queue.SimpleQueue[Any], fetch: _Fetch) -> None:
    while True:
        item = tasks.get()
        if item is None:
            return
        future, index = item
        del item
        if future.set_running_or_notify_cancel():
            try:
                future.set_result(fetch(index))
            except BaseException as exc:
                name = threading.current_thread().name
                future.set_result(_Failure(exc, current_index(), name))
                del exc
        del future, index


def _stop(
    tasks: queue.SimpleQueue[Any],
    threads: list[threading.Thread],
    pending: deque[tuple[Any, Future[Any]]],
    join_s: float,
) -> None:
    """Cancel what has not started, tell every thread to exit, join them (bounded)."""
    for _, future in pending:
        future.cancel()
    pending.clear()
    started = [t for t in threads if t.ident is not None]
    for _ in started:
        tasks.put(None)
    deadline = time.monotonic() + join_s
    for t in started:
        t.join(max(0.0, deadline - time.monotonic()))
    stuck = [t.name for t in started if t.is_alive()]
    if stuck:
        logger.warning(
            "%d thread worker(s) still running a fetch %.0fs after the loader closed (%s); "
            "they are daemon threads and end with the fetch or the process",
            len(stuck),
            join_s,
            ", ".join(stuck[:4]),
        )


def _indices_of(index: Any) -> list[Any]:
    """Plain sample indices of a batch (wellfed's seeded wrapper pairs them with seeds)."""
    items = list(index) if isinstance(index, (list, tuple)) else [index]
    return [i[0] if isinstance(i, tuple) and len(i) == 2 else i for i in items]


class ThreadWorkersIter(_BaseDataLoaderIter):
    """A DataLoader iterator whose workers are threads of the main process.

    Used for loaders with ``num_threads > 0`` (``SeededDataLoader``); reads
    ``loader.num_threads`` and ``loader.thread_prefetch_factor`` (batches in flight per
    thread; None: 2, torch's default ``prefetch_factor``). Batches arrive in sampler order.

    Raises (from ``next``):
        SampleError: a sample raised in a thread (WF304); its exception is chained.
        WorkerTimeoutError: ``loader.timeout > 0`` and no batch arrived in time (WF303).
    """

    def __init__(self, loader: Any) -> None:
        super().__init__(loader)
        if self._dataset_kind != _DatasetKind.Map:
            raise ConfigError(
                "Invalid option: num_threads needs a map-style dataset (__getitem__ + "
                f"__len__); {type(loader.dataset).__name__} is iterable-style, and threads "
                "cannot share one iterator. Use num_workers (processes) instead.",
                code="WF010",
                attribute="num_threads",
                value=loader.num_threads,
            )
        threads = int(loader.num_threads)
        prefetch = getattr(loader, "thread_prefetch_factor", None) or 2
        self._depth = threads * int(prefetch)
        self._dataset_name = type(loader.dataset).__name__
        fetch = _Fetch(self._dataset, self._auto_collation, self._collate_fn)
        self._tasks: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._threads = [
            threading.Thread(
                target=_work,
                args=(self._tasks, fetch),
                name=f"{THREAD_NAME_PREFIX}-{i}",
                daemon=True,
            )
            for i in range(threads)
        ]
        self._pending: deque[tuple[Any, Future[Any]]] = deque()
        self._closed = False
        self._finalizer = weakref.finalize(
            self, _stop, self._tasks, self._threads, self._pending, JOIN_TIMEOUT_S
        )

    def _fill(self) -> None:
        while len(self._pending) < self._depth:
            try:
                index = self._next_index()  # type: ignore[no-untyped-call]
            except StopIteration:
                return
            future: Future[Any] = Future()
            self._pending.append((index, future))
            self._tasks.put((future, index))

    def _next_data(self) -> Any:
        if self._closed:
            raise StopIteration
        if self._threads and self._threads[0].ident is None:
            for t in self._threads:
                t.start()
        self._fill()
        if not self._pending:
            self._shutdown_workers()
            raise StopIteration
        index, future = self._pending.popleft()
        try:
            outcome = future.result(timeout=self._timeout if self._timeout > 0 else None)
        except FutureTimeoutError:
            self._shutdown_workers()
            raise WorkerTimeoutError(
                f"Loader timed out: no batch from the thread workers within timeout="
                f"{self._timeout}s (batch of samples {_indices_of(index)[:8]} of "
                f"{self._dataset_name}). A sample is hung or slower than the timeout. Raise "
                "timeout, or load that sample alone to see where it waits.",
                code="WF303",
                timeout_s=self._timeout,
            ) from None
        if isinstance(outcome, _Failure):
            self._shutdown_workers()
            raise _sample_error(outcome, index, self._dataset_name) from outcome.exc
        self._fill()
        if self._pin_memory:
            outcome = pin_memory(outcome, self._pin_memory_device)  # type: ignore[no-untyped-call]
        return outcome

    def _shutdown_workers(self) -> None:
        """Stop the threads now (the driver calls this, as for torch's worker processes)."""
        if not self._closed:
            self._closed = True
            self._finalizer()


def _sample_error(failure: _Failure, index: Any, dataset: str) -> SampleError:
    indices = _indices_of(index)
    exc = failure.exc
    what = f"{type(exc).__name__}: {exc}"
    if failure.index is not None:
        sample = _indices_of(failure.index)
        where = f"sample {sample[0] if len(sample) == 1 else sample}"
        fix = f"load it alone (dataset[{sample[0] if len(sample) == 1 else sample}])"
    else:
        shown = ", ".join(str(i) for i in indices[:8]) + (", ..." if len(indices) > 8 else "")
        where = f"the batch of samples [{shown}] (batched fetch)"
        fix = "load those samples one by one to find the one that raises"
    return SampleError(
        f"Sample failed: {where} of {dataset} raised {what} in thread worker "
        f"{failure.thread}. The sample's own traceback is chained above. To debug, {fix}.",
        code="WF304",
        index=sample[0] if failure.index is not None and len(sample) == 1 else None,
        indices=indices,
        dataset=dataset,
        thread=failure.thread,
    )
