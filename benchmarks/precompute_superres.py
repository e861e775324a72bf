"""Note 001 on real photos: model in __getitem__ (num_workers=0) vs precompute + CachedDataset.

Workload (``examples/note001_superres.py``): hymenoptera photos (train + val, 396 JPEGs;
the shipped photos when ``../shared`` is absent) decoded and downscaled to (3, 56, 56), then an
ESPCN-sized x2 super-resolution model (random fixed weights) -> (3, 112, 112) float32.

Measured, in this order, on this machine (device cpu unless ``--device``):

1. ``wellfed.tune`` on the source (stored, so precompute's ``num_workers="auto"`` uses it) and,
   after step 3, on the CachedDataset: "the tuned workers".
2. Each stage's rate alone: the source read with the tuned workers, and fn on pre-collated
   batches on the device (torch's default threads on the CPU; host-device copies included
   on CUDA). The slower of the two is the GPU target's reference.
3. ``--precompute-runs`` rounds, each of: the stage costs alone, as CPU seconds per sample
   (``time.process_time``, one torch thread): reading the source (num_workers=0), fn on
   the pre-collated batches, writing (one shard commit: npy + sha256 + fsync); then
   ``wellfed.precompute`` end to end into a fresh directory. A round's bound is usable CPUs
   / (sum of its three costs) samples/s: what the stages allow when they share the cores (a
   CPU-only machine). Reported: each run's ratio to its own round's bound (measured side by
   side, so a drift in the machine's speed moves both), the median run's figures, and its
   ratio to the strictest bound (each stage at the lowest cost any round saw).
5. (a) one epoch of the note's design (model inside ``__getitem__``, num_workers=0), at torch's
   default threads and at one thread (the faster counts, to be fair to (a)); (b) epochs of
   ``CachedDataset`` with the tuned workers (persistent; first epoch and the median of the
   next ``--epochs``). Reported: speed-up (a)/(b), break-even epochs = precompute / (a - b).

Run:
    python benchmarks/precompute_superres.py            # ~3-4 minutes on 2 busy CPUs
    python benchmarks/precompute_superres.py --smoke    # < 30 s (64 photos, no tuning)
Writes a JSON line to benchmarks/results/precompute_superres.jsonl (``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import ConcatDataset, DataLoader, Subset

from wellfed.measure import iterate

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))

from note001_superres import ESPCN, LowResPhotos, NaiveSRDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root: benchmarks._env
from benchmarks._env import git_sha

RESULTS = Path(__file__).resolve().parent / "results"


def _epoch_s(loader: Any) -> float:
    t0 = time.perf_counter()
    for _ in iterate(loader, keep_workers=True):
        pass
    return time.perf_counter() - t0


def _tree_cpu_s() -> float:
    """CPU seconds (user + system) of this process and its reaped children."""
    import resource

    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


class _Threads:
    """Set torch's intra-op threads for a block."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.old = torch.get_num_threads()

    def __enter__(self) -> None:
        torch.set_num_threads(self.n)

    def __exit__(self, *exc: object) -> None:
        torch.set_num_threads(self.old)


def _stage_costs(
    source: Any, model: Any, batches: list[Any], wdir: Path, commit_shard: Any
) -> tuple[float, float, float]:
    """CPU seconds per sample of each stage alone, on one torch thread: (read, fn, write).

    read: ``source[i]`` for every i; fn: the model on the collated batches (CPU); write: one
    shard of the outputs and labels committed (npy + sha256 + fsync).
    """
    from wellfed.cache._store import FieldSpec

    n = len(source)
    with _Threads(1):
        c0 = time.process_time()
        for i in range(n):
            source[i]
        c_read = (time.process_time() - c0) / n
        model.eval()
        with torch.inference_mode():
            c0 = time.process_time()
            outs = [model(x) for x, _ in batches]
            c_fn = (time.process_time() - c0) / n
    out_all = torch.cat(outs).numpy()
    labels = torch.cat([y for _, y in batches]).numpy()
    specs = (
        FieldSpec("output", "float32", tuple(out_all.shape[1:]), 3, "fn"),
        FieldSpec("source_1", "int64", (), 0, "source"),
    )
    wdir.mkdir()
    c0 = time.process_time()
    commit_shard(wdir, 0, 0, {"output": out_all, "source_1": labels}, specs)
    c_write = (time.process_time() - c0) / n
    shutil.rmtree(wdir)
    return c_read, c_fn, c_write


