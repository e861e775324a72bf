"""The static checks: one function per hazard, each returning findings with path, why and fix.

Every check reads a ``Context`` (the walked object graph, the loader settings, the platform)
and never runs user code beyond ``__getstate__`` and ``len()``. Together they finish in well
under 2 s for a dataset of a million items, because large containers are sampled (see
``_graph.SAMPLE_THRESHOLD``).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import types
from collections.abc import Callable
from typing import Any

from wellfed.doctor._classify import (
    HANDLE_FIXES,
    cuda_kind,
    handle_kind,
    inside,
    is_container,
    mb,
    pretty_type,
    rng_kind,
    safe_getattr,
    source_text,
    thread_kind,
    user_classes,
)
from wellfed.doctor._context import SPAWNISH, Context
from wellfed.doctor._graph import Node, is_shared_state
from wellfed.doctor._pickling import (
    direct_pickle_target,
    fix_unpicklable,
    pickle_error,
    why_unpicklable,
)
from wellfed.doctor._report import Finding
from wellfed.doctor._source import analyze_class, is_user_code, seed_calls
from wellfed.platform import local_world_size

__all__ = [
    "ALL_CHECKS",
    "COPY_ON_READ_ITEMS",
    "PICKLED_SLOW_BYTES",
    "UNPICKLE_SLOW_S",
    "run_checks",
]

logger = logging.getLogger(__name__)


#: A container of at least this many Python objects is reported as copy-on-read memory growth.
#: Every read of an item writes its reference count, so under fork each worker slowly gets a
#: private copy of every page it touches; with 10**5 items of ~100 bytes that is >= 10 MB per
#: worker and grows with the epoch.
#: Source: pytorch/pytorch#13246 ("DataLoader num_workers > 0 causes CPU memory from parent
#: process to be replicated in all child processes"), whose reports start at ~10**5 file names.
COPY_ON_READ_ITEMS = 100_000

#: Pickled size above which start-up under spawn/forkserver is reported as slow. Every worker
#: unpickles its own copy: a list of (path, label) tuples unpickled at ~45 MiB/s on the
#: development machine (2-core x86_64, Python 3.11, shared), so 64 MiB costs ~1.4 s per
#: worker, more than the torch import each spawn worker already pays (~1.2 s), and
#: num_workers copies of the memory.
#: Source: measured with ``python -c "import pickle,time; x=[(f'/d/{i}.jpg', i) for i in
#: range(2_000_000)]; b=pickle.dumps(x); t=time.time(); pickle.loads(b);
#: print(len(b)/(time.time()-t))"``.
PICKLED_SLOW_BYTES = 64 * 1024**2

#: Measured time to unpickle the dataset above which start-up under spawn/forkserver is
#: reported as slow, whatever the size (objects with costly ``__setstate__``, many small
#: objects): each worker pays it at every start. 1 s is below the ~1.4 s that
#: PICKLED_SLOW_BYTES costs at ~45 MiB/s and about the torch import each spawn worker already
#: pays (~1.2 s), so above it the pickle at least doubles a worker's start-up.
#: Source: the unpickling rate measured as for PICKLED_SLOW_BYTES, and the torch import with
#: ``python -c "import time; t=time.perf_counter(); import torch;
#: print(time.perf_counter()-t)"`` (development machine: 2-core x86_64, Python 3.11, shared).
UNPICKLE_SLOW_S = 1.0

#: Fraction of free /dev/shm that batches in flight may use before a warning (error above 1).
SHM_WARN_FRACTION = 0.5

#: Shared tensors per sample assumed when nothing better is known (file_descriptor strategy).
FD_MARGIN = 64


def check_unpicklable(ctx: Context) -> list[Finding]:
    """WF101/WF103: every object that cannot be pickled for spawn/forkserver, deepest path.

    The verdict is the DataLoader's own pickler's (``ForkingPickler`` inside a spawning
    context), applied to each object the walk reaches, so every offending path is reported,
    not only the first one pickle meets.
    """
    if not any(m in ctx.start_methods for m in SPAWNISH):
        return []
    out: list[Finding] = []
    any_failure = False
    for root, w in ctx.walks.items():
        sampler = root in ("loader.sampler", "loader.batch_sampler")
        failures: list[tuple[str, str, Any, str]] = []  # (inner path, report path, obj, error)
        for node in w.nodes:
            if not node.pickled:
                continue
            if node.getstate_error is not None:
                failures.append((node.path, node.path, node.obj, node.getstate_error))
                continue
            target = direct_pickle_target(node)
            if target is None:
                continue
            obj, report_path = target
            err = pickle_error(obj)
            if err is not None:
                failures.append((node.path, report_path, obj, err))
        any_failure = any_failure or bool(failures)
        if (
            not failures
            and not any_failure
            and not sampler
            and not w.sampled
            and not w.truncated
            and w.nodes
        ):
            # Last resort for what the walk cannot see (a custom __reduce__ deep inside).
            err = pickle_error(w.nodes[0].obj)
            if err is not None:
                failures.append((root, root, w.nodes[0].obj, err))
        inner_paths = [f[0] for f in failures]
        for inner, report_path, obj, err in failures:
            if any(inside(other, inner) for other in inner_paths):
                continue  # a deeper attribute explains it
            if sampler:
                f = ctx.finding(
                    "WF103",
                    "warning",
                    report_path,
                    f"The sampler cannot be pickled: {report_path} -> "
                    f"{why_unpicklable(obj, err)}. "
                    "DataLoader workers never receive the sampler, but anything that pickles the "
                    "DataLoader (Lightning's ddp_spawn, torch.multiprocessing.spawn) fails.",
                    fix_unpicklable(obj, report_path),
                    f"static: ForkingPickler raised {err.splitlines()[0][:200]}",
                    SPAWNISH,
                )
            else:
                f = ctx.finding(
                    "WF101",
                    "error",
                    report_path,
                    f"Workers cannot start under spawn/forkserver: {report_path} is "
                    f"{pretty_type(obj)}; {why_unpicklable(obj, err)}.",
                    fix_unpicklable(obj, report_path),
                    f"static: ForkingPickler raised {err.splitlines()[0][:200]}",
                    SPAWNISH,
                )
            if f is not None:
                out.append(f)
    return out


def check_interactive_main(ctx: Context) -> list[Finding]:
    """WF102: classes and functions from an interactive ``__main__`` (notebook, REPL).

    They pickle by reference to ``__main__``, which a spawn/forkserver worker cannot import.
    """
    main = sys.modules.get("__main__")
    if main is None or getattr(main, "__file__", None):
        return []
    out: list[Finding] = []
    for node in ctx.worker_nodes():
        if not node.pickled:
            continue
        obj = node.obj
        target: Any = obj if isinstance(obj, (type, types.FunctionType)) else type(obj)
        qual = str(getattr(target, "__qualname__", "?"))
        path = node.path if target is obj else f"type({node.path})"
        if getattr(target, "__module__", None) != "__main__":
            continue
        if getattr(main, getattr(target, "__qualname__", ""), None) is not target:
            continue  # not findable at all: WF101 reports it
        f = ctx.finding(
            "WF102",
            "error",
            path,
            f"{qual} is defined in an interactive __main__ (a notebook or REPL); "
            "spawn/forkserver workers import __main__ from a file and cannot find it "
            "(AttributeError: Can't get attribute).",
            f"Move {qual} into a .py module next to the notebook and import it: "
            f"from mydata import {qual}",
            "static: its __module__ is '__main__' and __main__ has no __file__",
            SPAWNISH,
        )
        if f is not None:
            out.append(f)
    return out


def check_fork_shared_handles(ctx: Context) -> list[Finding]:
    """WF104: OS handles open now that every forked worker would share (offsets, locks).

    Skipped for objects whose worker code reopens per process (compares ``os.getpid()``).
    Sockets are shared under spawn too: multiprocessing duplicates their descriptor.
    """
    out: list[Finding] = []
    for node in ctx.worker_nodes():
        hk = handle_kind(node.obj)
        if hk is None or not hk[1]:
            continue
        kind = hk[0]
        owner = node.owner
        if (
            owner is not None
            and not isinstance(owner, (list, tuple, dict))
            and is_user_code(type(owner))
            and analyze_class(type(owner)).pid_guard
        ):
            continue
        methods: tuple[str, ...] = ("fork",)
        if kind == "socket":
            methods = ("fork", "spawn", "forkserver")
        elif not node.pickled:
            methods = ("fork",)
        f = ctx.finding(
            "WF104",
            "error",
            node.path,
            f"{node.path} is an {kind} opened before the workers start; every forked worker "
            "shares the same descriptor (one file offset, one connection), so concurrent reads "
            "interleave and return wrong bytes or fail at random."
            if kind[0] in "aeiou"
            else f"{node.path} is a {kind} opened before the workers start; every forked worker "
            "shares the same descriptor (one file offset, one connection), so concurrent reads "
            "interleave and return wrong bytes or fail at random.",
            "Open it in each worker instead: store the path in __init__ and open lazily.\n"
            + HANDLE_FIXES.get(kind, "open lazily in __getitem__"),
            f"static: {pretty_type(node.obj)} is open in this process",
            methods,
        )
        if f is not None:
            out.append(f)
    return out


def check_cuda(ctx: Context) -> list[Finding]:
    """WF105/WF106: CUDA tensors, modules and devices in the graph; CUDA transfers in code."""
    out: list[Finding] = []
    reported: list[str] = []
    for node in ctx.worker_nodes():
        if any(inside(node.path, p) for p in reported):
            continue
        kind = cuda_kind(node)
        if kind is None:
            continue
        reported.append(node.path)
        methods_pickled = ("fork", "spawn", "forkserver") if node.pickled else ("fork",)
        fix = (
            "Keep the dataset on the CPU and move batches in the training loop: "
            "`for batch in loader: batch = batch.to('cuda', non_blocking=True)` with "
            "pin_memory=True. For a model that transforms samples, precompute its outputs once "
            "(wellfed precompute) or run it per batch on the GPU in the main process."
        )
        for severity, methods, why in (
            (
                "error",
                ("fork",),
                "a forked worker cannot re-initialise CUDA "
                "(RuntimeError: Cannot re-initialize CUDA in forked subprocess)",
            ),
            (
                "warning",
                SPAWNISH,
                "each spawn/forkserver worker opens its own CUDA context "
                "(hundreds of MB of GPU memory per worker) and shares tensors by CUDA IPC",
            ),
        ):
            f = ctx.finding(
                "WF105",
                severity,
                node.path,
                f"{node.path} is a {kind} reachable from the workers; {why}.",
                fix,
                f"static: {kind} ({pretty_type(node.obj)})",
                [m for m in methods if m in methods_pickled],
            )
            if f is not None:
                out.append(f)
    for node, cls in user_classes(ctx):
        ana = analyze_class(cls)
        for method, line, snippet in ana.cuda_transfers[:1]:
            path = f"type({node.path}).{method}"
            for severity, methods, why in (
                (
                    "error",
                    ("fork",),
                    "a forked worker cannot initialise CUDA once the main "
                    "process has (RuntimeError: Cannot re-initialize CUDA in forked subprocess)",
                ),
                (
                    "warning",
                    SPAWNISH,
                    "each worker opens its own CUDA context (hundreds of MB "
                    "of GPU memory each) and sends results back by CUDA IPC",
                ),
            ):
                f = ctx.finding(
                    "WF106",
                    severity,
                    path,
                    f"{cls.__qualname__}.{method} moves data to CUDA ({snippet}, line {line}) "
                    f"inside a worker; {why}.",
                    "Return CPU tensors from the dataset and move the batch in the training "
                    "loop: `batch = batch.to('cuda', non_blocking=True)` with pin_memory=True "
                    f"(delete the {snippet} call in {method}).",
                    f"static: {snippet} at {_source_file(cls)}:{line}",
                    methods,
                )
                if f is not None:
                    out.append(f)
    return out


def _source_file(cls: type) -> str:
    import inspect

    try:
        return os.path.basename(inspect.getsourcefile(cls) or "?")
    except TypeError:
        return "?"


def check_rng(ctx: Context) -> list[Finding]:
    """WF107: RNG objects held by the dataset, transforms or collate_fn (global RNGs excluded).

    An RNG object is copied with its state into every worker (fork copies memory; spawn
    pickles the state), so all workers draw the same numbers. Not reported when
    worker_init_fn or worker code visibly reseeds that attribute.
    """
    out: list[Finding] = []
    wif = ctx.settings.get("worker_init_fn")
    wif_text = source_text(wif)
    seeded = ctx.settings.get("seed") is not None
    for node in ctx.worker_nodes():
        kind = rng_kind(node.obj)
        if kind is None:
            continue
        if node.attr and wif_text and node.attr in wif_text:
            continue  # worker_init_fn replaces or reseeds it per worker
        owner = node.owner
        if owner is not None and node.attr and is_user_code(type(owner)):
            ana = analyze_class(type(owner))
            if node.attr in ana.mutations:
                continue  # worker code reassigns it (per-sample or per-worker seeding)
        methods = ("fork", "spawn", "forkserver") if node.pickled else ("fork",)
        f = ctx.finding(
            "WF107",
            "error",
            node.path,
            f"{node.path} is a {kind} object: each worker gets an identical copy with the same "
            "state, so every worker draws the same random numbers (the same augmentations for "
            "different samples). PyTorch reseeds only the global random, numpy and torch RNGs "
            "per worker.",
            rng_fix(node.attr or "rng", seeded),
            f"static: {pretty_type(node.obj)} at {node.path}",
            methods,
        )
        if f is not None:
            out.append(f)
    return out


def rng_fix(attr: str, seeded: bool) -> str:
    """WF107's fix. With ``create_dataloader(seed=...)``, the per-sample generators: reseeding
    per worker would make the numbers depend on num_workers, which the seed is there to stop."""
    per_sample = (
        "Draw from the per-sample generators in __getitem__ instead of this object: "
        "wellfed.sample_rng() (numpy) or wellfed.sample_generator() (torch), seeded from "
        "(seed, epoch, index), so the numbers are the same for any num_workers and start "
        f"method:\nrng = wellfed.sample_rng()  # instead of self.{attr}\n"
        "x = augment(x, rng)"
    )
    if seeded:
        return per_sample
    return (
        "Use the global RNGs in worker code (random.random(), np.random.rand(), "
        "torch.rand(); PyTorch reseeds them per worker), or reseed this object per worker:\n"
        "def worker_init_fn(worker_id):\n"
        "    info = torch.utils.data.get_worker_info()\n"
        f"    info.dataset.{attr} = np.random.default_rng(info.seed)\n"
        "For numbers that do not change with num_workers, load with "
        "wellfed.create_dataloader(seed=...) and draw from wellfed.sample_rng() / "
        "wellfed.sample_generator() in __getitem__."
    )


def check_worker_init_seeds(ctx: Context) -> list[Finding]:
    """WF108: a worker_init_fn that seeds with constants (all workers identical) or with its
    own arguments only (worker_id: differs by worker, repeats every epoch).
    """
    wif = ctx.settings.get("worker_init_fn")
    if wif is None:
        return []
    calls = seed_calls(wif)
    if not calls:
        return []
    worst = min(calls, key=lambda c: {"constant": 0, "arguments": 1, "runtime": 2}[c.depends_on])
    if worst.depends_on == "runtime":
        return []
    fix = (
        "Derive the seed from the per-worker, per-epoch seed PyTorch gives each worker:\n"
        "def worker_init_fn(worker_id):\n"
        "    seed = torch.initial_seed() % 2**32  # base_seed + worker_id, new every epoch\n"
        "    np.random.seed(seed); random.seed(seed)"
    )
    if worst.depends_on == "constant":
        message = (
            f"worker_init_fn calls {worst.call}(<constant>) (line {worst.line}): every worker "
            "starts from the same seed, so all workers draw identical random numbers, every epoch."
        )
        severity = "error"
    else:
        message = (
            f"worker_init_fn seeds {worst.call}(...) from its own arguments only (line "
            f"{worst.line}), e.g. worker_id: the seeds differ between workers but repeat every "
            "epoch, so each epoch replays the same augmentations."
        )
        severity = "warning"
    f = ctx.finding(
        "WF108",
        severity,
        "loader.worker_init_fn",
        message,
        fix,
        f"static: {worst.call} seeded from {worst.depends_on}",
    )
    return [f] if f is not None else []


def check_copy_on_read(ctx: Context) -> list[Finding]:
    """WF109: large containers of Python objects held by the dataset (copy-on-read)."""
    out: list[Finding] = []
    reported: list[str] = []
    np = sys.modules.get("numpy")
    for node in ctx.worker_nodes():
        obj = node.obj
        n = None
        if is_container(obj):
            try:
                n = len(obj)
            except Exception:
                continue
        elif np is not None and isinstance(obj, np.ndarray) and obj.dtype == object:
            n = int(obj.size)
        if n is None or n < COPY_ON_READ_ITEMS:
            continue
        if any(inside(node.path, p) for p in reported):
            continue
        reported.append(node.path)
        f = ctx.finding(
            "WF109",
            "warning",
            node.path,
            f"{node.path} is a {type(obj).__name__} of {n:,} Python objects. Reading an item "
            "writes its reference count, so under fork every worker gradually copies the pages "
            "it reads (copy-on-read: memory grows through the epoch, times num_workers); under "
            "spawn/forkserver every worker unpickles its own full copy.",
            "Store it as numpy arrays (no per-item objects): e.g. paths as "
            "np.array(paths, dtype=np.bytes_) or one np.uint8 buffer plus np.int64 offsets, "
            "labels as np.array(labels, dtype=np.int64); decode with .decode() in __getitem__.",
            f"static: len({node.path}) = {n:,} >= {COPY_ON_READ_ITEMS:,}",
        )
        if f is not None:
            out.append(f)
    return out


_SHARED_STATE_FIX = (
    "Put the changing values in a wellfed.SharedState, which workers read live:\n"
    "self.state = wellfed.SharedState(theta=theta)  # in __init__\n"
    "theta = self.state['theta']  # in __getitem__\n"
    "dataset.state.update(theta=new_theta)  # in the training loop\n"
    "(or recreate the DataLoader / use persistent_workers=False after each change)"
)


def check_stale_state(ctx: Context) -> list[Finding]:
    """WF111/WF112: state worker code reads that something else changes, and worker code
    that mutates the dataset (the change stays in one worker's copy).
    """
    out: list[Finding] = []
    persistent = bool(ctx.settings.get("persistent_workers"))
    wif_text = source_text(ctx.settings.get("worker_init_fn"))
    for node, cls in user_classes(ctx):
        ana = analyze_class(cls)
        obj = node.obj
        for attr, (method, line) in sorted(ana.changers.items()):
            value = safe_getattr(obj, attr)
            if is_shared_state(value):
                continue
            if wif_text and f".{method}(" in wif_text:
                continue  # worker_init_fn calls it: per-worker setup
            path = f"{node.path}.{attr}"
            severity = "error" if persistent else "warning"
            when = (
                "with persistent_workers=True the workers keep the copy they received at the "
                "first epoch, forever"
                if persistent
                else "workers keep the copy they received when the epoch started, so a change "
                "during an epoch is never seen (and with persistent_workers=True, never at all)"
            )
            f = ctx.finding(
                "WF111",
                severity,
                path,
                f"{cls.__qualname__}.{method} (line {line}) changes self.{attr}, which worker "
                f"code reads; each worker holds its own copy of the dataset, so {when}: "
                "silently stale data (a pickling test cannot catch it).",
                _SHARED_STATE_FIX,
                f"static: {method} assigns self.{attr}; "
                f"{'/'.join(ana.readers) or 'worker code'} reads it",
            )
            if f is not None:
                out.append(f)
        for attr, (method, line) in sorted(ana.mutations.items()):
            if attr in ana.cache_fills:
                continue
            path = f"{node.path}.{attr}"
            f = ctx.finding(
                "WF112",
                "warning",
                path,
                f"{cls.__qualname__}.{method} assigns self.{attr} (line {line}) in the worker: "
                "the change stays in that worker's copy; the main process and the other "
                "workers never see it, so results depend on which worker served the sample.",
                "Keep worker code free of state changes: compute from the index "
                "(e.g. rng = np.random.default_rng((seed, epoch, index))), or, for state that "
                "must be shared, use wellfed.SharedState: self.state.update(...) / "
                "self.state['key']. Lazy per-worker handles are fine when guarded: "
                f"if self.{attr} is None: self.{attr} = ...",
                f"static: unguarded assignment to self.{attr} in {method}",
            )
            if f is not None:
                out.append(f)
    return out


def check_worker_caches(ctx: Context) -> list[Finding]:
    """WF110: caches filled inside worker code (each worker fills its own; unbounded)."""
    out: list[Finding] = []
    for node, cls in user_classes(ctx):
        ana = analyze_class(cls)
        for attr, (method, line) in sorted(ana.cache_fills.items()):
            value = safe_getattr(node.obj, attr)
            if is_shared_state(value):
                continue
            if value is not None and type(value).__name__ in ("LRUCache", "TTLCache"):
                continue  # bounded caches (cachetools)
            f = ctx.finding(
                "WF110",
                "warning",
                f"{node.path}.{attr}",
                f"{cls.__qualname__}.{method} fills self.{attr} (line {line}) inside the worker: "
                "every worker builds its own unbounded copy (memory x num_workers, growing all "
                "epoch), and the main process never sees it.",
                "Precompute the cached values once before training (wellfed precompute, or an "
                "np.memmap every worker maps read-only), or bound the cache: "
                "@functools.lru_cache(maxsize=1024) on a module-level loader function.",
                f"static: self.{attr}[...] written in {method}",
            )
            if f is not None:
                out.append(f)
    return out


def sample_bytes_estimate(ctx: Context) -> tuple[int, int] | None:
    """(bytes per sample, tensors per sample) from arrays whose first dimension is len(dataset)."""
    if ctx.length is None or ctx.length <= 0:
        return None
    torch = sys.modules.get("torch")
    np = sys.modules.get("numpy")
    total = count = 0
    w = ctx.walks.get("dataset")
    for node in w.nodes if w else ():
        if node.depth > 3:
            continue
        obj = node.obj
        shape = None
        if torch is not None and isinstance(obj, torch.Tensor) and obj.dim() > 0:
            shape, nbytes = obj.shape, obj.element_size() * obj.nelement()
        elif np is not None and isinstance(obj, np.ndarray) and obj.ndim > 0:
            shape, nbytes = obj.shape, obj.nbytes
        if shape is not None and int(shape[0]) == ctx.length:
            total += nbytes // ctx.length
            count += 1
    return (total, count) if count else None


def check_shared_memory(
    ctx: Context, measured: tuple[int, int] | None = None, evidence: str | None = None
) -> list[Finding]:
    """WF113/WF114: bytes in flight against free /dev/shm; shared descriptors vs ``ulimit -n``.

    Args:
        ctx: The context.
        measured: (bytes, tensors) per sample measured by the live probe, if any.
        evidence: How ``measured`` was obtained.
    """
    nw = ctx.num_workers
    if not nw:
        return []
    estimate = measured or sample_bytes_estimate(ctx)
    if estimate is None:
        return []
    per_sample, tensors = estimate
    batch = int(ctx.settings.get("batch_size") or 1)
    prefetch = int(ctx.settings.get("prefetch_factor") or 2)
    in_flight = per_sample * batch * prefetch * nw
    source = evidence or "static: estimated from arrays of length len(dataset)"
    out: list[Finding] = []
    free = ctx.platform.shm_free_bytes
    if free is not None and in_flight > SHM_WARN_FRACTION * free:
        severity = "error" if in_flight > free else "warning"
        f = ctx.finding(
            "WF113",
            severity,
            "env.dev_shm",
            f"Batches in flight need ~{mb(in_flight)} of /dev/shm (batch {mb(per_sample * batch)}"
            f" x prefetch_factor={prefetch} x num_workers={nw}) but only {mb(free)} is free: "
            "workers die with 'Bus error' / 'No space left on device' when it runs out.",
            "Lower prefetch_factor, num_workers or batch_size until batch x prefetch x workers "
            "fits, "
            "or give the container more shared memory: docker run --shm-size=8g (Kubernetes: "
            "mount an emptyDir with medium: Memory at /dev/shm).",
            f"{source}; {mb(per_sample)}/sample; /dev/shm free {mb(free)}",
        )
        if f is not None:
            out.append(f)
    limit = ctx.platform.open_files_limit
    strategy = _sharing_strategy()
    if limit is not None and strategy == "file_descriptor":
        fds = tensors * prefetch * nw * (1 if ctx.settings.get("collate_fn") is None else batch)
        fds += FD_MARGIN
        if fds > limit // 2:
            f = ctx.finding(
                "WF114",
                "warning",
                "env.ulimit_nofile",
                f"Each tensor in flight holds a file descriptor under the 'file_descriptor' "
                f"sharing strategy: ~{fds} needed against ulimit -n = {limit}; beyond it workers "
                "fail with 'received 0 items of ancdata' / 'Too many open files'.",
                "Raise the limit (ulimit -n 65536, or resource.setrlimit(resource.RLIMIT_NOFILE, "
                "(hard, hard)) at start-up), or call "
                "torch.multiprocessing.set_sharing_strategy('file_system').",
                f"{source}; {tensors} tensor(s)/sample; ulimit -n {limit}",
            )
            if f is not None:
                out.append(f)
    return out


def _sharing_strategy() -> str | None:
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    try:
        return str(torch.multiprocessing.get_sharing_strategy())
    except Exception:
        return None


_THREAD_WHY = {
    "opencv": (
        "OpenCV keeps its own thread pool; in forked workers it can deadlock, and in any "
        "worker it starts one thread per core, oversubscribing the CPUs num_workers times",
        "In worker_init_fn (or at import): cv2.setNumThreads(0); cv2.ocl.setUseOpenCL(False)",
    ),
    "tokenizers": (
        "Hugging Face tokenizers use a Rust thread pool; after the main process has used it, "
        "forked workers deadlock or fall back with 'The current process just got forked, after "
        "parallelism has already been used'",
        "Set os.environ['TOKENIZERS_PARALLELISM'] = 'false' before the tokenizer is first used "
        "(or tokenize in the workers only)",
    ),
    "thread pool": (
        "a thread pool's threads do not exist in a forked worker, so work submitted there waits "
        "forever; spawn cannot pickle it",
        "Create the pool inside the worker (lazily in __getitem__ or in worker_init_fn), or "
        "drop it: DataLoader workers already run in parallel",
    ),
    "running thread": (
        "a thread started in the main process does not run in forked workers (only the forking "
        "thread is copied), and any lock it held at fork time stays locked there",
        "Start the thread inside each worker (worker_init_fn) or keep it out of the dataset",
    ),
}


def check_thread_hazards(ctx: Context) -> list[Finding]:
    """WF115 (objects in the graph) and WF116 (threads running now, before fork)."""
    out: list[Finding] = []
    reported: list[str] = []
    for node in ctx.worker_nodes():
        kind = thread_kind(node.obj)
        if kind is None or any(inside(node.path, p) for p in reported):
            continue
        if kind == "tokenizers" and os.environ.get("TOKENIZERS_PARALLELISM", "").lower() in (
            "false",
            "0",
            "off",
        ):
            continue
        reported.append(node.path)
        why, fix = _THREAD_WHY[kind]
        f = ctx.finding(
            "WF115",
            "warning",
            node.path,
            f"{node.path} is {pretty_type(node.obj)}: {why}.",
            fix,
            f"static: {kind} object in the graph",
            ("fork",) if kind != "opencv" else ("fork", "spawn", "forkserver"),
        )
        if f is not None:
            out.append(f)
    if "fork" in ctx.start_methods:
        others = [
            t
            for t in threading.enumerate()
            if t is not threading.main_thread()
            and t.is_alive()
            and t is not threading.current_thread()
        ]
        if others:
            names = ", ".join(sorted(t.name for t in others)[:5])
            f = ctx.finding(
                "WF116",
                "info",
                "env.threads",
                f"{len(others)} thread(s) run in this process ({names}); forked workers get "
                "none of them, and a lock one of them holds at fork time stays locked in the "
                "worker.",
                "Create the DataLoader's iterator before starting background threads, or use "
                "multiprocessing_context='forkserver' or 'spawn'.",
                f"static: threading.enumerate() lists {len(others) + 1} threads",
                ("fork",),
            )
            if f is not None:
                out.append(f)
    return out


_SHARD_ATTRS = (
    "files",
    "shards",
    "urls",
    "paths",
    "file_list",
    "filenames",
    "shard_paths",
    "shard_files",
    "tar_files",
    "parquet_files",
)


def check_iterable_sharding(ctx: Context) -> list[Finding]:
    """WF117/WF118: an IterableDataset whose ``__iter__`` ignores worker info; too few shards."""
    ds = ctx.dataset
    torch = sys.modules.get("torch")
    if torch is None or not isinstance(ds, torch.utils.data.IterableDataset):
        return []
    nw = ctx.num_workers
    if nw is not None and nw < 2:
        return []
    cls = type(ds)
    if not is_user_code(cls):
        return []
    ana = analyze_class(cls)
    wif_text = source_text(ctx.settings.get("worker_init_fn"))
    sharded = ana.shards or any(s in wif_text for s in ("get_worker_info", "worker_info"))
    out: list[Finding] = []
    if not sharded and "__iter__" in ana.readers:
        f = ctx.finding(
            "WF117",
            "error",
            "type(dataset).__iter__",
            f"{cls.__qualname__}.__iter__ never asks which worker it runs in "
            "(torch.utils.data.get_worker_info()), so every worker yields the whole stream: "
            f"each sample arrives num_workers={nw or 'N'} times per epoch.",
            "Split the stream per worker in __iter__:\n"
            "info = torch.utils.data.get_worker_info()\n"
            "wid, n = (info.id, info.num_workers) if info else (0, 1)\n"
            "for i, item in enumerate(self.source):\n"
            "    if i % n == wid: yield item  # or give each worker its own files: "
            "self.files[wid::n]",
            "static: no get_worker_info/worker_info in __iter__, its helpers or worker_init_fn",
        )
        if f is not None:
            out.append(f)
    if sharded and nw:
        for attr in _SHARD_ATTRS:
            value = safe_getattr(ds, attr)
            if isinstance(value, (list, tuple)) and 0 < len(value) < nw:
                f = ctx.finding(
                    "WF118",
                    "warning",
                    f"dataset.{attr}",
                    f"dataset.{attr} has {len(value)} shard(s) for num_workers={nw}: "
                    f"{nw - len(value)} worker(s) get no shard and idle (or, if shards are "
                    "split by index, get nothing to read).",
                    f"Use num_workers <= {len(value)}, or split the data into at least {nw} "
                    "shards (more shards than workers balances better).",
                    f"static: len(dataset.{attr}) = {len(value)} < num_workers = {nw}",
                )
                if f is not None:
                    out.append(f)
                break
    return out


def check_worker_count(ctx: Context) -> list[Finding]:
    """WF119: more workers than usable CPUs per local rank (affinity, cgroup quota, ranks).

    Every training process on this machine (``wellfed.platform.local_world_size()``) starts
    its own workers, so the budget is ``usable_cpus_per_rank()``.
    """
    nw = ctx.num_workers
    ranks = local_world_size()
    # platform.usable_cpus_per_rank(), computed from the judged platform (which a caller may
    # inject to judge another machine) rather than from this one.
    cpus = max(1, ctx.platform.usable_cpus // ranks)
    if nw is None or nw <= cpus:
        return []
    if ranks > 1:
        where = (
            f"the {cpus} usable CPU(s) per rank ({ctx.platform.usable_cpus} usable CPUs shared "
            f"by {ranks} training processes on this machine, each with its own workers)"
        )
    else:
        where = f"the {cpus} usable CPU(s) of this process (affinity mask and cgroup quota)"
    f = ctx.finding(
        "WF119",
        "warning",
        "loader.num_workers",
        f"num_workers={nw} exceeds {where}: workers time-share the cores, each adding memory "
        "and start-up time without adding throughput.",
        f"Use num_workers={max(1, cpus - 1)} (usable CPUs per rank minus one for the training "
        "loop), or measure: wellfed tune <target>.",
        f"static: usable CPUs = {ctx.platform.usable_cpus} (os.cpu_count() = "
        f"{ctx.platform.cpu_count}), local ranks = {ranks}",
    )
    return [f] if f is not None else []


def check_pickled_size(
    ctx: Context, measured: tuple[int, float, float] | None = None
) -> list[Finding]:
    """WF120: a dataset whose pickle is large or slow to load (each spawn worker unpickles
    its own copy at every start).

    Statically the size is estimated from the walk (sampled containers scaled up). The live
    probe measures (bytes, pickle seconds, unpickle seconds); then a measured unpickle time of
    UNPICKLE_SLOW_S or more is reported too, whatever the size.
    """
    if not any(m in ctx.start_methods for m in SPAWNISH):
        return []
    w = ctx.walks.get("dataset")
    if w is None:
        return []
    unpickle_s = 0.0
    if measured is not None:
        size, seconds, unpickle_s = measured
        evidence = (
            f"confirmed live: pickled in {seconds:.2f} s to {mb(size)}, unpickled in "
            f"{unpickle_s:.2f} s (tensors excluded)"
        )
    else:
        size = int(sum(_approx_bytes(n) for n in w.nodes if n.pickled))
        evidence = (
            "static: estimated from the object graph (tensors excluded: they travel "
            "through shared memory)"
        )
    big, slow = size >= PICKLED_SLOW_BYTES, unpickle_s >= UNPICKLE_SLOW_S
    if not big and not slow:
        return []
    nw = ctx.num_workers or 2
    cost = (
        f"unpickling it took {unpickle_s:.1f} s here, paid by each worker"
        if slow
        else "costing seconds"
    )
    f = ctx.finding(
        "WF120",
        "warning",
        "dataset",
        f"The dataset pickles to ~{mb(size)}: under spawn/forkserver each of the {nw} workers "
        "receives and unpickles its own copy at every start (every epoch unless "
        f"persistent_workers=True), {cost}, and num_workers copies of the memory.",
        "Keep bulk data out of the pickle: store file paths or an np.memmap path and open it "
        "in the worker, or keep data in torch tensors (they travel through shared memory); "
        "move costly rebuilding out of __setstate__ (do it lazily in the worker); use "
        "persistent_workers=True so workers start once.",
        evidence,
        SPAWNISH,
    )
    return [f] if f is not None else []


def _approx_bytes(node: Node) -> float:
    obj = node.obj
    np = sys.modules.get("numpy")
    if isinstance(obj, (str, bytes, bytearray)):
        return node.weight * (len(obj) + 8)
    if np is not None and isinstance(obj, np.ndarray):
        return node.weight * float(obj.nbytes)
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(obj, torch.Tensor):
        return 0.0
    return node.weight * 8


def check_main_guard(ctx: Context) -> list[Finding]:
    """WF121: a script defines the dataset in ``__main__`` without ``if __name__ == "__main__":``.

    spawn and forkserver workers re-import the main script; without the guard each worker
    runs the training script again (RuntimeError: An attempt has been made to start a new
    process before the current process has finished its bootstrapping phase).
    """
    if not any(m in ctx.start_methods for m in SPAWNISH):
        return []
    main = sys.modules.get("__main__")
    main_file = getattr(main, "__file__", None)
    if not main_file:
        return []
    uses_main = any(
        getattr(
            n.obj if isinstance(n.obj, (type, types.FunctionType)) else type(n.obj),
            "__module__",
            None,
        )
        == "__main__"
        for n in ctx.worker_nodes()
    )
    if not uses_main:
        return []
    try:
        with open(main_file, encoding="utf-8") as fh:
            text = fh.read()
    except OSError:
        return []
    if "__name__" in text and "__main__" in text:
        return []
    f = ctx.finding(
        "WF121",
        "error",
        "env.main_guard",
        f"The script {os.path.basename(main_file)} defines classes the workers use but has no "
        '`if __name__ == "__main__":` guard: spawn/forkserver workers re-import it and re-run '
        "the training code, failing with 'An attempt has been made to start a new process "
        "before the current process has finished its bootstrapping phase'.",
        "Move the top-level training code into main() and end the script with:\n"
        'if __name__ == "__main__":\n    main()',
        f"static: no __main__ guard in {main_file}",
        SPAWNISH,
    )
    return [f] if f is not None else []


ALL_CHECKS: tuple[Callable[[Context], list[Finding]], ...] = (
    check_unpicklable,
    check_interactive_main,
    check_fork_shared_handles,
    check_cuda,
    check_rng,
    check_worker_init_seeds,
    check_copy_on_read,
    check_worker_caches,
    check_stale_state,
    check_shared_memory,
    check_thread_hazards,
    check_iterable_sharding,
    check_worker_count,
    check_pickled_size,
    check_main_guard,
)


def run_checks(ctx: Context) -> list[Finding]:
    """Run every static check; a check that crashes is logged and skipped, never fatal."""
    out: list[Finding] = []
    for check in ALL_CHECKS:
        try:
            out.extend(check(ctx))
        except Exception as exc:  # a check must never take the diagnosis down
            if os.environ.get("WELLFED_DOCTOR_STRICT") == "1":
                raise
            logger.debug("doctor check %s failed: %r", check.__name__, exc, exc_info=True)
    return out
