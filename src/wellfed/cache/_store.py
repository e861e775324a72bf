"""The store format: ``.npy`` shards plus a JSON manifest, committed atomically.

Layout of a store directory::

    out_dir/
      wellfed-cache.json          manifest: format, status, fingerprints, fields, shards
      shard-00000/                rows [0, R) (R = rows_per_shard)
        shard.json                commit record: rows, fields, size + sha256 of every file
        output.npy                a fixed-shape field: one array (rows, *shape)
        boxes.data.npy            a variable-shape field: the samples' values, flattened, 1-D
        boxes.offsets.npy         int64 (rows + 1,): sample i is data[offsets[i]:offsets[i+1]]
        boxes.shapes.npy          int64 (rows, ndim): sample i's shape
      shard-00001/ ...
      .wellfed-cache.lock         the writers' lock (flock): held by the one precompute writing

Only one precompute writes a store at a time: it holds an exclusive ``flock`` on the lock file
for the job's life (``acquire_store_lock``); a second one is refused (WF413) naming the first's
pid and command line. The kernel releases the lock when its holder exits, however it dies
(``kill -9`` included), so the next call resumes at once. The file stays (empty) after a job:
deleting a lock file others may hold open would let two writers in.

Every array is a plain NumPy ``.npy`` file (``allow_pickle=False`` works on all of them), so a
store reads without wellfed::

    import json, numpy as np
    m = json.load(open("out_dir/wellfed-cache.json"))
    shard = m["shards"][0]
    x = np.load(f"out_dir/{shard['dir']}/output.npy", mmap_mode="r")   # (rows, *shape)

A shard is written to a hidden temporary directory, each file fsync'ed, then the directory is
renamed into place (``rename`` is atomic on POSIX) and the parent directory fsync'ed. A shard
directory therefore exists complete or not at all; a killed run leaves at most a temporary
directory, which the next run deletes.

Source:
    The choice of ``.npy`` shards over Arrow IPC and safetensors was measured:
    ``benchmarks/results/published/store_format.md``.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import re
import shutil
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from wellfed.errors import StateError

logger = logging.getLogger(__name__)

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "LOCK_NAME",
    "MANIFEST_NAME",
    "FieldSpec",
    "ShardBuilder",
    "acquire_store_lock",
    "commit_shard",
    "is_store",
    "read_manifest",
    "release_store_lock",
    "shard_dir_name",
    "try_store_lock",
    "write_manifest",
]

FORMAT = "wellfed-cache"
FORMAT_VERSION = 1
MANIFEST_NAME = "wellfed-cache.json"
SHARD_RECORD = "shard.json"
TMP_PREFIX = ".tmp-"
LOCK_NAME = ".wellfed-cache.lock"

#: Seconds between tries while waiting for another writer's lock (``wait_s`` > 0).
LOCK_POLL_S = 0.1

_SHARD_DIR = re.compile(r"^shard-[0-9]{5,}$")
_LAYOUT_KINDS = ("tensor", "tuple", "dict")

#: Bytes read per hashing step: large enough that hashlib releases the GIL for most of it.
_HASH_CHUNK = 1 << 22


@dataclass(frozen=True)
class FieldSpec:
    """One stored field.

    Attributes:
        name: The field's name (also its file name stem).
        dtype: NumPy dtype string, e.g. "float32", "int64", "uint8".
        shape: Per-sample shape for a fixed-shape field; None for a variable-shape one.
        ndim: Number of dimensions of one sample.
        origin: "fn" (an output of fn) or "source" (a field of the source's samples, kept).
    """

    name: str
    dtype: str
    shape: tuple[int, ...] | None
    ndim: int
    origin: str

    @property
    def variable(self) -> bool:
        """True when samples may differ in shape (stored as data + offsets + shapes)."""
        return self.shape is None

    def files(self) -> tuple[str, ...]:
        """File names of this field inside a shard directory."""
        if self.variable:
            return (f"{self.name}.data.npy", f"{self.name}.offsets.npy", f"{self.name}.shapes.npy")
        return (f"{self.name}.npy",)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return {
            "name": self.name,
            "dtype": self.dtype,
            "shape": list(self.shape) if self.shape is not None else None,
            "ndim": self.ndim,
            "origin": self.origin,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FieldSpec:
        """Build a FieldSpec from ``to_dict()`` output."""
        shape = data.get("shape")
        return cls(
            name=str(data["name"]),
            dtype=str(data["dtype"]),
            shape=tuple(int(s) for s in shape) if shape is not None else None,
            ndim=int(data["ndim"]),
            origin=str(data.get("origin", "fn")),
        )


def shard_dir_name(index: int) -> str:
    """Directory name of shard ``index`` (``shard-00000``)."""
    return f"shard-{index:05d}"


def is_store(path: Path) -> bool:
    """True when ``path`` holds a wellfed cache manifest."""
    return (path / MANIFEST_NAME).is_file()


def read_manifest(path: Path) -> dict[str, Any]:
    """Read a store's manifest (plain JSON: opening a store never runs code).

    A manifest of this format version is also checked for shape (every key a reader needs,
    of the right type), so a replaced or hand-edited file fails here, named, rather than as
    a KeyError later. A manifest of another format version is returned unchecked (callers
    raise WF407 or rebuild).

    Raises:
        StateError: the manifest is not a JSON object (truncated, replaced, not UTF-8), not a
            wellfed manifest, or of the wrong shape: WF412, naming the file and what is wrong.
    """
    file = path / MANIFEST_NAME
    try:
        with open(file, encoding="utf-8") as f:
            data = json.load(f)
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
        raise _corrupt_manifest(file, f"{type(exc).__name__}: {exc}") from exc
    if not isinstance(data, dict):
        raise _corrupt_manifest(file, f"a JSON {type(data).__name__}, not an object")
    problem = manifest_problem(data)
    if problem is not None:
        raise _corrupt_manifest(file, problem)
    return data


def _is_int(value: Any, minimum: int = 0) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def _shard_problem(k: int, shard: Any) -> str | None:
    """What is wrong with manifest entry ``shards[k]``, or None."""
    where = f"'shards'[{k}]"
    if not isinstance(shard, dict):
        return f"{where} is a {type(shard).__name__}, expected a shard record (object)"
    if not isinstance(shard.get("dir"), str) or not _SHARD_DIR.match(shard["dir"]):
        return f"{where}['dir'] is {shard.get('dir')!r}, expected a name like 'shard-00000'"
    for key in ("start", "rows"):
        if not _is_int(shard.get(key)):
            return f"{where}[{key!r}] is {shard.get(key)!r}, expected an int >= 0"
    files = shard.get("files")
    if not isinstance(files, dict) or not files:
        return f"{where}['files'] is {type(files).__name__}, expected an object of files"
    for name, info in files.items():
        if (
            not isinstance(info, dict)
            or not _is_int(info.get("bytes"))
            or not isinstance(info.get("sha256"), str)
            or "/" in name
        ):
            return f"{where}['files'][{name!r}] is not a record of bytes and sha256"
    return None


def manifest_problem(data: dict[str, Any]) -> str | None:
    """What makes a parsed manifest unusable (its shape, not its files), or None.

    Returns:
        A short phrase naming the key and what was expected, e.g. "'fields' is an int,
        expected a list of field records"; None for a well-formed manifest (or one of
        another format version, which is not checked).
    """
    if data.get("format") != FORMAT:
        keys = ", ".join(sorted(map(str, data))[:8]) or "none"
        return f'a JSON object without "format": "{FORMAT}"; its keys: {keys}'
    if data.get("format_version") != FORMAT_VERSION:
        return None  # another version: the callers say so (WF407) or rebuild
    status = data.get("status")
    if status not in ("building", "complete"):
        return f"'status' is {status!r}, expected 'building' or 'complete'"
    if not isinstance(data.get("fingerprint"), dict):
        return f"'fingerprint' is {type(data.get('fingerprint')).__name__}, expected an object"
    if not _is_int(data.get("num_samples")):
        return f"'num_samples' is {data.get('num_samples')!r}, expected an int >= 0"
    if not _is_int(data.get("batch_size"), 1):
        return f"'batch_size' is {data.get('batch_size')!r}, expected an int >= 1"
    rows, fields, layout = data.get("rows_per_shard"), data.get("fields"), data.get("layout")
    if (status == "complete" or rows is not None) and not _is_int(rows, 1):
        return f"'rows_per_shard' is {rows!r}, expected an int >= 1"
    if status == "complete" or fields is not None:
        if not isinstance(fields, list) or not fields:
            return f"'fields' is {type(fields).__name__}, expected a list of field records"
        for j, spec in enumerate(fields):
            try:
                field = FieldSpec.from_dict(spec)
                np.dtype(field.dtype)
            except (KeyError, TypeError, ValueError, AttributeError):
                return f"'fields'[{j}] is not a field record (name, dtype, shape, ndim)"
            if "/" in field.name or field.name.startswith("."):
                return f"'fields'[{j}] has the name {field.name!r}, not a file name"
    if status == "complete" or layout is not None:
        if (
            not isinstance(layout, dict)
            or layout.get("kind") not in _LAYOUT_KINDS
            or not isinstance(layout.get("fields"), list)
        ):
            return f"'layout' is {layout!r:.80}, expected an object with 'kind' and 'fields'"
        names = {f["name"] for f in fields} if isinstance(fields, list) else set()
        unknown = [n for n in layout["fields"] if n not in names]
        if unknown:
            return f"'layout' names fields {unknown[:3]} that 'fields' does not list"
        if layout["kind"] == "dict" and (
            not isinstance(layout.get("keys"), list) or len(layout["keys"]) != len(layout["fields"])
        ):
            return "'layout' of kind 'dict' has no list of 'keys' matching its 'fields'"
    shards = data.get("shards")
    if not isinstance(shards, list):
        return f"'shards' is {type(shards).__name__}, expected a list of shard records"
    for k, shard in enumerate(shards):
        problem = _shard_problem(k, shard)
        if problem is not None:
            return problem
    if status == "complete":
        assert isinstance(rows, int)
        n = int(data["num_samples"])
        expected = -(-n // rows)
        if len(shards) != expected:
            return (
                f"'shards' lists {len(shards)} shards, but {n} samples at "
                f"{rows} rows per shard need {expected}"
            )
        for k, shard in enumerate(shards):
            want = min(rows, n - k * rows)
            if shard["dir"] != shard_dir_name(k) or shard["rows"] != want:
                return f"'shards'[{k}] is {shard['dir']!r} of {shard['rows']} rows, expected " + (
                    f"{shard_dir_name(k)!r} of {want}"
                )
    return None


def _corrupt_manifest(file: Path, why: str) -> StateError:
    return StateError(
        f"Corrupt store manifest: {str(file)!r} cannot be read ({why}): the file was "
        "truncated, replaced or edited, so the store's shards cannot be trusted. Rebuild the "
        "store: run the same precompute call with overwrite=True (--overwrite); it deletes "
        "only the store's own files (the manifest, shard-* and temporaries).",
        code="WF412",
        attribute="manifest",
        value=str(file),
        problem=why,
    )


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_manifest(path: Path, manifest: Mapping[str, Any]) -> None:
    """Replace the manifest atomically (temporary file, fsync, rename, fsync the directory)."""
    text = json.dumps(manifest, indent=1, sort_keys=True) + "\n"
    tmp = path / f"{TMP_PREFIX}{MANIFEST_NAME}.{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path / MANIFEST_NAME)
    _fsync_dir(path)


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes, hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            chunk = f.read(_HASH_CHUNK)
            if not chunk:
                break
            digest.update(chunk)
    return digest.hexdigest()


def _npy_header(dtype: np.dtype[Any], shape: tuple[int, ...]) -> bytes:
    """The .npy (format 1.0) header of a C-order array of this dtype and shape."""
    buf = _NpyBuffer()
    np.lib.format.write_array_header_1_0(
        buf, {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape}
    )
    return buf.getvalue()


class _NpyBuffer:
    """A minimal file-like sink for numpy's header writer."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def write(self, data: bytes) -> int:
        self.parts.append(bytes(data))
        return len(data)

    def getvalue(self) -> bytes:
        return b"".join(self.parts)


