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
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from wellfed.errors import StateError

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "MANIFEST_NAME",
    "FieldSpec",
    "ShardBuilder",
    "commit_shard",
    "is_store",
    "read_manifest",
    "shard_dir_name",
    "write_manifest",
]

FORMAT = "wellfed-cache"
FORMAT_VERSION = 1
MANIFEST_NAME = "wellfed-cache.json"
SHARD_RECORD = "shard.json"
TMP_PREFIX = ".tmp-"

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

    Raises:
        StateError: the manifest is not a JSON object (truncated, replaced, not UTF-8): WF412.
    """
    file = path / MANIFEST_NAME
    try:
        with open(file, encoding="utf-8") as f:
            data = json.load(f)
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
        raise _corrupt_manifest(file, f"{type(exc).__name__}: {exc}") from exc
    if not isinstance(data, dict):
        raise _corrupt_manifest(file, f"it holds a JSON {type(data).__name__}, not an object")
    return data


def _corrupt_manifest(file: Path, why: str) -> StateError:
    return StateError(
        f"Corrupt store manifest: {str(file)!r} cannot be read as a wellfed manifest ({why}); "
        "it was truncated or replaced, so the store's shards cannot be trusted. Rebuild it: "
        "run the same precompute call with overwrite=True (--overwrite), which deletes only "
        "the store's own files (the manifest, shard-* and temporaries).",
        code="WF412",
        attribute="manifest",
        value=str(file),
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
