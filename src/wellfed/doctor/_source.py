"""Read the source of dataset classes and worker functions: what worker code reads and writes.

Everything here is a static reading of Python source with ``ast``; nothing is executed. Where
source is unavailable (C extensions, classes typed into a REPL) the functions return empty
results and the live probe has the last word.
"""

from __future__ import annotations

import ast
import functools
import inspect
import os
import sys
import textwrap
import types
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "READER_METHODS",
    "ClassAnalysis",
    "SeedCall",
    "WorkerCall",
    "analyze_class",
    "blas_calls",
    "device_attr_transfers",
    "function_calls",
    "function_source",
    "is_user_code",
    "lambda_node",
    "module_level_calls",
    "reseeds_randomizables",
    "seed_calls",
    "worker_calls",
    "worker_info_use",
]

#: Methods that run inside workers for every sample.
READER_METHODS: tuple[str, ...] = (
    "__getitem__",
    "__getitems__",
    "__iter__",
    "__next__",
    "__call__",
)

#: Methods that never run in workers, or only on the way in or out of one.
_NOT_STATE_CHANGERS = frozenset(
    {
        "__init__",
        "__new__",
        "__post_init__",
        "__setstate__",
        "__getstate__",
        "__reduce__",
        "__reduce_ex__",
        "__del__",
        "__enter__",
        "__exit__",
        "__len__",
        "__repr__",
        "__str__",
        "__copy__",
        "__deepcopy__",
        "__init_subclass__",
        "__class_getitem__",
        "close",
    }
)

#: Callables whose result is a per-process handle: a method that only assigns these is a lazy
#: opener (the recommended pattern), not a state changer.
_OPENERS = frozenset(
    {
        "open",
        "connect",
        "File",
        "Environment",
        "ZipFile",
        "TarFile",
        "load",
        "memmap",
        "VideoCapture",
        "VideoReader",
        "Client",
        "MongoClient",
        "Redis",
        "socket",
        "create_connection",
    }
)

#: Attribute calls that fill a container (a cache) in place.
_FILLERS = frozenset({"append", "add", "update", "setdefault", "extend", "insert", "__setitem__"})

#: Method calls on a cache that take entries out of it: worker code that calls one of these on
#: the attribute it fills bounds that cache (an LRU written by hand: OrderedDict.popitem).
_EVICTORS = frozenset({"pop", "popitem", "popleft", "clear"})

#: Names whose presence in ``__iter__`` (or worker_init_fn) shows the stream is split per worker.
SHARDING_NAMES = frozenset(
    {
        "get_worker_info",
        "worker_info",
        "split_dataset_by_node",
        "sharding_filter",
        "apply_sharding",
        "worker_id",
        "num_workers",
    }
)

_SEED_FUNCS = frozenset(
    {"seed", "manual_seed", "default_rng", "RandomState", "seed_everything", "set_seed", "Random"}
)


def is_user_code(obj: Any) -> bool:
    """True when obj (a class or function) is defined outside the standard library and
    installed packages, i.e. in the user's own project, whose source we should read.
    """
    module = getattr(obj, "__module__", None) or ""
    top = module.split(".")[0]
    if top in sys.stdlib_module_names or top in ("builtins", "torch", "numpy", "wellfed"):
        return False
    try:
        path = inspect.getsourcefile(obj)
    except (TypeError, OSError):
        return False
    if not path:
        return False
    parts = path.replace(os.sep, "/").split("/")
    return "site-packages" not in parts and "dist-packages" not in parts


def function_source(func: Any) -> ast.AST | None:
    """Parse a function's source; None when unavailable or unparsable (a lambda mid-line)."""
    try:
        text = textwrap.dedent(inspect.getsource(func))
    except (OSError, TypeError):
        return None
    try:
        tree = ast.parse(text)
    except SyntaxError:
        return None
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            return node
    return None


def lambda_node(func: Any) -> ast.Lambda | None:
    """The ``ast.Lambda`` of a lambda written inside a larger expression (a dict literal, a
    call's arguments), whose own source line does not parse alone; None when not found.

    The lambda's file is parsed whole and the lambda found by its first line and argument
    names (None when two lambdas there match). Nothing is executed.
    """
    if not isinstance(func, types.FunctionType) or func.__name__ != "<lambda>":
        return None
    code = func.__code__
    tree = _parsed_file(code.co_filename)
    if tree is None:
        return None
    nargs = code.co_argcount + code.co_kwonlyargcount
    names = list(code.co_varnames[:nargs])
    found = []
    for n in ast.walk(tree):
        if isinstance(n, ast.Lambda) and n.lineno == code.co_firstlineno:
            a = n.args
            if [x.arg for x in [*a.posonlyargs, *a.args, *a.kwonlyargs]] == names:
                found.append(n)
    return found[0] if len(found) == 1 else None


def _parsed_file(filename: str) -> ast.Module | None:
    import linecache

    text = "".join(linecache.getlines(filename))
    if not text:
        return None
    return _parse_text(text)


@functools.lru_cache(maxsize=16)
def _parse_text(text: str) -> ast.Module | None:
    try:
        return ast.parse(text)
    except (SyntaxError, ValueError):
        return None


@dataclass
class ClassAnalysis:
    """What a class's worker code reads and writes.

    Attributes:
        readers: Reader methods it defines (``__getitem__``...), each with its line number.
        reads: ``self.<attr>`` names read by reader methods and the helpers they call.
        mutations: attr -> (method, line) for unguarded ``self.<attr> = ...`` in worker code.
        cache_fills: attr -> (method, line) for ``self.<attr>[k] = v`` / ``.append(...)``
            where worker code does not bound the cache (see ``bounded_caches``).
        bounded_caches: attrs worker code fills but also evicts from (``.pop``/``.popitem``/
            ``.clear``/``del self.<attr>[k]``) or fills only under a ``len(self.<attr>)``
            test: a cache bounded by hand (issue 15: "unbounded" was said of one of 1,000).
        changers: attr -> (method, line) for methods outside worker code that assign an
            attribute worker code reads (``set_epoch``, ``update_theta``...). ``method`` is
            the one a caller calls: a public method, not the ``_``-prefixed helper that does
            the assigning (``update_task``, which calls ``self._update_linear()``: issue 15);
            ``line`` is the line of the assignment itself.
        changer_helpers: attr -> the helper that assigns it, where ``changers`` names a
            public method that reaches it through ``self.<helper>()`` calls.
        changer_entries: attr -> every public method whose calls reach the change, in
            source order (the first is the one ``changers`` names).
        changer_kinds: attr -> "inplace" (``self.<attr> += ...``, ``self.<attr>.add_(...)``:
            the object itself is edited) or "assign" (``self.<attr> = ...``: a new object).
        cuda_transfers: (method, line, snippet) of device transfers to CUDA in worker code.
        pid_guard: Worker code compares ``os.getpid()``: handles are reopened per process.
        shards: Worker code refers to worker info (``get_worker_info``...).
        scratch: attrs worker code assigns anew at every call before reading them (MONAI's
            ``randomize()`` storing its draw on ``self`` for ``__call__`` to use): per-call
            scratch state, left out of ``mutations`` (nothing carries from one sample to the
            next, so which worker served a sample does not change it).
    """

    readers: dict[str, int] = field(default_factory=dict)
    reads: set[str] = field(default_factory=set)
    mutations: dict[str, tuple[str, int]] = field(default_factory=dict)
    cache_fills: dict[str, tuple[str, int]] = field(default_factory=dict)
    bounded_caches: set[str] = field(default_factory=set)
    changers: dict[str, tuple[str, int]] = field(default_factory=dict)
    changer_helpers: dict[str, str] = field(default_factory=dict)
    changer_entries: dict[str, tuple[str, ...]] = field(default_factory=dict)
    changer_kinds: dict[str, str] = field(default_factory=dict)
    cuda_transfers: list[tuple[str, int, str]] = field(default_factory=list)
    pid_guard: bool = False
    shards: bool = False
    scratch: set[str] = field(default_factory=set)


