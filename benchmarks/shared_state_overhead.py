"""Benchmark: what reading from a SharedState adds to an epoch of the drifting-values example.

Scenario (issue 7): the drifting-values dataset of ``examples/note000_drifting_values.py``,
once with ``values`` in a plain attribute (``DriftingValuesDataset``) and once in a
``wellfed.SharedState`` (``SharedDriftingValuesDataset``, one ``state.read()`` per sample).
Same data, same DataLoader settings, same run; epochs of the two alternate (A B B A ...) so
drift in machine load falls on both. Two loader settings:

* ``workers``: the example's loader: ``--workers`` persistent workers (default 2, fork).
* ``main``: ``num_workers=0``, where nothing hides the per-sample cost.

Plus a micro-benchmark of one ``read()`` against one attribute access (ns).

Reported per setting: epoch seconds, median and p90 over ``--repeats`` epochs after one warm-up
epoch, and the overhead ``median(shared) / median(plain) - 1`` in percent (target <= 2%).

Usage::

    python benchmarks/shared_state_overhead.py            # full: 8192 samples, 15 repeats
    python benchmarks/shared_state_overhead.py --smoke    # < 30 s
    python benchmarks/shared_state_overhead.py --out benchmarks/results/shared_state.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import timeit
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))

import note000_drifting_values as example  # noqa: E402

import wellfed  # noqa: E402


def _p90(xs: list[float]) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(0.9 * (len(xs) - 1)))]


def _epoch_s(loader: DataLoader) -> float:
    t0 = time.perf_counter()
    for _ in loader:
        pass
    return time.perf_counter() - t0


def _loader(ds: Any, workers: int, start_method: str, batch_size: int) -> DataLoader:
    return DataLoader(
        ds,
        batch_size=batch_size,
        num_workers=workers,
        persistent_workers=workers > 0,
        multiprocessing_context=start_method if workers > 0 else None,
        timeout=60 if workers > 0 else 0,
    )


def compare(
    plain: Any, shared: Any, *, workers: int, start_method: str, batch_size: int, repeats: int
) -> dict[str, Any]:
    """Alternate epochs of the two datasets; return the per-setting record."""
    loaders = {
        "plain": _loader(plain, workers, start_method, batch_size),
        "shared": _loader(shared, workers, start_method, batch_size),
    }
    times: dict[str, list[float]] = {"plain": [], "shared": []}
    for name in ("plain", "shared"):  # warm-up: worker start, first mapping of the state
        _epoch_s(loaders[name])
    for r in range(repeats):
        order = ("plain", "shared") if r % 2 == 0 else ("shared", "plain")
        for name in order:
            times[name].append(_epoch_s(loaders[name]))
    for loader in loaders.values():
        it = getattr(loader, "_iterator", None)
        if it is not None:
            it._shutdown_workers()
    med = {k: statistics.median(v) for k, v in times.items()}
    paired = [s / p for s, p in zip(times["shared"], times["plain"], strict=False)]
    return {
        "num_workers": workers,
        "start_method": start_method if workers else None,
        "batches_per_epoch": len(loaders["plain"]),
        "epoch_s_p50_plain": med["plain"],
        "epoch_s_p90_plain": _p90(times["plain"]),
        "epoch_s_p50_shared": med["shared"],
        "epoch_s_p90_shared": _p90(times["shared"]),
        "overhead_pct_p50": 100.0 * (med["shared"] / med["plain"] - 1.0),
        "overhead_pct_paired_p50": 100.0 * (statistics.median(paired) - 1.0),
        "epoch_s_plain": times["plain"],
        "epoch_s_shared": times["shared"],
    }


def read_cost_ns(state: wellfed.SharedState, number: int) -> dict[str, float]:
    """ns per ``state.read()["values"]`` and per plain attribute access, same loop."""

    class Holder:
        values = torch.zeros(1)

    holder = Holder()
    read = timeit.repeat(lambda: state.read()["values"], number=number, repeat=5)
    attr = timeit.repeat(lambda: holder.values, number=number, repeat=5)
    return {
        "read_ns_p50": 1e9 * statistics.median(read) / number,
        "attribute_ns_p50": 1e9 * statistics.median(attr) / number,
    }


def _environment(args: argparse.Namespace) -> dict[str, Any]:
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
    except OSError:
        sha = ""
    return {
        "benchmark": "shared_state_overhead",
        "git_sha": sha or None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "wellfed": wellfed.__version__,
        "cpu": platform.processor() or platform.machine(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "samples": args.samples,
        "batch_size": args.batch_size,
        "repeats": args.repeats,
        "storage": "in-memory tensors",
        "smoke": args.smoke,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="small and quick (< 30 s)")
    parser.add_argument("--samples", type=int, default=None, help="dataset size (default 8192)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=None, help="timed epochs per dataset")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--start-method", default="fork", choices=["fork", "spawn", "forkserver"])
    parser.add_argument("--out", type=Path, default=None, help="append the record (JSONL)")
    args = parser.parse_args(argv)
    if args.samples is None:
        args.samples = 2048 if args.smoke else 8192
    if args.repeats is None:
        args.repeats = 5 if args.smoke else 15

    torch.set_num_threads(1)
    x = example.make_inputs(args.samples)
    plain = example.DriftingValuesDataset(x)
    shared = example.SharedDriftingValuesDataset(x)
    try:
        record = _environment(args)
        record["read_cost"] = read_cost_ns(shared.state, 20_000 if args.smoke else 200_000)
        record["settings"] = [
            compare(
                plain,
                shared,
                workers=w,
                start_method=args.start_method,
                batch_size=args.batch_size,
                repeats=args.repeats,
            )
            for w in (args.workers, 0)
        ]
    finally:
        shared.state.close()

    rc = record["read_cost"]
    print(f"read(): {rc['read_ns_p50']:.0f} ns vs attribute {rc['attribute_ns_p50']:.0f} ns")
    for s in record["settings"]:
        ms = {k: v * 1e3 for k, v in s.items() if k.startswith("epoch_s_p")}
        print(
            f"num_workers={s['num_workers']}: epoch p50 plain {ms['epoch_s_p50_plain']:.1f} ms"
            f" (p90 {ms['epoch_s_p90_plain']:.1f}), shared {ms['epoch_s_p50_shared']:.1f} ms"
            f" (p90 {ms['epoch_s_p90_shared']:.1f}); overhead {s['overhead_pct_p50']:+.2f}%"
            f" (paired {s['overhead_pct_paired_p50']:+.2f}%)"
        )
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with args.out.open("a") as f:
            f.write(json.dumps(record) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
