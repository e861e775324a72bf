"""What the checks recognise in the object graph, and how messages name it.

OS handles (and how to open each lazily), thread pools, RNG objects, CUDA objects,
containers, user classes with worker code; the type and size wording of messages.
"""

from __future__ import annotations

import functools
import io
import sys
import threading
import types
from dataclasses import dataclass
from typing import Any

from wellfed._units import format_bytes
from wellfed.doctor._context import Context
from wellfed.doctor._graph import Node, in_modules, module_of, walk_enters
from wellfed.doctor._source import is_user_code, lambda_node

__all__ = [
    "HANDLE_FIXES",
    "NPZ_KIND",
    "PIL_KIND",
    "ClassAttribute",
    "class_attributes",
    "code_names",
    "cuda_kind",
    "handle_kind",
    "held_handle",
    "inside",
    "is_container",
    "is_iterable",
    "lambda_node",
    "mb",
    "pretty_type",
    "rng_kind",
    "safe_getattr",
    "source_file",
    "source_text",
    "thread_kind",
    "user_classes",
]

#: handle_kind's names of the library objects that hold a handle (the rest name handles).
NPZ_KIND = "numpy NpzFile (np.load of an .npz)"
PIL_KIND = "PIL image (Image.open, not yet loaded)"

#: How to open each kind of handle lazily, once per worker (the fix of WF101 and WF104).
HANDLE_FIXES = {
    "open file": "self.path = path; self._fh = None  # in __init__\n"
    "in __getitem__: if self._fh is None: self._fh = open(self.path, 'rb')",
    "zip archive": "self.zip_path = path; self._zip = None  # in __init__\n"
    "in __getitem__: if self._zip is None: self._zip = zipfile.ZipFile(self.zip_path)",
    "tar archive": "store the archive path; open tarfile.open(path) lazily in __getitem__",
    "SQLite connection": "self.db_path = path; self._conn = None  # in __init__\n"
    "in __getitem__: if self._conn is None: self._conn = sqlite3.connect(self.db_path)",
    "HDF5 file": "self.h5_path = path; self._h5 = None  # in __init__ (read len, then close)\n"
    "in __getitem__: if self._h5 is None: self._h5 = h5py.File(self.h5_path, 'r')",
    "LMDB environment": "self.lmdb_path = path; self._env = None  # in __init__\n"
    "in __getitem__: if self._env is None: self._env = lmdb.open(self.lmdb_path, readonly=True,"
    " lock=False)",
    "socket": "store the address; connect lazily in __getitem__ (one connection per worker)",
    "database connection": "store the connection URL; connect lazily in __getitem__ or in "
    "worker_init_fn (one connection per worker)",
    "video handle": "store the video path; open the reader lazily in __getitem__",
    NPZ_KIND: "np.load(path) of an .npz returns an NpzFile that keeps the zip open; read "
    "the arrays out in __init__ (the NpzFile is closed when dropped):\n"
    "self.scene_info = dict(np.load(path, allow_pickle=True))\n"
    "or with np.load(path) as z: self.x = z['x']; or np.load the path lazily in __getitem__",
    PIL_KIND: "Image.open reads only the header and keeps the file open until load(); store "
    "the paths and open in __getitem__:\n"
    "with Image.open(self.paths[i]) as im: img = im.convert('RGB')\n"
    "or decode up front and close: im.load() (or im = im.copy()), then close the original",
}


def handle_kind(obj: Any) -> tuple[str, bool] | None:
    """(kind, is_open) for an OS handle (file, archive, connection, socket...), else None.

    Also an object the walk judges whole (``walk_enters`` is False: numpy's ``NpzFile``, a
    PIL image, another library's reader) that holds an open handle among its own attributes
    (``held_handle``): ``np.load`` of an .npz keeps the zip open, ``Image.open`` keeps the
    file open until ``load()`` or ``close()``. In-memory streams (``io.BytesIO``,
    ``io.StringIO``) have no descriptor to share and are not handles.
    """
    mod = module_of(obj)
    name = type(obj).__name__
    direct = _direct_handle_kind(obj, mod, name)
    if direct is not None:
        return direct
    if in_modules(mod, ("numpy",)) and name == "NpzFile":
        return NPZ_KIND, held_handle(obj) is not None
    if in_modules(mod, ("PIL",)) and _is_pil_image(obj):
        return PIL_KIND, held_handle(obj) is not None
    if not walk_enters(obj):
        held = held_handle(obj)
        if held is not None:
            article = "an" if held[1][0] in "aeiou" else "a"
            return f"{pretty_type(obj)} (holding {article} {held[1]})", True
    return None