def _class_methods(cls: type) -> tuple[dict[str, ast.FunctionDef], dict[str, int]]:
    """Method name -> parsed def, first definition along the MRO wins; plus source offsets."""
    methods: dict[str, ast.FunctionDef] = {}
    lines: dict[str, int] = {}
    for klass in cls.__mro__:
        if klass is object or not is_user_code(klass):
            continue
        try:
            text, start = inspect.getsourcelines(klass)
        except (OSError, TypeError):
            continue
        try:
            tree = ast.parse(textwrap.dedent("".join(text)))
        except SyntaxError:
            continue
        cdef = next((n for n in tree.body if isinstance(n, ast.ClassDef)), None)
        if cdef is None:
            continue
        for item in cdef.body:
            if (
                isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef))
                and item.name not in methods
            ):
                methods[item.name] = item  # type: ignore[assignment]
                lines[item.name] = start + item.lineno - 1
    return methods, lines


def _self_attr(node: ast.AST) -> str | None:
    if (
        isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id == "self"
    ):
        return node.attr
    return None


def _called_name(call: ast.Call) -> str | None:
    func = call.func
    if isinstance(func, ast.Attribute):
        return func.attr
    if isinstance(func, ast.Name):
        return func.id
    return None


def _mentions(test: ast.AST, attr: str) -> bool:
    for n in ast.walk(test):
        if _self_attr(n) == attr:
            return True
        if isinstance(n, ast.Constant) and n.value == attr:
            return True
    return False


def _mentions_getpid(node: ast.AST) -> bool:
    return any(isinstance(n, ast.Call) and _called_name(n) == "getpid" for n in ast.walk(node))


class _BodyScan(ast.NodeVisitor):
    """Walk one method, remembering enclosing if-tests and try/except AttributeError."""

    def __init__(self) -> None:
        self.guards: list[ast.AST] = []
        self.assigns: list[tuple[str, int, bool, ast.AST | None]] = []  # attr, line, guarded, value
        self.fills: list[tuple[str, int]] = []
        self.evicts: set[str] = set()  # attrs entries are taken out of, or filled under len()
        self.augmented: set[tuple[str, int]] = set()  # (attr, line) of self.<attr> op= ...
        self.calls: list[tuple[str, bool]] = []  # self.method() calls, guarded?
        self.reads: set[str] = set()
        self.cuda: list[tuple[int, str]] = []

    def _guarded(self, attr: str | None) -> bool:
        for g in self.guards:
            if isinstance(g, ast.Try):
                return True
            if _mentions_getpid(g) or (attr is not None and _mentions(g, attr)):
                return True
        return False

    def _len_guarded(self, attr: str) -> bool:
        """Whether an enclosing if-test calls ``len(self.<attr>)`` (a size bound)."""
        return any(
            isinstance(n, ast.Call)
            and _called_name(n) == "len"
            and bool(n.args)
            and _self_attr(n.args[0]) == attr
            for g in self.guards
            if not isinstance(g, ast.Try)
            for n in ast.walk(g)
        )

    def visit_Delete(self, node: ast.Delete) -> None:
        for t in node.targets:
            if isinstance(t, ast.Subscript) and (attr := _self_attr(t.value)) is not None:
                self.evicts.add(attr)
        self.generic_visit(node)

    def visit_If(self, node: ast.If) -> None:
        self.visit(node.test)
        self.guards.append(node.test)
        for stmt in node.body:
            self.visit(stmt)
        for stmt in node.orelse:
            self.visit(stmt)
        self.guards.pop()

    def visit_Try(self, node: ast.Try) -> None:
        catches_attr = any(
            h.type is not None and "AttributeError" in ast.dump(h.type) for h in node.handlers
        )
        if catches_attr:
            self.guards.append(node)
        for stmt in node.body:
            self.visit(stmt)
        if catches_attr:
            self.guards.pop()
        for h in node.handlers:
            for stmt in h.body:
                self.visit(stmt)
        for stmt in node.orelse + node.finalbody:
            self.visit(stmt)

    def _target(self, target: ast.AST, value: ast.AST | None, line: int) -> None:
        attr = _self_attr(target)
        if attr is not None:
            self.assigns.append((attr, line, self._guarded(attr), value))
            return
        if isinstance(target, ast.Subscript):
            attr = _self_attr(target.value)
            if attr is not None:
                self.fills.append((attr, line))
                if self._len_guarded(attr):
                    self.evicts.add(attr)
        if isinstance(target, (ast.Tuple, ast.List)):
            for elt in target.elts:
                self._target(elt, None, line)

    def visit_Assign(self, node: ast.Assign) -> None:
        for t in node.targets:
            self._target(t, node.value, node.lineno)
        self.visit(node.value)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        self._target(node.target, node.value, node.lineno)
        if node.value is not None:
            self.visit(node.value)

    def visit_AugAssign(self, node: ast.AugAssign) -> None:
        attr = _self_attr(node.target)
        if attr is not None:
            self.reads.add(attr)
            self.assigns.append((attr, node.lineno, self._guarded(attr), None))
            self.augmented.add((attr, node.lineno))
        else:
            self._target(node.target, None, node.lineno)
        self.visit(node.value)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        attr = _self_attr(node)
        if attr is not None and isinstance(node.ctx, ast.Load):
            self.reads.add(attr)
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        if isinstance(func, ast.Attribute):
            owner = _self_attr(func.value)
            if isinstance(func.value, ast.Name) and func.value.id == "self":
                self.calls.append((func.attr, self._guarded(None) or bool(self.guards)))
            elif owner is not None and func.attr in _FILLERS:
                self.fills.append((owner, node.lineno))
                if self._len_guarded(owner):
                    self.evicts.add(owner)
            elif owner is not None and func.attr in _EVICTORS:
                self.evicts.add(owner)
        snippet = _cuda_snippet(node)
        if snippet:
            self.cuda.append((node.lineno, snippet))
        self.generic_visit(node)


