"""What every precompute engine shares: fingerprints, the batch processor, checks and the writer.

An engine turns the source into batches of ``fn`` outputs; this module gives them a common
shape (named numpy fields), checks them against the store's schema, and writes them into
shards from a background thread so that writing overlaps computing.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import queue
import re
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from wellfed._digest import feed, qualname
from wellfed.cache._store import FieldSpec, ShardBuilder, is_disk_full
from wellfed.errors import ConfigError, PrecomputeError, WellfedError

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_SHARD_BYTES",
    "BatchProcessor",
    "PrecomputeError",
    "ShardWriter",
    "fn_fingerprint",
    "rows_per_shard",
    "source_fingerprint",
]

#: Target size of one shard, bytes. Source: litdata's ``optimize(chunk_bytes="64MB")`` and
#: Mosaic Streaming's ``MDSWriter(size_limit=1 << 26)`` defaults; large enough that per-file
#: costs (open, mmap, fsync) vanish, small enough that a kill loses at most one shard of work.
DEFAULT_SHARD_BYTES = 64 * 2**20

#: Source items hashed into the source fingerprint (first, last and evenly spaced between).
#: Reading them costs a few __getitem__ calls; a change to the data usually shows in them.
FINGERPRINT_ITEMS = 8

#: When fn raises on a batch, at most this many single-sample calls find the failing samples.
MAX_BISECT_SAMPLES = 256

_SAFE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}$")


# ----------------------------------------------------------------------------- fingerprints


def _item_hash(dataset: Any, index: int) -> str:
    digest = hashlib.sha256()
    feed(digest, dataset[index])
    return digest.hexdigest()


def source_fingerprint(dataset: Any, n: int) -> dict[str, Any]:
    """Fingerprint of the source: type, length and a hash of FINGERPRINT_ITEMS items.

    Raises:
        ConfigError: the source returns different values for the same index (WF402): a random
            transform, whose frozen draw precompute would store and a resume would mix.
    """
    if n <= 0:
        picks: list[int] = []
    elif n <= FINGERPRINT_ITEMS:
        picks = list(range(n))
    else:
        picks = sorted(
            {round(i * (n - 1) / (FINGERPRINT_ITEMS - 1)) for i in range(FINGERPRINT_ITEMS)}
        )
    digest = hashlib.sha256()
    hashes: dict[int, str] = {}
    for i in picks:
        hashes[i] = _item_hash(dataset, i)
        digest.update(f"{i}:{hashes[i]}".encode())
    if picks:
        again = _item_hash(dataset, picks[0])
        if again != hashes[picks[0]]:
            raise ConfigError(
                f"Random source: dataset[{picks[0]}] returned different values on two reads "
                f"({type(dataset).__name__}), most likely a random transform. Precompute "
                "would store one random draw as if it were data, and a resumed run would mix "
                "draws. Move random augmentation after the cache "
                "(CachedDataset(path, transform=...)) and precompute the deterministic part.",
                code="WF402",
                attribute="dataset",
                value=type(dataset).__name__,
            )
    return {
        "type": qualname(dataset),
        "length": n,
        "items_sha256": digest.hexdigest(),
        "items": picks,
    }


def fn_fingerprint(fn: Any, version: str | None) -> dict[str, Any]:
    """Fingerprint of fn: qualified name, a hash of a Module's state_dict, the user's version."""
    import torch

    params = None
    if isinstance(fn, torch.nn.Module):
        digest = hashlib.sha256()
        for name, tensor in fn.state_dict().items():
            digest.update(name.encode())
            feed(digest, tensor)
        params = digest.hexdigest()
    return {"qualname": qualname(fn), "params_sha256": params, "version": version}


def fingerprint_diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """Dotted keys whose values differ between two fingerprints, e.g. ``fn.params_sha256``."""
    out: list[str] = []
    for part in sorted(set(old) | set(new)):
        a, b = old.get(part), new.get(part)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            out.extend(f"{part}.{k}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k))
        elif a != b:
            out.append(part)
    return out


# ----------------------------------------------------------------------------- the batch processor


def _slice(batch: Any, i: int) -> Any:
    import torch

    if isinstance(batch, (torch.Tensor, np.ndarray)):
        return batch[i : i + 1]
    if isinstance(batch, Mapping):
        return {k: _slice(v, i) for k, v in batch.items()}
    if isinstance(batch, tuple):
        return tuple(_slice(v, i) for v in batch)
    if isinstance(batch, list):
        return (
            [_slice(v, i) for v in batch]
            if batch
            and isinstance(batch[0], (torch.Tensor, np.ndarray, Mapping, tuple, list))
            and len(batch) != 1
            else batch[i : i + 1]
        )
    return batch


def _to_device(batch: Any, device: Any) -> Any:
    import torch

    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(v, device) for v in batch)
    return batch


def _as_numpy(value: Any, name: str, indices: Sequence[int]) -> np.ndarray | list[np.ndarray]:
    """A batch field as a numpy array (rows, ...) or a list of per-sample arrays."""
    import torch

    def one(v: Any) -> np.ndarray:
        if isinstance(v, torch.Tensor):
            t = v.detach()
            if t.dtype == torch.bfloat16 or (t.is_complex() and t.dtype == torch.complex32):
                raise ConfigError(
                    f"Unstorable output: field {name!r} has dtype={t.dtype}, which NumPy cannot "
                    "hold, so the store could not be read without torch. Return "
                    "`.float()` (or `.half()`) from fn.",
                    code="WF409",
                    attribute=name,
                    value=str(t.dtype),
                )
            return np.asarray(t.cpu().numpy())
        a = np.asarray(v)
        if a.dtype == object or a.dtype.kind in "USV":
            raise ConfigError(
                f"Unstorable field: {name!r} holds {type(v).__name__} values (dtype "
                f"{a.dtype}), but the store keeps numeric arrays only, so it can be "
                "memory-mapped. Drop it (keep_source=False, or input=None with fn returning "
                "only tensors) or encode it as numbers.",
                code="WF409",
                attribute=name,
                value=str(a.dtype),
            )
        return a

    if isinstance(value, list) and value and not isinstance(value[0], (int, float, bool)):
        return [one(v) for v in value]
    return one(value)


@dataclass
class ProcessedBatch:
    """One batch after fn: named numpy fields and how samples are laid out."""

    indices: list[int]
    fields: dict[str, np.ndarray | list[np.ndarray]]
    origins: dict[str, str]
    layout: dict[str, Any]


class BatchProcessor:
    """Apply fn to collated batches in one process (the main process, or a Ray actor).

    Args:
        fn: Callable on a batch, or a torch.nn.Module (moved to device, eval mode, called
            under inference mode on first use).
        device: torch device string ("cpu", "cuda", "cuda:1").
        input: Which part of each batch fn gets: None (all of it), an int position of a
            tuple sample, a key of a dict sample, or "auto" (position 0 of a tuple sample,
            else all of it).
        keep_source: Store the batch's other fields (labels) beside fn's outputs.
    """

    def __init__(self, fn: Any, device: str, input: Any, keep_source: bool) -> None:
        self.fn = fn
        self.device = device
        self.input = input
        self.keep_source = keep_source
        self._ready = False

    def prepare(self) -> None:
        """Move a Module fn to the device in eval mode (done on the first call otherwise)."""
        import torch

        if self._ready:
            return
        if isinstance(self.fn, torch.nn.Module):
            self.fn = self.fn.to(self.device).eval()
        self._ready = True

    def _split(self, batch: Any) -> tuple[Any, list[tuple[str, Any]], dict[str, Any]]:
        """(fn input, kept source fields, layout template) for a collated batch."""

        sel = self.input
        if isinstance(batch, (tuple, list)) and not (batch and isinstance(batch[0], (int, float))):
            if sel == "auto":
                sel = 0
            if sel is None:
                return batch, [], {"kind": "whole"}
            if not isinstance(sel, int) or not -len(batch) <= sel < len(batch):
                raise ConfigError(
                    f"Bad input selection: input={sel!r} does not name a position of the "
                    f"source's {len(batch)}-field tuple samples. Pass an int position "
                    f"(0..{len(batch) - 1}) or None (fn gets the whole batch).",
                    code="WF409",
                    attribute="input",
                    value=sel,
                )
            sel %= len(batch)
            kept = [(f"source_{j}", v) for j, v in enumerate(batch) if j != sel]
            return (
                batch[sel],
                kept if self.keep_source else [],
                {"kind": "tuple", "at": sel, "n": len(batch)},
            )
        if isinstance(batch, Mapping):
            if sel in ("auto", None):
                return batch, [], {"kind": "whole"}
            if sel not in batch:
                raise ConfigError(
                    f"Bad input selection: input={sel!r} is not a key of the source's dict "
                    f"samples (keys: {sorted(map(str, batch))}). Pass one of them, or None.",
                    code="WF409",
                    attribute="input",
                    value=sel,
                )
            kept = [(str(k), v) for k, v in batch.items() if k != sel]
            return (
                batch[sel],
                kept if self.keep_source else [],
                {"kind": "dict", "at": str(sel), "keys": [str(k) for k in batch]},
            )
        return batch, [], {"kind": "whole"}

    def call_fn(self, fn_input: Any) -> Any:
        """fn on one input batch, on the device, without autograd."""
        import torch

        if not self._ready:
            self.prepare()
        with torch.inference_mode():
            return self.fn(_to_device(fn_input, self.device))

    def __call__(self, batch: Any, indices: Sequence[int]) -> ProcessedBatch:
        """Run fn on a batch and name its fields.

        Raises:
            PrecomputeError: fn raised (WF403), naming the samples whose single-sample call
                raises too (or the whole batch's indices).
        """
        fn_input, kept, template = self._split(batch)
        try:
            out = self.call_fn(fn_input)
        except Exception as exc:
            bad = self._failing_samples(fn_input, len(indices), indices)
            alone = f"alone, samples {_ranges(bad)} raise too" if bad else "no sample raises alone"
            raise PrecomputeError(
                f"fn raised {type(exc).__name__}: {exc} on the batch of samples "
                f"{_ranges(indices)}; {alone}. "
                "fn must accept every batch the source gives; fix fn or the samples named "
                "(dataset[i] shows them), then run the same call again: committed shards are kept.",
                code="WF403",
                indices=bad or list(indices),
            ) from exc
        outputs = _name_outputs(out)
        return _combine(outputs, kept, template, list(indices))

    def _failing_samples(self, fn_input: Any, rows: int, indices: Sequence[int]) -> list[int]:
        bad: list[int] = []
        for i in range(min(rows, MAX_BISECT_SAMPLES)):
            try:
                self.call_fn(_slice(fn_input, i))
            except Exception:
                bad.append(int(indices[i]))
        return bad


def _ranges(indices: Sequence[int]) -> str:
    """``[3, 4, 5, 9]`` -> ``"3-5, 9"``."""
    if not indices:
        return "(none)"
    parts: list[str] = []
    ordered = sorted(indices)
    lo = prev = ordered[0]
    for i in [*ordered[1:], None]:
        if i is not None and i == prev + 1:
            prev = i
            continue
        parts.append(f"{lo}" if lo == prev else f"{lo}-{prev}")
        if i is not None:
            lo = prev = i
    return ", ".join(parts)


def _name_outputs(out: Any) -> list[tuple[str, Any, str]]:
    """fn's output as (field name, value, key) triples; the key is what the user sees."""
    import torch

    if isinstance(out, (torch.Tensor, np.ndarray, list)):
        return [("output", out, "output")]
    if isinstance(out, tuple):
        return [(f"output_{j}", v, str(j)) for j, v in enumerate(out)]
    if isinstance(out, Mapping):
        return [(str(k), v, str(k)) for k, v in out.items()]
    raise ConfigError(
        f"Unstorable output: fn returned {type(out).__name__}, not a tensor, a tuple of "
        "tensors, a dict of tensors or a list of per-sample tensors. Return one of those.",
        code="WF409",
        attribute="fn",
        value=type(out).__name__,
    )


def _combine(
    outputs: list[tuple[str, Any, str]],
    kept: list[tuple[str, Any]],
    template: Mapping[str, Any],
    indices: list[int],
) -> ProcessedBatch:
    fields: dict[str, Any] = {}
    origins: dict[str, str] = {}
    kind = template["kind"]
    out_names = [name for name, _, _ in outputs]
    if kind == "whole":
        if (len(outputs) == 1 and isinstance(outputs[0][1], (list,))) or (
            len(outputs) == 1 and outputs[0][0] == "output"
        ):
            layout: dict[str, Any] = {"kind": "tensor", "fields": out_names}
        elif outputs and outputs[0][0].startswith("output_"):
            layout = {"kind": "tuple", "fields": out_names}
        else:
            layout = {"kind": "dict", "fields": out_names, "keys": [key for _, _, key in outputs]}
    elif kind == "tuple":
        names: list[str] = []
        kept_iter = iter(kept)
        kept_names = {name for name, _ in kept}
        for j in range(int(template["n"])):
            if j == template["at"]:
                names.extend(out_names)
            elif f"source_{j}" in kept_names:
                names.append(next(kept_iter)[0])
        layout = {"kind": "tuple", "fields": names}
    else:  # dict source with input=key: the key holds fn's (single) output
        if len(outputs) != 1:
            raise ConfigError(
                f"Unstorable output: with input={template['at']!r} fn must return one tensor "
                f"to put under that key, but returned {len(outputs)} fields. Return one tensor, "
                "or use input=None and return a dict.",
                code="WF409",
                attribute="fn",
                value=len(outputs),
            )
        outputs = [(template["at"], outputs[0][1], template["at"])]
        out_names = [template["at"]]
        keys = [k for k in template["keys"] if k == template["at"] or any(k == n for n, _ in kept)]
        layout = {"kind": "dict", "fields": keys, "keys": keys}
    for name, value, _ in outputs:
        fields[name] = value
        origins[name] = "fn"
    for name, value in kept:
        if name in fields:
            raise ConfigError(
                f"Field name clash: fn's output {name!r} and the source's field {name!r} share "
                "a name. Rename fn's output.",
                code="WF409",
                attribute="fn",
                value=name,
            )
        fields[name] = value
        origins[name] = "source"
    for name in fields:
        if not _SAFE_NAME.match(name):
            raise ConfigError(
                f"Bad field name: {name!r} cannot be a file name in the store. Use letters, "
                "digits, '_', '.' and '-' (at most 100 characters), not starting with '.' "
                "or '-'.",
                code="WF409",
                attribute="field",
                value=name,
            )
    numpy_fields = {name: _as_numpy(v, name, indices) for name, v in fields.items()}
    return ProcessedBatch(indices=indices, fields=numpy_fields, origins=origins, layout=layout)


# ----------------------------------------------------------------------------- schema checks


def infer_specs(batch: ProcessedBatch) -> tuple[FieldSpec, ...]:
    """The store's fields, from the first batch: fixed shape for arrays, variable for lists."""
    specs = []
    for name, value in batch.fields.items():
        if isinstance(value, list):
            first = value[0] if value else np.zeros(0)
            specs.append(FieldSpec(name, str(first.dtype), None, first.ndim, batch.origins[name]))
        else:
            specs.append(
                FieldSpec(
                    name,
                    str(value.dtype),
                    tuple(int(s) for s in value.shape[1:]),
                    value.ndim - 1,
                    batch.origins[name],
                )
            )
    return tuple(specs)


def check_batch(
    batch: ProcessedBatch, specs: Sequence[FieldSpec], layout: Mapping[str, Any]
) -> None:
    """Raise PrecomputeError (WF404) when a batch does not match the store's schema."""
    rows = len(batch.indices)
    names = [s.name for s in specs]
    if list(batch.fields) != names or dict(batch.layout) != dict(layout):
        _inconsistent(
            batch.indices,
            f"fn's outputs are fields {list(batch.fields)} laid out as {batch.layout}, but "
            f"earlier batches gave {names} laid out as {dict(layout)}",
        )
    for spec in specs:
        value = batch.fields[spec.name]
        if spec.variable:
            if not isinstance(value, list) or len(value) != rows:
                got = f"a list of {len(value)}" if isinstance(value, list) else "an array"
                _inconsistent(
                    batch.indices,
                    f"field {spec.name!r} is {got}, expected a list of {rows} per-sample arrays",
                )
            bad = [
                batch.indices[i]
                for i, v in enumerate(value)
                if str(v.dtype) != spec.dtype or v.ndim != spec.ndim
            ]
            if bad:
                v = value[batch.indices.index(bad[0])]
                _inconsistent(
                    bad,
                    f"field {spec.name!r} has dtype {v.dtype} and {v.ndim} dims, expected "
                    f"{spec.dtype} and {spec.ndim}",
                )
            continue
        if isinstance(value, list):
            _inconsistent(
                batch.indices, f"field {spec.name!r} is a list, expected an array of {spec.dtype}"
            )
        assert isinstance(value, np.ndarray)
        if value.ndim < 1 or value.shape[0] != rows:
            _inconsistent(
                batch.indices,
                f"field {spec.name!r} has shape {tuple(value.shape)}: its first dimension is not "
                f"the batch's {rows} samples",
            )
        shape = tuple(int(s) for s in value.shape[1:])
        if str(value.dtype) != spec.dtype or shape != spec.shape:
            _inconsistent(
                batch.indices,
                f"field {spec.name!r} has per-sample shape {shape} and dtype {value.dtype}, "
                f"expected {spec.shape} and {spec.dtype} (from the first batch)",
            )


def _inconsistent(indices: Sequence[int], what: str) -> None:
    raise PrecomputeError(
        f"Inconsistent fn output for samples {_ranges(indices)}: {what}. A store holds one "
        "dtype and shape per field; have fn return the same dtype and shape for every batch, "
        "or return a list of per-sample tensors for a variable-shape field.",
        code="WF404",
        indices=list(indices),
    )


def sample_bytes(batch: ProcessedBatch) -> float:
    """Stored bytes per sample in this batch."""
    total = 0
    for value in batch.fields.values():
        total += sum(v.nbytes for v in value) if isinstance(value, list) else value.nbytes
    return total / max(1, len(batch.indices))


def rows_per_shard(batch_size: int, bytes_per_sample: float, shard_bytes: int) -> int:
    """Rows per shard: a multiple of batch_size near shard_bytes (so batches never straddle)."""
    batches = max(1, int(shard_bytes // max(1.0, bytes_per_sample * batch_size)))
    return batch_size * batches


# ----------------------------------------------------------------------------- the writer


class ShardWriter:
    """Writes checked batches to shards from a background thread; commits each when full.

    Batches arrive in index order, each inside one shard (rows_per_shard is a multiple of
    the batch size), and go to the disk as they arrive (``ShardBuilder``). A shard cut short
    by an error is discarded, never committed. ``put`` blocks when ``max_pending`` batches
    wait, so memory stays bounded and a slow disk slows the producer rather than filling RAM.

    Args:
        root: The store directory.
        specs: The store's fields.
        num_samples: Samples in the whole store.
        rows: Rows per shard.
        max_pending: Batches queued for the writer at most.
        on_commit: Called (in the writer thread) with each committed shard's record.
    """

    def __init__(
        self,
        root: Path,
        specs: Sequence[FieldSpec],
        num_samples: int,
        rows: int,
        *,
        max_pending: int = 4,
        on_commit: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.root = root
        self.specs = tuple(specs)
        self.n = num_samples
        self.rows = rows
        self.on_commit = on_commit
        self.error: BaseException | None = None
        self.committed: list[int] = []
        self._queue: queue.Queue[ProcessedBatch | None] = queue.Queue(maxsize=max_pending)
        self._thread = threading.Thread(target=self._run, name="wellfed-shard-writer", daemon=True)
        self._thread.start()

    def shard_rows(self, k: int) -> int:
        """Rows in shard k (the last one may be short)."""
        return min(self.rows, self.n - k * self.rows)

    def put(self, batch: ProcessedBatch) -> None:
        """Queue a batch; re-raise the writer's error if it failed."""
        while True:
            self.raise_if_failed()
            try:
                self._queue.put(batch, timeout=0.2)
                return
            except queue.Full:
                continue

    def raise_if_failed(self) -> None:
        """Re-raise (wrapped) what stopped the writer thread."""
        if self.error is not None:
            raise self._wrap(self.error)

    def close(self) -> None:
        """Wait for every queued batch to be committed; re-raise the writer's error."""
        while self._thread.is_alive():
            try:
                self._queue.put(None, timeout=0.2)
                break
            except queue.Full:
                if self.error is not None:
                    break
        self._thread.join()
        self.raise_if_failed()

    def abort(self) -> None:
        """Stop without committing the shard in progress (used when the producer failed)."""
        self.error = self.error or _Aborted()
        try:
            while True:
                self._queue.get_nowait()
        except queue.Empty:
            pass
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(None)
        self._thread.join(timeout=60)

    def _wrap(self, exc: BaseException) -> BaseException:
        if isinstance(exc, _Aborted):
            return RuntimeError("shard writer aborted")
        if is_disk_full(exc):
            import shutil

            try:
                free = shutil.disk_usage(self.root).free
            except OSError:
                free = -1
            err = PrecomputeError(
                f"Disk full while writing the store: out_dir={str(self.root)!r} has "
                f"{free} bytes free, and a shard of {self.rows} samples did not fit "
                f"({type(exc).__name__}: {exc}). The {len(self.committed)} shard(s) committed "
                "this run are kept and the store stays resumable. Free space (or pick another "
                "out_dir), then run the same call again.",
                code="WF405",
                indices=[],
                free_bytes=free,
            )
            err.__cause__ = exc
            return err
        if isinstance(exc, WellfedError):
            return exc
        err2 = PrecomputeError(
            f"Writing the store failed: {type(exc).__name__}: {exc} in {self.root}. Committed "
            "shards are kept; fix the cause and run the same call again.",
            code="WF405",
            indices=[],
        )
        err2.__cause__ = exc
        return err2

    def _run(self) -> None:
        builder: ShardBuilder | None = None
        try:
            while True:
                batch = self._queue.get()
                if batch is None or self.error is not None:
                    return
                k = batch.indices[0] // self.rows
                if builder is not None and builder.index != k:
                    raise RuntimeError(
                        f"internal: shard {builder.index} incomplete when shard {k} began"
                    )
                if builder is None:
                    builder = ShardBuilder(
                        self.root, k, k * self.rows, self.shard_rows(k), self.specs
                    )
                builder.append(batch.fields)
                if builder.appended == builder.rows:
                    record = builder.commit()
                    builder = None
                    self.committed.append(k)
                    logger.debug("committed shard %d (%d rows)", k, record["rows"])
                    if self.on_commit is not None:
                        self.on_commit(record)
        except BaseException as exc:
            self.error = exc
            # Unblock a producer waiting on a full queue.
            try:
                while True:
                    self._queue.get_nowait()
            except queue.Empty:
                pass
        finally:
            if builder is not None:  # a partial shard: never committed
                builder.discard()


class _Aborted(Exception):
    pass


def batches_for(missing: Iterable[int], rows: int, n: int, batch_size: int) -> list[list[int]]:
    """Index batches covering the missing shards, aligned as an uninterrupted run aligns them."""
    out: list[list[int]] = []
    for k in missing:
        for lo in range(k * rows, min((k + 1) * rows, n), batch_size):
            out.append(list(range(lo, min(lo + batch_size, (k + 1) * rows, n))))
    return out


def fingerprint_sha256(fingerprint: Mapping[str, Any]) -> str:
    """SHA-256 of a fingerprint's canonical JSON."""
    return hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()


def ceil_div(a: int, b: int) -> int:
    """Integer ceiling of a / b."""
    return -(-a // b) if b else 0
