"""Static checks of the category 'fork-shared-handle'.

OS handles open before the workers start, which every forked worker shares (WF104): the
handles themselves, and objects judged whole that hold one (numpy's ``NpzFile``, a PIL image
opened but not loaded).
"""

from __future__ import annotations

from wellfed.doctor._classify import (
    HANDLE_FIXES,
    NPZ_KIND,
    PIL_KIND,
    handle_kind,
    held_handle,
    is_container,
    pretty_type,
)
from wellfed.doctor._context import Context
from wellfed.doctor._graph import Node
from wellfed.doctor._report import Finding
from wellfed.doctor._source import analyze_class, is_user_code

__all__ = [
    "check_fork_shared_handles",
]

#: Kinds handle_kind gives the handles themselves (the rest are objects that hold one).
_DIRECT_KINDS = frozenset(HANDLE_FIXES) - {NPZ_KIND, PIL_KIND}


def check_fork_shared_handles(ctx: Context) -> list[Finding]:
    """WF104: OS handles open now that every forked worker would share (offsets, locks).

    Skipped for objects whose worker code reopens per process (compares ``os.getpid()``).
    Sockets are shared under spawn too: multiprocessing duplicates their descriptor. Open
    handles that are items of one container (a list of opened PIL images) are reported once,
    at the first item, with the number of its siblings that are open too.
    """
    groups: dict[tuple[int, str], list[Node]] = {}
    for node in ctx.worker_nodes():
        hk = handle_kind(node.obj)
        if hk is None or not hk[1]:
            continue
        owner = node.owner
        if (
            owner is not None
            and not is_container(owner)
            and is_user_code(type(owner))
            and analyze_class(type(owner)).pid_guard
        ):
            continue
        # Items of one container form one group; any other handle is a group of its own.
        key = (id(owner), hk[0]) if is_container(owner) else (id(node.obj), node.path)
        groups.setdefault(key, []).append(node)
    out: list[Finding] = []
    for (_, kind), nodes in groups.items():
        if not is_container(nodes[0].owner):
            kind = handle_kind(nodes[0].obj)[0]  # type: ignore[index]
        f = _finding(ctx, nodes, kind)
        if f is not None:
            out.append(f)
    return out


def _finding(ctx: Context, nodes: list[Node], kind: str) -> Finding | None:
    node = nodes[0]
    methods: tuple[str, ...] = ("fork",)
    if kind == "socket":
        methods = ("fork", "spawn", "forkserver")
    article = "an" if kind[0] in "aeiou" else "a"
    more = ""
    if len(nodes) > 1:
        container = node.path[: node.path.rindex("[")]
        total = round(sum(n.weight for n in nodes))
        more = f" {len(nodes) - 1} more items of {container} are open too" + (
            f" (~{total:,} in all, estimated from the items walked)." if total > len(nodes) else "."
        )
    held = held_handle(node.obj) if kind not in _DIRECT_KINDS else None
    evidence = (
        f"static: {pretty_type(node.obj)} holds {'an' if held[1][0] in 'aeiou' else 'a'} "
        f"{held[1]} (open) in .{held[0]}"
        if held is not None
        else f"static: {pretty_type(node.obj)} is open in this process"
    )
    return ctx.finding(
        "WF104",
        "error",
        node.path,
        f"{node.path} is {article} {kind} opened before the workers start; every forked worker "
        "shares the same descriptor (one file offset, one connection), so concurrent reads "
        f"interleave and return wrong bytes or fail at random.{more}",
        "Open it in each worker instead: store the path in __init__ and open lazily.\n"
        + HANDLE_FIXES.get(kind, "open lazily in __getitem__"),
        evidence,
        methods,
    )
