"""tune end to end on real JPEGs, under fork and spawn, and its JSON contract."""

from __future__ import annotations

import ast
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
    "num_threads",
    "batched_fetch",
}


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_tune_real_jpegs(method: str) -> None:
    spec = builtin_spec(PHOTOS_DIR, batch_size=4)
    result = tune(spec, budget_s=60, start_method=method, max_workers=2, measure_s=0.5)
    backends = {t.config.backend for t in result.trials}
    assert backends == {"main", "thread", "process"}
    assert max(t.config.num_workers for t in result.trials) <= 2
    assert all(t.ok for t in result.trials), [t.error for t in result.trials]
    assert result.baseline is not None
    assert result.baseline.config.backend == "main"
    assert result.recommended is not None
    assert result.recommended.config in [t.config for t in result.trials]
    for t in result.trials:
        if t.config.backend == "process":
            assert t.config.multiprocessing_context == method
            assert t.config.persistent_workers is True
    # the built-in workload draws from wellfed.sample_generator(): threads are safe for it
    assert result.probes["threads"]["safe"] is True
    assert result.probes["batched_fetch"]["eligible"] is False
    assert any("bound (detected)" in n for n in result.notes)
    data = json.loads(json.dumps(result.to_dict()))
    assert {"platform", "workload", "trials", "baseline", "recommended"} <= set(data)
    assert {"description", "samples"} <= set(data["workload"])
    assert {"config", "samples_per_s", "reason"} <= set(data["recommended"])
    for trial in data["trials"]:
        assert set(trial) >= TRIAL_KEYS
        assert set(trial["config"]) == CONFIG_KEYS
    code = result.recommended.code
    assert code.startswith(
        "DataLoader("
        if result.recommended.config.backend != "thread"
        else "wellfed.create_dataloader("
    )
    ast.parse(code)  # pastes as Python
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
