"""WF111 live: change the dataset's state between two epochs and see what the workers read.

The static check (``_checks_stale``) knows that a method changes an attribute worker code
reads; whether the workers then read a stale copy depends on what it is and how it changes
(issue 15): a new object never reaches a worker that already holds a copy; an in-place edit
of a CPU tensor reaches spawn/forkserver workers, whose copy shares its storage (torch moves
it to shared memory when it pickles the dataset for them), but not forked ones;
non-persistent workers copy the dataset again at every epoch. So the probe measures it.

One run per start method, in an isolated child (``wellfed._isolate.run_isolated``) whose
dataset is a copy the user's process never sees again: a DataLoader with PROBE_WORKERS
workers (``persistent_workers`` as the user set it, their worker_init_fn) whose collate_fn,
run in the worker after each fetch, returns a digest of each suspect attribute as that
worker's copy of the dataset holds it (``get_worker_info().dataset``). The probe reads the
first sample of an epoch, changes the state in the child's main process, reads the rest of
the epoch and one more epoch, and compares the workers' digests with the main process's
before and after the change:

- the change: the public method the finding names, called when it takes no argument beyond
  self (``dataset.update_task()``); else a changed copy of the attribute, of the same type
  and shape (a tensor, array, number or list of numbers: + 1), assigned, or written in place
  where the method edits it in place;
- samples fetched after the change in the same epoch (indices the loader dispatched after
  it: the first PROBE_WORKERS x prefetch_factor + 1 were dispatched before) say whether a
  change after ``iter(loader)`` reaches the workers; the next epoch's samples say whether
  it ever does.

Grades: old values in the next epoch: confirmed, error, stale for the workers' life (a
warning, stale "until rebuilt", when the TARGET is a factory that builds a new DataLoader per
call); new values in the next epoch but old ones later in the changed epoch: warning, stale
until the next epoch; new values throughout: refuted, info.
"""

from __future__ import annotations

import ast
import builtins
import copy
import dataclasses
import inspect
import itertools
import textwrap
import time
import types
from typing import Any

from torch.utils.data import IterableDataset, get_worker_info

from wellfed._digest import batch_digest
from wellfed._isolate import run_isolated
from wellfed.doctor._classify import user_classes
from wellfed.doctor._context import Context
from wellfed.doctor._probe import PROBE_WORKERS, auto_batching, probe_indices
from wellfed.doctor._report import Finding, ProbeRun
from wellfed.doctor._source import analyze_class
from wellfed.errors import WorkerCrashedError, WorkerStartError
from wellfed.measure import close_loader, open_batches
from wellfed.target import callable_without_arguments

__all__ = [
    "MIN_REBUILT_S",
    "MIN_SHARE_S",
    "PREFETCH",
    "StaleTarget",
    "StateFingerprint",
    "judge_stale_live",
    "probe_stale_one",
    "rebuilt_per_call",
    "resolve_path",
    "stale_targets",
]

#: prefetch_factor of the probe's loader: with PROBE_WORKERS workers, the first
#: PROBE_WORKERS * PREFETCH + 1 indices are dispatched by the time the first sample is back.
PREFETCH = 2

#: Samples per worker read after the change in the changed epoch.
AFTER_PER_WORKER = 2

#: Fewest seconds a start method's run is given; with less left of the budget it is not run.
MIN_SHARE_S = 2.0

#: Fewest seconds the check that a factory TARGET rebuilds its loader per call is given.
MIN_REBUILT_S = 1.0


@dataclasses.dataclass(frozen=True)
class StaleTarget:
    """One WF111 suspect: where the attribute is and how the training loop changes it.

    Attributes:
        path: The finding's path, e.g. "dataset.values".
        owner_path: The object holding it, e.g. "dataset" or "dataset.base".
        attr: The attribute, e.g. "values".
        methods: Methods that change it, in the order the probe tries to call them: the
            public ones that reach the change, then the helper that makes it.
        kind: "inplace" or "assign" (see ``ClassAnalysis.changer_kinds``).
    """

    path: str
    owner_path: str
    attr: str
    methods: tuple[str, ...]
    kind: str