def _direct_handle_kind(obj: Any, mod: str, name: str) -> tuple[str, bool] | None:
    """handle_kind of the handles themselves (not of objects that hold one)."""
    if isinstance(obj, (io.BytesIO, io.StringIO)):
        return None
    if isinstance(obj, io.IOBase):
        return "open file", not obj.closed
    if mod == "zipfile" and name == "ZipFile":
        return "zip archive", getattr(obj, "fp", None) is not None
    if mod == "tarfile" and name == "TarFile":
        return "tar archive", not getattr(obj, "closed", False)
    if mod == "sqlite3" and name == "Connection":
        try:
            obj.total_changes  # noqa: B018  # raises ProgrammingError once closed
        except Exception:
            return "SQLite connection", False
        return "SQLite connection", True
    if mod in ("socket", "ssl") and hasattr(obj, "fileno"):
        try:
            return "socket", obj.fileno() != -1
        except Exception:
            return "socket", False
    if in_modules(mod, ("h5py",)) and name in ("File", "Dataset", "Group"):
        try:
            return "HDF5 file", bool(obj)
        except Exception:
            return "HDF5 file", True
    lmdb_kind = _lmdb_kind(obj, mod, name)
    if lmdb_kind is not None:
        return lmdb_kind
    if in_modules(mod, ("psycopg2", "pymongo", "redis", "pymysql", "MySQLdb")):
        return "database connection", True
    if in_modules(mod, ("av", "decord")) or (in_modules(mod, ("cv2",)) and name == "VideoCapture"):
        return "video handle", True
    return None


def _lmdb_kind(obj: Any, mod: str, name: str) -> tuple[str, bool] | None:
    """An LMDB environment, transaction or cursor, open or closed; None for anything else.

    The real types are C types whose ``__module__`` is ``builtins`` (py-lmdb's cpython
    extension), so they are matched by identity with ``lmdb``'s own classes when lmdb is
    imported; stand-ins whose module is ``lmdb`` by name.
    """
    lmdb = sys.modules.get("lmdb")
    types_ = tuple(
        t
        for t in (getattr(lmdb, n, None) for n in ("Environment", "Transaction", "Cursor"))
        if isinstance(t, type)
    )
    if types_ and isinstance(obj, types_):
        if isinstance(obj, types_[0]) and name == "Environment":
            try:
                getattr(obj, "max_key_size")()  # noqa: B009  # raises lmdb.Error once closed
            except Exception:
                return "LMDB environment", False
        return "LMDB environment", True
    if in_modules(mod, ("lmdb",)) and name in ("Environment", "Transaction", "Cursor"):
        return "LMDB environment", True
    return None


def _is_pil_image(obj: Any) -> bool:
    image_mod = sys.modules.get("PIL.Image")
    image_cls = getattr(image_mod, "Image", None)
    return isinstance(image_cls, type) and isinstance(obj, image_cls)


def _is_std_stream(obj: Any) -> bool:
    """sys.stdin/stdout/stderr (or a file on descriptors 0-2): shared by every process by design."""
    if any(obj is s for s in (sys.stdin, sys.stdout, sys.stderr, sys.__stderr__, sys.__stdout__)):
        return True
    try:
        return isinstance(obj, io.IOBase) and obj.fileno() in (0, 1, 2)
    except Exception:
        return False


def held_handle(obj: Any) -> tuple[str, str] | None:
    """(attribute, kind) of an open OS handle among obj's own attributes (one level), or None.

    Only the object's ``__dict__`` is read (no properties, no ``__getattr__``). The standard
    streams are not counted (every process shares them by design), nor is anything held by a
    ``logging`` object (handlers write to shared streams on purpose).
    """
    if in_modules(module_of(obj), ("logging",)):
        return None
    attrs = safe_getattr(obj, "__dict__")
    if not isinstance(attrs, dict):
        return None
    for attr, value in list(attrs.items()):
        if value is None or value is obj or isinstance(value, (str, bytes, int, float)):
            continue
        if _is_std_stream(value):
            continue
        hk = _direct_handle_kind(value, module_of(value), type(value).__name__)
        if hk is not None and hk[1]:
            return str(attr), hk[0]
    return None


