"""Benchmark: what reading from a SharedState adds to an epoch of the drifting-values example.

Scenario (issue 7): the drifting-values dataset of ``examples/note000_drifting_values.py``,
once with ``values`` in a plain attribute (``DriftingValuesDataset``) and once in a
``wellfed.SharedState`` (``SharedDriftingValuesDataset``, one ``state.read()`` per sample).
Same data, same DataLoader settings, same run; epochs of the two alternate (A B B A ...) so
drift in machine load falls on both. Two loader settings:

* ``workers``: the example's loader: ``--workers`` persistent workers (default 2, fork).
* ``main``: ``num_workers=0``, where nothing hides the per-sample cost.
* ``main``, batched fetch: both datasets with ``__getitems__`` (one ``read()`` per batch).

Plus a micro-benchmark of one ``read()`` against one attribute access (ns).

Reported per setting, for wall time and for CPU time (this process plus its workers, which the
load of other processes on a shared machine disturbs less): median and p90 over ``--repeats``
epochs after one warm-up epoch, the overhead ``median(shared) / median(plain) - 1`` and the
median of the per-pair ratios, in percent (target <= 2%).

Usage::

    python benchmarks/shared_state_overhead.py            # full: 8192 samples, 15 repeats
    python benchmarks/shared_state_overhead.py --smoke    # < 30 s
    python benchmarks/shared_state_overhead.py --out benchmarks/results/shared_state.jsonl
"""

from __future__ import annotations

import argparse
import contextlib
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

import psutil
import torch
from torch.utils.data import DataLoader

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))

import note000_drifting_values as example  # noqa: E402

import wellfed  # noqa: E402
from wellfed.measure import close_loader, iterate  # noqa: E402


class BatchedPlain(example.DriftingValuesDataset):
    """The plain dataset with a batched fetch (``__getitems__``): one call per batch."""

    def __getitems__(self, indices: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        values = self.values
        return [(self.x[i], values[i]) for i in indices]


class BatchedShared(example.SharedDriftingValuesDataset):
    """The SharedState dataset with a batched fetch: one ``read()`` per batch, not per sample."""

    def __getitems__(self, indices: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        values = self.state.read()["values"]
        return [(self.x[i], values[i]) for i in indices]


def _p90(xs: list[float]) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(0.9 * (len(xs) - 1)))]


def _cpu_s() -> float:
    """CPU seconds (user + system) used so far by this process and its live children.

    This process: ``time.process_time()`` (ns resolution). Workers: /proc, in clock ticks
    (10 ms), so CPU figures of worker settings need epochs well above 10 ms per worker.
    """
    total = time.process_time()
    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            total += sum(child.cpu_times()[:2])
    return total


def _epoch(loader: DataLoader) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process + its workers) of one epoch."""
    c0, t0 = _cpu_s(), time.perf_counter()
    for _ in iterate(loader, keep_workers=True):
        pass
    t1 = time.perf_counter()
    return t1 - t0, _cpu_s() - c0


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
    wall: dict[str, list[float]] = {"plain": [], "shared": []}
    cpu: dict[str, list[float]] = {"plain": [], "shared": []}
    for name in ("plain", "shared"):  # warm-up: worker start, first mapping of the state
        _epoch(loaders[name])
    for r in range(repeats):
        order = ("plain", "shared") if r % 2 == 0 else ("shared", "plain")
        for name in order:
            w, c = _epoch(loaders[name])
            wall[name].append(w)
            cpu[name].append(c)
    for loader in loaders.values():
        close_loader(loader)
    out: dict[str, Any] = {
        "fetch": "batched" if hasattr(plain, "__getitems__") else "per-sample",
        "num_workers": workers,
        "start_method": start_method if workers else None,
        "batches_per_epoch": len(loaders["plain"]),
    }
    for metric, data in (("epoch_s", wall), ("epoch_cpu_s", cpu)):
        med = {k: statistics.median(v) for k, v in data.items()}
        paired = [s / p for s, p in zip(data["shared"], data["plain"], strict=True) if p > 0]
        out.update(
            {
                f"{metric}_p50_plain": med["plain"],
                f"{metric}_p90_plain": _p90(data["plain"]),
                f"{metric}_p50_shared": med["shared"],
                f"{metric}_p90_shared": _p90(data["shared"]),
                f"{metric}_overhead_pct_p50": 100.0 * (med["shared"] / med["plain"] - 1.0),
                f"{metric}_overhead_pct_paired_p50": (
                    100.0 * (statistics.median(paired) - 1.0) if paired else None
                ),
                f"{metric}_plain": data["plain"],
                f"{metric}_shared": data["shared"],
            }
        )
    return out


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
    batched_plain, batched_shared = BatchedPlain(x), BatchedShared(x)
    pairs = [(plain, shared, args.workers), (plain, shared, 0), (batched_plain, batched_shared, 0)]
    try:
        record = _environment(args)
        record["read_cost"] = read_cost_ns(shared.state, 20_000 if args.smoke else 200_000)
        record["settings"] = [
            compare(
                a,
                b,
                workers=w,
                start_method=args.start_method,
                batch_size=args.batch_size,
                repeats=args.repeats,
            )
            for a, b, w in pairs
        ]
    finally:
        shared.state.close()
        batched_shared.state.close()

    rc = record["read_cost"]
    print(f"read(): {rc['read_ns_p50']:.0f} ns vs attribute {rc['attribute_ns_p50']:.0f} ns")
    for s in record["settings"]:
        print(f"num_workers={s['num_workers']} {s['fetch']} fetch:")
        for metric, label in (("epoch_s", "wall"), ("epoch_cpu_s", "CPU ")):
            print(
                f"  {label} ms/epoch p50 (p90): plain {s[metric + '_p50_plain'] * 1e3:.1f}"
                f" ({s[metric + '_p90_plain'] * 1e3:.1f}), shared"
                f" {s[metric + '_p50_shared'] * 1e3:.1f} ({s[metric + '_p90_shared'] * 1e3:.1f});"
                f" overhead {s[metric + '_overhead_pct_p50']:+.2f}%"
                f" (paired {s[metric + '_overhead_pct_paired_p50'] or 0.0:+.2f}%)"
            )
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with args.out.open("a") as f:
            f.write(json.dumps(record) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
