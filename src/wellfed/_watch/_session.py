"""Meter every DataLoader a program iterates, and sample what its workers do (``/proc``).

``LoaderSession`` patches ``torch.utils.data.DataLoader.__iter__`` (and ``SeededDataLoader``'s,
which overrides it) while the session is open, so each loader the program iterates gets a
``WaitMeter`` of its own, with no change to the program; on exit the classes are restored. The
outermost ``__iter__`` is metered once (a subclass calling ``super().__iter__()`` is not
metered twice), and the iterator handed back forwards every attribute to torch's, so
``_shutdown_workers``, resume state and framework code see what they expect.

A sampler thread (daemon, ``wellfed-watch-sampler``) wakes every ``interval_s`` and reads, for
each loader with a live iterator: each worker's state and CPU ticks (``/proc/<pid>/stat``),
where it sleeps (``/proc/<pid>/wchan``), its reads (``/proc/<pid>/io``), its private memory
(``smaps_rollup``, every tenth tick), and the prefetch queue (batches ready against
``prefetch_factor x num_workers``). Storage pressure (``/proc/pressure/io``) and device busy
time (``/proc/diskstats``) are read at the start and the end.
"""

from __future__ import annotations

import contextlib
import itertools
import multiprocessing
import os
import sys
import threading
import time
import weakref
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wellfed._meter import WaitMeter, warmup_for
from wellfed._watch import _proc, _stale
from wellfed._watch._wrap import MeteredIterator
from wellfed.target import callable_without_arguments

__all__ = ["LoaderRecord", "LoaderSession", "find_module"]

#: The largest share of the training loop's time the hand-over stale-state check may take
#: (issue 13's budget for the meter: at most 1% of a step).
STALE_CHECK_SHARE = 0.01

#: Paths whose frames are library code, not the user's, when naming where a loader is iterated.
_LIBRARY_PARTS = (
    f"{os.sep}torch{os.sep}",
    f"{os.sep}wellfed{os.sep}",
    f"{os.sep}lightning{os.sep}",
    f"{os.sep}pytorch_lightning{os.sep}",
    f"{os.sep}accelerate{os.sep}",
    f"{os.sep}transformers{os.sep}",
    f"{os.sep}runpy.py",
    "<frozen runpy>",
)

_depth = threading.local()


def find_module(obj: Any, root: str = "dataset", limit: int = 400) -> tuple[str, str] | None:
    """(attribute path, class name) of a ``torch.nn.Module`` reachable from ``obj``, or None.

    Walks attributes, list/tuple items and dict values breadth-first, four levels deep and at
    most ``limit`` objects: a model the dataset runs in ``__getitem__`` (note 001's pattern).
    """
    nn = sys.modules.get("torch.nn")
    if nn is None:
        return None
    module_type = nn.Module
    seen: set[int] = set()
    queue: list[tuple[Any, str, int]] = [(obj, root, 0)]
    while queue and len(seen) < limit:
        value, path, depth = queue.pop(0)
        if id(value) in seen or value is None or isinstance(value, (str, bytes, int, float)):
            continue
        seen.add(id(value))
        if isinstance(value, module_type):
            return path, type(value).__name__
        if depth >= 4 or type(value).__module__ in ("torch", "numpy") or hasattr(value, "shape"):
            continue
        children: list[tuple[Any, str]] = []
        if isinstance(value, dict):
            children = [(v, f"{path}[{k!r}]") for k, v in itertools.islice(value.items(), 50)]
        elif isinstance(value, (list, tuple)):
            children = [(v, f"{path}[{i}]") for i, v in enumerate(value[:50])]
        else:
            attrs = getattr(value, "__dict__", None)
            if isinstance(attrs, dict):
                children = [(v, f"{path}.{k}") for k, v in attrs.items()]
        queue.extend((v, p, depth + 1) for v, p in children)
    return None


def _innermost_dataset(dataset: Any) -> Any:
    """The dataset under ``Subset``-like wrappers (``.dataset`` chains), at most four deep."""
    for _ in range(4):
        inner = getattr(dataset, "dataset", None)
        if inner is None or inner is dataset:
            break
        dataset = inner
    return dataset


def _start_method(loader: Any) -> str | None:
    ctx = getattr(loader, "multiprocessing_context", None)
    if ctx is not None:
        return str(ctx.get_start_method()) if hasattr(ctx, "get_start_method") else str(ctx)
    if getattr(loader, "num_workers", 0):
        return multiprocessing.get_start_method(allow_none=True) or "default"
    return None


