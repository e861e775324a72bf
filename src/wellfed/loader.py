"""``create_dataloader``: a seeded DataLoader with worker settings that fit this machine.

It resolves each "auto" setting once (``wellfed.tune.auto_workers`` for the worker count: a
stored tune result, else the CPU rule; the platform for the start method and pinning), runs
the doctor's static checks for the chosen start method before any worker exists, applies the
``on_unsafe`` policy to what they find, and keeps every decision on ``loader.plan``. The loader
itself is a ``wellfed.seeded_loader.SeededDataLoader``: batches that are a pure function of
(seed, epoch, indices), whatever the worker count, start method or resume point (see
``docs/reproducibility.md``).
"""

from __future__ import annotations

import logging
import multiprocessing
import sys
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import IO, Any, cast

import torch
from torch.utils.data import DataLoader

from wellfed import platform as _platform
from wellfed._text import hang
from wellfed.errors import (
    ConfigError,
    WorkerSafetyError,
    WorkerSafetyWarning,
    check_option,
    is_auto_or_count,
)
from wellfed.platform import is_rank_zero, is_windows, usable_cpu_count
from wellfed.seeded_loader import SeededDataLoader
from wellfed.seeding import _check_seed
from wellfed.tune import auto_workers, cpu_worker_rule

__all__ = [
    "LoaderPlan",
    "ResolvedSetting",
    "SeededDataLoader",
    "WorkerSafetyWarning",
    "create_dataloader",
    "format_dataloader_config",
    "get_recommended_num_workers",
    "is_windows",
    "print_dataloader_config",
    "recommend_num_workers",
]

logger = logging.getLogger(__name__)

_ON_UNSAFE = ("raise", "warn", "fallback")
_AUTO = "auto"

#: The start of torch's warning in ``DataLoader.check_worker_number_rationality`` (torch 2.x).
_TORCH_WORKER_COUNT_WARNING = r"This DataLoader will create \d+ worker processes in total"


# --- small helpers ---------------------------------------------------------------------------


def recommend_num_workers() -> tuple[int, str]:
    """Worker count from usable CPUs per local rank, with the reason: the CPU rule alone.

    Kept as an alias of ``wellfed.tune.cpu_worker_rule`` (one rule, one implementation);
    ``get_recommended_num_workers`` is the public name, and it asks a stored tune result first.
    """
    return cpu_worker_rule()


def get_recommended_num_workers(dataset: Any = None, *, batch_size: int | None = None) -> int:
    """Worker count to use here (note 002's helper): a stored tune result, else the CPU rule.

    Unlike note 002's version it does not return 0 on Windows (see ``is_windows``). The rule
    is ``wellfed.tune.auto_workers``, the same one ``create_dataloader(num_workers="auto")``
    and ``precompute(num_workers="auto")`` use.

    Args:
        dataset: When given, a ``wellfed tune`` result stored for this dataset is used first.
        batch_size: Batch size to match the stored result against; None matches any.

    Returns:
        Number of worker processes, >= 0.
    """
    return auto_workers(dataset, batch_size).num_workers


# --- "auto" resolution and the plan ----------------------------------------------------------


