"""Static checks of the category 'memory-growth'.

Memory that grows in workers: large containers of Python objects, copied page by page
as workers read them (copy-on-read, WF109), and caches filled inside worker code (WF110).
"""

from __future__ import annotations

import collections
import sys

from wellfed.doctor._classify import inside, is_container, safe_getattr, user_classes
from wellfed.doctor._context import Context
from wellfed.doctor._graph import is_shared_state
from wellfed.doctor._report import Finding
from wellfed.doctor._source import analyze_class

__all__ = [
    "COPY_ON_READ_ITEMS",
    "check_copy_on_read",
    "check_worker_caches",
]


#: A container of at least this many Python objects is reported as copy-on-read memory growth.
#: Every read of an item writes its reference count, so under fork each worker slowly gets a
#: private copy of every page it touches; with 10**5 items of ~100 bytes that is >= 10 MB per
#: worker and grows with the epoch.
#: Source: pytorch/pytorch#13246 ("DataLoader num_workers > 0 causes CPU memory from parent
#: process to be replicated in all child processes"), whose reports start at ~10**5 file names.
COPY_ON_READ_ITEMS = 100_000


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


def _bounded_container(value: object) -> bool:
    """A container that bounds itself: a cachetools cache (``maxsize``), a deque with maxlen."""
    if isinstance(value, collections.deque):
        return value.maxlen is not None
    return type(value).__module__.split(".")[0] == "cachetools" and isinstance(
        getattr(value, "maxsize", None), (int, float)
    )


def check_worker_caches(ctx: Context) -> list[Finding]:
    """WF110: caches filled inside worker code (each worker fills its own; unbounded)."""
    out: list[Finding] = []
    for node, cls in user_classes(ctx):
        ana = analyze_class(cls)
        for attr, (method, line) in sorted(ana.cache_fills.items()):
            value = safe_getattr(node.obj, attr)
            if is_shared_state(value):
                continue
            if _bounded_container(value):
                continue
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
