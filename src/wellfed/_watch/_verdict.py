"""From a loader's figures to a verdict: data-bound or not, the causes, the next step.

Each cause matches one of the signatures datapath-doctor looks for (training starved on input,
prefetch underrun, CPU-bound worker pool, block-device saturation, Linux PSI I/O pressure,
small-file reads, remote-storage latency, worker restarts, stalls), plus two wellfed can see
and fix: loading in the training process (``num_workers=0``) and a model in the dataset.
Thresholds are module constants; a cause is named only where this machine shows its figures.
"""

from __future__ import annotations

import math
from typing import Any

from wellfed._meter import WatchStats, percentile
from wellfed._units import format_bytes
from wellfed._watch._report import Cause, Verdict

__all__ = [
    "DATA_BOUND",
    "MIN_STEPS",
    "judge",
    "worker_evidence",
]

#: Data wait at or above this share of the step is data-bound: the goal ``wellfed tune``
#: aims for (issue 13: "data wait <= 5% of the step").
DATA_BOUND = 0.05
#: Fewer measured steps than this: too short to judge.
MIN_STEPS = 5
#: A worker on the CPU this share of the time (or more) is saturated.
CPU_SATURATED = 0.85
#: Runnable but waiting for a CPU this share of the time or more: the CPUs are oversubscribed.
CPU_CONTENDED = 0.3
#: With CPU contention, workers using less than this share of the usable CPUs leave the
#: rest to other processes: the contention is theirs.
OTHERS_TAKE = 0.8
#: Worker samples in disk wait (D state) at or above this share: storage-bound workers.
DISK_SHARE = 0.2
#: Some task stalled on I/O this share of the run or more (``/proc/pressure/io``).
PSI_SHARE = 0.1
#: A block device busy this share of the run or more.
DEVICE_BUSY = 0.8
#: A worker count that keeps up runs its workers at most this busy (headroom for bursts).
WORKER_HEADROOM = 0.8
#: Warm-up (worker start-up) at or above this share of the run is worth removing.
RESTART_SHARE = 0.1
#: A step "found the queue empty" when it waited longer than this share of the median step
#: (and at least 1 ms).
EMPTY_WAIT_SHARE = 0.05
#: The prefetch queue sampled at least this full on average: the workers are ahead, and a
#: step that still waits pays for the hand-over itself. Source: benchmarks/
#: watch_vs_datapath_doctor.py (in-memory images, 2 workers, 20 ms step: 3.8 of 4 batches
#: ready, yet every step waited 2-3 ms; starved loops sampled 0.0-0.1 of 2-4).
HANDOVER_READY = 0.5
#: A loop whose median work between batches (step minus wait) is below this does no real
#: training step: any loader holds it up.
NO_WORK_S = 1e-3
#: Average bytes per read call below which reads count as small (small-file overhead).
SMALL_READ_BYTES = 64 * 1024


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.0f}%"


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{1e3 * x:.1f} ms"


def worker_evidence(record: Any, waits: list[float], median_step: float | None) -> dict[str, Any]:
    """The ``LoaderReport.workers`` dict of a session record (see there for the keys)."""
    out: dict[str, Any] = {}
    threshold = max(1e-3, EMPTY_WAIT_SHARE * (median_step or 0.0))
    if waits:
        out["queue_empty_at_request"] = sum(1 for w in waits if w > threshold) / len(waits)
    out["restarts"] = max(0, len(record.worker_pids) - 1)
    if record.pids:
        from wellfed._watch._proc import CLOCK_TICKS_PER_S

        cpu_s = sum(p.last_ticks for p in record.pids.values()) / CLOCK_TICKS_PER_S
        shares = [
            (p.last_ticks - p.first_ticks) / CLOCK_TICKS_PER_S / (p.last_wall - p.first_wall)
            for p in record.pids.values()
            if p.last_wall - p.first_wall > 0
        ]
        out["cpu_s"] = cpu_s
        if shares:
            out["cpu_per_worker"] = sum(shares) / len(shares)
            per_epoch = len(record.worker_pids[-1]) if record.worker_pids else len(shares)
            out["cpu_cores"] = out["cpu_per_worker"] * per_epoch
    queued = _queued_share(record.pids.values())
    if queued is not None:
        out["cpu_wait_per_worker"] = queued
    consumer = _queued_share(record.consumer.values())
    if consumer is not None:
        out["consumer_cpu_wait"] = consumer
    total = sum(record.states.values())
    if total:
        out["state_samples"] = total
        out["states"] = {k: v / total for k, v in sorted(record.states.items())}
    if record.queue:
        full = sum(1 for ready, cap in record.queue if cap and ready >= cap)
        out["queue_full_share"] = full / len(record.queue)
        out["queue_ready_mean"] = sum(r for r, _ in record.queue) / len(record.queue)
        out["queue_capacity"] = record.queue[-1][1]
    if record.uss_bytes:
        out["uss_bytes_per_worker"] = int(sum(record.uss_bytes.values()) / len(record.uss_bytes))
    if record.io:
        read_bytes = sum(v["read_bytes"] for v in record.io.values())
        calls = sum(v["syscr"] for v in record.io.values())
        rchar = sum(v["rchar"] for v in record.io.values())
        out["read_bytes"] = read_bytes
        out["read_calls"] = calls
        out["bytes_per_read"] = rchar / calls if calls else None
    return out


