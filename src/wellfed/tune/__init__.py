"""Search DataLoader configurations on this machine and recommend one, with the evidence."""

from __future__ import annotations

from wellfed.tune._search import (
    CLEAR_GAIN,
    DEFAULT_BUDGET_S,
    NEAR_BEST,
    Recommendation,
    TuneResult,
    tune,
)
from wellfed.tune._store import dataset_fingerprint, load_stored_result, store_dir

__all__ = [
    "CLEAR_GAIN",
    "DEFAULT_BUDGET_S",
    "NEAR_BEST",
    "Recommendation",
    "TuneResult",
    "dataset_fingerprint",
    "load_stored_result",
    "store_dir",
    "tune",
]