def _is_cuda_literal(node: ast.AST | None) -> bool:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value.startswith("cuda")
    if isinstance(node, ast.Call) and _called_name(node) == "device" and node.args:
        return _is_cuda_literal(node.args[0])
    return False


def _cuda_snippet(call: ast.Call) -> str | None:
    name = _called_name(call)
    if name == "cuda" and isinstance(call.func, ast.Attribute):
        return ".cuda()"
    if name == "to" and call.args and _is_cuda_literal(call.args[0]):
        return ".to('cuda')"
    for kw in call.keywords:
        if kw.arg == "device" and _is_cuda_literal(kw.value):
            return "device='cuda'"
    if name == "device" and call.args and _is_cuda_literal(call.args[0]):
        return "torch.device('cuda')"
    return None


def _only_openers(values: list[ast.AST | None]) -> bool:
    if not values:
        return False
    for v in values:
        if v is None:
            return False
        if isinstance(v, ast.Constant) and v.value is None:
            continue
        if not (isinstance(v, ast.Call) and _called_name(v) in _OPENERS):
            return False
    return True


def _is_public(name: str) -> bool:
    """A method a caller outside the class calls: no leading underscore (dunders excluded)."""
    return not name.startswith("_")


def _reach(
    start: str, scans: dict[str, _BodyScan], methods: dict[str, ast.FunctionDef]
) -> set[str]:
    """The methods ``start`` reaches through ``self.<method>()`` calls, itself included."""
    seen = {start}
    stack = [start]
    while stack:
        for callee, _g in scans[stack.pop()].calls:
            if callee in methods and callee not in seen:
                seen.add(callee)
                stack.append(callee)
    return seen


def _find_changers(
    out: ClassAnalysis,
    methods: dict[str, ast.FunctionDef],
    lines: dict[str, int],
    scans: dict[str, _BodyScan],
    worker: dict[str, bool],
) -> None:
    """Fill ``out.changers`` (and its helpers, entries, kinds): main-process methods that
    change an attribute worker code reads, named by the public method a caller calls.

    A ``_``-prefixed helper is named through the public methods that reach it
    (``update_task`` -> ``self._update_linear()``); one that only ``__init__`` reaches runs
    before any worker exists and changes nothing; one nothing reaches is named itself (the
    caller may call it directly).
    """
    public = [
        m
        for m in sorted(methods, key=lambda n: lines[n])
        if _is_public(m) and m not in worker and m not in _NOT_STATE_CHANGERS
    ]
    reached_by = {m: _reach(m, scans, methods) for m in public}
    from_init = _reach("__init__", scans, methods) if "__init__" in methods else set()
    # attr -> (rank, entry, helper, line, kind): a change a public method reaches wins over
    # one only a private helper holds (rank 0 before 1), then source order.
    best: dict[str, tuple[int, str, str, int, str]] = {}
    entries: dict[str, list[str]] = {}
    for name in sorted(scans, key=lambda n: lines[n]):
        scan = scans[name]
        if name in worker or name in _NOT_STATE_CHANGERS:
            continue
        callers = [p for p in public if name in reached_by[p]]
        if not callers and (not _is_public(name) and name in from_init):
            continue  # a private helper of __init__: runs before the workers exist
        changed: dict[str, tuple[int, str]] = {}  # attr -> (line, kind)
        by_attr: dict[str, list[ast.AST | None]] = {}
        first: dict[str, int] = {}
        for attr, line, _guarded, value in scan.assigns:
            by_attr.setdefault(attr, []).append(value)
            first.setdefault(attr, line)
        fdef = methods[name]
        for attr, values in by_attr.items():
            if attr in out.reads and not _only_openers(values):
                kind = "inplace" if (attr, first[attr]) in scan.augmented else "assign"
                changed[attr] = (lines[name] + first[attr] - fdef.lineno, kind)
        # In-place edits of a read tensor: self.theta.copy_(...), self.values.add_(...)
        for sub in ast.walk(fdef):
            if isinstance(sub, ast.Call) and isinstance(sub.func, ast.Attribute):
                owner = _self_attr(sub.func.value)
                if (
                    owner is not None
                    and owner in out.reads
                    and sub.func.attr.endswith("_")
                    and not sub.func.attr.startswith("_")
                    and owner not in changed
                ):
                    changed[owner] = (lines[name] + sub.lineno - fdef.lineno, "inplace")
        for attr, (line, kind) in changed.items():
            for c in callers:
                if c not in entries.setdefault(attr, []):
                    entries[attr].append(c)
            entry = name if _is_public(name) or not callers else callers[0]
            cand = (0 if callers else 1, entry, name, line, kind)
            if attr not in best or cand[0] < best[attr][0]:
                best[attr] = cand
    for attr, (_rank, entry, helper, line, kind) in best.items():
        out.changers[attr] = (entry, line)
        out.changer_kinds[attr] = kind
        if helper != entry:
            out.changer_helpers[attr] = helper
        out.changer_entries[attr] = tuple(
            sorted(entries.get(attr, [entry]), key=lambda n: lines[n])
        ) or (entry,)


_CACHE: dict[tuple[type, tuple[str, ...]], ClassAnalysis] = {}


def analyze_class(cls: type, entries: tuple[str, ...] = ()) -> ClassAnalysis:
    """Read a user class: what its worker code (``__getitem__``, ``__iter__``, ``__call__``
    and the ``self.`` methods they call) reads, mutates and fills, and which other methods
    assign attributes that worker code reads.

    Args:
        cls: The class.
        entries: More methods that run in the workers: the loader's ``collate_fn`` when it
            is a bound method of an instance (``collate_fn=dataset.collate_fn``, as
            PyTorch-YOLOv3's train.py passes; ``Context.worker_hooks``).

    Results are cached per (class, entries). Classes from the standard library or installed
    packages give an empty analysis.
    """
    key = (cls, tuple(entries))
    cached = _CACHE.get(key)
    if cached is not None:
        return cached
    out = ClassAnalysis()
    methods, lines = _class_methods(cls)
    scans: dict[str, _BodyScan] = {}
    for name, fdef in methods.items():
        scan = _BodyScan()
        for stmt in fdef.body:
            scan.visit(stmt)
        scans[name] = scan
    readers = [m for m in READER_METHODS if m in methods]
    readers += [m for m in entries if m in methods and m not in readers]
    out.readers = {m: lines[m] for m in readers}
    # Worker code: readers plus the self-methods they call, transitively. A helper called
    # under a guard (if self.f is None: self._open()) is lazy initialisation.
    worker: dict[str, bool] = {}
    stack = [(m, False) for m in readers]
    while stack:
        name, guarded = stack.pop()
        if name in worker and (guarded or not worker[name]):
            continue  # already known, and no less guarded than this call
        worker[name] = guarded
        for callee, g in scans[name].calls:
            if callee in methods:
                stack.append((callee, guarded or g))
    for name, guarded_call in worker.items():
        scan = scans[name]
        out.reads |= scan.reads
        fdef = methods[name]
        out.pid_guard = out.pid_guard or _mentions_getpid(fdef)
        text = ast.dump(fdef)
        out.shards = out.shards or any(f"'{s}'" in text for s in SHARDING_NAMES)
        for attr, line, guarded, _value in scan.assigns:
            if not guarded and not guarded_call:
                out.mutations.setdefault(attr, (name, lines[name] + line - fdef.lineno))
        for attr, line in scan.fills:
            out.cache_fills.setdefault(attr, (name, lines[name] + line - fdef.lineno))
        out.bounded_caches |= scan.evicts
        for line, snippet in scan.cuda:
            out.cuda_transfers.append((name, lines[name] + line - fdef.lineno, snippet))
    for attr in list(out.mutations):
        if _is_scratch(attr, readers, worker, methods, scans):
            out.scratch.add(attr)
            del out.mutations[attr]
    _find_changers(out, methods, lines, scans, worker)
    for attr in out.bounded_caches:
        out.cache_fills.pop(attr, None)
    _CACHE[key] = out
    return out