def thread_kind(obj: Any) -> str | None:
    """Which thread hazard obj is (a _THREAD_WHY key of the thread check), or None."""
    mod = module_of(obj)
    fmod = getattr(obj, "__module__", None) if callable(obj) else None
    if in_modules(mod, ("cv2",)) or (isinstance(fmod, str) and in_modules(fmod, ("cv2",))):
        return "opencv"
    if in_modules(mod, ("tokenizers",)) or (
        isinstance(fmod, str) and in_modules(fmod, ("tokenizers",))
    ):
        return "tokenizers"
    if mod == "concurrent.futures.thread" and type(obj).__name__ == "ThreadPoolExecutor":
        return "thread pool"
    if mod == "multiprocessing.pool" and type(obj).__name__ in ("ThreadPool", "Pool"):
        return "thread pool"
    if isinstance(obj, threading.Thread) and obj.is_alive():
        return "running thread"
    return None


def rng_kind(obj: Any) -> str | None:
    """Name of an RNG object that is copied into workers, or None (global RNGs excluded)."""
    import random

    if isinstance(obj, random.Random):
        if isinstance(obj, random.SystemRandom) or obj is getattr(random, "_inst", None):
            return None
        return "random.Random"
    mod = module_of(obj)
    if in_modules(mod, ("numpy.random",)):
        name = type(obj).__name__
        if name == "RandomState":
            np = sys.modules.get("numpy")
            if np is not None and obj is getattr(np.random.mtrand, "_rand", None):
                return None
            return "numpy.random.RandomState"
        if name == "Generator":
            return "numpy.random.Generator"
        if name in ("PCG64", "PCG64DXSM", "MT19937", "Philox", "SFC64"):
            return f"numpy.random.{name}"
        return None
    if mod == "torch._C" and type(obj).__name__ == "Generator":
        import torch

        if obj is torch.default_generator:
            return None
        try:
            if obj.device.type == "cuda":
                return "torch.Generator(cuda)"
        except Exception:
            pass
        return "torch.Generator"
    if in_modules(mod, ("imgaug",)) and "RNG" in type(obj).__name__:
        return "imgaug RNG"
    return None


def cuda_kind(node: Node) -> str | None:
    """What CUDA object the node is (tensor, module, device, device string), or None."""
    obj = node.obj
    torch = sys.modules.get("torch")
    if torch is not None:
        if isinstance(obj, torch.Tensor):
            return "CUDA tensor" if obj.is_cuda else None
        if isinstance(obj, torch.device):
            return "CUDA device" if obj.type == "cuda" else None
        if isinstance(obj, torch.nn.Module):
            for t in _first_tensors(obj):
                if t.is_cuda:
                    return "CUDA module"
            return None
    if isinstance(obj, str):
        if node.attr and "device" in node.attr.lower() and obj.startswith("cuda"):
            return "CUDA device string"
        return None
    # Tensor-likes from other libraries (cupy, jax, a wrapped tensor): is_cuda / device.type.
    cls = type(obj)
    if any("is_cuda" in k.__dict__ for k in cls.__mro__):
        try:
            if getattr(obj, "is_cuda", False) is True:
                return "CUDA tensor"
        except Exception:
            return None
    if any("device" in k.__dict__ for k in cls.__mro__):
        try:
            dev = obj.device
            if getattr(dev, "type", None) == "cuda" or (
                isinstance(dev, str) and dev.startswith("cuda")
            ):
                return "CUDA tensor"
        except Exception:
            return None
    return None


def _first_tensors(module: Any) -> list[Any]:
    out = []
    for t in module.parameters():
        out.append(t)
        break
    for t in module.buffers():
        out.append(t)
        break
    return out


def is_container(obj: Any) -> bool:
    """True for the builtin containers (and deque) the walk reports items of."""
    return isinstance(obj, (list, tuple, dict, set, frozenset)) or type(obj).__name__ == "deque"


def inside(path: str, prefix: str) -> bool:
    """True when path lies strictly below prefix (an attribute or item of it)."""
    return path != prefix and path.startswith(prefix) and path[len(prefix)] in ".["


def pretty_type(obj: Any) -> str:
    """The type of obj as messages name it: function 'f', class m.C, or m.C."""
    if isinstance(obj, (types.FunctionType, types.BuiltinFunctionType)):
        return f"function {getattr(obj, '__qualname__', obj.__name__)!r}"
    if isinstance(obj, type):
        return f"class {obj.__module__}.{obj.__qualname__}"
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


def source_file(cls: type) -> str:
    """The base name of the file a class is defined in ("datasets.py"); "?" when unknown
    (a builtin, or a class made at run time)."""
    import inspect
    import os

    try:
        return os.path.basename(inspect.getsourcefile(cls) or "?")
    except TypeError:
        return "?"


