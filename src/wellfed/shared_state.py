"""Live dataset state that every DataLoader worker sees: ``SharedState``.

A dataset that the training loop changes over time (a deformation matrix replaced per task,
target values that drift, the epoch, a curriculum level) cannot keep that state in ordinary
attributes once DataLoader workers exist: every worker holds a copy of the dataset, and a
persistent worker keeps the copy it started with. ``SharedState`` keeps named tensors, numpy
arrays and scalars in shared memory instead. The main process creates it and calls
``update``; every worker, under any start method, persistent or not, sees the new values from
the next ``read`` after ``update`` returns, and always sees all fields of one version together.

How it works (the protocol, in short):

* Storage is a set of *slots*: files in ``/dev/shm`` named
  ``wellfed_<owner pid>_<token>_s<n>``, each holding one complete copy of every field plus a
  header that describes the layout (names, kinds, dtypes, shapes, offsets). A small control
  file ``wellfed_<owner pid>_<token>_ctl`` holds one 64-bit word: (version, current slot).
* ``update`` (owner process only) copies the new values, and the unchanged fields, into a
  slot that no reader is using, then publishes the word with one aligned 8-byte store. It never
  writes into the current slot, nor into a slot a reader pins. At most ``max_slots`` slots
  exist; when every one is pinned, ``update`` waits (up to ``update_timeout_s``) for a pin to
  go, then raises StateError WF510 naming the processes that hold them.
* Every snapshot a ``read`` builds holds a *pin* on its slot: a shared ``flock`` on a
  descriptor of its own. The pin lives exactly as long as the snapshot's views: the views are
  built over one buffer object, and the pin is released when the last view of that buffer
  (the snapshot, a field, a slice or a 0-d element of it, a numpy array from ``.numpy()``) is
  garbage collected. So a view returned from ``__getitem__`` keeps its version's memory intact
  until the DataLoader has collated (copied) the batch; no torn sample, zero copies.
* The reader's fast path, when the version has not changed, is one 8-byte load from the
  control mapping and a comparison (about 0.12 us); no system call, no lock. Each reader
  thread caches its latest snapshot (so that slot stays pinned until the thread's next read
  finds a newer version).
* Replacing a field with a different shape or dtype (or adding a field) is supported: the new
  values go into a new slot with the new layout, which workers open lazily the first time they
  see its number in the control word.
* The owner unlinks every file on ``close()``, at interpreter exit, and when the object is
  garbage collected. Locks of a crashed worker are released by the kernel. If the owner is
  killed, multiprocessing's resource tracker unlinks the files (Linux, ``/dev/shm``), and
  ``SharedState.cleanup_orphans()`` removes any file whose owner process is gone. A forked
  child (a fork DataLoader worker) closes the descriptors and mappings it inherits, so it holds
  none of the parent's pins or (possibly retired) slots.

Platform: POSIX (Linux and macOS; ``fcntl.flock`` and ``mmap``). Files go to ``/dev/shm``
where it exists, else to the temporary directory.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import errno
import gc
import json
import logging
import math
import mmap
import os
import re
import secrets
import struct
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from wellfed.errors import ConfigError, StateError, check_option, is_count

try:  # POSIX only; Windows gets a clear error at construction (WF507).
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["SharedState", "StateSnapshot"]

logger = logging.getLogger(__name__)

PREFIX = "wellfed_"
_NAME_RE = re.compile(r"^wellfed_(\d+)_([0-9a-f]+)_(ctl|s\d+)$")

# Control file: magic, word (version << _SLOT_BITS | slot), closed flag, owner pid, owner start.
_CTL_MAGIC = b"WFCTL001"
_CTL_SIZE = 64
_WORD_OFFSET = 8
_CLOSED_OFFSET = 16
_PID_OFFSET = 24
_START_OFFSET = 32
_SLOT_BITS = 20
_SLOT_MASK = (1 << _SLOT_BITS) - 1
_MAX_VERSION = (1 << (64 - _SLOT_BITS)) - 1

# Slot file: magic, content version, layout length, layout JSON, then field data.
_SLOT_MAGIC = b"WFSLOT01"
_SLOT_VERSION_OFFSET = 8
_SLOT_LAYOUT_LEN_OFFSET = 16
_SLOT_LAYOUT_OFFSET = 24
_ALIGN = 64

_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
# Python >= 3.13 can map a file without keeping a duplicate of its descriptor; before that
# every mapping holds one (closed with the mapping, and in a forked child by the fork hook).
_MMAP_KW: dict[str, Any] = {"trackfd": False} if sys.version_info >= (3, 13) else {}

DEFAULT_MAX_SLOTS = 16
DEFAULT_UPDATE_TIMEOUT_S = 60.0
_WAIT_FIRST_S = 0.0005  # first sleep of update() waiting for a free slot; doubles up to:
_WAIT_MAX_S = 0.02

_U64 = struct.Struct("<Q")
_F64 = struct.Struct("<d")
_unpack_u64 = _U64.unpack_from
# The control word is stored and loaded through a native "Q" memoryview: CPython copies a
# native integer with one memcpy of 8 bytes (a single aligned load/store on x86-64 and arm64),
# while the "<Q" (standard) struct packer moves one byte at a time, so a reader could see half
# a word. A memoryview item read is also the cheapest load Python offers (~20 ns).
_WORD_INDEX = _WORD_OFFSET // 8
_CLOSED_INDEX = _CLOSED_OFFSET // 8


def _words(mm: mmap.mmap) -> memoryview:
    return memoryview(mm).cast("Q")


_SCALAR_KINDS = ("bool", "int", "float", "npscalar")
_VIEW_KINDS = ("torch", "numpy")
_CLEANUP_GRACE_S = 1.0  # tolerance when comparing process start times (s)


# --------------------------------------------------------------------------- values and layout


class _Field:
    """One field of a layout: where it lives in a slot and how to present it."""

    __slots__ = ("dtype", "kind", "name", "nbytes", "offset", "shape")

    def __init__(
        self, name: str, kind: str, dtype: str, shape: tuple[int, ...], nbytes: int, offset: int
    ) -> None:
        self.name = name
        self.kind = kind  # "torch" | "numpy" | "bool" | "int" | "float" | "npscalar"
        self.dtype = dtype  # torch: "float32"...; others: numpy dtype.str ("<f4", "|b1")
        self.shape = shape
        self.nbytes = nbytes
        self.offset = offset

    def signature(self) -> tuple[str, str, str, tuple[int, ...]]:
        return (self.name, self.kind, self.dtype, self.shape)

    def describe(self) -> str:
        if self.kind in ("bool", "int", "float"):
            return self.kind
        shape = "(" + ", ".join(str(s) for s in self.shape) + ")"
        if self.kind == "torch":
            return f"torch.{self.dtype}{shape}"
        return f"numpy.{_np().dtype(self.dtype).name}{shape}"

    def to_json(self) -> list[Any]:
        return [self.name, self.kind, self.dtype, list(self.shape), self.nbytes, self.offset]

    @classmethod
    def from_json(cls, item: list[Any]) -> _Field:
        name, kind, dtype, shape, nbytes, offset = item
        return cls(str(name), str(kind), str(dtype), tuple(int(s) for s in shape), nbytes, offset)


class _Prepared:
    """A user value checked and made contiguous, ready to copy into a slot."""

    __slots__ = ("dtype", "kind", "nbytes", "shape", "value")

    def __init__(
        self, kind: str, dtype: str, shape: tuple[int, ...], nbytes: int, value: Any
    ) -> None:
        self.kind = kind
        self.dtype = dtype
        self.shape = shape
        self.nbytes = nbytes
        self.value = value


def _np() -> Any:
    import numpy

    return numpy


def _torch() -> Any:
    import torch

    return torch


def _is_torch_tensor(value: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(value, torch.Tensor)


def _prepare(name: str, value: Any) -> _Prepared:
    """Check one field value and turn it into a contiguous CPU array or a scalar."""
    np = _np()
    if not isinstance(name, str) or not name.isidentifier():
        raise ConfigError(
            f"SharedState field name is not valid: name={name!r} is not a Python identifier, "
            "and fields are passed as keyword arguments. Use a name such as 'theta' or "
            "'values'.",
            code="WF505",
            attribute="name",
            value=name,
        )
    if _is_torch_tensor(value):
        if value.device.type != "cpu":
            raise ConfigError(
                f"SharedState field {name!r} is on the wrong device: {name}.device="
                f"{value.device} but SharedState holds host (CPU) shared memory that worker "
                "processes map. Pass the tensor with .cpu() and move each batch to the device "
                "in the training loop.",
                code="WF502",
                attribute=name,
                value=str(value.device),
            )
        if value.layout != _torch().strided or value.is_quantized:
            raise ConfigError(
                f"SharedState field {name!r} has an unsupported tensor layout: "
                f"{name}.layout={value.layout} (quantized={value.is_quantized}) cannot be "
                "stored as flat memory. Pass a dense tensor, e.g. value.to_dense().",
                code="WF501",
                attribute=name,
                value=str(value.layout),
            )
        tensor = value.detach().contiguous()
        dtype = str(tensor.dtype).removeprefix("torch.")
        nbytes = tensor.numel() * tensor.element_size()
        return _Prepared("torch", dtype, tuple(tensor.shape), nbytes, tensor)
    if isinstance(value, np.ndarray):
        if value.dtype.hasobject or value.dtype.kind == "V":
            raise ConfigError(
                f"SharedState field {name!r} has an unsupported dtype: {name}.dtype="
                f"{value.dtype} holds Python objects or records, which cannot live in shared "
                "memory. Use a numeric or bool array.",
                code="WF501",
                attribute=name,
                value=str(value.dtype),
            )
        array = np.ascontiguousarray(value)
        return _Prepared("numpy", array.dtype.str, tuple(array.shape), array.nbytes, array)
    if isinstance(value, np.generic) and not isinstance(value, (np.object_, np.void)):
        array = np.asarray(value)
        return _Prepared("npscalar", array.dtype.str, (), array.nbytes, array)
    if isinstance(value, bool):
        return _Prepared("bool", np.dtype(np.bool_).str, (), 1, value)
    if isinstance(value, int):
        if not -(2**63) <= value < 2**63:
            raise ConfigError(
                f"SharedState field {name!r} is out of range: {name}={value} does not fit "
                "the 64-bit integer a scalar field is stored in. Store it as a float, or as "
                "a numpy array of smaller integers.",
                code="WF501",
                attribute=name,
                value=value,
            )
        return _Prepared("int", np.dtype(np.int64).str, (), 8, value)
    if isinstance(value, float):
        return _Prepared("float", np.dtype(np.float64).str, (), 8, value)
    raise ConfigError(
        f"SharedState field {name!r} has an unsupported type: {name} is a "
        f"{type(value).__module__}.{type(value).__qualname__}, but shared memory holds only "
        "torch tensors, numpy arrays and numbers (bool, int, float, numpy scalars). Convert it "
        "(e.g. torch.as_tensor(value)) or keep it as an ordinary attribute if it never changes.",
        code="WF501",
        attribute=name,
        value=type(value).__qualname__,
    )


def _layout_for(prepared: Mapping[str, _Prepared]) -> tuple[list[_Field], int, int]:
    """Offsets for each field; returns (fields, data start, total file size in bytes)."""
    entries = []
    offset = 0
    for name, p in prepared.items():
        offset = _round_up(offset, _ALIGN)
        entries.append(_Field(name, p.kind, p.dtype, p.shape, p.nbytes, offset))
        offset += p.nbytes
    header_len = _SLOT_LAYOUT_OFFSET + len(_layout_json(entries, 0))
    data_start = _round_up(header_len + 64, _ALIGN)  # slack: offsets grow the JSON a little
    header_len = _SLOT_LAYOUT_OFFSET + len(_layout_json(entries, data_start))
    while header_len > data_start:
        data_start = _round_up(header_len, _ALIGN)
        header_len = _SLOT_LAYOUT_OFFSET + len(_layout_json(entries, data_start))
    for entry in entries:
        entry.offset += data_start
    return entries, data_start, max(_round_up(data_start + offset, _ALIGN), mmap.PAGESIZE)


def _layout_json(fields: list[_Field], shift: int) -> bytes:
    items = [f.to_json() for f in fields]
    for item in items:
        item[5] += shift
    return json.dumps(items, separators=(",", ":")).encode()


def _round_up(n: int, align: int) -> int:
    return (n + align - 1) // align * align


# --------------------------------------------------------------------------- buffers and views


def _map(fd: int, size: int) -> mmap.mmap:
    return mmap.mmap(fd, size, **_MMAP_KW)


def _buffer_type(size: int) -> Any:
    """A ctypes char-array type over a whole slot: the buffer object views are built on.

    A ctypes array made with ``from_buffer`` holds an export of the mapping (so the mapping
    cannot be closed under a live view) and is the ``base`` numpy keeps and the object torch's
    ``frombuffer`` keeps alive; a memoryview would be unwrapped by numpy and give neither.
    """
    return ctypes.c_char * size


def _build_views(buf: Any, fields: list[_Field], *, writable: bool) -> dict[str, Any]:
    """One zero-copy array per field over ``buf`` (torch fields as tensors, others numpy)."""
    np = _np()
    views: dict[str, Any] = {}
    for f in fields:
        if f.kind == "torch":
            torch = _torch()
            dtype = getattr(torch, f.dtype)
            if f.nbytes == 0:
                views[f.name] = torch.empty(f.shape, dtype=dtype)
                continue
            count = f.nbytes // dtype.itemsize
            views[f.name] = torch.frombuffer(buf, dtype=dtype, count=count, offset=f.offset).view(
                f.shape
            )
        else:
            arr = np.ndarray(f.shape, dtype=np.dtype(f.dtype), buffer=buf, offset=f.offset)
            if not writable:
                arr.flags.writeable = False
            views[f.name] = arr
    return views


def _close_mapping(mm: mmap.mmap) -> None:
    """Unmap now unless views still use the mapping (then it goes with the last of them)."""
    with contextlib.suppress(BufferError, ValueError, OSError):
        mm.close()


# --------------------------------------------------------------------------- pins
#
# A pin is a descriptor of a slot file holding a shared flock. Each one is opened for one
# snapshot and released (unlocked, closed) by a finalizer of the buffer that snapshot's views
# keep alive, in the process that opened it. The registry lets a forked child close the
# parent's pin descriptors it inherited (without unlocking: the lock is the parent's), and the
# lock keeps a fork from copying a descriptor that is half registered.

_PIN_LOCK = threading.RLock()
_PIN_FDS: set[int] = set()


def _pin_open(path: str) -> int:
    """Open a descriptor for a pin on ``path`` (not locked yet); FileNotFoundError if gone."""
    with _PIN_LOCK:
        fd = os.open(path, os.O_RDONLY | _O_CLOEXEC)
        _PIN_FDS.add(fd)
    return fd


def _pin_release(fd: int, pid: int) -> None:
    """Unlock and close a pin's descriptor (a no-op outside the process that opened it)."""
    if os.getpid() != pid:
        return
    with _PIN_LOCK:
        if fd not in _PIN_FDS:
            return
        _PIN_FDS.discard(fd)
        if fcntl is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_UN)
        with contextlib.suppress(OSError):
            os.close(fd)


