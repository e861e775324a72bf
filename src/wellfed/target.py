"""Resolve a TARGET string into a LoaderSpec: the dataset plus the DataLoader settings around it.

A TARGET is ``pkg.module:attr`` or ``path/to/file.py:attr``; ``attr`` may be dotted. It names a
Dataset, a DataLoader (whose dataset and settings become the starting point), or a
zero-argument callable returning either. No TARGET means the built-in workload.

Beside LoaderSpec lives LoaderConfig (the settings a trial or a recommendation varies), and
``resolve_fn`` resolves ``--fn MODULE:ATTR`` for precompute with the same import rules.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wellfed.errors import ConfigError, TargetError

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "LoaderConfig",
    "LoaderSpec",
    "callable_without_arguments",
    "resolve_fn",
    "resolve_target",
    "spec_from_object",
]


def callable_without_arguments(fn: Any) -> bool:
    """Whether ``fn`` (a function, method or class) can be called with no arguments: every
    parameter has a default or is ``*args``/``**kwargs``. False when its signature cannot be
    read."""
    import inspect

    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return False
    return all(
        p.default is not inspect.Parameter.empty
        or p.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
        for p in sig.parameters.values()
    )


#: Batch size used for a bare dataset, which carries none. 32 is the default of the most
#: common training recipes (torchvision's ImageNet reference scripts use 32 per GPU).
DEFAULT_BATCH_SIZE = 32


@dataclass(frozen=True)
class LoaderConfig:
    """The DataLoader settings a trial measures (the rest come from the LoaderSpec).

    The backend follows from the counts: ``num_workers > 0`` is worker processes (torch's
    multiprocessing iterator), ``num_threads > 0`` is thread workers fetching batches inside
    the main process (``wellfed.backends``), neither is the main process alone.

    Attributes:
        num_workers: Worker processes; 0 loads in the main process.
        batch_size: Samples per batch.
        pin_memory: Copy batches into page-locked memory (useful only with a CUDA device).
        persistent_workers: Keep workers alive between epochs (needs num_workers > 0).
        prefetch_factor: Batches each worker (process or thread) loads ahead; None: PyTorch's
            default (2). Must be None in the main process alone.
        multiprocessing_context: Start method of the workers ("fork", "spawn",
            "forkserver"), or None for the platform default.
        num_threads: Thread workers in the main process; needs num_workers=0.
        batched_fetch: Fetch each batch with one ``dataset[list_of_indices]`` call instead of
            one call per index (for a dataset whose list indexing returns the collated batch,
            e.g. ``TensorDataset``). A dataset with ``__getitems__`` fetches batched anyway.
    """

    num_workers: int = 0
    batch_size: int = 1
    pin_memory: bool = False
    persistent_workers: bool = False
    prefetch_factor: int | None = None
    multiprocessing_context: str | None = None
    num_threads: int = 0
    batched_fetch: bool = False

    def __post_init__(self) -> None:
        if self.num_workers < 0:
            raise ConfigError(
                f"Invalid loader configuration: num_workers={self.num_workers} is negative. "
                "Use 0 (main process) or more.",
                code="WF010",
                attribute="num_workers",
                value=self.num_workers,
            )
        if self.batch_size < 1:
            raise ConfigError(
                f"Invalid loader configuration: batch_size={self.batch_size} is below 1. "
                "Use a batch size of at least 1.",
                code="WF010",
                attribute="batch_size",
                value=self.batch_size,
            )
        if self.num_threads < 0:
            raise ConfigError(
                f"Invalid loader configuration: num_threads={self.num_threads} is negative. "
                "Use 0 (no thread workers) or more.",
                code="WF010",
                attribute="num_threads",
                value=self.num_threads,
            )
        if self.num_threads and self.num_workers:
            raise ConfigError(
                f"Invalid loader configuration: num_threads={self.num_threads} with "
                f"num_workers={self.num_workers}: thread workers run in the main process, so "
                "they exclude worker processes. Set one of them to 0.",
                code="WF010",
                attribute="num_threads",
                value=self.num_threads,
            )
        if self.num_workers == 0 and self.persistent_workers:
            raise ConfigError(
                "Invalid loader configuration: persistent_workers needs num_workers > 0, as in "
                "torch.utils.data.DataLoader. Leave it unset for 0 workers.",
                code="WF010",
                attribute="num_workers",
                value=0,
            )
        if self.num_workers == 0 and self.num_threads == 0 and self.prefetch_factor is not None:
            raise ConfigError(
                "Invalid loader configuration: prefetch_factor needs num_workers > 0 or "
                "num_threads > 0 (in the main process alone nothing loads ahead). "
                "Leave it unset there.",
                code="WF010",
                attribute="prefetch_factor",
                value=self.prefetch_factor,
            )

    @property
    def backend(self) -> str:
        """``"process"`` (worker processes), ``"thread"`` (thread workers) or ``"main"``."""
        if self.num_workers > 0:
            return "process"
        return "thread" if self.num_threads > 0 else "main"

    @property
    def workers(self) -> int:
        """Loading workers of either kind (processes or threads); 0 in the main process."""
        return self.num_workers or self.num_threads

    def loader_kwargs(self) -> dict[str, Any]:
        """The keyword arguments for ``SeededDataLoader`` (unset ones left out).

        Without thread workers and batched fetch these are plain
        ``torch.utils.data.DataLoader`` arguments; ``num_threads`` and ``batched_fetch`` are
        ``SeededDataLoader``'s (and ``create_dataloader``'s) own.
        """
        kwargs: dict[str, Any] = {
            "num_workers": self.num_workers,
            "batch_size": self.batch_size,
            "pin_memory": self.pin_memory,
        }
        if self.num_workers > 0:
            kwargs["persistent_workers"] = self.persistent_workers
            if self.multiprocessing_context is not None:
                kwargs["multiprocessing_context"] = self.multiprocessing_context
        if self.num_threads > 0:
            kwargs["num_threads"] = self.num_threads
        if self.prefetch_factor is not None and self.workers > 0:
            kwargs["prefetch_factor"] = self.prefetch_factor
        if self.batched_fetch:
            kwargs["batched_fetch"] = True
        return kwargs

    def label(self) -> str:
        """A short human label, e.g. ``"4 workers, persistent, fork"`` or ``"8 threads"``."""
        if self.num_workers > 0:
            parts = [f"{self.num_workers} worker{'s' if self.num_workers != 1 else ''}"]
            if self.persistent_workers:
                parts.append("persistent")
            if self.prefetch_factor is not None:
                parts.append(f"prefetch {self.prefetch_factor}")
            if self.multiprocessing_context:
                parts.append(self.multiprocessing_context)
        elif self.num_threads > 0:
            parts = [f"{self.num_threads} thread{'s' if self.num_threads != 1 else ''}"]
            if self.prefetch_factor is not None:
                parts.append(f"prefetch {self.prefetch_factor}")
        else:
            parts = ["main process"]
        if self.batched_fetch:
            parts.append("batched fetch")
        if self.pin_memory:
            parts.append("pinned")
        return ", ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict of the fields."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LoaderConfig:
        """Build a LoaderConfig from ``to_dict()`` output (unknown keys are ignored)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass(frozen=True)
