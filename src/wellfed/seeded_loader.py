"""``SeededDataLoader``: a DataLoader whose batches are a pure function of (seed, epoch, indices).

How it works (see ``docs/reproducibility.md``):

* The sampler runs in the main process, as in every DataLoader. ``loader.sampler`` and
  ``loader.batch_sampler`` stay the user's (or torch's own) objects; inside the loader's
  iterator each index they yield travels to the worker together with its seed, ``(index,
  sample_seed(seed, epoch, index))``. The shuffle order comes from a ``torch.Generator``
  seeded from (seed, epoch).
* In the fetch path (main process or worker), a small wrapper seeds Python ``random``, numpy's
  global RNG and torch's CPU generator from that seed, then calls the user's ``__getitem__``
  with the plain index (or ``__getitems__`` with plain indices, seeding once per batch). The
  collate function runs next, seeded from the batch.
* No worker state is involved, so the batches are identical for num_workers 0..N,
  fork/spawn/forkserver, persistent workers or not, and after a resume into a loader with
  another ``num_workers``.

``loader.dataset`` is the user's dataset: the wrapper is handed to the DataLoader's iterator
only, never stored on the loader. With ``seed=None`` it is a plain ``torch.utils.data.DataLoader``
(what ``wellfed tune`` measures, and what ``create_dataloader`` builds). ``create_dataloader``
(``wellfed.loader``) resolves the "auto" settings and the worker-safety policy around it.
"""

from __future__ import annotations

import itertools
import logging
import re
import signal
import weakref
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeGuard, cast

import torch
from torch.utils.data import DataLoader, IterableDataset, Subset
from torch.utils.data.dataloader import (
    _BaseDataLoaderIter,
    _DatasetKind,
    _MultiProcessingDataLoaderIter,
    _SingleProcessDataLoaderIter,
)

from wellfed._worker_death import (
    RssSampler,
    describe_death,
    loading_text,
    oom_counters,
    signal_from_text,
)
from wellfed.backends import IndexBatchFetch, ThreadWorkersIter, set_current_index
from wellfed.errors import (
    ConfigError,
    StateError,
    WorkerCrashedError,
    WorkerError,
    WorkerStartError,
    WorkerTimeoutError,
)
from wellfed.samplers import WorldInvariantSampler, world_invariant_sampler
from wellfed.seeding import (
    _RNG_LOCK,
    _SALT_COLLATE,
    _SALT_SAMPLER,
    _SALT_SHUFFLE,
    SeededBatch,
    _check_seed,
    _enter_sample,
    _epoch_key,
    _fold,
    _GlobalRngSnapshot,
    _leave_sample,
    _mix,
    _purpose_seed,
    _sample_seed_from_key,
    _SeededGlobals,
)

__all__ = ["SeededDataLoader"]

logger = logging.getLogger("wellfed.loader")

_STATE_FORMAT = "wellfed.loader/1"


def _index_key(index: Any) -> int:
    """An int for any index: ints as themselves, others by CRC32 of their repr (not hash(),
    which differs between processes for str)."""
    try:
        return int(index.__index__())
    except (AttributeError, TypeError):
        return zlib.crc32(repr(index).encode())


# --- the fetch path --------------------------------------------------------------------------


def _passthrough(batch: Any) -> Any:
    """The iterator's collate: the seeded fetch wrapper has already collated."""
    return batch


def _has_batched_fetch(dataset: Any) -> bool:
    """True when the dataset has its own ``__getitems__`` (Subset's only forwards one)."""
    if isinstance(dataset, Subset):
        return _has_batched_fetch(dataset.dataset)
    return callable(getattr(dataset, "__getitems__", None))


class _SeededFetch:
    """Stands in for the dataset inside the DataLoader's iterator (main process and workers).

    Receives ``(index, sample_seed)`` pairs, seeds the global RNGs, calls the user's dataset
    with the plain index, then collates (seeded from the batch). In the main process it
    restores the global RNG state afterwards, so the training loop's randomness does not depend
    on ``num_workers``. Picklable when the dataset and collate function are.

    With ``threaded=True`` (thread workers: many fetches at once in the main process) it
    takes no lock and leaves the process-wide RNGs alone; each thread's ``sample_rng()`` and
    ``sample_generator()`` carry the per-sample seed. With ``sample_seeds=True`` each batch
    is returned as ``SeededBatch(batch, seeds)`` (the loader's ``sample_seeds`` option).
    """

    def __init__(
        self,
        dataset: Any,
        collate_fn: Callable[[Any], Any],
        batched: bool,
        threaded: bool = False,
        sample_seeds: bool = False,
    ) -> None:
        self.dataset = dataset
        self.collate_fn = collate_fn
        self.batched = batched
        self.threaded = threaded
        self.sample_seeds = sample_seeds

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitems__(self, pairs: Sequence[tuple[Any, int]]) -> Any:
        from torch.utils.data import get_worker_info

        if get_worker_info() is not None:  # a worker process: its RNGs are its own
            return self._load_batch(pairs)
        if self.threaded:
            return self._load_batch(pairs, seed_globals=False)
        with _RNG_LOCK:  # the main process: other threads share the global RNGs
            snapshot = _GlobalRngSnapshot()
            try:
                return self._load_batch(pairs)
            finally:
                snapshot.restore()

    def _load_batch(self, pairs: Sequence[tuple[Any, int]], seed_globals: bool = True) -> Any:
        try:
            if self.batched:
                batch_seed = _fold(p[1] for p in pairs)
                _enter_sample(batch_seed, seed_globals=seed_globals)
                samples = self.dataset.__getitems__([p[0] for p in pairs])
            else:
                dataset = self.dataset
                samples = []
                for index, seed in pairs:
                    _enter_sample(seed, seed_globals=seed_globals)
                    set_current_index(index)
                    samples.append(dataset[index])
                set_current_index(None)
                batch_seed = _fold(p[1] for p in pairs)
            _enter_sample(_mix(batch_seed ^ _SALT_COLLATE), seed_globals=seed_globals)
            batch = self.collate_fn(samples)
            if self.sample_seeds:
                return SeededBatch(batch, tuple(p[1] for p in pairs))
            return batch
        finally:
            _leave_sample()

    def __getitem__(self, pair: tuple[Any, int]) -> Any:
        # No automatic batching (batch_size=None): one sample, then the loader's collate_fn
        # (default_convert unless the user gave one).
        from torch.utils.data import get_worker_info

        if get_worker_info() is not None:
            return self._load_one(pair)
        if self.threaded:
            return self._load_one(pair, seed_globals=False)
        with _RNG_LOCK:
            snapshot = _GlobalRngSnapshot()
            try:
                return self._load_one(pair)
            finally:
                snapshot.restore()

    def _load_one(self, pair: tuple[Any, int], seed_globals: bool = True) -> Any:
        try:
            index, seed = pair
            _enter_sample(seed, seed_globals=seed_globals)
            sample = self.dataset[index]
            _enter_sample(_mix(seed ^ _SALT_COLLATE), seed_globals=seed_globals)
            return self.collate_fn(sample)
        finally:
            _leave_sample()