def _queued_share(seen: Any) -> float | None:
    """Mean share of wall time the processes (or threads) waited for a CPU while runnable."""
    shares = [
        (p.last_queued_ns - p.first_queued_ns) / 1e9 / (p.last_wall - p.first_wall)
        for p in seen
        if p.first_queued_ns is not None
        and p.last_queued_ns is not None
        and p.last_wall - p.first_wall > 0.2
    ]
    return min(1.0, sum(shares) / len(shares)) if shares else None


def _tune(target: str | None, program: str | None) -> str:
    return f"`wellfed tune {target or _placeholder(program)}`"


def _placeholder(program: str | None) -> str:
    where = program or "your_script.py"
    if where.endswith(".py"):
        return f"{where}:ATTR"
    return f"{where}:ATTR" if where else "TARGET"


def judge(
    stats: WatchStats,
    settings: dict[str, Any],
    workers: dict[str, Any],
    system: dict[str, Any],
    *,
    target: str | None = None,
    model: str | None = None,
    program: str | None = None,
    waits: list[float] | None = None,
    steps: list[float] | None = None,
) -> Verdict:
    """The verdict on one loader from its stats, settings and evidence.

    Args:
        stats: The loader's ``WatchStats``.
        settings: ``LoaderReport.settings``.
        workers: ``LoaderReport.workers`` (``worker_evidence``).
        system: ``WatchReport.system``.
        target: A TARGET naming the loader's data, if found.
        model: "path (class)" of a model in the dataset, if found.
        program: The script or module (for a TARGET placeholder).
        waits: The per-step data waits, s (for the stall evidence).
        steps: The per-step times, s (for the work between batches).
    """
    fraction = stats.data_bound_fraction
    n_workers = int(settings.get("num_workers") or 0)
    n_threads = int(settings.get("num_threads") or 0)
    cpus = system.get("usable_cpus") or 1
    if stats.steps < MIN_STEPS or fraction is None:
        return Verdict(
            kind="too-short",
            headline=f"too few steps to judge ({stats.steps} measured after the warm-up; "
            f"{MIN_STEPS} needed)",
            next_step="Run more steps (a longer epoch or more epochs).",
        )
    step = stats.step_s_p50
    figures = (
        f"data wait {stats.data_wait_s:.2f} s of {stats.step_s:.2f} s of steps "
        f"({stats.steps} steps); wait p50 {_ms(stats.wait_s_p50)}, p90 {_ms(stats.wait_s_p90)}; "
        f"step p50 {_ms(step)}; {stats.samples_per_s or 0:,.0f} samples/s"
    )
    causes: list[Cause] = []
    bound = fraction >= DATA_BOUND
    states = workers.get("states") or {}
    cpu_share = workers.get("cpu_per_worker")
    psi = system.get("io_pressure_share")
    busy = system.get("disk_busy_share") or {}
    busiest = max(busy.items(), key=lambda kv: kv[1]) if busy else None

    work = (
        percentile([s - w for s, w in zip(steps, waits, strict=False)], 50)
        if steps and waits
        else None
    )
    if bound and work is not None and work < NO_WORK_S:
        causes.append(
            Cause(
                "no-work-in-step",
                "The loop does almost no work between batches, so it is bound to wait on "
                "data: the figure measures the loader alone. Watch the real training step to "
                "know whether it waits.",
                (f"median work between batches {_ms(work)} (step minus data wait)",),
            )
        )
    if bound:
        empty = workers.get("queue_empty_at_request")
        ready = workers.get("queue_ready_mean")
        capacity = workers.get("queue_capacity")
        ahead = ready is not None and capacity and ready >= HANDOVER_READY * capacity
        if empty is not None and n_workers and ahead:
            on_cpu = stats.wait_cpu_s / stats.host_data_wait_s if stats.host_data_wait_s else 0.0
            causes.append(
                Cause(
                    "handover-cost",
                    "Batches were ready (the prefetch queue stayed full), yet each step waited: "
                    "taking a batch from the workers (unpickling it, receiving its shared "
                    "memory) costs that time in the training process.",
                    (
                        f"queue sampled {ready:.1f} of {capacity} batches ready on average",
                        f"{_pct(empty)} of steps still waited > "
                        f"{_ms(max(1e-3, EMPTY_WAIT_SHARE * (step or 0)))} (wait p50 "
                        f"{_ms(stats.wait_s_p50)} per batch)",
                        f"the training thread was on the CPU {_pct(min(1.0, on_cpu))} of its "
                        f"{stats.host_data_wait_s:.2f} s in next()",
                    ),
                )
            )
        elif empty is not None and n_workers:
            causes.append(
                Cause(
                    "prefetch-underrun",
                    "The prefetch queue was empty when the step asked for a batch: the "
                    "workers do not keep up.",
                    (
                        f"{_pct(empty)} of steps found no batch ready (waited > "
                        f"{_ms(max(1e-3, EMPTY_WAIT_SHARE * (step or 0)))})",
                        *(
                            [
                                f"queue sampled {workers['queue_ready_mean']:.1f} of "
                                f"{workers['queue_capacity']} batches ready on average"
                            ]
                            if "queue_ready_mean" in workers
                            else []
                        ),
                    ),
                )
            )
        if model:
            causes.append(
                Cause(
                    "model-in-dataset",
                    "The dataset holds a model (run in __getitem__ for every sample, in every "
                    "worker): the most expensive part of loading, repeated every epoch.",
                    (f"{model} is reachable from the dataset",),
                )
            )
        if n_workers == 0 and n_threads == 0:
            cpu = stats.wait_cpu_s / stats.host_data_wait_s if stats.host_data_wait_s else 0.0
            queued = workers.get("consumer_cpu_wait")
            if cpu >= 0.5:
                kind = "computing (CPU-bound decode and transforms)"
            elif queued is not None and queued >= CPU_CONTENDED:
                kind = "computing, slowed by other processes taking the CPUs"
            else:
                kind = "waiting (storage, network or sleeps)"
            evidence = [
                f"the training thread was on the CPU {_pct(min(1.0, cpu))} of its "
                f"{stats.host_data_wait_s:.2f} s in next()",
            ]
            if queued is not None:
                evidence.append(
                    f"it waited for a free CPU {_pct(queued)} of the run "
                    "(run-queue wait, /proc/<pid>/task/<tid>/schedstat)"
                )
            causes.append(
                Cause(
                    "loading-in-main-process",
                    f"num_workers=0: every batch is loaded in the training process, between "
                    f"steps; it spent the wait {kind}.",
                    tuple(evidence),
                )
            )
        queued = workers.get("cpu_wait_per_worker")
        cores = workers.get("cpu_cores")
        demand = None if cpu_share is None else cpu_share + (queued or 0.0)
        if (
            queued is not None
            and queued >= CPU_CONTENDED
            and (cores is None or cores < OTHERS_TAKE * cpus)
        ):
            causes.append(
                Cause(
                    "cpu-contention",
                    "Other processes take the CPUs: the workers were ready to run but waited "
                    "for a free CPU, while using less than the usable CPUs themselves.",
                    (
                        f"{n_workers} worker{'s' if n_workers != 1 else ''} waited for a free "
                        f"CPU {_pct(queued)} of the time (run-queue wait, /proc/<pid>/schedstat)",
                        f"and ran {_pct(cpu_share)} of the time each: "
                        f"{cores or 0:.1f} of {cpus} usable CPUs in all",
                    ),
                )
            )
        elif demand is not None and demand >= CPU_SATURATED:
            queue_note = (
                [
                    f"and waited for a free CPU {_pct(queued)} of the time (run-queue wait, "
                    "/proc/<pid>/schedstat)"
                ]
                if queued
                else []
            )
            if n_workers >= cpus:
                causes.append(
                    Cause(
                        "cpu-limit",
                        f"The workers keep the {cpus} usable CPUs busy: more workers cannot "
                        "help; the per-sample work must shrink.",
                        (
                            f"{n_workers} worker{'s' if n_workers != 1 else ''} on the CPU "
                            f"{_pct(cpu_share)} of the time each ({cores or 0:.1f} cores in all)",
                            *queue_note,
                        ),
                    )
                )
            else:
                causes.append(
                    Cause(
                        "worker-cpu-saturated",
                        f"Each worker is CPU-bound, and only {n_workers} of {cpus} usable CPUs "
                        "load data.",
                        (
                            f"{n_workers} worker{'s' if n_workers != 1 else ''} on the CPU "
                            f"{_pct(cpu_share)} of the time each (/proc/<pid>/stat)",
                            *queue_note,
                        ),
                    )
                )
        storage: list[str] = []
        if states.get("disk", 0.0) >= DISK_SHARE:
            storage.append(
                f"workers were in disk wait (D state) in {_pct(states['disk'])} of samples"
            )
        if psi is not None and psi >= PSI_SHARE:
            storage.append(f"/proc/pressure/io: some task stalled on I/O {_pct(psi)} of the run")
        if busiest is not None and busiest[1] >= DEVICE_BUSY:
            storage.append(f"/proc/diskstats: {busiest[0]} busy {_pct(busiest[1])} of the run")
        if storage:
            read = workers.get("read_bytes")
            if read:
                storage.append(f"workers read {format_bytes(read)} from storage")
            causes.append(
                Cause(
                    "storage-wait",
                    "Loading waits on storage: the block device or the page cache misses.",
                    tuple(storage),
                )
            )
        per_read = workers.get("bytes_per_read")
        if storage and per_read is not None and per_read < SMALL_READ_BYTES:
            causes.append(
                Cause(
                    "small-reads",
                    "Many small reads: per-file overhead (open, seek) dominates; pack samples "
                    "into shards or a memory-mapped store.",
                    (
                        f"{workers.get('read_calls', 0):,} read calls averaging "
                        f"{format_bytes(int(per_read))}",
                    ),
                )
            )
        waiting = states.get("sleep", 0.0) + states.get("other", 0.0)
        if n_workers and waiting >= 0.3 and not storage:
            causes.append(
                Cause(
                    "waits-in-dataset",
                    "The workers mostly wait inside the dataset (sleeps, network or remote "
                    "storage), not on the CPU: more concurrency pays, beyond the cores.",
                    (
                        f"worker samples: {_pct(states.get('sleep', 0.0))} sleeping, "
                        f"{_pct(states.get('other', 0.0))} in other waits (socket, pipe), "
                        f"{_pct(states.get('cpu', 0.0))} on the CPU",
                    ),
                )
            )
    restart = _restart_cause(stats, settings, workers)
    if restart is not None:
        causes.append(restart)
    stall = _stall_cause(stats, waits)
    if stall is not None:
        causes.append(stall)

    if bound:
        headline = f"data-bound: {_pct(fraction)} of step time waits on data ({figures})"
        codes = {c.code for c in causes}
        if "model-in-dataset" in codes:
            next_step = (
                f"`wellfed precompute {target or _placeholder(program)} --fn MODULE:MODEL "
                "--out DIR`: run the model once, store its outputs memory-mapped, and train "
                "from wellfed.CachedDataset(DIR) with any number of workers."
            )
        elif "cpu-contention" in codes:
            next_step = (
                "Free the CPUs: other programs on this machine take them (see `top`), or run "
                "where the CPUs are the job's own; then watch again. "
                f"{_tune(target, program)} measures what the loader can do here."
            )
        elif "storage-wait" in codes and (n_workers or n_threads):
            # without workers the first fix is to load in them (overlapping the reads with the
            # step): the branch below says so
            busy = (
                f" ({busiest[0]} was busy {_pct(busiest[1])} of the run: near its limit for a "
                "device that serves one request at a time)"
                if busiest is not None and busiest[1] >= DEVICE_BUSY
                else ""
            )
            next_step = (
                "Loading waits on storage: more workers help only while the device has "
                f"bandwidth to spare{busy}. Put the data on local or faster storage, or in RAM "
                "(the page cache keeps a dataset that fits in memory), or in fewer, larger "
                f"files (shards); {_tune(target, program)} measures whether more concurrency "
                "(thread workers overlap I/O) still raises the rate here."
            )
        elif "handover-cost" in codes:
            next_step = (
                f"The hand-over costs {_ms(stats.wait_s_p50)} per batch, whatever the "
                "workers do: larger batches or a longer step amortise it, thread workers or "
                f"batched fetch in the main process avoid it; {_tune(target, program)} "
                "measures them on this machine."
            )
        elif "cpu-limit" in codes:
            next_step = (
                "The CPUs are the limit: make each sample cheaper (precompute the expensive "
                "part once: `wellfed precompute`; decode smaller images; move augmentation to "
                f"the GPU), or run on more CPUs. {_tune(target, program)} confirms the ceiling."
            )
        else:
            next_step = (
                f"{_tune(target, program)}: it measures worker counts, thread workers, batched "
                "fetch and prefetch on this machine and data, and recommends the fastest."
            )
            if n_workers == 0 and n_threads == 0:
                next_step = "Load in workers: " + next_step
        if "worker-restarts" in codes:
            next_step += " Also set persistent_workers=True (workers restart every epoch)."
        return Verdict("data-bound", headline, tuple(causes), next_step)

    headline = f"not data-bound: {_pct(fraction)} of step time waits on data ({figures})"
    recommended, spare = _spare_workers(n_workers, workers)
    if spare is not None:
        causes.insert(0, spare)
        freed = n_workers - (recommended or n_workers)
        uss = workers.get("uss_bytes_per_worker")
        memory = f" and {format_bytes(uss * freed)}" if uss else ""
        next_step = (
            f"Fewer workers would free {freed} core{'s' if freed != 1 else ''}{memory} for "
            f"the training process: try num_workers={recommended}"
            f" (measure it: {_tune(target, program)})."
        )
    else:
        causes.insert(
            0,
            Cause(
                "loading-keeps-up",
                "Loading keeps up: the step itself sets the pace.",
                (figures,),
            ),
        )
        next_step = "Nothing to gain in loading; speed up the step itself."
        recommended = None
    return Verdict("not-data-bound", headline, tuple(causes), next_step, recommended)