def _plain_assign(stmt: ast.stmt, attr: str) -> bool | None:
    """True: ``stmt`` assigns ``self.<attr>`` from a value that does not read it; False: it
    assigns it from its old value; None: it does not assign it."""
    if isinstance(stmt, (ast.Assign, ast.AnnAssign)):
        targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
        if any(_self_attr(t) == attr for t in targets):
            return stmt.value is not None and not _mentions(stmt.value, attr)
    return None


def _assigns_first(fdef: ast.FunctionDef, attr: str) -> bool:
    """Whether a top-level statement of ``fdef`` assigns ``self.<attr>`` plainly before any
    statement reads it."""
    for stmt in fdef.body:
        plain = _plain_assign(stmt, attr)
        if plain is not None:
            return plain
        if _mentions(stmt, attr):
            return False
    return False


def _self_call(node: ast.AST, methods: dict[str, ast.FunctionDef]) -> str | None:
    """The method name of a ``self.<method>(...)`` call of the class, else None."""
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and isinstance(node.func.value, ast.Name)
        and node.func.value.id == "self"
        and node.func.attr in methods
    ):
        return node.func.attr
    return None


def _is_scratch(
    attr: str,
    readers: list[str],
    worker: dict[str, bool],
    methods: dict[str, ast.FunctionDef],
    scans: dict[str, _BodyScan],
) -> bool:
    """Whether every worker entry method sets ``self.<attr>`` before it reads it, at its own
    top level or by first calling a method that does (``self.randomize()`` then
    ``self.val``), and no worker code updates it from its old value (``+=``)."""
    for name in worker:
        if any(a == attr and value is None for a, _l, _g, value in scans[name].assigns):
            return False  # self.<attr> op= ..., or a tuple target: the old value may count
    touched = False
    for entry in readers:
        for stmt in methods[entry].body:
            plain = _plain_assign(stmt, attr)
            called = _self_call(stmt.value, methods) if isinstance(stmt, ast.Expr) else None
            if plain or (called is not None and _assigns_first(methods[called], attr)):
                touched = True
                break
            if plain is False or _mentions(stmt, attr):
                return False
            for node in ast.walk(stmt):
                callee = _self_call(node, methods)
                if callee is not None and any(a == attr for a, *_ in scans[callee].assigns):
                    return False  # set under a condition, or after other work
    return touched


@dataclass(frozen=True)
class SeedCall:
    """A seeding call in a worker_init_fn and what its seed depends on.

    Attributes:
        call: The callee as written, e.g. "np.random.seed".
        line: Line number in the source file.
        depends_on: "constant" (same in every worker and epoch), "arguments" (the function's
            own arguments, such as worker_id: differs by worker, repeats every epoch) or
            "runtime" (torch.initial_seed(), get_worker_info().seed...: fresh each epoch).
    """

    call: str
    line: int
    depends_on: str


_RANK = {"constant": 0, "arguments": 1, "runtime": 2}
_PURE_CALLS = frozenset({"int", "abs", "hash", "str", "float", "len", "sum", "min", "max"})


def seed_calls(func: Any) -> list[SeedCall]:
    """The seeding calls in a worker_init_fn (``functools.partial`` unwrapped) and what each
    seed depends on: constants only, the function's own arguments, or anything else (the
    runtime). A lambda written inside a larger expression (``DataLoader(...,
    worker_init_fn=lambda wid: np.random.seed(wid))``), whose source line does not parse on
    its own, is found in its parsed file (``lambda_node``). Empty when there is no source.
    """
    while isinstance(func, functools.partial):
        func = func.func
    if not isinstance(func, types.FunctionType):
        return []
    fdef: ast.AST | None = function_source(func)
    start = getattr(func.__code__, "co_firstlineno", 1)
    if fdef is None:
        fdef = lambda_node(func)
        start = 1  # parsed from the whole file: its line numbers are the file's
    if fdef is None:
        return []
    args = fdef.args  # type: ignore[attr-defined]
    params = {a.arg for a in [*args.posonlyargs, *args.args, *args.kwonlyargs]}
    if args.vararg:
        params.add(args.vararg.arg)
    local: dict[str, list[ast.AST]] = {}
    for n in ast.walk(fdef):
        if isinstance(n, ast.Assign):
            for t in n.targets:
                if isinstance(t, ast.Name):
                    local.setdefault(t.id, []).append(n.value)
        elif (
            isinstance(n, (ast.AugAssign, ast.AnnAssign))
            and isinstance(n.target, ast.Name)
            and n.value is not None
        ):
            local.setdefault(n.target.id, []).append(n.value)
            if isinstance(n, ast.AugAssign):
                local[n.target.id].append(ast.Name(id=n.target.id))

    def kind(expr: ast.AST, depth: int = 0) -> str:
        if depth > 20:
            return "runtime"
        if isinstance(expr, ast.Constant):
            return "constant"
        if isinstance(expr, ast.Name):
            if expr.id in params:
                return "arguments"
            if expr.id in local:
                vals = [
                    v for v in local[expr.id] if not (isinstance(v, ast.Name) and v.id == expr.id)
                ]
                return max(
                    (kind(v, depth + 1) for v in vals), key=_RANK.__getitem__, default="runtime"
                )
            return "runtime"
        if isinstance(expr, ast.BinOp):
            return max(
                kind(expr.left, depth + 1), kind(expr.right, depth + 1), key=_RANK.__getitem__
            )
        if isinstance(expr, ast.UnaryOp):
            return kind(expr.operand, depth + 1)
        if isinstance(expr, ast.Call) and _called_name(expr) in _PURE_CALLS:
            return max(
                (kind(a, depth + 1) for a in expr.args), key=_RANK.__getitem__, default="constant"
            )
        return "runtime"

    out: list[SeedCall] = []
    for n in ast.walk(fdef):
        if not isinstance(n, ast.Call) or _called_name(n) not in _SEED_FUNCS:
            continue
        seed_expr: ast.AST | None = n.args[0] if n.args else None
        for kw in n.keywords:
            if kw.arg in ("seed", "a", "x"):
                seed_expr = kw.value
        if seed_expr is None:
            continue  # seed() without argument: fresh OS entropy
        out.append(SeedCall(ast.unparse(n.func), start + n.lineno - 1, kind(seed_expr)))
    return out


