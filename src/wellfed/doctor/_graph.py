"""Walk the object graph a DataLoader worker receives, naming every object by its attribute path.

Two views of the same graph matter. Under fork a worker inherits the objects as they are
(``__dict__``, closures, everything reachable). Under spawn and forkserver it receives what
the pickler writes: ``__getstate__``'s result where a class defines one. Each node records
both: ``pickled`` is False for what only a forked worker sees (a handle ``__getstate__``
drops, a function's closure, which pickling by reference never writes).

Large containers are sampled, not walked, so a dataset of a million items is judged in
milliseconds: see SAMPLE_THRESHOLD.
"""

from __future__ import annotations

import collections
import functools
import itertools
import types
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "MAX_NODES",
    "SAMPLE_SIZE",
    "SAMPLE_THRESHOLD",
    "Node",
    "Walk",
    "is_shared_state",
    "module_of",
    "sample_indices",
    "sampled_entries",
    "walk",
    "walk_enters",
]

#: Containers longer than this are sampled (first, last and evenly spaced items) instead of
#: walked. 64 items find a per-item hazard as long as items are alike, which is how datasets
#: store samples; the walk then costs the same for 1e3 and 1e7 items.
SAMPLE_THRESHOLD = 64

#: How many items of a large container are walked.
SAMPLE_SIZE = 24

#: Upper bound of objects visited per root; beyond it the walk stops and says so.
MAX_NODES = 20_000

#: Deepest attribute path followed.
MAX_DEPTH = 24

_LEAF_TYPES: tuple[type, ...] = (
    type(None),
    bool,
    int,
    float,
    complex,
    str,
    bytes,
    bytearray,
    memoryview,
    range,
    slice,
    type,
    types.ModuleType,
    type(Ellipsis),
    type(NotImplemented),
)

#: Type modules whose objects are judged whole (handles, locks, arrays, images), never entered.
_OPAQUE_MODULE_PREFIXES: tuple[str, ...] = (
    "_io",
    "io",
    "_thread",
    "threading",
    "multiprocessing",
    "concurrent",
    "asyncio",
    "queue",
    "socket",
    "ssl",
    "sqlite3",
    "zipfile",
    "tarfile",
    "gzip",
    "bz2",
    "lzma",
    "mmap",
    "logging",
    "h5py",
    "lmdb",
    "cv2",
    "tokenizers",
    "numpy",
    "PIL",
    "pathlib",
    "decimal",
    "fractions",
    "datetime",
    "uuid",
    "re",
    "enum",
    "torch._C",
    "torch.cuda",
    "torch.storage",
    "torch._tensor",
    "torch.nn.parameter",
    "av",
    "decord",
    "psycopg2",
    "pymongo",
    "redis",
    "boto3",
    "botocore",
)


def module_of(obj: Any) -> str:
    """The module that defines ``obj``'s type ("" when unknown)."""
    mod = getattr(type(obj), "__module__", None)
    return mod if isinstance(mod, str) else ""


def is_shared_state(obj: Any) -> bool:
    """True for a wellfed SharedState (class attribute ``__wellfed_shared_state__ = True``).

    Its internals (shared memory, locks) are built to cross into workers; it is never walked.
    """
    try:
        return getattr(type(obj), "__wellfed_shared_state__", False) is True
    except Exception:
        return False


@dataclass
class Node:
    """One object reached from a root.

    Attributes:
        path: Python-like expression naming it, rooted at ``dataset`` or ``loader``.
        obj: The object itself.
        depth: Attribute steps from the root.
        pickled: True when the pickler writes it for spawn/forkserver workers; False when only
            a forked worker sees it.
        owner: The object whose attribute or item this is (None for a root).
        attr: The attribute name or key under which owner holds it, when it is one.
        weight: How many objects this one stands for (a sampled item of a list of 10**6
            stands for ~4e4), for size estimates.
        getstate_error: The exception text when ``obj.__getstate__()`` raised.
    """

    path: str
    obj: Any
    depth: int
    pickled: bool
    owner: Any = None
    attr: str | None = None
    weight: float = 1.0
    getstate_error: str | None = None


