"""``verify_reproducibility``: build a loader several ways and compare every batch's digest.

A loader is reproducible when the sequence of batches depends only on its seed: the same for
every worker count and start method. This module runs the loader under each configuration,
hashes each batch (and each sample in it), and, at the first difference, says which batch and
sample differ and the likely cause.
"""

from __future__ import annotations

import logging
import multiprocessing
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from wellfed._digest import batch_digest
from wellfed.errors import ConfigError, WorkerSafetyError, check_option, is_count

__all__ = [
    "ReproMismatch",
    "ReproReport",
    "ReproRun",
    "batch_digest",
    "loader_factory",
    "verify_reproducibility",
]

logger = logging.getLogger(__name__)

_RNG_CATEGORY = "rng-duplication"
_DEFAULT_TIMEOUT_S = 120.0
_SAMPLE_RNG_HINT = (
    "With create_dataloader(seed=...), draw from wellfed.sample_rng() / "
    "wellfed.sample_generator() inside __getitem__ instead: those are seeded per sample, while "
    "reseeding per worker still changes with num_workers."
)


@dataclass(frozen=True)
class ReproRun:
    """One configuration the loader ran under.

    Attributes:
        num_workers: Worker processes.
        start_method: "fork", "spawn", "forkserver", or None with no workers.
        batches: Batches delivered over all epochs.
        seconds: Wall time to build the loader and run all epochs, s.
        matches_reference: Every batch equal to the reference run's (the first run).
        error: The exception text when the run failed, else None.
    """

    num_workers: int
    start_method: str | None
    batches: int
    seconds: float
    matches_reference: bool
    error: str | None = None

    @property
    def label(self) -> str:
        """``num_workers=2, spawn`` style label."""
        if self.num_workers == 0:
            return "num_workers=0"
        return f"num_workers={self.num_workers}, {self.start_method}"

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict of the fields."""
        return {
            "num_workers": self.num_workers,
            "start_method": self.start_method,
            "batches": self.batches,
            "seconds": self.seconds,
            "matches_reference": self.matches_reference,
            "error": self.error,
        }


@dataclass(frozen=True)
class ReproMismatch:
    """The first place where a run differs from the reference.

    Attributes:
        run: Label of the differing run (``ReproRun.label``).
        epoch: Epoch of the first differing batch (from 0).
        batch: Batch number within that epoch (from 0).
        sample: Position of the first differing sample within the batch, or None when it cannot
            be told (different batch structure, or one run had fewer batches).
        reference_digest: blake2b-128 hex digest of the reference batch, or None if missing.
        digest: Digest of the differing batch, or None if missing.
    """

    run: str
    epoch: int
    batch: int
    sample: int | None
    reference_digest: str | None
    digest: str | None

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict of the fields."""
        return {
            "run": self.run,
            "epoch": self.epoch,
            "batch": self.batch,
            "sample": self.sample,
            "reference_digest": self.reference_digest,
            "digest": self.digest,
        }