def _pins_before_fork() -> None:
    _PIN_LOCK.acquire()


def _pins_after_fork_in_parent() -> None:
    _PIN_LOCK.release()


def _pins_after_fork_in_child() -> None:
    global _PIN_LOCK
    for fd in _PIN_FDS:
        with contextlib.suppress(OSError):
            os.close(fd)  # the parent's pins: closing our copy leaves its lock alone
    _PIN_FDS.clear()
    _PIN_LOCK = threading.RLock()


def _flock_holders(paths: Iterable[str]) -> dict[int, int]:
    """pid -> number of ``paths`` it holds a shared flock on, from /proc/locks (Linux).

    Empty where /proc/locks does not exist (macOS). The pid is the process that took the lock.
    """
    keys: dict[str, str] = {}
    for p in paths:
        try:
            st = os.stat(p)
        except OSError:
            continue
        keys[f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"] = p
    try:
        text = Path("/proc/locks").read_text()
    except OSError:
        return {}
    held: dict[int, set[str]] = {}
    for line in text.splitlines():
        parts = line.split()
        # "1: FLOCK  ADVISORY  READ  1234 00:1b:5678 0 EOF"; a waiter has "->" after "1:".
        if len(parts) < 6 or parts[1] != "FLOCK" or parts[3] != "READ":
            continue
        path = keys.get(parts[5])
        if path is None:
            continue
        with contextlib.suppress(ValueError):
            held.setdefault(int(parts[4]), set()).add(path)
    return {pid: len(p) for pid, p in held.items()}


# --------------------------------------------------------------------------- segments


class _Segment:
    """The owner's handle on one slot: descriptor (for the exclusive flock), mapping, views."""

    __slots__ = ("fd", "fields", "mm", "path", "signature", "slot", "views")

    def __init__(self, path: str, slot: int, fd: int, mm: mmap.mmap, fields: list[_Field]):
        self.path = path
        self.slot = slot
        self.fd = fd
        self.mm = mm
        self.fields = fields
        self.signature = [f.signature() for f in fields]
        self.views = _build_views(_buffer_type(len(mm)).from_buffer(mm), fields, writable=True)

    def release(self) -> None:
        """Drop the views, close the descriptor and unmap (does not unlock other holders)."""
        self.views = {}
        fd, self.fd = self.fd, -1
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)
        _close_mapping(self.mm)


