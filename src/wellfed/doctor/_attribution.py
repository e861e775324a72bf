"""Where a live failure happened, as an attribute path: the worker's exception, or a hang.

The live probe sees a failure three ways. A worker's exception arrives as text: torch
re-raises it in the main process with the worker's formatted traceback inside the message
(``torch._utils.ExceptionWrapper``: "Caught ValueError in DataLoader worker process 0.
Original Traceback (most recent call last): ..."). An exception of the probe's own process
(the main-process fetch of the same sample, a sampler) comes with its traceback object. A hung
worker is seen through a ``faulthandler`` dump of its threads, written when the probe sends it
SIGUSR1 before killing it. Each becomes a list of ``Frame`` (file, line, function).

``locate`` takes the innermost *user* frame (``is_user_file``: not the standard library,
site-packages, torch, numpy or wellfed) and finds, among the objects the doctor walked
(``Context.walks``), the function or method whose code object it is: matched by file, function
name and a line of that code object (or of a function nested in it). The path says how the
worker reached it: ``loader.collate_fn`` (a collate object's ``__call__`` too),
``loader.worker_init_fn``, ``type(dataset).__getitem__``, ``type(dataset).__getattr__``,
``dataset.reader.read``. A user frame that no walked object owns (a module-level helper) is
named, and the path is the nearest caller that one does own.

``failure_category`` reads the category the exception implies (a pickling error, CUDA, a
handle shared through fork, shared memory, else worker configuration).
"""

from __future__ import annotations

import ast
import functools
import linecache
import os
import re
import sys
import sysconfig
import traceback
import types
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from wellfed.doctor._classify import is_container
from wellfed.doctor._context import Context
from wellfed.doctor._source import is_user_code

__all__ = [
    "CodeIndex",
    "Frame",
    "Location",
    "code_index",
    "exception_facts",
    "failure_category",
    "frames_from_json",
    "is_user_file",
    "locate",
    "parse_dump",
    "parse_traceback",
]

#: How torch's re-raise of a worker's exception names the worker ("... in DataLoader worker
#: process 0.", ``torch.utils.data._utils.worker._worker_loop``).
_WORKER_WHERE = re.compile(r"in DataLoader worker process (\d+)")

#: A frame line of a formatted traceback: ``  File "x.py", line 12, in read``.
_TB_FRAME = re.compile(r'^\s+File "(?P<file>.+)", line (?P<line>\d+), in (?P<name>.+)$')

#: A frame line of a faulthandler dump: ``  File "x.py", line 12 in read``.
_DUMP_FRAME = re.compile(r'^\s+File "(?P<file>.+)", line (?P<line>\d+) in (?P<name>.+)$')

#: A thread header of a faulthandler dump: ``Current thread 0x00007f... (most recent call
#: first):`` or ``Thread 0x... (most recent call first):`` (later Pythons add the name).
_DUMP_THREAD = re.compile(r"^(?P<current>Current thread|Thread) 0x[0-9a-fA-F]+.*:\s*$")

#: Exception text that implies a pickling failure (the dataset, a sample or a function cannot
#: cross into or out of a worker).
_PICKLE_WORDS = ("pickl", "Pickl", "Can't get attribute", "can't get attribute")

#: Exception text that implies CUDA used where it cannot be (fork) or is not compiled in.
_CUDA_WORDS = ("CUDA", "cuda")

#: Exception text that implies a file, archive or connection shared through fork (one
#: descriptor and one offset for every worker): EBADF, a closed handle, a corrupt read.
_HANDLE_WORDS = (
    "Bad file descriptor",
    "[Errno 9]",
    "I/O operation on closed file",
    "BadZipFile",
    "Bad CRC-32",
    "Bad magic number",
    "database disk image is malformed",
)

#: Exception text that implies /dev/shm is exhausted or unusable.
_SHM_WORDS = ("Bus error", "SIGBUS", "No space left on device", "shared memory", "shm")


#: (code object, attribute path) pairs: ``code_index``'s answer, ``locate``'s lookup table.
CodeIndex = list[tuple[types.CodeType, str]]


@dataclass(frozen=True)
class Frame:
    """One frame of a traceback or dump: file, line (1-based) and function name."""

    filename: str
    lineno: int
    name: str

    def to_json(self) -> list[Any]:
        """``[filename, lineno, name]``, the form probe observations carry."""
        return [self.filename, self.lineno, self.name]

    @property
    def place(self) -> str:
        """``datasets.py:42``: the file's base name and the line."""
        return f"{os.path.basename(self.filename)}:{self.lineno}"

    @property
    def source(self) -> str:
        """The frame's source line, stripped ("" when the file is not readable)."""
        return linecache.getline(self.filename, self.lineno).strip()


