"""The search: main process, thread workers and processes, batched fetch and prefetch, measured
adaptively; near-ties re-measured; the cheapest near-best recommended."""

from __future__ import annotations

import dataclasses
import logging
import math
import statistics
import time
from collections.abc import Callable
from typing import Any

from wellfed._contention import ContentionMeter
from wellfed._text import wrap_code
from wellfed.measure import LoaderConfig, Trial, measure
from wellfed.platform import HostToDevice, PlatformInfo, collect_platform_info
from wellfed.target import LoaderSpec, spec_from_object
from wellfed.tune._ranks import budget_scale, stored_note
from wellfed.tune._result import DecodeComparison, Recommendation, SplitComparison, TuneResult

logger = logging.getLogger(__name__)

__all__ = [
    "CLEAR_GAIN",
    "DEFAULT_BUDGET_S",
    "MAX_THREADS",
    "NEAR_BEST",
    "Recommendation",
    "TuneResult",
    "default_budget_s",
    "tune",
]

#: Default bound on a whole tune run, seconds; the adaptive search usually ends well before it
#: (benchmarks/results/published/suite_2cpu.md has the tuning times per workload).
DEFAULT_BUDGET_S = 75.0


def default_budget_s(nproc_per_node: int = 1) -> float:
    """The default bound on a tune run, seconds: DEFAULT_BUDGET_S for one rank, scaled for
    ``nproc_per_node`` ranks measured at once (x 1.5 for 2, x 2.5 for 4, x 4.5 for 8; see
    ``wellfed.tune._ranks.BUDGET_PER_EXTRA_RANK``)."""
    return DEFAULT_BUDGET_S * budget_scale(nproc_per_node)


#: A configuration within this fraction of the fastest counts as equally fast; among those the
#: one with the fewest workers (among as many workers, the fastest) is recommended; so is one
#: that the noise left
#: after the repeats cannot separate from the fastest. Source: issue 2's rule ("fastest
#: configuration within 3% of the best"); 3% is also about the run-to-run spread measured here.
NEAR_BEST = 0.03

#: However noisy the measurements, a recommendation is never further than this below the
#: fastest trial. Source: issue 2's acceptance rule ("within 5% of its best trial").
MAX_NEAR = 0.05

#: Past the usable CPU count, the sweep doubles num_workers only while the last doubling gained
#: at least this factor. Storage-bound data keeps gaining far past the cores; CPU-bound data
#: stops gaining at the core count, and 5% is above the noise of a 3 s trial here.
CLEAR_GAIN = 1.05

#: Fraction of available RAM the workers may use, leaving room for the training process.
MEMORY_SHARE = 0.8

#: File descriptors one worker may hold: PyTorch's default sharing strategy on Linux
#: ("file_descriptor") keeps one per shared tensor in flight; we assume 8 tensors per batch,
#: prefetch_factor batches each, plus 16 for the worker's own pipes and files.
FDS_PER_WORKER_BASE = 16
TENSORS_PER_BATCH = 8

#: A climb step that gains less than this factor is confirmed by measuring the previous
#: count again right after it: between two trials seconds apart, the load of a shared 2-core
#: machine moved single figures by 10-15% (model-in-dataset across the four suite runs in
#: benchmarks/README.md, 'Published results'), while a real gain from doubling the workers
#: is usually larger.
CONFIRM_GAIN = 1.25

#: Most worker processes tried, whatever memory and files allow.
MAX_WORKERS = 64

#: Most thread workers tried. Issue 12 measured 128 threads as the fastest on storage that
#: waits a median 6 ms per sample; 256 leaves one doubling of headroom.
MAX_THREADS = 256

#: Below this many CPU seconds per wall second in the main process, loading is wait-bound
#: (storage, network, sleeps): worker counts then climb by 4x instead of 2x. A CPU-bound
#: fetch in one process uses about 1.0; half of that means it waits at least half the time.
WAIT_BOUND = 0.5

#: A backend whose best trails the leader's best by more than this fraction stops climbing:
#: one more doubling gains at most CLEAR_GAIN-ish per step, so it would not catch up.
TRAILING = 0.90

#: When the 90th-percentile wait for a batch exceeds this multiple of the median, batches come
#: in bursts, and a deeper prefetch queue (prefetch_factor 4) is measured.
BURSTY = 2.0

#: ...and only when that 90th-percentile wait is at least this long, seconds: below a
#: millisecond the queue is not what the consumer waits for.
MIN_BURST_S = 1e-3

#: Rounds of re-measurement for configurations the noise cannot separate.
MAX_REPEAT_ROUNDS = 2

#: A trial's timeout: TRIAL_STARTUP_S, plus per worker process 3 s (spawn, forkserver: each
#: starts a fresh interpreter that imports torch) or 0.5 s (fork), plus TRIAL_TIMEOUT_FACTOR
#: times the measuring time. A main-process trial's timeout (TRIAL_STARTUP_S +
#: TRIAL_TIMEOUT_FACTOR * measure_s, 29 s at the default budget) is also how far past its
#: budget a tune run may go: see ``budget_bound_s``.
TRIAL_STARTUP_S = 20.0
TRIAL_TIMEOUT_FACTOR = 6.0

#: How a trial cut at the budget's bound says so (its ``error`` starts with this).
CUT_BY_BUDGET = "cut short by the time budget"

ProgressFn = Callable[[float, str], None]


def _standard_error(trial: Trial) -> float:
    """Standard error of a trial's median rate, samples/s.

    For n windows with interquartile range IQR: sigma ~ IQR / 1.349 (normal), and the
    median's standard error ~ 1.253 sigma / sqrt(n).
    """
    n = len(trial.window_samples_per_s)
    if not trial.ok or n < 2 or trial.samples_per_s_spread is None:
        return 0.0
    return 1.253 * (trial.samples_per_s_spread / 1.349) / math.sqrt(n)


_PLURAL = {"thread": "thread workers", "process": "worker processes"}