# --- the index stream ------------------------------------------------------------------------


class _SeededIndex:
    """What the DataLoader's iterators draw from: the loader's own index sampler, each index
    paired with its sample seed, ``(index, sample_seed)`` (lists of them for batches).

    Never public: ``loader.sampler`` and ``loader.batch_sampler`` stay the user's objects (or
    torch's ``SequentialSampler``/``RandomSampler``/``BatchSampler``), so code that rebuilds a
    DataLoader from them (Accelerate, Lightning) gets plain indices. The loader hands this
    object to its iterators through ``_index_sampler``. It holds no reference to the loader
    (persistent workers stop when the loader is deleted, not at the next garbage collection).

    Args:
        seed: The loader's seed.
        base: The loader's ``batch_sampler`` (automatic batching) or ``sampler``.
        batches: True when ``base`` yields lists of indices.
        shuffle_gen: The generator of wellfed's own RandomSampler (``shuffle=True``),
            reseeded from (seed, epoch) each epoch; None otherwise.
    """

    def __init__(
        self, seed: int, base: Any, batches: bool, shuffle_gen: torch.Generator | None
    ) -> None:
        self.seed = seed
        self.base = base
        self.batches = batches
        self.shuffle_gen = shuffle_gen
        self.epoch = 0
        self.skip = 0  # items (batches, or samples with batch_size=None) to skip (a resume)

    def __len__(self) -> int:
        return len(self.base)

    def __iter__(self) -> Iterator[Any]:
        # Lazy, like torch's BatchSampler: the multiprocessing iterator calls iter() twice (in
        # its base __init__ and in _reset) and only draws from the second one.
        return self._pairs()

    def _pairs(self) -> Iterator[Any]:
        epoch, skip = self.epoch, self.skip
        seed = self.seed
        key = _epoch_key(seed, epoch)
        if self.shuffle_gen is not None:
            self.shuffle_gen.manual_seed(_purpose_seed(seed, epoch, _SALT_SHUFFLE))
        # A user's sampler may draw its order from any global RNG at iter() or its first
        # next() (RandomSampler, WeightedRandomSampler without a generator; a numpy
        # permutation): seed all three from (seed, epoch) there, then restore them.
        with _SeededGlobals(_purpose_seed(seed, epoch, _SALT_SAMPLER)):
            it = iter(self.base)
            first = list(itertools.islice(it, 1))
        order: Iterable[Any] = itertools.chain(first, it)
        if skip:
            order = itertools.islice(order, skip, None)
        if self.batches:
            for batch in cast("Iterable[Iterable[Any]]", order):
                yield [(i, _sample_seed_from_key(key, _index_key(i))) for i in batch]
        else:
            for i in order:
                yield (i, _sample_seed_from_key(key, _index_key(i)))


def _backend_options(kwargs: dict[str, Any]) -> tuple[int, int | None, bool]:
    """Pop wellfed's own backend options: (num_threads, thread prefetch, batched_fetch).

    Raises:
        ConfigError: num_threads is not a non-negative int, or is combined with worker
            processes or persistent_workers (WF203).
    """
    num_threads = kwargs.pop("num_threads", 0) or 0
    batched_fetch = bool(kwargs.pop("batched_fetch", False))
    if not isinstance(num_threads, int) or isinstance(num_threads, bool) or num_threads < 0:
        raise ConfigError(
            f"Invalid option: num_threads={num_threads!r} is not a non-negative int. Use 0 "
            "(no thread workers) or a count such as 4.",
            code="WF203",
            attribute="num_threads",
            value=num_threads,
        )
    if not num_threads:
        return 0, None, batched_fetch
    conflict = None
    if kwargs.get("num_workers"):
        conflict = f"num_workers={kwargs['num_workers']}"
    elif kwargs.get("persistent_workers"):
        conflict = "persistent_workers=True"
    if conflict:
        raise ConfigError(
            f"Conflicting options: num_threads={num_threads} with {conflict}: thread workers "
            "run in the main process, so they exclude worker processes (and need no "
            "persistence: threads start in microseconds). Set one of them.",
            code="WF203",
            attribute="num_threads",
            value=num_threads,
        )
    return num_threads, kwargs.pop("prefetch_factor", None), batched_fetch


def _check_sample_seeds(value: Any, seed: Any, kwargs: dict[str, Any]) -> bool:
    """Validate the ``sample_seeds`` option (a bool; needs a seed and automatic batching).

    Raises:
        ConfigError: not a bool (WF202), with ``seed=None``, or with ``batch_size=None``
            (WF203).
    """
    if not isinstance(value, bool):
        raise ConfigError(
            f"Invalid option: sample_seeds={value!r} is not True or False. Pass "
            "sample_seeds=True to receive SeededBatch(batch, seeds) batches.",
            code="WF202",
            attribute="sample_seeds",
            value=value,
        )
    if not value:
        return False
    if seed is None:
        raise ConfigError(
            "Conflicting options: sample_seeds=True with seed=None: without a seed there are "
            "no per-sample seeds to attach. Pass a seed, e.g. seed=0.",
            code="WF203",
            attribute="sample_seeds",
            value=True,
        )
    if "batch_size" in kwargs and kwargs["batch_size"] is None:
        raise ConfigError(
            "Conflicting options: sample_seeds=True with batch_size=None: the seeds belong to "
            "the samples of a batch, and batch_size=None turns batching off. Pass a "
            "batch_size, or drop sample_seeds.",
            code="WF203",
            attribute="sample_seeds",
            value=True,
        )
    return True


def _epoch_target(user: Any) -> Any:
    """The object whose ``set_epoch`` wellfed forwards to: the user's sampler or batch sampler,
    or the sampler inside the user's batch sampler (a BatchSampler over a DistributedSampler)."""
    for obj in (user, getattr(user, "sampler", None)):
        if obj is not None and callable(getattr(obj, "set_epoch", None)):
            return obj
    return None


def _dist_ready() -> bool:
    import torch.distributed as dist

    return bool(dist.is_available() and dist.is_initialized())