class _Mapping:
    """A reader's map of one slot (one per process and slot, shared by its threads)."""

    __slots__ = ("buffer_type", "fields", "has_views", "mm", "path", "slot")

    def __init__(self, path: str, slot: int, mm: mmap.mmap, fields: list[_Field]) -> None:
        self.path = path
        self.slot = slot
        self.mm = mm
        self.fields = fields
        self.buffer_type = _buffer_type(len(mm))
        self.has_views = any(f.kind in _VIEW_KINDS for f in fields)

    def content_version(self) -> int:
        return int(_unpack_u64(self.mm, _SLOT_VERSION_OFFSET)[0])

    def snapshot(self, version: int, fd: int, pid: int) -> StateSnapshot:
        """Build the snapshot of ``version`` while ``fd`` holds its pin; hand the pin over.

        The pin is released when the last view of this snapshot is garbage collected (at once
        when the layout has no tensor or array field: scalars are copies).
        """
        buf = self.buffer_type.from_buffer(self.mm)
        values = _build_views(buf, self.fields, writable=False)
        for f in self.fields:
            if f.kind in _SCALAR_KINDS:
                v = values[f.name][()]
                values[f.name] = v if f.kind == "npscalar" else v.item()
        if self.has_views:
            weakref.finalize(buf, _pin_release, fd, pid).atexit = False
        else:
            _pin_release(fd, pid)
        return StateSnapshot(version, values)

    def close(self) -> None:
        _close_mapping(self.mm)


def _open_mapping(path: str, slot: int) -> _Mapping:
    """Map an existing slot file and parse its layout header (FileNotFoundError if gone)."""
    fd = os.open(path, os.O_RDWR | _O_CLOEXEC)
    try:
        size = os.fstat(fd).st_size
        mm = _map(fd, size)
    finally:
        os.close(fd)
    try:
        if mm[:8] != _SLOT_MAGIC:
            raise StateError(
                f"SharedState slot file is not a wellfed slot: {path} has magic "
                f"{mm[:8]!r}, so it was not written by this version of wellfed. Remove stale "
                "files with wellfed.SharedState.cleanup_orphans().",
                code="WF504",
                path=path,
            )
        n = _unpack_u64(mm, _SLOT_LAYOUT_LEN_OFFSET)[0]
        raw = bytes(mm[_SLOT_LAYOUT_OFFSET : _SLOT_LAYOUT_OFFSET + n])
        fields = [_Field.from_json(item) for item in json.loads(raw)]
    except BaseException:
        mm.close()
        raise
    return _Mapping(path, slot, mm, fields)


# --------------------------------------------------------------------------- snapshot


def _read_only(self: Any, *args: Any, **kwargs: Any) -> Any:
    raise TypeError(
        "StateSnapshot is read-only: it is shared by every read of this version in this "
        "thread. Change the state with SharedState.update(), or work on snapshot.copy()."
    )


class StateSnapshot(dict[str, Any]):
    """One consistent version of a SharedState's fields: a read-only mapping name -> value.

    Tensor fields are ``torch.Tensor`` views and array fields read-only ``numpy.ndarray``
    views over shared memory (zero-copy); scalar fields are Python (or numpy) scalars. Every
    value belongs to the same ``version``. A ``dict`` subclass, so ``snap["theta"]`` costs
    what a dict lookup costs; the mutating methods raise TypeError. Fields are read by key
    only (``snap.values`` would be the dict method, not a field named "values").

    Validity: the views stay intact for as long as any of them (or the snapshot) is alive, in
    any process: their slot is pinned until the last one is garbage collected, and the writer
    never overwrites a pinned slot. Keeping old views alive therefore keeps their memory in
    use (up to ``max_slots`` versions); ``copy()`` gives private copies that pin nothing.
    Never write into the views.

    Attributes:
        version: The state's version these values belong to (1 at creation, +1 per update).
    """

    __slots__ = ("version",)

    def __init__(self, version: int, values: dict[str, Any]) -> None:
        dict.__init__(self, values)
        self.version = version

    def __missing__(self, name: str) -> Any:
        raise KeyError(f"SharedState has no field {name!r}; fields: {sorted(self)}")

    __setitem__ = __delitem__ = _read_only
    clear = pop = popitem = setdefault = update = __ior__ = _read_only

    def copy(self) -> StateSnapshot:
        """Return a snapshot of private copies, valid for as long as it is kept."""
        out: dict[str, Any] = {}
        for name, value in self.items():
            if _is_torch_tensor(value):
                out[name] = value.clone()
            elif hasattr(value, "copy") and hasattr(value, "flags"):
                out[name] = value.copy()
            else:
                out[name] = value
        return StateSnapshot(self.version, out)

    def __reduce__(self) -> tuple[Any, ...]:
        return (StateSnapshot, (self.version, dict(self)))

    def __repr__(self) -> str:
        return f"StateSnapshot(version={self.version}, fields={list(self)})"