class LoaderSpec:
    """A dataset and the DataLoader arguments that tuning keeps as they are.

    Attributes:
        dataset: The map-style or iterable-style dataset.
        description: One line saying what this is, for reports.
        source: "builtin", "dataset", "dataloader" or "factory".
        target: The TARGET string it came from, or None.
        batch_size: Samples per batch (ignored when batch_sampler is set).
        batch_size_given: False when batch_size is wellfed's default (a bare dataset).
        shuffle: Shuffle with a RandomSampler (map-style only, no sampler given).
        sampler: The loader's own sampler, or None.
        batch_sampler: A custom batch sampler, or None.
        collate_fn: The loader's collate function, or None for PyTorch's default.
        drop_last: Drop the last incomplete batch.
        worker_init_fn: The loader's worker_init_fn, or None.
        generator: The loader's torch.Generator for sampling, or None.
        user_config: The worker settings the loader had (a DataLoader target), or None.
        samples: len(dataset), or None for an iterable dataset without a length.
        factory: The zero-argument callable that built the dataset or DataLoader (a factory
            TARGET, source "factory"), or None. The doctor calls it again, in an isolated
            child process, to learn whether it builds a new DataLoader at each call (stale
            worker state then lasts only until the loader is rebuilt, WF111).
        seed: The loader's seed (``SeededDataLoader(seed=...)``), or None: no seed, the
            default, as tune measures a user's loader.
        sample_seeds: Batches as ``SeededBatch(batch, seeds)`` (needs ``seed``), for device
            transforms that draw per sample.
        device: Where the loader's consumer takes each batch: ``make_loader`` wraps the loader
            in ``wellfed.to_device(loader, device, transform=device_transform)``, so a trial
            times the main-process work of copying and transforming each batch too (the
            built-in workload's uint8 split form); None: the loader alone.
        device_transform: The per-batch transform ``to_device`` applies on ``device``
            (picklable: trials may run under spawn), or None.
    """

    dataset: Any
    description: str
    source: str
    target: str | None = None
    batch_size: int = DEFAULT_BATCH_SIZE
    batch_size_given: bool = False
    shuffle: bool = False
    sampler: Any = None
    batch_sampler: Any = None
    collate_fn: Any = None
    drop_last: bool = False
    worker_init_fn: Any = None
    generator: Any = None
    user_config: LoaderConfig | None = None
    samples: int | None = None
    seed: int | None = None
    sample_seeds: bool = False
    device: str | None = None
    device_transform: Any = None
    factory: Any = dataclasses.field(default=None, compare=False, repr=False)

    def __getstate__(self) -> dict[str, Any]:
        """The fields, ``factory`` dropped: only the process that resolved the TARGET calls it,
        and a factory (a lambda, a closure) need not pickle for the spec to reach a child."""
        return {**self.__dict__, "factory": None}

    @property
    def is_iterable(self) -> bool:
        """True for an iterable-style dataset (torch IterableDataset or no __getitem__)."""
        return _is_iterable_dataset(self.dataset)

    def loader_kwargs(self, config: LoaderConfig | None = None) -> dict[str, Any]:
        """Keyword arguments for ``torch.utils.data.DataLoader``: the spec's plus config's."""
        config = config or self.user_config or LoaderConfig(batch_size=self.batch_size)
        kwargs = config.loader_kwargs()
        if self.batch_sampler is not None:
            kwargs.pop("batch_size", None)
            kwargs["batch_sampler"] = self.batch_sampler
        else:
            kwargs["drop_last"] = self.drop_last
            if self.sampler is not None:
                kwargs["sampler"] = self.sampler
            elif self.shuffle and not self.is_iterable:
                kwargs["shuffle"] = True
        for name in ("collate_fn", "worker_init_fn", "generator"):
            value = getattr(self, name)
            if value is not None:
                kwargs[name] = value
        return kwargs

    def make_loader(self, config: LoaderConfig | None = None) -> Any:
        """Build the loader for a configuration: the class ``create_dataloader`` builds.

        A ``wellfed.seeded_loader.SeededDataLoader`` without a seed, which is a
        ``torch.utils.data.DataLoader`` subclass and loads as one: what tune measures is what
        its recommendation (a pasted ``DataLoader(...)`` call, or ``create_dataloader``'s
        "auto") runs. With ``seed``/``sample_seeds`` set it is seeded; with ``device`` set it
        comes wrapped in ``wellfed.to_device(loader, device, transform=device_transform)``
        (a ``DeviceLoader``, which the loader driver closes as it closes the loader).
        """
        from wellfed.seeded_loader import SeededDataLoader

        kwargs = self.loader_kwargs(config)
        if self.seed is not None:
            kwargs["seed"] = self.seed
        if self.sample_seeds:
            kwargs["sample_seeds"] = True
        loader = SeededDataLoader(self.dataset, **kwargs)
        if self.device is None:
            return loader
        from wellfed.device import to_device

        return to_device(loader, self.device, transform=self.device_transform)

    def with_batch_size(self, batch_size: int) -> LoaderSpec:
        """A copy with another batch size, marked as given by the user."""
        return dataclasses.replace(self, batch_size=batch_size, batch_size_given=True)


