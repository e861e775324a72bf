"""tune_for_step / ``wellfed tune --step-ms``: the cheapest configuration that keeps up."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from torch.utils.data import DataLoader

from tests.helpers import SquaresDataset
from tests.helpers_seeding import ThreadYieldingDataset
from tests.helpers_watch import SleepyDataset
from wellfed.cli import main
from wellfed.errors import ConfigError
from wellfed.tune import tune_for_step

pytestmark = [pytest.mark.workers, pytest.mark.timeout(300)]


def test_a_loader_far_ahead_of_the_step_needs_no_workers() -> None:
    # a 200 ms step: 8 steps leave 80 ms of wait within 5%, more than a stall under load
    result = tune_for_step(SquaresDataset(64), step_s=0.2, steps=8)
    assert result.reached
    assert result.recommended is result.trials[0]  # measured cheapest first, stopped there
    assert result.recommended.config.num_workers == 0
    assert result.recommended.data_bound_fraction is not None
    assert result.recommended.data_bound_fraction <= 0.05
    assert result.recommended.steps == 8
    assert "cheapest configuration" in result.reason


def test_none_within_the_goal_recommends_the_least_data_bound_and_says_so() -> None:
    # 20 ms per sample, batch 8: 160 ms per batch per worker against a 1 ms step
    result = tune_for_step(
        SleepyDataset(48, ms_per_sample=20.0), step_s=0.001, max_workers=1, max_threads=0, steps=3
    )
    assert not result.reached
    assert [t.config.num_workers for t in result.trials] == [0, 1]
    assert all(t.ok for t in result.trials)
    assert result.recommended is not None
    assert result.recommended.data_bound_fraction == min(
        t.data_bound_fraction for t in result.trials if t.data_bound_fraction is not None
    )
    assert result.reason.startswith("no configuration kept the data wait within 5%")


def test_thread_workers_are_tried_and_win_on_memory_at_the_same_count() -> None:
    # 4 ms per sample, batch 8: 32 ms per batch per worker against a 10 ms step. One worker
    # is ~69% data-bound, 2 workers ~38%, 4 workers (8 ms a batch: 20% to spare, so sleep
    # overshoot and the GIL do not tip them over) stay within 5%: threads (one process's
    # memory) and processes are both measured at each count.
    loader = DataLoader(SleepyDataset(960, ms_per_sample=4.0), batch_size=8)  # no epoch end
    result = tune_for_step(loader, step_s=0.01, max_workers=8, steps=12)
    assert result.threads["safe"], result.threads
    labels = [(t.config.num_threads, t.config.num_workers) for t in result.trials]
    assert labels[:3] == [(0, 0), (1, 0), (0, 1)]  # threads before processes at a count
    assert result.reached, result.reason
    rec = result.recommended
    assert rec is not None
    assert rec.config.num_threads > 0, result.reason
    same_count = [t for t in result.trials if t.config.workers == rec.config.workers]
    assert len(same_count) == 2  # both kinds measured at the recommended count
    assert rec.peak_memory_bytes == min(t.peak_memory_bytes or 0 for t in same_count)


def test_a_later_epochs_restart_counts_as_data_wait() -> None:
    # 2 batches per epoch: every other step waits for the threads' restart (40 ms of loading
    # against a 10 ms step), which recurs in training; only the first epoch's is warm-up.
    loader = DataLoader(SleepyDataset(16, ms_per_sample=5.0), batch_size=8)
    result = tune_for_step(loader, step_s=0.01, max_workers=0, max_threads=4, steps=8)
    threads = [t for t in result.trials if t.config.num_threads]
    assert threads
    assert all(t.data_bound_fraction is not None for t in threads)
    assert min(t.data_bound_fraction or 0.0 for t in threads) > 0.3
    assert not result.reached


def test_thread_workers_are_not_measured_when_the_probe_finds_them_unsafe() -> None:
    result = tune_for_step(ThreadYieldingDataset(32), step_s=0.05, steps=4)
    assert not result.threads["safe"]
    assert result.threads["why"]
    assert all(t.config.num_threads == 0 for t in result.trials)
    assert result.to_dict()["threads"]["safe"] is False


def test_options_are_checked() -> None:
    with pytest.raises(ConfigError, match="step_s"):
        tune_for_step(SquaresDataset(8))
    with pytest.raises(ConfigError, match="step_s=-1"):
        tune_for_step(SquaresDataset(8), step_s=-1)
    with pytest.raises(ConfigError, match="goal"):
        tune_for_step(SquaresDataset(8), step_s=0.01, goal=2.0)
    with pytest.raises(ConfigError, match="max_threads"):
        tune_for_step(SquaresDataset(8), step_s=0.01, max_threads=-1)


def test_cli_step_ms_prints_the_table_and_writes_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "step.json"
    code = main(["tune", "tests.helpers:squares", "--step-ms", "50", "--json", str(out)])
    assert code == 0
    text = capsys.readouterr().out
    assert "wellfed tune --step-ms 50" in text
    assert "data-bound" in text
    assert "<- recommended" in text
    data = json.loads(out.read_text())
    assert data["step_s"] == 0.05
    assert data["reached"]
    assert data["recommended"]["config"]["num_workers"] == 0
    assert main(["tune", "tests.helpers:squares", "--step-ms", "50", "--plot", "x.png"]) == 2
