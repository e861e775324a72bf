"""Where tune results are kept, and how a dataset finds its own.

Results live in ``$WELLFED_CACHE_DIR/tune/`` (default ``$XDG_CACHE_HOME/wellfed/tune``, else
``~/.cache/wellfed/tune``), one JSON file per (dataset fingerprint, machine). A dataset's
fingerprint is its type's qualified name, its length, and its plain attributes (str, int,
float, bool, paths: ``root``, ``split``, ...), so the same dataset class over the same files
matches and another folder does not. The machine is its hostname and usable CPU count: a
recommendation measured on another machine is never reused.

A result measured for N local ranks at once (``tune(nproc_per_node=N)``, N > 1) is kept
apart, in ``<key>.nproc<N>.json``: a single-rank result is never used for N ranks, nor the
reverse.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform as _stdlib_platform
from pathlib import Path
from typing import Any

from wellfed.tune._result import TuneResult

logger = logging.getLogger(__name__)

__all__ = [
    "dataset_fingerprint",
    "load_stored_result",
    "result_file_name",
    "save_result",
    "store_dir",
]


def store_dir() -> Path:
    """The folder holding stored tune results (not created until a result is saved)."""
    base = os.environ.get("WELLFED_CACHE_DIR")
    if base:
        return Path(base) / "tune"
    xdg = os.environ.get("XDG_CACHE_HOME")
    root = Path(xdg) if xdg else Path.home() / ".cache"
    return root / "wellfed" / "tune"


def dataset_fingerprint(dataset: Any) -> dict[str, Any]:
    """The facts that identify a dataset across runs (see the module docstring)."""
    kind = type(dataset)
    try:
        length: int | None = len(dataset)
    except TypeError:
        length = None
    plain: dict[str, Any] = {}
    for name, value in sorted(getattr(dataset, "__dict__", {}).items()):
        if isinstance(value, (str, int, float, bool, os.PathLike)):
            plain[name] = str(value)[:500]
    from wellfed.platform import usable_cpu_count

    return {
        "type": f"{kind.__module__}.{kind.__qualname__}",
        "length": length,
        "attributes": plain,
        "host": _stdlib_platform.node(),
        "usable_cpus": usable_cpu_count(),
    }


def _key(fingerprint: dict[str, Any], batch_size: int | None) -> str:
    text = json.dumps({**fingerprint, "batch_size": batch_size}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def result_file_name(key: str, nproc_per_node: int = 1) -> str:
    """The file name of a stored result: ``<key>.json``, or ``<key>.nproc<N>.json`` for N > 1
    local ranks measured at once."""
    return f"{key}.json" if nproc_per_node <= 1 else f"{key}.nproc{nproc_per_node}.json"


def save_result(dataset: Any, result: TuneResult) -> Path | None:
    """Store a result for this dataset and batch size; None when the folder is not writable.

    The file is written to a temporary name and renamed, so a reader never sees half of it.
    A result for N local ranks (``result.nproc_per_node``) goes to its own file (see the
    module docstring).
    """
    fingerprint = dataset_fingerprint(dataset)
    batch_size = result.workload.get("batch_size")
    nproc = result.nproc_per_node
    folder = store_dir()
    path = folder / result_file_name(_key(fingerprint, batch_size), nproc)
    data = result.to_dict()
    data["stored_path"] = str(path)
    data["fingerprint"] = fingerprint
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(data, indent=1))
        os.replace(tmp, path)
    except OSError as exc:
        logger.warning("could not store the tune result in %s: %s", folder, exc)
        return None
    # Also keep it under the dataset alone (any batch size), for loaders that ask without one.
    try:
        alias = folder / result_file_name(_key(fingerprint, None), nproc)
        tmp = alias.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(data, indent=1))
        os.replace(tmp, alias)
    except OSError:
        pass
    return path


def load_stored_result(
    dataset: Any, *, batch_size: int | None = None, nproc_per_node: int = 1
) -> TuneResult | None:
    """The stored tune result for this dataset on this machine, or None.

    Args:
        dataset: The dataset (matched by ``dataset_fingerprint``).
        batch_size: Match a result measured at this batch size; None: the latest for the
            dataset at any batch size.
        nproc_per_node: Match a result measured for this many local ranks at once (1: a
            single-rank result; ``wellfed tune --nproc-per-node N`` stores N).

    Returns:
        The TuneResult (its ``stored_path`` says which file), or None when none matches or
        the file cannot be read.
    """
    key = _key(dataset_fingerprint(dataset), batch_size)
    path = store_dir() / result_file_name(key, nproc_per_node)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        return TuneResult.from_dict(data)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        logger.warning("ignoring unreadable tune result %s: %s", path, exc)
        return None