#: Calls that give Randomizable objects (MONAI's, anything with a ``set_random_state``
#: method) their own RNG: ``obj.set_random_state(seed)`` on one, and MONAI's
#: ``monai.data.utils.set_rnd(obj, seed)``, which calls it on every Randomizable it reaches
#: from obj.
_RANDOM_STATE_SETTERS = frozenset({"set_rnd", "set_random_state"})


def reseeds_randomizables(func: Any) -> bool:
    """True when a worker_init_fn (``functools.partial`` unwrapped) calls ``set_rnd`` or
    ``set_random_state``, in its own code or in a function it calls (one level down: a name
    that resolves, through its globals, closure or local imports, to a Python function whose
    source can be read).

    MONAI's ``monai.data.utils.worker_init_fn`` (what ``monai.data.DataLoader`` passes) is
    ``set_rnd(worker_info.dataset, seed=worker_info.seed)``: each worker reseeds every
    Randomizable the dataset reaches. Only source is read; nothing is called.
    """
    while isinstance(func, functools.partial):
        func = func.func
    if not isinstance(func, types.FunctionType):
        return False
    fdef = function_source(func) or lambda_node(func)
    if fdef is None:
        return False
    calls = [n for n in ast.walk(fdef) if isinstance(n, ast.Call)]
    if any(_called_name(c) in _RANDOM_STATE_SETTERS for c in calls):
        return True
    globs: dict[str, Any] = dict(func.__globals__)
    for name, cell in zip(func.__code__.co_freevars, func.__closure__ or (), strict=False):
        try:
            globs[name] = cell.cell_contents
        except ValueError:  # an empty cell
            continue
    local = _local_imports(fdef)
    for call in calls:
        chain = _dotted(call.func)
        if chain is None:
            continue
        callee, _ = _resolve(chain, globs, local)
        while isinstance(callee, functools.partial):
            callee = callee.func
        if not isinstance(callee, types.FunctionType) or callee is func:
            continue
        sub = function_source(callee)
        if sub is not None and any(
            isinstance(n, ast.Call) and _called_name(n) in _RANDOM_STATE_SETTERS
            for n in ast.walk(sub)
        ):
            return True
    return False


# ------------------------------------------------------------------------------------------
# Worker code's calls into libraries (thread pools), device attributes and worker-info use.
# Added for issue 15's unseen corpus; self-contained: nothing above calls these.


@dataclass(frozen=True)
class WorkerCall:
    """A call in worker code whose callee resolves to a library object.

    Attributes:
        method: The worker method the call is in (``__getitem__``, or a ``self.`` helper).
        line: Line number in the source file (of the call in ``method``).
        name: The callee as written, e.g. "cv2.resize" or "np.linalg.svd".
        module: The module the callee comes from, e.g. "cv2" or "numpy.linalg"; "" if unknown.
        via: The module-level user function the call is inside, when ``method`` reaches it
            through one (``read_image`` calling ``cv2.imread``); None for a direct call.
    """

    method: str
    line: int
    name: str
    module: str
    via: str | None = None


#: Libraries whose builtin functions carry no ``__module__`` (OpenCV's do not): a bare name
#: imported with ``from cv2 import resize`` is recognised by identity with these modules'
#: attributes.
_NAMELESS_BUILTIN_LIBS = ("cv2",)

#: How deep calls into module-level user functions are followed from worker code.
_FOLLOW_DEPTH = 3


def _worker_defs(cls: type) -> list[tuple[str, ast.FunctionDef, int, dict[str, Any]]]:
    """(name, def, line of the def in its file, module globals) of each worker method.

    Worker methods are the reader methods (``READER_METHODS``) and the ``self.`` methods they
    call, transitively; the first definition along the MRO wins, as for attribute lookup.
    """
    methods: dict[str, tuple[ast.FunctionDef, int, dict[str, Any]]] = {}
    for klass in cls.__mro__:
        if klass is object or not is_user_code(klass):
            continue
        try:
            text, start = inspect.getsourcelines(klass)
            tree = ast.parse(textwrap.dedent("".join(text)))
        except (OSError, TypeError, SyntaxError):
            continue
        cdef = next((n for n in tree.body if isinstance(n, ast.ClassDef)), None)
        if cdef is None:
            continue
        module = sys.modules.get(klass.__module__)
        globs = dict(vars(module)) if module is not None else {}
        for item in cdef.body:
            if (
                isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef)
                and item.name not in methods
            ):
                methods[item.name] = (item, start + item.lineno - 1, globs)  # type: ignore[assignment]
    seen: list[str] = []
    stack = [m for m in READER_METHODS if m in methods]
    while stack:
        name = stack.pop(0)
        if name in seen:
            continue
        seen.append(name)
        for n in ast.walk(methods[name][0]):
            if (
                isinstance(n, ast.Call)
                and isinstance(n.func, ast.Attribute)
                and isinstance(n.func.value, ast.Name)
                and n.func.value.id == "self"
                and n.func.attr in methods
            ):
                stack.append(n.func.attr)
    return [(name, *methods[name]) for name in seen]


def _dotted(node: ast.AST) -> list[str] | None:
    """``a.b.c`` as ["a", "b", "c"]; None for anything but names and attributes."""
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    parts.append(node.id)
    return parts[::-1]


