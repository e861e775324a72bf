"""Consumer-aware tuning: the cheapest configuration whose data wait stays under the step.

``tune_for_step(target, step_s=0.040)`` (``wellfed tune TARGET --step-ms 40``) measures
configurations with a consumer that spends ``step_s`` seconds per batch (sleeping, as a host
waiting for its GPU does, or running the user's ``step`` callable), in the cheapest-first
order: the main process, then at 1, 2, 3... workers up to the usable CPUs, then doubling,
thread workers (``num_threads``, in the main process) and worker processes at each count.
Thread workers are tried only where tune's live probe finds them safe (``tune._probe``:
threaded samples equal serial ones; no tokenizer shared across threads); the result says
why when they are not. Each trial runs in an isolated child (``run_isolated``, as
``measure`` does) and keeps its books with ``wellfed._meter.WaitMeter``, the accounting
``wellfed.watch`` uses. The search stops at the first count where a configuration's data
wait is at most ``goal`` (5%) of the step: the cheapest that keeps up (fewest workers or
threads; between a thread and a process configuration of that count, the one whose measured
peak memory is lower). When none does within the budget or the caps, the recommendation is
the least data-bound one, and the result says so.

This is an addition beside the throughput search (``wellfed.tune.tune``), which is left as it
is; it measures no batched fetch and no prefetch depths.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from wellfed._isolate import note_memory
from wellfed._meter import WaitMeter, leading_dim, warmup_for
from wellfed.errors import check_option
from wellfed.measure import close_loader, iterate, run_isolated
from wellfed.target import LoaderConfig, LoaderSpec, spec_from_object

__all__ = ["DATA_WAIT_GOAL", "StepTrial", "StepTuneResult", "tune_for_step"]

#: The recommendation keeps the data wait at or below this share of the step (issue 13).
DATA_WAIT_GOAL = 0.05
#: Measured steps per trial after the warm-up (fewer when an epoch is shorter).
STEPS_PER_TRIAL = 30
#: Past the usable CPUs, a kind of worker (threads or processes) stops being climbed once this
#: many counts in a row lowered its best data-bound fraction by less than NO_GAIN: the search
#: heuristic behind "more stopped helping" (on the 2-CPU machine, 8 to 256 threads all sat
#: at 70-75% for a CPU-bound decode, 60 s of trials that could not change the answer).
STALE_COUNTS = 2
NO_GAIN = 0.01


@dataclass(frozen=True)
class StepTrial:
    """One configuration measured against the step.

    Attributes:
        config: The configuration.
        status: "ok", "failed" or "timeout".
        data_bound_fraction: Data wait over step time, 0..1 (None unless ok).
        samples_per_s: The consumer's pace, samples/s.
        wait_s_p90: 90th percentile of the data wait per step, s.
        steps: Steps measured (the first epoch's warm-up steps left out: ``_meter.warmup_for``).
        peak_memory_bytes: Peak memory of the trial's process tree.
        memory_kind: "rss+uss" or "rss".
        elapsed_s: Wall seconds the trial took, start-up included.
        error: The failure, or None.
    """

    config: LoaderConfig
    status: str
    data_bound_fraction: float | None = None
    samples_per_s: float | None = None
    wait_s_p90: float | None = None
    steps: int = 0
    peak_memory_bytes: int | None = None
    memory_kind: str | None = None
    elapsed_s: float = 0.0
    error: str | None = None

    @property
    def ok(self) -> bool:
        """True when the trial measured its steps."""
        return self.status == "ok" and self.data_bound_fraction is not None

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict (config nested)."""
        out = dataclasses.asdict(self)
        out["config"] = self.config.to_dict()
        return out


@dataclass(frozen=True)
class StepTuneResult:
    """What ``tune_for_step`` measured and recommends.

    Attributes:
        step_s: The consumer's time per batch, s (None with a ``step`` callable).
        goal: The data-wait share of the step the recommendation must stay under.
        trials: Every trial, cheapest first.
        recommended: The cheapest trial within the goal, else the least data-bound one;
            None when nothing could be measured.
        reached: True when the recommendation is within the goal.
        reason: One sentence on why it was chosen.
        description: The workload.
        elapsed_s: Wall seconds of the whole search.
        threads: The thread-safety verdict: ``{"safe": bool, "why": str, "fix": str | None}``
            (``why``: the detected fact; thread workers are measured only when safe).
    """

    step_s: float | None
    goal: float
    trials: tuple[StepTrial, ...]
    recommended: StepTrial | None
    reached: bool
    reason: str
    description: str
    elapsed_s: float
    threads: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return {
            "step_s": self.step_s,
            "goal": self.goal,
            "trials": [t.to_dict() for t in self.trials],
            "recommended": None if self.recommended is None else self.recommended.to_dict(),
            "reached": self.reached,
            "reason": self.reason,
            "description": self.description,
            "elapsed_s": self.elapsed_s,
            "threads": dict(self.threads),
        }


def _trial_child(
    spec: LoaderSpec,
    config: LoaderConfig,
    step_s: float | None,
    step: Callable[[Any], Any] | None,
    steps: int,
) -> dict[str, Any]:
    """In the isolated child: load with the consumer, keep the books, return the stats."""
    import warnings

    # torch's "suggested max number of worker" advice: a count above the CPUs is measured here
    warnings.filterwarnings("ignore", message="This DataLoader will create", category=UserWarning)
    loader = spec.make_loader(config)
    meter = WaitMeter()
    # Epoch by epoch through the loader driver. The first epoch's first batches (the workers'
    # start-up, once per training run) are warm-up steps, left out of the figures, as watch
    # leaves them out; a later epoch's start (threads or non-persistent workers restarted,
    # the prefetch queue refilled) is a step like any other: it recurs in training, and on a
    # short epoch it is most of the loading (the whole epoch can load during one wait).
    # An epoch made only of warm-up steps measures nothing: the trial gives up after a
    # bounded number of batches.
    limit = 4 * (steps + max(1, config.workers)) + 16
    meter.new_epoch(warmup_for(loader))
    handed = 0
    try:
        while len(meter.step) < steps and handed < limit:
            delivered = False
            batches = iter(iterate(loader, keep_workers=True))
            try:
                while len(meter.step) < steps and handed < limit:
                    meter.begin()
                    try:
                        batch = next(batches)
                    except StopIteration:
                        meter.abandon()
                        break
                    meter.end(leading_dim(batch))
                    delivered = True
                    handed += 1
                    if step is not None:
                        step(batch)
                    elif step_s:
                        time.sleep(step_s)
            finally:
                batches.close()  # type: ignore[attr-defined]
            if not delivered:
                break
        # once, after the last step and outside every step's time; its persistent workers
        # (the step search's processes) still hold their data
        note_memory()
    finally:
        close_loader(loader)
    return meter.stats().to_dict()


def _counts(cpus: int, cap: int) -> list[int]:
    """Worker counts cheapest first: 0, 1, 2... up to the usable CPUs, then doubling."""
    counts = list(range(0, min(cpus, cap) + 1))
    n = cpus * 2
    while n <= cap:
        counts.append(n)
        n *= 2
    return counts


def _configs(
    count: int,
    *,
    batch_size: int,
    method: str,
    process_cap: int,
    thread_cap: int,
) -> list[LoaderConfig]:
    """The configurations of one count, cheapest first: the main process alone at 0; thread
    workers (one process's memory) before worker processes."""
    if count == 0:
        return [LoaderConfig(batch_size=batch_size)]
    out = []
    if count <= thread_cap:
        out.append(LoaderConfig(num_threads=count, batch_size=batch_size))
    if count <= process_cap:
        out.append(
            LoaderConfig(
                num_workers=count,
                batch_size=batch_size,
                persistent_workers=True,
                multiprocessing_context=method,
            )
        )
    return out


def _measure_step(
    spec: LoaderSpec,
    config: LoaderConfig,
    *,
    step_s: float | None,
    step: Callable[[Any], Any] | None,
    steps: int,
    method: str,
) -> StepTrial:
    """One trial in an isolated child, with a timeout that covers start-up and the steps."""
    count = config.workers
    startup = 20.0 + (3.0 if method != "fork" and config.num_workers else 0.5) * count
    per_step = step_s if step_s is not None else 0.5
    result = run_isolated(
        _trial_child,
        spec,
        config,
        step_s,
        step,
        steps,
        timeout_s=startup + 4 * (steps + count) * (per_step + 0.5),
        sample_memory=True,
    )
    if result.status == "ok":
        stats = result.value
        return StepTrial(
            config=config,
            status="ok",
            data_bound_fraction=stats["data_bound_fraction"],
            samples_per_s=stats["samples_per_s"],
            wait_s_p90=stats["wait_s_p90"],
            steps=stats["steps"],
            peak_memory_bytes=result.peak_memory_bytes,
            memory_kind=result.memory_kind,
            elapsed_s=result.elapsed_s,
        )
    return StepTrial(
        config=config,
        status=result.status,
        peak_memory_bytes=result.peak_memory_bytes,
        memory_kind=result.memory_kind,
        elapsed_s=result.elapsed_s,
        error=result.error,
    )


def _within(trial: StepTrial, goal: float) -> bool:
    return trial.ok and trial.data_bound_fraction is not None and trial.data_bound_fraction <= goal


def tune_for_step(
    target: Any,
    *,
    step_s: float | None = None,
    step: Callable[[Any], Any] | None = None,
    goal: float = DATA_WAIT_GOAL,
    max_workers: int | None = None,
    max_threads: int | None = None,
    start_method: str | None = None,
    budget_s: float = 120.0,
    steps: int = STEPS_PER_TRIAL,
    progress: Callable[[float, str], None] | None = None,
) -> StepTuneResult:
    """Find the cheapest loader configuration whose data wait is at most ``goal`` of the step.

    See the module docstring for the search.

    Args:
        target: A LoaderSpec, Dataset or DataLoader (TARGET strings: ``resolve_target``).
        step_s: Seconds the consumer spends per batch (sleeping, as a host waiting for its
            GPU does); the CLI's ``--step-ms`` / 1000.
        step: Instead of ``step_s``, a callable run on every batch in the trial's process
            (a forked child: it need not pickle where fork is the start method).
        goal: Data wait at most this share of the step, 0..1 (default 5%).
        max_workers: Most worker processes to try; None: 4x the usable CPUs, at most 64.
        max_threads: Most thread workers to try; None: ``tune.MAX_THREADS`` (256); 0 tries
            none.
        start_method: Worker start method; None: the target's own, else the platform's.
        budget_s: Bound on the whole search, seconds.
        steps: Measured steps per trial (after the warm-up).
        progress: Called as ``progress(fraction_of_budget_used, message)``.

    Returns:
        A StepTuneResult.

    Raises:
        ConfigError: neither or both of ``step_s`` and ``step``, ``step_s`` <= 0, ``goal``
            outside 0..1, ``budget_s`` <= 0, ``steps`` < 1, ``max_workers`` < 0 or
            ``max_threads`` < 0 (WF010).
    """
    check_option(
        "step_s",
        step_s,
        (step_s is None) != (step is None),
        "given alone (either step_s or step, not both)",
        code="WF010",
        fix="Pass step_s=<seconds per batch> or step=<callable>.",
    )
    if step_s is not None:
        check_option("step_s", step_s, step_s > 0, "a positive number of seconds", code="WF010")
    check_option("goal", goal, 0 < goal < 1, "a share between 0 and 1", code="WF010")
    check_option("budget_s", budget_s, budget_s > 0, "a positive number of seconds", code="WF010")
    check_option("steps", steps, steps >= 1, "1 or more", code="WF010")
    for name, value in (("max_workers", max_workers), ("max_threads", max_threads)):
        check_option(name, value, value is None or value >= 0, "0 or more", code="WF010")
    from wellfed.platform import collect_platform_info
    from wellfed.tune._probe import probe_dataset
    from wellfed.tune._search import MAX_THREADS

    spec = target if isinstance(target, LoaderSpec) else spec_from_object(target)
    platform = collect_platform_info(include_gpus=False)
    user = spec.user_config
    method = (
        start_method
        or (user.multiprocessing_context if user else None)
        or platform.default_start_method
    )
    cpus = platform.usable_cpus
    cap = min(64, 4 * cpus) if max_workers is None else max_workers
    thread_cap = MAX_THREADS if max_threads is None else min(MAX_THREADS, max_threads)
    batch_size = user.batch_size if user else spec.batch_size
    started = time.perf_counter()
    threads: dict[str, Any] = {"safe": False, "why": "max_threads=0", "fix": None}
    if thread_cap > 0:
        if progress is not None:
            progress(0.0, "probing thread safety")
        threads = dict(probe_dataset(spec, timeout_s=min(60.0, budget_s / 4))["threads"])
        if not threads.get("safe"):
            thread_cap = 0
    trials: list[StepTrial] = []
    recommended: StepTrial | None = None
    reason = ""
    best: dict[str, float] = {}
    stale = {"thread": 0, "process": 0}
    for count in _counts(cpus, max(cap, thread_cap)):
        configs = _configs(
            count,
            batch_size=batch_size,
            method=method,
            process_cap=0 if stale["process"] >= STALE_COUNTS else cap,
            thread_cap=0 if stale["thread"] >= STALE_COUNTS else thread_cap,
        )
        if not configs:
            if any(n >= STALE_COUNTS for n in stale.values()):
                reason = (
                    f"more workers stopped lowering the data wait ({STALE_COUNTS} counts in a "
                    "row past the usable CPUs without a gain of a point)"
                )
            break
        cut = False
        measured: list[StepTrial] = []  # this count's trials (the budget may cut it short)
        for config in configs:
            spent = time.perf_counter() - started
            if trials and spent + max(t.elapsed_s for t in trials) * 1.5 > budget_s:
                reason = f"the time budget ({budget_s:.0f}s) would be exceeded at {config.label()}"
                cut = True
                break
            if progress is not None:
                progress(min(1.0, spent / budget_s), f"measuring {config.label()} with the step")
            measured.append(
                _measure_step(spec, config, step_s=step_s, step=step, steps=steps, method=method)
            )
            trials.append(measured[-1])
        for t in measured:
            kind = "thread" if t.config.num_threads else "process"
            fraction = t.data_bound_fraction if t.ok else None
            if fraction is not None and fraction < best.get(kind, 1.0) - NO_GAIN:
                best[kind] = fraction
                stale[kind] = 0
            elif count > cpus:
                stale[kind] += 1
        within = [t for t in measured if _within(t, goal)]
        if within:
            # a trial whose memory could not be read is not taken for the lightest
            recommended = min(
                within,
                key=lambda t: float("inf") if t.peak_memory_bytes is None else t.peak_memory_bytes,
            )
            reason = (
                f"the cheapest configuration whose data wait is at most {goal:.0%} of the step: "
                f"{recommended.data_bound_fraction:.1%} with {recommended.config.label()}"
            )
            if len(within) > 1:
                reason += " (the least peak memory of the configurations at that count within it)"
            break
        if cut:
            break
    reached = recommended is not None
    if recommended is None:
        measured = [t for t in trials if t.ok and t.data_bound_fraction is not None]
        if measured:
            recommended = min(
                measured,
                key=lambda t: (t.data_bound_fraction or 0.0, t.config.workers),
            )
            why = reason or f"the caps ({cap} worker processes, {thread_cap} threads) were reached"
            reason = (
                f"no configuration kept the data wait within {goal:.0%} of the step ({why}): "
                f"the least data-bound one, {recommended.data_bound_fraction:.1%} with "
                f"{recommended.config.label()}"
            )
        else:
            reason = "no configuration could be measured; see the trials' errors"
    return StepTuneResult(
        step_s=step_s,
        goal=goal,
        trials=tuple(trials),
        recommended=recommended,
        reached=reached,
        reason=reason,
        description=spec.description,
        elapsed_s=time.perf_counter() - started,
        threads=threads,
    )