@dataclass(frozen=True)
class ResolvedSetting:
    """One DataLoader option as ``create_dataloader`` decided it.

    Attributes:
        name: Option name, e.g. "num_workers".
        requested: What the caller passed (often "auto").
        value: The value the DataLoader got.
        reason: Why, in words (the INFO log line says the same).
    """

    name: str
    requested: Any
    value: Any
    reason: str

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict (values turned into strings where not JSON types)."""
        return {
            "name": self.name,
            "requested": _jsonable(self.requested),
            "value": _jsonable(self.value),
            "reason": self.reason,
        }


@dataclass(frozen=True)
class LoaderPlan:
    """Everything ``create_dataloader`` decided, kept on ``loader.plan``.

    Attributes:
        settings: The resolved options, in resolution order.
        seed: The loader's seed, or None.
        start_method: Start method the workers use ("fork", "spawn", "forkserver"); None with
            ``num_workers=0``.
        on_unsafe: The policy given.
        safety_checked: Whether the doctor's static checks ran.
        findings: Error-severity findings of the doctor (``wellfed.Finding``), possibly empty.
        action: What happened because of them: "none", "raised", "warned", "fell_back".
    """

    settings: tuple[ResolvedSetting, ...]
    seed: int | None
    start_method: str | None
    on_unsafe: str
    safety_checked: bool
    findings: tuple[Any, ...] = ()
    action: str = "none"

    def setting(self, name: str) -> ResolvedSetting:
        """The resolved setting called ``name``.

        Raises:
            KeyError: No such setting.
        """
        for s in self.settings:
            if s.name == name:
                return s
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict of the fields."""
        return {
            "settings": [s.to_dict() for s in self.settings],
            "seed": self.seed,
            "start_method": self.start_method,
            "on_unsafe": self.on_unsafe,
            "safety_checked": self.safety_checked,
            "findings": [f.to_dict() for f in self.findings],
            "action": self.action,
        }


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return repr(value)


def _check_choice(name: str, value: Any, ok: bool, expected: str) -> None:
    check_option(name, value, ok, expected, code="WF202")


def _resolve_num_workers(num_workers: Any, dataset: Any, batch_size: Any) -> tuple[int, str, Any]:
    """(num_workers, reason, stored TuneResult or None)."""
    if num_workers != _AUTO:
        return int(num_workers), "given", None
    auto = auto_workers(dataset, batch_size if isinstance(batch_size, int) else None)
    reason = auto.reason
    cpus = usable_cpu_count()
    if auto.result is not None and auto.num_workers > cpus:
        reason += f"; {_beyond_cpus_evidence(auto.result, auto.num_workers, cpus)}"
    busy = getattr(auto.result, "contention", None) or {}
    if busy.get("contended"):
        reason += (
            f"; measured under contention (other processes kept {busy.get('other_cpus', 0):.1f} "
            f"of {busy.get('usable_cpus', '?')} usable CPUs busy): it may pick too few workers; "
            "run wellfed tune again on a quiet machine"
        )
    return auto.num_workers, reason, auto.result


def _beyond_cpus_evidence(result: Any, n: int, cpus: int) -> str:
    """Why a measured worker count above the usable CPUs stands: the figures behind it.

    torch warns at every iterator that ``n`` workers exceed its "suggested max" (the affinity
    mask). Where the stored measurement says ``n`` wins, the warning is the folklore this
    library replaces: the reason says so with the figures and the loader keeps torch quiet
    (issue 15).
    """
    picked = result.recommended
    within = [
        t
        for t in result.trials
        if t.ok and t.config.num_threads == 0 and t.config.num_workers <= cpus
    ]
    best = max(within, key=lambda t: t.samples_per_s or 0.0, default=None)
    vs = (
        f"{picked.samples_per_s:.0f} vs {best.samples_per_s:.0f} samples/s at "
        f"{best.config.num_workers}"
        if best is not None and picked.samples_per_s and best.samples_per_s
        else "no configuration within the CPUs measured as fast"
    )
    return (
        f"more workers than the {cpus} usable CPUs because they measured faster ({vs}; "
        "likely because loading waits on I/O or sleeps), so torch's 'suggested max number of "
        "worker' warning is silenced for this loader"
    )


def _stored_config(stored: Any) -> Any:
    """The recommended LoaderConfig of a stored TuneResult, or None."""
    return getattr(getattr(stored, "recommended", None), "config", None)


def _resolve_threads(
    num_threads: Any, num_workers: Any, n: int, reason: str, stored: Any
) -> tuple[int, str, int, str]:
    """(num_threads, its reason, num_workers, its reason): threads exclude processes."""
    if num_threads != _AUTO:
        threads = int(num_threads)
        if threads and num_workers == _AUTO:
            return threads, "given", 0, "num_threads given: thread workers exclude processes"
        return threads, "given", n, reason
    config = _stored_config(stored)
    if num_workers == _AUTO and config is not None:
        threads = int(getattr(config, "num_threads", 0) or 0)
        if threads:
            return threads, reason, n, reason
        return 0, "stored wellfed tune result: no thread workers", n, reason
    if num_workers == _AUTO:
        return 0, "no stored tune result (tune measures thread workers)", n, reason
    return 0, "num_workers given", n, reason