def frames_from_json(items: Any) -> list[Frame]:
    """Frames from ``[[filename, lineno, name], ...]`` (malformed items are skipped)."""
    out: list[Frame] = []
    for item in items or ():
        if isinstance(item, (list, tuple)) and len(item) == 3:
            try:
                out.append(Frame(str(item[0]), int(item[1]), str(item[2])))
            except (TypeError, ValueError):
                continue
    return out


def parse_traceback(text: str) -> tuple[list[Frame], str, str] | None:
    """(frames outermost first, exception type, message) of the last traceback in ``text``.

    ``text`` is a formatted traceback, or torch's re-raised worker exception whose message
    holds one ("Original Traceback (most recent call last): ..."). Of a chained exception
    ("The above exception was the direct cause ..."), the last traceback is the exception
    that escaped. None when ``text`` holds no traceback.
    """
    lines = text.splitlines()
    starts = [i for i, ln in enumerate(lines) if ln.strip().endswith("(most recent call last):")]
    if not starts:
        return None
    frames: list[Frame] = []
    rest: list[str] = []
    for line in lines[starts[-1] + 1 :]:
        match = _TB_FRAME.match(line)
        if match is not None and not rest:
            frames.append(Frame(match["file"], int(match["line"]), match["name"]))
        elif rest or (line.strip() and not line.startswith((" ", "\t"))):
            rest.append(line)  # the exception's own lines, after the last frame's source
    said = "\n".join(rest).strip()
    exc_type, _, message = said.partition(": ")
    if not exc_type or " " in exc_type:
        exc_type, message = "Exception", said
    return frames, exc_type, message.strip()


def parse_dump(text: str) -> list[tuple[bool, list[Frame]]]:
    """The threads of a ``faulthandler`` dump: (is the dumping thread, frames outermost first)."""
    threads: list[tuple[bool, list[Frame]]] = []
    for line in text.splitlines():
        head = _DUMP_THREAD.match(line)
        if head is not None:
            threads.append((head["current"] == "Current thread", []))
            continue
        match = _DUMP_FRAME.match(line)
        if match is not None:
            if not threads:  # a dump of one thread has no header
                threads.append((True, []))
            threads[-1][1].append(Frame(match["file"], int(match["line"]), match["name"]))
    # faulthandler writes the innermost frame first
    return [(current, list(reversed(frames))) for current, frames in threads]


def exception_facts(exc: BaseException) -> dict[str, Any]:
    """What an exception says about where it happened, JSON-ready.

    A worker's exception re-raised by torch is read from the traceback text in its message
    (``worker_id`` set); any other exception from its own traceback object.

    Returns:
        A dict: ``type`` (class name as the traceback writes it, e.g. "ValueError"),
        ``message``, ``frames`` (``[[filename, lineno, name], ...]``, outermost first) and
        ``worker_id`` (int, or None for an exception of this process).
    """
    text = str(exc)
    where = _WORKER_WHERE.search(text)
    parsed = parse_traceback(text) if where is not None else None
    if parsed is not None and where is not None:
        frames, exc_type, message = parsed
        return {
            "type": exc_type,
            "message": message,
            "frames": [f.to_json() for f in frames],
            "worker_id": int(where.group(1)),
        }
    summary = traceback.extract_tb(exc.__traceback__)
    return {
        "type": type(exc).__name__,
        "message": text,
        "frames": [[f.filename, f.lineno or 0, f.name] for f in summary],
        "worker_id": None,
    }


def failure_category(exc_type: str, message: str, method: str) -> str:
    """The category a worker's exception implies (one of ``_report.CATEGORIES``).

    "unpicklable" for a pickling error or ``Can't get attribute`` (not under fork, where
    nothing is pickled into a worker); "cuda-in-worker" for a CUDA error; "fork-shared-handle"
    (fork only) for a bad or closed file descriptor or a corrupt read through a shared handle;
    "shared-memory" for /dev/shm failures; else "worker-config".
    """
    said = f"{exc_type}: {message}"
    if method != "fork" and any(w in said for w in _PICKLE_WORDS):
        return "unpicklable"
    if any(w in said for w in _CUDA_WORDS):
        return "cuda-in-worker"
    if method == "fork" and any(w in said for w in _HANDLE_WORDS):
        return "fork-shared-handle"
    if any(w in said for w in _SHM_WORDS):
        return "shared-memory"
    return "worker-config"