def _valid_epoch(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


# --- worker failures -------------------------------------------------------------------------

_WORKER_DIED = re.compile(
    r"DataLoader worker \(pids?\(?s?\)? ?([\d, ]+)\) "
    r"(?:exited unexpectedly|is killed by signal: (.+))"
)


def _plain_indices(task: Any, seeded: bool) -> list[Any]:
    """The sample indices of one task sent to a worker (a batch's list, or one index); a
    seeded loader's tasks pair each index with its seed, ``(index, seed)``."""
    items = task if isinstance(task, list) else [task]
    if seeded:
        return [i[0] if isinstance(i, tuple) and len(i) == 2 else i for i in items]
    return list(items)


def _undelivered(it: Any, worker_id: int | None) -> list[list[Any]] | None:
    """The sample indices of each task sent to worker ``worker_id`` that it never delivered,
    oldest first: it died loading one of them (a worker runs its tasks in order, but a result
    it had finished may die with it in its queue's feeder thread). None when unknown (an
    iterator that does not record its tasks: a plain DataLoader's)."""
    sent = getattr(it, "_wf_sent", None)
    info = getattr(it, "_task_info", None)
    if worker_id is None or not isinstance(sent, dict) or not isinstance(info, dict):
        return None
    seeded = isinstance(getattr(it, "_index_sampler", None), _SeededIndex)
    pending = sorted(k for k, v in info.items() if len(v) == 1 and v[0] == worker_id)
    tasks = [_plain_indices(sent[k], seeded) for k in pending if k in sent]
    return tasks or None


def _dead_worker(it: Any, pids: list[int]) -> tuple[int | None, int | None, int | None]:
    """(worker id, pid, exit code) of the first named pid among the iterator's workers."""
    for wid, worker in enumerate(getattr(it, "_workers", None) or ()):
        pid = getattr(worker, "pid", None)
        if pid in pids:
            exitcode = worker.exitcode  # reaps a zombie (torch's waitid leaves it unreaped)
            if exitcode is None:
                worker.join(timeout=0.5)
                exitcode = worker.exitcode
            return wid, pid, exitcode
    return None, (pids[0] if pids else None), None


#: What torch's IPC raises in the main process when the worker at the other end just died (a
#: batch's shared storage is fetched from the worker's resource sharer, or its pipe closes).
IPC_ERRORS = (ConnectionError, EOFError)


def _wait_for_dead(it: Any, wait_s: float = 1.0) -> list[int]:
    """Pids of the iterator's workers that have died, waiting up to ``wait_s`` for one (a
    worker's sockets close as it exits, a moment before it can be reaped)."""
    import time

    workers = list(getattr(it, "_workers", None) or ())
    deadline = time.monotonic() + wait_s
    while True:
        dead = [w.pid for w in workers if getattr(w, "exitcode", None) is not None]
        if dead or not workers or time.monotonic() >= deadline:
            return dead
        time.sleep(0.01)


def worker_failure(it: Any, exc: BaseException) -> WorkerError | None:
    """The wellfed error for a worker failure torch reported as ``exc``, or None (not one).

    torch reports a dead worker as ``RuntimeError("DataLoader worker (pid(s) N) exited
    unexpectedly")`` or "... is killed by signal: Killed.", and a missing batch as
    "DataLoader timed out after T seconds". This names the worker (id and pid), the signal
    (from the worker's exit code, else torch's words), when (batches delivered), the sample
    indices it was fetching (wellfed's iterators record them), the likely cause with its
    evidence (``wellfed._worker_death.describe_death``: for SIGKILL the memory at death and
    the kernel's OOM-kill counts) and the fix, and keeps torch's text. Before the iterator
    delivered its first batch the error is a ``WorkerStartError`` (WF301), later a
    ``WorkerCrashedError`` (WF302); a timeout is a ``WorkerTimeoutError`` (WF303). All
    subclass RuntimeError. Facts: ``worker_id``, ``pid``, ``exitcode``, ``signal``,
    ``indices`` (the samples of ``undelivered``, flat), ``undelivered`` (the index lists of
    the tasks it was sent and never delivered, oldest first), ``batches_delivered``,
    ``cause``, ``fix``, ``memory``. ``exc`` is torch's RuntimeError, or a ConnectionError /
    EOFError from torch's IPC with a worker that died (then the dead worker is named).
    """
    if isinstance(exc, WorkerError):  # already named (the iterator's next() did it)
        return None
    text = str(exc)
    progress = getattr(it, "_wf_progress", None)
    # A plain DataLoader's iterator does not count its batches: then "while loading".
    delivered: int | None = progress.yielded if progress is not None else None
    if text.startswith("DataLoader timed out after"):
        timeout = getattr(it, "_timeout", None)
        return WorkerTimeoutError(
            f"No batch within timeout={timeout} s: a worker is hung or slower than the "
            f"timeout ({delivered if delivered is not None else 'unknown'} batch(es) delivered "
            "this epoch). Fix: raise `timeout`, or "
            "run `wellfed doctor TARGET` to look for a deadlock (a lock or thread pool "
            f"inherited through fork). PyTorch said: {text} [WF303]",
            code="WF303",
            timeout_s=timeout,
            batches_delivered=delivered,
        )
    match = _WORKER_DIED.search(text) if isinstance(exc, RuntimeError) else None
    if match is not None:
        pids = [int(p) for p in re.findall(r"\d+", match.group(1))]
    elif isinstance(exc, IPC_ERRORS) and "in DataLoader worker process" not in text:
        # not the dataset's own error re-raised from a worker: the main process lost a
        # worker's connection, because the worker died
        pids = _wait_for_dead(it)
        if not pids:
            return None
        text = f"{type(exc).__name__}: {text}"
    else:
        return None
    worker_id, pid, exitcode = _dead_worker(it, pids)
    sampler = getattr(it, "_wf_rss", None)
    context = getattr(it, "_wf_start_method", None)
    death = describe_death(
        exitcode=exitcode,
        signal_name=signal_from_text(text),
        pid=pid,
        rss=sampler.last(pid) if isinstance(sampler, RssSampler) else None,
        oom_before=getattr(it, "_wf_oom_before", None),
        start_method=context,
        num_workers=getattr(it, "_num_workers", None),
        prefetch_factor=getattr(it, "_prefetch_factor", None),
    )
    tasks = _undelivered(it, worker_id)
    indices = [i for task in tasks for i in task] if tasks else None
    who = (
        f"DataLoader worker {worker_id} (pid {pid})"
        if worker_id is not None
        else (f"DataLoader worker (pid {', '.join(str(p) for p in pids)})")
    )
    how = (
        f"was killed by {death.signal}"
        if death.signal
        else (f"exited with code {exitcode}" if exitcode is not None else "exited")
    )
    if delivered is None:
        when = "while loading"
    elif delivered == 0:
        when = "before the first batch"
    else:
        when = f"after {delivered} batch(es)"
    what = loading_text(tasks)
    cls = WorkerStartError if delivered == 0 else WorkerCrashedError
    code = "WF301" if delivered == 0 else "WF302"
    return cls(
        f"{who} {how} {when}{what}: {death.cause}. Fix: {death.fix}. PyTorch said: "
        f"{text.strip()} [{code}]",
        code=code,
        worker_id=worker_id,
        pid=pid,
        exitcode=exitcode,
        signal=death.signal,
        indices=indices,
        undelivered=tasks,
        batches_delivered=delivered,
        cause=death.cause,
        fix=death.fix,
        memory=death.memory,
    )


def _stop_other_workers(it: Any) -> None:
    """SIGTERM the live workers of a failed iterator, from a signal handler: only calls that
    are safe anywhere (``os.kill``; no queue, no lock). torch's SIGCHLD check forgets their
    pids first, so their deaths raise nothing more; the iterator's shutdown reaps them."""
    if getattr(it, "_worker_pids_set", False):
        try:
            torch._C._remove_worker_pids(id(it))
            it._worker_pids_set = False
        except Exception:
            return  # torch still watches them: a second error would follow the first
    for w in getattr(it, "_workers", None) or ():
        try:
            if w.exitcode is None:
                w.terminate()
        except Exception:
            continue


def _abandon(it: Any) -> None:
    """Drop a failed iterator from its loader (``loader._iterator``, kept for persistent
    workers): the loader's next ``iter()`` starts new workers, and the failed iterator's
    workers stop when it is released (torch's ``__del__``) or shut down."""
    ref = getattr(it, "_wf_loader", None)
    loader = ref() if ref is not None else None
    if loader is not None and getattr(loader, "_iterator", None) is it:
        loader._iterator = None


#: Multiprocessing iterators whose workers may die: id -> weak reference (a plain dict: the
#: SIGCHLD handler reads it between any two bytecodes of the main thread).
_LIVE_ITERATORS: dict[int, Any] = {}


def _sigchld_names_deaths() -> None:
    """Make torch's SIGCHLD handler raise wellfed's named errors.

    torch's handler (``torch.utils.data._utils.signal_handling``) raises its bare
    RuntimeError wherever the main thread is when a worker dies: in ``next()``, but just as
    often in the training step between two batches, where no iterator can catch it. This wraps
    the handler once, so that what it raises is ``worker_failure``'s error for the iterator
    that owns the dead worker (chained from torch's). Main thread only, as torch's own.
    """
    import threading

    if threading.current_thread() is not threading.main_thread():
        return
    current = signal.getsignal(signal.SIGCHLD)
    if not callable(current) or getattr(current, "_wellfed_names_deaths", False):
        return
    torch_handler = current

    def handler(signum: int, frame: Any) -> None:
        try:
            torch_handler(signum, frame)
        except RuntimeError as exc:
            if isinstance(exc, WorkerError):
                raise
            failure, it = None, None
            named = [int(p) for p in re.findall(r"pids?\(?s?\)? ?(\d+)", str(exc))]
            for ref in list(_LIVE_ITERATORS.values()):
                it = ref()
                pids = {getattr(w, "pid", None) for w in getattr(it, "_workers", None) or ()}
                if it is not None and pids.intersection(named):
                    failure = worker_failure(it, exc)
                    # No shutdown here (a signal handler may interrupt any queue call): the
                    # loader lets go of the iterator, and its other workers are stopped now
                    # (the traceback may keep the iterator, and so them, alive for long).
                    _abandon(it)
                    _stop_other_workers(it)
                    break
            del it  # this frame stays in the traceback: it must not keep the iterator alive
            if failure is None:
                raise
            raise failure from exc

    handler._wellfed_names_deaths = True  # type: ignore[attr-defined]
    signal.signal(signal.SIGCHLD, handler)


# --- iterators -------------------------------------------------------------------------------


@dataclass
class _Progress:
    epoch: int
    start: int  # batches skipped by a resume
    yielded: int = 0
    exhausted: bool = False


class _SeededIterMixin(_BaseDataLoaderIter):
    """Hands the seeded fetch wrapper to the fetcher and counts delivered batches."""

    _wf_progress: _Progress | None

    def __init__(self, loader: DataLoader[Any]) -> None:
        super().__init__(loader)
        self._wf_progress = None
        fetch = getattr(loader, "_wf_fetch", None)
        if fetch is not None:
            self._dataset = fetch
            self._collate_fn = _passthrough

    def __next__(self) -> Any:
        try:
            data = super().__next__()
        except StopIteration:
            if self._wf_progress is not None:
                self._wf_progress.exhausted = True
            raise
        except (RuntimeError, *IPC_ERRORS) as exc:
            # already named when the SIGCHLD handler raised it inside torch's own code
            failure = exc if isinstance(exc, WorkerError) else worker_failure(self, exc)
            if failure is None:
                raise
            # This iterator cannot go on: stop its other workers now, and let the loader's
            # next epoch start new ones (persistent workers would else stay with a dead peer).
            _abandon(self)
            try:
                close_iterator = getattr(self, "_shutdown_workers", None)
                if callable(close_iterator):
                    close_iterator()
            except Exception:  # the named failure matters more than how shutdown went
                logger.debug("shutting down after a worker died failed", exc_info=True)
            if failure is exc:
                raise
            raise failure from exc
        if self._wf_progress is not None:
            self._wf_progress.yielded += 1
        return data


class _SeededSingleProcessIter(_SingleProcessDataLoaderIter, _SeededIterMixin):
    pass


class _DeathWatchIter(_MultiProcessingDataLoaderIter):
    """Worker processes whose death ``worker_failure`` can name in full: records the sample
    indices sent to each worker, samples each worker's RSS (RssSampler, at most once a second,
    in ``next()``), reads the kernel's OOM-kill counts when the workers start, and makes
    torch's SIGCHLD handler raise the named error (``_sigchld_names_deaths``)."""

    def __init__(self, loader: DataLoader[Any]) -> None:
        self._wf_sent: dict[int, Any] = {}
        self._wf_drawn: Any = None
        self._wf_rss = RssSampler()
        self._wf_oom_before = oom_counters()
        ctx = loader.multiprocessing_context
        self._wf_start_method: str | None = (
            ctx.get_start_method() if ctx is not None else _mp_default_start_method()
        )
        super().__init__(loader)
        key = id(self)
        _LIVE_ITERATORS[key] = weakref.ref(self, lambda _r: _LIVE_ITERATORS.pop(key, None))
        _sigchld_names_deaths()

    def _reset(self, loader: Any, first_iter: bool = False) -> None:
        self._wf_sent = {}
        super()._reset(loader, first_iter)

    def _next_index(self) -> Any:
        index = super()._next_index()  # type: ignore[no-untyped-call]
        self._wf_drawn = index
        return index

    def _try_put_index(self) -> None:
        # torch draws the index and sends it in one method, keeping only the worker id per
        # task: remember which indices task number ``_send_idx`` carried, until delivered.
        before = self._send_idx
        super()._try_put_index()
        if self._send_idx > before:
            sent = self._wf_sent
            sent[before] = self._wf_drawn
            if len(sent) > 2 * len(self._task_info) + 16:
                for k in [k for k in sent if k not in self._task_info]:
                    del sent[k]

    def _next_data(self) -> Any:
        # before the wait and after it (rate-limited): the last sample is the latest possible
        self._wf_rss.sample([w.pid for w in self._workers])
        data = super()._next_data()  # type: ignore[no-untyped-call]
        self._wf_rss.sample([w.pid for w in self._workers])
        return data

    def _shutdown_workers(self) -> None:
        live = _LIVE_ITERATORS
        if live is not None:  # None at interpreter exit, when module globals are cleared
            live.pop(id(self), None)
        super()._shutdown_workers()


def _mp_default_start_method() -> str | None:
    import multiprocessing

    return (
        multiprocessing.get_start_method(allow_none=True)
        or (multiprocessing.get_all_start_methods()[0])
    )


class _SeededMultiProcessingIter(_DeathWatchIter, _SeededIterMixin):
    pass


class _SeededThreadIter(ThreadWorkersIter, _SeededIterMixin):
    pass


# --- the loader ------------------------------------------------------------------------------


class SeededDataLoader(DataLoader[Any]):
    """A ``torch.utils.data.DataLoader`` whose batches are a pure function of (seed, epoch, index).

    Build it with ``create_dataloader`` (which also resolves "auto" values and checks worker
    safety); constructing it directly takes DataLoader's arguments plus ``seed``.

    What to load: ``dataset`` (map-style; ``loader.dataset`` is this very object), ``batch_size``,
    ``shuffle``, ``sampler`` or ``batch_sampler``, ``collate_fn``, ``drop_last``. How to
    parallelise: ``num_workers``, ``multiprocessing_context``, ``persistent_workers``,
    ``prefetch_factor``, ``pin_memory``, ``worker_init_fn``, ``timeout``; or, wellfed's own,
    ``num_threads`` (thread workers in the main process, ``wellfed.backends``; they exclude
    ``num_workers``, and ``prefetch_factor`` is then batches in flight per thread) and
    ``batched_fetch`` (one ``dataset[list_of_indices]`` call per batch, default collate only).
    How to reproduce and resume: ``seed``, ``set_epoch``, ``state_dict``, ``load_state_dict``;
    ``sample_seeds=True`` (wellfed's own) yields ``wellfed.SeededBatch(batch, seeds)``, each
    batch with its samples' seeds, for per-sample random transforms on the device
    (``wellfed.to_device``; ``docs/device.md``).

    Args:
        dataset: The user's dataset. With ``seed``, it must be map-style.
        *args: DataLoader's positional arguments after ``dataset``.
        seed: Non-negative int. None: a plain DataLoader (no per-sample seeding, no resume).
        **kwargs: DataLoader's keyword arguments. With ``seed``, ``generator`` must be None
            (the shuffle order comes from the seed) and ``in_order`` must stay True.

    Attributes:
        seed: The seed, or None.
        epoch: The epoch of the latest iteration (-1 before the first).
        plan: The LoaderPlan ``create_dataloader`` resolved, or None.

    Epochs: the first iteration is epoch 0 and each new ``iter(loader)`` is the next epoch,
    also after an iteration stopped early (a step-limited epoch), but not after an iterator
    that delivered no batch (Lightning makes one per reloaded loader); ``set_epoch(e)`` makes the
    next iteration epoch ``e``. A peek with ``next(iter(loader))`` therefore uses up epoch 0:
    call ``loader.set_epoch(0)`` after it to start training at epoch 0. With a sampler
    that has ``set_epoch`` (``DistributedSampler``), wellfed forwards the epoch to it on every
    iteration, and follows the user's own ``sampler.set_epoch(e)``, also one made before the
    loader was built. One live iterator per loader at a time (torch's rule for persistent
    workers too).

    A worker that dies (a signal, an exit) makes iteration raise ``WorkerStartError`` (before
    the first batch of the iteration, WF301) or ``WorkerCrashedError`` (WF302), naming the
    worker's id and pid, the signal, the samples it had been sent and not delivered, the
    likely cause with its evidence (SIGKILL: the memory at death and the kernel's OOM-kill
    counts) and the fix, with torch's error chained; also when torch's SIGCHLD handler raises
    it outside ``next()`` (in the training step). The loader then drops that iterator and its
    workers: the next ``iter(loader)`` starts new ones. See ``docs/errors.md`` (WF3xx).

    ``loader.sampler`` and ``loader.batch_sampler`` are the user's objects when given. Given
    no sampler, the sampler is a ``wellfed.WorldInvariantSampler`` (a ``DistributedSampler``,
    and a ``RandomSampler``/``SequentialSampler`` as it shuffles or not): under
    torch.distributed each rank loads its slice of every global batch (``batch_size x world
    size``), the same global batches whatever the world size; on one process, the order torch's
    own samplers give. ``num_replicas=`` and ``rank=`` (wellfed's own options) fix the ranks;
    ``num_replicas=1`` loads everything on every rank. See ``docs/distributed.md``.

    Under thread workers the process-wide RNGs are left alone (threads share them): seeded
    batches then equal ``num_workers=0``'s when the dataset draws from ``sample_rng()`` /
    ``sample_generator()``.

    Seeded loading in the main process (``num_workers=0``) seeds and restores the process-wide
    RNGs under a lock, so loaders iterated from several threads do not mix their seeds. Other
    code drawing from the global RNGs in another thread at the same time is not locked out:
    with several threads, give each its own generator, or load with workers.
    """

    _POSITIONAL = (
        "batch_size",
        "shuffle",
        "sampler",
        "batch_sampler",
        "num_workers",
        "collate_fn",
        "pin_memory",
        "drop_last",
        "timeout",
        "worker_init_fn",
        "multiprocessing_context",
        "generator",
    )

    def __init__(self, dataset: Any, *args: Any, seed: int | None = None, **kwargs: Any) -> None:
        if len(args) > len(self._POSITIONAL):
            raise TypeError(
                f"SeededDataLoader takes at most {len(self._POSITIONAL) + 1} positional "
                f"arguments (dataset, {', '.join(self._POSITIONAL)}) but {len(args) + 1} were "
                "given; pass the others by keyword"
            )
        for name, value in zip(self._POSITIONAL, args, strict=False):
            if name in kwargs:
                raise TypeError(f"SeededDataLoader got multiple values for argument {name!r}")
            kwargs[name] = value
        # the call as made, for frameworks that rebuild the loader from it (_keep_rebuild_args)
        call = dict(kwargs) if seed is None else {**kwargs, "seed": seed}
        num_threads, thread_prefetch, batched_fetch = _backend_options(kwargs)
        num_replicas, rank = kwargs.pop("num_replicas", None), kwargs.pop("rank", None)
        sample_seeds = kwargs.pop("sample_seeds", False)
        self.sample_seeds: bool = _check_sample_seeds(sample_seeds, seed, kwargs)
        self.num_threads: int = num_threads
        self.thread_prefetch_factor: int | None = thread_prefetch
        self.batched_fetch: bool = batched_fetch
        self._wf_fetch: Any = None
        self._wf_index: _SeededIndex | None = None
        self._wf_user_sampler: Any = None
        self._wf_epoch_target: Any = None
        self._wf_forwarded: int | None = None
        self._wf_pending: tuple[int, int] | None = (0, 0)  # (epoch, batches to skip)
        self._wf_progress: _Progress | None = None
        self._wf_shuffle = False
        self._wf_world: tuple[int, int] | None = None  # (rank, world size) first iterated with
        self.seed: int | None = None
        self.plan: Any = None  # a wellfed.loader.LoaderPlan when create_dataloader built it
        if seed is None:
            if num_replicas is not None or rank is not None:
                raise ConfigError(
                    "Conflicting options: num_replicas/rank with seed=None: the world-size-"
                    "invariant sharding is a seeded loader's. Pass a seed, or a "
                    "DistributedSampler as sampler=.",
                    code="WF203",
                    attribute="num_replicas",
                    value=num_replicas,
                )
            super().__init__(dataset, **kwargs)
            self._keep_rebuild_args(dataset, call)
            self._check_batched_fetch(kwargs.get("collate_fn"))
            if batched_fetch and not _has_batched_fetch(dataset):
                self._wf_fetch = IndexBatchFetch(dataset)
            return
        self.seed = _check_seed(seed)
        if isinstance(dataset, IterableDataset):
            raise ConfigError(
                f"Cannot seed per sample: dataset={type(dataset).__name__} is an "
                "IterableDataset, which has no sample indices to derive seeds from. Use a "
                "map-style dataset (__getitem__ + __len__), or pass seed=None.",
                code="WF204",
                attribute="dataset",
                value=type(dataset).__name__,
            )
        if kwargs.get("generator") is not None:
            raise ConfigError(
                "Conflicting options: generator=<torch.Generator> and seed="
                f"{seed} both decide the shuffle order. Pass one of them: with seed, wellfed "
                "derives the order from (seed, epoch).",
                code="WF203",
                attribute="generator",
                value=kwargs["generator"],
            )
        if kwargs.get("in_order", True) is False:
            raise ConfigError(
                f"Conflicting options: in_order=False with seed={seed}: batches would arrive in "
                "the order workers finish them, so the sequence of batches is not reproducible. "
                "Drop in_order=False, or pass seed=None.",
                code="WF203",
                attribute="in_order",
                value=False,
            )
        shuffle = bool(kwargs.pop("shuffle", False) or False)
        sampler = kwargs.pop("sampler", None)
        batch_sampler = kwargs.pop("batch_sampler", None)
        if shuffle and (sampler is not None or batch_sampler is not None):
            raise ConfigError(
                "Conflicting options: shuffle=True with a "
                f"{'sampler' if sampler is not None else 'batch_sampler'}: the sampler decides "
                "the order. Pass shuffle=False (and shuffle inside the sampler), or drop the "
                "sampler.",
                code="WF203",
                attribute="shuffle",
                value=True,
            )
        if batch_sampler is not None and sampler is not None:
            raise ConfigError(
                "Conflicting options: sampler and batch_sampler are both set; the batch "
                "sampler decides the batches. Pass only one.",
                code="WF203",
                attribute="sampler",
                value=sampler,
            )
        user = batch_sampler if batch_sampler is not None else sampler
        if user is not None and (num_replicas is not None or rank is not None):
            raise ConfigError(
                "Conflicting options: num_replicas/rank with a sampler or batch_sampler: the "
                "user's sampler decides which samples this rank sees. Drop num_replicas/rank, "
                "or drop the sampler (wellfed then shards each global batch by rank).",
                code="WF203",
                attribute="num_replicas",
                value=num_replicas,
            )
        shuffle_gen: torch.Generator | None = None
        if user is None:
            # every rank's slice of each global batch (one rank: the whole sequence), from a
            # generator wellfed reseeds from (seed, epoch) when shuffling; see wellfed.samplers
            shuffle_gen = torch.Generator() if shuffle else None
            per_rank = kwargs.get("batch_size", 1)
            sampler = world_invariant_sampler(
                dataset,
                per_rank if isinstance(per_rank, int) and per_rank > 0 else 1,
                shuffle=shuffle,
                drop_last=bool(kwargs.get("drop_last", False)),
                generator=shuffle_gen,
                num_replicas=num_replicas,
                rank=rank,
            )
        if batch_sampler is not None:
            kwargs["batch_sampler"] = batch_sampler
        elif sampler is not None:
            kwargs["sampler"] = sampler
        collate_fn = kwargs.get("collate_fn")
        super().__init__(dataset, **kwargs)
        self._keep_rebuild_args(dataset, call)
        base = self.batch_sampler if self._auto_collation else self.sampler
        self._wf_index = _SeededIndex(self.seed, base, self._auto_collation, shuffle_gen)
        self._wf_user_sampler = user
        self._wf_shuffle = shuffle
        target = _epoch_target(user if user is not None else sampler)
        self._wf_epoch_target = target
        start = getattr(target, "epoch", None)
        if _valid_epoch(start):
            # an epoch the user set on the sampler before building the loader is followed
            self._wf_forwarded = start
            self._wf_pending = (start, 0)
            if start:
                logger.debug("sampler.epoch=%d was set before the loader: starting there", start)
        self._check_batched_fetch(collate_fn)
        if collate_fn is None:
            collate_fn = self.collate_fn  # default_collate or default_convert, as torch chose
        threaded = num_threads > 0
        if batched_fetch and not _has_batched_fetch(dataset):
            self._wf_fetch = _SeededFetch(
                IndexBatchFetch(dataset), _passthrough, True, threaded, sample_seeds
            )
        else:
            self._wf_fetch = _SeededFetch(
                dataset, collate_fn, _has_batched_fetch(dataset), threaded, sample_seeds
            )

    def _check_batched_fetch(self, collate_fn: Any) -> None:
        if not self.batched_fetch:
            return
        from torch.utils.data import default_collate

        problem = None
        if self._dataset_kind != _DatasetKind.Map:
            problem = "the dataset is iterable-style (no indices to fetch by)"
        elif not self._auto_collation:
            problem = "batch_size=None turns off batching"
        elif collate_fn is not None and collate_fn is not default_collate:
            problem = (
                f"collate_fn={getattr(collate_fn, '__qualname__', collate_fn)!r} would be "
                "skipped (the dataset's list indexing returns the collated batch)"
            )
        if problem:
            raise ConfigError(
                f"Invalid option: batched_fetch=True, but {problem}. Use batched_fetch only "
                "with a map-style dataset whose dataset[list_of_indices] returns the collated "
                "batch (TensorDataset), a batch_size and the default collate.",
                code="WF203",
                attribute="batched_fetch",
                value=True,
            )

    def __setattr__(self, name: str, value: Any) -> None:
        # wellfed's own state is set with object.__setattr__: Lightning records the attributes
        # set on a DataLoader after its __init__ (through a patched DataLoader.__setattr__)
        # and replays them onto the loader it rebuilds with a DistributedSampler; replaying
        # the old seeded index stream (over the old sampler) trained every rank on all data.
        if name.startswith("_wf_"):
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    @property
    def _is_accelerate_prepared(self) -> bool:
        """Read by ``accelerate.Accelerator.prepare_data_loader`` before it rebuilds a loader.

        A seeded loader refuses (WF213): the rebuilt ``DataLoaderShard`` would iterate a plain
        DataLoader over a ``BatchSamplerShard``, without per-sample seeds or wellfed's shards.
        ``wellfed.integrations.accelerate.prepare_data_loader`` wraps it instead.
        """
        if self.seed is None:
            return False
        raise ConfigError(
            f"Cannot hand this seeded loader (seed={self.seed}) to accelerator.prepare: "
            "Accelerate rebuilds it as a plain DataLoader, so augmentations would be unseeded "
            "and the world-size-invariant shards replaced. Prepare it with wellfed first: "
            "loader = wellfed.integrations.accelerate.prepare_data_loader(accelerator, loader), "
            "then accelerator.prepare(model, optimizer, loader) keeps it.",
            code="WF213",
            attribute="loader",
            value="accelerate.prepare",
        )

    def _keep_rebuild_args(self, dataset: Any, call: dict[str, Any]) -> None:
        """Make a framework's record of this loader's arguments the call as made.

        Lightning (``_replace_dunder_methods``) records the arguments of each DataLoader
        ``__init__`` to rebuild the loader later (with a ``DistributedSampler``). When
        ``SeededDataLoader`` was first imported inside that patch (wellfed imports it lazily,
        so ``create_dataloader`` in ``train_dataloader()`` does), only torch's
        ``DataLoader.__init__`` is wrapped, and it records what this class passed on:
        without ``seed``, with wellfed's own sampler. The rebuilt loader was then unseeded.
        """
        saved = self.__dict__.get("__pl_saved_kwargs")
        if saved is None or (saved.get("seed") == call.get("seed") and "sampler" not in saved):
            return
        object.__setattr__(self, "__pl_saved_args", (dataset,))
        object.__setattr__(self, "__pl_saved_kwargs", dict(call))
        object.__setattr__(self, "__pl_saved_arg_names", ("dataset",))

    @property
    def _index_sampler(self) -> Any:
        # DataLoader's iterators read their indices from here; see _SeededIndex.
        if self._wf_index is not None:
            return self._wf_index
        return super()._index_sampler

    # -- epochs ----------------------------------------------------------------------------

    @property
    def epoch(self) -> int:
        """Epoch of the latest iteration; -1 before the first."""
        return self._wf_progress.epoch if self._wf_progress is not None else -1

    def set_epoch(self, epoch: int) -> None:
        """Make the next ``iter(loader)`` run epoch ``epoch`` (then ``epoch + 1``, ...).

        Forwards to the sampler's ``set_epoch`` (``DistributedSampler``: each rank keeps its
        own shard): at once when the loader has no seed, at the next iteration otherwise.

        Raises:
            ConfigError: ``epoch`` is not a non-negative int (WF203).
        """
        if not _valid_epoch(epoch):
            raise ConfigError(
                f"Invalid epoch: epoch={epoch!r} is not a non-negative int. Epochs count from 0.",
                code="WF203",
                attribute="epoch",
                value=epoch,
            )
        self._wf_pending = (epoch, 0)
        if self._wf_index is None and hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def _total_batches(self) -> int | None:
        try:
            return len(self)
        except TypeError:
            return None

    def _finished(self, p: _Progress) -> bool:
        """Whether an iteration delivered its whole epoch (StopIteration, or every batch)."""
        if p.exhausted:
            return True
        total = self._total_batches()
        return total is not None and p.start + p.yielded >= total

    def _next_start(self) -> tuple[int, int]:
        """(epoch, batches to skip) of the next iteration.

        Each new iteration is the next epoch, whether or not the previous one was consumed to
        the end (a step-limited epoch, Lightning's ``limit_train_batches``), unless
        ``set_epoch`` or ``load_state_dict`` said otherwise since.
        """
        p = self._wf_progress
        if self._wf_pending is not None:
            return self._wf_pending
        if p is None:
            return 0, 0
        if p.yielded == 0 and not p.exhausted:
            # an iterator that delivered nothing did not use its epoch up: Lightning creates
            # one per reloaded loader before the one it trains on (reload_dataloaders_every_n_
            # epochs), and a second epoch 1 would follow
            return p.epoch, p.start
        return p.epoch + 1, 0

    def check_worker_number_rationality(self) -> None:
        """torch's check, except where ``create_dataloader`` measured more workers than CPUs.

        ``create_dataloader(num_workers="auto")`` sets ``_wf_workers_measured`` when a stored
        ``wellfed tune`` result chose more workers than usable CPUs (its reason, in
        ``plan``, gives the figures); torch's "suggested max" warning would then repeat at
        every epoch against the measurement.
        """
        if getattr(self, "_wf_workers_measured", False):
            return
        super().check_worker_number_rationality()

    def _get_iterator(self) -> _BaseDataLoaderIter:
        if self.num_threads > 0:
            return _SeededThreadIter(self)
        if self.num_workers == 0:
            return _SeededSingleProcessIter(self)
        self.check_worker_number_rationality()
        return _SeededMultiProcessingIter(self)

    def __iter__(self) -> _BaseDataLoaderIter:
        epoch, skip = self._next_start()
        index = self._wf_index
        if index is not None:
            target = self._wf_epoch_target
            if target is not None:
                current = getattr(target, "epoch", None)
                if (
                    _valid_epoch(current)
                    and self._wf_forwarded is not None
                    and current != self._wf_forwarded
                ):
                    logger.debug("sampler.set_epoch(%d) was called directly; following it", current)
                    if current != epoch:
                        skip = 0
                    epoch = current
                target.set_epoch(epoch)
                self._wf_forwarded = getattr(target, "epoch", epoch)
            index.epoch, index.skip = epoch, skip
        self._wf_pending = None
        sampler = self.sampler
        if isinstance(sampler, WorldInvariantSampler) and self._wf_world is None:
            self._wf_world = sampler.world()
            if self._wf_world[1] > 1 and self._wf_world[0] == 0:
                logger.info(
                    "sharding by rank: each global batch of %d samples is split across %d "
                    "ranks, %d per rank (world size read from %s); pass num_replicas=1 to load "
                    "every sample on every rank",
                    sampler.global_batch_size,
                    self._wf_world[1],
                    sampler.batch_size,
                    "num_replicas"
                    if sampler._num_replicas is not None
                    else ("torch.distributed" if _dist_ready() else "RANK/WORLD_SIZE"),
                )
        if index is not None:
            # torch draws the iterator's base seed from the global generator here: not while
            # another thread is between seeding and using it
            with _RNG_LOCK:
                it = super().__iter__()
        else:
            it = super().__iter__()
        progress = _Progress(epoch=epoch, start=skip)
        it._wf_progress = progress  # type: ignore[attr-defined]
        it._wf_loader = weakref.ref(self)  # type: ignore[attr-defined]
        self._wf_progress = progress
        return it

    # -- resume ----------------------------------------------------------------------------

    def _identity(self) -> dict[str, Any]:
        """Facts a saved state must match to resume with the same batches."""
        base = self._wf_user_sampler
        batch_size = self.batch_size
        if isinstance(self.sampler, WorldInvariantSampler) and batch_size is not None:
            # the global batch: a state saved at one world size resumes at another
            batch_size = self.sampler.global_batch_size
        return {
            "seed": self.seed,
            "num_samples": len(self.dataset),  # type: ignore[arg-type]
            "batch_size": batch_size,
            "drop_last": self.drop_last,
            "shuffle": getattr(self, "_wf_shuffle", False),
            "sampler": None
            if base is None
            else f"{type(base).__module__}.{type(base).__qualname__}",
            "rank": getattr(base, "rank", None),
            "num_replicas": getattr(base, "num_replicas", None),
        }

    def state_dict(self) -> dict[str, Any]:
        """Where the loader stands: the epoch and the batches already delivered in it.

        Save it with the model checkpoint; ``load_state_dict`` into a loader built the same
        way (any ``num_workers``, start method or persistence) resumes with the identical
        remaining batches. Batches prefetched by workers but not yet delivered are not counted.

        Returns:
            A dict of plain ints, strings and None (JSON- and ``torch.save``-friendly).

        Raises:
            StateError: The loader has no seed, so its batches cannot be replayed (WF208).
        """
        if self.seed is None:
            raise StateError(
                "Cannot save a resume state: seed=None, so shuffle order and augmentations "
                "come from unseeded RNGs and cannot be replayed. Build the loader with "
                "create_dataloader(..., seed=<int>).",
                code="WF208",
                attribute="seed",
                value=None,
            )
        p = self._wf_progress
        if self._wf_pending is not None:  # set_epoch/load_state_dict since, or not iterated
            epoch, done = self._wf_pending
        elif p is None:
            epoch, done = 0, 0
        elif self._finished(p):
            epoch, done = p.epoch + 1, 0
        else:
            epoch, done = p.epoch, p.start + p.yielded
        return {
            "format": _STATE_FORMAT,
            "epoch": epoch,
            "batches_done": done,
            **self._identity(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Resume: the next ``iter(loader)`` yields the remaining batches of the saved epoch.

        Args:
            state: A dict from ``state_dict()`` of a loader built with the same dataset
                length, seed, batch size, drop_last, shuffle, sampler type and rank.
                ``num_workers``, start method, persistence and prefetching may differ.

        Raises:
            StateError: The state is not wellfed's, or one of the facts above differs (the
                message names it, with both values) (WF209).
        """
        if not isinstance(state, Mapping) or state.get("format") != _STATE_FORMAT:
            got = state.get("format") if isinstance(state, Mapping) else type(state).__name__
            raise StateError(
                f"Cannot resume: state format={got!r} is not {_STATE_FORMAT!r}, so it was not "
                "saved by a wellfed loader of this version. Pass the dict that "
                "loader.state_dict() returned.",
                code="WF209",
                attribute="format",
                value=got,
            )
        if self.seed is None:
            raise StateError(
                "Cannot resume: this loader has seed=None, so it cannot replay the saved "
                f"batches (saved with seed={state.get('seed')}). Build it with "
                f"create_dataloader(..., seed={state.get('seed')}).",
                code="WF208",
                attribute="seed",
                value=None,
            )
        mine = self._identity()
        for name, value in mine.items():
            saved = state.get(name)
            if saved == value:
                continue
            label, fix = name, f"Build the loader with {name}={saved!r}"
            if name == "batch_size" and isinstance(self.sampler, WorldInvariantSampler):
                world = self.sampler.num_replicas
                label = "global batch size (batch_size x world size)"
                fix = (
                    f"This job has {world} rank(s): build the loader with batch_size = the "
                    f"saved global batch / {world}"
                )
            raise StateError(
                f"Cannot resume: {label}={saved!r} in the saved state but {value!r} in this "
                f"loader, so the remaining batches would differ. {fix} (num_workers and the "
                "world size may differ).",
                code="WF209",
                attribute=name,
                value=value,
                saved=saved,
            )
        epoch, done = state.get("epoch"), state.get("batches_done")
        if not (isinstance(epoch, int) and isinstance(done, int) and epoch >= 0 and done >= 0):
            raise StateError(
                f"Cannot resume: epoch={epoch!r}, batches_done={done!r} are not non-negative "
                "ints. Pass the dict that loader.state_dict() returned, unmodified.",
                code="WF209",
                attribute="batches_done",
                value=done,
            )
        try:
            total = len(self)
        except TypeError:
            total = None
        if total is not None and done > total:
            raise StateError(
                f"Cannot resume: batches_done={done} but an epoch of this loader has {total} "
                "batches. Pass the state saved by a loader over the same data.",
                code="WF209",
                attribute="batches_done",
                value=done,
            )
        self._wf_pending = (epoch, done)
        self._wf_progress = None