@dataclass
class Walk:
    """The result of walking one root.

    Attributes:
        nodes: Every node visited, parents before children.
        sampled: Paths of containers of which only a sample was walked.
        truncated: True when MAX_NODES stopped the walk.
    """

    nodes: list[Node] = field(default_factory=list)
    sampled: list[str] = field(default_factory=list)
    truncated: bool = False


def _is_leaf(obj: Any) -> bool:
    if isinstance(obj, _LEAF_TYPES):
        return True
    mod = module_of(obj)
    if in_modules(mod, _OPAQUE_MODULE_PREFIXES):
        return True
    if mod == "torch" or (mod.startswith("torch.") and _is_torch_leaf(obj)):
        return True
    return is_shared_state(obj)


def in_modules(module: str, packages: tuple[str, ...]) -> bool:
    """True when ``module`` is one of ``packages`` or a submodule of one.

    Whole dotted components are matched, so ``"io"`` covers ``io`` and ``io.foo`` but not a
    user module named ``iotools`` or ``readers`` (issue 15: a bare ``str.startswith`` took
    those for the standard library and hid the attribute path of a hazard inside them).
    """
    return any(module == p or module.startswith(p + ".") for p in packages)


def _is_torch_leaf(obj: Any) -> bool:
    import torch

    return isinstance(obj, (torch.Tensor, torch.device, torch.dtype, torch.Generator))


def _has_custom(obj: Any, name: str) -> bool:
    """True when obj's type overrides ``object.<name>``."""
    attr = getattr(type(obj), name, None)
    return attr is not None and attr is not getattr(object, name, None)


def _key_repr(key: Any) -> str:
    if isinstance(key, (str, int, float, bool, bytes)) or key is None:
        return repr(key)
    return f"<{type(key).__name__} key>"


def sample_indices(n: int) -> list[int]:
    """The indices of a sequence of length n the walk visits: all of them up to
    SAMPLE_THRESHOLD, else the first 8, the last 4 and evenly spaced ones (SAMPLE_SIZE - 12),
    sorted and unique."""
    if n <= SAMPLE_THRESHOLD:
        return list(range(n))
    head = list(range(8))
    tail = list(range(n - 4, n))
    spread = [round(i * (n - 1) / (SAMPLE_SIZE - 12)) for i in range(SAMPLE_SIZE - 12)]
    return sorted(set(head + tail + spread))


def sampled_entries(obj: Any) -> tuple[int, list[tuple[Any, Any]]]:
    """(length, the (key, item) pairs the walk visits) of a container.

    A dict's key is its key, and its first SAMPLE_SIZE items are visited once it holds more
    than SAMPLE_THRESHOLD; a set's (or frozenset's) key is the member's position in iteration
    order, with the same limit; anything else with ``len`` and integer indexing (list, tuple,
    deque, a flat numpy array) is indexed at ``sample_indices``.
    """
    n = len(obj)
    if isinstance(obj, dict):
        items = obj.items() if n <= SAMPLE_THRESHOLD else itertools.islice(obj.items(), SAMPLE_SIZE)
        return n, list(items)
    if isinstance(obj, (set, frozenset)):
        members = itertools.islice(obj, n if n <= SAMPLE_THRESHOLD else SAMPLE_SIZE)
        return n, list(enumerate(members))
    return n, [(i, obj[i]) for i in sample_indices(n)]