def _spare_workers(n_workers: int, workers: dict[str, Any]) -> tuple[int | None, Cause | None]:
    """(workers that would keep up, the evidence) when fewer than ``n_workers`` would do."""
    states = workers.get("states") or {}
    samples = workers.get("state_samples", 0)
    if n_workers < 2 or samples < 10 or "idle" not in states:
        return None, None
    busy = 1.0 - states["idle"]
    needed = max(1, math.ceil(n_workers * busy / WORKER_HEADROOM))
    if needed >= n_workers:
        return None, None
    evidence = [
        f"the {n_workers} workers waited for work {_pct(states['idle'])} of the time "
        f"({samples} samples of /proc/<pid>/wchan): busy {_pct(busy)} each",
        f"{needed} worker{'s' if needed != 1 else ''} at most {_pct(WORKER_HEADROOM)} busy "
        "would deliver as much",
    ]
    if "queue_full_share" in workers:
        evidence.append(
            f"the prefetch queue was full in {_pct(workers['queue_full_share'])} of samples"
        )
    if "cpu_cores" in workers:
        evidence.append(f"the workers used {workers['cpu_cores']:.2f} cores in all")
    if "uss_bytes_per_worker" in workers:
        evidence.append(
            f"each worker holds {format_bytes(workers['uss_bytes_per_worker'])} of private memory"
        )
    return needed, Cause(
        "queue-full",
        "The workers are ahead of the step: the prefetch queue stays full and they wait.",
        tuple(evidence),
    )


