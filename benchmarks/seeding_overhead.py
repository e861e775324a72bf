"""Per-sample seeding overhead: create_dataloader(seed=...) against a plain DataLoader.

Workload: wellfed's built-in ImageFolder pipeline (JPEG decode, RandomResizedCrop(224), flip,
normalize) over the photos shipped in ``wellfed/workloads/photos``. Both loaders get the same
dataset object and the same settings (batch size, shuffle, num_workers, pin_memory off,
persistent workers off, prefetch factor 2 with workers); the only difference is wellfed's
per-sample seeding (and its batch-level collate seeding and, with num_workers=0, the global
RNG snapshot/restore per batch).

Repeat r runs the plain and the seeded loader back to back (alternating which goes first) over
the same sample order (that of seed r: photos differ in decode cost), skipping
the first ``--warmup-batches`` batches (worker start-up, page cache) and timing the next
``--batches``. Reported per loader: median and p90 of the per-sample time over repeats (ms),
throughput (samples/s), and the overhead = median seeded / median plain - 1. A direct
measurement of the seeding work alone (seed the three global RNGs + bookkeeping, us per sample)
is reported beside it, since on a busy machine the end-to-end difference sits inside the noise.

Run:
    python benchmarks/seeding_overhead.py            # ~1-2 min on 2 CPUs
    python benchmarks/seeding_overhead.py --smoke    # < 30 s
Writes one JSON line to benchmarks/results/seeding_overhead.jsonl (``--out`` to change).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root: benchmarks._env
from benchmarks._env import git_sha
from wellfed.measure import iterate

RESULTS = Path(__file__).resolve().parent / "results"


class _Indices:
    """A map-style dataset whose sample i is i: reads a loader's sample order."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> int:
        return index


def _p90(values: Sequence[float]) -> float:
    ordered = sorted(values)
    k = 0.9 * (len(ordered) - 1)
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def _time_loader(loader: Any, warmup: int, batches: int) -> tuple[float, float, int]:
    """(wall s, main-process CPU s, samples) for `batches` batches after `warmup`.

    CPU time (all threads of this process) is what the main process spent; with
    num_workers=0 that is all the loading work, and unlike wall time it barely moves when other
    programs compete for the CPUs.
    """
    t0 = c0 = 0.0
    samples = 0
    for i, batch in enumerate(iterate(loader, max_batches=warmup + batches)):
        if i == warmup:
            t0, c0 = time.perf_counter(), time.process_time()
        if i >= warmup:
            samples += int(batch[0].shape[0])
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    return elapsed, cpu, samples


class _Trivial:
    """A dataset whose __getitem__ costs almost nothing, to isolate the wrapper's cost."""

    def __len__(self) -> int:
        return 1 << 30

    def __getitem__(self, index: int) -> int:
        return index