class _Reader:
    """Per-thread reader: the control word seen last and the snapshot built for it.

    Only the thread's ``threading.local`` holds it strongly, so a thread that ends takes its
    cached snapshot (and that snapshot's pin) with it.
    """

    __slots__ = ("__weakref__", "slot", "snap", "word", "words")

    def __init__(self, ctl: mmap.mmap) -> None:
        self.words = _words(ctl)
        self.word = -1
        self.slot = -1
        self.snap: StateSnapshot | None = None

    def drop(self) -> None:
        """Forget the cached snapshot (its pin goes when no one else holds its views)."""
        self.snap = None
        self.word = -1
        self.slot = -1

    def release(self) -> None:
        """Forget the snapshot and let go of the control mapping."""
        self.drop()
        with contextlib.suppress(ValueError, BufferError):
            self.words.release()


# --------------------------------------------------------------------------- the state

_LIVE: weakref.WeakSet[SharedState] = weakref.WeakSet()
_OWNED: weakref.WeakValueDictionary[str, SharedState] = weakref.WeakValueDictionary()
_USE_RESOURCE_TRACKER = True  # tests switch it off to exercise cleanup_orphans alone


def _default_directory() -> str:
    if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK):
        return "/dev/shm"
    return tempfile.gettempdir()


def _process_start_time(pid: int) -> float | None:
    try:
        import psutil

        return float(psutil.Process(pid).create_time())
    except Exception:
        return None


def _tracker_name(directory: str, path: str) -> str | None:
    """The POSIX shm name the resource tracker can unlink, or None outside /dev/shm."""
    if directory != "/dev/shm" or not sys.platform.startswith("linux"):
        return None
    return "/" + os.path.basename(path)


def _track(directory: str, path: str) -> None:
    name = _tracker_name(directory, path)
    if name is None or not _USE_RESOURCE_TRACKER:
        return
    try:
        from multiprocessing import resource_tracker

        resource_tracker.register(name, "shared_memory")
    except Exception as exc:  # the tracker is a safety net only
        logger.debug("resource tracker registration of %s failed: %s", name, exc)


def _untrack(directory: str, path: str, tracked: set[str]) -> None:
    name = _tracker_name(directory, path)
    if name is None or path not in tracked:
        return
    tracked.discard(path)
    try:
        from multiprocessing import resource_tracker

        resource_tracker.unregister(name, "shared_memory")
    except Exception as exc:
        logger.debug("resource tracker unregistration of %s failed: %s", name, exc)


def _release_files(
    owner_pid: int, directory: str, ctl: mmap.mmap, paths: set[str], tracked: set[str]
) -> None:
    """Mark the state closed and unlink its files (owner process only; idempotent)."""
    if os.getpid() != owner_pid:
        return  # a forked child dropping its inherited copy must not delete the owner's files
    try:
        if not ctl.closed:
            words = _words(ctl)
            words[_CLOSED_INDEX] = 1
            words[_WORD_INDEX] = 0
            words.release()
    except (ValueError, OSError):
        pass
    for path in sorted(paths):
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            logger.debug("could not unlink %s: %s", path, exc)
        _untrack(directory, path, tracked)
    paths.clear()