def stale_targets(ctx: Context, findings: list[Finding]) -> list[StaleTarget]:
    """The WF111 findings' suspects that the probe can reach from ``dataset``."""
    paths = {f.path for f in findings if f.code == "WF111"}
    out: list[StaleTarget] = []
    for node, cls in user_classes(ctx):
        if not (node.path == "dataset" or node.path.startswith(("dataset.", "dataset["))):
            continue
        ana = analyze_class(cls, ctx.worker_hooks(node.obj))
        for attr, (method, _line) in sorted(ana.changers.items()):
            path = f"{node.path}.{attr}"
            if path not in paths:
                continue
            helper = ana.changer_helpers.get(attr)
            methods = tuple(dict.fromkeys([method, *ana.changer_entries.get(attr, ()), helper]))
            out.append(
                StaleTarget(
                    path,
                    node.path,
                    attr,
                    tuple(m for m in methods if m),
                    ana.changer_kinds.get(attr, "assign"),
                )
            )
    return out


def resolve_path(root: Any, path: str) -> Any:
    """The object an attribute path names, from the dataset ``root``.

    Args:
        root: The dataset.
        path: A path rooted at ``dataset``: ``.name`` and ``[literal]`` steps
            (``dataset.base.values``, ``dataset.datasets[0]``).

    Raises:
        ValueError: the path has another kind of step (a call, ``type(...)``).
        AttributeError, KeyError, IndexError: a step does not exist.
    """
    expr = ast.parse(path, mode="eval").body

    def ev(node: ast.AST) -> Any:
        if isinstance(node, ast.Name) and node.id == "dataset":
            return root
        if isinstance(node, ast.Attribute):
            return getattr(ev(node.value), node.attr)
        if isinstance(node, ast.Subscript):
            return ev(node.value)[ast.literal_eval(node.slice)]
        raise ValueError(f"cannot follow {ast.unparse(node)!r} in {path!r}")

    return ev(expr)


class StateFingerprint:
    """A collate_fn that returns (worker id, {path: digest of that attribute}) as the worker's
    own copy of the dataset holds it (the samples themselves are dropped)."""

    def __init__(self, fields: tuple[tuple[str, str, str], ...]) -> None:
        self.fields = fields  # (path, owner_path, attr)

    def __call__(self, batch: Any) -> tuple[int, dict[str, str]]:
        info = get_worker_info()
        root = info.dataset if info is not None else None
        out: dict[str, str] = {}
        for path, owner_path, attr in self.fields:
            try:
                out[path] = batch_digest(getattr(resolve_path(root, owner_path), attr))
            except Exception as exc:
                out[path] = f"unreadable: {type(exc).__name__}"
        return (info.id if info is not None else -1), out


def _digest_now(dataset: Any, t: StaleTarget) -> str:
    try:
        return batch_digest(getattr(resolve_path(dataset, t.owner_path), t.attr))
    except Exception as exc:
        return f"unreadable: {type(exc).__name__}"


def _describe(value: Any) -> str:
    shape = getattr(value, "shape", None)
    dtype = getattr(value, "dtype", None)
    kind = f"{type(value).__module__.split('.')[0]}.{type(value).__name__}"
    if kind.startswith("builtins."):
        kind = type(value).__name__
    if shape is not None:
        return f"{kind} {tuple(shape)} {dtype}"
    if isinstance(value, (list, tuple)):
        return f"{kind} of {len(value)}"
    return kind


#: Builtins a method the probe calls may use: pure computation, no I/O.
_PURE_BUILTINS = frozenset(
    [
        "abs",
        "all",
        "any",
        "bool",
        "divmod",
        "enumerate",
        "float",
        "int",
        "isinstance",
        "len",
        "list",
        "max",
        "min",
        "pow",
        "range",
        "reversed",
        "round",
        "set",
        "sorted",
        "sum",
        "tuple",
        "zip",
        "dict",
    ]
)

#: Modules a method the probe calls may compute with (by the root of the module's name).
_PURE_MODULES = frozenset({"math", "numpy", "torch", "random"})

#: Names that read or write files, the network or devices, even in the modules above.
_IO_NAMES = frozenset(
    [
        "save",
        "savez",
        "savez_compressed",
        "savetxt",
        "load",
        "loadtxt",
        "fromfile",
        "tofile",
        "memmap",
        "open",
        "genfromtxt",
        "from_file",
        "hub",
        "distributed",
        "cuda",
        "to",
        "share_memory_",
        "dump",
        "dumps",
        "tolist_file",
        "print",
        "input",
        "system",
        "popen",
    ]
)

#: Statements a method the probe calls may not hold.
_IMPURE_NODES = (
    ast.Import,
    ast.ImportFrom,
    ast.Global,
    ast.Nonlocal,
    ast.With,
    ast.AsyncWith,
    ast.Await,
    ast.Yield,
    ast.YieldFrom,
    ast.Delete,
    ast.Raise,
    ast.Try,
)


