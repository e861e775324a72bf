"""The search: sweep num_workers, re-measure near-ties, recommend the cheapest near-best."""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable
from typing import Any

from wellfed.measure import LoaderConfig, Trial, measure
from wellfed.platform import PlatformInfo, collect_platform_info
from wellfed.target import LoaderSpec, spec_from_object
from wellfed.tune._result import Recommendation, TuneResult

logger = logging.getLogger(__name__)

__all__ = [
    "CLEAR_GAIN",
    "DEFAULT_BUDGET_S",
    "NEAR_BEST",
    "Recommendation",
    "TuneResult",
    "tune",
]

#: Default bound on a whole tune run, seconds. The built-in workload needs about 35 s of it on
#: a quiet 2-core machine, 55 s on a loaded one (benchmarks/results/published/tune_2cpu.md).
DEFAULT_BUDGET_S = 75.0

#: A configuration within this fraction of the fastest counts as equally fast; among those the
#: one with fewer workers, then less memory, is recommended; so is one that the noise left
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

#: Upper bound of the sweep whatever memory and files allow.
MAX_WORKERS = 64

#: Rounds of re-measurement for configurations the noise cannot separate.
MAX_REPEAT_ROUNDS = 2

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


def _candidates(usable_cpus: int, cap: int, extra: int | None) -> list[int]:
    values = {0, usable_cpus}
    w = 1
    while w <= cap:
        values.add(w)
        w *= 2
    if extra is not None:
        values.add(extra)
    return sorted(v for v in values if v <= cap or v == extra)