def _fd_cap(platform: PlatformInfo, prefetch: int) -> int:
    if platform.open_files_limit is None:
        return MAX_WORKERS
    per_worker = FDS_PER_WORKER_BASE + prefetch * TENSORS_PER_BATCH
    return max(1, (platform.open_files_limit - 64) // per_worker)


def _config_for(
    spec: LoaderSpec,
    workers: int,
    method: str,
    pin: bool,
    *,
    backend: str = "process",
    batched: bool = False,
    prefetch: int | None = None,
) -> LoaderConfig:
    """The LoaderConfig of one point of the search (``workers`` 0: the main process)."""
    user = spec.user_config
    if prefetch is None and user is not None and user.num_workers > 0:
        prefetch = user.prefetch_factor
    if workers == 0:
        return LoaderConfig(batch_size=spec.batch_size, pin_memory=pin, batched_fetch=batched)
    if backend == "thread":
        return LoaderConfig(
            num_threads=workers,
            batch_size=spec.batch_size,
            pin_memory=pin,
            prefetch_factor=prefetch,
            batched_fetch=batched,
        )
    return LoaderConfig(
        num_workers=workers,
        batch_size=spec.batch_size,
        pin_memory=pin,
        persistent_workers=True,
        prefetch_factor=prefetch,
        multiprocessing_context=method,
        batched_fetch=batched,
    )


def _safety_findings(spec: LoaderSpec, method: str, has_cuda: bool) -> tuple[dict[str, Any], ...]:
    """Errors of the doctor's static checks for the worker configurations tune would measure.

    Judged at 2 persistent workers, the smallest multi-worker configuration the sweep runs:
    what breaks there (unpicklable state, CUDA in workers, duplicated RNGs, stale state)
    breaks at any worker count.
    """
    from wellfed.doctor import static_errors

    kwargs = spec.loader_kwargs(_config_for(spec, 2, method, has_cuda))
    errors = static_errors(spec.dataset, loader_kwargs=kwargs, start_method=method)
    return tuple(f.to_dict() for f in errors)


def _rate(t: Trial | None) -> float:
    return (t.samples_per_s or 0.0) if t is not None and t.ok else 0.0


def _cost(t: Trial) -> int:
    """What a configuration costs, for ties: its workers (threads or processes)."""
    return t.config.workers


def _gained(new: Trial, old: Trial | None) -> bool:
    """Whether ``new`` beats ``old`` by CLEAR_GAIN, beyond 2 standard errors of its own noise.

    The noise margin keeps a lucky measurement on a loaded machine from sending the search
    past the cores (benchmarks/results/published/suite_2cpu_heavy_load.md: 8 workers on 2 CPUs).
    """
    if not new.ok:
        return False
    return _rate(new) - 2.0 * _standard_error(new) >= CLEAR_GAIN * _rate(old)


def _figures_note(trials: tuple[Trial, ...]) -> str | None:
    """The note that says why a note's figures can differ from the table's, or None.

    Issue 15: "421 vs 219 samples/s" in a stop note beside a table row of 396 read as a
    contradiction. Each note quotes the measurements its decision was taken on; the table
    pools every repeat of a configuration (``Trial.merged``).
    """
    repeated = [t for t in trials if t.repeats > 1]
    if not repeated:
        return None
    return (
        "figures: each search note quotes the measurements its decision was taken on; the "
        f"table pools every measurement of a configuration ({len(repeated)} re-measured, up "
        f"to {max(t.repeats for t in repeated)} times), so its figures can differ from a note's"
    )


def _not_gained_text(new: Trial, old: Trial) -> str:
    """Why ``_gained(new, old)`` is False, in its own figures: the change and the noise margin.

    Issue 15: "less than a 5% gain (913 vs 858 samples/s)" read as a contradiction, since the
    rule is a 5% gain *beyond 2 standard errors*, which the old text did not say.
    """
    change = _rate(new) / _rate(old) - 1 if _rate(old) > 0 else math.inf
    margin = 2.0 * _standard_error(new)
    return (
        f"{_rate(new):.0f} vs {_rate(old):.0f} samples/s, {change:+.1%}; needs "
        f"+{CLEAR_GAIN - 1:.0%} after subtracting 2 standard errors ({margin:.0f} samples/s)"
    )


def measure_seconds(budget_s: float) -> float:
    """Seconds of measured loading per trial when ``tune`` is given none: budget_s / 50,
    within 1-3 s."""
    return min(3.0, max(1.0, budget_s / 50.0))


def trial_timeout_s(measure_s: float, workers: int = 0, start_method: str = "fork") -> float:
    """Seconds a tune trial may run before it is killed (see TRIAL_STARTUP_S)."""
    per_worker = 0.5 if start_method == "fork" else 3.0
    return TRIAL_STARTUP_S + per_worker * workers + TRIAL_TIMEOUT_FACTOR * measure_s


def budget_bound_s(
    budget_s: float, measure_s: float | None = None, nproc_per_node: int = 1
) -> float:
    """Seconds by which ``tune(budget_s=...)`` stops every child process it started.

    No trial starts once ``budget_s`` is spent (nor one that the trials so far say would not
    fit), and whatever runs then (a trial, the live probe) is cut at ``budget_s`` plus one
    main-process trial's timeout (``trial_timeout_s(measure_s)``; measure_s None: as tune
    picks it, from the budget before its scaling for ``nproc_per_node`` ranks). tune returns
    after that bound only by the moments that killing and reaping the cut trial's processes
    take.
    """
    per_trial = (
        measure_s
        if measure_s is not None
        else measure_seconds(budget_s / budget_scale(nproc_per_node))
    )
    return budget_s + trial_timeout_s(per_trial)


def tune(
    target: Any,
    *,
    budget_s: float | None = None,
    start_method: str | None = None,
    max_workers: int | None = None,
    max_threads: int | None = None,
    measure_s: float | None = None,
    check_safety: bool = True,
    store: bool = True,
    progress: ProgressFn | None = None,
    nproc_per_node: int | None = None,
) -> TuneResult:
    """Measure loader configurations on this machine and recommend the fastest cheap one.

    The search space: the main process alone, thread workers (``num_threads``) and worker
    processes (``num_workers``, persistent, the target's or the platform's start method), with
    batched fetch when the dataset qualifies, prefetch depth, and pinned memory when a CUDA
    device exists. No fixed sweep; each step uses what the previous trials measured:

    1. Live probes in an isolated child (``_probe``): may a batch be fetched with one
       ``dataset[list]`` call (it must equal the collated per-index samples), and are thread
       workers safe (the doctor's thread hazards, then threaded outputs equal serial ones for
       the same per-sample seeds)?
    2. The main process, per index and (when it qualifies) batched; batched fetch is kept for
       every later trial when it gained at least CLEAR_GAIN.
    3. Its CPU time per wall second says whether loading is CPU-bound or waits (storage,
       sleeps): below WAIT_BOUND the worker counts climb by 4x (wait-bound data gains far past
       the cores), else by 2x. Threads and processes each start at the usable CPU count and
       climb while a step gains CLEAR_GAIN beyond its noise, within caps (memory measured per
       worker, open files, max_workers/max_threads); a backend that trails the leader by more
       than TRAILING stops climbing; a step gaining less than CONFIRM_GAIN is confirmed by
       re-measuring the previous count. After a 4x climb the neighbours (x2, /2) of the best
       count are measured; after a 2x climb, the count halfway to the next (3 between 2, 4).
    4. When batches arrive in bursts (90th-percentile wait over the median above BURSTY),
       the configuration that would be recommended is measured with prefetch_factor 4.
    5. Configurations with no more workers than the fastest that the noise cannot separate
       from it are re-measured with it (up to MAX_REPEAT_ROUNDS) and pooled: only they could
       be recommended instead.
    6. The device side (``_device_side``): with a CUDA device, the pinned vs pageable
       host-to-device bandwidth and the bytes per sample of one real batch (one isolated
       child), whose quotient is the copy ceiling; on the built-in workload, the uint8 split
       form measured at the recommended configuration (``TuneResult.split``: bytes per
       sample and samples/s of both forms, and which to use), unless the time left is too
       short for that configuration's trial (a "time budget:" note).

    The recommendation is the configuration within NEAR_BEST of the fastest (or not separable
    from it by the measured noise, never beyond MAX_NEAR) with the fewest workers (threads or
    processes); among as many workers the fastest, then the least memory; thread workers only
    when the probe found them safe.

    Per rank (``nproc_per_node`` N > 1): every configuration is measured with N loaders at
    once, one per trial process, as N local ranks of this node will run (``measure(nproc=N)``),
    and its figure is the slowest rank's samples/s (what a synchronous step gets); each
    rank's figures are in ``Trial.ranks``. The caps are per node: the search starts at the
    usable CPUs // N, and RAM, max_workers, max_threads, MAX_WORKERS and MAX_THREADS are
    divided by N. The recommendation is the per-rank configuration; it is stored apart
    (``<key>.nproc<N>.json``) for ``create_dataloader(num_workers="auto")`` in processes
    whose local world size is N. Under a launcher (torchrun's LOCAL_RANK), only local rank 0
    measures; the other local ranks wait for its result and return it.

    Args:
        target: A LoaderSpec, Dataset or DataLoader (see ``resolve_target`` for TARGET strings).
        budget_s: Bound on the whole run in seconds; None: ``default_budget_s(nproc_per_node)``
            (75 s for one rank, 112 s for 2). No trial starts once it is spent, nor one that
            the trials so far say would not fit; the rest of the search is then skipped (a note
            says so). A trial or probe still running at ``budget_bound_s`` (budget_s plus one
            main-process trial's timeout: 20 s + 6 x measure_s) is cut short there (its error
            and a note say so), so tune ends within that bound plus the moments that stopping
            the cut trial's processes takes.
        start_method: Worker start method; None: the target's own, else the platform default.
        max_workers: Most worker processes to try on the node (per rank: // nproc_per_node);
            None: from memory and open-file limits.
        max_threads: Most thread workers to try on the node (per rank: // nproc_per_node);
            None: MAX_THREADS. 0 measures no threads.
        measure_s: Seconds of measured loading per trial; None: budget_s / 50 (for N ranks:
            the bound before scaling / 50), within 1-3 s.
        check_safety: Run the doctor's static checks first and refuse worker configurations
            when they find errors for this start method.
        store: Save the result where ``create_dataloader(num_workers="auto")`` finds it
            (see ``wellfed.tune.store_dir``).
        progress: Called as ``progress(fraction_of_budget_used, message)`` while measuring.
        nproc_per_node: Local ranks to measure at once; None: the local world size
            (``LOCAL_WORLD_SIZE`` under torchrun, see ``wellfed.platform.local_world_size``),
            else 1.

    Returns:
        A TuneResult. Failures of single configurations are trials with their error, not
        exceptions.

    Raises:
        ConfigError: budget_s, max_workers, max_threads or nproc_per_node out of range
            (WF010).
        WellfedError: A non-zero local rank got no result from local rank 0 (WF012).
    """
    from wellfed.errors import check_option
    from wellfed.tune import _ranks

    nproc, nproc_source = _ranks.resolve_nproc(nproc_per_node)
    if budget_s is None:
        budget_s = default_budget_s(nproc)
    check_option("budget_s", budget_s, budget_s > 0, "a positive number of seconds", code="WF010")
    for name, value in (("max_workers", max_workers), ("max_threads", max_threads)):
        check_option(name, value, value is None or value >= 0, "0 or more", code="WF010")
    spec = target if isinstance(target, LoaderSpec) else spec_from_object(target)
    if _ranks.waits_for_local_rank_zero(nproc):
        return _ranks.wait_for_local_rank_zero(spec.dataset, spec.batch_size, nproc, budget_s)
    started = time.perf_counter()
    contention_meter = ContentionMeter().start()

    def report(message: str) -> None:
        if progress is not None:
            progress(min(1.0, (time.perf_counter() - started) / budget_s), message)

    def remaining() -> float:
        return budget_s - (time.perf_counter() - started)

    import torch

    from wellfed.errors import ConfigError

    platform = collect_platform_info(include_gpus=False)
    # device_count() asks NVML and leaves CUDA uninitialised here; is_available() calls
    # cudaGetDeviceCount, whose cuInit would keep the forked trials (pinned memory, the split's
    # device half, the copy measurement) from using CUDA (torch's "poison fork" note)
    has_cuda = torch.cuda.device_count() > 0
    user = spec.user_config
    method = (
        start_method
        or (user.multiprocessing_context if user else None)
        or platform.default_start_method
    )
    if method not in platform.start_methods:
        raise ConfigError(
            f"Invalid option: start_method={method!r} is not available here (available: "
            f"{', '.join(platform.start_methods)}). Choose one of those.",
            code="WF010",
            attribute="start_method",
            value=method,
        )
    unscaled = budget_s / budget_scale(nproc)
    per_trial = measure_s if measure_s is not None else measure_seconds(unscaled)
    grace_s = trial_timeout_s(per_trial)
    hard_end = started + budget_s + grace_s
    notes: list[str] = []

    def note_once(text: str) -> None:
        if text not in notes:
            notes.append(text)

    def bounded(timeout_s: float) -> float:
        """``timeout_s``, or less where the budget's bound comes first (0: none left)."""
        return max(0.0, min(timeout_s, hard_end - time.perf_counter()))

    bound_text = f"budget_s={budget_s:.0f}s plus {grace_s:.0f}s for the trial in flight"
    user_prefetch = user.prefetch_factor if user and user.num_workers > 0 else None
    cap = min(MAX_WORKERS, _fd_cap(platform, user_prefetch or 2))
    if max_workers is not None:
        cap = min(cap, max_workers)
    thread_cap = MAX_THREADS if max_threads is None else min(MAX_THREADS, max_threads)
    if nproc > 1:
        # the caps are per node: each rank gets its share (ulimit -n is per process)
        node_cap = MAX_WORKERS if max_workers is None else min(MAX_WORKERS, max_workers)
        cap = min(_fd_cap(platform, user_prefetch or 2), _ranks.per_rank_cap(node_cap, nproc))
        thread_cap = _ranks.per_rank_cap(thread_cap, nproc)

    findings: tuple[dict[str, Any], ...] = ()
    if check_safety:
        report("doctor: static checks")
        findings = _safety_findings(spec, method, has_cuda)
        if findings:
            cap = 0
    from wellfed.tune._probe import probe_dataset

    if not spec.is_iterable:
        report("probing batched fetch and thread safety")
    # an iterable dataset gets its verdicts without a probe (no indices, one iterator)
    probe_timeout = max(30.0, 10 * per_trial)
    probe_started = time.perf_counter()
    probe_cap = bounded(probe_timeout)
    probes = probe_dataset(spec, timeout_s=max(0.5, probe_cap))
    probe_why = str(probes.get("threads", {}).get("why", ""))
    if probe_cap < probe_timeout and probe_why.startswith("the live probe timeout"):
        note_once(
            f"time budget: the live probe of batched fetch and thread safety was {CUT_BY_BUDGET} "
            f"after {time.perf_counter() - probe_started:.1f}s ({bound_text}); batched fetch "
            "and thread workers count as not safe"
        )
    threads_safe = bool(probes.get("threads", {}).get("safe"))
    if spec.is_iterable:
        thread_cap = 0

    trials: dict[LoaderConfig, Trial] = {}
    if nproc > 1:
        notes.append(
            f"{nproc} ranks measured at once ({nproc_source}): every figure is per rank, the "
            f"slowest rank's; per rank the search starts at {max(1, platform.usable_cpus // nproc)}"
            f" worker(s) ({platform.usable_cpus} usable CPUs // {nproc}), with at most {cap} "
            f"worker process(es) and {thread_cap} thread(s) (the node's caps // {nproc}); time "
            f"bound {budget_s:.0f}s"
        )
    stopped = ""
    per_worker_bytes: float | None = None

    def measure_once(config: LoaderConfig, on: LoaderSpec | None = None) -> Trial | None:
        """One trial (of ``spec``, or of ``on``), cut at the budget's bound; None when the
        bound has already passed."""
        nonlocal stopped
        # worker start-up is slower under spawn/forkserver (a fresh interpreter per worker)
        own = trial_timeout_s(per_trial, config.num_workers * nproc, method)
        timeout = bounded(own)
        if timeout <= 0:
            stopped = f"the time budget's bound ({bound_text}) was reached"
            note_once(f"time budget: {stopped}; {config.label()} and the rest were skipped")
            return None
        trial = measure(on or spec, config, measure_s=per_trial, timeout_s=timeout, nproc=nproc)
        if trial.status == "timeout" and timeout < own:
            why = (
                f"{CUT_BY_BUDGET} after {trial.elapsed_s:.1f}s: {bound_text} were spent "
                f"(its own timeout: {own:.0f}s)"
            )
            trial = dataclasses.replace(trial, error=why)
            stopped = f"{config.label()} was {CUT_BY_BUDGET} ({bound_text})"
            note_once(
                f"time budget: {config.label()} was {why}; the rest of the search was skipped"
            )
        return trial

    def run(config: LoaderConfig) -> Trial | None:
        """Measure ``config`` (once; later calls return the trial), or None past the budget."""
        nonlocal per_worker_bytes, stopped
        if config in trials:
            return trials[config]
        if trials:
            spent = [t.elapsed_s for t in trials.values()]
            estimate = statistics.median(spent) * (1.0 + 0.1 * config.num_workers)
            if estimate > remaining():
                stopped = f"the time budget ({budget_s:.0f}s) would be exceeded by {config.label()}"
                note_once(
                    f"time budget: {max(0.0, remaining()):.1f}s of {budget_s:.0f}s left, "
                    f"{config.label()} would take ~{estimate:.1f}s (from the trials so far); "
                    "the rest of the search was skipped"
                )
                return None
        report(f"measuring {config.label()}")
        measured = measure_once(config)
        if measured is None:
            return None
        trial = measured
        trials[config] = trial
        base = trials.get(main_config)
        if (
            config.num_workers > 0
            and trial.ok
            and base is not None
            and base.ok
            and trial.peak_memory_bytes
            and base.peak_memory_bytes
        ):
            growth = max(0, trial.peak_memory_bytes - base.peak_memory_bytes) / config.num_workers
            per_worker_bytes = max(per_worker_bytes or 0.0, growth)
        return trial

    def rerun(config: LoaderConfig) -> Trial:
        """Measure ``config`` once more (budget permitting) and pool it with its trial."""
        old = trials[config]
        if old.elapsed_s / old.repeats > remaining():
            note_once(
                f"time budget: {max(0.0, remaining()):.1f}s of {budget_s:.0f}s left, too little "
                "to re-measure the configurations the noise could not separate"
            )
            return old
        report(f"re-measuring {config.label()}")
        again = measure_once(config)
        if again is not None:
            trials[config] = old.merged(again)
        return trials[config]

    # 2. the main process, per index and batched
    main_config = _config_for(spec, 0, method, has_cuda)
    base = run(main_config)
    batched = False
    if base is None:
        pass  # the budget's bound passed before the first trial (stopped says so)
    elif not base.ok and (base.error or "").startswith(CUT_BY_BUDGET):
        pass  # stopped says so
    elif not base.ok:
        what = "hung" if base.status == "timeout" else "failed"
        first_line = (base.error or "").strip().splitlines()[0] if base.error else ""
        stopped = f"num_workers=0 {what}: {first_line}"
    else:
        if probes.get("batched_fetch", {}).get("eligible"):
            batched_main = run(_config_for(spec, 0, method, has_cuda, batched=True))
            if batched_main is not None and _gained(batched_main, base):
                batched = True
                notes.append(
                    f"batched fetch (measured): {_rate(batched_main):.0f} vs "
                    f"{_rate(base):.0f} samples/s per index in the main process; kept for "
                    "every later trial"
                )
                main_config = batched_main.config
            elif batched_main is not None:
                notes.append(
                    "batched fetch (measured) against per index in the main process: "
                    f"{_not_gained_text(batched_main, base)}; not kept"
                )
        _climb(
            spec,
            run,
            trials,
            notes,
            _ranks.per_rank_platform(platform, nproc),
            method,
            has_cuda,
            batched,
            cap,
            thread_cap,
            threads_safe,
            per_worker_bytes_of=lambda: per_worker_bytes,
            main=trials[main_config],
            rerun=rerun,
            cpu_share=min(1.0, platform.usable_cpus / nproc),
        )

    # 5. re-measure configurations that noise cannot separate from the best
    # Only those that could be recommended instead of the leader (no more workers than it)
    # are worth the time: one with more workers loses the tie anyway.
    for _round in range(MAX_REPEAT_ROUNDS):
        ok = [t for t in trials.values() if t.ok and (t.config.backend != "thread" or threads_safe)]
        if len(ok) < 2:
            break
        leader = max(ok, key=_rate)
        unsure = []
        for t in ok:
            if t is leader or _cost(t) > _cost(leader):
                continue
            noise = 2.0 * math.hypot(_standard_error(t), _standard_error(leader))
            if _rate(t) + noise >= (1 - NEAR_BEST) * _rate(leader):
                unsure.append(t)
        if not unsure:
            break
        group = [leader, *unsure]
        cost = sum(t.elapsed_s / t.repeats for t in group)
        if cost > remaining():
            note_once(
                f"time budget: {max(0.0, remaining()):.1f}s of {budget_s:.0f}s left, re-measuring "
                f"{len(group)} configurations the noise could not separate would take "
                f"~{cost:.1f}s; skipped"
            )
            break
        for t in group:
            rerun(t.config)

    overrun = time.perf_counter() - started - budget_s
    if overrun > 0 and not any(CUT_BY_BUDGET in n for n in notes):
        note_once(
            f"time budget: {overrun:.1f}s past budget_s={budget_s:.0f}s, for the trial in flight "
            f"when it ran out (trials are let finish until {budget_s + grace_s:.0f}s: the budget "
            "plus one main-process trial's timeout)"
        )
    if not stopped:
        stopped = "; ".join(n for n in notes if n.startswith("search ended")) or (
            "every backend stopped gaining"
        )
    result_trials = tuple(trials.values())
    figures = _figures_note(result_trials)
    if figures:
        notes.append(figures)
    baseline = trials.get(_config_for(spec, 0, method, has_cuda))
    ok_trials = [t for t in result_trials if t.ok]
    allowed = [t for t in ok_trials if t.config.backend != "thread" or threads_safe]
    fastest = max(ok_trials, key=_rate) if ok_trials else None
    best = max(allowed, key=_rate) if allowed else None
    if (
        fastest is not None
        and best is not None
        and fastest.config.backend == "thread"
        and not threads_safe
        and _rate(fastest) > (1 + NEAR_BEST) * _rate(best)
    ):
        t = probes.get("threads", {})
        notes.append(
            f"thread workers would be fastest ({fastest.config.label()}: {_rate(fastest):.0f} "
            f"vs {_rate(best):.0f} samples/s) but are not safe here: {t.get('why')}. To use "
            f"them: {t.get('fix') or 'make the dataset thread-safe'}, then tune again"
        )
    recommended = _recommend(
        spec,
        allowed,
        best,
        baseline,
        platform,
        has_cuda,
        method,
        stopped,
        findings,
        probes=probes,
        notes=notes,
    )
    search_stopped = stopped  # the split's trial, cut by the bound, must not reword it
    device_side = _device_side(
        spec,
        recommended,
        trials,
        has_cuda,
        measure_once=measure_once,
        remaining=remaining,
        bounded=bounded,
        report=report,
        note=note_once,
        budget_s=budget_s,
        probe_timeout_s=probe_timeout,
    )
    stopped = search_stopped
    # The ceiling scales the best single loading process (the main process, or one worker,
    # which runs with one intra-op thread and so escapes thread oversubscription) by the cores.
    single = [
        _rate(t) for t in ok_trials if t.config.num_workers <= 1 and t.config.num_threads == 0
    ]
    ceiling = max(single) * platform.usable_cpus / nproc if single else None
    workload = {
        "description": spec.description,
        "samples": spec.samples,
        "source": spec.source,
        "target": spec.target,
        "batch_size": spec.batch_size,
        "batch_size_given": spec.batch_size_given,
        "start_method": method,
        "user_config": user.to_dict() if user else None,
        "nproc_per_node": nproc,
        "nproc_per_node_source": nproc_source,
    }
    if recommended is not None:
        recommended = _ranks.per_rank_recommendation(recommended, nproc, nproc_source)
    contention = contention_meter.stop()
    if contention.contended:
        notes.append(
            f"contention (measured): {contention.describe()} while tuning; every figure is "
            "lower than on a quiet machine, worker configurations most, so the pick may be too "
            "few workers. Tune again when the machine is quiet"
            + (
                "; this result is stored as create_dataloader's 'auto' default and says so"
                if store and recommended is not None and not findings
                else ""
            )
        )
    result = TuneResult(
        platform=dataclasses.replace(platform, host_to_device=device_side.host_to_device),
        workload=workload,
        trials=result_trials,
        baseline=baseline,
        recommended=recommended,
        best=fastest,
        ceiling_samples_per_s=ceiling,
        tuning_time_s=time.perf_counter() - started,
        budget_s=budget_s,
        stopped_because=stopped,
        findings=findings,
        probes=probes,
        notes=tuple(notes),
        nproc_per_node=nproc,
        contention=contention.to_dict(),
        bytes_per_sample=device_side.bytes_per_sample,
        copy_ceiling_samples_per_s=device_side.copy_ceiling_samples_per_s,
        split=device_side.split,
        decode=device_side.decode,
    )
    if store and recommended is not None and not findings:
        from wellfed.tune._store import save_result

        path = save_result(spec.dataset, result)
        result = dataclasses.replace(result, stored_path=str(path) if path else None)
    if _ranks.hands_off(nproc):
        _ranks.write_handoff(spec.dataset, result)
    report("done")
    return result


@dataclasses.dataclass(frozen=True)
class _DeviceSide:
    """What ``_device_side`` measured (each None when not measured)."""

    host_to_device: HostToDevice | None = None
    bytes_per_sample: float | None = None
    copy_ceiling_samples_per_s: float | None = None
    split: SplitComparison | None = None
    decode: DecodeComparison | None = None


#: Seconds the bytes-per-sample child is expected to take (two batches loaded in the main
#: process, plus the copies with a GPU), in the time-budget check before the split's trial.
FACTS_ESTIMATE_S = 3.0


def _device_side(
    spec: LoaderSpec,
    recommended: Recommendation | None,
    trials: dict[LoaderConfig, Trial],
    has_cuda: bool,
    *,
    measure_once: Callable[[LoaderConfig, LoaderSpec | None], Trial | None],
    remaining: Callable[[], float],
    bounded: Callable[[float], float],
    report: Callable[[str], None],
    note: Callable[[str], None],
    budget_s: float,
    probe_timeout_s: float,
) -> _DeviceSide:
    """After the search: bytes per sample, the copy ceiling (with a GPU), the uint8 split.

    With a CUDA device, one isolated child measures the pinned and pageable host-to-device
    bandwidth and the bytes per sample of one real batch, which give the copy ceiling. For
    the built-in workload (``wellfed.workloads.split_spec`` is not None), at the recommended
    configuration, the split form is measured once more through ``measure`` (its loader
    wrapped in ``to_device``, the device half on "cuda" with a GPU, else "cpu"), beside the
    bytes per sample of both forms, and ``compare_forms`` says which to use. With a CUDA
    device the float form is measured once more at that configuration through ``to_device``
    (no transform), so that both rates count their copy to the GPU (the search's trials do
    not copy). The split's trial is skipped with a "time budget:" note when the recommended
    configuration's own trial time does not fit in what is left.

    The decode form (issue 17, item 4; ``wellfed.workloads.decode_spec``: file bytes from the
    workers, nvJPEG decode, crop, flip and normalise per batch on the GPU) is one more trial
    at that configuration with a CUDA device where the isolated child found GPU decode
    available (``wellfed.device.gpu_decode_unavailable``, which imports torchvision there,
    not here); otherwise ``decode`` says why in one sentence. Without a CUDA device nothing
    more is measured for it.
    """
    from wellfed.measure import run_isolated
    from wellfed.tune._split import (
        compare_decode,
        compare_forms,
        copy_ceiling,
        decode_not_measured,
        device_facts,
    )
    from wellfed.workloads import decode_spec, split_spec

    device = "cuda" if has_cuda else "cpu"
    split = split_spec(spec, device) if recommended is not None else None
    # the decode form: only on the built-in workload, only measured with a CUDA device
    builtin = split is not None
    decode = decode_spec(spec, device) if builtin and has_cuda else None
    decode_side: DecodeComparison | None = (
        decode_not_measured("no CUDA device") if builtin and not has_cuda else None
    )
    float_trial = trials.get(recommended.config) if recommended is not None else None
    if split is not None and (float_trial is None or not float_trial.ok):
        split = decode = None
        decode_side = None
    if split is not None and float_trial is not None:
        # with a GPU the float form is measured once more, through to_device (below)
        trials_left = 2 if has_cuda else 1
        estimate = trials_left * float_trial.elapsed_s / float_trial.repeats + FACTS_ESTIMATE_S
        if estimate > remaining():
            note(
                f"time budget: {max(0.0, remaining()):.1f}s of {budget_s:.0f}s left, the uint8 "
                f"split form's trial at {float_trial.config.label()} would take ~{estimate:.1f}s "
                "(from that configuration's own); skipped"
            )
            split = None
            if decode is not None:
                decode = None
                decode_side = decode_not_measured("no time left in tune's budget")
    specs = [spec] + ([split] if split is not None else []) + ([decode] if decode else [])
    if not has_cuda and split is None:
        return _DeviceSide(decode=decode_side)
    timeout = bounded(probe_timeout_s)
    if timeout <= 0:
        if decode is not None:
            decode_side = decode_not_measured("no time left in tune's budget")
        return _DeviceSide(decode=decode_side)
    report("measuring bytes per sample" + (" and host-to-device copies" if has_cuda else ""))
    facts = run_isolated(device_facts, specs, has_cuda, timeout_s=timeout)
    if facts.status != "ok":
        first = (facts.error or "").strip().splitlines()
        note(
            f"device side not measured: bytes per sample {facts.status}"
            + (f" ({first[-1][:200]})" if first else "")
            + ("; the uint8 split form was not measured" if split is not None else "")
        )
        if decode is not None:
            decode_side = decode_not_measured(f"bytes per sample {facts.status}")
        return _DeviceSide(decode=decode_side)
    sizes: list[float] = facts.value["bytes_per_sample"]
    h2d_data = facts.value["host_to_device"]
    h2d = HostToDevice(**h2d_data) if h2d_data else None
    ceiling = copy_ceiling(h2d.pinned_gb_s, sizes[0]) if h2d is not None else None
    side = _DeviceSide(h2d, sizes[0], ceiling, decode=decode_side)
    if split is None or float_trial is None:
        return side
    config = float_trial.config
    float_copied = False
    if has_cuda:
        # The split's trial goes through to_device, the copy to the GPU included; the search's
        # float trial did not copy. Measured once more through to_device (no transform), the
        # float form pays its own copy, 4x the split's bytes: the two rates then compare.
        report(f"measuring the float form through to_device({device!r}) at {config.label()}")
        copied = measure_once(config, dataclasses.replace(spec, device=device))
        if copied is not None and copied.ok:
            float_trial, float_copied = copied, True
        else:
            why = "skipped" if copied is None else f"{copied.status}: {copied.error or ''}"
            note(
                f"the float form through to_device at {config.label()} "
                f"{why.strip().splitlines()[0][:300]}; the split is compared with the search's "
                "trial, which did not copy"
            )
    report(f"measuring the uint8 split form at {config.label()}")
    trial = measure_once(config, split)
    if trial is None or not trial.ok:
        why = "skipped" if trial is None else f"{trial.status}: {(trial.error or '').strip()}"
        note(f"the uint8 split form at {config.label()} {why.splitlines()[0][:300]}")
        split_side = None
    else:
        noise = 2.0 * math.hypot(_standard_error(float_trial), _standard_error(trial))
        split_side = compare_forms(
            config,
            device,
            float_trial,
            trial,
            sizes[0],
            sizes[1],
            noise,
            float_through_device=float_copied,
        )
    side = dataclasses.replace(side, split=split_side)
    if decode is None:
        return side
    why_not = facts.value.get("gpu_decode_unavailable")
    if why_not:
        return dataclasses.replace(side, decode=decode_not_measured(why_not))
    if float_trial.elapsed_s / float_trial.repeats > remaining():
        return dataclasses.replace(
            side, decode=decode_not_measured("no time left in tune's budget")
        )
    report(f"measuring the decode form (nvJPEG) at {config.label()}")
    decode_trial = measure_once(config, decode)
    if decode_trial is None or not decode_trial.ok:
        why = (
            "its trial was skipped"
            if decode_trial is None
            else f"its trial {decode_trial.status}: {(decode_trial.error or '').strip()}"
        )
        return dataclasses.replace(side, decode=decode_not_measured(why.splitlines()[0][:300]))
    noise = 2.0 * math.hypot(_standard_error(float_trial), _standard_error(decode_trial))
    return dataclasses.replace(
        side,
        decode=compare_decode(
            config,
            device,
            float_trial,
            decode_trial,
            sizes[0],
            sizes[-1],
            noise,
            uint8_samples_per_s=split_side.uint8_samples_per_s if split_side else None,
        ),
    )


def _climb(
    spec: LoaderSpec,
    run: Callable[[LoaderConfig], Trial | None],
    trials: dict[LoaderConfig, Trial],
    notes: list[str],
    platform: PlatformInfo,
    method: str,
    has_cuda: bool,
    batched: bool,
    cap: int,
    thread_cap: int,
    threads_safe: bool,
    *,
    per_worker_bytes_of: Callable[[], float | None],
    main: Trial,
    rerun: Callable[[LoaderConfig], Trial],
    cpu_share: float = 1.0,
) -> None:
    """Steps 3 and 4 of ``tune``: climb the worker counts of each backend, then prefetch.

    A step that gains less than CONFIRM_GAIN is confirmed before the climb goes on: the
    previous count is measured again right after it (load on a shared machine drifts over
    seconds, more than one trial's own windows show), and the gain must hold against the
    pooled figure.

    With N ranks measured at once, ``platform`` is one rank's share of the node
    (``_ranks.per_rank_platform``), and ``cpu_share`` (CPUs per rank, at most 1) scales
    WAIT_BOUND: a rank that gets half a CPU is not waiting on storage at 0.5 CPU s per s.
    """
    bound = WAIT_BOUND * cpu_share
    wait_bound = (main.cpu_per_wall if main.cpu_per_wall is not None else 1.0) < bound
    factor = 4 if wait_bound else 2
    notes.append(
        f"loading is {'wait-bound' if wait_bound else 'CPU-bound'} (detected): the main process "
        f"used {main.cpu_per_wall or 0:.2f} CPU s per wall s "
        f"({'below' if wait_bound else 'at or above'} {bound:.2g}), so worker counts climb "
        f"by {factor}x"
    )
    start = max(1, platform.usable_cpus)
    caps = {"thread": thread_cap, "process": cap}
    best: dict[str, Trial] = {}
    climbing: list[str] = []
    last: dict[str, int] = {}

    def config(backend: str, count: int, prefetch: int | None = None) -> LoaderConfig:
        return _config_for(
            spec, count, method, has_cuda, backend=backend, batched=batched, prefetch=prefetch
        )

    def fits_memory(count: int) -> bool:
        per_worker = per_worker_bytes_of()
        if per_worker is None or main.peak_memory_bytes is None:
            return True
        room = MEMORY_SHARE * platform.ram_available_bytes - main.peak_memory_bytes
        if count * per_worker <= room:
            return True
        notes.append(
            f"search ended for processes: {count} workers would need "
            f"~{count * per_worker / 2**30:.1f} GiB (measured {per_worker / 2**20:.0f} MiB per "
            f"worker), more than {MEMORY_SHARE:.0%} of available RAM"
        )
        return False

    for backend in ("thread", "process"):
        if caps[backend] <= 0:
            continue
        count = min(start, caps[backend])
        trial = run(config(backend, count))
        if trial is None:
            return
        last[backend] = count
        if trial.ok:
            best[backend] = trial
            if backend == "process" or threads_safe:
                climbing.append(backend)
            else:
                notes.append(
                    f"thread workers measured at {count} only: not safe for this dataset "
                    "(see the probe), so not climbed"
                )
        else:
            notes.append(f"{trial.config.label()} {trial.status}; {_PLURAL[backend]} not climbed")
    while climbing:
        overall = max([_rate(main), *(_rate(t) for t in best.values())])
        for other in list(climbing):
            if _rate(best[other]) < TRAILING * overall:
                climbing.remove(other)
                notes.append(
                    f"{_PLURAL[other]} not climbed further: their best "
                    f"({_rate(best[other]):.0f} samples/s) trails the fastest so far "
                    f"({overall:.0f}) by more than {1 - TRAILING:.0%}"
                )
        if not climbing:
            break
        leader = max(climbing, key=lambda b: _rate(best[b]))
        backend = leader
        count = last[backend] * factor
        if count > caps[backend]:
            count = caps[backend] if last[backend] < caps[backend] else 0
        if count == 0 or (backend == "process" and not fits_memory(count)):
            climbing.remove(backend)
            continue
        trial = run(config(backend, count))
        if trial is None:
            return
        last[backend] = count
        if _gained(trial, best[backend]) and _rate(trial) < CONFIRM_GAIN * _rate(best[backend]):
            best[backend] = rerun(best[backend].config)
        if not _gained(trial, best[backend]):
            climbing.remove(backend)
            why = (
                trial.status
                if not trial.ok
                else (
                    f"against {best[backend].config.workers}: "
                    f"{_not_gained_text(trial, best[backend])}"
                )
            )
            if trial.ok and _rate(trial) > _rate(best[backend]):
                best[backend] = trial
            notes.append(f"{_PLURAL[backend]} stopped at {count} ({why})")
            continue
        best[backend] = trial
    if not best:
        return
    leader_backend = max(best, key=lambda b: _rate(best[b]))
    top: Trial = best[leader_backend]
    if leader_backend == "thread" and not threads_safe:
        return
    if _rate(main) >= _rate(top):
        notes.append(
            f"the main process alone ({_rate(main):.0f} samples/s) beat every worker "
            f"configuration (best: {top.config.label()}, {_rate(top):.0f})"
        )
        return
    # between the measured counts: after a 4x climb the neighbours (x2, /2) of the best count;
    # after a 2x climb the count halfway to the next one measured (3 threads on 2 CPUs: the
    # grid pass's winner on jpeg in 2 of 3 runs, where tune measured only 2 and 4)
    count = top.config.workers
    between: tuple[int, ...] = (count * 2, count // 2) if factor > 2 else (count + count // 2,)
    upper = trials.get(config(leader_backend, count * 2))
    if factor == 2 and (upper is None or _rate(upper) < (1 - MAX_NEAR) * _rate(top)):
        # the climb did not reach past the best count, or the rate falls past it (text: 4
        # processes 10% below 2; jpeg: 4 threads 17% below 2): no peak in between to find
        between = ()
    if count >= 2:
        for near in between:
            if (
                near >= 1
                and near <= caps[leader_backend]
                and (leader_backend != "process" or fits_memory(near))
            ):
                trial = run(config(leader_backend, near))
                if trial is None:
                    return
                if trial.ok and _rate(trial) > _rate(top):
                    top = trial
    # prefetch depth, when batches arrive in bursts: tried on the configuration that would be
    # recommended (the fewest workers within MAX_NEAR of the fastest), where it can matter
    within = [
        t
        for t in trials.values()
        if t.ok
        and t.config.backend == leader_backend
        and t.config.prefetch_factor is None
        and _rate(t) >= (1 - MAX_NEAR) * _rate(top)
    ]
    if within:
        top = min(within, key=lambda t: (t.config.workers, -_rate(t)))
    p50, p90 = top.wait_s_p50, top.wait_s_p90
    if top.config.workers > 0 and p50 and p90 and p90 > BURSTY * p50 and p90 >= MIN_BURST_S:
        trial = run(config(leader_backend, top.config.workers, prefetch=4))
        if trial is not None:
            notes.append(
                f"prefetch_factor 4 (measured, batches arrived in bursts: p90 wait "
                f"{p90 * 1e3:.1f} ms vs median {p50 * 1e3:.1f} ms): {_rate(trial):.0f} vs "
                f"{_rate(top):.0f} samples/s"
            )
    elif top.config.workers > 0:
        notes.append(
            "prefetch_factor not varied (detected): no bursts"
            + (
                f" (p90 wait {p90 * 1e3:.1f} ms, within {BURSTY:.0f}x the median "
                f"{p50 * 1e3:.1f} ms)"
                if p50 and p90
                else ""
            )
            + ", so a deeper queue has nothing to absorb"
        )


def _recommend(
    spec: LoaderSpec,
    ok_trials: list[Trial],
    best: Trial | None,
    baseline: Trial | None,
    platform: PlatformInfo,
    has_cuda: bool,
    method: str,
    stopped: str,
    findings: tuple[dict[str, Any], ...],
    *,
    probes: dict[str, Any] | None = None,
    notes: list[str] | None = None,
) -> Recommendation | None:
    if best is None or best.samples_per_s is None:
        return None
    probes = probes or {}

    # Equally fast: within NEAR_BEST of the fastest, or not separable from it by the noise
    # left after the repeats (2 standard errors of the difference of the medians), but never
    # more than MAX_NEAR below it.
    def equally_fast(t: Trial) -> bool:
        assert best is not None
        noise = 2.0 * math.hypot(_standard_error(t), _standard_error(best))
        top = _rate(best)
        floor = max((1 - NEAR_BEST) * top - noise, (1 - MAX_NEAR) * top)
        return _rate(t) >= floor

    near = [t for t in ok_trials if equally_fast(t)]
    # the fewest workers; among as many workers (prefetch depth, batched fetch), the fastest
    chosen = min(near, key=lambda t: (_cost(t), -_rate(t), t.peak_memory_bytes or 0))
    rate = _rate(chosen)
    base_rate = _rate(baseline) or None
    speedup = rate / base_rate if base_rate else None
    cfg = chosen.config
    vs_base = f", {speedup:.2f}x the main process per index" if speedup else ""
    reasons: dict[str, str] = {}
    if cfg.backend == "thread":
        what = f"{cfg.num_threads} thread workers"
    elif cfg.backend == "process":
        what = f"{cfg.num_workers} worker processes"
    else:
        what = "the main process alone"
    if cfg == best.config:
        head = f"(measured): {what}, the fastest, {rate:.0f} samples/s{vs_base}"
    else:
        head = (
            f"(measured): {what}, {rate:.0f} samples/s, within {NEAR_BEST:.0%} or the noise of "
            f"the fastest ({best.config.label()}, {_rate(best):.0f} samples/s) with fewer "
            "workers"
        )
    if cfg.backend == "thread":
        procs = [t for t in ok_trials if t.config.backend == "process"]
        fastest_procs = max(procs, key=_rate) if procs else None
        reasons["num_workers"] = "0 (measured): thread workers exclude worker processes" + (
            f"; the fastest processes ({fastest_procs.config.label()}) gave "
            f"{_rate(fastest_procs):.0f} samples/s"
            if fastest_procs is not None
            else ""
        )
    else:
        reasons["num_workers"] = f"{cfg.num_workers} {head}"
    if findings:
        paths = ", ".join(str(f.get("path")) for f in findings[:3])
        reasons["num_workers"] = (
            f"0 (detected): the doctor found {len(findings)} error(s) under {method} ({paths}); "
            "fix them (`wellfed doctor`) and tune again to use worker processes"
        )
    threads = probes.get("threads", {})
    if cfg.backend == "thread":
        reasons["num_threads"] = (
            f"{cfg.num_threads} {head}; safe: {threads.get('why', 'checked')}. Threads share "
            "the main process (and its GIL) with the training step"
        )
    elif threads:
        reasons["num_threads"] = (
            "0 (measured): thread workers were slower"
            if threads.get("safe")
            else f"0 (detected): not safe for this dataset: {threads.get('why')}"
        )
    fetch = probes.get("batched_fetch", {})
    if cfg.batched_fetch:
        reasons["batched_fetch"] = f"True (measured, and {fetch.get('why', 'checked live')})"
    elif fetch:
        reasons["batched_fetch"] = (
            "False (measured): no clear gain"
            if fetch.get("eligible")
            else f"False (detected): {fetch.get('why')}"
        )
    if cfg.num_workers > 0:
        first = (
            f" (first batch {chosen.first_batch_s:.2f}s)"
            if chosen.first_batch_s is not None
            else ""
        )
        reasons["persistent_workers"] = (
            f"True (measured): workers start once{first} instead of at every epoch"
        )
        reasons["multiprocessing_context"] = f"{method!r} (detected): " + (
            "the platform default" if method == platform.default_start_method else "as requested"
        )
    if cfg.workers > 0:
        deeper = [
            t
            for t in ok_trials
            if t.config.prefetch_factor == 4 and t.config.backend == cfg.backend
        ]
        if cfg.prefetch_factor == 4:
            reasons["prefetch_factor"] = (
                "4 (measured): batches arrived in bursts, and the deeper queue was as fast as any"
            )
        elif deeper:
            reasons["prefetch_factor"] = (
                f"{cfg.prefetch_factor or 2} (measured): prefetch_factor 4 gave no clear gain"
            )
        else:
            reasons["prefetch_factor"] = (
                f"{cfg.prefetch_factor or 2} (detected): batches arrived without bursts, so a "
                "deeper queue has nothing to absorb"
                + ("" if cfg.prefetch_factor else "; PyTorch's default")
            )
    reasons["pin_memory"] = (
        "True (detected): a CUDA device is present; pinned batches copy to it asynchronously"
        if has_cuda
        else "False (detected): no CUDA device, so pinning would only cost time and memory"
    )
    reasons["batch_size"] = (
        f"{spec.batch_size} (yours; not tuned: it changes training)"
        if spec.batch_size_given
        else f"{spec.batch_size} (wellfed's default for a bare dataset; "
        "set yours with --batch-size)"
    )
    reason = (
        f"{cfg.label()}: {rate:.0f} samples/s{vs_base}; fastest measured: "
        f"{_rate(best):.0f} samples/s with {best.config.label()}."
        + (f" Search ended: {stopped}." if stopped else "")
    )
    return Recommendation(
        config=cfg,
        samples_per_s=rate,
        speedup=speedup,
        reason=reason,
        reasons=reasons,
        code=_dataloader_code(spec, cfg, reasons),
    )


def _dataloader_code(spec: LoaderSpec, cfg: LoaderConfig, reasons: dict[str, str]) -> str:
    """Ready-to-paste code that builds the measured loader.

    Worker processes and the main process: a plain ``DataLoader(...)`` call (batched fetch as
    ``sampler=BatchSampler(...)``, ``batch_size=None``: each step then calls
    ``dataset[list_of_indices]``). Thread workers: ``wellfed.create_dataloader(...)``, the
    one builder of them. Either way the last line says how ``create_dataloader``'s "auto"
    builds the same loader from the stored result.
    """

    def comment(name: str) -> str:
        why = reasons.get(name)
        text = why.split(" ", 1)[1] if why and " " in why else why
        return f"  # {text}" if text else ""

    lines: list[str] = []
    threads = cfg.backend == "thread"
    lines.append("wellfed.create_dataloader(" if threads else "DataLoader(")
    lines.append("    dataset,")

    def arg(name: str, value: Any) -> None:
        lines.append(f"    {name}={value!r},{comment(name)}")

    batch_kept = spec.batch_sampler is None
    if cfg.batched_fetch and not threads and batch_kept:
        order = (
            "RandomSampler(dataset)"
            if spec.shuffle
            else ("sampler" if spec.sampler is not None else "SequentialSampler(dataset)")
        )
        lines.append(
            f"    sampler=BatchSampler({order}, batch_size={spec.batch_size}, "
            f"drop_last={spec.drop_last}),{comment('batched_fetch')}"
        )
        lines.append("    batch_size=None,  # each step fetches dataset[list_of_indices]")
    elif batch_kept:
        arg("batch_size", spec.batch_size)
        if spec.shuffle:
            lines.append("    shuffle=True,")
    if threads:
        arg("num_workers", 0)
        arg("num_threads", cfg.num_threads)
        arg("prefetch_factor", cfg.prefetch_factor or 2)
        if cfg.batched_fetch:
            arg("batched_fetch", True)
    else:
        arg("num_workers", cfg.num_workers)
        if cfg.num_workers > 0:
            arg("persistent_workers", True)
            arg("prefetch_factor", cfg.prefetch_factor or 2)
            if cfg.multiprocessing_context:
                arg("multiprocessing_context", cfg.multiprocessing_context)
    arg("pin_memory", cfg.pin_memory)
    lines.append(")")
    lines.append(stored_note(1))
    return wrap_code("\n".join(lines))  # within 79 columns: pastes whole from any terminal