def _pure_method(owner: Any, name: str, seen: set[str] | None = None) -> str:
    """ "" when the probe may call ``owner.name()``: its source (and that of the self-methods it
    calls) only assigns self attributes, edits them with their own tensor/array/list methods
    and computes with builtins, math, numpy, torch and random; else why not.

    Anything else (another call, open(), a property, an import, a global) may have effects
    outside the probe's copy of the dataset (a file written, a socket opened).
    """
    import numpy as np
    import torch

    cls = type(owner)
    seen = set() if seen is None else seen
    if name in seen:
        return ""
    seen.add(name)
    fn = inspect.getattr_static(cls, name, None)
    if isinstance(fn, (staticmethod, classmethod)):
        return f"{name} is a {type(fn).__name__}"
    if not isinstance(fn, types.FunctionType):
        return f"{name} is not plain Python"
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(fn)))
    except (OSError, TypeError, SyntaxError):
        return f"the source of {name} is not readable"
    (func,) = tree.body
    if not isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)) or func.decorator_list:
        return f"{name} is decorated"
    args = func.args
    self_name = args.args[0].arg if args.args else ""
    glb = fn.__globals__

    def rooted(node: ast.AST) -> tuple[str, list[str]]:
        chain: list[str] = []
        while isinstance(node, (ast.Attribute, ast.Subscript, ast.Call)):
            if isinstance(node, ast.Attribute):
                chain.append(node.attr)
            # torch.Generator().manual_seed(0): the inner call is checked on its own
            node = node.func if isinstance(node, ast.Call) else node.value
        return (node.id if isinstance(node, ast.Name) else ""), chain[::-1]

    for node in ast.walk(func):
        if isinstance(node, _IMPURE_NODES):
            return f"{name} holds a {type(node).__name__.lower()} statement"
        if isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for tgt in targets:
                for leaf in ast.walk(tgt):
                    if isinstance(leaf, (ast.Attribute, ast.Subscript)):
                        root, _ = rooted(leaf)
                        if root != self_name:
                            return f"{name} assigns {ast.unparse(leaf)}, not a self attribute"
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id == self_name
        ):
            attr = inspect.getattr_static(cls, node.attr, None)
            if isinstance(attr, property) or (
                attr is not None
                and not isinstance(attr, types.FunctionType)
                and hasattr(type(attr), "__get__")
            ):
                return f"{name} reads {self_name}.{node.attr}, a property or descriptor"
        if not isinstance(node, ast.Call):
            continue
        root, chain = rooted(node.func)
        call = ast.unparse(node.func)
        if any(c in _IO_NAMES for c in chain) or root in _IO_NAMES:
            return f"{name} calls {call}()"
        if isinstance(node.func, ast.Name):
            if root in _PURE_BUILTINS and root not in glb and getattr(builtins, root, None):
                continue
            return f"{name} calls {call}()"
        if root == self_name and len(chain) == 1:
            why = _pure_method(owner, chain[0], seen)
            if why:
                return why
            continue
        if root == self_name and len(chain) >= 2 and isinstance(node.func, ast.Attribute):
            # self.values.add_(1): the attribute's own method; its class decides below
            owner_attr = chain[0]
            kinds = (torch.Tensor, np.ndarray, list, dict, set)
            value = getattr(owner, "__dict__", {}).get(owner_attr)
            if isinstance(value, kinds):
                continue
            return f"{name} calls {call}()"
        mod = glb.get(root)
        if isinstance(mod, types.ModuleType) and mod.__name__.split(".")[0] in _PURE_MODULES:
            continue
        return f"{name} calls {call}()"
    return ""


def _shares_memory(a: Any, b: Any) -> bool:
    """Whether ``a`` (the copy's value) and ``b`` (the original's) share memory."""
    import numpy as np
    import torch

    if a is b:
        return True
    if isinstance(a, np.memmap) or isinstance(b, np.memmap):
        return True
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        if a.device.type != "cpu" or b.device.type != "cpu":
            return True
        return bool(a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr())
    if isinstance(a, np.ndarray) and isinstance(b, np.ndarray):
        return bool(np.shares_memory(a, b))
    return False


