"""The live probe: run the target in real DataLoader workers and look at what comes back.

Each start method runs in its own isolated child process (``wellfed.measure.run_isolated``:
fork of this process where possible, its own process group, the whole tree killed on
timeout), so a crash, a deadlock or a CUDA error in a worker never reaches the caller and
no process is left behind.

What one run does, with 2 workers (the fewest that can disagree):

- map-style: fetch index 0 2 x REPEATS times, then a few other indices, batch_size=1, with
  the user's collate_fn and worker_init_fn. Even batches come from worker 0, odd ones from
  worker 1 (DataLoader hands out batches round-robin), so the k-th sample of worker 0 equals
  the k-th of worker 1 for every k, while main-process calls of ``dataset[0]`` vary enough
  that chance cannot explain it, means the workers share one RNG state: rng-duplication,
  confirmed. One differing pair refutes it.
- iterable: read up to ITERABLE_ITEMS items, each tagged with the worker that produced it,
  and count samples that more than one worker yields: iterable-sharding, confirmed.
- both: bytes and tensors per sample (for /dev/shm), private memory (USS) of each worker
  after the first and the last batch, and for spawn/forkserver the pickled size.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

from torch.utils.data import IterableDataset, get_worker_info

from wellfed.doctor._report import ProbeRun

__all__ = ["ITERABLE_ITEMS", "PROBE_WORKERS", "probe_all", "probe_one"]

#: Workers per probe run: two is the fewest that can disagree, and it keeps spawn start-up
#: (~1-2 s per worker, each importing torch) inside the probe's budget.
PROBE_WORKERS = 2

#: Items read from an iterable dataset (per run, all workers together).
ITERABLE_ITEMS = 64

#: Times each of the two workers fetches index 0 (and times the main process does). A
#: duplicated RNG shows as REPEATS identical pairs; with a coin-flip augmentation the chance of
#: that by luck is 0.5**8 = 0.4%.
REPEATS = 8

#: Identical pairs confirm rng-duplication only when chance explains them less often than this.
CHANCE_LEVEL = 1e-3

#: Extra map-style indices fetched after the repeats of index 0.
MAP_EXTRA = 8


class TagWorkerIterable(IterableDataset):  # type: ignore[type-arg]
    """Yields (worker id, item) for every item of the wrapped iterable dataset."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __iter__(self) -> Any:
        info = get_worker_info()
        wid = info.id if info is not None else -1
        for item in self.dataset:
            yield wid, item


def _digest(obj: Any, h: Any = None) -> str:
    """A content hash of a sample or batch: tensors, arrays, images, numbers, containers."""
    top = h is None
    h = hashlib.sha1() if h is None else h
    try:
        import torch

        if isinstance(obj, torch.Tensor):
            t = obj.detach()
            if t.device.type != "cpu":
                t = t.cpu()
            h.update(str((tuple(t.shape), str(t.dtype))).encode())
            h.update(
                t.contiguous().view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
            )
            return h.hexdigest() if top else ""
    except Exception:
        pass
    if hasattr(obj, "tobytes") and callable(obj.tobytes):
        try:
            h.update(obj.tobytes())
            h.update(str(getattr(obj, "shape", getattr(obj, "size", ""))).encode())
            return h.hexdigest() if top else ""
        except Exception:
            pass
    if isinstance(obj, dict):
        for k in sorted(obj, key=repr):
            h.update(repr(k).encode())
            _digest(obj[k], h)
    elif isinstance(obj, (list, tuple)):
        h.update(f"{type(obj).__name__}{len(obj)}".encode())
        for x in obj:
            _digest(x, h)
    elif isinstance(obj, (str, bytes, int, float, bool, type(None))):
        h.update(repr(obj).encode())
    else:
        h.update(type(obj).__qualname__.encode())
        h.update(repr(getattr(obj, "__dict__", "")).encode())
    return h.hexdigest() if top else ""