def _restart_cause(
    stats: WatchStats, settings: dict[str, Any], workers: dict[str, Any]
) -> Cause | None:
    if settings.get("persistent_workers") or not settings.get("num_workers"):
        return None
    restarts = workers.get("restarts", 0)
    total = stats.step_s + stats.warmup_wait_s
    if restarts < 1 or total <= 0 or stats.warmup_wait_s / total < RESTART_SHARE:
        return None
    per = stats.warmup_wait_s / max(1, stats.warmup_steps)
    return Cause(
        "worker-restarts",
        "The workers start again every epoch (persistent_workers=False): each epoch waits "
        "for them.",
        (
            f"{restarts} restart{'s' if restarts != 1 else ''}; the first batch of an epoch "
            f"took {per:.2f} s on average, {_pct(stats.warmup_wait_s / total)} of the run",
        ),
    )


def _stall_cause(stats: WatchStats, waits: list[float] | None) -> Cause | None:
    if not stats.stalls or not waits:
        return None
    share = stats.stalls / max(1, stats.steps)
    if share > 0.25:  # most steps stall: that is plain data-boundness, said above
        return None
    longest = sorted(waits, reverse=True)[:3]
    return Cause(
        "stalls",
        "Occasional long waits: a slow shard or file, a periodic job (checkpoint writes, "
        "garbage collection, logging), or a worker restart.",
        (
            f"{stats.stalls} step{'s' if stats.stalls != 1 else ''} waited over 2x the median "
            f"step ({_ms(stats.step_s_p50)}); longest {', '.join(_ms(w) for w in longest)}",
            f"p99 wait {_ms(percentile(waits, 99))}",
        ),
    )
