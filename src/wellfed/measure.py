"""The one measuring core and loader driver: run a loader for a bounded time, close it for certain.

The driver (``open_batches``, ``iterate``, ``stream``, ``close_loader``) is the one place that
iterates a DataLoader and stops its workers: tune's trials, the doctor's live probe, repro,
precompute's source stage and the benchmarks all drive loaders through it, so a loader cut
short never keeps workers alive until garbage collection.

Every trial runs in a fresh child process (see ``run_isolated``), so worker start-up is
measured as a user pays it, memory is that configuration's alone, and a crash or a hang ends
the trial, never the caller. tune, the doctor's live probe, the benchmarks and watch use it.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
import warnings
from collections.abc import Callable, Generator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from wellfed._isolate import (
    GroupMember,
    IsolatedResult,
    note_memory,
    run_isolated,
    run_isolated_group,
)
from wellfed._meter import WaitMeter, leading_dim
from wellfed.target import LoaderConfig, LoaderSpec

__all__ = [
    "IsolatedResult",
    "LoaderConfig",
    "RankTrial",
    "Trial",
    "close_iterator",
    "close_loader",
    "iterate",
    "measure",
    "open_batches",
    "run_isolated",
    "stream",
]


# --- the loader driver -----------------------------------------------------------------------


def close_iterator(it: Any) -> None:
    """Stop a DataLoader iterator's workers now (torch's own shutdown, as at an epoch's end)."""
    shutdown = getattr(it, "_shutdown_workers", None)
    if callable(shutdown):
        shutdown()


def close_loader(loader: Any) -> None:
    """Stop the persistent workers a loader keeps between epochs (``loader._iterator``), if any.

    The loader stays usable: its next ``iter()`` starts new workers.
    """
    it = getattr(loader, "_iterator", None)
    if it is not None:
        close_iterator(it)
        loader._iterator = None


@contextmanager
def open_batches(loader: Any, *, keep_workers: bool = False) -> Iterator[Iterator[Any]]:
    """``iter(loader)``, with its workers stopped for certain when the block ends.

    Args:
        loader: Any iterable; a DataLoader's workers (started by ``iter``) are stopped on exit,
            also when the block raises or stops early.
        keep_workers: Keep a persistent-workers loader's workers for its next epoch (stop
            them later with ``close_loader``). Non-persistent workers are stopped either way.

    Raises:
        WorkerStartError, WorkerCrashedError, WorkerTimeoutError: a worker died or hung
            (``wellfed.seeded_loader.worker_failure``), also for a plain DataLoader.
    """
    it = iter(loader)
    try:
        yield it
    except (RuntimeError, ConnectionError, EOFError) as exc:
        # torch reports a dead worker from its SIGCHLD handler, wherever the main process is
        # at that moment (or as a lost connection to it): name it here too when it lands
        # outside a wellfed iterator's next() (a plain DataLoader's iterator, a loop body).
        # Imported here, on the failure path: seeded_loader imports torch, measure does not.
        from wellfed.seeded_loader import worker_failure

        failure = worker_failure(it, exc)
        if failure is None:
            raise
        raise failure from exc
    finally:
        if not (keep_workers and getattr(loader, "persistent_workers", False)):
            close_iterator(it)
            if getattr(loader, "_iterator", None) is it:
                loader._iterator = None
        del it


def iterate(
    loader: Any, *, max_batches: int | None = None, keep_workers: bool = False
) -> Iterator[Any]:
    """Yield one epoch of ``loader`` (at most ``max_batches`` batches); workers stopped after.

    See ``open_batches`` for ``keep_workers``. Closing the generator early (``break`` out of a
    ``for`` loop, then dropping it) stops the workers too.
    """
    with open_batches(loader, keep_workers=keep_workers) as it:
        for count, batch in enumerate(it):
            if max_batches is not None and count >= max_batches:
                return
            yield batch


