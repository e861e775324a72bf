"""Static checks of the category 'thread-hazard'.

Thread pools that break or oversubscribe workers (WF115): owners of one in the graph
(OpenCV objects, Hugging Face tokenizers, executors, running threads), and worker code that
calls a library which starts its own pool in every worker (OpenCV functions with no
``cv2.setNumThreads(0)``, numpy/scipy BLAS with no thread limit); threads running in this
process before fork (WF116).
"""

from __future__ import annotations

import ast
import importlib.util
import os
import sys
import threading
from collections.abc import Iterable
from typing import Any

from wellfed.doctor._classify import (
    inside,
    pretty_type,
    safe_getattr,
    source_file,
    thread_kind,
    user_classes,
)
from wellfed.doctor._context import SPAWNISH, Context
from wellfed.doctor._graph import Node, in_modules, module_of
from wellfed.doctor._report import Finding
from wellfed.doctor._source import (
    analyze_class,
    blas_calls,
    function_calls,
    is_user_code,
    module_level_calls,
    worker_calls,
)

__all__ = [
    "check_thread_hazards",
    "thread_worker_hazards",
]


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


def _rust_tokenizers(obj: Any, path: str) -> list[tuple[str, Any]]:
    """The Rust ``tokenizers.Tokenizer`` objects a tokenizers object owns, with their paths.

    The thread pool belongs to the Rust object; a Python wrapper from ``tokenizers``
    (``tokenizers.implementations.ByteLevelBPETokenizer``...) holds it as ``_tokenizer``, and
    the graph walk does not enter ``tokenizers`` objects. The object itself when it is the
    Rust tokenizer, or when no Rust tokenizer is found in its ``__dict__``.
    """
    if type(obj).__name__ == "Tokenizer" and module_of(obj) == "tokenizers":
        return [(path, obj)]
    try:
        attrs = dict(object.__getattribute__(obj, "__dict__"))
    except Exception:
        return [(path, obj)]
    inner = [
        (f"{path}.{name}", value)
        for name, value in attrs.items()
        if isinstance(name, str)
        and type(value).__name__ == "Tokenizer"
        and module_of(value) == "tokenizers"
    ]
    return inner or [(path, obj)]


def _thread_objects(nodes: Iterable[Node]) -> list[tuple[str, Any, str, Node]]:
    """(path, object, kind, node) of each thread-pool owner in the graph, once: the
    outermost object of a kind, except tokenizers, reported at their Rust core."""
    found: list[tuple[str, Any, str, Node]] = []
    reported: list[str] = []
    for node in nodes:
        kind = thread_kind(node.obj)
        if kind is None or any(inside(node.path, p) or node.path == p for p in reported):
            continue
        reported.append(node.path)
        targets = (
            _rust_tokenizers(node.obj, node.path)
            if kind == "tokenizers"
            else [(node.path, node.obj)]
        )
        for path, obj in targets:
            found.append((path, obj, kind, node))
    return found


def check_thread_hazards(ctx: Context) -> list[Finding]:
    """WF115 (objects in the graph; worker code calling OpenCV or BLAS with no thread limit)
    and WF116 (threads running now, before fork)."""
    out: list[Finding] = []
    cv2_limit = _Cv2Limit(ctx)
    for path, obj, kind, _node in _thread_objects(ctx.worker_nodes()):
        if kind == "tokenizers" and os.environ.get("TOKENIZERS_PARALLELISM", "").lower() in (
            "false",
            "0",
            "off",
        ):
            continue
        methods: tuple[str, ...] = ("fork",)
        if kind == "opencv":
            # only the user's own limit (worker_init_fn, import) clears an OpenCV object: its
            # pool may start later in the worker, whatever this process's count is now
            if cv2_limit.limited_by_user():
                continue
            methods = ("fork", *SPAWNISH)
        why, fix = _THREAD_WHY[kind]
        f = ctx.finding(
            "WF115",
            "warning",
            path,
            f"{path} is {pretty_type(obj)}: {why}.",
            fix,
            f"static: {kind} object in the graph",
            methods,
        )
        if f is not None:
            out.append(f)
    out.extend(_opencv_in_worker_code(ctx, cv2_limit))
    out.extend(_blas_in_worker_code(ctx))
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