def _fn_rate(model: Any, batches: list[Any], device: str) -> float:
    """Samples/s of the model alone on the device (torch's default threads on the CPU),
    inputs already collated; on CUDA, host-to-device copies and the results' return to
    the host included, as precompute does them."""
    model = model.to(device).eval()
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    with torch.inference_mode():
        model(batches[0][0].to(device)).cpu()  # warm: kernels, allocator
        sync()
        t0 = time.perf_counter()
        for x, _ in batches:
            model(x.to(device)).cpu()
        sync()
        rate = sum(len(x) for x, _ in batches) / (time.perf_counter() - t0)
    model.to("cpu")
    return rate


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; print a table; append one JSON line to the results file."""
    import wellfed
    from wellfed.cache._store import commit_shard
    from wellfed.platform import usable_cpu_count

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="64 photos, no tuning (< 30 s)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=3, help="(b) epochs timed after the first")
    parser.add_argument(
        "--repeat", type=int, default=1, help="read the photos this many times over (a longer job)"
    )
    parser.add_argument(
        "--precompute-runs", type=int, default=5, help="end-to-end runs; the median counts"
    )
    parser.add_argument("--tune-budget-s", type=float, default=25.0)
    parser.add_argument("--out", type=Path, default=RESULTS / "precompute_superres.jsonl")
    args = parser.parse_args(argv)
    cpus = usable_cpu_count()
    default_threads = torch.get_num_threads()
    source: Any = LowResPhotos()
    if args.smoke:
        source = Subset(source, range(min(64, len(source))))
    if args.repeat > 1:  # a longer job over the same photos, where fixed costs weigh less
        source = ConcatDataset([source] * args.repeat)
    n = len(source)
    model = ESPCN()
    bs = args.batch_size
    work = Path(tempfile.mkdtemp(prefix="wf-superres-"))
    rec: dict[str, Any] = {
        "samples": n,
        "repeat": args.repeat,
        "batch_size": bs,
        "device": args.device,
    }
    try:
        # 1. tuned workers for the source
        if args.smoke:
            src_workers = max(0, cpus - 1) or 1
            rec["source_workers_from"] = "cpu rule (smoke: no tuning)"
        else:
            tuned = wellfed.tune(source, budget_s=args.tune_budget_s, store=True)
            src_workers = tuned.recommended.config.num_workers if tuned.recommended else 1
            rec["source_workers_from"] = "wellfed.tune"
        rec["source_workers"] = src_workers

        # 2. each stage alone: its rate, on the device
        samples = [source[i] for i in range(n)]
        batches = [
            torch.utils.data.default_collate(samples[lo : lo + bs]) for lo in range(0, n, bs)
        ]
        read_loader = DataLoader(
            source, batch_size=bs, num_workers=src_workers, timeout=120 if src_workers else 0
        )
        _epoch_s(read_loader)  # warm: page cache
        read_rate = n / _epoch_s(read_loader)
        fn_rate = _fn_rate(model, batches, args.device)
        rec.update(
            read_samples_per_s_alone=read_rate,
            fn_samples_per_s_alone=fn_rate,
            slowest_stage_samples_per_s=min(read_rate, fn_rate),
        )

        # 3 and 4: rounds of (stage CPU costs, one precompute end to end), side by side
        from wellfed.cache._precompute import _resolve_workers, resolve_fn_concurrency

        rec["precompute_workers"], rec["precompute_workers_from"] = _resolve_workers(
            "auto", source, bs
        )
        conc, conc_threads, _ = resolve_fn_concurrency(
            "auto", model, args.device, rec["precompute_workers"]
        )
        rec["precompute_fn_concurrency"] = conc
        rec["precompute_fn_torch_threads"] = conc_threads
        costs: list[tuple[float, float, float]] = []  # CPU s/sample: read, fn, write
        runs: list[tuple[float, float]] = []  # (wall s, CPU s) per fresh-directory run
        for k in range(args.precompute_runs):
            costs.append(_stage_costs(source, model, batches, work / f"w{k}", commit_shard))
            out = work / f"sr{k}"
            r0 = _tree_cpu_s()
            t0 = time.perf_counter()
            cache = wellfed.precompute(
                source, model, out, batch_size=bs, device=args.device, num_workers="auto"
            )
            runs.append((time.perf_counter() - t0, _tree_cpu_s() - r0))
        # The bound of round k: usable CPUs / that round's summed stage cost, measured just
        # before run k (side by side, so a drift in the machine's speed moves both). The
        # headline is the median run's ratio to its own round's bound; the strictest bound
        # (each stage at the lowest cost any round saw) is reported beside it.
        round_bounds = [cpus / sum(c) for c in costs]
        ratios = [(n / w) / b for (w, _), b in zip(runs, round_bounds, strict=True)]
        median_k = sorted(range(len(runs)), key=lambda k: ratios[k])[len(runs) // 2]
        c_read, c_fn, c_write = costs[median_k]
        cost = c_read + c_fn + c_write
        bound = round_bounds[median_k]
        strict_bound = cpus / sum(min(c[i] for c in costs) for i in range(3))
        pre_s, pre_cpu = runs[median_k]
        rec.update(
            read_cpu_ms_per_sample=c_read * 1e3,
            fn_cpu_ms_per_sample=c_fn * 1e3,
            write_cpu_ms_per_sample=c_write * 1e3,
            stage_cpu_ms_per_sample_rounds=[[round(x * 1e3, 3) for x in c] for c in costs],
            bound_samples_per_s=bound,
            bound_rounds_samples_per_s=round_bounds,
            strict_bound_samples_per_s=strict_bound,
            precompute_runs_s=[w for w, _ in runs],
            precompute_runs_vs_bound=ratios,
            precompute_cpu_s=pre_cpu,
            precompute_cpu_ms_per_sample=pre_cpu / n * 1e3,
            cpu_efficiency=cost * n / pre_cpu,
            cpu_share_obtained=pre_cpu / pre_s,
            bound_at_obtained_share_samples_per_s=(pre_cpu / pre_s) / cost,
            precompute_s=pre_s,
            precompute_samples_per_s=n / pre_s,
            precompute_vs_bound=(n / pre_s) / bound,
            precompute_vs_strict_bound=(n / pre_s) / strict_bound,
            precompute_vs_slowest_stage=(n / pre_s) / min(read_rate, fn_rate),
            store_bytes=sum(p.stat().st_size for p in out.rglob("*") if p.is_file()),
        )

        # 1b. tuned workers for the cache
        if args.smoke:
            cache_workers = src_workers
            rec["cache_workers_from"] = "cpu rule (smoke: no tuning)"
        else:
            tuned_c = wellfed.tune(cache, budget_s=args.tune_budget_s, store=False)
            cache_workers = tuned_c.recommended.config.num_workers if tuned_c.recommended else 1
            rec["cache_workers_from"] = "wellfed.tune"
        rec["cache_workers"] = cache_workers

        # 5. (a) vs (b)
        naive_ds = NaiveSRDataset(source, model, args.device)
        a_default = _epoch_s(DataLoader(naive_ds, batch_size=bs, num_workers=0))
        with _Threads(1):
            a_one = _epoch_s(DataLoader(naive_ds, batch_size=bs, num_workers=0))
        a = min(a_default, a_one)
        kw: dict[str, Any] = {"batch_size": bs, "shuffle": True, "num_workers": cache_workers}
        if cache_workers:
            kw.update(persistent_workers=True, timeout=120)
        loader = DataLoader(cache, **kw)
        b_first = _epoch_s(loader)
        b_epochs = [_epoch_s(loader) for _ in range(args.epochs)]
        b = statistics.median(b_epochs)
        del loader
        rec.update(
            a_epoch_s=a,
            a_epoch_s_default_threads=a_default,
            a_epoch_s_one_thread=a_one,
            b_epoch_s=b,
            b_epoch_s_all=b_epochs,
            b_first_epoch_s=b_first,
            speedup_per_epoch=a / b,
            break_even_epochs=pre_s / (a - b) if a > b else None,
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rec["env"] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads_default": default_threads,
        "git_sha": git_sha(),
        "cpu": platform.processor() or platform.machine(),
        "usable_cpus": cpus,
        "load_avg_1m_at_end": os.getloadavg()[0],
        "os": f"{platform.system()} {platform.release()}",
        "command": "python benchmarks/precompute_superres.py"
        + (" " + " ".join(argv) if argv else ""),
    }
    rows = [
        ("source read, CPU ms/sample", f"{rec['read_cpu_ms_per_sample']:.2f}"),
        ("fn (ESPCN x2), CPU ms/sample", f"{rec['fn_cpu_ms_per_sample']:.2f}"),
        ("write, CPU ms/sample", f"{rec['write_cpu_ms_per_sample']:.2f}"),
        (
            f"source alone, {src_workers} tuned workers, samples/s",
            f"{rec['read_samples_per_s_alone']:.0f}",
        ),
        ("fn alone, default threads, samples/s", f"{rec['fn_samples_per_s_alone']:.0f}"),
        (f"bound: {cpus} CPUs / summed CPU cost (median run's round)", f"{bound:.1f}"),
        (
            f"precompute workers (auto: {rec['precompute_workers']})",
            rec["precompute_workers_from"][:60],
        ),
        (
            "precompute fn: batches at once x torch threads",
            f"{rec['precompute_fn_concurrency']} x "
            f"{rec['precompute_fn_torch_threads'] or 'default'}",
        ),
        ("precompute end to end, samples/s", f"{rec['precompute_samples_per_s']:.1f}"),
        ("precompute / its round's bound (median run)", f"{rec['precompute_vs_bound']:.0%}"),
        (
            "precompute / its round's bound, every run",
            " ".join(f"{r:.0%}" for r in rec["precompute_runs_vs_bound"]),
        ),
        (
            f"precompute / strict bound ({rec['strict_bound_samples_per_s']:.0f}: each stage's "
            "lowest cost)",
            f"{rec['precompute_vs_strict_bound']:.0%}",
        ),
        ("slowest stage alone, samples/s", f"{rec['slowest_stage_samples_per_s']:.0f}"),
        (
            "precompute / slowest stage (the target on a GPU)",
            f"{rec['precompute_vs_slowest_stage']:.0%}",
        ),
        ("precompute, s", f"{rec['precompute_s']:.2f}"),
        ("precompute CPU ms/sample (main + workers)", f"{rec['precompute_cpu_ms_per_sample']:.2f}"),
        ("CPU efficiency: summed stage cost / CPU used", f"{rec['cpu_efficiency']:.0%}"),
        ("CPUs obtained during precompute (load from others)", f"{rec['cpu_share_obtained']:.2f}"),
        ("(a) model in __getitem__, workers=0, s/epoch", f"{rec['a_epoch_s']:.2f}"),
        (f"(b) CachedDataset, {cache_workers} tuned workers, s/epoch", f"{rec['b_epoch_s']:.3f}"),
        ("speed-up per epoch (a)/(b)", f"{rec['speedup_per_epoch']:.0f}x"),
        (
            "break-even epochs",
            f"{rec['break_even_epochs']:.2f}" if rec["break_even_epochs"] else "-",
        ),
    ]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "a") as f:
        f.write(json.dumps(rec) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