def _children(node: Node, walk_: Walk) -> Iterator[Node]:
    obj, path, pickled = node.obj, node.path, node.pickled
    depth = node.depth + 1

    def child(p: str, o: Any, pk: bool = pickled, attr: str | None = None, w: float = 1.0) -> Node:
        return Node(p, o, depth, pk, owner=obj, attr=attr, weight=node.weight * w)

    if isinstance(obj, (list, tuple, collections.deque)):
        n, entries = sampled_entries(obj)
        if len(entries) < n:
            walk_.sampled.append(path)
        w = n / max(1, len(entries))
        for i, v in entries:
            yield child(f"{path}[{i}]", v, w=w)
        return
    if isinstance(obj, dict):
        n, entries = sampled_entries(obj)
        if n > SAMPLE_THRESHOLD:
            walk_.sampled.append(path)
        w = n / SAMPLE_SIZE if n > SAMPLE_THRESHOLD else 1.0
        for k, v in entries:
            yield child(f"{path}[{_key_repr(k)}]", v, attr=k if isinstance(k, str) else None, w=w)
        return
    if isinstance(obj, (set, frozenset)):
        n, entries = sampled_entries(obj)
        if n > SAMPLE_THRESHOLD:
            walk_.sampled.append(path)
        for i, v in entries:
            yield child(f"list({path})[{i}]", v, w=max(1.0, n / SAMPLE_SIZE))
        return
    if isinstance(obj, functools.partial):
        yield child(f"{path}.func", obj.func, attr="func")
        for i, a in enumerate(obj.args):
            yield child(f"{path}.args[{i}]", a)
        for k, v in (obj.keywords or {}).items():
            yield child(f"{path}.keywords[{k!r}]", v, attr=k)
        return
    if isinstance(obj, types.FunctionType):
        # A function pickles by reference (module + name): its closure and defaults are never
        # written, but a forked worker holds them.
        for i, cell in enumerate(obj.__closure__ or ()):
            try:
                contents = cell.cell_contents
            except ValueError:  # empty cell
                continue
            name = obj.__code__.co_freevars[i] if i < len(obj.__code__.co_freevars) else None
            yield child(f"{path}.__closure__[{i}].cell_contents", contents, False, attr=name)
        for i, d in enumerate(obj.__defaults__ or ()):
            yield child(f"{path}.__defaults__[{i}]", d, False)
        for k, v in (obj.__kwdefaults__ or {}).items():
            yield child(f"{path}.__kwdefaults__[{k!r}]", v, False, attr=k)
        return
    if isinstance(obj, types.MethodType):
        yield child(f"{path}.__self__", obj.__self__)
        return
    if isinstance(obj, types.BuiltinMethodType):
        owner = getattr(obj, "__self__", None)
        if owner is not None and not isinstance(owner, types.ModuleType):
            yield child(f"{path}.__self__", owner)
        return
    if callable(getattr(obj, "__reduce_ex__", None)) and _is_opaque_reduce(obj):
        return
    yield from _object_children(node, child)


def walk_enters(obj: Any) -> bool:
    """True when the walk visits obj's attributes or items; False when it judges obj whole.

    Judged whole: leaves (scalars, strings, types, modules), objects of the library modules in
    ``_OPAQUE_MODULE_PREFIXES`` (numpy, PIL, h5py...) and objects with their own
    ``__reduce__``. A check that must see inside such an object (an open file a numpy
    ``NpzFile`` or a PIL image holds) looks at its ``__dict__`` itself.
    """
    if _is_leaf(obj):
        return False
    if isinstance(
        obj,
        (
            list,
            tuple,
            collections.deque,
            dict,
            set,
            frozenset,
            functools.partial,
            types.FunctionType,
            types.MethodType,
            types.BuiltinMethodType,
        ),
    ):
        return True
    try:
        return not (callable(getattr(obj, "__reduce_ex__", None)) and _is_opaque_reduce(obj))
    except Exception:
        return False


def _is_opaque_reduce(obj: Any) -> bool:
    """True for objects with their own ``__reduce__``/``__reduce_ex__`` (judged whole)."""
    cls = type(obj)
    if _has_custom(obj, "__getstate__"):
        return False
    reduce_ex: Any = cls.__reduce_ex__
    reduce: Any = cls.__reduce__
    return reduce_ex is not object.__reduce_ex__ or reduce is not object.__reduce__