def _settings(loader: Any) -> dict[str, Any]:
    dataset = getattr(loader, "dataset", None)
    inner = _innermost_dataset(dataset)
    workers = int(getattr(loader, "num_workers", 0) or 0)
    return {
        "loader": type(loader).__name__,
        "dataset": type(dataset).__name__,
        "inner_dataset": type(inner).__name__,
        "dataset_len": _safe_len(dataset),
        "batch_size": getattr(loader, "batch_size", None),
        "num_workers": workers,
        "num_threads": int(getattr(loader, "num_threads", 0) or 0),
        "persistent_workers": bool(getattr(loader, "persistent_workers", False)),
        "prefetch_factor": getattr(loader, "prefetch_factor", None) if workers else None,
        "pin_memory": bool(getattr(loader, "pin_memory", False)),
        "start_method": _start_method(loader),
    }


def _safe_len(obj: Any) -> int | None:
    try:
        return len(obj)
    except Exception:
        return None


@dataclass
class _PidSeen:
    first_wall: float
    first_ticks: int
    last_wall: float
    last_ticks: int
    first_queued_ns: int | None = None  # run-queue wait (schedstat) at first and last sight
    last_queued_ns: int | None = None


@dataclass
class LoaderRecord:
    """What one session learnt about one loader: its meter, settings and worker samples.

    Attributes:
        index: 1, 2, ... in the order loaders were first iterated.
        name: ``"#<index> <dataset class> at <file>:<line>"``.
        site: Where it was first iterated (``file:line`` in the user's code).
        settings: The loader's settings (class, dataset, batch size, workers, threads,
            persistent, prefetch factor, pin memory, start method).
        meter: Its ``WaitMeter``.
        target: A TARGET for ``wellfed tune`` / ``precompute`` naming its data, when found in
            the program's globals; else None.
        model: (attribute path, class) of a ``torch.nn.Module`` reachable from its dataset.
        worker_pids: The worker pids of each epoch (a new set: the workers were restarted).
        states: Worker samples by ``_proc.wait_class`` ("cpu", "disk", "idle"...).
        queue: Samples of (batches ready, prefetch capacity) of its worker queue.
        uss_bytes: Peak private memory seen per worker pid.
        io: The latest ``/proc/<pid>/io`` per worker pid.
        pids: CPU ticks and run-queue wait per worker pid, first and last seen.
        consumer: The same for the thread that iterates the loader (keyed by its thread id).
        stale: Dataset attributes the program changed while workers held copies made before
            the change (``_stale``): dicts with ``path``, ``before``, ``now``, ``step`` (steps
            handed over when it was first detected), ``epoch`` (1, 2...), ``epochs`` (the
            epochs in which it was seen changed to a new value), ``changes`` (how many new
            values were seen), ``last`` (the latest value seen), ``persistent`` and
            ``read_by_workers`` (True: worker code reads it; None: the class is not user
            code, so that is unknown).
    """

    index: int
    name: str
    site: str
    settings: dict[str, Any]
    meter: WaitMeter
    target: str | None = None
    model: tuple[str, str] | None = None
    worker_pids: list[tuple[int, ...]] = field(default_factory=list)
    states: Counter[str] = field(default_factory=Counter)
    queue: list[tuple[int, int]] = field(default_factory=list)
    uss_bytes: dict[int, int] = field(default_factory=dict)
    io: dict[int, dict[str, int]] = field(default_factory=dict)
    pids: dict[int, _PidSeen] = field(default_factory=dict)
    consumer: dict[int, _PidSeen] = field(default_factory=dict)
    consumer_tid: int | None = None
    stale: list[dict[str, Any]] = field(default_factory=list)
    _iterator: Any = None  # weakref to torch's live iterator
    # the datasets' attributes when the current workers copied them: (path, dataset, snapshot)
    _copies: list[tuple[str, Any, dict[str, Any]]] = field(default_factory=list)
    _reads: dict[str, frozenset[str] | None] = field(default_factory=dict)
    stale_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def live_iterator(self) -> Any:
        """torch's current iterator of this loader, or None once it is gone or shut down."""
        ref = self._iterator
        it = ref() if ref is not None else None
        if it is None or getattr(it, "_shutdown", False):
            return None
        return it


