"""CachedDataset: a map-style dataset over a precomputed store, memory-mapped and picklable."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from wellfed.cache._store import (
    FORMAT,
    FORMAT_VERSION,
    MANIFEST_NAME,
    FieldSpec,
    damaged_files,
    read_manifest,
    verify_shard,
)
from wellfed.errors import StateError

__all__ = ["CachedDataset"]


class CachedDataset:
    """A map-style dataset over a store written by ``wellfed.precompute``.

    Reading is zero-copy: every field is a memory-mapped ``.npy`` file (opened copy-on-write,
    so tensors are writable and nothing is copied unless written to), and nothing on the read
    path unpickles: the manifest is JSON and arrays load with ``allow_pickle=False``. Files are
    opened lazily, once per process, so the dataset is safe in DataLoader workers under fork,
    spawn and forkserver; it pickles as its path and options (a few hundred bytes).

    Args:
        path: The store directory (the ``out_dir`` given to ``precompute``).
        fields: Field names to return, as a dict; None returns samples in the source's own
            layout (e.g. ``(output, label)`` when the source gave ``(image, label)``).
        transform: Callable applied to each sample after reading (e.g. a random
            augmentation, which must stay out of the precomputed part); must pickle for
            spawn workers. None: samples as stored.

    Attributes:
        path: The store directory, absolute.
        manifest: The parsed manifest (fingerprints, fields, shards).
        fields: The stored fields (FieldSpec), in order.

    Raises:
        StateError: no store at path (WF406), the store is incomplete (WF406) or of an
            unknown format version (WF407), its manifest is truncated, replaced or of the
            wrong shape (WF412), or a shard file is missing or cut short (WF408; one
            ``stat`` per file at construction). A shard file whose header does not hold
            the recorded dtype and shape raises WF408 when its shard is first read.
        ConfigError: a requested field does not exist (WF409).

    Example:
        >>> ds = wellfed.CachedDataset("cache/sr")            # doctest: +SKIP
        >>> loader = torch.utils.data.DataLoader(ds, batch_size=64, num_workers=2)
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        fields: Sequence[str] | str | None = None,
        transform: Callable[[Any], Any] | None = None,
    ) -> None:
        self.path = str(Path(path).resolve())
        self._fields_arg: tuple[str, ...] | None = (
            (fields,) if isinstance(fields, str) else tuple(fields) if fields is not None else None
        )
        self.transform = transform
        self._load_manifest()

    # -- construction -------------------------------------------------------------------

    def _load_manifest(self) -> None:
        root = Path(self.path)
        if not (root / MANIFEST_NAME).is_file():
            raise StateError(
                f"No precomputed store: path={self.path!r} holds no {MANIFEST_NAME}. "
                "A CachedDataset reads what wellfed.precompute wrote; run precompute with "
                "this out_dir first, or check the path.",
                code="WF406",
                attribute="path",
                value=self.path,
            )
        manifest = read_manifest(root)
        if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
            raise StateError(
                f"Unknown store format: {self.path} has format="
                f"{manifest.get('format')!r} version {manifest.get('format_version')!r}, this "
                f"wellfed reads {FORMAT!r} version {FORMAT_VERSION}. Rebuild the store with "
                "this wellfed (precompute with overwrite=True).",
                code="WF407",
                attribute="format_version",
                value=manifest.get("format_version"),
            )
        if manifest.get("status") != "complete":
            done = sum(1 for p in root.glob("shard-*") if p.is_dir())
            raise StateError(
                f"Incomplete store: {self.path} has status={manifest.get('status')!r} "
                f"({done} shards committed), so some samples are missing (the run that wrote "
                "it was interrupted or failed). Run the same precompute call again: it resumes "
                "from the committed shards.",
                code="WF406",
                attribute="status",
                value=manifest.get("status"),
            )
        damaged = [f for record in manifest["shards"] for f in damaged_files(root, record)]
        if damaged:
            raise _damaged_store(self.path, damaged, "are missing or cut short")
        self.manifest = manifest
        self.fields = tuple(FieldSpec.from_dict(f) for f in manifest["fields"])
        self._rows_per_shard = int(manifest["rows_per_shard"])
        self._len = int(manifest["num_samples"])
        self._shard_dirs = [str(s["dir"]) for s in manifest["shards"]]
        self._shard_rows = [int(s["rows"]) for s in manifest["shards"]]
        names = [f.name for f in self.fields]
        if self._fields_arg is not None:
            missing = [n for n in self._fields_arg if n not in names]
            if missing:
                from wellfed.errors import ConfigError

                raise ConfigError(
                    f"Unknown field: fields={list(self._fields_arg)!r} names {missing}, which "
                    f"the store at {self.path} does not hold. Choose from {names}.",
                    code="WF409",
                    attribute="fields",
                    value=list(self._fields_arg),
                )
        self._layout = manifest["layout"]
        self._pid = -1
        self._open: dict[int, dict[str, Any]] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "fields": self._fields_arg, "transform": self.transform}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.path = state["path"]
        self._fields_arg = state["fields"]
        self.transform = state["transform"]
        self._load_manifest()

    def __repr__(self) -> str:
        desc = ", ".join(
            f"{f.name}: {f.dtype}{list(f.shape) if f.shape is not None else '[var]'}"
            for f in self.fields
        )
        return f"CachedDataset({self.path!r}, samples={self._len}, fields=[{desc}])"

    # -- reading ------------------------------------------------------------------------

    def __len__(self) -> int:
        return self._len

    def _shard(self, k: int) -> dict[str, Any]:
        """Memory maps of shard k, opened on first use in this process."""
        pid = os.getpid()
        if pid != self._pid:  # a forked worker: map the files again, in this process
            self._open = {}
            self._pid = pid
        arrays = self._open.get(k)
        if arrays is None:
            arrays = {}
            for spec in self.fields:
                maps = [
                    self._map(k, name, dtype, shape)
                    for name, dtype, shape in _files(spec, self._shard_rows[k])
                ]
                arrays[spec.name] = maps if spec.variable else maps[0]
            self._open[k] = arrays
        return arrays

    def _map(self, k: int, name: str, dtype: str, shape: tuple[int | None, ...]) -> np.ndarray:
        """Memory-map one file of shard k, checking its header against the store's schema.

        ``shape`` is the file's whole shape; a None entry is not checked (the length of a
        variable-shape field's flat data).

        Raises:
            StateError: the file cannot be mapped, or holds another dtype or shape (WF408).
        """
        file = Path(self.path) / self._shard_dirs[k] / name
        try:
            array: np.ndarray = np.load(file, mmap_mode="c", allow_pickle=False)
        except (OSError, ValueError, EOFError) as exc:
            raise _damaged_store(
                self.path, [f"{self._shard_dirs[k]}/{name} ({type(exc).__name__}: {exc})"]
            ) from exc
        if (
            array.dtype != np.dtype(dtype)
            or array.ndim != len(shape)
            or any(w is not None and w != got for w, got in zip(shape, array.shape, strict=True))
        ):
            raise _damaged_store(
                self.path,
                [
                    f"{self._shard_dirs[k]}/{name} (holds {array.dtype}{list(array.shape)}, "
                    f"the store's schema says {np.dtype(dtype)}"
                    f"{['?' if w is None else w for w in shape]})"
                ],
            )
        return array

    def _locate(self, index: int) -> tuple[int, int]:
        if index < 0:
            index += self._len
        if not 0 <= index < self._len:
            raise IndexError(f"index {index} out of range for {self._len} samples")
        return divmod(index, self._rows_per_shard)

    def _assemble(self, values: dict[str, Any]) -> Any:
        if self._fields_arg is not None:
            sample: Any = {name: values[name] for name in self._fields_arg}
        else:
            kind = self._layout["kind"]
            names = self._layout["fields"]
            if kind == "tensor":
                sample = values[names[0]]
            elif kind == "dict":
                sample = {
                    key: values[name] for key, name in zip(self._layout["keys"], names, strict=True)
                }
            else:
                sample = tuple(values[name] for name in names)
        if self.transform is not None:
            sample = self.transform(sample)
        return sample

    def _needed(self) -> tuple[FieldSpec, ...]:
        wanted = set(self._layout["fields"]) if self._fields_arg is None else set(self._fields_arg)
        return tuple(f for f in self.fields if f.name in wanted)

    def __getitem__(self, index: int) -> Any:
        """Return one sample: tensors viewing the memory-mapped files (no copy)."""
        import torch

        k, row = self._locate(int(index))
        arrays = self._shard(k)
        values: dict[str, Any] = {}
        for spec in self._needed():
            if spec.variable:
                data, offsets, shapes = arrays[spec.name]
                a, b = int(offsets[row]), int(offsets[row + 1])
                values[spec.name] = torch.from_numpy(data[a:b].reshape(tuple(shapes[row])))
            else:
                values[spec.name] = torch.from_numpy(arrays[spec.name][row : row + 1]).reshape(
                    spec.shape or ()
                )
        return self._assemble(values)

    def __getitems__(self, indices: Sequence[int]) -> list[Any]:
        """Batched read: one fancy-indexed read per shard and field (DataLoader uses it).

        Returns:
            The samples, in the order of ``indices``.
        """
        import torch

        n = len(indices)
        located = [self._locate(int(i)) for i in indices]
        by_shard: dict[int, list[int]] = {}
        for pos, (k, _) in enumerate(located):
            by_shard.setdefault(k, []).append(pos)
        per_sample: list[dict[str, Any]] = [{} for _ in range(n)]
        for k, positions in by_shard.items():
            arrays = self._shard(k)
            rows = np.array([located[p][1] for p in positions], dtype=np.int64)
            for spec in self._needed():
                if spec.variable:
                    data, offsets, shapes = arrays[spec.name]
                    for p, r in zip(positions, rows, strict=True):
                        a, b = int(offsets[r]), int(offsets[r + 1])
                        per_sample[p][spec.name] = torch.from_numpy(
                            data[a:b].reshape(tuple(shapes[r]))
                        )
                else:
                    block = torch.from_numpy(np.ascontiguousarray(arrays[spec.name][rows]))
                    for p, t in zip(positions, block.unbind(0), strict=True):
                        per_sample[p][spec.name] = t
        return [self._assemble(values) for values in per_sample]

    # -- checking -----------------------------------------------------------------------

    def summary(self) -> dict[str, Any]:
        """What the store holds: path, samples, shards, bytes (on disk), fields, fingerprint.

        Returns:
            A JSON-ready dict (``wellfed precompute --json`` prints it, with ``elapsed_s``).
        """
        shards = self.manifest["shards"]
        return {
            "path": self.path,
            "samples": len(self),
            "shards": len(shards),
            "bytes": sum(f["bytes"] for s in shards for f in s["files"].values()),
            "fields": [f.to_dict() for f in self.fields],
            "fingerprint": self.manifest["fingerprint"],
        }

    def verify(self) -> None:
        """Check every file's size and SHA-256 against the shard records.

        Raises:
            StateError: files differ from their records (WF408), named.
        """
        bad: list[str] = []
        for record in self.manifest["shards"]:
            bad.extend(verify_shard(Path(self.path), record))
        if bad:
            shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
            raise StateError(
                f"Corrupt store: {len(bad)} file(s) in {self.path} differ from their recorded "
                f"size or SHA-256 ({shown}). The disk or another program changed them; rebuild "
                "the store with precompute(..., overwrite=True) after deleting it.",
                code="WF408",
                attribute="files",
                value=bad,
            )


def _files(spec: FieldSpec, rows: int) -> list[tuple[str, str, tuple[int | None, ...]]]:
    """(file name, dtype, shape) of each file of a field in a shard of ``rows`` rows; a None
    entry of a shape is not checked."""
    if not spec.variable:
        assert spec.shape is not None
        return [(spec.files()[0], spec.dtype, (rows, *spec.shape))]
    data, offsets, shapes = spec.files()
    return [
        (data, spec.dtype, (None,)),
        (offsets, "int64", (rows + 1,)),
        (shapes, "int64", (rows, spec.ndim)),
    ]


def _damaged_store(path: str, files: list[str], what: str = "cannot be read") -> StateError:
    """WF408: shard files that differ from what the manifest records."""
    shown = ", ".join(files[:5]) + (f" and {len(files) - 5} more" if len(files) > 5 else "")
    return StateError(
        f"Damaged store: {len(files)} file(s) in {path} {what} ({shown}), so their samples "
        "cannot be read; the disk or another program changed them. Run the same precompute "
        "call again: it recomputes the shards whose files are missing or cut short (for "
        "other damage, delete those shard directories first); or delete the store and "
        "rebuild it.",
        code="WF408",
        attribute="files",
        value=files,
    )