def _object_children(node: Node, child: Any) -> Iterator[Node]:
    obj, path = node.obj, node.path
    try:
        attrs = object.__getattribute__(obj, "__dict__")
    except (AttributeError, TypeError):
        attrs = {}
    if not isinstance(attrs, dict):
        attrs = {}
    slots: dict[str, Any] = {}
    for klass in type(obj).__mro__:
        names = klass.__dict__.get("__slots__", ())
        if isinstance(names, str):
            names = (names,)
        for name in names:
            if name in ("__dict__", "__weakref__") or name in slots:
                continue
            try:
                slots[name] = object.__getattribute__(obj, name)
            except AttributeError:
                continue
    state_keys: dict[str, Any] | None = None
    if _has_custom(obj, "__getstate__"):
        try:
            state = obj.__getstate__()
        except Exception as exc:
            node.getstate_error = f"{type(exc).__name__}: {exc}"
            state = None
        if (
            isinstance(state, tuple)
            and len(state) == 2
            and all(s is None or isinstance(s, dict) for s in state)
        ):
            state_keys = {**(state[0] or {}), **(state[1] or {})}
        elif isinstance(state, dict):
            state_keys = state
        elif state is not None:
            state_keys = {"__getstate__()": state}
    import_module = module_of(obj)
    is_module = import_module.startswith("torch.nn") or _is_nn_module(obj)
    for name, value in itertools.chain(attrs.items(), slots.items()):
        if not isinstance(name, str):
            continue
        if (
            is_module
            and name in ("_parameters", "_buffers", "_modules")
            and isinstance(value, dict)
        ):
            for sub, sub_value in value.items():
                if sub_value is not None:
                    yield child(f"{path}.{sub}", sub_value, node.pickled, attr=sub)
            continue
        in_state = state_keys is None or (name in state_keys and state_keys[name] is value)
        yield child(f"{path}.{name}", value, node.pickled and in_state, attr=name)
    if state_keys is not None:
        for name, value in state_keys.items():
            if value is None or (name in attrs and attrs[name] is value):
                continue
            if name in attrs or name in slots:
                # __getstate__ replaced the value: the pickled one is what spawn workers get.
                yield child(f"{path}.{name}", value, node.pickled, attr=name)
            else:
                yield child(f"{path}.{name}", value, node.pickled, attr=name)


def _is_nn_module(obj: Any) -> bool:
    import sys

    torch = sys.modules.get("torch")
    return torch is not None and isinstance(obj, torch.nn.Module)


def walk(root: Any, root_path: str, *, pickled: bool = True, seen: set[int] | None = None) -> Walk:
    """Walk everything reachable from root, breadth first, each object once.

    Args:
        root: The dataset, collate_fn, worker_init_fn or sampler.
        root_path: Its path, e.g. "dataset" or "loader.collate_fn".
        pickled: Whether the root itself is pickled to spawn/forkserver workers.
        seen: ids already visited from another root (shared so a dataset reached again
            through ``loader.sampler.data_source`` is not walked twice).

    Returns:
        A Walk: the nodes, the sampled containers and whether MAX_NODES cut it short.
    """
    result = Walk()
    seen = set() if seen is None else seen
    queue: collections.deque[Node] = collections.deque([Node(root_path, root, 0, pickled)])
    # Objects must stay alive while their ids are in `seen`; the graph keeps them alive.
    while queue:
        node = queue.popleft()
        key = id(node.obj)
        if not isinstance(node.obj, _LEAF_TYPES[:4]):  # small immutables: no identity worth keeping
            if key in seen:
                continue
            seen.add(key)
        result.nodes.append(node)
        if len(result.nodes) >= MAX_NODES:
            result.truncated = True
            break
        if node.depth >= MAX_DEPTH or _is_leaf(node.obj):
            continue
        try:
            queue.extend(_children(node, result))
        except Exception:  # a hostile __getattr__/__len__: judge the node whole
            continue
    return result