def write_bytes(f: Any, data: bytes | memoryview) -> None:
    """Write to an open store file (the one place bytes reach the disk; tests replace it
    to inject ENOSPC)."""
    f.write(data)


def _as_bytes(array: np.ndarray) -> memoryview:
    array = np.ascontiguousarray(array)
    return memoryview(array.reshape(-1).view(np.uint8).data) if array.size else memoryview(b"")


class _StreamedNpy:
    """One .npy file written in pieces: header first (the row count is known), then rows.

    The SHA-256 is computed as the bytes go out, and ``sync_bytes`` bytes at most wait for
    an fdatasync, so the commit's final fsync finds little left to flush.
    """

    def __init__(self, path: Path, dtype: str, shape: tuple[int, ...], sync_bytes: int) -> None:
        self.path = path
        self.dtype = np.dtype(dtype)
        self.shape = shape
        self.sync_bytes = sync_bytes
        self.rows = 0
        self.bytes = 0
        self._unsynced = 0
        self._digest = hashlib.sha256()
        self._f = open(path, "wb")  # noqa: SIM115 (closed by finish() or close())
        try:
            self._put(_npy_header(self.dtype, shape))
        except BaseException:
            self._f.close()
            raise

    def _put(self, data: bytes | memoryview) -> None:
        self._digest.update(data)
        write_bytes(self._f, data)
        self.bytes += len(data)
        self._unsynced += len(data)
        if self._unsynced >= self.sync_bytes:
            self._f.flush()
            os.fdatasync(self._f.fileno())
            self._unsynced = 0

    def append(self, array: np.ndarray) -> None:
        """Append rows (n, *shape[1:]) of the file's dtype."""
        if array.dtype != self.dtype or array.shape[1:] != self.shape[1:]:
            raise ValueError(
                f"{self.path.name}: rows {array.dtype}{array.shape[1:]} do not match "
                f"{self.dtype}{self.shape[1:]}"
            )
        self._put(_as_bytes(array))
        self.rows += int(array.shape[0])

    def finish(self) -> dict[str, Any]:
        """fsync and close; return the file's size and sha256."""
        if self.rows != self.shape[0]:
            raise ValueError(
                f"{self.path.name}: {self.rows} rows written, {self.shape[0]} expected"
            )
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()
        return {"bytes": self.bytes, "sha256": self._digest.hexdigest()}

    def close(self) -> None:
        """Close without finishing (the shard is being discarded)."""
        self._f.close()


