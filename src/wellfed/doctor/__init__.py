"""``wellfed doctor``: find every worker hazard in a dataset, with its attribute path, why and fix.

Static checks walk the object graph that DataLoader workers receive (see ``_graph``), read
the source of worker code (``_source``) and compare the loader settings with this machine
(``_checks``). The live probe (``_probe``) then runs the target in real workers under each
start method, in an isolated child, and confirms or refutes what the static checks suspect.

Example:
    >>> report = wellfed.diagnose(dataset, loader_kwargs={"num_workers": 4}, live=False)
    >>> for f in report.errors:
    ...     print(f.path, f.fix)
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
import time
from collections.abc import Iterable, Mapping
from typing import Any

from wellfed.doctor._checks import run_checks
from wellfed.doctor._classify import is_iterable
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
    render_text,
)
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
    "render_text",
    "static_errors",
]

_KNOWN_METHODS = ("fork", "spawn", "forkserver")

#: DataLoader arguments the doctor reads.
_SETTING_NAMES = (
    "num_workers",
    "batch_size",
    "prefetch_factor",
    "persistent_workers",
    "pin_memory",
    "collate_fn",
    "worker_init_fn",
    "sampler",
    "batch_sampler",
    "multiprocessing_context",
    "timeout",
    "seed",  # wellfed.create_dataloader(seed=...): per-sample seeding is in use
)


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
    dataset, settings, from_loader = _unpack(obj, loader_kwargs)
    methods = _resolve_methods(start_methods, settings, platform)
    ctx = Context(dataset, from_loader, settings, methods, platform, length=_safe_len(dataset))
    seen: set[int] = set()
    ctx.walks["dataset"] = walk(dataset, "dataset", seen=seen)
    for name in ("collate_fn", "worker_init_fn", "sampler", "batch_sampler"):
        value = settings.get(name)
        if value is None or (name == "collate_fn" and _is_default_collate(value)):
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
        live_s = time.perf_counter() - t0
    walks = ctx.walks.values()
    return DoctorReport(
        findings=_ordered(_dedupe(findings)),
        target=_describe(dataset, ctx.length, from_loader),
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
        _, settings, _ = _unpack(obj, loader_kwargs)
        ctx = settings.get("multiprocessing_context")
        if ctx is not None:
            method = ctx if isinstance(ctx, str) else ctx.get_start_method()
        else:
            from wellfed import platform

            method = platform.default_start_method()
    report = diagnose(obj, loader_kwargs=loader_kwargs, live=False, start_methods=[method])
    return report.errors


def _unpack(obj: Any, loader_kwargs: Mapping[str, Any] | None) -> tuple[Any, dict[str, Any], bool]:
    """(dataset, settings, from_loader) from a Dataset, DataLoader or LoaderSpec."""
    settings: dict[str, Any] = {}
    from_loader = False
    torch = sys.modules.get("torch")
    dataset = obj
    if torch is not None and isinstance(obj, torch.utils.data.DataLoader):
        from_loader = True
        dataset = obj.dataset
        for name in _SETTING_NAMES:
            if hasattr(obj, name):
                settings[name] = getattr(obj, name)
        if obj.batch_sampler is not None and hasattr(obj.batch_sampler, "batch_size"):
            settings["batch_size"] = obj.batch_sampler.batch_size
        for name in ("sampler", "batch_sampler"):
            value = settings.get(name)
            # A BatchSampler passed as sampler= (with batch_size=None) is the user's choice:
            # its items, lists of indices, are what __getitem__ takes.
            batches_as_sampler = name == "sampler" and type(value).__name__ == "BatchSampler"
            if value is None or (_is_default_sampler(value) and not batches_as_sampler):
                settings.pop(name, None)
    elif hasattr(obj, "dataset") and callable(getattr(obj, "loader_kwargs", None)):
        from_loader = getattr(obj, "user_config", None) is not None  # a LoaderSpec
        dataset = obj.dataset
        with contextlib.suppress(Exception):
            settings.update(obj.loader_kwargs())
        if getattr(obj, "user_config", True) is None:
            # A bare dataset: the worker settings are the defaults, not the user's choice.
            for name in ("num_workers", "persistent_workers", "prefetch_factor", "pin_memory"):
                settings.pop(name, None)
    if loader_kwargs:
        from_loader = True
        settings.update(dict(loader_kwargs))
    if settings.get("num_workers") == 0 and loader_kwargs is None and not from_loader:
        settings.pop("num_workers")
    return dataset, settings, from_loader


def _is_default_sampler(sampler: Any) -> bool:
    if sampler is None:
        return False
    mod = type(sampler).__module__
    return (
        mod == "torch.utils.data.sampler"
        and type(sampler).__name__
        in (
            "SequentialSampler",
            "RandomSampler",
            "BatchSampler",
            "_InfiniteConstantSampler",
        )
        and (type(sampler).__name__ != "BatchSampler" or _is_default_sampler(sampler.sampler))
    )


def _is_default_collate(fn: Any) -> bool:
    mod = getattr(fn, "__module__", "") or ""
    return mod.startswith("torch.utils.data") and getattr(fn, "__name__", "") in (
        "default_collate",
        "default_convert",
    )


def _resolve_methods(
    requested: str | Iterable[str] | None, settings: dict[str, Any], platform: PlatformInfo
) -> tuple[str, ...]:
    available = tuple(platform.start_methods)
    if requested is None:
        ctx = settings.get("multiprocessing_context")
        if ctx is not None:
            name = ctx if isinstance(ctx, str) else ctx.get_start_method()
            return (name,)
        return tuple(m for m in _KNOWN_METHODS if m in available) or available
    names = (requested,) if isinstance(requested, str) else tuple(requested)
    for name in names:
        if name not in _KNOWN_METHODS:
            raise ConfigError(
                f"Unknown start method: start_methods contains {name!r}, which multiprocessing "
                f"does not know. Use one or more of {', '.join(_KNOWN_METHODS)}.",
                attribute="start_methods",
                value=name,
            )
        if name not in available:
            raise ConfigError(
                f"Start method not available here: start_methods contains {name!r}, but this "
                f"platform ({platform.os}) offers only {', '.join(available)}. Pick one of those.",
                attribute="start_methods",
                value=name,
            )
    return tuple(dict.fromkeys(names))


def _safe_len(dataset: Any) -> int | None:
    try:
        return len(dataset)
    except Exception:
        return None


def _describe(dataset: Any, length: int | None, from_loader: bool) -> str:
    size = f"{length:,} samples" if length is not None else "no len()"
    kind = "iterable" if not hasattr(dataset, "__getitem__") or is_iterable(dataset) else "map"
    where = "DataLoader over " if from_loader else ""
    return f"{where}{type(dataset).__module__}.{type(dataset).__qualname__} ({kind}, {size})"


def _dedupe(findings: list[Finding]) -> list[Finding]:
    """One finding per (code, path, severity); start methods merged."""
    merged: dict[tuple[str, str, str], Finding] = {}
    for f in findings:
        key = (f.code, f.path, f.severity)
        if key in merged:
            old = merged[key]
            methods = tuple(m for m in _KNOWN_METHODS if m in old.start_methods + f.start_methods)
            merged[key] = dataclasses.replace(old, start_methods=methods)
        else:
            merged[key] = f
    return list(merged.values())


def _ordered(findings: list[Finding]) -> tuple[Finding, ...]:
    rank = {s: i for i, s in enumerate(SEVERITIES)}
    return tuple(sorted(findings, key=lambda f: (rank.get(f.severity, 9), f.code, f.path)))