#: Objects that break when several thread workers (``num_threads``) share them, with why and
#: the fix. Source: huggingface/tokenizers#537 and huggingface/transformers#47085 (2026): a
#: fast tokenizer's Python binding holds a borrow of the Rust object while ``encode_batch``
#: runs without the GIL, and transformers reconfigures truncation/padding on that same object
#: at every call, so a second thread gets "RuntimeError: Already borrowed".
_THREAD_WORKER_WHY = {
    "tokenizers": (
        "a Hugging Face fast (Rust) tokenizer raises 'RuntimeError: Already borrowed' when "
        "several threads call it at once (huggingface/tokenizers#537, transformers#47085)",
        "keep one tokenizer per thread (threading.local, created lazily in __getitem__), or "
        "load with worker processes (num_workers)",
    ),
}


def thread_worker_hazards(dataset: Any) -> list[dict[str, str]]:
    """Objects in ``dataset``'s graph that thread workers must not share, each once.

    Returns:
        ``[{"path", "kind", "why", "fix"}]`` (static: found by walking the object graph).
    """
    from wellfed.doctor._graph import walk

    found: list[dict[str, str]] = []
    for path, obj, kind, _node in _thread_objects(walk(dataset, "dataset").nodes):
        if kind not in _THREAD_WORKER_WHY:
            continue
        why, fix = _THREAD_WORKER_WHY[kind]
        found.append({"path": path, "kind": kind, "why": f"{pretty_type(obj)}: {why}", "fix": fix})
    return found


# ------------------------------------------------------------------------------------------
# Worker code that calls a library with its own thread pool (WF115): OpenCV, BLAS.

#: OpenCV calls that configure it rather than run an algorithm.
_CV2_CONFIG = frozenset(
    {"setNumThreads", "getNumThreads", "setUseOpenCL", "useOpenCL", "setRNGSeed"}
)

#: The thread-count variables numpy's BLAS (OpenBLAS, MKL, BLIS through OpenMP) reads when it
#: loads. Source: threadpoolctl's README; OpenBLAS's and MKL's documentation.
BLAS_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def _limit_value(call: ast.Call, keyword: str) -> bool:
    """Whether a thread-setting call sets at most one thread: its first argument (or
    ``keyword=``) is a constant <= 1, or computed (trusted: the user chose a limit)."""
    value: ast.AST | None = call.args[0] if call.args else None
    for kw in call.keywords:
        if kw.arg == keyword:
            value = kw.value
    if isinstance(value, ast.Constant):
        return isinstance(value.value, int) and value.value <= 1
    return value is not None


def _import_time_modules(ctx: Context) -> list[Any]:
    """Modules whose top level runs in every worker: those of the user classes in the graph
    (unpickling imports them under spawn; fork inherits their effect) and ``__main__`` (spawn
    re-runs a script's top level outside its main guard)."""
    mods: list[Any] = []
    names: set[str] = set()
    for node in ctx.worker_nodes():
        for klass in type(node.obj).__mro__:
            name = getattr(klass, "__module__", "")
            if name in names or not is_user_code(klass):
                continue
            names.add(name)
            mod = sys.modules.get(name)
            if mod is not None:
                mods.append(mod)
        if len(mods) >= 16:
            break
    main = sys.modules.get("__main__")
    if main is not None and getattr(main, "__file__", None) and "__main__" not in names:
        mods.append(main)
    return mods