def _write_npy(path: Path, array: np.ndarray) -> dict[str, Any]:
    """Write one .npy file, fsync it, and return its size and sha256 (hashed while written)."""
    f = _StreamedNpy(path, array.dtype.str, tuple(array.shape), sync_bytes=1 << 62)
    try:
        f.append(array)  # 1-D or more: data, offsets and shapes arrays
        return f.finish()
    finally:
        f.close()


def write_file(path: Path, header: bytes, data: memoryview) -> None:
    """Write header + data to a new file and fsync it."""
    with open(path, "wb") as f:
        write_bytes(f, header)
        write_bytes(f, data)
        f.flush()
        os.fsync(f.fileno())


def is_disk_full(exc: BaseException) -> bool:
    """True for ENOSPC (no space) and EDQUOT (quota exceeded)."""
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


#: Unsynced bytes a streamed shard file may hold before an fdatasync (a background
#: thread's work; the commit then flushes at most this much while the pipeline waits).
SYNC_BYTES = 8 * 2**20


class ShardBuilder:
    """Writes shard ``index`` as its rows arrive, then commits it atomically.

    Fixed-shape fields stream to their files (header first: the shard's row count is
    known), hashed and fdatasync'ed as they go, so that writing overlaps computing instead
    of happening all at once when the shard is full. Variable-shape fields are kept in
    memory and written at commit (their sizes are not known before).

    Args:
        root: The store directory.
        index: Shard number.
        start: Index of the shard's first sample.
        rows: Rows the shard will hold.
        specs: The store's fields, in order.

    Attributes:
        appended: Rows appended so far; ``commit`` needs ``rows`` of them.

    Raises:
        OSError: from the filesystem (ENOSPC included), from any method; call ``discard``
            then (``commit_shard`` does).
    """

    def __init__(
        self, root: Path, index: int, start: int, rows: int, specs: Sequence[FieldSpec]
    ) -> None:
        self.root = root
        self.index = index
        self.start = start
        self.rows = rows
        self.specs = tuple(specs)
        self.final = root / shard_dir_name(index)
        self.tmp = root / f"{TMP_PREFIX}{shard_dir_name(index)}.{os.getpid()}"
        self._files: dict[str, _StreamedNpy] = {}
        self._held: dict[str, list[np.ndarray]] = {}
        self.appended = 0
        if self.tmp.exists():
            shutil.rmtree(self.tmp)
        self.tmp.mkdir()
        try:
            for spec in self.specs:
                if spec.variable:
                    self._held[spec.name] = []
                else:
                    assert spec.shape is not None
                    self._files[spec.name] = _StreamedNpy(
                        self.tmp / spec.files()[0], spec.dtype, (rows, *spec.shape), SYNC_BYTES
                    )
        except BaseException:
            self.discard()
            raise

    def append(self, columns: Mapping[str, np.ndarray | Sequence[np.ndarray]]) -> None:
        """Add the next rows: per field, an array (n, *shape) or a list of n arrays."""
        n = -1
        for spec in self.specs:
            col = columns[spec.name]
            if spec.variable:
                parts = [np.ascontiguousarray(a, dtype=spec.dtype) for a in col]
                self._held[spec.name].extend(parts)
                m = len(parts)
            else:
                arr = np.asarray(col)
                self._files[spec.name].append(arr)
                m = int(arr.shape[0])
            if n not in (-1, m):
                raise ValueError(
                    f"shard {self.index}: field {spec.name} has {m} rows, expected {n}"
                )
            n = m
        self.appended += max(n, 0)

    def commit(self) -> dict[str, Any]:
        """Finish every file, write the commit record, rename into place; return the record."""
        if self.appended != self.rows:
            raise ValueError(
                f"shard {self.index}: {self.appended} rows appended, {self.rows} expected"
            )
        files: dict[str, Any] = {}
        for spec in self.specs:
            if not spec.variable:
                files[spec.files()[0]] = self._files[spec.name].finish()
                continue
            parts = self._held[spec.name]
            n = len(parts)
            sizes = np.array([p.size for p in parts], dtype=np.int64)
            offsets = np.zeros(n + 1, dtype=np.int64)
            np.cumsum(sizes, out=offsets[1:])
            shapes = np.array([p.shape for p in parts], dtype=np.int64).reshape(n, spec.ndim)
            data = (
                np.concatenate([p.reshape(-1) for p in parts])
                if n
                else np.zeros(0, dtype=spec.dtype)
            )
            for name, arr in zip(spec.files(), (data, offsets, shapes), strict=True):
                files[name] = _write_npy(self.tmp / name, arr)
        record = {
            "dir": self.final.name,
            "index": self.index,
            "start": self.start,
            "rows": self.rows,
            "files": files,
        }
        rec_text = json.dumps(record, indent=1, sort_keys=True).encode() + b"\n"
        write_file(self.tmp / SHARD_RECORD, rec_text, memoryview(b""))
        _fsync_dir(self.tmp)
        if self.final.exists():  # a stale copy from another run of the same fingerprint
            shutil.rmtree(self.final)
        os.rename(self.tmp, self.final)
        _fsync_dir(self.root)
        return record

    def discard(self) -> None:
        """Close the files and delete the temporary directory (no shard appears)."""
        for f in self._files.values():
            with contextlib.suppress(OSError):
                f.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


