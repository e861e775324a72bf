"""Static checks of the category 'fork-shared-handle'.

OS handles open before the workers start, which every forked worker shares (WF104).
"""

from __future__ import annotations

from wellfed.doctor._classify import HANDLE_FIXES, handle_kind, pretty_type
from wellfed.doctor._context import Context
from wellfed.doctor._report import Finding
from wellfed.doctor._source import analyze_class, is_user_code

__all__ = [
    "check_fork_shared_handles",
]


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