def _fd_cap(platform: PlatformInfo, prefetch: int) -> int:
    if platform.open_files_limit is None:
        return MAX_WORKERS
    per_worker = FDS_PER_WORKER_BASE + prefetch * TENSORS_PER_BATCH
    return max(1, (platform.open_files_limit - 64) // per_worker)


def _config_for(spec: LoaderSpec, workers: int, method: str, pin: bool) -> LoaderConfig:
    user = spec.user_config
    prefetch = user.prefetch_factor if user is not None and user.num_workers > 0 else None
    if workers == 0:
        return LoaderConfig(num_workers=0, batch_size=spec.batch_size, pin_memory=pin)
    return LoaderConfig(
        num_workers=workers,
        batch_size=spec.batch_size,
        pin_memory=pin,
        persistent_workers=True,
        prefetch_factor=prefetch,
        multiprocessing_context=method,
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


def tune(
    target: Any,
    *,
    budget_s: float = DEFAULT_BUDGET_S,
    start_method: str | None = None,
    max_workers: int | None = None,
    measure_s: float | None = None,
    check_safety: bool = True,
    store: bool = True,
    progress: ProgressFn | None = None,
) -> TuneResult:
    """Measure DataLoader configurations on this machine and recommend the fastest cheap one.

    The sweep measures num_workers 0, 1, 2, 4, 8, ... (plus the usable CPU count and the
    target's own setting), with persistent workers, and pinned memory when a CUDA device
    exists. It always goes up to the usable CPU count, and past it only while the last step
    gained at least CLEAR_GAIN (storage-bound data gains from many more workers than cores),
    within a cap from available memory (per-worker memory measured) and open files. Then
    configurations the noise cannot separate from the best are re-measured (up to
    MAX_REPEAT_ROUNDS) and pooled. The recommendation is the configuration within NEAR_BEST
    of the fastest (or not separable from it by the measured noise) with the fewest workers,
    then the least memory.

    Args:
        target: A LoaderSpec, Dataset or DataLoader (see ``resolve_target`` for TARGET strings).
        budget_s: Bound on the whole run in seconds; the sweep stops early to respect it.
        start_method: Worker start method; None: the target's own, else the platform default.
        max_workers: Highest num_workers to try; None: from memory and open-file limits.
        measure_s: Seconds of measured loading per trial; None: budget_s / 25, within 1.5-4 s.
        check_safety: Run the doctor's static checks first and refuse worker configurations
            when they find errors for this start method.
        store: Save the result where ``create_dataloader(num_workers="auto")`` finds it
            (see ``wellfed.tune.store_dir``).
        progress: Called as ``progress(fraction_of_budget_used, message)`` while measuring.

    Returns:
        A TuneResult. Failures of single configurations are trials with their error, not
        exceptions.

    Raises:
        ConfigError: budget_s or max_workers out of range (WF010).
    """
    from wellfed.errors import ConfigError

    if budget_s <= 0:
        raise ConfigError(
            f"Invalid option: budget_s={budget_s}s is not positive. Give the run some seconds, "
            f"e.g. --budget-s {DEFAULT_BUDGET_S:.0f}.",
            code="WF010",
            attribute="budget_s",
            value=budget_s,
        )
    if max_workers is not None and max_workers < 0:
        raise ConfigError(
            f"Invalid option: max_workers={max_workers} is negative. Use 0 or more.",
            code="WF010",
            attribute="max_workers",
            value=max_workers,
        )
    spec = target if isinstance(target, LoaderSpec) else spec_from_object(target)
    started = time.perf_counter()

    def report(message: str) -> None:
        if progress is not None:
            progress(min(1.0, (time.perf_counter() - started) / budget_s), message)

    def remaining() -> float:
        return budget_s - (time.perf_counter() - started)

    import torch

    platform = collect_platform_info(include_gpus=False)
    has_cuda = bool(torch.cuda.is_available())
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
    per_trial = measure_s if measure_s is not None else min(4.0, max(1.5, budget_s / 25.0))
    prefetch = (user.prefetch_factor if user and user.prefetch_factor else None) or 2
    cap = min(MAX_WORKERS, _fd_cap(platform, prefetch))
    if max_workers is not None:
        cap = min(cap, max_workers)

    findings: tuple[dict[str, Any], ...] = ()
    if check_safety:
        report("doctor: static checks")
        findings = _safety_findings(spec, method, has_cuda)
        if findings:
            cap = 0

    extra = user.num_workers if user is not None else None
    candidates = _candidates(
        platform.usable_cpus, cap, extra if extra is not None and extra <= cap else None
    )
    trials: dict[int, Trial] = {}
    order: list[int] = []
    stopped = ""
    per_worker_bytes: float | None = None

    def run(workers: int) -> Trial:
        config = _config_for(spec, workers, method, has_cuda)
        report(f"measuring {config.label()}")
        startup = 20.0 + (3.0 if method != "fork" else 0.5) * workers
        return measure(spec, config, measure_s=per_trial, timeout_s=startup + 6 * per_trial)

    for workers in candidates:
        if workers in trials:
            continue
        if order:
            last = trials[order[-1]]
            estimate = last.elapsed_s * (1.0 + 0.1 * max(0, workers - last.config.num_workers))
            if estimate > remaining():
                stopped = (
                    f"the time budget ({budget_s:.0f}s) would be exceeded by {workers} workers"
                )
                break
            if per_worker_bytes is not None and trials[0].peak_memory_bytes is not None:
                room = MEMORY_SHARE * platform.ram_available_bytes - trials[0].peak_memory_bytes
                if workers * per_worker_bytes > room:
                    stopped = (
                        f"{workers} workers would need "
                        f"~{workers * per_worker_bytes / 2**30:.1f} GiB "
                        f"(measured {per_worker_bytes / 2**20:.0f} MiB per worker), more than "
                        f"{MEMORY_SHARE:.0%} of available RAM"
                    )
                    break
        trial = run(workers)
        trials[workers] = trial
        order.append(workers)
        if not trial.ok:
            what = "hung" if trial.status == "timeout" else "failed"
            first_line = (trial.error or "").splitlines()[0] if trial.error else ""
            stopped = f"num_workers={workers} {what}: {first_line}"
            break
        base = trials.get(0)
        if (
            workers > 0
            and base is not None
            and base.ok
            and trial.peak_memory_bytes
            and base.peak_memory_bytes
        ):
            growth = max(0, trial.peak_memory_bytes - base.peak_memory_bytes) / workers
            per_worker_bytes = max(per_worker_bytes or 0.0, growth)
        if workers >= platform.usable_cpus and workers > 0:
            smaller = [
                t.samples_per_s
                for w, t in trials.items()
                if w < workers and t.ok and t.samples_per_s is not None
            ]
            best_smaller = max(smaller) if smaller else 0.0
            assert trial.samples_per_s is not None
            # The gain must be clear beyond this trial's own noise (2 standard errors), so
            # that a lucky measurement on a loaded machine does not send the sweep past the
            # cores (benchmarks/results/published/suite_2cpu_heavy_load.md: 8 workers on 2 CPUs).
            if trial.samples_per_s - 2.0 * _standard_error(trial) < CLEAR_GAIN * best_smaller:
                stopped = (
                    f"{workers} workers gained less than {CLEAR_GAIN - 1:.0%} over fewer workers "
                    f"({trial.samples_per_s:.0f} vs {best_smaller:.0f} samples/s)"
                )
                break
    else:
        if cap == 0 and findings:
            stopped = "the doctor found errors for this start method; workers were not measured"
        else:
            stopped = f"reached the cap of {cap} workers (memory, open files or max_workers)"

    # Re-measure configurations that noise cannot separate from the best.
    for _round in range(MAX_REPEAT_ROUNDS):
        ok = [t for t in trials.values() if t.ok]
        if len(ok) < 2:
            break
        leader = max(ok, key=lambda t: t.samples_per_s or 0.0)
        assert leader.samples_per_s is not None
        unsure = []
        for t in ok:
            assert t.samples_per_s is not None
            noise = 2.0 * math.hypot(_standard_error(t), _standard_error(leader))
            if t is leader:
                continue
            if t.samples_per_s + noise >= (1 - NEAR_BEST) * leader.samples_per_s:
                unsure.append(t)
        if not unsure:
            break
        group = [leader, *unsure]
        cost = sum(t.elapsed_s / t.repeats for t in group)
        if cost > remaining():
            break
        for t in group:
            w = t.config.num_workers
            again = run(w)
            trials[w] = trials[w].merged(again)

    result_trials = tuple(trials[w] for w in sorted(trials))
    baseline = trials.get(0)
    ok_trials = [t for t in result_trials if t.ok]
    best = max(ok_trials, key=lambda t: t.samples_per_s or 0.0) if ok_trials else None
    recommended = _recommend(
        spec, ok_trials, best, baseline, platform, has_cuda, method, stopped, findings
    )
    # The ceiling scales the best single loading process (the main process, or one worker,
    # which runs with one intra-op thread and so escapes thread oversubscription) by the cores.
    single = [t.samples_per_s for t in ok_trials if t.config.num_workers <= 1 and t.samples_per_s]
    ceiling = max(single) * platform.usable_cpus if single else None
    workload = {
        "description": spec.description,
        "samples": spec.samples,
        "source": spec.source,
        "target": spec.target,
        "batch_size": spec.batch_size,
        "batch_size_given": spec.batch_size_given,
        "start_method": method,
        "user_config": user.to_dict() if user else None,
    }
    result = TuneResult(
        platform=platform,
        workload=workload,
        trials=result_trials,
        baseline=baseline,
        recommended=recommended,
        best=best,
        ceiling_samples_per_s=ceiling,
        tuning_time_s=time.perf_counter() - started,
        budget_s=budget_s,
        stopped_because=stopped,
        findings=findings,
    )
    if store and recommended is not None and not findings:
        from wellfed.tune._store import save_result

        path = save_result(spec.dataset, result)
        result = dataclasses.replace(result, stored_path=str(path) if path else None)
    report("done")
    return result


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
) -> Recommendation | None:
    if best is None or best.samples_per_s is None:
        return None

    # Equally fast: within NEAR_BEST of the fastest, or not separable from it by the noise
    # left after the repeats (2 standard errors of the difference of the medians), but never
    # more than MAX_NEAR below it.
    def equally_fast(t: Trial) -> bool:
        assert best is not None
        assert best.samples_per_s is not None
        noise = 2.0 * math.hypot(_standard_error(t), _standard_error(best))
        top = best.samples_per_s
        floor = max((1 - NEAR_BEST) * top - noise, (1 - MAX_NEAR) * top)
        return (t.samples_per_s or 0.0) >= floor

    near = [t for t in ok_trials if equally_fast(t)]
    chosen = min(near, key=lambda t: (t.config.num_workers, t.peak_memory_bytes or 0))
    assert chosen.samples_per_s is not None
    base_rate = baseline.samples_per_s if baseline is not None and baseline.ok else None
    speedup = chosen.samples_per_s / base_rate if base_rate else None
    cfg = chosen.config
    reasons: dict[str, str] = {}
    if findings:
        paths = ", ".join(str(f.get("path")) for f in findings[:3])
        reasons["num_workers"] = (
            f"0 (detected): the doctor found {len(findings)} error(s) under {method} ({paths}); "
            "fix them (`wellfed doctor`) and tune again to use workers"
        )
    elif cfg.num_workers == best.config.num_workers:
        reasons["num_workers"] = (
            f"{cfg.num_workers} (measured): the fastest, {chosen.samples_per_s:.0f} samples/s"
            + (f", {speedup:.2f}x num_workers=0" if speedup else "")
        )
    else:
        reasons["num_workers"] = (
            f"{cfg.num_workers} (measured): {chosen.samples_per_s:.0f} samples/s, within "
            f"{NEAR_BEST:.0%} or the noise of the fastest ({best.config.num_workers} workers, "
            f"{best.samples_per_s:.0f} samples/s) with fewer workers and less memory"
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
        reasons["prefetch_factor"] = (
            f"{cfg.prefetch_factor} (yours)"
            if cfg.prefetch_factor is not None
            else "2 (PyTorch's default; not tuned in this version)"
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
        f"{cfg.label()}: {chosen.samples_per_s:.0f} samples/s"
        + (f", {speedup:.2f}x num_workers=0" if speedup else "")
        + f"; fastest measured: {best.samples_per_s:.0f} samples/s with {best.config.label()}."
        + (f" Sweep ended: {stopped}." if stopped else "")
    )
    return Recommendation(
        config=cfg,
        samples_per_s=chosen.samples_per_s,
        speedup=speedup,
        reason=reason,
        reasons=reasons,
        code=_dataloader_code(spec, cfg, reasons),
    )


def _dataloader_code(spec: LoaderSpec, cfg: LoaderConfig, reasons: dict[str, str]) -> str:
    lines = ["DataLoader(", "    dataset,"]

    def arg(name: str, value: Any) -> None:
        why = reasons.get(name)
        comment = why.split(" ", 1)[1] if why and " " in why else why
        lines.append(f"    {name}={value!r},{'  # ' + comment if comment else ''}")

    if spec.batch_sampler is None:
        arg("batch_size", spec.batch_size)
        if spec.shuffle:
            lines.append("    shuffle=True,")
    arg("num_workers", cfg.num_workers)
    if cfg.num_workers > 0:
        arg("persistent_workers", True)
        arg("prefetch_factor", cfg.prefetch_factor or 2)
        if cfg.multiprocessing_context:
            arg("multiprocessing_context", cfg.multiprocessing_context)
    arg("pin_memory", cfg.pin_memory)
    lines.append(")")
    return "\n".join(lines)