def commit_shard(
    root: Path,
    index: int,
    start: int,
    columns: Mapping[str, np.ndarray | Sequence[np.ndarray]],
    specs: Sequence[FieldSpec],
) -> dict[str, Any]:
    """Write shard ``index`` (rows from ``start``) atomically and return its commit record.

    Args:
        root: The store directory.
        index: Shard number.
        start: Index of the shard's first sample.
        columns: Per field name: an array (rows, *shape) for a fixed-shape field, or a list
            of per-sample arrays for a variable-shape one.
        specs: The store's fields, in order.

    Returns:
        The record also written to ``shard.json``: dir, start, rows, files (bytes, sha256).

    Raises:
        OSError: from the filesystem (ENOSPC included); the temporary directory is removed
            and no shard directory appears.
    """
    first = columns[specs[0].name]
    rows = len(first)
    builder = ShardBuilder(root, index, start, rows, specs)
    try:
        builder.append(columns)
        return builder.commit()
    except BaseException:
        builder.discard()
        raise


def read_shard_record(root: Path, index: int) -> dict[str, Any] | None:
    """The commit record of shard ``index``, or None when it is not committed."""
    path = root / shard_dir_name(index) / SHARD_RECORD
    try:
        with open(path, encoding="utf-8") as f:
            data: dict[str, Any] = json.load(f)
    except (OSError, ValueError):
        return None
    return data