def _is_iterable_dataset(dataset: Any) -> bool:
    from torch.utils.data import IterableDataset

    if isinstance(dataset, IterableDataset):
        return True
    return hasattr(dataset, "__iter__") and not hasattr(dataset, "__getitem__")


def _looks_like_dataset(obj: Any) -> bool:
    from torch.utils.data import Dataset

    if isinstance(obj, (str, bytes, dict, type)):
        return False
    if isinstance(obj, Dataset):
        return True
    return (hasattr(obj, "__getitem__") and hasattr(obj, "__len__")) or _is_iterable_dataset(obj)


def _dataset_length(dataset: Any) -> int | None:
    try:
        return len(dataset)
    except TypeError:
        return None


def spec_from_object(
    obj: Any, *, target: str | None = None, source: str | None = None
) -> LoaderSpec:
    """Build a LoaderSpec from a Dataset or DataLoader object.

    Raises:
        TargetError: the object is neither a dataset nor a DataLoader, or its length is 0.
    """
    from torch.utils.data import BatchSampler, DataLoader, RandomSampler, SequentialSampler

    where = f"TARGET {target!r}" if target else "the object"
    if isinstance(obj, DataLoader):
        dataset = obj.dataset
        _check_dataset(dataset, target, where)
        custom_batch_sampler = (
            obj.batch_sampler is not None and type(obj.batch_sampler) is not BatchSampler
        )
        sampler = obj.sampler
        shuffle = isinstance(sampler, RandomSampler)
        keep_sampler = not isinstance(
            sampler, (RandomSampler, SequentialSampler)
        ) and not _is_iterable_dataset(dataset)
        ctx = obj.multiprocessing_context
        ctx_name = (
            ctx.get_start_method() if ctx is not None and hasattr(ctx, "get_start_method") else ctx
        )
        batch_size = obj.batch_size or DEFAULT_BATCH_SIZE
        user = LoaderConfig(
            num_workers=obj.num_workers,
            batch_size=batch_size,
            pin_memory=bool(obj.pin_memory),
            persistent_workers=bool(obj.persistent_workers) if obj.num_workers > 0 else False,
            prefetch_factor=obj.prefetch_factor if obj.num_workers > 0 else None,
            multiprocessing_context=ctx_name if obj.num_workers > 0 else None,
        )
        return LoaderSpec(
            dataset=dataset,
            description=f"DataLoader over {type(dataset).__name__}"
            + (f" from {target}" if target else ""),
            source=source or "dataloader",
            target=target,
            batch_size=batch_size,
            batch_size_given=obj.batch_size is not None,
            shuffle=shuffle,
            sampler=sampler if keep_sampler else None,
            batch_sampler=obj.batch_sampler if custom_batch_sampler else None,
            collate_fn=obj.collate_fn,
            drop_last=obj.drop_last,
            worker_init_fn=obj.worker_init_fn,
            generator=obj.generator,
            user_config=user,
            samples=_dataset_length(dataset),
        )
    _check_dataset(obj, target, where)
    return LoaderSpec(
        dataset=obj,
        description=f"{type(obj).__name__}" + (f" from {target}" if target else ""),
        source=source or "dataset",
        target=target,
        samples=_dataset_length(obj),
    )


