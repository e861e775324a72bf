"""``wellfed doctor``: find every worker hazard in a dataset, with its attribute path, why and fix.

The target becomes a dataset and its loader settings (``_settings``). Static checks walk the
object graph that DataLoader workers receive (``_graph``), read the source of worker code
(``_source``) and compare the loader settings with this machine (``_checks``, one
``_checks_<category>`` module per report category, on the machinery of ``_context``,
``_classify`` and ``_pickling``). The live probe (``_probe``) then runs the target in real
workers under each start method, in an isolated child, and ``_probe_findings`` confirms or
refutes what the static checks suspect; a live failure or hang is reported at the attribute
path of the user code where it happened (``_attribution``).

Example:
    >>> report = wellfed.diagnose(dataset, loader_kwargs={"num_workers": 4}, live=False)
    >>> for f in report.errors:
    ...     print(f.path, f.fix)
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any

from wellfed.doctor._checks import run_checks
from wellfed.doctor._checks_threads import thread_worker_hazards
from wellfed.doctor._context import Context
from wellfed.doctor._graph import walk
from wellfed.doctor._probe_findings import apply_probes
from wellfed.doctor._report import (
    CATEGORIES,
    CODES,
    SEVERITIES,
    DoctorReport,
    Finding,
    ProbeRun,
    dedupe,
    hanging_lines,
    ordered,
    render_text,
)
from wellfed.doctor._settings import describe, is_default_collate, resolve_methods, safe_len, unpack
from wellfed.errors import ConfigError
from wellfed.platform import PlatformInfo, collect_platform_info

__all__ = [
    "CATEGORIES",
    "CODES",
    "SEVERITIES",
    "DoctorReport",
    "Finding",
    "ProbeRun",
    "diagnose",
    "hanging_lines",
    "render_text",
    "static_errors",
    "thread_worker_hazards",
    "worker_reads",
]


def diagnose(
    obj: Any,
    *,
    loader_kwargs: Mapping[str, Any] | None = None,
    live: bool = True,
    start_methods: str | Iterable[str] | None = None,
    timeout_s: float = 60.0,
    platform_info: PlatformInfo | None = None,
) -> DoctorReport:
    """Find every hazard that breaks, corrupts or slows a dataset in DataLoader workers.

    Args:
        obj: A Dataset (map-style or iterable), a ``torch.utils.data.DataLoader`` (its own
            settings are judged too), or a ``wellfed.LoaderSpec``.
        loader_kwargs: DataLoader arguments to judge with (num_workers, batch_size,
            prefetch_factor, persistent_workers, collate_fn, worker_init_fn, sampler,
            multiprocessing_context...); they override a DataLoader's own. Without any,
            checks that need a worker count (CPUs, /dev/shm) are skipped and an
            IterableDataset is judged for 2 or more workers.
        live: Also run the live probe: real workers, PROBE_WORKERS of them, under each start
            method, in an isolated child process. False gives the static checks only
            (< 2 s even for 10**6 items; what ``create_dataloader`` and ``tune`` use).
        start_methods: Start methods to judge ("fork", "spawn", "forkserver", or several).
            None: the loader's multiprocessing_context if set, else every method available
            on this platform.
        timeout_s: Budget of the live probe in seconds, shared by the start methods; a run
            that exceeds its share is killed with its workers and reported.
        platform_info: Machine facts to judge against; None collects them (without touching
            CUDA). Tests inject a modified PlatformInfo with ``dataclasses.replace``.

    Returns:
        A DoctorReport; ``report.errors`` lists what breaks or corrupts data.

    Raises:
        ConfigError: timeout_s <= 0, or an unknown or unavailable start method.

    Example:
        >>> report = wellfed.diagnose(train_set, loader_kwargs={"num_workers": 8})
        >>> report.has_errors
        False
    """
    if not isinstance(timeout_s, (int, float)) or timeout_s <= 0:
        raise ConfigError(
            f"diagnose() got timeout_s={timeout_s!r}: the live probe needs a positive budget in "
            "seconds. Pass timeout_s=60.0 (the default), or live=False for static checks only.",
            attribute="timeout_s",
            value=timeout_s,
        )
    start = time.perf_counter()
    platform = platform_info or collect_platform_info(include_gpus=False)
    dataset, settings, from_loader = unpack(obj, loader_kwargs)
    methods = resolve_methods(start_methods, settings, platform)
    ctx = Context(dataset, from_loader, settings, methods, platform, length=safe_len(dataset))
    seen: set[int] = set()
    ctx.walks["dataset"] = walk(dataset, "dataset", seen=seen)
    for name in ("collate_fn", "worker_init_fn", "sampler", "batch_sampler"):
        value = settings.get(name)
        if value is None or (name == "collate_fn" and is_default_collate(value)):
            continue
        ctx.walks[f"loader.{name}"] = walk(value, f"loader.{name}", seen=seen)
    findings = run_checks(ctx)
    static_s = time.perf_counter() - start
    probes: list[ProbeRun] = []
    live_s = 0.0
    if live:
        from wellfed.doctor._probe import probe_all

        t0 = time.perf_counter()
        probes = probe_all(dataset, settings, methods, float(timeout_s))
        findings = apply_probes(ctx, findings, probes)
        if any(f.code == "WF111" for f in findings):
            from wellfed.doctor._probe_stale import judge_stale_live

            left = float(timeout_s) - (time.perf_counter() - t0)
            findings, probes = judge_stale_live(ctx, obj, findings, probes, left)
        live_s = time.perf_counter() - t0
    walks = ctx.walks.values()
    return DoctorReport(
        findings=ordered(dedupe(findings)),
        target=describe(dataset, ctx.length, from_loader),
        start_methods=methods,
        live=live,
        probes=tuple(probes),
        static_s=static_s,
        live_s=live_s,
        objects_visited=sum(len(w.nodes) for w in walks),
        sampled_containers=tuple(p for w in walks for p in w.sampled),
    )


def static_errors(
    obj: Any,
    *,
    loader_kwargs: Mapping[str, Any] | None = None,
    start_method: str | None = None,
) -> tuple[Finding, ...]:
    """The error findings of the static checks for one start method: what would break or
    corrupt data in workers, judged before any worker starts.

    The one gate ``create_dataloader`` and ``wellfed tune`` run before starting workers. No
    live probe, no ``__getitem__`` call; < 2 s even for 10**6 items.

    Args:
        obj: A Dataset, a ``torch.utils.data.DataLoader`` or a ``wellfed.LoaderSpec``.
        loader_kwargs: The full, resolved DataLoader arguments the workers will run with
            (num_workers, batch_size, prefetch_factor, persistent_workers, pin_memory,
            collate_fn, worker_init_fn, sampler, batch_sampler, multiprocessing_context, and
            ``seed`` for a seeded loader); they override a DataLoader's own.
        start_method: "fork", "spawn" or "forkserver". None: the loader's
            multiprocessing_context if set, else ``wellfed.platform.default_start_method()``.

    Returns:
        The error-severity findings, errors ordered by code and path; empty when none.

    Raises:
        ConfigError: an unknown or unavailable start method.

    Example:
        >>> errors = wellfed.doctor.static_errors(dataset, loader_kwargs={"num_workers": 4})
        >>> [f.code for f in errors]
        []
    """
    method = start_method
    if method is None:
        _, settings, _ = unpack(obj, loader_kwargs)
        ctx = settings.get("multiprocessing_context")
        if ctx is not None:
            method = ctx if isinstance(ctx, str) else ctx.get_start_method()
        else:
            from wellfed import platform

            method = platform.default_start_method()
    report = diagnose(obj, loader_kwargs=loader_kwargs, live=False, start_methods=[method])
    return report.errors


def worker_reads(dataset: Any, *, collate_fn: Any = None) -> frozenset[str] | None:
    """The instance attributes of ``dataset`` that its worker code reads.

    Worker code: the class's ``__getitem__``/``__getitems__``/``__iter__``/``__call__`` and
    the ``self.`` methods they call, plus ``collate_fn`` when it is a bound method of
    ``dataset`` (``collate_fn=dataset.collate_fn``). Read from the source, never run.

    Returns:
        The attribute names (empty when worker code reads none), or None when the class's
        code is not the user's to read (the standard library, installed packages, no source).
    """
    from wellfed.doctor._source import analyze_class, is_user_code

    cls = type(dataset)
    if not is_user_code(cls):
        return None
    hooks: tuple[str, ...] = ()
    name = getattr(collate_fn, "__name__", None)
    if collate_fn is not None and getattr(collate_fn, "__self__", None) is dataset:
        hooks = (name,) if isinstance(name, str) else ()
    return frozenset(analyze_class(cls, hooks).reads)
