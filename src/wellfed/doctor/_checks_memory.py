"""Static checks of the category 'memory-growth'.

Memory that grows in workers: large containers of Python objects, copied page by page
as workers read them (copy-on-read, WF109), and caches filled inside worker code (WF110).

How many Python objects a container holds is estimated, not taken from its length: a list
of 50,000 dicts holds ~450,000 objects (each dict, its values, the containers inside), a
pandas DataFrame holds one object per cell of each object column, a list of small ints
holds almost none (CPython shares them). ``estimate_objects`` counts the objects of the
items the walk samples and scales by the container's length.
"""

from __future__ import annotations

import collections
import inspect
import sys
from collections.abc import Iterator
from typing import Any

from wellfed.doctor._classify import (
    class_attributes,
    inside,
    is_container,
    safe_getattr,
    user_classes,
)
from wellfed.doctor._context import Context
from wellfed.doctor._graph import is_shared_state, sampled_entries, walk_enters
from wellfed.doctor._report import Finding
from wellfed.doctor._source import analyze_class, is_user_code

__all__ = [
    "COPY_ON_READ_ITEMS",
    "check_copy_on_read",
    "check_worker_caches",
    "estimate_objects",
]


#: A container holding at least this many Python objects is reported as copy-on-read memory
#: growth. Every read of an object writes its reference count (and the cyclic garbage
#: collector writes to the header of every container it tracks), so under fork each worker
#: slowly gets a private copy of every page it touches; with 10**5 objects of ~100 bytes
#: that is >= 10 MB per worker and grows with the epoch.
#: Source: pytorch/pytorch#13246 ("DataLoader num_workers > 0 causes CPU memory from parent
#: process to be replicated in all child processes"), whose reports start at ~10**5 file
#: names; tier4/autoware-ml#78 (a list of info dicts, OOM with workers); pytorch/pytorch#5902
#: (a pandas DataFrame of object columns, 5 GB -> 17 GB with workers).
COPY_ON_READ_ITEMS = 100_000

#: Deepest nesting followed inside one container's items; deeper objects count as one each.
_MAX_DEPTH = 6

#: A tally keeps at most this many distinct objects; beyond, it keeps their sum only (the
#: identities that tell shared objects from per-item ones are dropped).
_TALLY_CAP = 4096


def _is_cached_singleton(x: Any) -> bool:
    """True for objects CPython shares between every use, which no item owns.

    Source: CPython's small-int cache (-5..256, ``_PY_NSMALLNEGINTS``/``_PY_NSMALLPOSINTS``
    in Include/internal/pycore_global_objects.h) and its one-character latin-1 string cache
    (``_Py_LATIN1_CHR``); None, True, False, (), b"" and "" are singletons.
    """
    if x is None or x is Ellipsis or x is NotImplemented:
        return True
    t = type(x)
    if t is bool:
        return True
    if t is int:
        return bool(-5 <= x <= 256)
    if t is str:
        return len(x) <= 1 and (not x or ord(x) < 256)
    if t in (tuple, bytes, frozenset):
        return len(x) == 0
    return False


def _holds_python_objects(dtype: Any) -> bool:
    """True for a numpy or pandas dtype whose values are Python objects (one per cell)."""
    np = sys.modules.get("numpy")
    if np is not None and isinstance(dtype, np.dtype):
        return bool(dtype.kind == "O")
    # pandas' StringDtype: storage "python" keeps a numpy object array of str; "pyarrow"
    # keeps Arrow buffers (no Python objects).
    return type(dtype).__name__ == "StringDtype" and bool(
        getattr(dtype, "storage", None) == "python"
    )


