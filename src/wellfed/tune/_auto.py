"""The auto configuration rule, in one place: a stored tune result, else the CPU rule.

``create_dataloader(num_workers="auto")``, ``get_recommended_num_workers`` and
``precompute(num_workers="auto")`` all ask ``auto_workers``; none of them re-implements it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from wellfed import platform as _platform
from wellfed.tune._result import TuneResult
from wellfed.tune._store import load_stored_result

logger = logging.getLogger(__name__)

__all__ = ["MAX_AUTO_WORKERS", "AutoWorkers", "auto_workers", "cpu_worker_rule", "stored_result"]

#: Cap of the CPU rule: note 002's ``min(cpu_count, 8)``.
MAX_AUTO_WORKERS = 8


@dataclass(frozen=True)
class AutoWorkers:
    """What the auto rule chose.

    Attributes:
        num_workers: Worker processes (>= 0).
        reason: Why, in words (a stored result's path, or the CPU arithmetic).
        result: The stored TuneResult it came from, or None (the CPU rule).
        path: That result's file, or None.
    """

    num_workers: int
    reason: str
    result: TuneResult | None = None
    path: str | None = None


def cpu_worker_rule() -> tuple[int, str]:
    """Worker count from usable CPUs per local rank, with the reason in words.

    Returns:
        (num_workers, reason). ``usable CPUs // local ranks - 1``, between 0 and 8.

    Source:
        Heuristic, not a measurement: one CPU per local rank stays with the main process (it
        collates, pins and runs the training step); the cap of 8 is note 002's
        ``min(cpu_count, 8)``. ``wellfed tune`` replaces it with a measured value. CPUs and
        local ranks come from ``wellfed.platform`` (``usable_cpus_per_rank``).
    """
    per_rank = _platform.usable_cpus_per_rank()
    ranks = _platform.local_world_size()
    n = max(0, min(per_rank - 1, MAX_AUTO_WORKERS))
    var = _platform.local_world_size_source() if ranks > 1 else None
    where = f" ({var}={ranks})" if var else ""
    reason = (
        f"{_platform.usable_cpu_count()} usable CPUs / {ranks} local rank(s){where} = "
        f"{per_rank} per rank, minus 1 for the main process, capped at {MAX_AUTO_WORKERS}"
    )
    return n, reason


def stored_result(
    dataset: Any, batch_size: int | None, nproc_per_node: int = 1
) -> tuple[TuneResult, str] | None:
    """(TuneResult, its path) stored by ``wellfed tune`` for this dataset, or None.

    A result measured at this batch size first, else the latest at any batch size; either
    measured for ``nproc_per_node`` local ranks at once (a result for another number of
    ranks is never used). A corrupt or foreign file is logged at DEBUG and ignored: it must
    not stop loading.
    """
    result = None
    for size in (batch_size, None) if batch_size is not None else (None,):
        try:
            result = load_stored_result(dataset, batch_size=size, nproc_per_node=nproc_per_node)
        except (OSError, ValueError) as exc:
            logger.debug("stored tune result unreadable: %s", exc)
            return None
        if result is not None:
            break
    if result is None:
        return None
    recommended: Any = getattr(result, "recommended", None)
    if not isinstance(getattr(getattr(recommended, "config", None), "num_workers", None), int):
        return None
    return result, str(getattr(result, "stored_path", "?"))


def auto_workers(dataset: Any, batch_size: int | None) -> AutoWorkers:
    """The auto worker count for ``dataset``: its stored tune result, else ``cpu_worker_rule``.

    The stored result must have been measured for this machine's local world size
    (``wellfed.platform.local_world_size``: ``LOCAL_WORLD_SIZE`` under torchrun): under
    2 local ranks only a ``wellfed tune --nproc-per-node 2`` result is used, never one
    measured for a rank alone.

    Args:
        dataset: The dataset (matched by ``wellfed.tune.dataset_fingerprint``); None skips
            the stored results.
        batch_size: Batch size to match a stored result against; None matches any.
    """
    ranks = _platform.local_world_size()
    stored = stored_result(dataset, batch_size, ranks) if dataset is not None else None
    if stored is not None:
        result, path = stored
        assert result.recommended is not None  # stored_result checked it
        n = int(result.recommended.config.num_workers)
        what = "this dataset" if ranks == 1 else f"this dataset, per rank of {ranks} local ranks"
        return AutoWorkers(n, f"stored wellfed tune result for {what} ({path})", result, path)
    n, reason = cpu_worker_rule()
    if ranks > 1 and dataset is not None and stored_result(dataset, batch_size, 1) is not None:
        reason += (
            f"; a wellfed tune result measured for 1 rank exists but is not used for {ranks} "
            f"local ranks (run `wellfed tune TARGET --nproc-per-node {ranks}`)"
        )
    return AutoWorkers(n, reason)
