"""Static checks of the category 'unpicklable'.

What cannot be pickled into spawn/forkserver workers (WF101, WF103), and classes from an
interactive ``__main__`` that workers cannot import (WF102).
"""

from __future__ import annotations

import sys
import types
from typing import Any

from wellfed.doctor._classify import inside, pretty_type
from wellfed.doctor._context import SPAWNISH, Context
from wellfed.doctor._pickling import (
    direct_pickle_target,
    fix_unpicklable,
    pickle_error,
    why_unpicklable,
)
from wellfed.doctor._report import Finding

__all__ = [
    "check_interactive_main",
    "check_unpicklable",
]


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