class SharedState:
    """Named tensors, arrays and scalars in shared memory that every DataLoader worker sees.

    Create it in the main process, hold it in the dataset, call ``update`` from the training
    loop, and ``read`` in ``__getitem__``. Works with fork, spawn and forkserver, persistent
    workers or not; a worker sees the new values from the first ``read`` after ``update``
    returns (samples already prefetched keep the version they were made with; each snapshot
    says which). The fields of one snapshot always come from the same version, and its views
    stay intact for as long as any of them is alive (returning one from ``__getitem__`` is
    safe: it outlives the collate that copies it).

    Args:
        fields: Field name -> initial value, as a mapping (optional, positional only).
        directory: Where the shared-memory files go; default ``/dev/shm`` (else the temporary
            directory).
        max_slots: Most copies of the fields that may exist at once (>= 2; default 16). One
            is the current version; the others hold versions whose views readers still use,
            plus the one ``update`` writes into. Slots are made only when every existing one
            is in use, so a state whose readers move on uses 2-3; the bound caps the memory
            (``max_slots`` x the fields' total size) when readers keep old views. Each reader
            thread (each worker) keeps its latest version pinned until its next read, so with
            idle workers and frequent updates this should be at least num_workers + 2.
        update_timeout_s: Seconds ``update`` waits for a slot to be freed when all
            ``max_slots`` are pinned, before StateError WF510 (default 60.0); 0 = do not wait;
            None = wait forever.
        **kwargs: More fields. Values may be CPU ``torch.Tensor`` (any dtype, read back as a
            tensor of the same dtype and shape), ``numpy.ndarray`` (numeric or bool, read back
            as a read-only array), ``bool``/``int``/``float`` (read back as the same Python type;
            int is stored as int64) or numpy scalars. (The names ``directory``, ``max_slots``
            and ``update_timeout_s`` are options; pass fields so named in the mapping.)

    Raises:
        ConfigError: an unsupported value (WF501), a tensor not on the CPU (WF502), a name that
            is not an identifier (WF505), no shared-memory support here (WF507), an invalid
            ``max_slots`` or ``update_timeout_s`` (WF511).
        StateError: not enough space in the shared-memory directory (WF506).

    Example:
        >>> import torch, wellfed
        >>> class Deformed(torch.utils.data.Dataset):
        ...     def __init__(self, images):
        ...         self.images = images
        ...         self.state = wellfed.SharedState(theta=torch.eye(2, 3))
        ...     def __len__(self):
        ...         return len(self.images)
        ...     def __getitem__(self, i):
        ...         snap = self.state.read()       # one consistent version, zero-copy
        ...         return self.images[i] @ snap["theta"][:, :2], snap.version
        >>> ds = Deformed(torch.rand(8, 4, 2))
        >>> ds.state.update(theta=2 * torch.eye(2, 3))  # every worker sees it next sample
        2
        >>> ds.state.close()

    Contract:
        * ``read()`` returns a ``StateSnapshot`` of zero-copy views that stay intact while any
          of them is alive (their slot is pinned until the last is garbage collected).
          ``state[name]`` is ``read()[name]``; two ``state[...]`` calls may see different
          versions, so read several fields through one snapshot.
        * ``update`` may only be called in the process that created the state (StateError
          WF509 elsewhere). Fields not named keep their values; a new name adds a field; a new
          shape, dtype or kind is allowed (new storage, opened lazily by the workers). It
          waits while all ``max_slots`` slots are pinned (StateError WF510 after
          ``update_timeout_s``).
        * Pickling (DataLoader under spawn/forkserver, ``ForkingPickler``) sends only the file
          names (~100 bytes); the worker maps the files at its first ``read``. Unpickling in
          the owner process returns the owner object itself.
        * The files are removed by ``close()``, at exit, or when the owner object is garbage
          collected; after the owner is killed, by the resource tracker (Linux) or
          ``SharedState.cleanup_orphans()``.
    """

    __wellfed_shared_state__ = True

    _ctl: mmap.mmap | None
    _finalizer: weakref.finalize[[int, str, mmap.mmap, set[str], set[str]], SharedState] | None

    def __init__(
        self,
        fields: Mapping[str, Any] | None = None,
        /,
        *,
        directory: str | None = None,
        max_slots: int = DEFAULT_MAX_SLOTS,
        update_timeout_s: float | None = DEFAULT_UPDATE_TIMEOUT_S,
        **kwargs: Any,
    ) -> None:
        if fcntl is None:  # pragma: no cover - Windows
            raise ConfigError(
                f"SharedState is not available on this platform: sys.platform={sys.platform!r} "
                "has no fcntl.flock, which SharedState uses to keep readers and the writer "
                "apart. Use Linux or macOS, or keep num_workers=0 here.",
                code="WF507",
                attribute="sys.platform",
                value=sys.platform,
            )
        check_option(
            "max_slots",
            max_slots,
            is_count(max_slots, 2) and max_slots <= _SLOT_MASK + 1,
            f"an int from 2 to {_SLOT_MASK + 1}",
            code="WF511",
            fix="Pass at least 2 (the current version and one to write the next into); "
            f"the default is {DEFAULT_MAX_SLOTS}.",
        )
        timeout_ok = update_timeout_s is None or (
            isinstance(update_timeout_s, (int, float))
            and not isinstance(update_timeout_s, bool)
            and math.isfinite(update_timeout_s)
            and update_timeout_s >= 0
        )
        check_option(
            "update_timeout_s",
            update_timeout_s,
            timeout_ok,
            "a number of seconds >= 0 or None",
            code="WF511",
            fix=f"Pass seconds (default {DEFAULT_UPDATE_TIMEOUT_S}), 0 not to wait, or None "
            "to wait forever.",
        )
        values: dict[str, Any] = dict(fields or {})
        overlap = set(values) & set(kwargs)
        if overlap:
            raise ConfigError(
                f"SharedState fields given twice: {sorted(overlap)} appear both in the mapping "
                "and as keyword arguments, so the initial value is ambiguous. Give each field "
                "once.",
                code="WF505",
                attribute="fields",
                value=sorted(overlap),
            )
        values.update(kwargs)
        prepared = {name: _prepare(name, value) for name, value in values.items()}

        directory = os.fspath(directory) if directory is not None else _default_directory()
        self._init_common(directory, f"{PREFIX}{os.getpid()}_{secrets.token_hex(6)}", os.getpid())
        self._max_slots = int(max_slots)
        self._update_timeout_s = None if update_timeout_s is None else float(update_timeout_s)
        self._paths: set[str] = set()
        self._tracked: set[str] = set()
        self._segments: dict[int, _Segment] = {}
        self._write_lock = threading.Lock()
        self._next_slot = 0
        self._current: _Segment | None = None
        self._version = 0

        ctl_path = self._ctl_path()
        fd = os.open(ctl_path, os.O_CREAT | os.O_EXCL | os.O_RDWR | _O_CLOEXEC, 0o600)
        self._paths.add(ctl_path)
        self._register(ctl_path)
        try:
            os.ftruncate(fd, _CTL_SIZE)
            ctl = _map(fd, _CTL_SIZE)
        finally:
            os.close(fd)
        ctl[:8] = _CTL_MAGIC
        _U64.pack_into(ctl, _PID_OFFSET, self._owner_pid)
        _F64.pack_into(ctl, _START_OFFSET, _process_start_time(self._owner_pid) or 0.0)
        self._ctl = ctl
        self._ctl_words: memoryview | None = _words(ctl)
        self._finalizer = weakref.finalize(
            self, _release_files, self._owner_pid, directory, ctl, self._paths, self._tracked
        )
        try:
            self._write(prepared)
        except BaseException:
            self.close()
            raise
        _OWNED[self._prefix] = self
        logger.debug("SharedState %s created: %s", self._prefix, self._describe_current())

    # -- construction helpers

    def _init_common(self, directory: str, prefix: str, owner_pid: int) -> None:
        self._directory = directory
        self._prefix = prefix
        self._owner_pid = owner_pid
        self._local = threading.local()
        self._readers: weakref.WeakSet[_Reader] = weakref.WeakSet()
        self._readers_lock = threading.Lock()
        self._mapped: dict[int, _Mapping] = {}
        self._closed = False
        self._ctl = None
        self._ctl_words = None
        _LIVE.add(self)

    @classmethod
    def _handle(cls, directory: str, prefix: str, owner_pid: int) -> SharedState:
        """A reader-only handle on an existing state (what a spawned worker unpickles)."""
        self = cls.__new__(cls)
        self._init_common(directory, prefix, owner_pid)
        self._paths = set()
        self._tracked = set()
        self._segments = {}
        self._current = None
        self._version = 0
        self._max_slots = DEFAULT_MAX_SLOTS
        self._update_timeout_s = DEFAULT_UPDATE_TIMEOUT_S
        self._finalizer = None
        return self

    def _ctl_path(self) -> str:
        return os.path.join(self._directory, f"{self._prefix}_ctl")

    def _slot_path(self, slot: int) -> str:
        return os.path.join(self._directory, f"{self._prefix}_s{slot}")

    def _register(self, path: str) -> None:
        if _tracker_name(self._directory, path) is not None and _USE_RESOURCE_TRACKER:
            _track(self._directory, path)
            self._tracked.add(path)

    @property
    def _is_owner(self) -> bool:
        return self._finalizer is not None and os.getpid() == self._owner_pid

    # -- reading

    def read(self) -> StateSnapshot:
        """Return the current version of every field, consistently and without copying.

        Cost: about 0.12 us when the version has not changed since this thread's last read;
        a few microseconds (open and ``flock`` a pin, build the views, plus mapping the slot
        the first time this process sees it) when it has.

        Returns:
            A StateSnapshot (mapping name -> value, plus ``version``). Its views stay intact
            for as long as any of them is alive: the slot stays pinned until the last one is
            garbage collected.

        Raises:
            StateError: the state was closed (WF503) or its files are gone (WF504).
        """
        try:
            r: _Reader = self._local.r
        except AttributeError:
            r = self._new_reader()
        word = r.words[1]  # 1 == _WORD_INDEX, inlined: this is the fast path
        if word == r.word:
            return r.snap  # type: ignore[return-value]
        return self._refresh(r, word)

    def __getitem__(self, name: str) -> Any:
        """``read()[name]``: one field, zero-copy (see ``read`` for how long it stays valid)."""
        return self.read()[name]

    @property
    def version(self) -> int:
        """The latest published version (1 at creation, +1 per update); 0 once closed."""
        if self._closed:
            return 0
        try:
            r = self._local.r
        except AttributeError:
            r = self._new_reader()
        return int(r.words[_WORD_INDEX] >> _SLOT_BITS)

    @property
    def closed(self) -> bool:
        """True once the owner closed the state (its files are gone)."""
        if self._closed:
            return True
        ctl = self._ctl
        if ctl is None:
            try:
                ctl = self._open_ctl()
            except StateError:
                return True
        return ctl.closed or bool(_unpack_u64(ctl, _CLOSED_OFFSET)[0])

    @property
    def names(self) -> tuple[str, ...]:
        """Field names in creation order (fields added by ``update`` come last)."""
        return tuple(self.read())

    def _open_ctl(self) -> mmap.mmap:
        with self._readers_lock:
            if self._closed:
                raise self._closed_error()
            if self._ctl is not None:
                return self._ctl
            path = self._ctl_path()
            try:
                fd = os.open(path, os.O_RDONLY | _O_CLOEXEC)
            except FileNotFoundError:
                raise self._gone_error(path) from None
            try:
                ctl = mmap.mmap(fd, _CTL_SIZE, access=mmap.ACCESS_READ, **_MMAP_KW)
            finally:
                os.close(fd)
            self._ctl = ctl
            return ctl

    def _new_reader(self) -> _Reader:
        ctl = self._ctl if self._ctl is not None and not self._closed else self._open_ctl()
        r = _Reader(ctl)
        with self._readers_lock:
            self._readers.add(r)
        self._local.r = r
        return r

    def _mapping(self, slot: int) -> _Mapping:
        """This process's map of ``slot`` (FileNotFoundError if the slot was retired)."""
        m = self._mapped.get(slot)
        if m is None:
            with self._readers_lock:
                m = self._mapped.get(slot)
                if m is None:
                    m = _open_mapping(self._slot_path(slot), slot)
                    self._mapped[slot] = m
        return m

    def _forget_retired(self, keep: int) -> None:
        """Drop maps of slots the writer has unlinked, so their memory can go."""
        with self._readers_lock:
            gone = [s for s, m in self._mapped.items() if s != keep and not os.path.exists(m.path)]
            for s in gone:
                del self._mapped[s]  # unmapped when its last view is collected

    def _refresh(self, r: _Reader, word: int) -> StateSnapshot:
        """Slow path: pin the slot the control word names and build its snapshot."""
        assert fcntl is not None
        pid = os.getpid()
        fd, fd_slot = -1, -1
        m: _Mapping | None = None
        try:
            for _ in range(10_000):
                if r.words[_CLOSED_INDEX]:
                    raise self._closed_error()
                slot = word & _SLOT_MASK
                if slot != fd_slot:
                    if fd >= 0:
                        _pin_release(fd, pid)
                        fd, fd_slot = -1, -1
                    try:
                        m = self._mapping(slot)
                        fd = _pin_open(m.path)
                    except FileNotFoundError:
                        again = r.words[_WORD_INDEX]
                        if again == word:
                            raise self._gone_error(self._slot_path(slot)) from None
                        word = again
                        continue
                    fd_slot = slot
                    fcntl.flock(fd, fcntl.LOCK_SH)  # waits only while the writer fills it
                assert m is not None
                # Pinned. Still the current version? (The writer may have moved on and
                # reused this slot between our load of the word and the lock.)
                again = r.words[_WORD_INDEX]
                if again != word or m.content_version() != word >> _SLOT_BITS:
                    word = again
                    continue
                snap = m.snapshot(word >> _SLOT_BITS, fd, pid)
                fd = -1  # the snapshot's views own the pin now
                moved = slot != r.slot
                r.snap, r.word, r.slot = snap, word, slot  # the old snapshot may unpin here
                if moved:
                    self._forget_retired(slot)
                return snap
        finally:
            if fd >= 0:
                _pin_release(fd, pid)
        raise StateError(  # pragma: no cover - needs 10,000 updates during one read
            f"SharedState read did not settle: {self._prefix} changed 10000 times while one "
            "reader tried to pin a version, so the writer is updating faster than readers can "
            "read. Update less often (for example once per batch, not per sample).",
            code="WF508",
            attribute="state",
            value=self._prefix,
        )

    def _closed_error(self) -> StateError:
        return StateError(
            f"SharedState was closed: {self._prefix} (owner pid {self._owner_pid}) "
            "was closed, or its owner exited, so its fields no longer exist. Keep the "
            "state open (do not call close() or leave a `with` block) while a "
            "DataLoader that reads it is running.",
            code="WF503",
            attribute="state",
            value=self._prefix,
        )

    def _gone_error(self, path: str) -> StateError:
        return StateError(
            f"SharedState storage is missing: {path} does not exist, so the owner process "
            f"(pid {self._owner_pid}) closed the state or exited before this process read it. "
            "Keep the owner's SharedState open while workers run (hold it in the dataset and "
            "do not close it until the DataLoader is done).",
            code="WF504",
            path=path,
            attribute="state",
            value=self._prefix,
        )

    # -- writing

    def update(self, fields: Mapping[str, Any] | None = None, /, **kwargs: Any) -> int:
        """Publish new values for some fields, atomically; return the new version.

        Fields not named keep their values. Every worker sees the new version from its first
        ``read`` after this returns, and never a mix of old and new fields. A field may get a
        new shape, dtype or kind, and new names add fields (the workers map the new storage
        lazily); fields cannot be removed. Cost: one copy of all fields into shared memory.

        The copy goes into a slot no reader pins. When all ``max_slots`` slots are pinned
        (readers still hold views of that many versions), this waits for one to be released,
        up to ``update_timeout_s``.

        Args:
            fields: Name -> new value, as a mapping (optional, positional only).
            **kwargs: More name -> new value pairs; same types as the constructor.

        Returns:
            The new version number (the previous one + 1).

        Raises:
            StateError: the state is closed (WF503), this is not the process that created it
                (WF509), shared memory is full (WF506), or every slot stayed pinned for
                ``update_timeout_s`` (WF510; ``pids`` names the processes holding pins).
            ConfigError: an unsupported value (WF501, WF502, WF505).
        """
        values: dict[str, Any] = dict(fields or {})
        values.update(kwargs)
        self._check_writer()
        prepared = {name: _prepare(name, value) for name, value in values.items()}
        with self._write_lock:
            self._check_writer()
            return self._write(prepared)

    def _check_writer(self) -> None:
        if self._finalizer is not None and not self._finalizer.alive and self._is_owner:
            raise StateError(
                f"SharedState is closed: update() was called on {self._prefix} after close(), "
                "so there is no storage to write to. Create a new SharedState, or close it "
                "only after training.",
                code="WF503",
                attribute="state",
                value=self._prefix,
            )
        if not self._is_owner:
            raise StateError(
                f"SharedState.update() called outside its owner: this process (pid "
                f"{os.getpid()}) is not the one that created {self._prefix} (pid "
                f"{self._owner_pid}); workers hold read-only handles, so a worker's write would "
                "reach no other worker. Call update() in the main process (the training loop), "
                "e.g. between tasks or epochs.",
                code="WF509",
                attribute="pid",
                value=os.getpid(),
            )

    def _write(self, prepared: dict[str, _Prepared]) -> int:
        assert fcntl is not None
        current = self._current
        merged: dict[str, _Prepared] = {}
        if current is not None:
            for f in current.fields:
                p = prepared.get(f.name)
                merged[f.name] = (
                    p if p is not None else _Prepared(f.kind, f.dtype, f.shape, f.nbytes, None)
                )
        for name, p in prepared.items():
            if name not in merged:
                merged[name] = p
        layout, _, size = _layout_for(merged)
        signature = [f.signature() for f in layout]
        version = self._version + 1
        if version > _MAX_VERSION:  # pragma: no cover - 2**44 updates
            raise StateError(
                f"SharedState version overflow: version={version} exceeds {_MAX_VERSION}. "
                "Create a new SharedState.",
                code="WF508",
                attribute="version",
                value=version,
            )

        target = self._acquire_slot(layout, size, signature)  # locked LOCK_EX
        try:
            for f in target.fields:
                dst = target.views[f.name]
                p = merged[f.name]
                if p.value is None:  # unchanged: copy from the current slot
                    assert current is not None
                    src = current.views[f.name]
                    if f.kind == "torch":
                        dst.copy_(src)
                    else:
                        _np().copyto(dst, src)
                elif f.kind == "torch":
                    dst.copy_(p.value)
                elif f.kind == "numpy" or f.kind == "npscalar":
                    _np().copyto(dst, p.value, casting="no")
                else:
                    dst[()] = p.value
            _U64.pack_into(target.mm, _SLOT_VERSION_OFFSET, version)
        finally:
            fcntl.flock(target.fd, fcntl.LOCK_UN)
        assert self._ctl_words is not None
        self._ctl_words[_WORD_INDEX] = (version << _SLOT_BITS) | target.slot
        self._current = target
        self._version = version
        self._retire_slots(signature)
        return version

    def _try_lock(self, seg: _Segment) -> bool:
        """Lock a slot for writing if no reader pins it (never waits)."""
        assert fcntl is not None
        try:
            fcntl.flock(seg.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def _acquire_slot(
        self,
        layout: list[_Field],
        size: int,
        signature: list[tuple[str, str, str, tuple[int, ...]]],
    ) -> _Segment:
        """A slot to write the next version into, locked exclusively.

        An unpinned slot of this layout if there is one; else a new slot while fewer than
        ``max_slots`` exist (unpinned slots of other layouts are retired to make room); else
        wait for a pin to go, up to ``update_timeout_s``, then StateError WF510.
        """
        started: float | None = None
        delay = _WAIT_FIRST_S
        collected = False
        while True:
            for seg in sorted(self._segments.values(), key=lambda s: s.slot):
                if seg is self._current or not self._try_lock(seg):
                    continue
                if seg.signature == signature:
                    return seg
                self._drop_segment(seg)  # another layout, unpinned: make room
            if len(self._segments) < self._max_slots:
                return self._new_slot(layout, size)
            if not collected:
                collected = True
                if os.getpid() in self._pin_holders():
                    gc.collect()  # views in reference cycles pin slots until collected
                    continue
            now = time.monotonic()
            if started is None:
                started = now
                holders = self._pin_holders()
                alone = threading.active_count() == 1 and set(holders) == {os.getpid()}
                if self._update_timeout_s == 0 or alone:
                    raise self._slots_busy_error(0.0, size, holders, alone=alone)
                logger.debug(
                    "SharedState %s: all %d slots pinned (%s); update() waits",
                    self._prefix,
                    self._max_slots,
                    holders,
                )
            elif self._update_timeout_s is not None and now - started >= self._update_timeout_s:
                raise self._slots_busy_error(now - started, size, self._pin_holders())
            time.sleep(delay)
            delay = min(2 * delay, _WAIT_MAX_S)

    def _pin_holders(self) -> dict[int, int]:
        """pid -> slots it pins, for the slots update() cannot write (not the current one)."""
        return _flock_holders(s.path for s in self._segments.values() if s is not self._current)

    def _slots_busy_error(
        self, waited_s: float, size: int, holders: dict[int, int], *, alone: bool = False
    ) -> StateError:
        me = os.getpid()
        who = (
            ", ".join(
                f"pid {pid}{' (this process)' if pid == me else ''}: {n} slot(s)"
                for pid, n in sorted(holders.items())
            )
            or "holders unknown: /proc/locks is not readable here"
        )
        if alone:
            waited = (
                "it did not wait, because this process holds every pin and has no other "
                "thread that could release one"
            )
        else:
            timeout = self._update_timeout_s
            waited = f"it waited {waited_s:.1f}s (update_timeout_s={timeout}) for one to be freed"
        return StateError(
            f"SharedState.update() found no free slot: all max_slots={self._max_slots} slots "
            f"of {self._prefix} hold versions that readers still use (pins held by {who}), "
            f"and {waited}. A slot stays pinned while any snapshot or view of its version is "
            "alive (a view returned from __getitem__ until its batch is collated; each reader "
            "thread's latest snapshot until that thread reads again), and writing it would "
            "change data a reader holds. Drop old snapshots and views, or copy what you keep "
            "(snap.copy(), tensor.clone()); or raise max_slots (now "
            f"{self._max_slots}; each slot takes {size} bytes of {self._directory}) to at "
            "least the number of reading workers + 2; or raise update_timeout_s.",
            code="WF510",
            attribute="max_slots",
            value=self._max_slots,
            pids=tuple(sorted(holders)),
            waited_s=waited_s,
        )

    def _new_slot(self, layout: list[_Field], size: int) -> _Segment:
        assert fcntl is not None
        slot = self._next_slot
        if slot > _SLOT_MASK:  # pragma: no cover - a million layout changes
            raise StateError(
                f"SharedState ran out of slot numbers: slot={slot} exceeds {_SLOT_MASK}. "
                "Create a new SharedState.",
                code="WF508",
                attribute="slot",
                value=slot,
            )
        self._next_slot += 1
        path = self._slot_path(slot)
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR | _O_CLOEXEC, 0o600)
        self._paths.add(path)
        self._register(path)
        try:
            try:
                if hasattr(os, "posix_fallocate"):
                    os.posix_fallocate(fd, 0, size)  # reserve now: tmpfs would SIGBUS later
                else:  # pragma: no cover - macOS
                    os.ftruncate(fd, size)
            except OSError as exc:
                if exc.errno not in (errno.ENOSPC, errno.ENOMEM, errno.EFBIG):
                    raise
                raise StateError(
                    f"Not enough shared memory for SharedState: a slot of {size} bytes does "
                    f"not fit in {self._directory} (errno {exc.errno}), so the new values "
                    "cannot be published. Free space there (`df -h /dev/shm`; remove orphans "
                    "with wellfed.SharedState.cleanup_orphans()), enlarge it (docker "
                    "--shm-size), or store smaller fields.",
                    code="WF506",
                    attribute="bytes",
                    value=size,
                    path=self._directory,
                ) from exc
            mm = _map(fd, size)
            fcntl.flock(fd, fcntl.LOCK_EX)
            raw = _layout_json(layout, 0)
            mm[:8] = _SLOT_MAGIC
            _U64.pack_into(mm, _SLOT_VERSION_OFFSET, 0)
            _U64.pack_into(mm, _SLOT_LAYOUT_LEN_OFFSET, len(raw))
            mm[_SLOT_LAYOUT_OFFSET : _SLOT_LAYOUT_OFFSET + len(raw)] = raw
        except BaseException:
            os.close(fd)
            self._unlink(path)
            raise
        seg = _Segment(path, slot, fd, mm, layout)
        self._segments[slot] = seg
        return seg

    def _retire_slots(self, signature: list[tuple[str, str, str, tuple[int, ...]]]) -> None:
        """Unlink slots no reader pins, keeping one unpinned spare of the current layout."""
        assert fcntl is not None
        spare_kept = False
        for slot in sorted(self._segments, reverse=True):
            seg = self._segments[slot]
            if seg is self._current or not self._try_lock(seg):
                continue  # current, or pinned by a reader
            if seg.signature == signature and not spare_kept:
                spare_kept = True
                fcntl.flock(seg.fd, fcntl.LOCK_UN)
                continue
            self._drop_segment(seg)

    def _drop_segment(self, seg: _Segment) -> None:
        """Unlink a slot this process holds LOCK_EX on and forget it."""
        assert fcntl is not None
        self._unlink(seg.path)
        with contextlib.suppress(OSError):
            fcntl.flock(seg.fd, fcntl.LOCK_UN)
        del self._segments[seg.slot]
        seg.release()

    def _unlink(self, path: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        self._paths.discard(path)
        _untrack(self._directory, path, self._tracked)

    # -- lifetime

    def close(self) -> None:
        """Release the shared memory: unlink every file (owner) or drop this handle's maps.

        In the owner, workers that read afterwards get StateError WF503; memory they still
        map is freed when they exit. Idempotent. A worker's handle only closes its own
        descriptors and maps. Views still alive keep their mapping (and, in a handle, their
        pin) until they are garbage collected; nothing else stays open.
        """
        if self._is_owner:
            with self._write_lock:
                assert self._finalizer is not None
                self._finalizer()
                for seg in self._segments.values():
                    seg.release()
                self._segments = {}
                self._current = None
        with self._readers_lock:
            # The owner's state is gone for good; a handle may read again (it maps anew).
            self._closed = self._finalizer is not None
            readers, self._readers = list(self._readers), weakref.WeakSet()
            mapped, self._mapped = self._mapped, {}
        self._local = threading.local()
        for r in readers:
            r.release()
        del readers
        for m in mapped.values():
            m.close()
        words, self._ctl_words = self._ctl_words, None
        if words is not None:
            with contextlib.suppress(ValueError, BufferError):
                words.release()
        ctl, self._ctl = self._ctl, None
        if ctl is not None:
            _close_mapping(ctl)

    def __enter__(self) -> SharedState:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _after_fork_in_child(self) -> None:
        """Drop what the parent held: its snapshots, maps and descriptors (not its locks)."""
        for r in list(self._readers):
            r.drop()
        self._readers = weakref.WeakSet()
        self._readers_lock = threading.Lock()
        self._local = threading.local()
        for m in self._mapped.values():
            m.close()
        self._mapped = {}
        for seg in self._segments.values():
            seg.release()
        self._segments = {}
        self._current = None
        if hasattr(self, "_write_lock"):
            self._write_lock = threading.Lock()

    def __reduce__(self) -> tuple[Any, tuple[str, str, int]]:
        return (_open_shared_state, (self._directory, self._prefix, self._owner_pid))

    def segment_paths(self) -> tuple[str, ...]:
        """Paths of the shared-memory files this state owns now (empty outside the owner)."""
        return tuple(sorted(self._paths)) if self._is_owner else ()

    def _describe_current(self) -> str:
        seg = self._current
        if seg is None:
            return "{}"
        return "{" + ", ".join(f"{f.name}: {f.describe()}" for f in seg.fields) + "}"

    def __repr__(self) -> str:
        role = "owner" if self._is_owner else "handle"
        if self._is_owner:
            return (
                f"SharedState(version={self._version}, fields={self._describe_current()}, "
                f"{role}, max_slots={self._max_slots}, name={self._prefix!r})"
            )
        return f"SharedState({role}, name={self._prefix!r}, owner_pid={self._owner_pid})"

    # -- orphans

    @staticmethod
    def cleanup_orphans(directory: str | None = None) -> tuple[str, ...]:
        """Remove shared-memory files of SharedStates whose owner process is gone.

        Needed only when an owner was killed (SIGKILL, out-of-memory killer) and the resource
        tracker could not clean up (it normally does on Linux). Files of live owners are
        kept. A dead owner is one whose pid no longer exists, or whose pid now belongs to a
        process started after the state was created (pid reuse).

        Args:
            directory: Where to look; default ``/dev/shm`` (else the temporary directory).

        Returns:
            The paths removed, sorted.

        Example:
            >>> import wellfed
            >>> removed = wellfed.SharedState.cleanup_orphans()
        """
        directory = os.fspath(directory) if directory is not None else _default_directory()
        try:
            names = os.listdir(directory)
        except OSError:
            return ()
        groups: dict[tuple[int, str], list[str]] = {}
        for name in names:
            m = _NAME_RE.match(name)
            if m:
                groups.setdefault((int(m.group(1)), m.group(2)), []).append(name)
        removed: list[str] = []
        for (pid, token), members in groups.items():
            if _owner_alive(directory, pid, f"{PREFIX}{pid}_{token}_ctl"):
                continue
            for name in members:
                path = os.path.join(directory, name)
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    continue
                except OSError as exc:
                    logger.debug("could not remove orphan %s: %s", path, exc)
                    continue
                removed.append(path)
        if removed:
            logger.info("removed %d orphaned SharedState files from %s", len(removed), directory)
        return tuple(sorted(removed))


def _owner_alive(directory: str, pid: int, ctl_name: str) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, belongs to someone else
    started = _process_start_time(pid)
    if started is None:
        return True
    try:
        raw = Path(directory, ctl_name).read_bytes()
    except OSError:
        return True
    if len(raw) < _CTL_SIZE or raw[:8] != _CTL_MAGIC:
        return True
    recorded = _F64.unpack_from(raw, _START_OFFSET)[0]
    return not (recorded and started > recorded + _CLEANUP_GRACE_S)


def _open_shared_state(directory: str, prefix: str, owner_pid: int) -> SharedState:
    """Unpickle: the owner object in the owner process, a lazy reader handle elsewhere."""
    if owner_pid == os.getpid():
        owner = _OWNED.get(prefix)
        if owner is not None:
            return owner
    return SharedState._handle(directory, prefix, owner_pid)


def _after_fork_in_child() -> None:
    _pins_after_fork_in_child()
    for state in list(_LIVE):
        state._after_fork_in_child()
    _OWNED.clear()


def _close_all_at_exit() -> None:
    for state in list(_OWNED.values()):
        try:
            state.close()
        except Exception as exc:  # pragma: no cover - best effort at exit
            logger.debug("closing %r at exit failed: %s", state, exc)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(
        before=_pins_before_fork,
        after_in_parent=_pins_after_fork_in_parent,
        after_in_child=_after_fork_in_child,
    )
atexit.register(_close_all_at_exit)