class _Cv2Limit:
    """Where OpenCV's threads are limited to one: worker_init_fn, import time, this process."""

    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx
        self._read = False  # read on first use: most datasets never touch OpenCV
        self.limited = False  # by worker_init_fn or at import: in every worker
        self.here: int | None = None  # cv2.getNumThreads() in this process, if cv2 is imported

    def _load(self) -> None:
        if self._read:
            return
        self._read = True
        names = frozenset({"setNumThreads"})
        wif = self._ctx.settings.get("worker_init_fn")
        self.limited = any(_limit_value(c, "nthreads") for _, c in function_calls(wif, names))
        for mod in [] if self.limited else _import_time_modules(self._ctx):
            if any(_limit_value(c, "nthreads") for _, c in module_level_calls(mod, names)):
                self.limited = True
                break
        cv2 = sys.modules.get("cv2")
        if cv2 is not None:
            try:
                self.here = int(cv2.getNumThreads())
            except Exception:
                self.here = None

    def limited_by_user(self) -> bool:
        """cv2.setNumThreads(0 or 1) in worker_init_fn or at import of a dataset module."""
        self._load()
        return self.limited

    def unlimited_under(self, methods: Iterable[str], cpus: int) -> tuple[str, ...]:
        """The start methods whose workers run OpenCV with more than one thread."""
        self._load()
        if self.limited:
            return ()
        out = []
        for m in methods:
            # fork inherits this process's setting; spawn/forkserver start from OpenCV's
            # default, one thread per CPU
            threads = self.here if m == "fork" and self.here is not None else cpus
            if threads > 1:
                out.append(m)
        return tuple(out)


def _opencv_in_worker_code(ctx: Context, limit: _Cv2Limit) -> list[Finding]:
    """WF115: worker code calls OpenCV functions and nothing sets cv2.setNumThreads(0)."""
    out: list[Finding] = []
    found: list[tuple[Node, type, str, list[Any]]] = []
    for node, cls in user_classes(ctx):
        by_method: dict[str, list[Any]] = {}
        for call in worker_calls(cls):
            if (
                in_modules(call.module, ("cv2",))
                and call.name.rsplit(".", 1)[-1] not in _CV2_CONFIG
            ):
                by_method.setdefault(call.method, []).append(call)
        found.extend((node, cls, method, calls) for method, calls in by_method.items())
    if not found:
        return out
    cpus = ctx.platform.usable_cpus
    methods = limit.unlimited_under(ctx.start_methods, cpus)
    if not methods:
        return out
    nw = ctx.num_workers
    threads = limit.here if limit.here is not None and "fork" in methods else cpus
    here = (
        f"cv2.getNumThreads() = {limit.here} in this process"
        if limit.here is not None and "fork" in methods
        else f"OpenCV's default: one per usable CPU, {cpus}"
    )
    total = f"{threads} x num_workers={nw} = {threads * nw}" if nw else f"{threads} x num_workers"
    for node, cls, method, calls in found:
        names = ", ".join(dict.fromkeys(c.name for c in calls))
        first = calls[0]
        via = f" (through {first.via})" if first.via else ""
        f = ctx.finding(
            "WF115",
            "warning",
            f"type({node.path}).{method}",
            f"{cls.__qualname__}.{method} calls {names} (line {first.line}{via}) in every "
            f"worker, and nothing sets cv2.setNumThreads(0) (not worker_init_fn, not at "
            f"import; {here}): each worker starts OpenCV's own pool of {threads} threads, "
            f"{total} threads on {cpus} usable CPUs, and under fork a pool copied from this "
            "process can deadlock the worker (pytorch/pytorch#1355, #1838).",
            "Turn OpenCV's threads off in each worker: a module-level "
            "`def worker_init_fn(worker_id): cv2.setNumThreads(0)` passed as "
            "DataLoader(worker_init_fn=worker_init_fn), or cv2.setNumThreads(0) at the top "
            "of the module that defines the dataset; the workers already run in parallel.",
            f"static: {names} at {source_file(cls)}:{first.line}{via}; {here}; no "
            "cv2.setNumThreads in worker_init_fn or at import",
            methods,
        )
        if f is not None:
            out.append(f)
    return out


def _blas_threads_here() -> tuple[int | None, str]:
    """(threads of numpy's BLAS pool in this process, where that number comes from)."""
    if importlib.util.find_spec("threadpoolctl") is None:
        return None, ""
    try:
        import threadpoolctl

        info = threadpoolctl.threadpool_info()
    except Exception:
        return None, ""
    blas = [i for i in info if i.get("user_api") == "blas"]
    if not blas:
        return None, ""
    n = max(int(i.get("num_threads", 1)) for i in blas)
    libs = ", ".join(sorted({str(i.get("internal_api", "?")) for i in blas}))
    return n, f"threadpoolctl.threadpool_info(): {libs}"


