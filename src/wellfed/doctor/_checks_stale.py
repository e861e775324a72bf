"""Static checks of the category 'stale-worker-state'.

State that workers hold a stale copy of (WF111), and worker code that mutates the dataset
(WF112).
"""

from __future__ import annotations

import sys
from typing import Any

from wellfed.doctor._classify import safe_getattr, source_text, user_classes
from wellfed.doctor._context import SPAWNISH, Context
from wellfed.doctor._graph import is_shared_state
from wellfed.doctor._report import Finding
from wellfed.doctor._source import analyze_class

__all__ = [
    "check_stale_state",
    "stale_fix",
    "stale_window",
]


def stale_fix(attr: str, value: Any, method: str, reader: str) -> str:
    """The WF111 fix, written for the attribute that goes stale and the method that changes it.

    Args:
        attr: The attribute, e.g. "values" (issue 15: the fix once said ``theta`` for every
            dataset).
        value: Its current value: a list or tuple is stored as a numpy array (SharedState
            holds tensors, arrays and scalars).
        method: The method the training loop calls to change it, e.g. "update_task".
        reader: The worker method that reads it, e.g. "__getitem__".
    """
    wrap = isinstance(value, (list, tuple))
    init = f"np.asarray({attr})" if wrap else attr
    new = f"np.asarray(new_{attr})" if wrap else f"new_{attr}"
    return (
        f"Put self.{attr} in a wellfed.SharedState, which workers read live:\n"
        f"self.state = wellfed.SharedState({attr}={init})  # in __init__, not self.{attr} = ...\n"
        f"{attr} = self.state['{attr}']  # in {reader}, instead of self.{attr}\n"
        f"self.state.update({attr}={new})  # in {method}, instead of changing self.{attr}\n"
        "(or build a new DataLoader after each change: its workers copy the current state; "
        "persistent_workers=False does that at every epoch, for changes between epochs)"
    )


def stale_window(persistent: bool) -> str:
    """How long a worker keeps a stale copy, completing "Each worker holds its own copy of
    the dataset ...": for the workers' life (persistent workers) or until the next epoch."""
    if persistent:
        return (
            "and with persistent_workers=True it keeps the copy it received when it started "
            "(the first epoch): stale for the workers' life"
        )
    return (
        "received when an epoch's iterator starts (iter(loader)): a change made after that "
        "is missed until the next epoch (with persistent_workers=True, for the workers' life)"
    )


def _shared_tensor_methods(value: Any, kind: str, methods: tuple[str, ...]) -> tuple[str, ...]:
    """The start methods whose workers see an in-place edit of ``value``: those that share
    its storage. A CPU tensor's storage moves to shared memory when torch pickles it for a
    spawn/forkserver worker (``torch.multiprocessing.reductions``), so the main process's
    in-place edits reach them; forked workers have copy-on-write pages, unless the storage
    is shared already (``Tensor.is_shared()``). Nothing for a reassignment or another type.

    Source: measured with persistent and non-persistent workers under fork, spawn and
    forkserver (tests/integration/test_doctor_stale_live.py).
    """
    torch = sys.modules.get("torch")
    if kind != "inplace" or torch is None or not isinstance(value, torch.Tensor):
        return ()
    if value.device.type != "cpu":
        return ()
    if value.is_shared():
        return methods
    return tuple(m for m in methods if m in SPAWNISH)


def check_stale_state(ctx: Context) -> list[Finding]:
    """WF111/WF112: state worker code reads that something else changes, and worker code
    that mutates the dataset (the change stays in one worker's copy).
    """
    out: list[Finding] = []
    persistent = bool(ctx.settings.get("persistent_workers"))
    wif_text = source_text(ctx.settings.get("worker_init_fn"))
    for node, cls in user_classes(ctx):
        obj = node.obj
        ana = analyze_class(cls, ctx.worker_hooks(obj))
        for attr, (method, line) in sorted(ana.changers.items()):
            value = safe_getattr(obj, attr)
            if is_shared_state(value):
                continue
            helper = ana.changer_helpers.get(attr)
            called = {method, *(ana.changer_entries.get(attr) or ()), helper or method}
            if wif_text and any(f".{m}(" in wif_text for m in called):
                continue  # worker_init_fn calls it: per-worker setup
            path = f"{node.path}.{attr}"
            kind = ana.changer_kinds.get(attr, "assign")
            where = f"through self.{helper}(), line {line}" if helper else f"line {line}"
            who = f"{cls.__qualname__}.{method} ({where})"
            readers = "/".join(ana.readers) or "worker code"
            reader = next(iter(ana.readers), "__getitem__")
            evidence = (
                f"static: {method} "
                + (f"calls {helper}, which " if helper else "")
                + ("edits" if kind == "inplace" else "assigns")
                + f" self.{attr} ({'in place' if kind == 'inplace' else 'a new object'}); "
                f"{readers} reads it"
            )
            fix = stale_fix(attr, value, method, reader)
            shared = _shared_tensor_methods(value, kind, ctx.start_methods)
            stale_methods = tuple(m for m in ctx.start_methods if m not in shared)
            f = ctx.finding(
                "WF111",
                "error" if persistent else "warning",
                path,
                f"{who} changes self.{attr}, which worker code reads. Each worker holds its "
                f"own copy of the dataset, {stale_window(persistent)}. Silently stale data "
                "(a pickling test cannot catch it)."
                + (
                    " Editing in place does not help under fork: a forked worker's memory is "
                    "a copy-on-write copy."
                    if kind == "inplace" and "fork" in stale_methods
                    else ""
                ),
                fix,
                evidence,
                stale_methods,
            )
            if f is not None:
                out.append(f)
            f = ctx.finding(
                "WF111",
                "info",
                path,
                f"{who} edits self.{attr} in place, a CPU tensor whose storage these workers "
                "share (torch moves it to shared memory when it pickles the dataset for a "
                "spawn/forkserver worker), so they see the edit: not stale. Replacing it "
                f"(self.{attr} = a new tensor) would be.",
                f"Nothing to fix while self.{attr} is edited in place (self.{attr}.copy_(new), "
                f"+=, add_). For a new value: self.{attr}.copy_(new_{attr}), not "
                f"self.{attr} = new_{attr}.",
                evidence + "; a CPU tensor edited in place reaches workers that share its storage",
                shared,
            )
            if f is not None and shared:
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
