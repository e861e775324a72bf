"""tune end to end on real JPEGs, under fork and spawn, and its JSON contract."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import FailingDataset
from wellfed.target import spec_from_object
from wellfed.tune import load_stored_result, tune
from wellfed.workloads import PHOTOS_DIR, builtin_spec

pytestmark = pytest.mark.workers

TRIAL_KEYS = {
    "config",
    "samples_per_s",
    "samples_per_s_spread",
    "first_batch_s",
    "peak_memory_bytes",
    "memory_kind",
    "status",
    "error",
}
CONFIG_KEYS = {
    "num_workers",
    "batch_size",
    "pin_memory",
    "persistent_workers",
    "prefetch_factor",
    "multiprocessing_context",
}


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_tune_real_jpegs(method: str) -> None:
    spec = builtin_spec(PHOTOS_DIR, batch_size=4)
    result = tune(spec, budget_s=60, start_method=method, max_workers=2, measure_s=0.5)
    workers = [t.config.num_workers for t in result.trials]
    assert workers == [0, 1, 2]
    assert all(t.ok for t in result.trials), [t.error for t in result.trials]
    assert result.baseline is not None
    assert result.baseline.config.num_workers == 0
    assert result.recommended is not None
    assert result.recommended.config in [t.config for t in result.trials]
    for t in result.trials[1:]:
        assert t.config.multiprocessing_context == method
        assert t.config.persistent_workers is True
    data = json.loads(json.dumps(result.to_dict()))
    assert {"platform", "workload", "trials", "baseline", "recommended"} <= set(data)
    assert {"description", "samples"} <= set(data["workload"])
    assert {"config", "samples_per_s", "reason"} <= set(data["recommended"])
    for trial in data["trials"]:
        assert set(trial) >= TRIAL_KEYS
        assert set(trial["config"]) == CONFIG_KEYS
    assert "DataLoader(" in result.recommended.code
    assert result.ceiling_samples_per_s is not None


def test_tune_result_is_stored_for_the_dataset() -> None:
    spec = builtin_spec(PHOTOS_DIR, batch_size=4)
    result = tune(spec, budget_s=30, max_workers=1, measure_s=0.3)
    assert result.stored_path is not None
    assert Path(result.stored_path).is_file()
    stored = load_stored_result(spec.dataset, batch_size=4)
    assert stored is not None
    assert stored.recommended == result.recommended
    other = builtin_spec(None, batch_size=4)  # another folder: no match
    assert load_stored_result(other.dataset, batch_size=4) is None


def test_tune_reports_a_crashing_configuration() -> None:
    spec = spec_from_object(FailingDataset(64, fail_at=40)).with_batch_size(4)
    result = tune(spec, budget_s=30, max_workers=2, measure_s=0.3, store=False)
    assert result.baseline is not None
    assert result.baseline.status == "failed"
    assert "sample 40 is corrupt" in (result.baseline.error or "")
    assert result.recommended is None
    assert "num_workers=0 failed" in result.stopped_because


def test_tune_hymenoptera(hymenoptera: Path) -> None:
    spec = builtin_spec(hymenoptera / "val", batch_size=8)
    result = tune(spec, budget_s=40, max_workers=1, measure_s=0.5, store=False)
    assert result.recommended is not None
