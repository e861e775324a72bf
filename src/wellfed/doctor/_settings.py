"""What the doctor judges: a Dataset, DataLoader or LoaderSpec as a dataset and its settings.

``unpack`` turns the object into (dataset, settings, from_loader): the settings are the
DataLoader arguments the checks and the probe read (num_workers, batch_size, samplers,
collate_fn, ...; an absent key is unknown). ``resolve_methods`` picks the start methods to
judge; ``describe`` is the report's one-line target.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterable, Mapping
from typing import Any

from wellfed.doctor._classify import is_iterable
from wellfed.doctor._report import START_METHODS
from wellfed.errors import ConfigError
from wellfed.platform import PlatformInfo

__all__ = [
    "describe",
    "is_default_collate",
    "resolve_methods",
    "safe_len",
    "unpack",
]

#: DataLoader arguments the doctor reads.
_SETTING_NAMES = (
    "num_workers",
    "batch_size",
    "prefetch_factor",
    "persistent_workers",
    "pin_memory",
    "collate_fn",
    "worker_init_fn",
    "sampler",
    "batch_sampler",
    "multiprocessing_context",
    "timeout",
    "seed",  # wellfed.create_dataloader(seed=...): per-sample seeding is in use
)


def _is_loader_spec(obj: Any) -> bool:
    """A ``wellfed.target.LoaderSpec`` (or alike: ``dataset`` and a ``loader_kwargs()``
    method), asked without running a dataset's ``__getattr__``, which may raise anything
    (a KeyError from a column lookup; issue 15)."""
    spec = sys.modules.get("wellfed.target")
    if spec is not None and isinstance(obj, spec.LoaderSpec):
        return True
    try:
        return hasattr(obj, "dataset") and callable(getattr(obj, "loader_kwargs", None))
    except Exception:
        return False


def unpack(obj: Any, loader_kwargs: Mapping[str, Any] | None) -> tuple[Any, dict[str, Any], bool]:
    """(dataset, settings, from_loader) from a Dataset, DataLoader or LoaderSpec."""
    settings: dict[str, Any] = {}
    from_loader = False
    torch = sys.modules.get("torch")
    dataset = obj
    if torch is not None and isinstance(obj, torch.utils.data.DataLoader):
        from_loader = True
        dataset = obj.dataset
        for name in _SETTING_NAMES:
            if hasattr(obj, name):
                settings[name] = getattr(obj, name)
        if obj.batch_sampler is not None and hasattr(obj.batch_sampler, "batch_size"):
            settings["batch_size"] = obj.batch_sampler.batch_size
        for name in ("sampler", "batch_sampler"):
            value = settings.get(name)
            # A BatchSampler passed as sampler= (with batch_size=None) is the user's choice:
            # its items, lists of indices, are what __getitem__ takes.
            batches_as_sampler = name == "sampler" and type(value).__name__ == "BatchSampler"
            if value is None or (_is_default_sampler(value) and not batches_as_sampler):
                settings.pop(name, None)
    elif _is_loader_spec(obj):
        from_loader = getattr(obj, "user_config", None) is not None  # a LoaderSpec
        dataset = obj.dataset
        with contextlib.suppress(Exception):
            settings.update(obj.loader_kwargs())
        if getattr(obj, "user_config", True) is None:
            # A bare dataset: the worker settings are the defaults, not the user's choice.
            for name in ("num_workers", "persistent_workers", "prefetch_factor", "pin_memory"):
                settings.pop(name, None)
    if loader_kwargs:
        from_loader = True
        settings.update(dict(loader_kwargs))
    if settings.get("num_workers") == 0 and loader_kwargs is None and not from_loader:
        settings.pop("num_workers")
    return dataset, settings, from_loader


def _is_default_sampler(sampler: Any) -> bool:
    if sampler is None:
        return False
    mod = type(sampler).__module__
    if mod == "wellfed.samplers":  # a seeded loader's own WorldInvariantSampler
        return True
    return (
        mod == "torch.utils.data.sampler"
        and type(sampler).__name__
        in (
            "SequentialSampler",
            "RandomSampler",
            "BatchSampler",
            "_InfiniteConstantSampler",
        )
        and (type(sampler).__name__ != "BatchSampler" or _is_default_sampler(sampler.sampler))
    )


def is_default_collate(fn: Any) -> bool:
    mod = getattr(fn, "__module__", "") or ""
    return mod.startswith("torch.utils.data") and getattr(fn, "__name__", "") in (
        "default_collate",
        "default_convert",
    )


def resolve_methods(
    requested: str | Iterable[str] | None, settings: dict[str, Any], platform: PlatformInfo
) -> tuple[str, ...]:
    available = tuple(platform.start_methods)
    if requested is None:
        ctx = settings.get("multiprocessing_context")
        if ctx is not None:
            name = ctx if isinstance(ctx, str) else ctx.get_start_method()
            return (name,)
        return tuple(m for m in START_METHODS if m in available) or available
    names = (requested,) if isinstance(requested, str) else tuple(requested)
    for name in names:
        if name not in START_METHODS:
            raise ConfigError(
                f"Unknown start method: start_methods contains {name!r}, which multiprocessing "
                f"does not know. Use one or more of {', '.join(START_METHODS)}.",
                attribute="start_methods",
                value=name,
            )
        if name not in available:
            raise ConfigError(
                f"Start method not available here: start_methods contains {name!r}, but this "
                f"platform ({platform.os}) offers only {', '.join(available)}. Pick one of those.",
                attribute="start_methods",
                value=name,
            )
    return tuple(dict.fromkeys(names))


def safe_len(dataset: Any) -> int | None:
    try:
        return len(dataset)
    except Exception:
        return None


def describe(dataset: Any, length: int | None, from_loader: bool) -> str:
    size = f"{length:,} samples" if length is not None else "no len()"
    kind = "iterable" if is_iterable(dataset) or not hasattr(type(dataset), "__getitem__") else "map"
    where = "DataLoader over " if from_loader else ""
    return f"{where}{type(dataset).__module__}.{type(dataset).__qualname__} ({kind}, {size})"
