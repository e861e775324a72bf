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

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "MANIFEST_NAME",
    "FieldSpec",
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
    """Read a store's manifest (plain JSON: opening a store never runs code)."""
    with open(path / MANIFEST_NAME, encoding="utf-8") as f:
        data: dict[str, Any] = json.load(f)
    return data


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


def _write_npy(path: Path, array: np.ndarray) -> dict[str, Any]:
    """Write one .npy file, fsync it, and return its size and sha256 (hashed while written)."""
    array = np.ascontiguousarray(array)
    header_buf = _NpyBuffer()
    np.lib.format.write_array_header_1_0(
        header_buf, np.lib.format.header_data_from_array_1_0(array)
    )
    header = header_buf.getvalue()
    digest = hashlib.sha256(header)
    data = memoryview(array.reshape(-1).view(np.uint8).data) if array.size else memoryview(b"")
    digest.update(data)
    write_file(path, header, data)
    return {"bytes": len(header) + data.nbytes, "sha256": digest.hexdigest()}


class _NpyBuffer:
    """A minimal file-like sink for numpy's header writer."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def write(self, data: bytes) -> int:
        self.parts.append(bytes(data))
        return len(data)

    def getvalue(self) -> bytes:
        return b"".join(self.parts)


def write_file(path: Path, header: bytes, data: memoryview) -> None:
    """Write header + data to a new file and fsync it (tests replace this to inject ENOSPC)."""
    with open(path, "wb") as f:
        f.write(header)
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def is_disk_full(exc: BaseException) -> bool:
    """True for ENOSPC (no space) and EDQUOT (quota exceeded)."""
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


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
    final = root / shard_dir_name(index)
    tmp = root / f"{TMP_PREFIX}{shard_dir_name(index)}.{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    rows = -1
    files: dict[str, Any] = {}
    try:
        tmp.mkdir()
        for spec in specs:
            col = columns[spec.name]
            if spec.variable:
                parts = [np.ascontiguousarray(a, dtype=spec.dtype) for a in col]
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
                arrays: tuple[np.ndarray, ...] = (data, offsets, shapes)
            else:
                arr = np.asarray(col)
                n = int(arr.shape[0])
                arrays = (arr,)
            if rows not in (-1, n):
                raise ValueError(f"shard {index}: field {spec.name} has {n} rows, expected {rows}")
            rows = n
            for name, arr in zip(spec.files(), arrays, strict=True):
                files[name] = _write_npy(tmp / name, arr)
        record = {
            "dir": final.name,
            "index": index,
            "start": start,
            "rows": rows,
            "files": files,
        }
        rec_text = json.dumps(record, indent=1, sort_keys=True).encode() + b"\n"
        write_file(tmp / SHARD_RECORD, rec_text, memoryview(b""))
        _fsync_dir(tmp)
        if final.exists():  # a stale copy from another run of the same fingerprint
            shutil.rmtree(final)
        os.rename(tmp, final)
        _fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return record


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