def _unsafe_to_edit(copy_owner: Any, orig_owner: Any) -> str:
    """The first attribute of ``copy_owner`` (the probe's copy) whose memory is that of the
    original's (a memory-mapped array, a shared buffer), or ""."""
    import numpy as np
    import torch

    for attr, value in list(getattr(copy_owner, "__dict__", {}).items()):
        if isinstance(value, (torch.Tensor, np.ndarray)):
            orig = getattr(orig_owner, attr, None)
            if orig is not None and _shares_memory(value, orig):
                return str(attr)
    return ""


def _changed_copy(value: Any, inplace: bool) -> tuple[Any, str] | None:
    """(the changed value, how) for a value the probe can change safely, else None.

    In place (the value itself edited, the object kept) for a tensor, array or list when the
    method edits in place; else a new object of the same type and shape.
    """
    import numpy as np
    import torch

    if isinstance(value, torch.Tensor):
        if value.device.type != "cpu" or value.numel() == 0:
            return None
        with torch.no_grad():
            if value.dtype == torch.bool:
                return (value.logical_not_(), "inverted in place") if inplace else (~value, "")
            return (value.add_(1), "+1 in place") if inplace else (value + 1, "+1")
    if isinstance(value, np.ndarray):
        if value.size == 0 or value.dtype.kind not in "biuf":
            return None
        if inplace and value.flags.writeable:
            if value.dtype.kind == "b":
                np.logical_not(value, out=value)
                return value, "inverted in place"
            value += 1
            return value, "+1 in place"
        return (~value if value.dtype.kind == "b" else value + 1), "+1"
    if isinstance(value, bool):
        return (not value), "inverted"
    if isinstance(value, (int, float)):
        return value + 1, "+1"
    if isinstance(value, (list, tuple)) and value:
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            return None
        new = [v + 1 for v in value]
        if inplace and isinstance(value, list):
            value[:] = new
            return value, "+1 per item, in place"
        return type(value)(new), "+1 per item"
    return None


def _change(
    dataset: Any, original: Any, t: StaleTarget, before: str, called: list[str]
) -> tuple[str, str]:
    """Change ``t`` in this (the child's main) process: ("changed", how) or ("", why not).

    ``dataset`` is the probe's deep copy and ``original`` the dataset the child received:
    only the copy is changed, and nothing whose memory the original shares (a memory-mapped
    array's file, a tensor's shared storage) is edited in place.
    """
    if _digest_now(dataset, t) != before and called:
        return "changed", f"{called[-1]} (called for another attribute)"
    try:
        owner = resolve_path(dataset, t.owner_path)
        orig_owner = resolve_path(original, t.owner_path)
    except Exception as exc:
        return "", f"{t.owner_path} not reachable: {type(exc).__name__}: {exc}"
    shared = _unsafe_to_edit(owner, orig_owner)
    notes: list[str] = []
    for name in t.methods:
        fn = getattr(owner, name, None)
        call = f"{t.owner_path}.{name}()"
        if not callable(fn) or call in called:
            continue
        if not callable_without_arguments(fn):
            notes.append(f"{name} takes arguments")
            continue
        impure = _pure_method(owner, name)
        if impure:
            notes.append(f"{name} not called: {impure}")
            continue
        if shared:
            notes.append(
                f"{name} not called: {t.owner_path}.{shared} shares its memory with the "
                "caller's dataset"
            )
            continue
        called.append(call)
        try:
            fn()
        except Exception as exc:
            notes.append(f"{call} raised {type(exc).__name__}: {exc}")
            continue
        if _digest_now(dataset, t) != before:
            return "changed", call
        notes.append(f"{call} left {t.path} as it was")
    try:
        value = getattr(owner, t.attr)
    except Exception as exc:
        return "", f"{t.path} not readable: {type(exc).__name__}"
    inplace = t.kind == "inplace"
    if inplace and _shares_memory(value, getattr(orig_owner, t.attr, None)):
        return "", (
            f"{t.path} ({_describe(value)}) shares its memory with the caller's dataset (a "
            "memory-mapped file or a shared buffer): the probe does not edit it in place"
        )
    changed = _changed_copy(value, inplace)
    why = f" ({'; '.join(notes)})" if notes else ""
    if changed is None:
        return "", f"no method to call without arguments{why}, and the probe cannot make a " + (
            f"changed copy of a {_describe(value)}"
        )
    new, how = changed
    if new is not value:
        try:
            setattr(owner, t.attr, new)
        except Exception as exc:
            return "", f"{t.path} could not be assigned: {type(exc).__name__}: {exc}"
        what = f"it assigned {t.path} a changed copy: {_describe(value)}, {how}"
    else:
        what = f"it edited {t.path} in place: {_describe(value)}, {how}"
    if _digest_now(dataset, t) == before:
        return "", f"the probe's own change left {t.path}'s digest as it was ({what})"
    lead = f"{'; '.join(notes)}, so " if notes else ""
    return "changed", f"the probe's own change ({lead}{what})"