@functools.lru_cache(maxsize=1)
def _library_dirs() -> tuple[str, ...]:
    """Folders whose code is never the user's: the standard library, wellfed, torch, numpy."""
    dirs: set[str] = set()
    for key in ("stdlib", "platstdlib"):
        path = sysconfig.get_paths().get(key)
        if path:
            dirs.add(os.path.realpath(path))
    for name in ("wellfed", "torch", "numpy"):
        mod = sys.modules.get(name)
        file = getattr(mod, "__file__", None) if mod is not None else None
        if isinstance(file, str):
            dirs.add(os.path.realpath(os.path.dirname(file)))
    return tuple(sorted(dirs))


@functools.lru_cache(maxsize=512)
def is_user_file(filename: str) -> bool:
    """True when a frame's file is the user's own code: not the standard library, not an
    installed package (site-packages, dist-packages), not torch, numpy or wellfed, and not
    frozen or generated (``<frozen ...>``, ``<string>``)."""
    if not filename or filename.startswith("<"):
        return False
    path = os.path.realpath(filename)
    parts = path.replace(os.sep, "/").split("/")
    if "site-packages" in parts or "dist-packages" in parts:
        return False
    return not any(path == d or path.startswith(d + os.sep) for d in _library_dirs())


@dataclass(frozen=True)
class Location:
    """Where a failure happened.

    Attributes:
        frame: The innermost user frame.
        qualname: Its function's qualified name ("MyCollate.__call__"), or its plain name.
        path: The attribute path through which the worker reached that code (the nearest
            caller's when no walked object owns the innermost frame), or None.
        call: For a hang: the library function the user frame was blocked in
            ("queue.Queue.get"), or None when the user frame is the innermost Python frame
            (it is in a C function such as ``time.sleep``).
    """

    frame: Frame
    qualname: str
    path: str | None
    call: str | None = None

    def raised_in(self) -> str:
        """``MyCollate.__call__ (datasets.py:42)``."""
        return f"{self.qualname} ({self.frame.place})"

    def blocked_in(self) -> str:
        """``queue.Queue.get, called at datasets.py:17 (`q.get()`) in MyDataset.__getitem__``."""
        src = self.frame.source
        at = f"{self.frame.place} (`{src}`)" if src else self.frame.place
        if self.call:
            return f"{self.call}, called at {at} in {self.qualname}"
        return f"{at} in {self.qualname}"


def locate(frames: Sequence[Frame], index: CodeIndex) -> Location | None:
    """The innermost user frame of ``frames`` (outermost first) and its attribute path.

    Args:
        frames: A traceback's or a dumped thread's frames, outermost first.
        index: ``code_index(ctx)``: the code objects the walks reached, with their paths.

    Returns:
        A Location, or None when no frame is the user's code.
    """
    frames = _own_frames(frames)
    users = [i for i, f in enumerate(frames) if is_user_file(f.filename)]
    if not users:
        return None
    inner = frames[users[-1]]
    qualname = _qualname_at(inner) or inner.name
    path: str | None = None
    for pos, i in enumerate(reversed(users)):
        found = _lookup(index, frames[i])
        if found is None:
            continue
        code, path = found
        if pos == 0:
            qualname = getattr(code, "co_qualname", None) or qualname
        break
    call = None
    if users[-1] + 1 < len(frames):
        below = frames[users[-1] + 1]
        name = _qualname_at(below) or below.name
        call = f"{_module_name(below.filename)}.{name}"
    return Location(inner, qualname, path, call)


def _own_frames(frames: Sequence[Frame]) -> Sequence[Frame]:
    """The frames after the last one of torch's worker loop or of the probe itself: a forked
    worker's dump also shows the frames of the process it was forked from (the user's script
    calling ``diagnose``), which the worker never returns to."""
    cut = 0
    for i, f in enumerate(frames):
        path = f.filename.replace(os.sep, "/")
        if (f.name == "_worker_loop" and "/torch/utils/data/" in path) or path.endswith(
            "/wellfed/doctor/_probe.py"
        ):
            cut = i + 1
    return frames[cut:]


#: Walk roots in the order their paths are preferred: how the loader calls the code first.
_ROOT_ORDER = ("loader.collate_fn", "loader.worker_init_fn", "dataset")