def _payload(obj: Any) -> tuple[int, int]:
    """(bytes, tensors) of the tensors and arrays in a sample or batch."""
    try:
        import torch
    except ImportError:  # pragma: no cover
        torch = None  # type: ignore[assignment]
    if torch is not None and isinstance(obj, torch.Tensor):
        return obj.element_size() * obj.nelement(), 1
    if hasattr(obj, "nbytes") and isinstance(getattr(obj, "nbytes", None), int):
        return int(obj.nbytes), 1
    if isinstance(obj, dict):
        obj = list(obj.values())
    if isinstance(obj, (list, tuple)):
        total = count = 0
        for x in obj:
            b, c = _payload(x)
            total += b
            count += c
        return total, count
    return 0, 0


def _worker_uss(iterator: Any) -> list[int]:
    import psutil

    out = []
    for w in getattr(iterator, "_workers", []) or []:
        try:
            out.append(int(psutil.Process(w.pid).memory_full_info().uss))
        except (psutil.Error, AttributeError, ValueError):
            continue
    return out


def probe_one(
    dataset: Any,
    settings: dict[str, Any],
    method: str,
    loader_timeout_s: float,
    measure_pickle: bool,
) -> dict[str, Any]:
    """Run the dataset in PROBE_WORKERS real workers under one start method (in the child).

    Args:
        dataset: The dataset (inherited by fork, so it need not pickle to get here).
        settings: collate_fn, worker_init_fn, prefetch_factor, batch_size from the loader.
        method: The workers' start method.
        loader_timeout_s: DataLoader ``timeout``: seconds to wait for any one batch.
        measure_pickle: Also measure the dataset's pickled size and time.

    Returns:
        A dict: batches, observations (see ProbeRun.observations).
    """
    import warnings

    import torch

    # This child is a fork of the caller. If the caller already ran OpenMP parallel regions
    # (any large tensor op), GNU OpenMP deadlocks on the next one here, so the main-process
    # half of the probe runs single-threaded, as DataLoader workers do.
    torch.set_num_threads(1)
    with warnings.catch_warnings():
        # DataLoader's own hints (e.g. "Got pickle error when attempting to start a worker")
        # must not print from the library; the error itself is what the probe reports.
        warnings.simplefilter("ignore")
        return _probe_one(dataset, settings, method, loader_timeout_s, measure_pickle)


