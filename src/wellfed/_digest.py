"""Content hashes of samples, batches and arrays: the one implementation (bottom layer).

repro compares batches by ``batch_digest``, the doctor's live probe compares worker outputs by
it, and precompute fingerprints its source and ``fn`` with ``feed`` into a SHA-256. The bytes
fed are stable across processes and releases (a precompute store's fingerprint depends on
them): tensors and arrays by dtype, shape and raw bytes; mappings by sorted key; lists and
tuples in order (marked apart); scalars by type and value; PIL images by mode, size and
pixels. Other objects are fed by their type's qualified name (``objects="type"``: a ``repr``
may hold a memory address) or by ``repr`` (``objects="repr"``, for comparisons inside one run).
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Mapping
from typing import Any, Literal

__all__ = ["batch_digest", "feed", "qualname"]

#: Nesting deeper than this is fed as a marker, so a self-referencing structure terminates.
MAX_DEPTH = 20


def qualname(obj: Any) -> str:
    """``module.QualName`` of a class, a function (through ``functools.partial``) or a type."""
    if isinstance(obj, functools.partial):
        return f"functools.partial({qualname(obj.func)})"
    target = (
        obj
        if isinstance(obj, type) or (callable(obj) and hasattr(obj, "__qualname__"))
        else type(obj)
    )
    name = getattr(target, "__qualname__", type(target).__name__)
    return f"{getattr(target, '__module__', '?')}.{name}"


def feed(h: Any, value: Any, *, objects: Literal["type", "repr"] = "type", depth: int = 0) -> None:
    """Feed ``value``'s content into ``h`` (any ``hashlib`` object), recursively.

    Args:
        h: The hash object (``update(bytes)``).
        value: A tensor, array, mapping, list/tuple, scalar, PIL image or any object.
        objects: How other objects are fed: "type" (qualified name of the type; stable across
            processes) or "repr".
        depth: Nesting level (internal).
    """
    import numpy as np
    import torch

    if depth > MAX_DEPTH:
        h.update(b"<deep>")
        return
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        # reshape(-1) first: a 0-dim tensor cannot be viewed as bytes directly.
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    elif isinstance(value, np.ndarray):
        a = np.ascontiguousarray(value)
        h.update(f"A{a.dtype}{a.shape}".encode())
        if a.dtype != object:
            h.update(a.tobytes())
        else:
            for v in a.reshape(-1):
                feed(h, v, objects=objects, depth=depth + 1)
    elif isinstance(value, Mapping):
        h.update(b"{")
        for key in sorted(value, key=repr):
            h.update(repr(key).encode())
            feed(h, value[key], objects=objects, depth=depth + 1)
        h.update(b"}")
    elif isinstance(value, (list, tuple)):
        h.update(b"(" if isinstance(value, tuple) else b"[")
        for v in value:
            feed(h, v, objects=objects, depth=depth + 1)
        h.update(b")")
    elif isinstance(value, (int, float, bool, str, bytes, type(None))):
        h.update(f"{type(value).__name__}:{value!r}".encode())
    elif hasattr(value, "tobytes") and hasattr(value, "size") and hasattr(value, "mode"):
        h.update(f"PIL{value.mode}{value.size}".encode())  # a PIL image
        h.update(value.tobytes())
    elif objects == "repr":
        h.update(repr(value).encode())
    else:
        h.update(qualname(value).encode())


def batch_digest(batch: Any) -> str:
    """blake2b-128 hex digest of a batch's content (see ``feed``; other objects by ``repr``)."""
    h = hashlib.blake2b(digest_size=16)
    feed(h, batch, objects="repr")
    return h.hexdigest()