def stream(loader: Any) -> Generator[Any, None, None]:
    """Yield batches epoch after epoch, as a training loop would, until the consumer stops.

    Each new epoch's start-up (workers restarted unless persistent) happens inside ``next``,
    so it counts as data wait, as in training. An empty epoch ends the stream. When the
    generator is closed (``.close()`` or garbage collection), every worker is stopped.
    """
    try:
        while True:
            delivered = False
            with open_batches(loader, keep_workers=True) as it:
                for batch in it:
                    delivered = True
                    yield batch
            if not delivered:
                return
    finally:
        close_loader(loader)


@dataclass(frozen=True)
class RankTrial:
    """One rank's figures in a trial that ran several loaders at once (``measure(nproc=N)``).

    Attributes:
        rank: The rank (0 to N - 1); its trial process had RANK and LOCAL_RANK set to it.
        samples_per_s: Median throughput of this rank's loader over its windows, samples/s.
        samples_per_s_spread: Interquartile range (or range, below 4 windows), samples/s.
        window_samples_per_s: Throughput of each of its measurement windows, samples/s.
        first_batch_s: Seconds from creating its iterator to its first batch.
        wait_s_p50: Median time its consumer was blocked in ``next()`` per batch, s.
        wait_s_p90: 90th percentile of the same, s.
        batches: Batches it measured (after warm-up).
        samples: Samples it measured.
        peak_memory_bytes: Peak memory of its trial process plus its workers.
        cpu_per_wall: CPU seconds per wall second of its trial process (see Trial).
        spans_unix_s: (start, end) of each measured span, Unix time in seconds, one per
            repeat: the ranks' spans start together (a barrier) and overlap.
        repeats: Runs pooled here.
    """

    rank: int
    samples_per_s: float
    samples_per_s_spread: float
    window_samples_per_s: tuple[float, ...]
    first_batch_s: float | None = None
    wait_s_p50: float | None = None
    wait_s_p90: float | None = None
    batches: int = 0
    samples: int = 0
    peak_memory_bytes: int | None = None
    cpu_per_wall: float | None = None
    spans_unix_s: tuple[tuple[float, float], ...] = ()
    repeats: int = 1

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        out = dataclasses.asdict(self)
        out["window_samples_per_s"] = list(self.window_samples_per_s)
        out["spans_unix_s"] = [list(span) for span in self.spans_unix_s]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RankTrial:
        """Build a RankTrial from ``to_dict()`` output."""
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in names}
        kwargs["window_samples_per_s"] = tuple(data.get("window_samples_per_s", ()))
        kwargs["spans_unix_s"] = tuple(
            (float(a), float(b)) for a, b in data.get("spans_unix_s", ())
        )
        return cls(**kwargs)

    def merged(self, other: RankTrial) -> RankTrial:
        """Pool this rank's windows with the same rank's in a repeat of the trial."""
        windows = self.window_samples_per_s + other.window_samples_per_s
        median, spread = summarize_windows(windows)
        mems = [m for m in (self.peak_memory_bytes, other.peak_memory_bytes) if m is not None]
        return dataclasses.replace(
            self,
            samples_per_s=median,
            samples_per_s_spread=spread,
            window_samples_per_s=windows,
            batches=self.batches + other.batches,
            samples=self.samples + other.samples,
            peak_memory_bytes=max(mems) if mems else None,
            spans_unix_s=self.spans_unix_s + other.spans_unix_s,
            repeats=self.repeats + other.repeats,
        )