def _probe_one(
    dataset: Any,
    settings: dict[str, Any],
    method: str,
    loader_timeout_s: float,
    measure_pickle: bool,
) -> dict[str, Any]:
    from torch.utils.data import DataLoader, IterableDataset, default_collate

    obs: dict[str, Any] = {}
    if measure_pickle:
        from wellfed.doctor._checks import pickled_size

        measured = pickled_size(dataset)
        if measured is not None:
            obs["pickled_bytes"], obs["pickle_s"] = measured
    common: dict[str, Any] = {
        "num_workers": PROBE_WORKERS,
        "worker_init_fn": settings.get("worker_init_fn"),
        "multiprocessing_context": method,
        "timeout": loader_timeout_s,
        "prefetch_factor": 2,
    }
    batches = 0
    if isinstance(dataset, IterableDataset) or not hasattr(dataset, "__getitem__"):
        tagged = TagWorkerIterable(dataset)
        it = iter(DataLoader(tagged, batch_size=None, **common))
        by_worker: dict[int, list[str]] = {}
        try:
            for wid, item in it:
                if batches == 0:
                    obs["sample_bytes"], obs["tensors_per_sample"] = _payload(item)
                    obs["worker_uss_first_bytes"] = _worker_uss(it)
                by_worker.setdefault(int(wid), []).append(_digest(item))
                batches += 1
                if batches >= ITERABLE_ITEMS:
                    break
            obs["worker_uss_last_bytes"] = _worker_uss(it)
        finally:
            shutdown = getattr(it, "_shutdown_workers", None)
            if shutdown is not None:
                shutdown()
            del it
        owners: dict[str, set[int]] = {}
        for wid, digests in by_worker.items():
            for d in digests:
                owners.setdefault(d, set()).add(wid)
        obs["kind"] = "iterable"
        obs["items_per_worker"] = {str(k): len(v) for k, v in sorted(by_worker.items())}
        obs["duplicate_samples"] = sum(1 for ws in owners.values() if len(ws) > 1)
        obs["distinct_samples"] = len(owners)
        return {"batches": batches, "observations": obs}
    n = len(dataset)
    indices = [0] * (2 * REPEATS) + list(range(1, min(n, 1 + MAP_EXTRA)))
    collate = settings.get("collate_fn") or default_collate
    it = iter(DataLoader(dataset, batch_size=1, sampler=indices, collate_fn=collate, **common))
    batch_digests: list[str] = []
    try:
        for batch in it:
            if batches == 0:
                obs["sample_bytes"], obs["tensors_per_sample"] = _payload(batch)
                obs["worker_uss_first_bytes"] = _worker_uss(it)
            batch_digests.append(_digest(batch))
            batches += 1
        obs["worker_uss_last_bytes"] = _worker_uss(it)
    finally:
        shutdown = getattr(it, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()
        del it
    obs["kind"] = "map"
    # Main process, after the workers: is dataset[0] random at all, and how random?
    main = [_digest(collate([dataset[0]])) for _ in range(REPEATS)]
    obs["main_random"] = len(set(main)) > 1
    if len(batch_digests) >= 2 * REPEATS and obs["main_random"]:
        b = batch_digests
        same = [b[2 * k] == b[2 * k + 1] for k in range(REPEATS)]
        # Chance that two independent draws collide, estimated from the main-process draws
        # (unbiased estimate of sum p_v**2); identical pairs only count as evidence when
        # REPEATS collisions by chance would be rarer than CHANCE_LEVEL.
        counts = [main.count(v) for v in set(main)]
        collide = sum(c * (c - 1) for c in counts) / (REPEATS * (REPEATS - 1))
        obs["collision_chance"] = collide
        obs["workers_identical"] = all(same) and collide**REPEATS < CHANCE_LEVEL
        obs["workers_differ"] = not all(same)
    return {"batches": batches, "observations": obs}


def probe_all(
    dataset: Any, settings: dict[str, Any], methods: tuple[str, ...], timeout_s: float
) -> list[ProbeRun]:
    """Probe each start method in its own isolated child; never raises for worker failures.

    Args:
        dataset: The dataset.
        settings: Loader settings (collate_fn, worker_init_fn...).
        methods: Start methods to run, in order.
        timeout_s: Total budget in seconds, split evenly between the methods; each run is
            killed (with its workers) when its share is spent.

    Returns:
        One ProbeRun per method.
    """
    from wellfed.measure import run_isolated

    runs: list[ProbeRun] = []
    if not methods:
        return runs
    share = max(1.0, timeout_s / len(methods))
    measured_pickle = False
    for method in methods:
        measure_pickle = method in ("spawn", "forkserver") and not measured_pickle
        measured_pickle = measured_pickle or measure_pickle
        start = time.perf_counter()
        result = run_isolated(
            probe_one,
            dataset,
            settings,
            method,
            max(0.5, share * 0.8),
            measure_pickle,
            timeout_s=share,
        )
        elapsed = time.perf_counter() - start
        if result.status == "ok" and isinstance(result.value, dict):
            runs.append(
                ProbeRun(
                    method,
                    "ok",
                    elapsed,
                    int(result.value.get("batches", 0)),
                    None,
                    dict(result.value.get("observations", {})),
                )
            )
        else:
            runs.append(
                ProbeRun(method, result.status, elapsed, 0, _trim(result.error or "no result"), {})
            )
    return runs


def _trim(text: str, max_chars: int = 4000) -> str:
    return text if len(text) <= max_chars else text[:max_chars] + " ..."
