"""Search DataLoader configurations on this machine and recommend one, with the evidence."""

from __future__ import annotations

from wellfed.tune._auto import AutoWorkers, auto_workers, cpu_worker_rule
from wellfed.tune._plot import plot_sweep
from wellfed.tune._result import Recommendation, TuneResult
from wellfed.tune._search import (
    CLEAR_GAIN,
    DEFAULT_BUDGET_S,
    NEAR_BEST,
    default_budget_s,
    tune,
)
from wellfed.tune._step import DATA_WAIT_GOAL, StepTrial, StepTuneResult, tune_for_step
from wellfed.tune._store import dataset_fingerprint, load_stored_result, store_dir

__all__ = [
    "CLEAR_GAIN",
    "DATA_WAIT_GOAL",
    "DEFAULT_BUDGET_S",
    "NEAR_BEST",
    "AutoWorkers",
    "Recommendation",
    "StepTrial",
    "StepTuneResult",
    "TuneResult",
    "auto_workers",
    "cpu_worker_rule",
    "dataset_fingerprint",
    "default_budget_s",
    "load_stored_result",
    "plot_sweep",
    "store_dir",
    "tune",
    "tune_for_step",
]