def _seeding_cost_us(batch_size: int, batches: int) -> float:
    """Cost of wellfed's fetch path alone, in microseconds per sample.

    Times ``_SeededFetch.__getitems__`` (seed derivation in the sampler, seeding the three
    global RNGs per sample, collate seeding, and the main-process RNG snapshot/restore per
    batch: the num_workers=0 worst case) against a plain list comprehension + collate over a
    dataset that does nothing.
    """
    from wellfed.seeded_loader import _SeededFetch
    from wellfed.seeding import _epoch_key, _sample_seed_from_key

    ds = _Trivial()
    fetch = _SeededFetch(ds, list, batched=False)
    key = _epoch_key(0, 0)
    index_batches = [list(range(b * batch_size, (b + 1) * batch_size)) for b in range(batches)]

    def seeded() -> None:
        for idx in index_batches:
            fetch.__getitems__([(i, _sample_seed_from_key(key, i)) for i in idx])

    def plain() -> None:
        for idx in index_batches:
            list([ds[i] for i in idx])

    best = {}
    for name, fn in (("plain", plain), ("seeded", seeded)):
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        best[name] = min(times)
    return (best["seeded"] - best["plain"]) / (batch_size * batches) * 1e6


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; print the table; append a JSON line to the results file."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a short run (< 30 s)")
    parser.add_argument("--num-workers", type=int, default=0, help="workers for both loaders")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--batches", type=int, default=None, help="timed batches per repeat")
    parser.add_argument("--warmup-batches", type=int, default=None)
    parser.add_argument("--start-method", default=None, choices=("fork", "spawn", "forkserver"))
    parser.add_argument("--out", type=Path, default=RESULTS / "seeding_overhead.jsonl")
    parser.add_argument("--quiet-logs", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    import torch
    from torch.utils.data import DataLoader

    import wellfed
    from wellfed.platform import collect_platform_info
    from wellfed.workloads import builtin_dataset

    # One intra-op thread: idle intra-op threads spin and inflate CPU time on a busy machine;
    # DataLoader workers run with one thread anyway. Same for both loaders.
    torch.set_num_threads(1)
    batch_size = args.batch_size or (16 if args.smoke else 32)
    repeats = args.repeats or (3 if args.smoke else 7)
    batches = args.batches or (3 if args.smoke else 8)
    warmup = args.warmup_batches if args.warmup_batches is not None else 1
    dataset = builtin_dataset()
    n = args.num_workers
    common: dict[str, Any] = {
        "batch_size": batch_size,
        "shuffle": True,
        "num_workers": n,
        "pin_memory": False,
        "persistent_workers": False,
    }
    if n:
        common.update(prefetch_factor=2, timeout=120)
        if args.start_method:
            common["multiprocessing_context"] = args.start_method
    if len(dataset) < (warmup + batches) * batch_size:
        print("dataset too small for these settings", file=sys.stderr)
        return 2

    def seeded(seed: int) -> Any:
        return wellfed.create_dataloader(dataset, seed=seed, **common)

    def plain(seed: int) -> Any:
        # The same sample order as seeded(seed): photos differ in size and decode cost, so
        # both loaders must time the same samples. A list as the sampler costs what
        # RandomSampler's does.
        # The shuffle order is a function of (seed, epoch, len): read it through a seeded
        # loader over the indices themselves.
        indices = wellfed.create_dataloader(
            _Indices(len(dataset)), seed=seed, batch_size=batch_size, shuffle=True
        )
        order = [int(i) for batch in indices for i in batch]
        kwargs = {k: v for k, v in common.items() if k != "shuffle"}
        torch.manual_seed(seed)  # the main process' augmentation draws with num_workers=0
        return DataLoader(dataset, sampler=order, **kwargs)

    per_sample_ms: dict[str, list[float]] = {"plain": [], "seeded": []}
    cpu_ms: dict[str, list[float]] = {"plain": [], "seeded": []}
    paired: list[float] = []
    paired_cpu: list[float] = []
    t_start = time.perf_counter()
    for r in range(repeats):
        order = ("plain", "seeded") if r % 2 == 0 else ("seeded", "plain")
        got: dict[str, float] = {}
        got_cpu: dict[str, float] = {}
        for kind in order:
            loader = plain(r) if kind == "plain" else seeded(r)
            seconds, cpu, samples = _time_loader(loader, warmup, batches)
            got[kind] = seconds / samples * 1e3
            got_cpu[kind] = cpu / samples * 1e3
            per_sample_ms[kind].append(got[kind])
            cpu_ms[kind].append(got_cpu[kind])
        paired.append(got["seeded"] / got["plain"] - 1.0)
        paired_cpu.append(got_cpu["seeded"] / got_cpu["plain"] - 1.0)
    wall = time.perf_counter() - t_start
    seeding_us = _seeding_cost_us(batch_size, 50 if args.smoke else 500)

    med = {k: statistics.median(v) for k, v in per_sample_ms.items()}
    p90 = {k: _p90(v) for k, v in per_sample_ms.items()}
    overhead = med["seeded"] / med["plain"] - 1.0
    cmed = {k: statistics.median(v) for k, v in cpu_ms.items()}
    cp90 = {k: _p90(v) for k, v in cpu_ms.items()}
    cpu_overhead = cmed["seeded"] / cmed["plain"] - 1.0
    info = collect_platform_info(include_gpus=False)
    record = {
        "benchmark": "seeding_overhead",
        "command": " ".join(["python", "benchmarks/seeding_overhead.py", *(argv or sys.argv[1:])]),
        "workload": "builtin ImageFolder: JPEG decode + RandomResizedCrop(224) + flip + normalize",
        "dataset_samples": len(dataset),
        "storage": "package photos (page cache warm after the first repeat)",
        "batch_size": batch_size,
        "num_workers": n,
        "start_method": args.start_method or (info.default_start_method if n else None),
        "repeats": repeats,
        "timed_batches": batches,
        "warmup_batches": warmup,
        "torch_threads": 1,
        "plain_sample_ms_p50": round(med["plain"], 4),
        "plain_sample_ms_p90": round(p90["plain"], 4),
        "seeded_sample_ms_p50": round(med["seeded"], 4),
        "seeded_sample_ms_p90": round(p90["seeded"], 4),
        "plain_samples_per_s_p50": round(1e3 / med["plain"], 2),
        "seeded_samples_per_s_p50": round(1e3 / med["seeded"], 2),
        "overhead_fraction_p50": round(overhead, 5),
        "paired_overhead_fraction_p50": round(statistics.median(paired), 5),
        "paired_overhead_fraction_p90": round(_p90(paired), 5),
        "plain_sample_cpu_ms_p50": round(cmed["plain"], 4),
        "plain_sample_cpu_ms_p90": round(cp90["plain"], 4),
        "seeded_sample_cpu_ms_p50": round(cmed["seeded"], 4),
        "seeded_sample_cpu_ms_p90": round(cp90["seeded"], 4),
        "cpu_overhead_fraction_p50": round(cpu_overhead, 5),
        "paired_cpu_overhead_fraction_p50": round(statistics.median(paired_cpu), 5),
        "paired_cpu_overhead_fraction_p90": round(_p90(paired_cpu), 5),
        "raw_plain_sample_ms": [round(x, 4) for x in per_sample_ms["plain"]],
        "raw_seeded_sample_ms": [round(x, 4) for x in per_sample_ms["seeded"]],
        "raw_plain_sample_cpu_ms": [round(x, 4) for x in cpu_ms["plain"]],
        "raw_seeded_sample_cpu_ms": [round(x, 4) for x in cpu_ms["seeded"]],
        "seeding_only_us_per_sample": round(seeding_us, 3),
        "seeding_only_fraction": round(seeding_us / (med["plain"] * 1e3), 6),
        "wall_s": round(wall, 2),
        "env": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "wellfed": wellfed.__version__,
            "git_sha": git_sha(),
            "cpu": platform.processor() or platform.machine(),
            "usable_cpus": info.usable_cpus,
            "os": f"{info.os} {info.os_release}",
            "hostname_hash": hash(platform.node()) & 0xFFFF,
        },
    }
    rows = [
        ("", "plain DataLoader", "create_dataloader(seed=0)"),
        ("per-sample ms, median", f"{med['plain']:.3f}", f"{med['seeded']:.3f}"),
        ("per-sample ms, p90", f"{p90['plain']:.3f}", f"{p90['seeded']:.3f}"),
        ("samples/s, median", f"{1e3 / med['plain']:.1f}", f"{1e3 / med['seeded']:.1f}"),
        ("main CPU ms/sample, median", f"{cmed['plain']:.3f}", f"{cmed['seeded']:.3f}"),
        ("main CPU ms/sample, p90", f"{cp90['plain']:.3f}", f"{cp90['seeded']:.3f}"),
    ]
    print(
        f"seeding overhead: builtin JPEG workload, batch_size={batch_size}, num_workers={n}, "
        f"{repeats} repeats x {batches} batches"
    )
    for a, b, c in rows:
        print(f"  {a:<28}{b:>18}{c:>28}")
    print(f"  wall overhead (median seeded / median plain - 1): {overhead * 100:+.2f}%")
    if n == 0:
        print(
            f"  CPU overhead (median seeded / median plain - 1): {cpu_overhead * 100:+.2f}%, "
            f"paired median {statistics.median(paired_cpu) * 100:+.2f}%"
        )
    print(
        f"  paired overhead per repeat: median {statistics.median(paired) * 100:+.2f}%, "
        f"p90 {_p90(paired) * 100:+.2f}%"
    )
    print(
        f"  seeding work alone: {seeding_us:.1f} us/sample = "
        f"{seeding_us / (med['plain'] * 1e3) * 100:.3f}% of a plain sample"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("a") as f:
        f.write(json.dumps(record) + "\n")
    print(f"  wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