@dataclass(frozen=True)
class Trial:
    """One measured configuration.

    Attributes:
        config: The configuration measured.
        status: "ok", "failed" (error holds the worker's own message) or "timeout".
        samples_per_s: Median throughput over the measurement windows, samples/s.
        samples_per_s_spread: Interquartile range of the window throughputs, samples/s
            (0 with fewer than 4 windows: then the range of the windows).
        window_samples_per_s: Throughput of each measurement window, samples/s.
        first_batch_s: Seconds from creating the iterator to the first batch, worker
            start-up included.
        wait_s_p50: Median time the consumer was blocked in ``next()`` per batch, s.
        wait_s_p90: 90th percentile of the same, s.
        batches: Batches measured (after warm-up).
        samples: Samples measured (after warm-up).
        peak_memory_bytes: Peak memory of the trial's main process plus its workers.
        memory_kind: "rss+uss" (main process RSS plus workers' private memory) or "rss"
            (every process's RSS, where the OS gives no USS).
        elapsed_s: Wall seconds the trial took, start-up included.
        error: The failure, with the worker's own message; None when ok. A worker that
            died is named as ``WorkerStartError`` / ``WorkerCrashedError`` name it (worker id,
            pid, signal, samples, likely cause and fix), without a traceback.
        error_code: The wellfed code of the error that failed the trial (e.g. "WF020": an
            unreadable image, a problem in the data rather than in the configuration; WF301
            or WF302: a worker died), else None.
        warnings: Warnings raised while loading (text), e.g. PyTorch's worker-count warning.
        torch_threads: torch's intra-op threads in the trial's main process (1 when the
            measuring process was forked: see ``run_isolated``).
        cpu_per_wall: CPU seconds the trial's main process (all its threads, not its worker
            processes) used per wall second of the measured span. About 1 in the main
            process alone means CPU-bound loading; well below 1 means it waits (storage,
            sleeps), where more workers than cores pay off.
        repeats: How many runs of this configuration are pooled here (see merged()).
        nproc: Loaders that ran at once, one per trial process, as N local ranks will
            (``measure(nproc=N)``). With N > 1 every figure above is per rank: the slowest
            rank's (samples_per_s, its windows and spread, waits, batches, cpu_per_wall: what
            a synchronous step of N ranks gets), the latest first batch, the largest peak
            memory of one rank; ``ranks`` holds each rank's own figures.
        ranks: Each rank's figures when nproc > 1 (RankTrial), else empty.
    """

    config: LoaderConfig
    status: str
    samples_per_s: float | None = None
    samples_per_s_spread: float | None = None
    window_samples_per_s: tuple[float, ...] = ()
    first_batch_s: float | None = None
    wait_s_p50: float | None = None
    wait_s_p90: float | None = None
    batches: int = 0
    samples: int = 0
    peak_memory_bytes: int | None = None
    memory_kind: str | None = None
    elapsed_s: float = 0.0
    error: str | None = None
    error_code: str | None = None
    warnings: tuple[str, ...] = field(default=())
    torch_threads: int | None = None
    cpu_per_wall: float | None = None
    repeats: int = 1
    nproc: int = 1
    ranks: tuple[RankTrial, ...] = ()

    @property
    def ok(self) -> bool:
        """True when the trial measured throughput."""
        return self.status == "ok" and self.samples_per_s is not None

    @property
    def aggregate_samples_per_s(self) -> float | None:
        """What the node delivers, samples/s: nproc x the slowest rank's rate (a synchronous
        step waits for the slowest rank); None when the trial failed."""
        return self.nproc * self.samples_per_s if self.ok and self.samples_per_s else None

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict (config nested as a dict; ``aggregate_samples_per_s``
        included)."""
        out = dataclasses.asdict(self)
        out["config"] = self.config.to_dict()
        out["window_samples_per_s"] = list(self.window_samples_per_s)
        out["warnings"] = list(self.warnings)
        out["ranks"] = [r.to_dict() for r in self.ranks]
        out["aggregate_samples_per_s"] = self.aggregate_samples_per_s
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Trial:
        """Build a Trial from ``to_dict()`` output."""
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in names}
        kwargs["config"] = LoaderConfig.from_dict(data["config"])
        kwargs["window_samples_per_s"] = tuple(data.get("window_samples_per_s", ()))
        kwargs["warnings"] = tuple(data.get("warnings", ()))
        kwargs["ranks"] = tuple(RankTrial.from_dict(r) for r in data.get("ranks", ()))
        return cls(**kwargs)

    def merged(self, other: Trial) -> Trial:
        """Pool this trial's windows with a repeat of the same configuration.

        With several ranks, each rank's windows are pooled with its own, and the pooled
        slowest rank gives the trial's figures.
        """
        if not other.ok:
            return self
        if not self.ok:
            return other
        if self.ranks and len(self.ranks) == len(other.ranks):
            ranks = tuple(a.merged(b) for a, b in zip(self.ranks, other.ranks, strict=True))
            pooled = _from_ranks(self.config, ranks)
            return dataclasses.replace(
                pooled,
                elapsed_s=self.elapsed_s + other.elapsed_s,
                repeats=self.repeats + other.repeats,
                warnings=tuple(sorted(set(self.warnings) | set(other.warnings))),
                torch_threads=self.torch_threads,
                memory_kind=self.memory_kind,
            )
        windows = self.window_samples_per_s + other.window_samples_per_s
        median, spread = summarize_windows(windows)
        firsts = [t for t in (self.first_batch_s, other.first_batch_s) if t is not None]
        mems = [m for m in (self.peak_memory_bytes, other.peak_memory_bytes) if m is not None]
        return dataclasses.replace(
            self,
            samples_per_s=median,
            samples_per_s_spread=spread,
            window_samples_per_s=windows,
            first_batch_s=statistics.median(firsts) if firsts else None,
            batches=self.batches + other.batches,
            samples=self.samples + other.samples,
            peak_memory_bytes=max(mems) if mems else None,
            elapsed_s=self.elapsed_s + other.elapsed_s,
            repeats=self.repeats + other.repeats,
        )


def summarize_windows(windows: tuple[float, ...] | list[float]) -> tuple[float, float]:
    """Median and spread (interquartile range, or range below 4 windows) of window rates."""
    values = sorted(windows)
    median = statistics.median(values)
    if len(values) >= 4:
        q = statistics.quantiles(values, n=4, method="inclusive")
        spread = q[2] - q[0]
    else:
        spread = values[-1] - values[0]
    return median, spread


#: Batches arrive in bursts of about one per worker, so a measurement window spans two rounds
#: of the workers; past this many workers (many threads waiting on storage, whose batches
#: finish at random times) a round is taken as this many batches, so that a 256-thread trial
#: needs ~200 measured batches, not ~1,500 (issue 12: 8.8 s for one such trial before).
_BURST_CAP = 32


def _run_trial(
    make_loader: Callable[[LoaderConfig], Any],
    config: LoaderConfig,
    warmup_batches: int,
    measure_s: float,
    min_batches: int,
    windows: int,
    group: GroupMember | None = None,
    barrier_timeout_s: float | None = None,
) -> dict[str, Any]:
    """Child-process body: iterate the loader and time every batch (see measure()).

    In a group (``measure(nproc=N)``) every member starts its measured span at the same
    moment (a barrier after the warm-up), and a member whose span is over goes on loading,
    unmeasured, until every member's is: each rank is measured with all N loading.
    """
    caught: list[str] = []
    with warnings.catch_warnings(record=True) as records:
        warnings.simplefilter("always")
        loader = make_loader(config)
        clock = time.perf_counter
        start = clock()
        batches = stream(loader)
        try:
            next(batches)
            first_batch_s = clock() - start
            # Warm-up: at least one batch per worker beyond the prefetched queue, so that the
            # measured span sees steady state rather than batches already waiting.
            for _ in range(max(warmup_batches, min(config.workers, _BURST_CAP))):
                next(batches)
            if group is not None:
                group.wait_for_all(barrier_timeout_s)
            # the books of ``wellfed.watch`` (``_meter``): the wait in next(), per hand-over
            meter = WaitMeter()
            span_start_unix = time.time()
            t0 = meter.resume()
            cpu0 = time.process_time()
            last = t0
            deadline = t0 + measure_s
            min_batches = max(min_batches, 3 * max(3, 2 * min(config.workers, _BURST_CAP)))
            while len(meter.step) < min_batches or last < deadline:
                meter.begin()
                batch = next(batches)  # a new epoch's start-up counts, as in training
                meter.end(leading_dim(batch))
                last = meter.started + meter.handover[-1]
                del batch
                if len(meter.step) > 100_000:
                    break
            cpu_s = time.process_time() - cpu0
            span_end_unix = time.time()
            note_memory()  # the workers hold their data now; the parent's samples are 1 s apart
            if group is not None:
                # keep the node loaded while the slower ranks finish their spans
                group.finish()
                drain_until = clock() + max(30.0, 10 * measure_s)
                while not group.all_finished() and clock() < drain_until:
                    next(batches)
        finally:
            batches.close()
        caught = [f"{r.category.__name__}: {r.message}" for r in records]
    stamps = [meter.started + h for h in meter.handover]
    sizes = list(meter.samples)
    stats = meter.stats()
    n = len(stamps)
    # A window spans at least two rounds of the workers (batches arrive in bursts of about
    # num_workers), so that a window's rate is not the luck of one burst.
    per_window = max(3, 2 * min(config.workers, _BURST_CAP))
    k = max(1, min(windows, n // per_window))
    edges = [round(i * n / k) for i in range(k + 1)]
    rates: list[float] = []
    prev_t = t0
    for i in range(k):
        lo, hi = edges[i], edges[i + 1]
        if hi <= lo:
            continue
        span = stamps[hi - 1] - (prev_t if lo == 0 else stamps[lo - 1])
        rates.append(sum(sizes[lo:hi]) / span if span > 0 else float("inf"))
        prev_t = stamps[hi - 1]
    import torch

    return {
        "torch_threads": torch.get_num_threads(),
        "first_batch_s": first_batch_s,
        "windows": rates,
        "batches": n,
        "samples": sum(sizes),
        "wait_s_p50": stats.wait_s_p50,
        "wait_s_p90": stats.wait_s_p90,
        "cpu_per_wall": cpu_s / (last - t0) if last > t0 else None,
        "warnings": sorted(set(caught)),
        "span_unix_s": (span_start_unix, span_end_unix),
    }


def _run_trial_named(
    make_loader: Callable[[LoaderConfig], Any], config: LoaderConfig, *args: Any
) -> dict[str, Any]:
    """``_run_trial``, with a worker's death or hang returned as its named error's text and
    code: the message says all (worker, signal, samples, cause, fix); torch's frames add
    nothing a user can act on."""
    from wellfed.errors import WorkerError

    try:
        return _run_trial(make_loader, config, *args)
    except WorkerError as exc:
        return {"worker_error": str(exc), "code": exc.code}


def _named_worker_error(result: IsolatedResult) -> str | None:
    """A member's error text; for a dead or hung worker (WF301-303) its message alone, which
    says all (the traceback's torch frames add nothing a user can act on)."""
    error = result.error
    if error and result.error_code in ("WF301", "WF302", "WF303"):
        return error.split("\n", 1)[0]
    return error


def _measured_fields(data: dict[str, Any]) -> dict[str, Any]:
    """The figures a trial child measured, as the fields ``Trial`` and ``RankTrial`` share."""
    median, spread = summarize_windows(data["windows"])
    return {
        "samples_per_s": median,
        "samples_per_s_spread": spread,
        "window_samples_per_s": tuple(data["windows"]),
        "first_batch_s": data["first_batch_s"],
        "wait_s_p50": data["wait_s_p50"],
        "wait_s_p90": data["wait_s_p90"],
        "batches": data["batches"],
        "samples": data["samples"],
    }


def measure(
    spec: LoaderSpec,
    config: LoaderConfig,
    *,
    warmup_batches: int = 2,
    measure_s: float = 3.0,
    min_batches: int = 8,
    windows: int = 6,
    timeout_s: float = 120.0,
    make_loader: Callable[[LoaderConfig], Any] | None = None,
    nproc: int = 1,
) -> Trial:
    """Measure one loader configuration in an isolated child process (or N at once).

    The child builds the DataLoader (``spec.make_loader(config)``), takes the first batch
    (first-batch latency, worker start-up included), loads ``warmup_batches`` more (at least
    one per worker), then loads for ``measure_s`` seconds and at least ``min_batches`` batches,
    starting new epochs as needed. The measured span is split into ``windows`` equal runs of
    batches; throughput is their median. Memory (main process plus workers) is sampled all
    along. The consumer does no work: this is the loader's own rate.

    Args:
        spec: What to load (dataset and the DataLoader arguments not being tuned).
        config: The configuration to measure.
        warmup_batches: Batches after the first one that are not counted.
        measure_s: Seconds of measured loading (the minimum; a batch in flight completes).
        min_batches: Batches measured at least, however long they take.
        windows: Measurement windows for the median and spread.
        timeout_s: Seconds for the whole trial; past it the trial's processes are killed and
            the status is "timeout".
        make_loader: Builds the iterable to measure from ``config`` instead of
            ``spec.make_loader`` (a picklable callable: the benchmarks measure other
            libraries' pipelines with it). Each ``iter()`` of what it returns is an epoch.
        nproc: Loaders to run at once, each in its own isolated child (``run_isolated_group``)
            with RANK, LOCAL_RANK (0 to nproc - 1), WORLD_SIZE and LOCAL_WORLD_SIZE (nproc)
            set, as nproc local ranks of one node will run. Their measured spans start
            together (a barrier) and each rank loads until all are done; the Trial's figures
            are the slowest rank's (see Trial.nproc), each rank's are in ``Trial.ranks``.
            One rank failing fails the trial (its error, prefixed "rank K:").

    Returns:
        A Trial; a failure or hang is a Trial with status "failed" or "timeout", not an
        exception.

    Raises:
        ConfigError: nproc < 1 (WF010).
    """
    if nproc != 1:
        from wellfed.errors import check_option, is_count

        check_option("nproc", nproc, is_count(nproc, 1), "an int >= 1", code="WF010")
        return _measure_group(
            make_loader if make_loader is not None else spec.make_loader,
            config,
            (warmup_batches, measure_s, min_batches, windows),
            timeout_s,
            nproc,
        )
    result = run_isolated(
        _run_trial_named,
        make_loader if make_loader is not None else spec.make_loader,
        config,
        warmup_batches,
        measure_s,
        min_batches,
        windows,
        timeout_s=timeout_s,
        sample_memory=True,
    )
    if result.status != "ok":
        return Trial(
            config=config,
            status=result.status,
            peak_memory_bytes=result.peak_memory_bytes,
            memory_kind=result.memory_kind,
            elapsed_s=result.elapsed_s,
            error=_short_error(result.error),
            error_code=result.error_code,
        )
    data = result.value
    if "worker_error" in data:
        return Trial(
            config=config,
            status="failed",
            peak_memory_bytes=result.peak_memory_bytes,
            memory_kind=result.memory_kind,
            elapsed_s=result.elapsed_s,
            error=_short_error(data["worker_error"]),
            error_code=data.get("code"),
        )
    return Trial(
        config=config,
        status="ok",
        **_measured_fields(data),
        peak_memory_bytes=result.peak_memory_bytes,
        memory_kind=result.memory_kind,
        elapsed_s=result.elapsed_s,
        warnings=tuple(data["warnings"]),
        torch_threads=data["torch_threads"],
        cpu_per_wall=data.get("cpu_per_wall"),
    )


def _rank_env(rank: int, nproc: int) -> dict[str, str]:
    """The variables torchrun sets that a loader reads, for local rank ``rank`` of ``nproc``."""
    return {
        "RANK": str(rank),
        "LOCAL_RANK": str(rank),
        "WORLD_SIZE": str(nproc),
        "LOCAL_WORLD_SIZE": str(nproc),
    }


def _measure_group(
    make_loader: Callable[[LoaderConfig], Any],
    config: LoaderConfig,
    settings: tuple[int, float, int, int],
    timeout_s: float,
    nproc: int,
) -> Trial:
    """``measure(nproc=N)``: N trial processes at once, figures per rank (see measure())."""
    results = run_isolated_group(
        _run_trial,  # raises, so that a member's failure breaks the group's barrier
        [(make_loader, config, *settings)] * nproc,
        timeout_s=timeout_s,
        sample_memory=True,
        env_per_member=[_rank_env(rank, nproc) for rank in range(nproc)],
        barrier_timeout_s=timeout_s,
    )
    elapsed = max(r.elapsed_s for r in results)
    mems = [r.peak_memory_bytes for r in results if r.peak_memory_bytes is not None]
    kind = next((r.memory_kind for r in results if r.memory_kind), None)
    failed = [(rank, r) for rank, r in enumerate(results) if r.status not in ("ok", "stopped")]
    if failed:
        rank, first = failed[0]
        status = "timeout" if any(r.status == "timeout" for _, r in failed) else "failed"
        return Trial(
            config=config,
            status=status,
            peak_memory_bytes=max(mems) if mems else None,
            memory_kind=kind,
            elapsed_s=elapsed,
            error=_short_error(f"rank {rank}: {_named_worker_error(first)}"),
            error_code=first.error_code,
            nproc=nproc,
        )
    ranks = []
    warned: set[str] = set()
    for rank, r in enumerate(results):
        data = r.value
        warned.update(data["warnings"])
        ranks.append(
            RankTrial(
                rank=rank,
                **_measured_fields(data),
                peak_memory_bytes=r.peak_memory_bytes,
                cpu_per_wall=data.get("cpu_per_wall"),
                spans_unix_s=(tuple(data["span_unix_s"]),),
            )
        )
    trial = _from_ranks(config, tuple(ranks))
    return dataclasses.replace(
        trial,
        memory_kind=kind,
        elapsed_s=elapsed,
        warnings=tuple(sorted(warned)),
        torch_threads=results[0].value["torch_threads"],
    )


def _from_ranks(config: LoaderConfig, ranks: tuple[RankTrial, ...]) -> Trial:
    """A Trial whose figures are the slowest rank's (a synchronous step waits for it).

    The first batch is the latest rank's, memory the largest one rank used; cpu_per_wall is
    the largest of the ranks (a rank starved of CPU by the others must not make CPU-bound
    loading look wait-bound).
    """
    slowest = min(ranks, key=lambda r: r.samples_per_s)
    firsts = [r.first_batch_s for r in ranks if r.first_batch_s is not None]
    mems = [r.peak_memory_bytes for r in ranks if r.peak_memory_bytes is not None]
    cpus = [r.cpu_per_wall for r in ranks if r.cpu_per_wall is not None]
    return Trial(
        config=config,
        status="ok",
        samples_per_s=slowest.samples_per_s,
        samples_per_s_spread=slowest.samples_per_s_spread,
        window_samples_per_s=slowest.window_samples_per_s,
        first_batch_s=max(firsts) if firsts else None,
        wait_s_p50=slowest.wait_s_p50,
        wait_s_p90=slowest.wait_s_p90,
        batches=slowest.batches,
        samples=slowest.samples,
        peak_memory_bytes=max(mems) if mems else None,
        cpu_per_wall=max(cpus) if cpus else None,
        nproc=len(ranks),
        ranks=ranks,
    )


def _short_error(error: str | None, max_chars: int = 4000) -> str | None:
    if error is None or len(error) <= max_chars:
        return error
    return error[: max_chars // 2] + "\n...\n" + error[-max_chars // 2 :]