def _resolve_batched_fetch(
    batched_fetch: Any, num_workers: Any, stored: Any, batch_size: Any, kwargs: Mapping[str, Any]
) -> tuple[bool, str]:
    """(batched_fetch, reason)."""
    if batched_fetch != _AUTO:
        return bool(batched_fetch), "given"
    config = _stored_config(stored)
    if num_workers != _AUTO or config is None or not getattr(config, "batched_fetch", False):
        return False, "no stored tune result chose it" if num_workers == _AUTO else "not asked for"
    blockers = [
        name for name in ("collate_fn", "batch_sampler", "sampler") if kwargs.get(name) is not None
    ]
    if blockers or not isinstance(batch_size, int):
        why = ", ".join(f"{b} given" for b in blockers) or "batch_size=None"
        return False, f"the stored tune result chose it, but {why} here"
    return True, "stored wellfed tune result (list indexing checked live to match)"


def _stored_or_given_prefetch(prefetch_factor: Any, stored: Any) -> tuple[int | None, str]:
    if prefetch_factor != _AUTO:
        return cast("int | None", prefetch_factor), "given"
    stored_pf = getattr(_stored_config(stored), "prefetch_factor", None)
    if isinstance(stored_pf, int):
        return stored_pf, "stored wellfed tune result"
    return 2, "torch's default"


def _resolve_start_method(context: Any) -> tuple[Any, str | None, str]:
    """(value for DataLoader, start method name, reason), for num_workers >= 1."""
    cuda_up = bool(torch.cuda.is_initialized())  # type: ignore[no-untyped-call]
    if context == _AUTO or context is None:
        default = _platform.default_start_method()
        if context == _AUTO and cuda_up and default == "fork":
            available = multiprocessing.get_all_start_methods()
            method = "forkserver" if "forkserver" in available else "spawn"
            return (
                method,
                method,
                "CUDA is initialised in this process and a forked child cannot use it, so "
                "not the platform default 'fork'",
            )
        return None, default, "platform default" if context == _AUTO else "given (None)"
    method = context if isinstance(context, str) else context.get_start_method()
    if method == "fork" and cuda_up and is_rank_zero():
        warnings.warn(
            "Risky start method kept: multiprocessing_context='fork' was given while CUDA is "
            "initialised in this process; a forked worker that touches CUDA fails with "
            "'Cannot re-initialize CUDA in forked subprocess'. Keep CUDA out of the dataset, "
            "or pass multiprocessing_context='forkserver' (or 'spawn'). [WF210]",
            WorkerSafetyWarning,
            stacklevel=3,
        )
    return context, method, "given"


def _safety_check(
    dataset: Any, loader_kwargs: dict[str, Any], method: str
) -> tuple[bool, tuple[Any, ...]]:
    """Run the doctor's static checks with the resolved DataLoader options; (ran, errors).

    A missing or broken doctor is an error, never a silently skipped check.
    """
    from wellfed.doctor import static_errors

    return True, static_errors(dataset, loader_kwargs=loader_kwargs, start_method=method)


def _findings_text(findings: Sequence[Any]) -> str:
    """One line per finding: path, message (which ends with its code), fix."""
    lines = []
    for f in findings:
        message = str(getattr(f, "message", "")).rstrip()
        code = getattr(f, "code", "")
        if code and f"[{code}]" not in message:
            message = f"{message} [{code}]"
        lines.append(f"  - {getattr(f, 'path', '?')}: {message} Fix: {getattr(f, 'fix', '')}")
    return "\n".join(lines)