def code_index(ctx: Context) -> CodeIndex:
    """(code object, attribute path) of every user function and method the walks reached,
    code nested in them (local functions, comprehensions) with the same path; loader roots
    first, so a bound method passed as ``collate_fn`` is ``loader.collate_fn``."""
    roots = [r for r in _ROOT_ORDER if r in ctx.walks]
    roots += [r for r in ctx.walks if r not in roots]
    out: list[tuple[types.CodeType, str]] = []
    seen_classes: set[type] = set()  # each class at its first (shortest) path
    for root in roots:
        for node in ctx.walks[root].nodes:
            obj = node.obj
            if isinstance(obj, types.FunctionType):
                out.extend((c, node.path) for c in _nested_codes(obj.__code__))
                continue
            if isinstance(obj, types.MethodType):
                func = obj.__func__
                if isinstance(func, types.FunctionType):
                    out.extend((c, node.path) for c in _nested_codes(func.__code__))
                continue
            if isinstance(obj, (type, types.ModuleType, functools.partial)) or is_container(obj):
                continue
            cls = type(obj)
            if cls in seen_classes:
                continue
            seen_classes.add(cls)
            if not is_user_code(cls):
                continue
            for klass in cls.__mro__:
                if klass is object or not is_user_code(klass):
                    continue
                for name, attr in vars(klass).items():
                    method = _function_of(attr)
                    if method is not None:
                        path = _method_path(node.path, node.depth, name)
                        out.extend((c, path) for c in _nested_codes(method.__code__))
    return out


def _function_of(attr: Any) -> types.FunctionType | None:
    """The plain function behind a class attribute (method, static/class method, property)."""
    if isinstance(attr, (staticmethod, classmethod)):
        attr = attr.__func__
    elif isinstance(attr, property):
        attr = attr.fget
    attr = getattr(attr, "__wrapped__", attr)
    return attr if isinstance(attr, types.FunctionType) else None


def _method_path(owner: str, depth: int, name: str) -> str:
    """The path of method ``name`` of the object at ``owner``: ``type(dataset).__getitem__``
    for the dataset itself, the object's own path for ``__call__`` (``loader.collate_fn``),
    else ``dataset.reader.read``."""
    if depth == 0 and owner == "dataset":
        return f"type(dataset).{name}"
    if name == "__call__":
        return owner
    return f"{owner}.{name}"


def _nested_codes(code: types.CodeType) -> Iterator[types.CodeType]:
    """``code`` and the code objects nested in it (local functions, lambdas, comprehensions)."""
    yield code
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from _nested_codes(const)


def _lookup(index: CodeIndex, frame: Frame) -> tuple[types.CodeType, str] | None:
    """The (code, path) whose code object ran ``frame``: same file, name and a line of it."""
    real = _realpath(frame.filename)
    for code, path in index:
        if frame.name != code.co_name and frame.name != getattr(code, "co_qualname", None):
            continue
        if code.co_filename != frame.filename and _realpath(code.co_filename) != real:
            continue
        if frame.lineno == code.co_firstlineno or frame.lineno in _lines(code):
            return code, path
    return None


@functools.lru_cache(maxsize=1024)
def _realpath(filename: str) -> str:
    return os.path.realpath(filename)


@functools.lru_cache(maxsize=4096)
def _lines(code: types.CodeType) -> frozenset[int]:
    return frozenset(line for _, _, line in code.co_lines() if line is not None)


def _module_name(filename: str) -> str:
    """``queue`` for .../queue.py, ``torch.utils.data.dataloader`` where sys.path says so."""
    path = os.path.realpath(filename)
    best = ""
    for entry in sys.path:
        base = os.path.realpath(entry or os.getcwd())
        if path.startswith(base + os.sep) and len(base) > len(best):
            best = base
    rel = path[len(best) + 1 :] if best else os.path.basename(path)
    rel = rel[:-3] if rel.endswith(".py") else rel
    parts = [p for p in rel.split(os.sep) if p]
    if parts and parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts) or os.path.basename(filename)


def _qualname_at(frame: Frame) -> str | None:
    """The qualified name of the function ``frame`` ran, read from its file's source (the
    innermost ``def`` around its line with its name: ``Queue.get``), or None."""
    tree = _parse(frame.filename)
    if tree is None:
        return None
    best: str | None = None

    def visit(node: ast.AST, prefix: str) -> None:
        nonlocal best
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                end = getattr(child, "end_lineno", None) or child.lineno
                if not child.lineno <= frame.lineno <= end:
                    continue
                qual = f"{prefix}{child.name}"
                if not isinstance(child, ast.ClassDef) and child.name == frame.name:
                    best = qual
                inner = f"{qual}.<locals>." if not isinstance(child, ast.ClassDef) else f"{qual}."
                visit(child, inner)

    visit(tree, "")
    return best


@functools.lru_cache(maxsize=64)
def _parse(filename: str) -> ast.Module | None:
    lines = linecache.getlines(filename)
    if not lines:
        return None
    try:
        return ast.parse("".join(lines), filename)
    except (SyntaxError, ValueError):
        return None