def remove_temporaries(root: Path) -> int:
    """Delete what a killed run left half-written (``.tmp-*``); return how many entries."""
    removed = 0
    for entry in root.glob(f"{TMP_PREFIX}*"):
        if entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed += 1
    return removed


def verify_shard(root: Path, record: Mapping[str, Any]) -> list[str]:
    """Files of a committed shard whose size or sha256 differs from its record."""
    bad: list[str] = []
    shard = root / str(record["dir"])
    for name, info in record["files"].items():
        path = shard / name
        try:
            if path.stat().st_size != info["bytes"] or file_sha256(path) != info["sha256"]:
                bad.append(f"{record['dir']}/{name}")
        except OSError:
            bad.append(f"{record['dir']}/{name}")
    return bad


def remove_store(root: Path) -> None:
    """Delete a store's own entries (manifest, shards, temporaries), nothing else."""
    for entry in root.iterdir():
        name = entry.name
        if name == MANIFEST_NAME or name.startswith(TMP_PREFIX) or name.startswith("shard-"):
            if entry.is_dir():
                shutil.rmtree(entry)
            else:
                entry.unlink()


def damaged_files(root: Path, record: Mapping[str, Any]) -> list[str]:
    """Files of a committed shard that are missing or whose size differs from its record.

    One ``stat`` per file (no reading), so it is cheap enough for every open of a store;
    ``verify_shard`` also compares contents.

    Returns:
        Descriptions such as ``"shard-00001/output.npy (missing)"`` or
        ``"shard-00001/output.npy (1200 bytes, recorded 4096)"``.
    """
    bad: list[str] = []
    shard = root / str(record["dir"])
    for name, info in record["files"].items():
        try:
            size = (shard / name).stat().st_size
        except FileNotFoundError:
            bad.append(f"{record['dir']}/{name} (missing)")
            continue
        except OSError as exc:
            bad.append(f"{record['dir']}/{name} ({type(exc).__name__}: {exc.strerror})")
            continue
        if size != info["bytes"]:
            bad.append(f"{record['dir']}/{name} ({size} bytes, recorded {info['bytes']})")
    return bad