def _check_dataset(obj: Any, target: str | None, where: str) -> None:
    if not _looks_like_dataset(obj):
        raise TargetError(
            f"Not a dataset: {where} is a {type(obj).__module__}.{type(obj).__qualname__}, "
            "which has neither __getitem__ and __len__ (map-style) nor __iter__ (iterable-style). "
            "Point TARGET at a torch.utils.data.Dataset, a DataLoader, or a zero-argument "
            "function that returns one.",
            code="WF004",
            target=target,
            value=type(obj).__qualname__,
        )
    if _dataset_length(obj) == 0:
        raise TargetError(
            f"Empty dataset: {where} has len()=0, so no batch can be loaded or measured. "
            "Check the data path or filter that built it (an ImageFolder over an empty or "
            "wrong directory is the usual cause).",
            code="WF005",
            target=target,
            value=0,
        )


def _split_target(target: str) -> tuple[str, str]:
    module, sep, attr = target.rpartition(":")
    if not sep or not module or not attr or not all(p.isidentifier() for p in attr.split(".")):
        raise TargetError(
            f"Bad TARGET: {target!r} is not of the form 'pkg.module:attr' or "
            "'path/to/file.py:attr'. Name the module or file, a colon, then the dataset, "
            "DataLoader or zero-argument factory, e.g. 'mypkg.data:train_set'.",
            code="WF006",
            target=target,
            value=target,
        )
    return module, attr