def create_dataloader(
    dataset: Any,
    *,
    batch_size: int | None = 1,
    shuffle: bool = False,
    num_workers: int | str = _AUTO,
    seed: int | None = None,
    pin_memory: bool | str = _AUTO,
    persistent_workers: bool | str = _AUTO,
    prefetch_factor: int | str | None = _AUTO,
    multiprocessing_context: Any = _AUTO,
    num_threads: int | str = _AUTO,
    batched_fetch: bool | str = _AUTO,
    on_unsafe: str = "raise",
    **kwargs: Any,
) -> SeededDataLoader:
    """Build a DataLoader with reproducible batches and worker settings that fit this machine.

    With ``seed``, every sample's randomness (Python ``random``, numpy's global RNG, torch's
    global CPU generator, and ``wellfed.sample_rng()`` / ``wellfed.sample_generator()``) is
    seeded from (seed, epoch, index), and the shuffle order from (seed, epoch). The sequence of
    batches is then bit-identical for any ``num_workers``, under fork, spawn and forkserver,
    with or without persistent workers, and after ``load_state_dict`` into a loader with
    another ``num_workers``. An epoch advances when its iteration ends or on ``set_epoch``
    (a peek with ``next(iter(loader))`` does not move it; see ``SeededDataLoader``).

    "auto" values are resolved once, here, and each is logged at INFO with its reason (on rank
    0 only); ``loader.plan`` keeps them. Before workers start, the doctor's static checks run
    for the chosen start method with every resolved DataLoader option. When "auto" gives no
    workers, worker-only options the caller set (``multiprocessing_context``,
    ``persistent_workers``, ``prefetch_factor``, ``timeout``) cannot apply: each is dropped
    with an INFO line and marked "not used" in ``loader.plan`` (with an explicit
    ``num_workers=0`` the first three conflict, WF203; a ``timeout`` is dropped the same way).

    Args:
        dataset: Map-style dataset (required with ``seed``); ``loader.dataset`` is this object.
        batch_size: Samples per batch per process; None disables automatic batching.
        shuffle: Shuffle each epoch (from (seed, epoch) when seeded, else torch's global RNG).
        num_workers: Worker processes, or "auto": the ``num_workers`` of a ``wellfed tune``
            result stored for this dataset, otherwise ``recommend_num_workers()`` (usable CPUs
            per local rank, minus one). Tune results live in ``$WELLFED_CACHE_DIR/tune/``
            (default ``~/.cache/wellfed/tune``), one JSON file per dataset fingerprint (type,
            length, plain attributes such as ``root``) and machine (hostname, usable CPUs),
            looked up at this ``batch_size`` (``wellfed.tune.load_stored_result``).
        seed: Non-negative int; None gives a plain DataLoader (no per-sample seeding, no
            ``state_dict``).
        pin_memory: Page-locked batches, or "auto": True when a CUDA device is present.
        persistent_workers: Keep workers between epochs, or "auto": True when there are
            workers (a spawn start re-imports the dataset's modules in every worker, each epoch),
            except when the doctor finds dataset state changed after the workers copy it
            (WF111: persistent workers would keep the stale copy for good); then False, and the
            reason is logged.
        prefetch_factor: Batches loaded ahead per worker, or "auto": the stored tune result's,
            else torch's default (2); None with no workers.
        multiprocessing_context: "fork", "spawn", "forkserver", a context, None (platform
            default), or "auto": the platform default, except that after CUDA was initialised
            in this process it is never fork (forkserver, else spawn).
        num_threads: Thread workers fetching batches in the main process (they exclude
            worker processes), or "auto": the stored tune result's (when ``num_workers`` is
            "auto" too), else 0. With a seed, batches under threads are bit-identical to
            ``num_workers=0`` when the dataset draws its randomness from
            ``wellfed.sample_rng()`` / ``wellfed.sample_generator()`` (threads share the
            process-wide RNGs, which wellfed then leaves alone).
        batched_fetch: Fetch each batch with one ``dataset[list_of_indices]`` call (a
            ``TensorDataset``-like dataset, default collate), or "auto": the stored tune
            result's (tune turns it on only after checking live that the dataset's list
            indexing returns the collated batch), else False.
        on_unsafe: What to do when the doctor finds errors for workers: "raise"
            (``WorkerSafetyError``), "warn" (``WorkerSafetyWarning``, then go on) or
            "fallback" (``num_workers=0``, with a ``WorkerSafetyWarning`` naming the findings).
            Windows keeps its workers unless a finding says otherwise.
        **kwargs: Other DataLoader arguments (``sampler``, ``batch_sampler``, ``collate_fn``,
            ``drop_last``, ``timeout``, ``worker_init_fn``, ...), passed on unchanged; and
            ``SeededDataLoader``'s own ``sample_seeds=True`` (with a seed): each batch comes as
            ``wellfed.SeededBatch(batch, seeds)``, for per-sample random transforms on the
            device (``wellfed.to_device``, ``docs/device.md``).

    Returns:
        A SeededDataLoader (a ``torch.utils.data.DataLoader`` subclass).

    Raises:
        ConfigError: An invalid option (WF202), a seed that is not a non-negative int (WF201),
            conflicting options (WF203), or ``seed`` with an IterableDataset (WF204).
        ImportError: ``wellfed.doctor`` cannot be imported: the safety check is never skipped.
        WorkerSafetyError: ``on_unsafe="raise"`` and the doctor found errors; the message lists
            each finding's path and fix, ``.findings`` holds them (WF205).

    Example:
        >>> loader = wellfed.create_dataloader(ds, batch_size=32, shuffle=True, seed=0)
        >>> for epoch in range(2):
        ...     for batch in loader:  # epoch 0, then epoch 1
        ...         ...
    """
    _check_choice("on_unsafe", on_unsafe, on_unsafe in _ON_UNSAFE, "'raise', 'warn' or 'fallback'")
    _check_choice(
        "num_workers",
        num_workers,
        is_auto_or_count(num_workers),
        "'auto' or an int >= 0",
    )
    _check_choice(
        "pin_memory",
        pin_memory,
        pin_memory == _AUTO or isinstance(pin_memory, bool),
        "'auto', True or False",
    )
    _check_choice(
        "persistent_workers",
        persistent_workers,
        persistent_workers == _AUTO or isinstance(persistent_workers, bool),
        "'auto', True or False",
    )
    _check_choice(
        "prefetch_factor",
        prefetch_factor,
        prefetch_factor is None or is_auto_or_count(prefetch_factor, 1),
        "'auto', None or an int >= 1",
    )
    if seed is not None:
        _check_seed(seed)

    _check_choice(
        "num_threads", num_threads, is_auto_or_count(num_threads), "'auto' or an int >= 0"
    )
    _check_choice(
        "batched_fetch",
        batched_fetch,
        batched_fetch == _AUTO or isinstance(batched_fetch, bool),
        "'auto', True or False",
    )
    settings: dict[str, ResolvedSetting] = {}
    n, reason, stored = _resolve_num_workers(num_workers, dataset, batch_size)
    threads, threads_reason, n, reason = _resolve_threads(
        num_threads, num_workers, n, reason, stored
    )
    settings["num_workers"] = ResolvedSetting("num_workers", num_workers, n, reason)
    settings["num_threads"] = ResolvedSetting("num_threads", num_threads, threads, threads_reason)
    batched, batched_reason = _resolve_batched_fetch(
        batched_fetch, num_workers, stored, batch_size, kwargs
    )
    settings["batched_fetch"] = ResolvedSetting(
        "batched_fetch", batched_fetch, batched, batched_reason
    )
    timeout = kwargs.get("timeout", 0)

    # pinned memory (does not depend on workers)
    if pin_memory == _AUTO:
        cuda = bool(torch.cuda.is_available())
        pin = cuda
        reason = "a CUDA device is present" if cuda else "no CUDA device"
    else:
        pin, reason = bool(pin_memory), "given"
    settings["pin_memory"] = ResolvedSetting("pin_memory", pin_memory, pin, reason)

    requested = {
        "multiprocessing_context": multiprocessing_context,
        "persistent_workers": persistent_workers,
        "prefetch_factor": prefetch_factor,
        "timeout": timeout,
    }
    context: Any = None
    method: str | None = None
    persistent = False
    prefetch: int | None = None
    if n == 0 and threads > 0:
        # thread workers prefetch and may time out; the process-only options cannot apply
        why = "thread workers run in the main process" if num_workers == _AUTO else None
        only_processes = {
            k: v
            for k, v in requested.items()
            if k in ("multiprocessing_context", "persistent_workers")
        }
        settings.update(_without_workers(only_processes, why))
        prefetch, reason = _stored_or_given_prefetch(prefetch_factor, stored)
        settings["prefetch_factor"] = ResolvedSetting(
            "prefetch_factor", prefetch_factor, prefetch, reason
        )
    elif n == 0:
        why = "num_workers=auto resolved to 0" if num_workers == _AUTO else None
        settings.update(_without_workers(requested, why))
    else:
        context, method, reason = _resolve_start_method(multiprocessing_context)
        settings["multiprocessing_context"] = ResolvedSetting(
            "multiprocessing_context", multiprocessing_context, method, reason
        )
        if persistent_workers == _AUTO:
            persistent = True
            reason = "workers are kept between epochs instead of restarted"
        else:
            persistent, reason = bool(persistent_workers), "given"
        settings["persistent_workers"] = ResolvedSetting(
            "persistent_workers", persistent_workers, persistent, reason
        )
        prefetch, reason = _stored_or_given_prefetch(prefetch_factor, stored)
        settings["prefetch_factor"] = ResolvedSetting(
            "prefetch_factor", prefetch_factor, prefetch, reason
        )

    # worker safety, before any worker exists, judged with every resolved option
    findings: tuple[Any, ...] = ()
    checked = False
    action = "none"
    if n > 0 and method is not None:
        loader_kwargs: dict[str, Any] = {
            name: kwargs.get(name)
            for name in ("sampler", "batch_sampler", "collate_fn", "worker_init_fn")
        }
        loader_kwargs.update(
            num_workers=n,
            multiprocessing_context=method,
            persistent_workers=persistent,
            prefetch_factor=prefetch,
            pin_memory=pin,
            batch_size=batch_size,
            timeout=timeout,
            seed=seed,
        )
        checked, findings = _safety_check(dataset, loader_kwargs, method)
        stale = [f for f in findings if getattr(f, "code", "") == "WF111"]
        if stale and persistent_workers == _AUTO:
            # Persistent workers would keep the stale copy for every epoch; restarted workers
            # get a fresh copy each epoch (the doctor then judges WF111 a warning, not an error).
            findings = tuple(f for f in findings if getattr(f, "code", "") != "WF111")
            paths = ", ".join(sorted({str(getattr(f, "path", "?")) for f in stale}))
            persistent = False
            settings["persistent_workers"] = ResolvedSetting(
                "persistent_workers",
                _AUTO,
                False,
                f"{paths} is changed after the workers copy the dataset (WF111): persistent "
                "workers would keep the stale copy for every epoch, so workers restart each "
                "epoch instead",
            )
        if findings:
            text = _findings_text(findings)
            head = (
                f"{len(findings)} hazard(s) would break or corrupt data in workers: "
                f"num_workers={n}, start method {method!r}"
            )
            if on_unsafe == "raise":
                raise WorkerSafetyError(
                    f"Worker safety check failed: {head}.\n{text}\nFix each one, or pass "
                    "on_unsafe='fallback' to load in the main process (num_workers=0), or "
                    "on_unsafe='warn' to go on anyway. [WF205]",
                    code="WF205",
                    findings=list(findings),
                    num_workers=n,
                    start_method=method,
                )
            if on_unsafe == "warn":
                action = "warned"
                if is_rank_zero():
                    warnings.warn(
                        f"Going on despite worker hazards (on_unsafe='warn'): {head}.\n{text}\n"
                        "Fix each one, or pass on_unsafe='fallback'. [WF206]",
                        WorkerSafetyWarning,
                        stacklevel=2,
                    )
            else:
                action = "fell_back"
                why = f"on_unsafe='fallback': {len(findings)} worker hazard(s) found"
                settings["num_workers"] = ResolvedSetting("num_workers", num_workers, 0, why)
                had = n
                n, context, method, persistent, prefetch = 0, None, None, False, None
                settings.update(_without_workers(requested, why))
                unused = [
                    f"{s.name}={s.requested!r}"
                    for s in settings.values()
                    if s.reason.startswith("not used") and s.requested not in (_AUTO, None)
                ]
                also = f" Also not used without workers: {', '.join(unused)}." if unused else ""
                if is_rank_zero():
                    warnings.warn(
                        f"Loading in the main process (on_unsafe='fallback'): {head}.\n{text}\n"
                        f"num_workers {had} -> 0.{also} Fix each "
                        "finding to get the workers back. [WF207]",
                        WorkerSafetyWarning,
                        stacklevel=2,
                    )

    if threads > 0 and is_rank_zero():
        from wellfed.doctor import thread_worker_hazards

        for hazard in thread_worker_hazards(dataset):
            warnings.warn(
                f"Thread workers share {hazard['path']} (num_threads={threads}): "
                f"{hazard['why']}. Fix: {hazard['fix']}. [WF212]",
                WorkerSafetyWarning,
                stacklevel=2,
            )

    if is_rank_zero():
        for s in settings.values():
            if s.requested == _AUTO or s.reason.startswith(("on_unsafe", "not used")):
                logger.info("%s=%s -> %r (%s)", s.name, s.requested, s.value, s.reason)

    loader_args: dict[str, Any] = dict(kwargs)
    loader_args.update(
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=n,
        pin_memory=pin,
        persistent_workers=persistent,
        prefetch_factor=prefetch,
        num_threads=threads,
        batched_fetch=batched,
    )
    if n > 0 and context is not None:
        loader_args["multiprocessing_context"] = context
    if n == 0 and threads == 0 and "timeout" in loader_args:
        loader_args["timeout"] = 0  # torch asserts timeout == 0 without workers (named above)
    # a stored measurement chose more workers than CPUs (its reason gives the figures)
    measured_beyond_cpus = stored is not None and n > usable_cpu_count()
    with warnings.catch_warnings():
        if measured_beyond_cpus:
            warnings.filterwarnings("ignore", message=_TORCH_WORKER_COUNT_WARNING)
        loader = SeededDataLoader(dataset, seed=seed, **loader_args)
    loader._wf_workers_measured = measured_beyond_cpus
    order = (
        "num_workers",
        "num_threads",
        "batched_fetch",
        "multiprocessing_context",
        "pin_memory",
        "persistent_workers",
        "prefetch_factor",
        "timeout",
    )
    loader.plan = LoaderPlan(
        settings=tuple(settings[name] for name in order if name in settings),
        seed=seed,
        start_method=method if n else None,
        on_unsafe=on_unsafe,
        safety_checked=checked,
        findings=findings,
        action=action,
    )
    return loader