def _pandas_objects(obj: Any) -> int | None:
    """Python objects a pandas DataFrame, Series or Index holds: rows x object columns (plus
    an object index); None when obj is none of these or pandas is not imported.

    pandas is never imported here: a frame exists only where pandas already is.
    """
    pd = sys.modules.get("pandas")
    if pd is None or not in_pandas(obj):
        return None
    try:
        if isinstance(obj, pd.DataFrame):
            rows = len(obj.index)
            cols = sum(1 for dt in obj.dtypes if _holds_python_objects(dt))
            return rows * cols + (rows if _holds_python_objects(obj.index.dtype) else 0)
        if isinstance(obj, pd.Series):
            rows = len(obj.index)
            own = rows if _holds_python_objects(obj.dtype) else 0
            return own + (rows if _holds_python_objects(obj.index.dtype) else 0)
        if isinstance(obj, pd.Index):
            return len(obj) if _holds_python_objects(obj.dtype) else 0
    except Exception:
        return None
    return None


def in_pandas(obj: Any) -> bool:
    """True when obj's type comes from pandas (checked by module name, pandas not imported)."""
    mod = getattr(type(obj), "__module__", "") or ""
    return mod == "pandas" or mod.startswith("pandas.")


def _object_array(obj: Any) -> bool:
    np = sys.modules.get("numpy")
    return np is not None and isinstance(obj, np.ndarray) and obj.dtype.kind == "O"


def _sampled_items(obj: Any) -> tuple[int, list[Any]]:
    """(length, sampled items) of a container or object array, sampled as the walk samples
    (``_graph.sampled_entries``); a dict's item is its (key, value) pair."""
    if isinstance(obj, dict):
        return sampled_entries(obj)
    if _object_array(obj):
        obj = obj.reshape(-1) if obj.flags.c_contiguous else obj.ravel()
    n, entries = sampled_entries(obj)
    return n, [v for _, v in entries]


class _Tally:
    """Counts the Python objects held by containers, remembering each container's count.

    A container's tally maps object ids to how many objects each stands for: an object met
    in two or more sampled items is shared (a dict key every record reuses, a category
    string) and counts once; one met in a single sampled item stands for one per item, so
    it is scaled by length / sampled items. Objects are kept alive by the graph (the walk's
    nodes) while the tally runs, so their ids stay unique.
    """

    def __init__(self) -> None:
        self._memo: dict[int, dict[int, float]] = {}
        self._busy: set[int] = set()

    def total(self, obj: Any) -> float:
        """Python objects obj holds, itself included (0 for a shared singleton)."""
        return sum(self.tally(obj, 0).values())

    def tally(self, obj: Any, depth: int) -> dict[int, float]:
        if _is_cached_singleton(obj):
            return {}
        key = id(obj)
        memo = self._memo.get(key)
        if memo is not None:
            return memo
        if key in self._busy or depth > _MAX_DEPTH or is_shared_state(obj):
            return {key: 1.0}
        pandas_n = _pandas_objects(obj)
        if pandas_n is not None:
            out = {key: 1.0, ~key: float(pandas_n)} if pandas_n else {key: 1.0}
            self._memo[key] = out
            return out
        if is_container(obj) or _object_array(obj):
            self._busy.add(key)
            try:
                out = self._container(obj, depth)
            except Exception:
                out = {key: 1.0}
            finally:
                self._busy.discard(key)
            self._memo[key] = out
            return out
        attrs = safe_getattr(obj, "__dict__")
        if isinstance(attrs, dict) and attrs and not isinstance(obj, type) and walk_enters(obj):
            # A plain record object (a dataclass, a namedtuple-like class): itself, its
            # __dict__ and what the __dict__ holds.
            self._busy.add(key)
            try:
                inner = self._container(attrs, depth)
            except Exception:
                inner = {id(attrs): 1.0}
            finally:
                self._busy.discard(key)
            out = {key: 1.0, **inner}
            self._memo[key] = out
            return out
        return {key: 1.0}

    def _container(self, obj: Any, depth: int) -> dict[int, float]:
        n, items = _sampled_items(obj)
        maps: list[dict[int, float]] = []
        for item in items:
            if isinstance(obj, dict):
                k, v = item
                m = dict(self.tally(k, depth + 1))
                for oid, w in self.tally(v, depth + 1).items():
                    m[oid] = max(m.get(oid, 0.0), w)
                maps.append(m)
            else:
                maps.append(self.tally(item, depth + 1))
        seen = collections.Counter(oid for m in maps for oid in m)
        scale = n / len(items) if items else 0.0
        out: dict[int, float] = {id(obj): 1.0}
        for m in maps:
            for oid, w in m.items():
                if seen[oid] > 1:
                    out[oid] = max(out.get(oid, 0.0), w)  # shared by the items: once
                else:
                    out[oid] = out.get(oid, 0.0) + w * scale
        if len(out) > _TALLY_CAP:
            out = {id(obj): 1.0, ~id(obj): sum(out.values()) - 1.0}
        return out

    def item_totals(self, obj: Any) -> Iterator[float]:
        """The totals of obj's sampled items (a dict's values)."""
        if _pandas_objects(obj) is not None:
            return
        _, items = _sampled_items(obj)
        for item in items:
            yield self.total(item[1] if isinstance(obj, dict) else item)


