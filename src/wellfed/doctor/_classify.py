"""What the checks recognise in the object graph, and how messages name it.

OS handles (and how to open each lazily), thread pools, RNG objects, CUDA objects,
containers, user classes with worker code; the type and size wording of messages.
"""

from __future__ import annotations

import io
import sys
import threading
import types
from typing import Any

from wellfed._units import format_bytes
from wellfed.doctor._context import Context
from wellfed.doctor._graph import Node, in_modules, module_of
from wellfed.doctor._source import is_user_code

__all__ = [
    "HANDLE_FIXES",
    "cuda_kind",
    "handle_kind",
    "inside",
    "is_container",
    "is_iterable",
    "mb",
    "pretty_type",
    "rng_kind",
    "safe_getattr",
    "source_text",
    "thread_kind",
    "user_classes",
]

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
}


def handle_kind(obj: Any) -> tuple[str, bool] | None:
    """(kind, is_open) for an OS handle (file, archive, connection, socket...), else None."""
    mod = module_of(obj)
    name = type(obj).__name__
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
    if in_modules(mod, ("lmdb",)) and name in ("Environment", "Transaction", "Cursor"):
        return "LMDB environment", True
    if in_modules(mod, ("psycopg2", "pymongo", "redis", "pymysql", "MySQLdb")):
        return "database connection", True
    if in_modules(mod, ("av", "decord")) or (in_modules(mod, ("cv2",)) and name == "VideoCapture"):
        return "video handle", True
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


def source_text(func: Any) -> str:
    """The source of a function (through functools.partial), or "" when unavailable."""
    import functools
    import inspect

    while isinstance(func, functools.partial):
        func = func.func
    if func is None:
        return ""
    try:
        return inspect.getsource(func)
    except (OSError, TypeError):
        return ""


def safe_getattr(obj: Any, attr: str) -> Any:
    """obj's own attribute without running properties or __getattr__; None if absent."""
    try:
        return object.__getattribute__(obj, attr)
    except Exception:
        return None


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