class LoaderSession:
    """While open, meter every DataLoader iterated in this process (see the module docstring).

    Args:
        interval_s: Seconds between two samples of the workers (and two ``progress`` ticks).
        progress: Called as ``progress(event, record)``: "new" when a loader is first
            iterated, "epoch" when one of its epochs ends (both in the iterating thread),
            "tick" (record None) after every sample (in the sampler thread).
        source: The program's file (its frames name where a loader is iterated).
        target_prefix: What goes before the colon of a TARGET found in the program's
            globals: the script path as typed, or the module name.
        program_globals: Returns the program's global namespace (for TARGETs), or None.
    """

    def __init__(
        self,
        *,
        interval_s: float = 0.5,
        progress: Callable[[str, LoaderRecord | None], None] | None = None,
        source: str | None = None,
        target_prefix: str | None = None,
        program_globals: Callable[[], dict[str, Any] | None] | None = None,
    ) -> None:
        self.interval_s = interval_s
        self.progress = progress
        self.source = str(Path(source).resolve()) if source else None
        self.target_prefix = target_prefix
        self.program_globals = program_globals
        self.records: list[LoaderRecord] = []
        self._by_loader: weakref.WeakKeyDictionary[Any, LoaderRecord] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._patched: list[tuple[type, Any]] = []
        self.started = 0.0
        self.ended = 0.0
        self.psi_start: int | None = None
        self.psi_end: int | None = None
        self.disk_start: dict[str, int] | None = None
        self.disk_end: dict[str, int] | None = None
        self.main_ticks_start: int | None = None
        self.main_ticks_end: int | None = None
        self._tick = 0

    # -- patching ---------------------------------------------------------------------------

    def __enter__(self) -> LoaderSession:
        import torch.utils.data

        classes: list[type] = [torch.utils.data.DataLoader]
        from wellfed.seeded_loader import SeededDataLoader

        classes.append(SeededDataLoader)
        for cls in classes:
            original = cls.__dict__["__iter__"]
            self._patched.append((cls, original))
            setattr(cls, "__iter__", self._wrap_iter(original))  # noqa: B010
        self.started = time.perf_counter()
        self.psi_start = _proc.psi_io_us()
        self.disk_start = _proc.disk_busy_ms()
        stat = _proc.read_stat(os.getpid())
        self.main_ticks_start = stat[1] if stat else None
        self._thread = threading.Thread(
            target=self._sample_loop, name="wellfed-watch-sampler", daemon=True
        )
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        for cls, original in reversed(self._patched):
            setattr(cls, "__iter__", original)  # noqa: B010
        self._patched.clear()
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        for record in list(self.records):
            if record.live_iterator() is not None:
                with contextlib.suppress(Exception):
                    self._check_stale(record)
        self.ended = time.perf_counter()
        self.psi_end = _proc.psi_io_us()
        self.disk_end = _proc.disk_busy_ms()
        stat = _proc.read_stat(os.getpid())
        self.main_ticks_end = stat[1] if stat else None

    def _wrap_iter(self, original: Callable[[Any], Any]) -> Callable[[Any], Any]:
        session = self

        def __iter__(loader: Any) -> Any:
            depth = getattr(_depth, "n", 0)
            warmup = warmup_for(loader) if not depth else 1
            _depth.n = depth + 1
            try:
                it = original(loader)
            finally:
                _depth.n = depth
            if depth or isinstance(it, MeteredIterator) or session._stop.is_set():
                return it
            return session._metered(loader, it, warmup)

        __iter__.__wrapped__ = original  # type: ignore[attr-defined]
        __iter__.__doc__ = getattr(original, "__doc__", None)
        return __iter__

    def _metered(self, loader: Any, it: Any, warmup: int) -> MeteredIterator:
        record = self._by_loader.get(loader)
        new = record is None
        if record is None:
            record = self._new_record(loader)
        record._iterator = _weak(it)
        record.consumer_tid = threading.get_native_id()
        workers = getattr(it, "_workers", None)
        if workers:
            pids = tuple(p.pid for p in workers if p.pid is not None)
            if not record.worker_pids or record.worker_pids[-1] != pids:
                record.worker_pids.append(pids)
                self._copied(record, loader)  # new workers: new copies of the dataset
        if new and self.progress is not None:
            self.progress("new", record)
        return MeteredIterator(
            it,
            record.meter,
            self._on_stop(record),
            warmup=warmup,
            on_batch=self._on_batch(record) if record._copies else None,
        )

    def _on_batch(self, record: LoaderRecord) -> Callable[[], None]:
        """At each hand-over, in the training thread: the stale-state check. An attribute the
        loop assigns between two batches is seen at the next one, even when a later
        assignment puts the workers' value back before the sampler thread or the epoch's end
        looks (multi-scale training draws the starting size again one time in ten).

        A check costs ~6 us for a dataset of 3 attributes, ~53 us for 53 (measured on this
        project's 2-CPU machine, 2,000 calls of ``_check_stale``); the next check waits
        until ``STALE_CHECK_SHARE`` of the time since the last is the last one's CPU time, so the
        guard never takes more than 1% of the loop, whatever the dataset's size."""
        next_at = 0.0

        def on_batch() -> None:
            nonlocal next_at
            now = time.perf_counter()
            if now < next_at:
                return
            cpu = time.thread_time()
            with contextlib.suppress(Exception):  # the guard never breaks the program
                self._check_stale(record)
            # its CPU time, not its wall time: a check the scheduler preempted (a loaded
            # machine) would otherwise put the next one off for a whole epoch
            next_at = now + (time.thread_time() - cpu) / STALE_CHECK_SHARE

        return on_batch

    def _on_stop(self, record: LoaderRecord) -> Callable[[], None]:
        def on_stop() -> None:
            with contextlib.suppress(Exception):  # the guard never breaks the program
                self._check_stale(record)
            if self.progress is not None:
                self.progress("epoch", record)

        return on_stop

    # -- the stale-state guard (``_stale``) --------------------------------------------------

    def _copied(self, record: LoaderRecord, loader: Any) -> None:
        """The loader's workers have just copied its dataset(s): remember what they hold."""
        copies: list[tuple[str, Any, dict[str, Any]]] = []
        path, dataset = "dataset", getattr(loader, "dataset", None)
        for _ in range(4):  # Subset-like wrappers: their .dataset chain
            if dataset is None:
                break
            with contextlib.suppress(Exception):
                copies.append((path, dataset, _stale.snapshot(dataset)))
                if path not in record._reads:
                    record._reads[path] = _stale.worker_reads(loader, dataset)
            inner = getattr(dataset, "dataset", None)
            if inner is dataset:
                break
            path, dataset = f"{path}.dataset", inner
        record._copies = copies

    def _check_stale(self, record: LoaderRecord) -> None:
        """Compare the datasets with the workers' copies; record each new difference once.

        Run by the sampler thread and at each epoch's end (the training thread): one at a
        time (``record.stale_lock``). A difference is recorded when first seen, and a later
        epoch is added to its ``epochs`` only when the value changed again since.
        """
        with record.stale_lock:
            self._check_stale_locked(record)

    def _check_stale_locked(self, record: LoaderRecord) -> None:
        if not record._copies:
            return
        persistent = bool(record.settings.get("persistent_workers"))
        known = {e["path"]: e for e in record.stale}
        for path, dataset, before in record._copies:
            reads = record._reads.get(path)
            for name, was, now in _stale.changes(before, dataset):
                unread = name not in reads if reads is not None else name.startswith("_")
                if unread:  # not read by worker code (or private, where reads are unknown)
                    continue
                full = f"{path}.{name}"
                epoch = record.meter.epochs
                entry = known.get(full)
                if entry is not None:
                    if now != entry["last"]:  # changed again, not the same change seen again
                        entry["changes"] += 1
                        if epoch not in entry["epochs"]:
                            entry["epochs"].append(epoch)
                    entry["last"] = now
                    continue
                entry = {
                    "path": full,
                    "before": was,
                    "now": now,
                    "last": now,
                    "changes": 1,
                    "step": len(record.meter.step) + record.meter.warmup_steps,
                    "epoch": epoch,
                    "epochs": [epoch],
                    "persistent": persistent,
                    "read_by_workers": True if reads is not None else None,
                }
                record.stale.append(entry)
                known[full] = entry

    def _new_record(self, loader: Any) -> LoaderRecord:
        settings = _settings(loader)
        site = self._site()
        with self._lock:
            index = len(self.records) + 1
            name = f"#{index} {settings['dataset']}"
            if settings["inner_dataset"] != settings["dataset"]:
                name += f"({settings['inner_dataset']})"
            name += f" at {site}"
            record = LoaderRecord(
                index=index, name=name, site=site, settings=settings, meter=WaitMeter(name)
            )
            self.records.append(record)
            self._by_loader[loader] = record
        dataset = getattr(loader, "dataset", None)
        try:
            record.model = find_module(dataset)
        except Exception:  # a dataset whose attributes raise on access: no model found
            record.model = None
        record.target = self._target(loader, dataset)
        return record

    def _site(self) -> str:
        frame = sys._getframe(3)
        fallback: str | None = None
        while frame is not None:
            filename = frame.f_code.co_filename
            where = f"{Path(filename).name}:{frame.f_lineno}"
            if self.source is not None and _same_file(filename, self.source):
                return where
            if fallback is None and not any(p in filename for p in _LIBRARY_PARTS):
                fallback = where
            frame = frame.f_back  # type: ignore[assignment]
        return fallback or "?"

    def _target(self, loader: Any, dataset: Any) -> str | None:
        """A TARGET naming this loader's data in the program's globals, or None."""
        if self.program_globals is None or self.target_prefix is None:
            return None
        try:
            namespace = self.program_globals()
        except Exception:
            return None
        if not namespace:
            return None
        inner = _innermost_dataset(dataset)
        for wanted in (loader, dataset, inner):
            for key, value in list(namespace.items()):
                if value is wanted and not key.startswith("_"):
                    return f"{self.target_prefix}:{key}"
        cls = type(inner)
        for key, value in list(namespace.items()):
            if value is cls and callable_without_arguments(cls):
                return f"{self.target_prefix}:{key}"
        return None

    # -- sampling ---------------------------------------------------------------------------

    def _sample_loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._tick += 1
            with self._lock:
                records = list(self.records)
            for record in records:
                with contextlib.suppress(Exception):  # a worker that exits mid-read
                    self._sample(record, uss=self._tick % 10 == 1)
            if self.progress is not None:
                with contextlib.suppress(Exception):
                    self.progress("tick", None)

    def sample_now(self) -> None:
        """Take one sample of every live loader now (as the sampler thread does)."""
        with self._lock:
            records = list(self.records)
        for record in records:
            self._sample(record, uss=True)

    def _sample(self, record: LoaderRecord, *, uss: bool) -> None:
        it = record.live_iterator()
        if it is None:
            return
        with contextlib.suppress(Exception):  # the guard never stops the sampling
            self._check_stale(record)
        workers = list(getattr(it, "_workers", None) or ())
        now = time.perf_counter()
        tid = record.consumer_tid
        if tid is not None:
            sched = _proc.read_schedstat(os.getpid(), tid)
            if sched is not None:
                _seen(
                    record.consumer, tid, now, sched[0] * _proc.CLOCK_TICKS_PER_S // 10**9, sched[1]
                )
        for proc in workers:
            pid = proc.pid
            if pid is None:
                continue
            stat = _proc.read_stat(pid)
            if stat is None:
                continue
            state, ticks = stat
            wchan = _proc.read_wchan(pid) if state not in ("R", "D") else None
            if state in ("R", "D") or wchan is not None:  # else it woke between the reads
                record.states[_proc.wait_class(state, wchan)] += 1
            sched = _proc.read_schedstat(pid)
            _seen(record.pids, pid, now, ticks, sched[1] if sched else None)
            io = _proc.read_io(pid)
            if io is not None:
                record.io[pid] = io
            if uss:
                size = _proc.read_uss_bytes(pid)
                if size is not None:
                    record.uss_bytes[pid] = max(size, record.uss_bytes.get(pid, 0))
        ready = _ready_batches(it)
        if ready is not None:
            record.queue.append(ready)


def _seen(table: dict[int, _PidSeen], key: int, now: float, ticks: int, queued: int | None) -> None:
    seen = table.get(key)
    if seen is None:
        table[key] = _PidSeen(now, ticks, now, ticks, queued, queued)
    else:
        seen.last_wall, seen.last_ticks, seen.last_queued_ns = now, ticks, queued


def _ready_batches(it: Any) -> tuple[int, int] | None:
    """(batches ready for the consumer, prefetch capacity) of torch's worker iterator."""
    try:
        capacity = int(it._prefetch_factor) * int(it._num_workers)
        ready = int(it._data_queue.qsize())
        ready += sum(1 for v in list(it._task_info.values()) if len(v) == 2)
    except (AttributeError, NotImplementedError, TypeError, ValueError, OSError):
        return None
    return min(ready, capacity), capacity


def _weak(obj: Any) -> Any:
    try:
        return weakref.ref(obj)
    except TypeError:
        return lambda: obj


def _same_file(a: str, b: str) -> bool:
    try:
        return str(Path(a).resolve()) == b
    except OSError:
        return False