def _import_file(path_text: str, target: str) -> Any:
    path = Path(path_text).expanduser().resolve()
    if not path.is_file():
        raise TargetError(
            f"TARGET file not found: {path_text!r} (resolved to {path}) does not exist. "
            "Check the path; it is relative to the current directory.",
            code="WF007",
            target=target,
            value=str(path),
        )
    # Import by module name from the file's folder, so that spawn and forkserver workers
    # (which inherit sys.path) can import the same module and unpickle its classes.
    folder = str(path.parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    name = path.stem
    existing = sys.modules.get(name)
    if existing is not None and Path(getattr(existing, "__file__", "") or "").resolve() == path:
        return existing
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise TargetError(
            f"TARGET file cannot be imported: {path} is not a Python module. Name a .py file.",
            code="WF007",
            target=target,
            value=str(path),
        )
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[name]
        raise _import_failed(target, str(path), exc) from exc
    return module


def _import_failed(target: str, module: str, exc: BaseException) -> TargetError:
    return TargetError(
        f"Importing the TARGET module failed: {module!r} raised {type(exc).__name__}: {exc}. "
        "Fix the error in that module (run `python -c 'import ...'` to see its traceback, or "
        "pass --debug).",
        code="WF008",
        target=target,
        value=module,
    )


def _import_module(name: str, target: str) -> Any:
    # As `python -m` does (and uvicorn, gunicorn), the current directory is importable, so
    # `wellfed tune mypkg.data:train_set` works from the project's folder.
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name and (name == exc.name or name.startswith(exc.name + ".")):
            raise TargetError(
                f"TARGET module not found: {name!r} is not importable from this Python "
                f"({sys.executable}). Install the package, run from its folder, or give a file "
                "path such as 'path/to/file.py:attr'.",
                code="WF001",
                target=target,
                value=name,
            ) from None
        raise _import_failed(target, name, exc) from exc
    except Exception as exc:
        raise _import_failed(target, name, exc) from exc


def resolve_target(target: str) -> LoaderSpec:
    """Import a TARGET and build its LoaderSpec.

    Args:
        target: ``pkg.module:attr`` or ``path/to/file.py:attr`` (attr may be dotted).

    Returns:
        A LoaderSpec. A DataLoader target keeps its batch size, sampler or shuffle,
        collate_fn, drop_last, worker_init_fn, start method and worker settings.

    Raises:
        TargetError: bad syntax (WF006), module not found (WF001), file not found (WF007),
            import failed (WF008), attribute missing (WF002), factory raised (WF003), not a
            dataset (WF004), or an empty dataset (WF005).
    """
    module_name, attr = _split_target(target)
    if module_name.endswith(".py") or "/" in module_name or "\\" in module_name:
        module = _import_file(module_name, target)
    else:
        module = _import_module(module_name, target)
    obj: Any = module
    walked = []
    for part in attr.split("."):
        walked.append(part)
        try:
            obj = getattr(obj, part)
        except AttributeError:
            available = sorted(n for n in dir(obj) if not n.startswith("_"))[:12]
            raise TargetError(
                f"TARGET attribute not found: {module_name!r} has no attribute "
                f"{'.'.join(walked)!r}. Names it has: {', '.join(available) or '(none)'}. "
                "Check the spelling after the colon.",
                code="WF002",
                target=target,
                value=".".join(walked),
            ) from None
    source = None
    from torch.utils.data import DataLoader

    if callable(obj) and not isinstance(obj, DataLoader) and not _is_instance_dataset(obj):
        try:
            built = obj()
        except Exception as exc:
            raise TargetError(
                f"TARGET factory raised: calling {target}() with no arguments raised "
                f"{type(exc).__name__}: {exc}. A factory TARGET must build the dataset or "
                "DataLoader without arguments; fix the error or point at a function that "
                "supplies its arguments.",
                code="WF003",
                target=target,
                value=f"{type(exc).__name__}: {exc}",
            ) from exc
        source = "factory"
        spec = spec_from_object(built, target=target, source=source)
        return dataclasses.replace(spec, factory=obj)
    return spec_from_object(obj, target=target, source=source)


def _is_instance_dataset(obj: Any) -> bool:
    """True for a dataset instance (not a class or function that builds one)."""
    return not isinstance(obj, type) and _looks_like_dataset(obj)


def resolve_fn(text: str) -> Any:
    """Import ``pkg.module:attr`` or ``path/to/file.py:attr`` and return the transform.

    A torch.nn.Module subclass is instantiated with no arguments; a callable (function,
    Module instance, callable object) is returned as it is.

    Raises:
        TargetError: bad syntax (WF006), module or file missing (WF001, WF007), import failed
            (WF008), attribute missing or not callable (WF411).
    """
    import torch

    module_text, attr = _split_target(text)
    if module_text.endswith(".py") or "/" in module_text:
        module = _import_file(module_text, text)
    else:
        module = _import_module(module_text, text)
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise TargetError(
                f"--fn not found: {text!r}: {getattr(obj, '__name__', module_text)!r} has no "
                f"attribute {part!r}. Name a function, a torch.nn.Module instance or class in "
                "that module.",
                code="WF411",
                target=text,
                value=text,
            )
        obj = getattr(obj, part)
    if isinstance(obj, type) and issubclass(obj, torch.nn.Module):
        try:
            obj = obj()
        except Exception as exc:
            raise TargetError(
                f"--fn cannot be built: {text!r} is a Module class whose constructor raised "
                f"{type(exc).__name__}: {exc}. Name an instance or a zero-argument class.",
                code="WF411",
                target=text,
                value=text,
            ) from exc
    if not callable(obj):
        raise TargetError(
            f"--fn not callable: {text!r} is a {type(obj).__name__}. Name a function or a "
            "torch.nn.Module that maps a batch to a batch of outputs.",
            code="WF411",
            target=text,
            value=text,
        )
    return obj