def _without_workers(requested: Mapping[str, Any], why: str | None) -> dict[str, ResolvedSetting]:
    """Settings of the worker-only options when there are no workers.

    ``why`` says where the 0 came from when the user did not ask for it ("auto", or the
    fallback): options the user set then cannot apply and are marked "not used: <why>" (logged
    at INFO, named in the plan). With an explicit ``num_workers=0`` (``why`` None) they
    conflict with it (WF203). A ``timeout`` is never an error: there is nothing to wait for.
    """
    out: dict[str, ResolvedSetting] = {}
    for name, value in requested.items():
        if name == "timeout":
            if value:
                out[name] = ResolvedSetting(
                    name, value, 0, "not used: no workers to wait for (torch requires 0)"
                )
            continue
        unset = value in (_AUTO, None) or (name == "persistent_workers" and value is False)
        if unset:
            out[name] = ResolvedSetting(
                name, value, False if name == "persistent_workers" else None, "no workers"
            )
        elif why is not None:
            empty = False if name == "persistent_workers" else None
            out[name] = ResolvedSetting(name, value, empty, f"not used: {why}")
        else:
            what = {
                "multiprocessing_context": "there are no worker processes to start",
                "persistent_workers": "there are no workers to keep",
                "prefetch_factor": "only workers prefetch",
            }[name]
            raise ConfigError(
                f"Conflicting options: {name}={value!r} with num_workers=0: {what}. "
                f"Drop {name} or set num_workers >= 1. [WF203]",
                code="WF203",
                attribute=name,
                value=value,
            )
    return out