def probe_stale_one(
    dataset: Any,
    settings: dict[str, Any],
    method: str,
    targets: list[StaleTarget],
    loader_timeout_s: float,
    shared: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Run the stale-state probe under one start method (in the isolated child).

    The probe changes a deep copy of ``dataset``, never the object it was given: that one
    may share memory with the caller's (a spawned child receives CPU tensors in shared
    memory, a forked one shares what was already shared, a np.memmap shares its file).

    Args:
        dataset: The dataset (a copy: the child's; it is changed here).
        settings: The loader settings: persistent_workers, worker_init_fn, sampler...
        method: The workers' start method.
        targets: The suspects (``stale_targets``).
        loader_timeout_s: DataLoader ``timeout``: seconds to wait for any one batch.
        shared: Paths of the suspects that were tensors in shared memory in the caller's
            process; the copy's are moved to shared memory too, so workers share them as
            they would the caller's.

    Returns:
        {"persistent": bool, "targets": {path: result}} where a result is {"status": "ok",
        "change", "mid": counts, "next": counts} (counts of samples whose digest was the
        value after the change "new", before it "old", or neither "other") or {"status":
        "not_probed", "reason"}; or {"error": text} when the workers failed.
    """
    import warnings

    import torch

    torch.set_num_threads(1)  # see probe_one: OpenMP after fork
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            try:
                work = copy.deepcopy(dataset)
            except Exception as exc:
                reason = (
                    "the dataset cannot be copied safely (copy.deepcopy raised "
                    f"{type(exc).__name__}: {exc})"[:300]
                )
                return {
                    "persistent": bool(settings.get("persistent_workers")),
                    "targets": {
                        t.path: {"status": "not_probed", "reason": reason} for t in targets
                    },
                }
            for t in targets:
                if t.path in shared:
                    value = getattr(resolve_path(work, t.owner_path), t.attr, None)
                    if isinstance(value, torch.Tensor) and value.device.type == "cpu":
                        value.share_memory_()  # type: ignore[no-untyped-call]
            return _probe_stale(work, dataset, settings, method, targets, loader_timeout_s)
        except (WorkerStartError, WorkerCrashedError) as exc:
            return {"error": str(exc)[:600]}
        except Exception as exc:
            return {"error": f"{type(exc).__name__}: {exc}"[:600]}


def _probe_stale(
    dataset: Any,
    original: Any,
    settings: dict[str, Any],
    method: str,
    targets: list[StaleTarget],
    loader_timeout_s: float,
) -> dict[str, Any]:
    from wellfed.seeded_loader import SeededDataLoader as DataLoader

    persistent = bool(settings.get("persistent_workers"))
    results: dict[str, dict[str, Any]] = {}
    before = {t.path: _digest_now(dataset, t) for t in targets}
    usable = []
    for t in targets:
        if before[t.path].startswith("unreadable"):
            results[t.path] = {"status": "not_probed", "reason": f"{t.path} {before[t.path]}"}
        else:
            usable.append(t)
    if not usable:
        return {"persistent": persistent, "targets": results}
    dispatched_before = PROBE_WORKERS * PREFETCH + 1
    per_epoch = dispatched_before + AFTER_PER_WORKER * PROBE_WORKERS
    common: dict[str, Any] = {
        "num_workers": PROBE_WORKERS,
        "persistent_workers": persistent,
        "worker_init_fn": settings.get("worker_init_fn"),
        "multiprocessing_context": method,
        "timeout": loader_timeout_s,
        "prefetch_factor": PREFETCH,
        "collate_fn": StateFingerprint(tuple((t.path, t.owner_path, t.attr) for t in usable)),
        "batch_size": 1 if auto_batching(settings) else None,
    }
    if isinstance(dataset, IterableDataset) or not hasattr(dataset, "__getitem__"):
        loader = DataLoader(dataset, **common)
    else:
        keys = probe_indices(dataset, settings)
        if not keys:
            reason = "the sampler yields no index"
            for t in usable:
                results[t.path] = {"status": "not_probed", "reason": reason}
            return {"persistent": persistent, "targets": results}
        sampler = list(itertools.islice(itertools.cycle(keys), per_epoch))
        loader = DataLoader(dataset, sampler=sampler, **common)
    changes: dict[str, tuple[str, str]] = {}
    after: dict[str, str] = {}
    called: list[str] = []
    try:
        with open_batches(loader, keep_workers=True) as it:
            epoch1 = list(itertools.islice(it, 1))
            for t in usable:
                changes[t.path] = _change(dataset, original, t, before[t.path], called)
            after = {t.path: _digest_now(dataset, t) for t in usable}
            epoch1 += list(itertools.islice(it, per_epoch - 1))
        with open_batches(loader) as it:
            epoch2 = list(itertools.islice(it, per_epoch))
    finally:
        close_loader(loader)
    for t in usable:
        status, how = changes[t.path]
        if not status:
            results[t.path] = {"status": "not_probed", "reason": how}
            continue

        def count(items: list[tuple[int, dict[str, str]]], path: str = t.path) -> dict[str, int]:
            c = {"new": 0, "old": 0, "other": 0}
            for _wid, digests in items:
                d = digests.get(path)
                c["new" if d == after[path] else "old" if d == before[path] else "other"] += 1
            return c

        first = count(epoch1[:1])
        if first["old"] == 0:
            results[t.path] = {
                "status": "not_probed",
                "reason": f"before the change the workers' {t.path} already differed from the "
                "main process's (rebuilt in the worker, or not comparable across processes)",
            }
            continue
        results[t.path] = {
            "status": "ok",
            "change": how,
            "mid": count(epoch1[dispatched_before:]),
            "next": count(epoch2),
        }
    return {"persistent": persistent, "targets": results}


def rebuilt_per_call(obj: Any, timeout_s: float) -> tuple[str | None, str]:
    """Whether ``obj`` (a LoaderSpec of a factory TARGET) builds a new DataLoader per call.

    The factory is called twice more, in an isolated child (``run_isolated``), never in the
    caller's process: two different DataLoader objects mean each call builds its own loader,
    whose workers copy the dataset as it is then. Nothing is iterated; what was built is
    closed (``close_loader``).

    Args:
        obj: What ``diagnose`` was given.
        timeout_s: Seconds the child may take (what is left of the live probe's budget).

    Returns:
        (the factory's name, "") when it does; (None, "") when it does not or ``obj`` is no
        factory; (None, "not known: <why>") when the child failed, timed out or had no time.
    """
    factory = getattr(obj, "factory", None)
    if factory is None or getattr(obj, "source", None) != "factory":
        return None, ""
    name = str(getattr(obj, "target", None) or getattr(factory, "__qualname__", "factory"))
    if timeout_s < MIN_REBUILT_S:
        return (
            None,
            f"not known: the live probe's budget was spent ({max(timeout_s, 0):.1f} s left)",
        )
    res = run_isolated(_builds_two_loaders, factory, timeout_s=timeout_s)
    if res.status == "ok" and isinstance(res.value, bool):
        return (name if res.value else None), ""
    lines = [ln.strip() for ln in (res.error or "").splitlines() if ln.strip()]
    last = lines[-1][:200] if lines else "no output"
    what = f"timed out after {timeout_s:.1f} s (killed)" if res.status == "timeout" else res.status
    return None, f"not known: calling {name} twice in an isolated process {what}: {last}"


def _builds_two_loaders(factory: Any) -> bool:
    """Call ``factory`` twice (in the isolated child): two different DataLoaders?"""
    from torch.utils.data import DataLoader

    built: list[Any] = []
    try:
        built.append(factory())
        built.append(factory())
        a, b = built
        return isinstance(a, DataLoader) and isinstance(b, DataLoader) and a is not b
    finally:
        for loader in built:
            if isinstance(loader, DataLoader):
                close_loader(loader)


def judge_stale_live(
    ctx: Context,
    obj: Any,
    findings: list[Finding],
    probes: list[ProbeRun],
    budget_s: float,
) -> tuple[list[Finding], list[ProbeRun]]:
    """Probe every WF111 finding live and grade it by what the workers read.

    Args:
        ctx: The doctor's context (dataset, settings).
        obj: What ``diagnose`` was given (a LoaderSpec of a factory TARGET is checked with
            ``rebuilt_per_call``, in an isolated child, with what is left of the budget).
        findings: The findings so far (static, graded by the main probe).
        probes: The main probe's runs: a start method whose run was not "ok" is not probed.
        budget_s: Seconds left of the live probe's budget, shared by the start methods.

    Returns:
        (findings, probes): WF111 findings re-graded per start method, and the runs with
        ``observations["stale_state"]`` (the measured counts) added.
    """
    targets = stale_targets(ctx, findings)
    if not targets:
        return findings, probes
    ok = [r.start_method for r in probes if r.status == "ok"]
    methods = [m for m in ctx.start_methods if m in ok]
    results: dict[str, dict[str, Any]] = {}
    runs = list(probes)
    shared = _shared_paths(ctx.dataset, targets)  # before a spawn child's pickling shares them
    began = time.perf_counter()
    for i, m in enumerate(methods):
        # What an earlier method left unused goes to the later ones (fork takes < 1 s).
        left = budget_s - (time.perf_counter() - began)
        share = left / (len(methods) - i)
        if share < MIN_SHARE_S:
            results[m] = {"error": f"the live probe's budget was spent ({left:.1f} s left)"}
        else:
            start = time.perf_counter()
            res = run_isolated(
                probe_stale_one,
                ctx.dataset,
                ctx.settings,
                m,
                targets,
                max(0.5, share * 0.8),
                shared,
                timeout_s=share,
            )
            if res.status == "ok" and isinstance(res.value, dict):
                results[m] = dict(res.value)
            else:
                lines = [ln.strip() for ln in (res.error or "").splitlines() if ln.strip()]
                last = lines[-1][:300] if lines else "no output"
                what = "timed out (killed)" if res.status == "timeout" else res.status
                took = time.perf_counter() - start
                results[m] = {"error": f"the probe's run {what} after {took:.1f} s: {last}"}
            results[m]["elapsed_s"] = time.perf_counter() - start
        for j, r in enumerate(runs):
            if r.start_method == m:
                runs[j] = dataclasses.replace(
                    r, observations={**r.observations, "stale_state": results[m]}
                )
    rebuilt: str | None = None
    unknown = ""
    if any(_stale(r) for r in results.values()):
        rebuilt, unknown = rebuilt_per_call(obj, budget_s - (time.perf_counter() - began))
    by_path = {t.path: t for t in targets}
    out: list[Finding] = []
    for f in findings:
        t = by_path.get(f.path)
        if f.code != "WF111" or t is None:
            out.append(f)
            continue
        out.extend(_grade(f, t, results, rebuilt, unknown))
    return out, runs


def _shared_paths(dataset: Any, targets: list[StaleTarget]) -> tuple[str, ...]:
    """The suspects that are CPU tensors in shared memory in the caller's process."""
    import torch

    out: list[str] = []
    for t in targets:
        try:
            value = getattr(resolve_path(dataset, t.owner_path), t.attr)
        except Exception:
            continue
        if isinstance(value, torch.Tensor) and value.device.type == "cpu" and value.is_shared():  # type: ignore[no-untyped-call]
            out.append(t.path)
    return tuple(out)


def _stale(result: dict[str, Any]) -> bool:
    return any(
        r.get("status") == "ok" and r["next"]["old"] > 0
        for r in (result.get("targets") or {}).values()
    )


def _verdict(result: dict[str, Any] | None, path: str) -> tuple[str, str]:
    """(verdict, evidence text) for one path under one start method."""
    if result is None:
        return "skip", ""  # the main probe did not run here; its own note says why
    if "error" in result:
        return "unprobed", str(result["error"]).splitlines()[0][:300]
    r = (result.get("targets") or {}).get(path)
    if r is None:
        return "unprobed", "no result"
    if r.get("status") != "ok":
        return "unprobed", str(r.get("reason", "no reason given"))
    mid, nxt = r["mid"], r["next"]
    change = r["change"]
    n_mid, n_next = sum(mid.values()), sum(nxt.values())
    kind = "persistent" if result.get("persistent") else "non-persistent"
    if nxt["old"] > 0:
        return "stale", (
            f"after {change} in the main process, {nxt['old']} of {n_next} samples the "
            f"{kind} workers served in the next epoch read the old {path}"
        )
    if n_next and nxt["new"] == n_next and mid["old"] > 0:
        return "next_epoch", (
            f"{change} made after iter(loader): {mid['old']} of {n_mid} samples fetched "
            f"later in that epoch read the old {path}; all {n_next} of the next epoch read "
            "the new one"
        )
    if n_next and nxt["new"] == n_next and mid["new"] == n_mid:
        return "seen", (
            f"workers saw the update: after {change} (made after iter(loader)), the {n_mid} "
            f"samples fetched later in that epoch and all {n_next} of the next epoch read "
            f"the new {path}"
        )
    return "unprobed", (
        f"after {change}, the workers' {path} was neither the old nor the new value "
        f"(changed epoch {mid}, next epoch {nxt})"
    )


def _clauses(word: str, items: list[tuple[str, str]]) -> str:
    """ "confirmed live (fork): <text>; confirmed live (spawn): the same" for the methods."""
    out: list[str] = []
    for i, (m, text) in enumerate(items):
        same = i > 0 and text == items[0][1]
        out.append(f"{word} ({m}): {'the same' if same else text}")
    return "; ".join(out)


def _grade(
    f: Finding,
    t: StaleTarget,
    results: dict[str, dict[str, Any]],
    rebuilt: str | None,
    unknown: str = "",
) -> list[Finding]:
    """The finding ``f`` split by what the probe saw under each of its start methods.

    ``unknown``: why it is not known whether the factory TARGET rebuilds its loader per call
    ("" when it is known), added to a stale verdict's evidence.
    """
    groups: dict[str, list[tuple[str, str]]] = {}
    for m in f.start_methods:
        verdict, text = _verdict(results.get(m), t.path)
        groups.setdefault(verdict, []).append((m, text))
    out: list[Finding] = []
    for verdict, items in groups.items():
        methods = tuple(m for m, _ in items)
        under = ", ".join(methods)
        if verdict == "skip":
            out.append(dataclasses.replace(f, start_methods=methods))
            continue
        if verdict == "unprobed":
            notes = _clauses("stale state not probed live", items)
            out.append(
                dataclasses.replace(f, start_methods=methods, evidence=f"{f.evidence}; {notes}")
            )
            continue
        if verdict == "seen":
            notes = _clauses("refuted live", items)
            out.append(
                dataclasses.replace(
                    f,
                    severity="info",
                    start_methods=methods,
                    message=(
                        f"{t.path} is changed by {t.methods[0]} after the workers copy the "
                        f"dataset, but under {under} the live probe saw the workers read the "
                        "new value, in the epoch it changed and the next: not stale here."
                        + (
                            " (The change edits it in place and these workers share its "
                            "memory: a CPU tensor under spawn/forkserver, or a shared or "
                            "memory-mapped buffer; replacing it with a new object would be "
                            "stale.)"
                            if t.kind == "inplace"
                            else ""
                        )
                        + " [WF111]"
                    ),
                    fix=f"Nothing to fix under {under}. If the change ever replaces "
                    f"self.{t.attr} with a new object, apply this instead:\n{f.fix}",
                    evidence=f"{notes}; {f.evidence}",
                )
            )
            continue
        notes = _clauses("confirmed live", items)
        base = f.message
        if f.severity == "info":  # the static check expected these workers to share the edit
            base = (
                f"{t.path} is changed by {t.methods[0]} after the workers copy the dataset, "
                "and the workers kept reading the old value. [WF111]"
            )
        persistent = any(bool((results.get(m) or {}).get("persistent")) for m in methods)
        if verdict == "stale" and unknown:
            notes += f"; whether the TARGET builds a new DataLoader at every call is {unknown}"
        if verdict == "stale" and rebuilt is None:
            severity = "error"
            window = "stale for the workers' life" if persistent else "stale in the next epoch too"
            message = _with_window(base, f"Confirmed live under {under}: {window}.")
        elif verdict == "stale":
            severity = "warning"
            message = _with_window(
                base,
                f"Confirmed live under {under}: the workers kept the old value in the next "
                f"epoch. But the TARGET {rebuilt} builds a new DataLoader at every call, whose "
                "workers copy the dataset as it is then: if the training loop calls it after "
                "each change (per task), the copy is stale only until the loader is rebuilt "
                "(the doctor cannot see the loop).",
            )
        else:  # next_epoch
            severity = "warning"
            message = _with_window(
                base,
                f"Confirmed live under {under}: stale until the next epoch.",
            )
        out.append(
            dataclasses.replace(
                f,
                severity=severity,
                start_methods=methods,
                message=message,
                evidence=f"{notes}; {f.evidence}",
            )
        )
    return out


def _with_window(message: str, sentence: str) -> str:
    """``message`` with ``sentence`` put before its code."""
    body = message.rstrip()
    code = ""
    if body.endswith("]") and " [WF" in body:
        body, _, code = body.rpartition(" [")
        code = f" [{code}"
    return f"{body} {sentence}{code}"