def estimate_objects(obj: Any) -> float:
    """How many Python objects obj holds, itself included, estimated from sampled items.

    Args:
        obj: Anything; containers (list, tuple, dict, set, deque), numpy object arrays and
            pandas DataFrame/Series/Index are counted through what they hold, plain record
            objects through their ``__dict__``; any other object counts as one.

    Returns:
        The estimate (a float: sampled counts are scaled by length / sampled items). Shared
        singletons (small ints, one-character strings, None) count 0; an object met in
        several sampled items counts once.
    """
    return _Tally().total(obj)


def _describe(obj: Any) -> str:
    """'a list of 50,000 items', 'a DataFrame of 30,000 rows x 4 object columns'."""
    pd = sys.modules.get("pandas")
    if pd is not None and in_pandas(obj) and isinstance(obj, pd.DataFrame):
        cols = sum(1 for dt in obj.dtypes if _holds_python_objects(dt))
        return (
            f"a pandas DataFrame of {len(obj.index):,} rows x {cols} object "
            f"column{'s' if cols != 1 else ''}"
        )
    if in_pandas(obj):
        return f"a pandas {type(obj).__name__} of {len(obj):,} objects"
    if _object_array(obj):
        return f"a numpy object array of {int(obj.size):,} items"
    return f"a {type(obj).__name__} of {len(obj):,} items"


def _three_figures(x: float) -> int:
    """An estimate as messages write it: three significant figures (550,011 -> 550,000)."""
    n = round(x)
    digits = len(str(abs(n)))
    return round(n, -(digits - 3)) if digits > 3 else n


def _candidate(obj: Any) -> bool:
    return is_container(obj) or _object_array(obj) or _pandas_objects(obj) is not None