# ----------------------------------------------------------------------------- the writers' lock

#: File descriptors of the store locks this process holds; a forked child closes its copies
#: (``_close_inherited_locks``), so that a fork-started DataLoader worker that outlives a
#: killed precompute does not keep the store locked.
_held_lock_fds: set[int] = set()


def _close_inherited_locks() -> None:
    """In a forked child: drop the inherited lock descriptors (the parent keeps its lock:
    closing one of several descriptors of an open file does not release its flock)."""
    for fd in list(_held_lock_fds):
        with contextlib.suppress(OSError):
            os.close(fd)
    _held_lock_fds.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_inherited_locks)


def try_store_lock(root: Path) -> int | None:
    """Try once to take the exclusive writers' lock of the store at ``root`` (which must exist).

    The lock is a ``flock`` on ``root/.wellfed-cache.lock``; it is released by
    ``release_store_lock`` or by the kernel when this process exits, however it exits.
    While held, the file records the holder (pid, command line, host, start time) for the
    message another writer gets.

    Returns:
        The lock's file descriptor (pass it to ``release_store_lock``); None when another
        open file holds the lock; -1 where the filesystem offers no locks (a warning is
        logged and the job runs unlocked).
    """
    try:
        import fcntl
    except ImportError:  # not POSIX
        return -1
    fd = os.open(root / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        except OSError as exc:  # ENOLCK and the like: a filesystem without locks
            logger.warning(
                "precompute: cannot lock %s (%s: %s); running without the writers' lock, so "
                "do not start a second precompute on this store until this one ends",
                root / LOCK_NAME,
                type(exc).__name__,
                exc,
            )
            os.close(fd)
            return -1
        import socket

        holder = {
            "pid": os.getpid(),
            "argv": list(sys.argv),
            "host": socket.gethostname(),
            "started_unix": time.time(),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
    except BaseException:
        with contextlib.suppress(OSError):
            os.close(fd)
        raise
    _held_lock_fds.add(fd)
    return fd


def acquire_store_lock(root: Path, wait_s: float = 0.0) -> int:
    """Take the writers' lock of the store at ``root``, waiting up to ``wait_s`` seconds.

    Args:
        root: The store directory (it must exist).
        wait_s: Seconds to wait for another holder to finish, polling every LOCK_POLL_S;
            0 refuses at once; ``math.inf`` waits for as long as it takes.

    Returns:
        The lock's file descriptor, or -1 (no locks on this filesystem): see
        ``try_store_lock``.

    Raises:
        StateError: another process holds the lock (WF413), naming its pid and command line.
    """
    deadline = time.monotonic() + wait_s
    said = False
    while True:
        fd = try_store_lock(root)
        if fd is not None:
            return fd
        if time.monotonic() >= deadline:
            raise _store_busy(root, root / LOCK_NAME, wait_s)
        if not said:
            logger.info(
                "precompute: %s is locked by another writer; waiting up to %s s", root, wait_s
            )
            said = True
        time.sleep(LOCK_POLL_S)  # another process's lock: there is no event to wait on


def release_store_lock(fd: int) -> None:
    """Release a lock from ``acquire_store_lock`` (the file stays, emptied)."""
    if fd < 0:
        return
    _held_lock_fds.discard(fd)
    with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)  # while still held: no one reads a stale holder afterwards
    os.close(fd)  # the last descriptor of the open file: the kernel drops the flock


def _store_busy(root: Path, path: Path, wait_s: float) -> StateError:
    """WF413: the message for a second writer, naming the holder as psutil sees it."""
    import psutil

    try:
        info = json.loads(path.read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        info = {}
    pid = info.get("pid") if isinstance(info, dict) else None
    cmdline = " ".join(map(str, info.get("argv") or [])) if isinstance(info, dict) else ""
    if isinstance(pid, int):
        try:
            proc = psutil.Process(pid)
            cmdline = " ".join(proc.cmdline()) or proc.name()
            age = time.time() - proc.create_time()
            holder = f"pid {pid}, running for {age:.0f} s: {cmdline[:300]}"
        except psutil.NoSuchProcess:
            holder = (
                f"pid {pid} on host {info.get('host')!r}, which is not running here (a run on "
                f"another machine sharing this filesystem?): {cmdline[:300]}"
            )
        except psutil.Error:
            holder = f"pid {pid}: {cmdline[:300]}"
        stop = f"stop it: kill {pid}"
    else:
        holder = "a process that has not recorded itself yet (it is starting)"
        stop = "stop it"
    waited = f" and did not release it within {wait_s:.0f} s" if wait_s > 0 else ""
    return StateError(
        f"Store busy: out_dir={str(root)!r} is locked by another precompute ({holder}){waited}. "
        "Two writers on one store would delete each other's shards. Wait for that run to end "
        f"(or {stop}; a killed run's lock is released by the OS and the next call resumes), "
        "then run the same call again; or pass wait_s=SECONDS (--wait SECONDS) to wait for it, "
        "or choose another out_dir.",
        code="WF413",
        attribute="out_dir",
        value=str(root),
        pid=pid,
        cmdline=cmdline,
    )
