"""A runtime guard: dataset attributes the program changes while workers hold their copies.

Each worker process gets its own copy of the dataset when it starts (pickled under spawn and
forkserver, copied-on-write under fork). An attribute the training loop assigns afterwards
(``dataset.img_size = s`` every ten batches for multi-scale training, ``dataset.pseudo_labels
= ...`` between rounds) changes the main process's copy only: the workers go on loading with
the value they started with, until they restart (the next epoch without persistent workers;
never with ``persistent_workers=True``). No method of the dataset writes such an attribute, so
the doctor's static checks cannot see it; ``wellfed watch`` can, because it runs the program.

How: when a loader starts workers, ``snapshot`` takes a fingerprint of the dataset's instance
attributes (the value of scalars, strings and short tuples of them; the identity and shape of
anything else, so a reassigned array or list is seen and an in-place edit is not). Every
batch's hand-over (in the training thread, a few microseconds: ``_session._on_batch``), the
sampler thread and every epoch's end compare the dataset with it (``changes``). A changed attribute
is reported when the dataset's worker code reads it (``worker_reads``: the doctor's reading of
``__getitem__`` and the methods it calls, plus a ``collate_fn`` bound to the dataset); when
that code is not read (a library's class: torchvision, Hugging Face...), every change of a
public attribute (no leading underscore) is reported, and the report says the reading is
unknown.
"""

from __future__ import annotations

from typing import Any

__all__ = ["changes", "describe", "snapshot", "worker_reads"]

_SCALARS = (bool, int, float, complex, str, bytes, type(None))
#: Strings and bytes up to this long are compared by value; longer ones by identity.
_MAX_VALUE_LEN = 256
#: Tuples of scalars up to this long are compared by value.
_MAX_TUPLE = 16


def _fingerprint(value: Any) -> tuple[Any, ...]:
    if isinstance(value, _SCALARS):
        if isinstance(value, (str, bytes)) and len(value) > _MAX_VALUE_LEN:
            return ("id", id(value))
        return ("value", value)
    if (
        isinstance(value, tuple)
        and len(value) <= _MAX_TUPLE
        and all(isinstance(v, _SCALARS) for v in value)
    ):
        return ("value", value)
    shape = getattr(value, "shape", None)
    try:
        shape = tuple(shape) if shape is not None else None
    except TypeError:
        shape = None
    return ("id", id(value), shape)


def _attrs(dataset: Any) -> list[tuple[str, Any]]:
    attrs = getattr(dataset, "__dict__", None)
    if not isinstance(attrs, dict):
        return []
    for _ in range(3):  # the training thread may assign while this thread reads
        try:
            return list(attrs.items())
        except RuntimeError:
            continue
    return []


def snapshot(dataset: Any) -> dict[str, tuple[Any, ...]]:
    """The fingerprint of each instance attribute of ``dataset`` (see the module docstring).

    A ``wellfed.SharedState`` (read live by the workers) and private dunder names are left
    out.
    """
    out: dict[str, tuple[Any, ...]] = {}
    for name, value in _attrs(dataset):
        if name.startswith("__") or getattr(value, "__wellfed_shared_state__", False) is True:
            continue
        out[name] = _fingerprint(value)
    return out


def _show(value: Any) -> str:
    if isinstance(value, (*_SCALARS, tuple)):
        text = repr(value)
        return text if len(text) <= 60 else text[:57] + "..."
    shape = getattr(value, "shape", None)
    kind = type(value).__name__
    try:
        return f"a {kind} of shape {tuple(shape)}" if shape is not None else f"a {kind}"
    except TypeError:  # a shape that is not a sequence
        return f"a {kind}"


def changes(before: dict[str, tuple[Any, ...]], dataset: Any) -> list[tuple[str, str, str]]:
    """Attributes whose fingerprint differs from ``before``: (name, before, now) in words.

    ``before`` in words is the old value for a compared-by-value attribute, else "another
    object"; an attribute added since is compared against "(not set)".
    """
    out = []
    for name, value in _attrs(dataset):
        if name not in before and name.startswith("__"):
            continue
        if getattr(value, "__wellfed_shared_state__", False) is True:
            continue
        old = before.get(name)
        new = _fingerprint(value)
        if old == new:
            continue
        if old is None:
            was = "(not set)"
        elif old[0] == "value":
            was = _show(old[1])
        else:
            was = "another object"
        out.append((name, was, _show(value)))
    return out


def worker_reads(loader: Any, dataset: Any) -> frozenset[str] | None:
    """Attributes of ``dataset`` its worker code reads (``wellfed.doctor.worker_reads``, with
    the loader's ``collate_fn``), or None when that code is not read (a library's class) or
    reading it failed."""
    try:
        from wellfed.doctor import worker_reads as doctor_reads

        return doctor_reads(dataset, collate_fn=getattr(loader, "collate_fn", None))
    except Exception:
        return None


def describe(entry: dict[str, Any], settings: dict[str, Any]) -> dict[str, Any]:
    """``entry`` (``LoaderRecord.stale``) with ``message`` and ``fix`` in words."""
    workers = int(settings.get("num_workers") or 0)
    name = entry["path"].rsplit(".", 1)[-1]
    if entry["persistent"]:
        window = (
            "for as long as they live (persistent_workers=True): every later epoch loads with "
            f"{entry['before']} too"
        )
    else:
        window = "until the epoch ended (new workers copy the dataset at each epoch's start)"
    again = int(entry.get("changes", 1)) - 1
    repeat = (
        f"; it changed {again} more time(s) (latest {entry['last']}) with the same copies held"
        if again
        else ""
    )
    reads = (
        f"worker code reads {name} (static: __getitem__, the methods it calls, a collate_fn "
        "bound to the dataset)"
        if entry["read_by_workers"]
        else "the dataset's class is not user code wellfed reads, so whether workers use it "
        "is unknown"
    )
    message = (
        f"{entry['path']} changed from {entry['before']} to {entry['now']} (detected by step "
        f"{entry['step']}, epoch {entry['epoch']}) while {workers} worker process(es) held "
        f"copies of the dataset made when they started: they go on loading with "
        f"{entry['before']} {window}{repeat}. Detected: the main process's dataset compared "
        f"with its state when the workers started; {reads}."
    )
    fix = (
        f"Change {name} only between epochs with persistent_workers=False (each epoch's new "
        f"workers copy it), or keep it in a wellfed.SharedState that workers read live: "
        f"self.state = wellfed.SharedState({name}=...) in __init__, self.state['{name}'] in "
        f"worker code, dataset.state.update({name}=new) in the loop (docs/shared_state.md)."
    )
    return {**entry, "message": message, "fix": fix}