#: Calls that limit BLAS threads in a running process (``mkl.set_num_threads`` only: the
#: ``torch.set_num_threads`` DataLoader calls in every worker does not reach numpy's BLAS).
_BLAS_LIMITERS = frozenset(
    {"threadpool_limits", "openblas_set_num_threads", "mkl_set_num_threads", "set_num_threads"}
)


def _limits_blas(calls: list[tuple[str, ast.Call]]) -> bool:
    return any(
        _limit_value(c, "limits")
        and (name.rsplit(".", 1)[-1] != "set_num_threads" or name.split(".")[0] == "mkl")
        for name, c in calls
    )


def _blas_in_worker_code(ctx: Context) -> list[Finding]:
    """WF115: worker code runs BLAS/LAPACK while no thread variable or limit is set."""
    out: list[Finding] = []
    if any(os.environ.get(v) for v in BLAS_THREAD_VARS):
        return out  # the user chose a thread count
    np = sys.modules.get("numpy")
    if np is None:
        return out
    found: list[tuple[Node, type, str, list[tuple[int, str]]]] = []
    for node, cls in user_classes(ctx):
        reads = analyze_class(cls).reads
        arrays = frozenset(a for a in reads if isinstance(safe_getattr(node.obj, a), np.ndarray))
        by_method: dict[str, list[tuple[int, str]]] = {}
        for method, line, snippet in blas_calls(cls, arrays):
            by_method.setdefault(method, []).append((line, snippet))
        found.extend((node, cls, method, hits) for method, hits in by_method.items())
    if not found:
        return out
    if _limits_blas(function_calls(ctx.settings.get("worker_init_fn"), _BLAS_LIMITERS)):
        return out
    if any(_limits_blas(module_level_calls(m, _BLAS_LIMITERS)) for m in _import_time_modules(ctx)):
        return out
    cpus = ctx.platform.usable_cpus
    here, how_here = _blas_threads_here()
    methods = tuple(
        m for m in ctx.start_methods if (here if m == "fork" and here is not None else cpus) > 1
    )
    if not methods:
        return out
    if here is not None and "fork" in methods:
        threads, how = here, how_here
    else:
        threads, how = cpus, f"no thread variable set: one per usable CPU, {cpus}"
    nw = ctx.num_workers
    total = f"num_workers={nw} x {threads} = {nw * threads}" if nw else f"num_workers x {threads}"
    for node, cls, method, hits in found:
        snippets = ", ".join(dict.fromkeys(s for _, s in hits))
        line = hits[0][0]
        f = ctx.finding(
            "WF115",
            "warning",
            f"type({node.path}).{method}",
            f"{cls.__qualname__}.{method} runs BLAS/LAPACK per sample ({snippets}, line "
            f"{line}) while {', '.join(BLAS_THREAD_VARS)} are unset: numpy's BLAS pool has "
            f"{threads} threads ({how}), so the workers run {total} BLAS threads on {cpus} "
            "usable CPUs (oversubscription; KTH-RPL/OpenSceneFlow#33: 1600% CPU, 6x slower). "
            "DataLoader's torch.set_num_threads(1) in each worker does not reach numpy's BLAS.",
            "Limit BLAS to one thread per worker: a module-level "
            "`def worker_init_fn(worker_id): threadpoolctl.threadpool_limits(1)` "
            "(pip install threadpoolctl), or start training with OMP_NUM_THREADS=1 "
            "(and OPENBLAS_NUM_THREADS=1, MKL_NUM_THREADS=1) set before numpy is imported.",
            f"static: {snippets} at {source_file(cls)}:{line}; {how}; no threadpool_limits "
            "in worker_init_fn or at import",
            methods,
        )
        if f is not None:
            out.append(f)
    return out
