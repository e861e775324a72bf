"""Who chooses a DataLoader configuration, and what each one chooses for a workload.

Each contender returns a :class:`Choice`: the configuration it would run, plus how long it took
to choose. None of them is timed here; every throughput figure comes from
``wellfed.measure.measure`` in ``benchmarks.run``, the same way for all.

- ``num_workers=0``: PyTorch's default.
- ``os.cpu_count() // 2``: the folklore rule (the user's note 003, "Common Guidelines").
- Lightning: ``max(1, cpus // local_world_size - 1)``, what Lightning suggests in its
  "consider increasing num_workers" warning.
- loadtune: a peer tuner on PyPI (``pip install loadtune``), run through its Python API.
- wellfed: ``wellfed.tune.tune``, the recommendation and its tuning time.
- SPDL and torchdata.nodes: other libraries' thread pipelines, written as their docs write
  them (``benchmarks/pipelines.py``), measured through ``measure(make_loader=...)``.
- the grid: every configuration of :func:`grid_configs` (measured in ``benchmarks.run``).
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from wellfed.measure import LoaderConfig
from wellfed.target import LoaderSpec

__all__ = [
    "Choice",
    "cpu_half_choice",
    "grid_configs",
    "lightning_choice",
    "loadtune_choice",
    "spdl_choice",
    "torchdata_nodes_choice",
    "wellfed_choice",
    "zero_choice",
]

#: prefetch_factor values of the grid's worker processes. Source: issue 5 ({1, 2, 4}; 2 is
#: PyTorch's default).
GRID_PREFETCH = (1, 2, 4)

#: prefetch_factor values (batches in flight per thread) of the grid's thread workers and of
#: its batched-fetch worker processes. Source: issue 12 ({2, 4}: 1 leaves a thread idle while
#: its batch is handed over; 2 is PyTorch's default).
GRID_THREAD_PREFETCH = (2, 4)


@dataclass(frozen=True)
class Choice:
    """A contender's decision.

    Attributes:
        name: The contender, as the tables show it.
        config: The configuration it chose; None when it could not run (see note).
        tuning_time_s: Wall seconds it took to decide (0 for a formula).
        note: Why it chose this, or why it was skipped.
        details: Anything else worth keeping (trials it ran, its own figures), JSON-ready.
        spec: The spec to measure the config on, when not the workload's own.
        make_loader: ``config -> iterable`` to measure instead of the spec's SeededDataLoader
            (``wellfed.measure.measure``'s hook); picklable.
        loader: The library whose loader ``make_loader`` builds ("" for wellfed's, which is a
            ``torch.utils.data.DataLoader``).
    """

    name: str
    config: LoaderConfig | None
    tuning_time_s: float = 0.0
    note: str = ""
    details: dict[str, Any] = field(default_factory=dict)
    spec: LoaderSpec | None = None
    make_loader: Any = None
    loader: str = ""

    def label(self) -> str | None:
        """The configuration as the tables show it (prefixed by the loader when not wellfed's)."""
        if self.config is None:
            return None
        if not self.loader:
            return self.config.label()
        return f"{self.loader}, {self.config.label()}"


def _heuristic_config(spec: LoaderSpec, workers: int, pin: bool) -> LoaderConfig:
    # What a user following the rule writes: DataLoader(..., num_workers=n), the rest left
    # at PyTorch's defaults (not persistent, prefetch_factor 2), pinned memory with a GPU.
    return LoaderConfig(num_workers=workers, batch_size=spec.batch_size, pin_memory=pin)


def zero_choice(spec: LoaderSpec, pin: bool) -> Choice:
    """PyTorch's default: load in the main process."""
    return Choice("num_workers=0", _heuristic_config(spec, 0, pin), note="PyTorch's default")


def cpu_half_choice(spec: LoaderSpec, pin: bool) -> Choice:
    """``os.cpu_count() // 2``.

    Source: the user's note 003 ("Common Guidelines": ``multiprocessing.cpu_count() // 2``),
    a rule repeated across tutorials.
    """
    cpus = os.cpu_count() or 1
    return Choice(
        "cpu_count // 2",
        _heuristic_config(spec, cpus // 2, pin),
        note=f"os.cpu_count()={cpus} // 2",
    )


def lightning_choice(spec: LoaderSpec, pin: bool, local_world_size: int = 1) -> Choice:
    """Lightning's suggestion: ``max(1, cpus // local_world_size - 1)``.

    Source: lightning/fabric/utilities/data.py, ``suggested_max_num_workers`` (Lightning 2.x),
    where cpus is ``len(os.sched_getaffinity(0))`` (else ``os.cpu_count()``).
    """
    affinity = getattr(os, "sched_getaffinity", None)
    cpus = len(affinity(0)) if affinity is not None else (os.cpu_count() or 1)
    workers = max(1, cpus // local_world_size - 1)
    return Choice(
        "Lightning",
        _heuristic_config(spec, workers, pin),
        note=f"max(1, {cpus} CPUs // local_world_size {local_world_size} - 1)",
    )


def grid_configs(
    spec: LoaderSpec,
    usable_cpus: int,
    has_cuda: bool,
    *,
    smoke: bool = False,
    batched_fetch: bool = False,
    extra_threads: Sequence[int] = (),
) -> list[LoaderConfig]:
    """The exhaustive grid of issue 5, with issue 12's thread workers and batched fetch.

    x pinned memory (only where a CUDA device exists), each of:

    - worker processes (issue 5): num_workers 0 .. 2 x usable CPUs, x prefetch_factor
      GRID_PREFETCH, x persistent workers {False, True} (prefetch and persistence only with
      num_workers > 0); the start method is the platform default;
    - thread workers (map-style datasets only: threads share the sampler):
      num_threads 1 .. 2 x usable CPUs, x prefetch_factor GRID_THREAD_PREFETCH; then each of
      ``extra_threads`` above that, prefetch 2 (storage-bound data, where threads that wait
      pay off far past the cores);
    - with ``batched_fetch`` (a dataset whose ``dataset[list_of_indices]`` is the collated
      batch): batched fetch in the main process, with the same thread counts and prefetch as
      above, and with num_workers 1 .. 2 x usable CPUs x prefetch GRID_THREAD_PREFETCH x
      persistent {False, True}.

    With ``smoke``: num_workers {0, 2} (prefetch 2, persistent), 2 threads (prefetch 2), the
    first extra thread count, and batched fetch in the main process and with 2 threads: the
    code paths, not the search.
    """
    pins = (False, True) if has_cuda else (False,)
    top = 2 * usable_cpus
    workers = (2,) if smoke else tuple(range(1, top + 1))
    prefetch = (2,) if smoke else GRID_PREFETCH
    persistent = (True,) if smoke else (False, True)
    threads = (2,) if smoke else tuple(range(1, top + 1))
    thread_prefetch = (2,) if smoke else GRID_THREAD_PREFETCH
    extra = [t for t in extra_threads if t > top][: 1 if smoke else None]
    bs = spec.batch_size
    configs = []

    def processes(pin: bool, prefetches: Sequence[int], batched: bool) -> list[LoaderConfig]:
        return [
            LoaderConfig(
                num_workers=w,
                batch_size=bs,
                pin_memory=pin,
                persistent_workers=pers,
                prefetch_factor=pf,
                batched_fetch=batched,
            )
            for w in workers
            for pf in prefetches
            for pers in persistent
        ]

    for pin in pins:
        configs.append(LoaderConfig(num_workers=0, batch_size=bs, pin_memory=pin))
        configs += processes(pin, prefetch, batched=False)
        if spec.is_iterable:
            continue
        for batched in (False, True) if batched_fetch else (False,):
            if batched:
                configs.append(LoaderConfig(batch_size=bs, pin_memory=pin, batched_fetch=True))
            thread_grid = [(t, pf) for t in threads for pf in thread_prefetch]
            thread_grid += [(t, 2) for t in extra]
            for t, pf in thread_grid:
                configs.append(
                    LoaderConfig(
                        num_threads=t,
                        batch_size=bs,
                        pin_memory=pin,
                        prefetch_factor=pf,
                        batched_fetch=batched,
                    )
                )
            if batched:
                configs += processes(pin, thread_prefetch, batched=True)
    return configs


def wellfed_choice(
    spec: LoaderSpec,
    *,
    budget_s: float,
    measure_s: float | None,
    max_workers: int | None,
    max_threads: int | None = None,
) -> tuple[Choice, Any]:
    """Run ``wellfed.tune.tune`` (not stored) and return its recommendation and the result.

    ``max_workers`` and ``max_threads`` cap its worker-process and thread sweeps (None: its
    defaults); the details keep every trial (backend, workers, label) and its probes' verdicts.
    """
    from wellfed.tune import tune

    result = tune(
        spec,
        budget_s=budget_s,
        measure_s=measure_s,
        max_workers=max_workers,
        max_threads=max_threads,
        store=False,
    )
    rec = result.recommended
    details = {
        "budget_s": budget_s,
        "measure_s": measure_s,
        "max_workers": max_workers,
        "max_threads": max_threads,
        "stopped_because": result.stopped_because,
        "trials": [
            {
                "label": t.config.label(),
                "backend": t.config.backend,
                "num_workers": t.config.num_workers,
                "num_threads": t.config.num_threads,
                "batched_fetch": t.config.batched_fetch,
                "status": t.status,
                "samples_per_s": t.samples_per_s,
                "windows": len(t.window_samples_per_s),
            }
            for t in result.trials
        ],
        "probes": result.probes,
        "notes": list(result.notes),
        "tune_ceiling_samples_per_s": result.ceiling_samples_per_s,
        "tune_recommended_samples_per_s": rec.samples_per_s if rec else None,
    }
    if rec is None:
        return (
            Choice(
                "wellfed tune",
                None,
                result.tuning_time_s,
                f"no recommendation: {result.stopped_because}",
                details,
            ),
            result,
        )
    return Choice("wellfed tune", rec.config, result.tuning_time_s, rec.reason, details), result


class _DatasetFactory:
    """loadtune's ``make_dataset``: returns the workload's dataset object."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __call__(self) -> Any:
        """The dataset."""
        return self.dataset


def _tiny_model() -> Any:
    import torch

    return torch.nn.Linear(1, 1)


def _sgd(model: Any) -> Any:
    import torch

    return torch.optim.SGD(model.parameters(), lr=0.0)


def _no_compute_step(model: Any, optimizer: Any, batch: Any, device: Any) -> Any:
    # The consumer does (almost) no work, as in wellfed.measure: the loader's own rate.
    import torch

    loss = model(torch.zeros(1, 1, device=device)).sum()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss


def _run_loadtune(spec: LoaderSpec, steps: int, warmup: int, max_trials: int) -> dict[str, Any]:
    """Child-process body: loadtune.tune on the workload; its choice and trials as a dict."""
    import loadtune
    from loadtune import Knobs, Workload

    workload = Workload(
        name="wellfed-bench",
        make_dataset=_DatasetFactory(spec.dataset),
        make_model=_tiny_model,
        train_step=_no_compute_step,
        make_optimizer=_sgd,
        default_batch_size=spec.batch_size,
        collate_fn=spec.collate_fn,
    )
    started = time.perf_counter()
    result = loadtune.tune(
        workload, steps=steps, warmup=warmup, max_trials=max_trials, verbose=False
    )
    elapsed = time.perf_counter() - started
    base = result.baseline
    if base.error:
        return {"error": f"loadtune's baseline failed: {base.error}", "tuning_time_s": elapsed}
    best = result.best
    if best is not None and best.throughput > base.throughput:
        knobs, why = best.knobs, f"best trial: {best.reason}"
    else:
        knobs, why = Knobs.from_dict(base.knobs), "kept its baseline (no trial beat it)"
    return {
        "knobs": knobs.to_dict(),
        "why": why,
        "diagnosis": result.diagnosis,
        "baseline_samples_per_s": base.throughput,
        "baseline_data_wait_frac": base.data_wait_frac,
        "baseline_cpu_util_pct": base.cpu_util_mean,
        "trials": [
            {
                "knobs": t.knobs.to_dict(),
                "reason": t.reason,
                "ok": t.ok,
                "samples_per_s": t.throughput,
                "error": (t.result or {}).get("error"),
            }
            for t in result.trials
        ],
        "tuning_time_s": elapsed,
        "version": loadtune.__version__,
    }


def loadtune_choice(
    spec: LoaderSpec, *, steps: int, warmup: int, max_trials: int = 6, timeout_s: float = 600.0
) -> Choice:
    """Run loadtune's ``tune`` in an isolated child process and translate its choice.

    loadtune profiles a training loop; here the step does no work (a 1x1 linear layer), so
    its baseline is all data wait, as in wellfed's measurements. Its knobs map onto a
    LoaderConfig except ``num_threads`` (the main process's torch threads), kept as a note.
    Skipped with a note when loadtune is not installed or fails.
    """
    import importlib.util

    from wellfed._isolate import run_isolated

    if importlib.util.find_spec("loadtune") is None:
        return Choice(
            "loadtune",
            None,
            note="skipped: loadtune is not installed (pip install loadtune, or the bench extra)",
        )
    started = time.perf_counter()
    res = run_isolated(_run_loadtune, spec, steps, warmup, max_trials, timeout_s=timeout_s)
    wall = time.perf_counter() - started
    if res.status != "ok":
        first = (res.error or "").strip().splitlines()[0] if res.error else res.status
        return Choice(
            "loadtune", None, wall, f"skipped: loadtune {res.status}: {first}", {"error": res.error}
        )
    data = res.value
    if "error" in data:
        msg = data["error"].strip().splitlines()
        return Choice(
            "loadtune",
            None,
            wall,
            f"skipped: {msg[0] if msg else 'error'} {msg[-1] if len(msg) > 1 else ''}".strip(),
            data,
        )
    k = data["knobs"]
    workers = int(k.get("num_workers") or 0)
    config = LoaderConfig(
        num_workers=workers,
        batch_size=int(k.get("batch_size") or spec.batch_size),
        pin_memory=bool(k.get("pin_memory")),
        persistent_workers=bool(k.get("persistent_workers")) if workers else False,
        prefetch_factor=k.get("prefetch_factor") if workers else None,
    )
    note = data["why"]
    if k.get("num_threads"):
        note += (
            f"; also torch.set_num_threads({k['num_threads']}) in the main process (not applied)"
        )
    data["steps"], data["warmup"] = steps, warmup
    return Choice("loadtune", config, wall, note, data)


def _pipeline_skip(spec: LoaderSpec, package: str) -> str | None:
    """Why a pipeline contender cannot run on this workload, or None."""
    from benchmarks.pipelines import available

    if spec.is_iterable:
        return (
            "skipped: an IterableDataset has no indices to map (both pipelines are written "
            "over a sampler and dataset.__getitem__, as their docs write them)"
        )
    if spec.batch_sampler is not None:
        return "skipped: the workload has a custom batch_sampler"
    if not available(package):
        return f"skipped: {package} is not installed (pip install {package})"
    return None


def spdl_choice(spec: LoaderSpec, pin: bool) -> Choice:
    """An SPDL thread pipeline (``benchmarks.pipelines.SpdlEpochs``) with SPDL's default threads.

    Concurrency: ``SPDL_THREADS`` (8), the default of ``spdl.dataloader.DataLoader``, SPDL's
    own DataLoader-style wrapper, used for each stage's concurrency and the thread pool.
    """
    from benchmarks import pipelines

    skip = _pipeline_skip(spec, "spdl")
    if skip:
        return Choice("SPDL", None, note=skip, loader="SPDL pipeline")
    import importlib.metadata

    threads = pipelines.SPDL_THREADS
    config = LoaderConfig(num_threads=threads, batch_size=spec.batch_size, pin_memory=pin)
    return Choice(
        "SPDL",
        config,
        note=(
            f"spdl {importlib.metadata.version('spdl')} PipelineBuilder: source(sampler) -> "
            f"pipe(__getitem__, concurrency={threads}) -> aggregate -> pipe(collate, "
            f"concurrency={threads}) -> sink({pipelines.SPDL_SINK_BUFFER}), "
            f"build(num_threads={threads}); {threads} = spdl.dataloader.DataLoader's default"
        ),
        details={"concurrency_source": "spdl.dataloader.DataLoader default num_threads"},
        make_loader=functools.partial(pipelines.SpdlEpochs, spec),
        loader="SPDL pipeline",
    )


def torchdata_nodes_choice(spec: LoaderSpec, pin: bool, threads: int, why: str) -> Choice:
    """torchdata.nodes as its migration guide writes a DataLoader, with ``threads`` threads.

    Its docs give no default thread count (ParallelMapper's ``num_workers`` is required; the
    guide passes DataLoader's ``num_workers`` through), so the caller gives the grid's best
    thread count (``why`` says where it came from).
    """
    from benchmarks import pipelines

    skip = _pipeline_skip(spec, "torchdata")
    if skip:
        return Choice("torchdata.nodes", None, note=skip, loader="torchdata.nodes")
    import importlib.metadata

    config = LoaderConfig(
        num_threads=threads, batch_size=spec.batch_size, pin_memory=pin, prefetch_factor=2
    )
    return Choice(
        "torchdata.nodes",
        config,
        note=(
            f"torchdata {importlib.metadata.version('torchdata')}, the migration guide's "
            f"layout: SamplerWrapper -> Batcher -> ParallelMapper(MapAndCollate, "
            f'num_workers={threads}, method="thread") -> Prefetcher({2 * threads}) -> Loader; '
            f"{threads} threads = {why}"
        ),
        details={"concurrency_source": why},
        make_loader=functools.partial(pipelines.TorchdataNodesEpochs, spec),
        loader="torchdata.nodes",
    )
