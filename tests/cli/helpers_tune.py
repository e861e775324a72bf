"""A hand-made tune result with trials of every backend, as ``TuneResult.to_dict()`` gives it."""

from __future__ import annotations

from typing import Any

from wellfed.tune import TuneResult

PLATFORM: dict[str, Any] = {
    "os": "Linux",
    "os_release": "6.1",
    "machine": "x86_64",
    "python_version": "3.11.7",
    "torch_version": "2.13.0+cpu",
    "numpy_version": "2.4.6",
    "default_start_method": "fork",
    "start_methods": ["fork", "spawn", "forkserver"],
    "cpu_count": 8,
    "usable_cpus": 4,
    "cpu_quota": None,
    "ram_total_bytes": 16 * 2**30,
    "ram_available_bytes": 12 * 2**30,
    "shm_total_bytes": 8 * 2**30,
    "shm_free_bytes": 8 * 2**30,
    "open_files_limit": 1024,
    "open_files_hard_limit": 4096,
    "gpus": [],
}


def config(
    *,
    num_workers: int = 0,
    num_threads: int = 0,
    batched_fetch: bool = False,
    prefetch_factor: int | None = None,
) -> dict[str, Any]:
    """A LoaderConfig dict at batch size 32 (persistent and fork for worker processes)."""
    return {
        "num_workers": num_workers,
        "batch_size": 32,
        "pin_memory": False,
        "persistent_workers": num_workers > 0,
        "prefetch_factor": prefetch_factor,
        "multiprocessing_context": "fork" if num_workers else None,
        "num_threads": num_threads,
        "batched_fetch": batched_fetch,
    }


def trial(cfg: dict[str, Any], rate: float | None, spread: float = 20.0) -> dict[str, Any]:
    """An ok trial measured at ``rate`` samples/s, or a failed one when rate is None."""
    if rate is None:
        return {"config": cfg, "status": "failed", "error": "ValueError: bad sample (test)"}
    return {
        "config": cfg,
        "status": "ok",
        "samples_per_s": rate,
        "samples_per_s_spread": spread,
        "window_samples_per_s": [rate - spread / 2, rate, rate + spread / 2, rate],
        "first_batch_s": 0.05,
        "peak_memory_bytes": 200 * 2**20,
        "memory_kind": "rss+uss",
        "cpu_per_wall": 0.9,
    }


def sweep_result(max_workers: int = 4, *, recommend_fastest: bool = False) -> TuneResult:
    """Trials of every backend: the main process (plain and batched fetch), 1..max_workers
    threads (and 4 threads batched, and 4 threads at prefetch 4), 1..max_workers worker
    processes, and one failed 2-process trial; 4 processes are the fastest, 2 processes are
    recommended (or the fastest, with ``recommend_fastest``).
    """
    counts = [1]
    while counts[-1] < max_workers:
        counts.append(counts[-1] * 2)
    main = trial(config(), 100.0, 8.0)
    trials = [main, trial(config(batched_fetch=True), 150.0, 10.0)]
    trials += [trial(config(num_threads=n), 100.0 + 30 * min(n, 4)) for n in counts]
    trials.append(trial(config(num_threads=4, batched_fetch=True), 260.0))
    trials.append(trial(config(num_threads=4, prefetch_factor=4), 200.0))
    trials += [
        trial(config(num_workers=n), {1: 170.0, 2: 250.0, 4: 410.0}.get(n, 400.0 - n))
        for n in counts
    ]
    trials.append(trial(config(num_workers=2, prefetch_factor=4), None))
    fastest = next(t for t in trials if t["config"] == config(num_workers=4))
    chosen = next(t for t in trials if t["config"] == config(num_workers=2))
    if recommend_fastest:
        chosen = fastest
    data = {
        "platform": PLATFORM,
        "workload": {"description": "squares x 32 (test)", "samples": 64, "batch_size": 32},
        "trials": trials,
        "baseline": main,
        "recommended": {
            "config": chosen["config"],
            "samples_per_s": chosen["samples_per_s"],
            "speedup": chosen["samples_per_s"] / 100.0,
            "reason": "within 3% of the fastest with fewer workers (test)",
            "code": "DataLoader(dataset)",
        },
        "best": fastest,
        "ceiling_samples_per_s": 400.0,
        "tuning_time_s": 12.0,
        "budget_s": 75.0,
        "stopped_because": "budget (test)",
    }
    return TuneResult.from_dict(data)