def _local_imports(fdef: ast.AST) -> dict[str, str]:
    """Names bound by ``import``/``from ... import`` inside a function -> module they name."""
    out: dict[str, str] = {}
    for n in ast.walk(fdef):
        if isinstance(n, ast.Import):
            for a in n.names:
                out[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
        elif isinstance(n, ast.ImportFrom) and n.module and n.level == 0:
            for a in n.names:
                out[a.asname or a.name] = f"{n.module}.{a.name}"
    return out


def _resolve(chain: list[str], globs: dict[str, Any], local: dict[str, str]) -> tuple[Any, str]:
    """(object, module it comes from) for a dotted name; (None, "") when it does not resolve.

    Only modules are walked through (``getattr`` on a module), never user objects, so no
    property or ``__getattr__`` of user code runs.
    """
    head = chain[0]
    if head in local:
        target = local[head]
        obj: Any = sys.modules.get(target)
        if obj is None:
            base, _, attr = target.rpartition(".")
            obj = getattr(sys.modules.get(base), attr, None) if base else None
            if obj is None:  # not imported here: the name is all there is
                mod = ".".join([target, *chain[1:-1]]) if len(chain) > 1 else base or target
                return None, mod
    elif head in globs:
        obj = globs[head]
    else:
        return None, ""
    home = ""
    for part in chain[1:]:
        if not isinstance(obj, types.ModuleType):
            return None, ""
        home = obj.__name__
        obj = getattr(obj, part, None)
        if obj is None:
            return None, home
    if isinstance(obj, types.ModuleType):
        return obj, obj.__name__
    defined_in = getattr(obj, "__module__", None)
    if isinstance(defined_in, str) and defined_in:
        return obj, defined_in
    if not home:
        for lib in _NAMELESS_BUILTIN_LIBS:
            if getattr(sys.modules.get(lib), getattr(obj, "__name__", ""), None) is obj:
                return obj, lib
    return obj, home


def _calls_in(
    fdef: ast.AST,
    globs: dict[str, Any],
    method: str,
    line_of: Any,
    via: str | None,
    depth: int,
    seen: set[Any],
    out: list[WorkerCall],
) -> None:
    local = _local_imports(fdef)
    for n in ast.walk(fdef):
        if not isinstance(n, ast.Call):
            continue
        chain = _dotted(n.func)
        if chain is None or chain[0] in ("self", "cls"):
            continue
        obj, module = _resolve(chain, globs, local)
        if not module and obj is None:
            continue
        line = line_of(n)
        if isinstance(obj, types.FunctionType) and is_user_code(obj):
            if depth < _FOLLOW_DEPTH and obj.__code__ not in seen:
                seen.add(obj.__code__)
                inner = function_source(obj)
                if inner is not None:
                    _calls_in(
                        inner,
                        obj.__globals__,
                        method,
                        lambda _n, line=line: line,
                        via or obj.__qualname__,
                        depth + 1,
                        seen,
                        out,
                    )
            continue
        out.append(WorkerCall(method, line, ".".join(chain), module, via))


_CALLS_CACHE: dict[type, list[WorkerCall]] = {}


def worker_calls(cls: type) -> list[WorkerCall]:
    """Calls in a user class's worker code whose callee resolves to a library function.

    Worker code is ``__getitem__``, ``__iter__``, ``__call__``... and the ``self.`` methods
    they call; calls into module-level user functions are followed (3 levels deep) and
    reported at the worker method that makes them. Names resolve through the defining
    module's globals and the function's own imports, without running user code. Cached per
    class; empty for classes without source.
    """
    cached = _CALLS_CACHE.get(cls)
    if cached is not None:
        return cached
    out: list[WorkerCall] = []
    for name, fdef, first, globs in _worker_defs(cls):

        def line_of(n: ast.AST, first: int = first, fdef: ast.AST = fdef) -> int:
            return first + getattr(n, "lineno", 1) - getattr(fdef, "lineno", 1)

        _calls_in(fdef, globs, name, line_of, None, 0, set(), out)
    out.sort(key=lambda c: c.line)  # source order (ast.walk is breadth-first)
    _CALLS_CACHE[cls] = out
    return out


#: numpy functions that call BLAS (``numpy.linalg`` and ``scipy.linalg`` count whole).
_BLAS_NUMPY_FUNCS = frozenset({"dot", "matmul", "inner", "vdot", "tensordot"})

#: Methods of numpy arrays that return something other than an array.
_ARRAY_TO_PYTHON = frozenset({"tolist", "item", "tobytes"})


def _is_blas_module(module: str, name: str) -> bool:
    top = module.split(".")
    if module.startswith(("numpy.linalg", "scipy.linalg")):
        return True
    return top[0] == "numpy" and len(top) <= 2 and name.rsplit(".", 1)[-1] in _BLAS_NUMPY_FUNCS


class _ArrayKinds:
    """Which expressions of one function are numpy arrays ("array") or torch tensors
    ("tensor"), from the calls that made them and the live types of ``self.`` attributes."""

    def __init__(self, fdef: ast.AST, globs: dict[str, Any], array_attrs: frozenset[str]) -> None:
        self.globs = globs
        self.local = _local_imports(fdef)
        self.array_attrs = array_attrs
        self.names: dict[str, str] = {}
        pairs: list[tuple[ast.AST, ast.AST]] = []
        for n in ast.walk(fdef):
            if isinstance(n, ast.Assign):
                pairs.extend((t, n.value) for t in n.targets)
            elif isinstance(n, (ast.AnnAssign, ast.AugAssign, ast.NamedExpr)) and n.value:
                pairs.append((n.target, n.value))
        for _ in range(4):  # a fixpoint over chains of assignments
            before = dict(self.names)
            for target, value in pairs:
                self._bind(target, value)
            if before == self.names:
                break

    def _bind(self, target: ast.AST, value: ast.AST) -> None:
        if isinstance(target, ast.Name):
            kind = self.kind(value)
            if kind is not None:
                self.names[target.id] = kind
        elif isinstance(target, (ast.Tuple, ast.List)):
            if isinstance(value, (ast.Tuple, ast.List)) and len(value.elts) == len(target.elts):
                for t, v in zip(target.elts, value.elts, strict=True):
                    self._bind(t, v)
            else:
                for t in target.elts:
                    self._bind(t, value)

    def kind(self, expr: ast.AST) -> str | None:
        if isinstance(expr, ast.Name):
            return self.names.get(expr.id)
        if isinstance(expr, ast.Attribute):
            if _self_attr(expr) is not None:
                return "array" if expr.attr in self.array_attrs else None
            return self.kind(expr.value) if expr.attr in ("T", "real", "imag", "mT") else None
        if isinstance(expr, ast.Subscript):
            return self.kind(expr.value)
        if isinstance(expr, ast.UnaryOp):
            return self.kind(expr.operand)
        if isinstance(expr, (ast.BinOp, ast.IfExp)):
            sides = (
                (expr.left, expr.right) if isinstance(expr, ast.BinOp) else (expr.body, expr.orelse)
            )
            kinds = {self.kind(s) for s in sides}
            return "tensor" if "tensor" in kinds else "array" if "array" in kinds else None
        if isinstance(expr, ast.Call):
            chain = _dotted(expr.func)
            if chain is not None and chain[0] not in ("self", "cls"):
                _obj, module = _resolve(chain, self.globs, self.local)
                top = module.split(".")[0]
                if top in ("numpy", "scipy"):
                    return "array"
                if top == "torch":
                    return "tensor"
            if isinstance(expr.func, ast.Attribute):
                if expr.func.attr == "numpy":
                    return "array"
                receiver = self.kind(expr.func.value)
                if receiver == "array" and expr.func.attr not in _ARRAY_TO_PYTHON:
                    return "array"
                return receiver if receiver == "tensor" else None
        return None


def _short(node: ast.AST, limit: int = 40) -> str:
    """Source of an expression, cut to ``limit`` characters for a message."""
    text = ast.unparse(node)
    return text if len(text) <= limit else text[: limit - 3] + "..."


_BLAS_CACHE: dict[tuple[type, frozenset[str]], list[tuple[str, int, str]]] = {}


def blas_calls(cls: type, array_attrs: frozenset[str] = frozenset()) -> list[tuple[str, int, str]]:
    """(method, line, snippet) of BLAS/LAPACK work in a user class's worker code.

    Counted: calls into ``numpy.linalg`` and ``scipy.linalg``, ``np.dot``/``np.matmul``/
    ``np.inner``/``np.vdot``/``np.tensordot``, and ``a @ b`` or ``a.dot(b)`` where ``a`` or
    ``b`` is a numpy array: made by a numpy call, or read from a ``self.`` attribute named in
    ``array_attrs`` (attributes whose live value is an ndarray; the caller looks). ``@`` on
    torch tensors is not counted: DataLoader workers run torch with one intra-op thread.
    Calls into module-level user functions are followed as in ``worker_calls``.
    """
    key = (cls, array_attrs)
    cached = _BLAS_CACHE.get(key)
    if cached is not None:
        return cached
    out: list[tuple[str, int, str]] = []
    for call in worker_calls(cls):
        if _is_blas_module(call.module, call.name):
            out.append((call.method, call.line, f"{call.name}(...)"))
    for name, fdef, first, globs in _worker_defs(cls):
        kinds = _ArrayKinds(fdef, globs, array_attrs)
        for n in ast.walk(fdef):
            line = first + getattr(n, "lineno", 1) - fdef.lineno
            if isinstance(n, ast.BinOp) and isinstance(n.op, ast.MatMult):
                sides = {kinds.kind(n.left), kinds.kind(n.right)}
                if "array" in sides and "tensor" not in sides:
                    out.append((name, line, _short(n)))
            elif (
                isinstance(n, ast.Call)
                and isinstance(n.func, ast.Attribute)
                and n.func.attr == "dot"
                and kinds.kind(n.func.value) == "array"
            ):
                out.append((name, line, _short(n)))
    out.sort(key=lambda t: (t[0], t[1]))
    _BLAS_CACHE[key] = out
    return out


def module_level_calls(module: Any, names: frozenset[str]) -> list[tuple[str, ast.Call]]:
    """Calls made at import time of ``module`` (top level, or under a top-level ``if``/
    ``try``/``with``, not in a function nor under ``if __name__ == "__main__":``, which spawn
    workers do not run) whose callee's last name is in ``names``.

    Returns:
        ``[(callee as written, call)]``; empty when the module has no readable source.
    """
    try:
        tree = ast.parse(inspect.getsource(module))
    except (OSError, TypeError, SyntaxError):
        return []
    out: list[tuple[str, ast.Call]] = []
    stack: list[ast.AST] = list(tree.body)
    while stack:
        stmt = stack.pop(0)
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
            continue
        if isinstance(stmt, ast.If) and _is_main_guard(stmt.test):
            continue  # runs in the parent only: spawn workers re-import without it
        if isinstance(stmt, ast.Call):
            chain = _dotted(stmt.func)
            if chain is not None and chain[-1] in names:
                out.append((".".join(chain), stmt))
        stack.extend(ast.iter_child_nodes(stmt))
    return out


def _is_main_guard(test: ast.AST) -> bool:
    """``__name__ == "__main__"``."""
    return (
        isinstance(test, ast.Compare)
        and isinstance(test.left, ast.Name)
        and test.left.id == "__name__"
        and any(isinstance(c, ast.Constant) and c.value == "__main__" for c in test.comparators)
    )


def function_calls(func: Any, names: frozenset[str]) -> list[tuple[str, ast.Call]]:
    """Calls in a function's body (``functools.partial`` unwrapped) whose callee's last name
    is in ``names``: ``[(callee as written, call)]``; empty without source."""
    while isinstance(func, functools.partial):
        func = func.func
    if func is None:
        return []
    fdef = function_source(func)
    if fdef is None:
        return []
    out: list[tuple[str, ast.Call]] = []
    for n in ast.walk(fdef):
        if isinstance(n, ast.Call):
            chain = _dotted(n.func)
            if chain is not None and chain[-1] in names:
                out.append((".".join(chain), n))
    return out


#: Names whose call splits a stream by worker or rank (Hugging Face datasets, datapipes).
_SPLITTER_CALLS = frozenset({"split_dataset_by_node", "sharding_filter", "apply_sharding"})

#: Attribute and variable names that carry worker identity.
_WORKER_NAMES = frozenset({"worker_info", "worker_id", "num_workers"})

#: Calls that only pass a value along or print it: worker info given to them splits nothing.
_NEUTRAL_CALLS = frozenset(
    {
        "getattr",
        "hasattr",
        "isinstance",
        "int",
        "float",
        "bool",
        "str",
        "repr",
        "format",
        "print",
        "id",
        "type",
        "debug",
        "info",
        "warning",
        "warn",
        "error",
        "log",
        "exception",
    }
)


def _names_in(expr: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(expr) if isinstance(n, ast.Name)}


class _WorkerInfoFlow:
    """Where worker identity (``get_worker_info()``, ``worker_id``, ``num_workers``) flows in
    worker code: into names and ``self.`` attributes, and into the uses that split a stream."""

    def __init__(self, defs: list[tuple[str, ast.FunctionDef, int, dict[str, Any]]]) -> None:
        self.defs = {name: fdef for name, fdef, _first, _globs in defs}
        self.tainted: dict[str, set[str]] = {name: set() for name in self.defs}
        self.self_attrs: set[str] = set()
        self.seen_source = False
        self.split_by: str | None = None  # how the stream is split, as written
        self._split_key: tuple[int, int] | None = None
        self.first_line = {name: first - fdef.lineno for name, fdef, first, _globs in defs}

    def is_tainted(self, expr: ast.AST, method: str) -> bool:
        for n in ast.walk(expr):
            if (
                isinstance(n, ast.Call)
                and (chain := _dotted(n.func)) is not None
                and chain[-1] == "get_worker_info"
            ):
                return True
            if isinstance(n, ast.Name) and (n.id in self.tainted[method] or n.id in _WORKER_NAMES):
                return True
            if isinstance(n, ast.Attribute) and (
                n.attr in _WORKER_NAMES or _self_attr(n) in self.self_attrs
            ):
                return True
        return False

    def _targets(self, target: ast.AST, method: str) -> bool:
        """Taint what ``target`` binds; True when something new was tainted."""
        if isinstance(target, (ast.Tuple, ast.List)):
            new = False
            for elt in target.elts:
                new = self._targets(elt, method) or new
            return new
        if isinstance(target, ast.Starred):
            return self._targets(target.value, method)
        if isinstance(target, ast.Name) and target.id not in self.tainted[method]:
            self.tainted[method].add(target.id)
            return True
        attr = _self_attr(target)
        if attr is not None and attr not in self.self_attrs:
            self.self_attrs.add(attr)
            return True
        return False

    def passes(self, arg: ast.AST, method: str) -> bool:
        """Whether a call argument is worker identity itself (or computed from it), not a
        literal container or f-string that merely holds it (``torch.tensor([x, wid])``)."""
        if isinstance(arg, (ast.List, ast.Tuple, ast.Set, ast.Dict, ast.JoinedStr)):
            return False
        if isinstance(arg, ast.Starred):
            return self.passes(arg.value, method)
        return self.is_tainted(arg, method)

    def propagate(self) -> None:
        for _ in range(8):  # fixpoint: assignments, and worker info passed to self methods
            changed = False
            for method, fdef in self.defs.items():
                for n in ast.walk(fdef):
                    pairs: list[tuple[ast.AST, ast.AST]] = []
                    if isinstance(n, ast.Assign):
                        pairs = [(t, n.value) for t in n.targets]
                    elif isinstance(n, (ast.AnnAssign, ast.AugAssign, ast.NamedExpr)) and n.value:
                        pairs = [(n.target, n.value)]
                    elif isinstance(n, ast.withitem) and n.optional_vars is not None:
                        pairs = [(n.optional_vars, n.context_expr)]
                    for target, value in pairs:
                        if self.is_tainted(value, method):
                            changed = self._targets(target, method) or changed
                    if (
                        isinstance(n, ast.Call)
                        and isinstance(n.func, ast.Attribute)
                        and _self_attr(n.func) is not None
                        and n.func.attr in self.defs
                    ):
                        changed = self._into_callee(n, method, n.func.attr) or changed
            if not changed:
                return

    def _into_callee(self, call: ast.Call, method: str, callee: str) -> bool:
        fdef = self.defs[callee]
        params = [a.arg for a in fdef.args.args[1:]]  # after self
        passed = [p for p, a in zip(params, call.args, strict=False) if self.is_tainted(a, method)]
        passed += [
            kw.arg
            for kw in call.keywords
            if kw.arg is not None and self.is_tainted(kw.value, method)
        ]
        new = set(passed) - self.tainted[callee]
        self.tainted[callee] |= new
        return bool(new)

    def _none_check(self, cmp: ast.Compare, method: str) -> bool:
        """``info is None``, ``info is not None``, ``info == None``: tests presence only."""
        operands = [cmp.left, *cmp.comparators]
        untainted = [o for o in operands if not self.is_tainted(o, method)]
        return bool(untainted) and all(
            isinstance(o, ast.Constant) and o.value is None for o in untainted
        )

    def judge(self) -> None:
        for method, fdef in self.defs.items():
            for n in ast.walk(fdef):
                if isinstance(n, (ast.Call, ast.Attribute, ast.Name)):
                    chain = _dotted(n.func) if isinstance(n, ast.Call) else _dotted(n)
                    if chain is not None and chain[-1] in _SPLITTER_CALLS and not self.split_by:
                        self.split_by = ast.unparse(n)
                        self._split_key = (self.first_line[method] + n.lineno, 0)
                if not self.seen_source and isinstance(n, (ast.Call, ast.Name, ast.Attribute)):
                    self.seen_source = self.is_tainted(n, method)
                how: ast.AST | None = None
                if isinstance(n, ast.Compare) and self.is_tainted(n, method):
                    if not self._none_check(n, method):
                        how = n
                elif isinstance(n, ast.Subscript) and self.is_tainted(n.slice, method):
                    how = n
                elif isinstance(n, ast.Call):
                    chain = _dotted(n.func)
                    name = chain[-1] if chain else None
                    self_call = (
                        isinstance(n.func, ast.Attribute) and _self_attr(n.func) in self.defs
                    )
                    if name not in _NEUTRAL_CALLS and not self_call:
                        args = [*n.args, *(kw.value for kw in n.keywords)]
                        if any(self.passes(a, method) for a in args):
                            how = n
                if how is not None:
                    # the first in the source, the innermost on its line: files[wid::n], not
                    # enumerate(files[wid::n]) nor what is done later with the items
                    key = (
                        self.first_line[method] + getattr(how, "lineno", 0),
                        len(ast.unparse(how)),
                    )
                    if self._split_key is None or key < self._split_key:
                        self._split_key = key
                        self.split_by = ast.unparse(how)


_SPLIT_CACHE: dict[type, tuple[str, str | None]] = {}


def worker_info_use(cls: type) -> tuple[str, str | None]:
    """How a user class's worker code (``__iter__`` and the ``self.`` methods it calls) uses
    worker identity.

    Worker identity is ``get_worker_info()`` and what is assigned from it, plus anything
    named ``worker_id``, ``num_workers`` or ``worker_info``; it flows through assignments,
    ``self.`` attributes and arguments of ``self.`` methods. It *splits* the stream when it
    reaches a comparison other than a None test (``i % n == wid``), a subscript or slice
    (``files[wid::n]``, ``shards[wid]``), or an argument of any call except those that only
    print or pass it along (``islice(it, wid, None, n)``, ``range(start, end)``, a library's
    ``shard(...)``); ``split_dataset_by_node`` and datapipes' ``sharding_filter`` split too.
    It only *tags* when it reaches nothing but yielded values, containers and messages
    (``yield doc, worker_id``).

    Returns:
        ("splits", the expression that splits), ("tags", None) or ("none", None); ("none",
        None) for classes without source.
    """
    cached = _SPLIT_CACHE.get(cls)
    if cached is not None:
        return cached
    flow = _WorkerInfoFlow(_worker_defs(cls))
    flow.propagate()
    flow.judge()
    if flow.split_by is not None:
        out: tuple[str, str | None] = ("splits", flow.split_by)
    else:
        out = ("tags", None) if flow.seen_source else ("none", None)
    _SPLIT_CACHE[cls] = out
    return out


_DEVICE_CACHE: dict[type, list[tuple[str, int, str, str]]] = {}


def device_attr_transfers(cls: type) -> list[tuple[str, int, str, str]]:
    """(method, line, attribute, snippet) of device transfers in a user class's worker code
    whose device is a ``self.`` attribute: ``x.to(self.device)``, ``x.to(device=self.dev)``,
    ``x.cuda(self.device)``, ``torch.zeros(..., device=self.device)``, also through a local
    alias (``device = self.device``). The caller looks up the attribute's live value.
    Cached per class."""
    cached = _DEVICE_CACHE.get(cls)
    if cached is not None:
        return cached
    out: list[tuple[str, int, str, str]] = []
    for name, fdef, first, _globs in _worker_defs(cls):
        alias: dict[str, str] = {}
        for n in ast.walk(fdef):
            if isinstance(n, ast.Assign) and (attr := _self_attr(n.value)) is not None:
                for t in n.targets:
                    if isinstance(t, ast.Name):
                        alias[t.id] = attr

        def attr_of(expr: ast.AST, alias: dict[str, str] = alias) -> str | None:
            if isinstance(expr, ast.Name):
                return alias.get(expr.id)
            return _self_attr(expr)

        for n in ast.walk(fdef):
            if not isinstance(n, ast.Call):
                continue
            called = _called_name(n)
            found: tuple[str, str] | None = None
            if called in ("to", "cuda") and isinstance(n.func, ast.Attribute) and n.args:
                attr = attr_of(n.args[0])
                if attr is not None:
                    found = (attr, f".{called}({ast.unparse(n.args[0])})")
            for kw in n.keywords:
                if found is None and kw.arg == "device" and (attr := attr_of(kw.value)):
                    found = (attr, f"{called}(..., device={ast.unparse(kw.value)})")
            if found is not None:
                out.append((name, first + n.lineno - fdef.lineno, *found))
    _DEVICE_CACHE[cls] = out
    return out
