"""Pickling judged with the pickler DataLoader workers use, and why an object fails.

``pickle_error`` and ``pickled_size`` pickle as a spawn/forkserver worker start does
(``ForkingPickler`` inside a spawning context), with tensors and arrays left out;
``direct_pickle_target``, ``why_unpicklable`` and ``fix_unpicklable`` classify a failure.
"""

from __future__ import annotations

import io
import sys
import types
from typing import Any

from wellfed.doctor._classify import HANDLE_FIXES, handle_kind, is_container, pretty_type
from wellfed.doctor._graph import Node, is_shared_state, module_of

__all__ = [
    "direct_pickle_target",
    "fix_unpicklable",
    "pickle_error",
    "pickled_size",
    "why_unpicklable",
]


def _placeholder() -> None:
    return None


def _reduce_placeholder(obj: Any) -> tuple[Any, tuple[()]]:
    return (_placeholder, ())


class _FakeDupFd:
    """Stands for a duplicated file descriptor while judging (never sent anywhere)."""

    def detach(self) -> int:
        return -1


class _FakeSpawningPopen:
    """What multiprocessing's spawning Popen offers while it pickles a Process's arguments.

    DataLoader pickles the dataset while starting a worker, inside that context, so
    multiprocessing locks, queues and sockets cross; outside it they refuse. Judging inside
    the same context gives the verdict a real worker start would.
    """

    def duplicate_for_child(self, fd: int) -> int:
        return fd

    def DupFd(self, fd: int) -> _FakeDupFd:
        return _FakeDupFd()


def _judge_pickler_class() -> type:
    from multiprocessing.reduction import ForkingPickler

    class JudgePickler(ForkingPickler):
        """ForkingPickler with tensors and arrays replaced by a placeholder.

        torch registers reducers that move a tensor's storage into shared memory when it is
        pickled; judging must not do that to the user's tensors (nor copy big arrays).
        """

        def __init__(self, file: Any) -> None:
            super().__init__(file, None)
            table = dict(self.dispatch_table)
            for t, red in table.items():
                if getattr(red, "__module__", "") == "torch.multiprocessing.reductions":
                    table[t] = _reduce_placeholder
            np = sys.modules.get("numpy")
            if np is not None:
                table[np.ndarray] = _reduce_placeholder
                table[np.memmap] = _reduce_placeholder
            self.dispatch_table = table

    return JudgePickler


_JUDGE: list[type] = []


def pickle_error(obj: Any) -> str | None:
    """Pickle obj as a spawn/forkserver worker start would; the error text, or None if it pickles.

    Tensors and arrays are not serialised (they always pickle); everything else is.
    """
    from multiprocessing import context as mp_context

    if not _JUDGE:
        _JUDGE.append(_judge_pickler_class())
    buf = io.BytesIO()
    previous = mp_context.get_spawning_popen()
    mp_context.set_spawning_popen(_FakeSpawningPopen())  # type: ignore[arg-type]
    try:
        _JUDGE[0](buf).dump(obj)
    except RecursionError:
        return "RecursionError: object graph too deep to pickle"
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    finally:
        mp_context.set_spawning_popen(previous)
    return None


def pickled_size(obj: Any) -> tuple[int, float, float] | None:
    """(bytes, pickle seconds, unpickle seconds) of obj as sent to a spawn worker.

    Tensors and arrays are excluded (they travel through shared memory). None on error.
    """
    import pickle
    import time
    from multiprocessing import context as mp_context

    if not _JUDGE:
        _JUDGE.append(_judge_pickler_class())
    buf = io.BytesIO()
    previous = mp_context.get_spawning_popen()
    mp_context.set_spawning_popen(_FakeSpawningPopen())  # type: ignore[arg-type]
    start = time.perf_counter()
    try:
        _JUDGE[0](buf).dump(obj)
    except Exception:
        return None
    finally:
        mp_context.set_spawning_popen(previous)
    pickle_s = time.perf_counter() - start
    data = buf.getvalue()
    start = time.perf_counter()
    try:
        pickle.loads(data)
    except Exception:
        return len(data), pickle_s, 0.0
    return len(data), pickle_s, time.perf_counter() - start