def check_copy_on_read(ctx: Context) -> list[Finding]:
    """WF109: containers that hold >= COPY_ON_READ_ITEMS Python objects (copy-on-read).

    Reported at the deepest container that reaches the threshold (a dict of two large lists
    gives two findings, one per list; a list of 50,000 small dicts gives one, at the list).
    """
    out: list[Finding] = []
    reported: list[str] = []
    tally = _Tally()
    for node in ctx.worker_nodes():
        obj = node.obj
        if not _candidate(obj):
            continue
        total = tally.total(obj)
        if total < COPY_ON_READ_ITEMS:
            continue
        if any(t >= COPY_ON_READ_ITEMS for t in tally.item_totals(obj)):
            continue  # an item reaches it on its own: reported there, the deeper path
        if any(inside(node.path, p) for p in reported):
            continue
        reported.append(node.path)
        n = _three_figures(total)
        what = _describe(obj)
        f = ctx.finding(
            "WF109",
            "warning",
            node.path,
            f"{node.path} is {what} holding ~{n:,} Python objects. Reading an object writes its "
            "reference count (and the garbage collector writes to every dict and list it "
            "tracks), so under fork every worker gradually copies the pages it touches "
            "(copy-on-read: memory grows through the epoch, times num_workers); under "
            "spawn/forkserver every worker unpickles its own full copy.",
            "Store it as numpy arrays (no per-item objects): e.g. paths as "
            "np.array(paths, dtype=np.bytes_) or one np.uint8 buffer plus np.int64 offsets "
            "(records: pickle each into the buffer, pickle.loads(buf[start:end]) in "
            "__getitem__), labels as np.array(labels, dtype=np.int64); a DataFrame's columns "
            "as numpy arrays (df['x'].to_numpy() of a numeric dtype).",
            f"static: ~{n:,} Python objects in {node.path} (estimated from its sampled items) "
            f">= {COPY_ON_READ_ITEMS:,}",
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


def unbounded_lru_cache(value: Any, *, method: bool = False) -> str | None:
    """The wrapped function's name when value is a ``functools.lru_cache(maxsize=None)``
    (or ``functools.cache``) wrapper that can hold more than one entry, else None.

    Recognised by its public API (``cache_info`` and ``cache_parameters``), not by the type's
    private name. A wrapper whose function takes no arguments holds one entry at most:
    bounded. With ``method=True`` value is a class attribute called through an instance
    (``@functools.cache`` on a method), whose first parameter is ``self``: one entry per
    instance, so a method taking only ``self`` is bounded too.
    """
    try:
        if not (
            callable(getattr(value, "cache_parameters", None)) and hasattr(value, "cache_info")
        ):
            return None
        if value.cache_parameters()["maxsize"] is not None:
            return None
        wrapped = value.__wrapped__
    except Exception:
        return None
    try:
        params = list(inspect.signature(wrapped).parameters.values())
    except (TypeError, ValueError):
        params = None
    if params is not None:
        positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        if method and params and params[0].kind in positional:
            params = params[1:]
        if not params:
            return None
    return str(getattr(wrapped, "__qualname__", None) or getattr(wrapped, "__name__", "?"))


def check_worker_caches(ctx: Context) -> list[Finding]:
    """WF110: caches filled inside worker code (each worker fills its own; unbounded).

    Two forms: ``self.<attr>[k] = v`` (or ``.append``...) in worker code, and an unbounded
    ``functools.lru_cache`` wrapper that worker code calls, held on the instance
    (``self.load = functools.lru_cache(maxsize=None)(self._load)``) or on the class
    (``@functools.lru_cache(maxsize=None)`` on a method).
    """
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
    out.extend(_lru_cache_findings(ctx))
    return out


def _lru_cache_findings(ctx: Context) -> list[Finding]:
    """WF110 for unbounded lru_cache wrappers that user worker code calls."""
    out: list[Finding] = []
    # (path, value, the instance whose worker code would call it, attribute name, a method
    # of the class: called through the instance, so its first parameter is self)
    candidates: list[tuple[str, Any, Any, str, bool]] = []
    for node in ctx.worker_nodes():
        owner = node.owner
        if node.attr is None or owner is None or is_container(owner):
            continue
        if not is_user_code(type(owner)):
            continue
        candidates.append((node.path, node.obj, owner, node.attr, False))
    for ca in class_attributes(ctx):
        if is_user_code(ca.klass):
            candidates.append((ca.path, ca.value, ca.node.obj, ca.name, True))
    for path, value, instance, attr, method in candidates:
        name = unbounded_lru_cache(value, method=method)
        if name is None:
            continue
        cls = type(instance)
        if attr not in analyze_class(cls, ctx.worker_hooks(instance)).reads:
            continue
        f = ctx.finding(
            "WF110",
            "warning",
            path,
            f"{path} is functools.lru_cache(maxsize=None) around {name}, and "
            f"{cls.__qualname__}'s worker code calls self.{attr}: every worker fills its own "
            "unbounded copy, one entry per distinct argument (per index: the whole dataset "
            "by the end of the epoch), memory x num_workers, and the main process never sees "
            "it.",
            "Bound the cache so entries x item size x num_workers fits in RAM: "
            "functools.lru_cache(maxsize=1024) instead of maxsize=None, or precompute the "
            "items once before training (wellfed precompute, or an np.memmap every worker "
            "maps read-only).",
            f"static: {path}.cache_parameters()['maxsize'] is None; self.{attr} read in "
            "worker code",
        )
        if f is not None:
            out.append(f)
    return out