@dataclass(frozen=True)
class ReproReport:
    """Result of ``verify_reproducibility``.

    Attributes:
        reproducible: True when every run delivered the same batches as the reference run.
        epochs: Epochs each run iterated.
        runs: Every run, the reference first.
        mismatch: The first difference found, or None.
        likely_cause: One or two sentences naming the most likely cause and its fix, or None.
        findings: The doctor's findings that concern randomness (``wellfed.Finding``), if any.
    """

    reproducible: bool
    epochs: int
    runs: tuple[ReproRun, ...]
    mismatch: ReproMismatch | None = None
    likely_cause: str | None = None
    findings: tuple[Any, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict of the fields."""
        return {
            "reproducible": self.reproducible,
            "epochs": self.epochs,
            "runs": [r.to_dict() for r in self.runs],
            "mismatch": None if self.mismatch is None else self.mismatch.to_dict(),
            "likely_cause": self.likely_cause,
            "findings": [f.to_dict() for f in self.findings],
        }


# --- digests ---------------------------------------------------------------------------------


def _leading(obj: Any) -> int | None:
    """The batch dimension B of a collated batch, or None when there is no common one."""
    import numpy as np
    import torch

    if isinstance(obj, (torch.Tensor, np.ndarray)):
        return int(obj.shape[0]) if obj.ndim >= 1 else None
    if isinstance(obj, dict):
        sizes = {_leading(v) for v in obj.values()}
    elif isinstance(obj, (list, tuple)):
        # default_collate turns a tuple sample into a list of batched fields
        sizes = {_leading(v) for v in obj}
        if None in sizes:  # a plain list of B samples
            return len(obj)
    else:
        return None
    if len(sizes) == 1:
        return sizes.pop()
    return None


def _row(obj: Any, i: int) -> Any:
    import numpy as np
    import torch

    if isinstance(obj, (torch.Tensor, np.ndarray)):
        return obj[i]
    if isinstance(obj, dict):
        return {k: _row(v, i) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        if any(_leading(v) is None for v in obj):
            return obj[i]
        return [_row(v, i) for v in obj]
    return obj


def _sample_digests(batch: Any) -> list[str] | None:
    b = _leading(batch)
    if b is None:
        return None
    try:
        return [batch_digest(_row(batch, i)) for i in range(b)]
    except (IndexError, TypeError, KeyError):
        return None


# --- running ---------------------------------------------------------------------------------


@dataclass
class _Trace:
    digests: list[tuple[int, int, str]]  # (epoch, batch, digest)
    samples: list[list[str] | None]


def _run(loader: Any, epochs: int, max_batches: int | None) -> _Trace:
    from wellfed.measure import close_loader, iterate

    trace = _Trace([], [])
    try:
        for epoch in range(epochs):
            if epoch and getattr(loader, "seed", None) is not None:
                # a seeded loader repeats an epoch cut short by max_batches; move on explicitly
                loader.set_epoch(loader.epoch + 1)
            for b, batch in enumerate(iterate(loader, max_batches=max_batches, keep_workers=True)):
                trace.digests.append((epoch, b, batch_digest(batch)))
                trace.samples.append(_sample_digests(batch))
    finally:
        close_loader(loader)  # persistent workers: stop them now, not at GC
    return trace


def _compare(ref: _Trace, other: _Trace, label: str) -> ReproMismatch | None:
    for pos in range(max(len(ref.digests), len(other.digests))):
        a = ref.digests[pos] if pos < len(ref.digests) else None
        b = other.digests[pos] if pos < len(other.digests) else None
        if a is not None and b is not None and a[2] == b[2]:
            continue
        where = a if a is not None else b
        assert where is not None
        sample = None
        if a is not None and b is not None:
            sa, sb = ref.samples[pos], other.samples[pos]
            if sa is not None and sb is not None:
                for i, (x, y) in enumerate(zip(sa, sb, strict=False)):
                    if x != y:
                        sample = i
                        break
                else:
                    if len(sa) != len(sb):
                        sample = min(len(sa), len(sb))
        return ReproMismatch(
            run=label,
            epoch=where[0],
            batch=where[1],
            sample=sample,
            reference_digest=None if a is None else a[2],
            digest=None if b is None else b[2],
        )
    return None


def _rng_findings(loader: Any) -> tuple[Any, ...]:
    """The doctor's rng-duplication findings (WF107, WF108) for the loader.

    The loader itself is judged, not only its dataset, so its ``worker_init_fn``, sampler and
    collate function count too.
    """
    from wellfed.doctor import diagnose

    try:
        report = diagnose(loader, live=False)
    except Exception as exc:  # the diagnosis must not hide the repro result
        logger.debug("diagnose failed during verify_reproducibility: %r", exc)
        return ()
    return tuple(
        f for f in getattr(report, "findings", ()) if getattr(f, "category", "") == _RNG_CATEGORY
    )


def _likely_cause(
    loader: Any, mismatch: ReproMismatch, ref: ReproRun, other: ReproRun, findings: Sequence[Any]
) -> str:
    if findings:
        f = findings[0]
        return (
            f"{getattr(f, 'path', 'the dataset')} holds random state that per-sample seeding "
            f"does not reach: {getattr(f, 'message', '')} {_SAMPLE_RNG_HINT}"
        )
    if mismatch.reference_digest is None or mismatch.digest is None:
        return (
            f"The runs deliver different numbers of batches ({ref.batches} vs {other.batches}): "
            "the sampler or dataset length depends on the worker configuration (an "
            "IterableDataset not sharded per worker duplicates data)."
        )
    if other.num_workers == ref.num_workers and other.start_method == ref.start_method:
        return (
            "The same configuration gave different batches twice: the data depends on "
            "something no seed controls (time, os.urandom, file order from os.listdir, "
            "str hashes without PYTHONHASHSEED, threads, or non-deterministic kernels)."
        )
    if getattr(loader, "seed", None) is None:
        kind, order, how = _shuffle_order(loader)
        workers = (
            "PyTorch seeds each worker's random and torch RNGs from base_seed + worker_id "
            "(numpy's global RNG not at all), so a random augmentation in __getitem__ depends "
            "on which worker loads the sample, and that changes with num_workers"
        )
        fix = (
            "Build it with wellfed.create_dataloader(..., seed=<int>), which seeds every "
            "sample from (seed, epoch, index) whatever the worker count"
        )
        if kind == "global":
            return (
                f"The loader is not seeded per sample: {workers} (and {order} draws from the "
                f"global RNG). {fix}."
            )
        if kind == "unknown":
            return (
                f"The loader is not seeded per sample: {workers} ({order} decides the order "
                f"itself: check that it draws from no global RNG). {fix}."
            )
        replaces = " (seed= replaces generator=)" if kind == "seeded" else ""
        return (
            f"The loader is not seeded per sample. {order[0].upper()}{order[1:]} is {how}, "
            "so every run visits the samples in the same order: the difference is in the "
            f"samples themselves. {workers}. {fix}{replaces}."
        )
    return (
        "The loader is seeded per sample, so the dataset draws randomness that wellfed does not "
        "seed: an RNG object created in __init__ (random.Random, numpy Generator/RandomState, "
        "torch.Generator), state kept between calls, or worker-dependent code "
        "(get_worker_info). Draw from wellfed.sample_rng() / wellfed.sample_generator()."
    )


def _shuffle_order(loader: Any) -> tuple[str, str, str]:
    """What decides the loader's order, and whether it is seeded: (kind, what, how).

    kind "seeded": the sampler draws from a torch.Generator (``how``: "seeded by
    loader.generator (initial seed 0)"); "sequential": a SequentialSampler, no shuffle;
    "global": a RandomSampler without a generator (torch's ``shuffle=True`` without
    ``generator=``), which draws from the global RNG; "unknown": another sampler, which
    keeps its own order. ``what`` names the sampler for the message.
    """
    import torch
    from torch.utils.data import BatchSampler, RandomSampler, SequentialSampler

    own = getattr(loader, "generator", None)
    batch_sampler = getattr(loader, "batch_sampler", None)
    candidates: list[tuple[str, Any]] = []
    if batch_sampler is not None and type(batch_sampler) is not BatchSampler:
        candidates.append(("loader.batch_sampler", batch_sampler))
        inner = getattr(batch_sampler, "sampler", None)
        if inner is not None:
            candidates.append(("loader.batch_sampler.sampler", inner))
    else:
        candidates.append(("loader.sampler", getattr(loader, "sampler", None)))
    for path, sampler in candidates:
        gen = getattr(sampler, "generator", None)
        if isinstance(gen, torch.Generator):
            where = "loader.generator" if gen is own else f"{path}.generator"
            return (
                "seeded",
                f"the shuffle ({type(sampler).__name__})",
                f"seeded by {where} (initial seed {gen.initial_seed()})",
            )
        if isinstance(sampler, RandomSampler):
            return "global", f"the shuffle ({path}, a RandomSampler without a generator)", ""
    path, sampler = candidates[-1]
    if isinstance(sampler, SequentialSampler):
        return "sequential", "the order", "sequential (a SequentialSampler: no shuffle)"
    return "unknown", f"{path} ({type(sampler).__name__})", ""


def _sampling_generators(loader: Any) -> list[Any]:
    """The torch.Generators a loader's order and worker base seed draw from: its own
    ``generator`` and that of its sampler, batch sampler and the batch sampler's sampler."""
    import torch

    batch_sampler = getattr(loader, "batch_sampler", None)
    found: list[Any] = []
    for obj in (
        loader,
        getattr(loader, "sampler", None),
        batch_sampler,
        getattr(batch_sampler, "sampler", None),
    ):
        gen = getattr(obj, "generator", None)
        if isinstance(gen, torch.Generator) and all(gen is not g for g in found):
            found.append(gen)
    return found


def _refuse_unpicklable_worker_init(loader: Any) -> None:
    """Raise WF214 before spawn/forkserver workers fail to unpickle ``loader.worker_init_fn``.

    A closure or lambda ``worker_init_fn`` (a ``seed_worker`` defined inside ``main()``, note
    002's) works under fork and fails under spawn with a bare pickling error (issue 15). It
    is there to seed the workers, which per-sample seeding makes unnecessary: the message
    says so and shows the fix.

    Raises:
        WorkerSafetyError: code WF214, ``attribute="worker_init_fn"``, ``value`` the function.
    """
    fn = getattr(loader, "worker_init_fn", None)
    if fn is None or getattr(loader, "num_workers", 0) <= 0:
        return
    method = _start_method(loader)
    if method not in ("spawn", "forkserver"):
        return
    from multiprocessing.reduction import ForkingPickler

    try:
        ForkingPickler.dumps(fn)
    except Exception as exc:
        name = getattr(fn, "__qualname__", None) or type(fn).__name__
        short = name.rpartition(".")[2]
        why = (
            "a lambda"
            if short == "<lambda>"
            else "defined inside another function (a closure)"
            if "<locals>" in name
            else "not picklable"
        )
        raise WorkerSafetyError(
            f"loader.worker_init_fn cannot reach {method} workers: {name!r} is {why}, and "
            f"{method} pickles it for each worker ({type(exc).__name__}: {exc}). "
            + _worker_init_not_needed(fn, getattr(loader, "seed", None)),
            code="WF214",
            attribute="worker_init_fn",
            value=fn,
            findings=[],
        ) from exc


def _worker_init_not_needed(fn: Any, seed: int | None) -> str:
    """Why a seeding ``worker_init_fn`` is not needed with wellfed's seeding, and the fix.

    ``fn`` is the function when known (its code is read for the name of a seeding call:
    ``random.seed``, ``np.random.seed``, ``torch.manual_seed``), else None; ``seed`` is the
    loader's per-sample seed, or None for a loader without one.
    """
    code = getattr(fn, "__code__", None)
    calls = sorted({n for n in getattr(code, "co_names", ()) if "seed" in n.lower()})
    short = (getattr(fn, "__qualname__", None) or "").rpartition(".")[2]
    more = (
        f"; if it does more than seed, move {short!r} to module level and pass what it "
        "captured with functools.partial"
        if short
        else ""
    )
    does = (
        f"It seeds the workers' RNGs (its code calls {', '.join(calls)}), which"
        if calls
        else "If it only seeds the workers' RNGs (the usual reason for one), that"
    )
    how = (
        f"this loader's seed={seed} already seeds every sample"
        if seed is not None
        else "wellfed.create_dataloader(..., seed=<int>) seeds random, numpy and torch for "
        "every sample from (seed, epoch, index)"
    )
    return (
        f"{does} is not needed with wellfed's seeding: {how}, the same under every start "
        "method and worker count. Fix: build the loader without worker_init_fn: "
        f"wellfed.create_dataloader(dataset, ..., seed={seed if seed is not None else 0})"
        f"{more}."
    )


def _start_method(loader: Any) -> str:
    """The start method the loader's workers will use (its context, else the default)."""
    ctx = getattr(loader, "multiprocessing_context", None)
    if ctx is not None:
        return str(ctx.get_start_method())
    return (
        multiprocessing.get_start_method(allow_none=True)
        or multiprocessing.get_context().get_start_method()
    )


def verify_reproducibility(
    make_loader: Callable[..., Any],
    *,
    epochs: int = 2,
    num_workers: int | Sequence[int] = (0, 2),
    start_methods: str | Sequence[str] | None = None,
    max_batches: int | None = None,
    timeout_s: float = _DEFAULT_TIMEOUT_S,
) -> ReproReport:
    """Check that a loader gives the same batches under several worker configurations.

    ``make_loader(num_workers=n, multiprocessing_context=m)`` is called once per configuration
    (``m`` is None with ``n == 0``, or to mean the platform default) and must return a fresh
    loader built the same way each time, e.g.
    ``lambda **kw: wellfed.create_dataloader(ds, batch_size=32, shuffle=True, seed=0, **kw)``.
    Every loader runs ``epochs`` epochs; each batch and each sample in it is hashed. The first
    configuration is the reference. With a single configuration, it runs twice. A
    ``torch.Generator`` that several builds share (``loader.generator``, its sampler's) is put
    back to its state at the first build before each later run, as a fresh run of the script
    would start it. Under spawn or forkserver, a ``worker_init_fn`` that cannot be pickled (a
    closure, a lambda) fails its run before any worker starts, with WF214.

    Args:
        make_loader: Factory taking the keyword arguments ``num_workers`` and
            ``multiprocessing_context``. It runs in this process (a lambda is fine).
        epochs: Epochs per configuration, >= 1.
        num_workers: Worker counts to try; one int is one count.
        start_methods: Start methods for the counts above 0; None: the platform default only.
        max_batches: Compare only the first ``max_batches`` batches of each epoch; None: all.
        timeout_s: Seconds a loader with workers may wait for one batch. A loader built with
            workers and ``timeout=0`` (wait forever) gets this one, so a hung worker ends its
            run as failed ("DataLoader timed out") instead of hanging; a loader's own
            non-zero timeout is kept. 0 leaves every loader as built. Loading in the main
            process (``num_workers=0``) cannot be bounded this way: a dataset that hangs there
            hangs the call.

    Returns:
        ReproReport: per-run results, the first mismatch (epoch, batch, sample) and the likely
        cause (naming a doctor finding about an RNG object when there is one; for a loader
        without per-sample seeds, what decides its order: a shuffle seeded by a generator is
        named as such, and only an unseeded one is said to draw from the global RNG).

    Raises:
        ConfigError: ``epochs`` < 1, an empty or negative ``num_workers``, an unknown start
            method, or a negative ``timeout_s`` (WF211).

    Example:
        >>> report = wellfed.verify_reproducibility(
        ...     lambda **kw: wellfed.create_dataloader(ds, batch_size=8, seed=0, **kw))
        >>> report.reproducible
        True
    """
    counts = (num_workers,) if isinstance(num_workers, int) else tuple(num_workers)
    methods: tuple[str | None, ...]
    if start_methods is None:
        methods = (None,)
    elif isinstance(start_methods, str):
        methods = (start_methods,)
    else:
        methods = tuple(start_methods)
    available = multiprocessing.get_all_start_methods()
    check_option(
        "epochs",
        epochs,
        is_count(epochs, 1),
        "an int >= 1; nothing would be compared",
        code="WF211",
        fix="Pass epochs=2 (the default) or more.",
    )
    if not counts or not all(is_count(c) for c in counts):
        raise ConfigError(
            f"Invalid option: num_workers={num_workers!r} must be one or more ints >= 0. "
            "Pass e.g. num_workers=(0, 2).",
            code="WF211",
            attribute="num_workers",
            value=num_workers,
        )
    check_option(
        "max_batches",
        max_batches,
        max_batches is None or is_count(max_batches, 1),
        "an int >= 1 or None",
        code="WF211",
        fix="Pass e.g. max_batches=10, or None for whole epochs.",
    )
    if (
        isinstance(timeout_s, bool)
        or not isinstance(timeout_s, (int, float))
        or not timeout_s >= 0  # also NaN
    ):
        raise ConfigError(
            f"Invalid option: timeout_s={timeout_s!r} is not a number of seconds >= 0. Pass "
            f"e.g. timeout_s={_DEFAULT_TIMEOUT_S}, or 0 to leave the loaders' timeouts as built.",
            code="WF211",
            attribute="timeout_s",
            value=timeout_s,
        )
    bad = [m for m in methods if m is not None and m not in available]
    if not methods or bad:
        raise ConfigError(
            f"Invalid option: start_methods={start_methods!r} includes {bad!r}, not available "
            f"here (available: {available}). Pass some of {available}, or None.",
            code="WF211",
            attribute="start_methods",
            value=start_methods,
        )
    configs: list[tuple[int, str | None]] = []
    for c in counts:
        for m in (None,) if c == 0 else methods:
            if (c, m) not in configs:
                configs.append((c, m))
    if len(configs) == 1:
        configs.append(configs[0])

    runs: list[ReproRun] = []
    traces: list[_Trace | None] = []
    loaders: list[Any] = []
    first_mismatch: tuple[int, ReproMismatch] | None = None
    failed_findings: list[Any] = []
    refusals: dict[int, str] = {}  # run -> the message of a refusal without a finding (WF214)
    generator_states: list[tuple[Any, Any]] = []  # (generator, its state at the first build)
    for k, (n, m) in enumerate(configs):
        t0 = time.perf_counter()
        error = None
        trace: _Trace | None = None
        loader = None
        try:
            loader = make_loader(num_workers=n, multiprocessing_context=m)
            _bound_waits(loader, timeout_s)
            _refuse_unguarded_main(loader)
            _refuse_unpicklable_worker_init(loader)
            _restart_shared_generators(loader, generator_states)
            trace = _run(loader, epochs, max_batches)
        except Exception as exc:  # a failing configuration is a result, not a crash
            error = f"{type(exc).__name__}: {exc}"
            if isinstance(exc, WorkerSafetyError) and not getattr(exc, "findings", None):
                refusals.setdefault(len(runs), str(exc))
            failed_findings.extend(getattr(exc, "findings", None) or ())
            logger.debug("repro run num_workers=%d %s failed", n, m, exc_info=True)
        seconds = time.perf_counter() - t0
        method = m
        if n > 0 and method is None:
            ctx = getattr(loader, "multiprocessing_context", None)
            method = (
                ctx.get_start_method()
                if ctx is not None
                else (
                    multiprocessing.get_start_method(allow_none=True)
                    or multiprocessing.get_context().get_start_method()
                )
            )
        batches = 0 if trace is None else len(trace.digests)
        label = ReproRun(n, method, batches, seconds, True, error).label
        matches = True
        if k > 0:
            ref_trace = traces[0]
            if trace is None or ref_trace is None:
                matches = trace is None and ref_trace is None
            else:
                mm = _compare(ref_trace, trace, label)
                matches = mm is None
                if mm is not None and first_mismatch is None:
                    first_mismatch = (k, mm)
        runs.append(
            ReproRun(
                n,
                method,
                batches,
                round(seconds, 4),
                matches,
                error,
            )
        )
        traces.append(trace)
        loaders.append(loader)

    mismatch = None
    cause = None
    findings: tuple[Any, ...] = ()
    if first_mismatch is not None:
        k, mismatch = first_mismatch
        findings = _rng_findings(loaders[k] if loaders[k] is not None else loaders[0])
        cause = _likely_cause(loaders[k], mismatch, runs[0], runs[k], findings)
    elif any(r.error for r in runs):
        failed = next(r for r in runs if r.error)
        findings = tuple(failed_findings)
        if findings:
            f = findings[0]
            cause = (
                f"The run {failed.label} was refused before its workers started: "
                f"{getattr(f, 'path', '?')}: {getattr(f, 'message', '')} "
                f"Fix: {getattr(f, 'fix', '')}"
                + (
                    f" {_SAMPLE_RNG_HINT}"
                    if getattr(f, "category", "") == "rng-duplication"
                    else ""
                )
                + (
                    # a closure worker_init_fn under spawn (WF101): not needed once seeded
                    f" {_worker_init_not_needed(None, None)}"
                    if getattr(f, "path", "") == "loader.worker_init_fn"
                    and getattr(f, "code", "") == "WF101"
                    else ""
                )
            )
        elif refusals:
            k, message = next(iter(refusals.items()))
            cause = f"The run {runs[k].label} was refused before its workers started: {message}"
        else:
            cause = f"The run {failed.label} failed: {failed.error}"
    reproducible = all(r.matches_reference and r.error is None for r in runs)
    return ReproReport(
        reproducible=reproducible,
        epochs=epochs,
        runs=tuple(runs),
        mismatch=mismatch,
        likely_cause=cause,
        findings=findings,
    )


def _restart_shared_generators(loader: Any, states: list[tuple[Any, Any]]) -> None:
    """Put a generator that several builds share back to its state at the first build.

    A factory that closes over one ``torch.Generator`` (a DataLoader target's own
    ``generator=torch.Generator().manual_seed(0)``, a sampler built once) hands every build
    the same object, already advanced by the runs before: its shuffle and worker base seeds
    would differ from the first run's although the loader is seeded (issue 15). A fresh run of
    the script starts it from its seed; so does each run here. The first build records the
    states (``states`` is appended to); a generator new to a build is left as it is.
    """
    for gen in _sampling_generators(loader):
        known = next((state for g, state in states if g is gen), None)
        if known is None:
            states.append((gen, gen.get_state()))
        else:
            logger.debug("a generator shared with an earlier build is put back to its state")
            gen.set_state(known)


def _refuse_unguarded_main(loader: Any) -> None:
    """Raise the doctor's WF121 before spawn/forkserver workers re-run an unguarded script.

    Without it the workers import the script, run its top level again (this very check among
    it) and die with Python's bootstrap RuntimeError, printing whatever the script prints
    once per worker (issue 15). The static doctor names the fix instead.

    Raises:
        WorkerSafetyError: carrying the WF121 finding, which the report then names.
    """
    if getattr(loader, "num_workers", 0) <= 0:
        return
    method = _start_method(loader)
    if method not in ("spawn", "forkserver"):
        return
    from wellfed.doctor import diagnose
    from wellfed.doctor._checks_worker_config import unguarded_main_script

    if unguarded_main_script() is None:
        return
    report = diagnose(loader, live=False, start_methods=(method,))
    found = [f for f in report.findings if f.code == "WF121"]
    if found:
        raise WorkerSafetyError(
            f"{found[0].message.removesuffix(' [WF121]')} Fix: {found[0].fix}",
            code="WF121",
            findings=list(found),
        )


def _bound_waits(loader: Any, timeout_s: float) -> None:
    """Give a worker loader without a timeout ``timeout_s`` (see verify_reproducibility)."""
    if not timeout_s or getattr(loader, "num_workers", 0) <= 0 or getattr(loader, "timeout", 1):
        return
    logger.info(
        "timeout=0 -> %s s for this check (a hung worker fails the run instead of hanging it)",
        timeout_s,
    )
    loader.timeout = float(timeout_s)  # read by each new iterator; not a guarded attribute


def loader_factory(
    spec: Any, *, seed: int, plain: bool = False, timeout_s: float = _DEFAULT_TIMEOUT_S
) -> Callable[..., Any]:
    """The ``make_loader`` that ``wellfed repro`` checks, built from a ``wellfed.LoaderSpec``.

    Seeded (default): ``wellfed.create_dataloader(spec.dataset, seed=seed, ...)`` with the
    spec's sampler, batch size, collate_fn, drop_last and worker_init_fn, no persistent workers,
    and ``on_unsafe="warn"`` (the hazard runs, so the report shows what it does; the warning
    itself is suppressed, the report names the findings). ``plain=True``: the target's own
    torch DataLoader settings, after ``wellfed.set_seed(seed)`` at each build. Every loader
    with workers gets ``timeout=timeout_s``.

    Args:
        spec: A ``wellfed.LoaderSpec`` (``wellfed.target.resolve_target`` makes one).
        seed: Seed of the loader (seeded) or of ``set_seed`` (plain), >= 0.
        plain: Check the plain torch DataLoader instead of a seeded one.
        timeout_s: Seconds a worker loader may wait for one batch, > 0.

    Returns:
        ``make_loader(num_workers=..., multiprocessing_context=...)`` for
        ``verify_reproducibility``.

    Raises:
        ConfigError: A seeded check of an iterable-style dataset, which has no sample indices
            to seed from (WF204); check it with ``plain=True`` (``wellfed repro --plain``).
    """
    if not plain and getattr(spec, "is_iterable", False):
        name = type(spec.dataset).__name__
        raise ConfigError(
            f"Cannot check per-sample seeding: dataset={name} is an iterable-style dataset, "
            "which has no sample indices to derive seeds from. Check its own DataLoader with "
            "plain=True (wellfed repro --plain), or use a map-style dataset "
            "(__getitem__ + __len__).",
            code="WF204",
            attribute="dataset",
            value=name,
        )

    def make(num_workers: int, multiprocessing_context: str | None) -> Any:
        timeout = float(timeout_s) if num_workers else 0
        if plain:
            from torch.utils.data import DataLoader

            from wellfed.measure import LoaderConfig
            from wellfed.seeding import set_seed

            set_seed(seed)
            config = LoaderConfig(
                num_workers=num_workers,
                batch_size=spec.batch_size,
                multiprocessing_context=multiprocessing_context,
            )
            return DataLoader(spec.dataset, **spec.loader_kwargs(config), timeout=timeout)
        import warnings

        from wellfed.errors import WorkerSafetyWarning
        from wellfed.loader import create_dataloader

        kwargs = spec.loader_kwargs()
        for name in (
            "generator",
            "num_workers",
            "multiprocessing_context",
            "persistent_workers",
            "prefetch_factor",
            "pin_memory",
            "timeout",
        ):
            kwargs.pop(name, None)
        with warnings.catch_warnings():  # the report names the findings itself
            warnings.simplefilter("ignore", WorkerSafetyWarning)
            return create_dataloader(
                spec.dataset,
                seed=seed,
                num_workers=num_workers,
                multiprocessing_context=multiprocessing_context,
                persistent_workers=False,
                timeout=timeout,
                on_unsafe="warn",  # run it anyway: the report shows what the hazard does
                **kwargs,
            )

    return make