def direct_pickle_target(node: Node) -> tuple[Any, str] | None:
    """What to pickle to judge this node on its own, and the path to report a failure at."""
    obj = node.obj
    if obj is None or isinstance(obj, (bool, int, float, complex, str, bytes, bytearray, range)):
        return None
    if is_shared_state(obj) or is_container(obj):
        return None
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(obj, (torch.Tensor, torch.device, torch.dtype)):
        return None
    np = sys.modules.get("numpy")
    if np is not None and isinstance(obj, (np.ndarray, np.generic)):
        return None
    if type(obj).__name__ == "partial" and module_of(obj) == "functools":
        return None
    if isinstance(obj, types.MethodType):
        return None  # pickled as getattr(__self__, name): __self__ is judged as a child
    if isinstance(obj, (types.FunctionType, types.BuiltinFunctionType, type, types.ModuleType)):
        return obj, node.path
    from wellfed.doctor._graph import _is_leaf, _is_opaque_reduce

    if (
        _is_leaf(obj)
        or _is_opaque_reduce(obj)
        or (not hasattr(obj, "__dict__") and not hasattr(type(obj), "__slots__"))
    ):
        return obj, node.path
    # A walked object: its attributes are judged as children; its class must import by name.
    return type(obj), f"type({node.path})"


def why_unpicklable(obj: Any, error: str) -> str:
    """Why obj cannot be pickled, in words (the evidence quotes the error itself)."""
    if isinstance(obj, types.FunctionType):
        if obj.__name__ == "<lambda>":
            return "a lambda has no importable name, so pickle cannot send it to a worker"
        if "<locals>" in obj.__qualname__:
            return (
                f"function {obj.__qualname__!r} is defined inside another function, so "
                "pickle cannot import it by name in a worker"
            )
    if isinstance(obj, type):
        if "<locals>" in obj.__qualname__:
            return (
                f"class {obj.__qualname__!r} is defined inside a function, so pickle cannot "
                "import it by name in a worker"
            )
        if obj.__module__ == "__main__":
            return (
                f"class {obj.__qualname__!r} claims module __main__ but cannot be found "
                "there by name, so a worker cannot import it"
            )
    if isinstance(obj, types.ModuleType):
        return f"module {obj.__name__!r} is not picklable (store the name and import it instead)"
    if isinstance(obj, types.GeneratorType):
        return "a generator's running frame cannot be pickled"
    hk = handle_kind(obj)
    if hk is not None:
        return (
            f"an {hk[0]} is an OS handle that cannot be pickled"
            if hk[0][0] in "aeiou"
            else f"a {hk[0]} is an OS handle that cannot be pickled"
        )
    return f"{pretty_type(obj)} cannot be pickled"


def fix_unpicklable(obj: Any, path: str) -> str:
    """Code-level advice for making obj, found at path, reach workers."""
    if isinstance(obj, types.FunctionType) and obj.__name__ == "<lambda>":
        return (
            "Replace the lambda with a module-level function (or functools.partial of one):\n"
            "def scale(x): return x * 2  # at module level\n"
            f"{_assign_expr(path)} = scale"
        )
    if isinstance(obj, (types.FunctionType, type)) and "<locals>" in obj.__qualname__:
        return (
            f"Move {obj.__qualname__.split('.')[-1]!r} to module level; pass what it captured "
            "as arguments, e.g. functools.partial(module_level_fn, captured_value)"
        )
    if isinstance(obj, type) and obj.__module__ == "__main__":
        return (
            f"Move class {obj.__qualname__} into an importable module (mypkg/data.py) and "
            "import it from there; notebooks and `python -c` have no importable __main__"
        )
    if isinstance(obj, types.ModuleType):
        return (
            f"Store the module's name and import it where used: self.backend = "
            f"{obj.__name__!r}; importlib.import_module(self.backend) in __getitem__"
        )
    hk = handle_kind(obj)
    if hk is not None:
        return HANDLE_FIXES.get(hk[0], "store the path and open the handle lazily in __getitem__")
    if isinstance(obj, types.GeneratorType):
        return (
            "Store the iterable's source (a list or a path) and create the generator in "
            "__iter__/__getitem__, in the worker"
        )
    name = type(obj).__name__.lower()
    if "lock" in name or "condition" in name or "semaphore" in name or "event" in name:
        return (
            "Drop the lock when pickling and recreate it in the worker:\n"
            "def __getstate__(self): s = self.__dict__.copy(); s.pop('lock', None); return s\n"
            "def __setstate__(self, s): self.__dict__.update(s); self.lock = threading.Lock()"
        )
    return (
        "Keep only plain data (paths, numbers, arrays, tensors) on the dataset and build this "
        "object in the worker (lazily in __getitem__ or in worker_init_fn), or define "
        "__getstate__/__setstate__ that drop and rebuild it"
    )


def _assign_expr(path: str) -> str:
    return path