def source_text(func: Any) -> str:
    """The source of a function (through functools.partial), or "" when unavailable."""
    import inspect

    while isinstance(func, functools.partial):
        func = func.func
    if func is None:
        return ""
    try:
        return inspect.getsource(func)
    except (OSError, TypeError):
        return ""


def code_names(text: str) -> set[str]:
    """The identifiers in a piece of source code, strings and comments left out.

    ``"R" in source`` is true of any source with a capital R (in a docstring, in "RNG");
    ``"R" in code_names(source)`` only where code names R (``self.R``, ``R = ...``).
    """
    import io as _io
    import keyword
    import tokenize

    names: set[str] = set()
    try:
        for tok in tokenize.generate_tokens(_io.StringIO(text).readline):
            if tok.type == tokenize.NAME and not keyword.iskeyword(tok.string):
                names.add(tok.string)
    except (tokenize.TokenError, IndentationError, SyntaxError):
        import re

        names |= set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", text))
    return names


def safe_getattr(obj: Any, attr: str) -> Any:
    """obj's own attribute without running properties or __getattr__; None if absent."""
    try:
        return object.__getattribute__(obj, attr)
    except Exception:
        return None


@dataclass(frozen=True)
class ClassAttribute:
    """An attribute a worker object reads from its class, not from its own ``__dict__``.

    Attributes:
        node: The object (an instance) whose class holds it.
        klass: The class in the MRO whose own ``__dict__`` defines it.
        name: The attribute name.
        value: The value, shared by every instance of the class (and copied into every
            forked worker with the class).
        path: ``type(<node.path>).<name>``, e.g. ``type(dataset.transform).R``.
    """

    node: Node
    klass: type
    name: str
    value: Any
    path: str


#: Modules whose classes' attributes are not judged: the standard library's, torch's and
#: numpy's class-level objects are theirs to manage (and numerous).
_SKIP_CLASS_MODULES = ("builtins", "torch", "numpy", "wellfed", "typing", "abc")


def class_attributes(ctx: Context) -> list[ClassAttribute]:
    """Class-level attributes of the objects the workers receive, each class once (first path).

    For every instance reached, the own ``__dict__`` of each class in its MRO (user code and
    installed packages, e.g. MONAI's ``Randomizable``; not the standard library, torch or
    numpy), without dunder names, without names an earlier class in the MRO or the
    instance's own ``__dict__`` shadows. Read through ``__dict__`` only: no descriptor or
    property runs.
    """
    seen: set[type] = set()
    out: list[ClassAttribute] = []
    for node in ctx.worker_nodes():
        obj = node.obj
        if isinstance(obj, (type, types.FunctionType, types.ModuleType, types.MethodType)):
            continue
        if is_container(obj) or isinstance(obj, (str, bytes, int, float, complex, bool)):
            continue
        cls = type(obj)
        if cls in seen:
            continue
        seen.add(cls)
        own = safe_getattr(obj, "__dict__")
        own_names = set(own) if isinstance(own, dict) else set()
        taken: set[str] = set()
        for klass in cls.__mro__:
            mod = getattr(klass, "__module__", "") or ""
            top = mod.split(".")[0]
            if klass is object or top in _SKIP_CLASS_MODULES or top in sys.stdlib_module_names:
                continue
            for name, value in list(vars(klass).items()):
                if not isinstance(name, str) or name.startswith("__") or name in taken:
                    continue
                taken.add(name)
                if name in own_names:
                    continue
                out.append(ClassAttribute(node, klass, name, value, f"type({node.path}).{name}"))
    return out


def user_classes(ctx: Context) -> list[tuple[Node, type]]:
    """Nodes whose class is user code with worker methods (each class once, first path)."""
    seen: set[type] = set()
    out: list[tuple[Node, type]] = []
    for node in ctx.worker_nodes():
        obj = node.obj
        if isinstance(obj, (type, types.FunctionType, types.ModuleType)) or is_container(obj):
            continue
        cls = type(obj)
        if cls in seen:
            continue
        seen.add(cls)
        if not any(hasattr(cls, m) for m in ("__getitem__", "__iter__", "__call__")):
            continue
        if is_user_code(cls):
            out.append((node, cls))
    return out


def mb(n: float) -> str:
    """A byte count as messages write it: 12.3MB, or 1.5GB from 1 GiB up (``format_bytes``)."""
    return format_bytes(n, compact=True)


def is_iterable(dataset: Any) -> bool:
    """True for a torch IterableDataset (torch imported)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(dataset, torch.utils.data.IterableDataset)
