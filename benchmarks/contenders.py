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
- the grid: every configuration of :func:`grid_configs` (measured in ``benchmarks.run``).
"""

from __future__ import annotations

import os
import time
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
    "wellfed_choice",
    "zero_choice",
]

#: prefetch_factor values of the grid. Source: issue 5 ({1, 2, 4}; 2 is PyTorch's default).
GRID_PREFETCH = (1, 2, 4)


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
    """

    name: str
    config: LoaderConfig | None
    tuning_time_s: float = 0.0
    note: str = ""
    details: dict[str, Any] = field(default_factory=dict)
    spec: LoaderSpec | None = None


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
    spec: LoaderSpec, usable_cpus: int, has_cuda: bool, *, smoke: bool = False
) -> list[LoaderConfig]:
    """The exhaustive grid of issue 5.

    num_workers 0 .. 2 x usable CPUs, x pinned memory (only where a CUDA device exists),
    x prefetch_factor GRID_PREFETCH, x persistent workers {False, True}; prefetch and
    persistence only with num_workers > 0. The start method is the platform default.

    With ``smoke``: num_workers {0, 2}, prefetch {2}, persistent {True}: the code path, not
    the search.
    """
    pins = (False, True) if has_cuda else (False,)
    workers = (0, 2) if smoke else tuple(range(0, 2 * usable_cpus + 1))
    prefetch = (2,) if smoke else GRID_PREFETCH
    persistent = (True,) if smoke else (False, True)
    configs = []
    for pin in pins:
        for w in workers:
            if w == 0:
                configs.append(
                    LoaderConfig(num_workers=0, batch_size=spec.batch_size, pin_memory=pin)
                )
                continue
            for pf in prefetch:
                for pers in persistent:
                    configs.append(
                        LoaderConfig(
                            num_workers=w,
                            batch_size=spec.batch_size,
                            pin_memory=pin,
                            persistent_workers=pers,
                            prefetch_factor=pf,
                        )
                    )
    return configs


def wellfed_choice(
    spec: LoaderSpec,
    *,
    budget_s: float,
    measure_s: float | None,
    max_workers: int | None,
) -> tuple[Choice, Any]:
    """Run ``wellfed.tune.tune`` (not stored) and return its recommendation and the result."""
    from wellfed.tune import tune

    result = tune(
        spec, budget_s=budget_s, measure_s=measure_s, max_workers=max_workers, store=False
    )
    rec = result.recommended
    details = {
        "budget_s": budget_s,
        "measure_s": measure_s,
        "max_workers": max_workers,
        "stopped_because": result.stopped_because,
        "trials": [
            {
                "num_workers": t.config.num_workers,
                "status": t.status,
                "samples_per_s": t.samples_per_s,
                "windows": len(t.window_samples_per_s),
            }
            for t in result.trials
        ],
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