def print_dataloader_config(
    loader: DataLoader[Any] | None = None, *, file: IO[str] | None = None, **settings: Any
) -> None:
    """Print a DataLoader's configuration (note 002's debugging helper); returns None.

    The text is ``format_dataloader_config``'s; this is note 002's name for printing it, and
    the one wellfed function meant to print (the rest of the library returns text). It
    returns None so that a REPL or notebook does not echo the text a second time (issue 15);
    call ``format_dataloader_config`` for the string.

    Args:
        loader: A DataLoader, or None to show ``settings`` only.
        file: Where to print; None prints to ``sys.stdout``.
        **settings: Extra name=value pairs to show.
    """
    print(
        format_dataloader_config(loader, **settings), file=file if file is not None else sys.stdout
    )


def format_dataloader_config(loader: DataLoader[Any] | None = None, **settings: Any) -> str:
    """A DataLoader's configuration as text, one setting a line; nothing is printed.

    Pass a loader (its resolved ``plan`` is shown when ``create_dataloader`` built it, with
    the reason for each "auto" value), or note 002's keyword settings
    (``num_workers=0, batch_size=32, seed=42, shuffle=True``).

    Args:
        loader: A DataLoader, or None to show ``settings`` only.
        **settings: Extra name=value pairs to show.

    Returns:
        The text, starting "DataLoader configuration" (no trailing newline), within
        ``wellfed._text.CODE_WIDTH`` (79) columns: a long reason continues on the next lines,
        beneath its value, broken between words.
    """
    rows: list[tuple[str, str]] = []
    if loader is not None:
        rows.append(("dataset", type(loader.dataset).__name__))
        plan = getattr(loader, "plan", None)
        resolved = {s.name: s for s in plan.settings} if plan is not None else {}
        for name in (
            "batch_size",
            "num_workers",
            "multiprocessing_context",
            "pin_memory",
            "persistent_workers",
            "prefetch_factor",
            "drop_last",
            "timeout",
        ):
            if name == "multiprocessing_context":
                ctx = loader.multiprocessing_context
                value: Any = None if ctx is None else ctx.get_start_method()
                if value is None and loader.num_workers > 0:
                    value = f"{_platform.default_start_method()} (platform default)"
            else:
                value = getattr(loader, name, None)
            text = repr(value) if not isinstance(value, str) else value
            if name in resolved and resolved[name].requested == _AUTO:
                text += f"  (auto: {resolved[name].reason})"
            rows.append((name, text))
        rows.append(("seed", repr(getattr(loader, "seed", None))))
        if plan is not None and plan.findings:
            rows.append(("worker hazards", f"{len(plan.findings)} ({plan.action})"))
    for name, value in settings.items():
        rows.append((name, repr(value)))
    rows.append(
        (
            "platform",
            f"{sys.platform}, default start method "
            f"{_platform.default_start_method()}, {_platform.usable_cpu_count()} usable CPUs",
        )
    )
    width = max(len(r[0]) for r in rows)
    # a long reason continues beneath its value, broken between words (issue 15: a terminal
    # broke it mid-word)
    lines = [line for k, v in rows for line in hang(f"  {k:<{width}}  ", v)]
    return "DataLoader configuration\n" + "\n".join(lines)
