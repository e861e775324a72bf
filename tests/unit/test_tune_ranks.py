"""Per-rank tuning without processes: the store key, per-node caps, the slowest-rank figures,
the per-rank wording, the auto rule's pick by local world size, torchrun's hand-off."""

from __future__ import annotations

import ast
import dataclasses
import json
import os
import time
from pathlib import Path

import pytest

from tests.helpers import SquaresDataset, tune_result
from wellfed.errors import ConfigError, WellfedError
from wellfed.measure import LoaderConfig, RankTrial, Trial, summarize_windows
from wellfed.measure import _from_ranks as from_ranks
from wellfed.platform import collect_platform_info
from wellfed.target import spec_from_object
from wellfed.tune import (
    DEFAULT_BUDGET_S,
    Recommendation,
    TuneResult,
    _ranks,
    auto_workers,
    default_budget_s,
    load_stored_result,
    tune,
)
from wellfed.tune._store import result_file_name, save_result

LAUNCHER_VARS = (
    "LOCAL_WORLD_SIZE",
    "SLURM_NTASKS_PER_NODE",
    "OMPI_COMM_WORLD_LOCAL_SIZE",
    "LOCAL_RANK",
    "SLURM_LOCALID",
    "OMPI_COMM_WORLD_LOCAL_RANK",
)


@pytest.fixture(autouse=True)
def _no_launcher(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in LAUNCHER_VARS:
        monkeypatch.delenv(name, raising=False)


def _rank(rank: int, windows: tuple[float, ...], start: float = 100.0) -> RankTrial:
    median, spread = summarize_windows(windows)
    return RankTrial(
        rank=rank,
        samples_per_s=median,
        samples_per_s_spread=spread,
        window_samples_per_s=windows,
        first_batch_s=0.1 * (rank + 1),
        peak_memory_bytes=1000 * (rank + 1),
        cpu_per_wall=0.5 + 0.1 * rank,
        spans_unix_s=((start, start + 3.0),),
    )


CONFIG = LoaderConfig(num_workers=2, batch_size=8, persistent_workers=True)


def _result(workers: int, nproc: int) -> TuneResult:
    cfg = LoaderConfig(num_workers=workers, batch_size=8, persistent_workers=workers > 0)
    trial = Trial(config=cfg, status="ok", samples_per_s=100.0, nproc=nproc)
    rec = Recommendation(config=cfg, samples_per_s=100.0, speedup=1.0, reason="test")
    return tune_result(
        workload={"description": "squares", "batch_size": 8, "nproc_per_node": nproc},
        trials=(trial,),
        recommended=rec,
        best=trial,
        stopped_because="test",
        nproc_per_node=nproc,
    )


# --- the slowest rank's figures ------------------------------------------------------------


def test_a_trial_of_ranks_reports_the_slowest_rank() -> None:
    fast = _rank(0, (200.0, 210.0, 190.0, 205.0))
    slow = _rank(1, (100.0, 110.0, 90.0, 105.0))
    trial = from_ranks(CONFIG, (fast, slow))
    assert trial.nproc == 2
    assert trial.samples_per_s == slow.samples_per_s
    assert trial.window_samples_per_s == slow.window_samples_per_s
    assert trial.aggregate_samples_per_s == pytest.approx(2 * slow.samples_per_s)
    assert trial.first_batch_s == pytest.approx(0.2)  # the latest rank's
    assert trial.peak_memory_bytes == 2000  # one rank's largest, not the node's sum
    assert trial.cpu_per_wall == pytest.approx(0.6)


def test_repeats_pool_each_rank_with_its_own() -> None:
    first = from_ranks(CONFIG, (_rank(0, (200.0,) * 4), _rank(1, (100.0,) * 4)))
    # in the repeat rank 0 is the slow one
    again = from_ranks(CONFIG, (_rank(0, (50.0,) * 4, 200.0), _rank(1, (300.0,) * 4, 200.0)))
    pooled = first.merged(again)
    assert pooled.repeats == 2
    assert [len(r.window_samples_per_s) for r in pooled.ranks] == [8, 8]
    assert pooled.ranks[0].spans_unix_s == ((100.0, 103.0), (200.0, 203.0))
    rates = [r.samples_per_s for r in pooled.ranks]
    assert pooled.samples_per_s == min(rates)


def test_ranks_survive_json() -> None:
    trial = from_ranks(CONFIG, (_rank(0, (200.0, 190.0)), _rank(1, (100.0, 90.0))))
    data = json.loads(json.dumps(trial.to_dict()))
    assert data["aggregate_samples_per_s"] == pytest.approx(2 * 95.0)
    assert [r["rank"] for r in data["ranks"]] == [0, 1]
    assert data["ranks"][1]["spans_unix_s"] == [[100.0, 103.0]]
    assert Trial.from_dict(data) == trial


def test_a_single_process_trial_has_no_ranks() -> None:
    trial = Trial(config=CONFIG, status="ok", samples_per_s=50.0)
    assert trial.nproc == 1
    assert trial.ranks == ()
    assert trial.aggregate_samples_per_s == 50.0
    assert Trial(config=CONFIG, status="failed").aggregate_samples_per_s is None


# --- per-node caps and the bound ------------------------------------------------------------


def test_caps_are_per_node() -> None:
    platform = dataclasses.replace(
        collect_platform_info(include_gpus=False), usable_cpus=16, ram_available_bytes=8 << 30
    )
    rank = _ranks.per_rank_platform(platform, 4)
    assert rank.usable_cpus == 4
    assert rank.ram_available_bytes == 2 << 30
    assert rank.open_files_limit == platform.open_files_limit  # ulimit -n is per process
    assert _ranks.per_rank_platform(platform, 32).usable_cpus == 1
    assert _ranks.per_rank_platform(platform, 1) is platform
    assert _ranks.per_rank_cap(64, 8) == 8
    assert _ranks.per_rank_cap(3, 2) == 1
    assert _ranks.per_rank_cap(1, 2) == 0


def test_the_default_bound_grows_with_the_ranks() -> None:
    assert default_budget_s(1) == DEFAULT_BUDGET_S
    assert default_budget_s(2) == pytest.approx(1.5 * DEFAULT_BUDGET_S)
    assert default_budget_s(8) > default_budget_s(4) > default_budget_s(2)


def test_nproc_comes_from_the_launcher(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _ranks.resolve_nproc(None) == (1, "default")
    assert _ranks.resolve_nproc(3) == (3, "given")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert _ranks.resolve_nproc(None) == (4, "LOCAL_WORLD_SIZE=4")
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ConfigError) as info:
            _ranks.resolve_nproc(bad)  # type: ignore[arg-type]
        assert info.value.code == "WF010"
        assert info.value.attribute == "nproc_per_node"


# --- the store key and the auto rule ---------------------------------------------------------


def test_a_result_for_n_ranks_is_stored_apart() -> None:
    assert result_file_name("abc") == "abc.json"
    assert result_file_name("abc", 2) == "abc.nproc2.json"
    dataset = SquaresDataset(24)
    path = save_result(dataset, _result(workers=1, nproc=2))
    assert path is not None
    assert path.name.endswith(".nproc2.json")
    assert load_stored_result(dataset, batch_size=8) is None  # not reused for one rank
    loaded = load_stored_result(dataset, batch_size=8, nproc_per_node=2)
    assert loaded is not None
    assert loaded.nproc_per_node == 2
    assert loaded.stored_path == str(path)
    assert load_stored_result(dataset, nproc_per_node=2) is not None  # any batch size
    assert load_stored_result(dataset, batch_size=8, nproc_per_node=4) is None


def test_auto_uses_the_result_for_the_local_world_size(monkeypatch: pytest.MonkeyPatch) -> None:
    dataset = SquaresDataset(20)
    save_result(dataset, _result(workers=3, nproc=1))
    save_result(dataset, _result(workers=1, nproc=2))
    assert auto_workers(dataset, 8).num_workers == 3
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    auto = auto_workers(dataset, 8)
    assert auto.num_workers == 1
    assert auto.path is not None
    assert auto.path.endswith(".nproc2.json")
    assert "per rank of 2 local ranks" in auto.reason


def test_a_single_rank_result_is_not_used_for_n_ranks(monkeypatch: pytest.MonkeyPatch) -> None:
    dataset = SquaresDataset(21)
    save_result(dataset, _result(workers=3, nproc=1))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    auto = auto_workers(dataset, 8)
    assert auto.result is None  # the CPU rule
    assert "measured for 1 rank exists but is not used for 2 local ranks" in auto.reason
    assert "--nproc-per-node 2" in auto.reason


# --- the per-rank wording --------------------------------------------------------------------


def test_the_recommendation_says_per_rank() -> None:
    code = (
        "DataLoader(\n    dataset,\n    num_workers=1,\n)\n"
        "# or: x builds this loader from the stored result"
    )
    rec = Recommendation(CONFIG, 80.0, 2.0, "2 workers: 80 samples/s.", {"a": "b"}, code)
    assert _ranks.per_rank_recommendation(rec, 1, "given") is rec
    out = _ranks.per_rank_recommendation(rec, 2, "LOCAL_WORLD_SIZE=2")
    assert out.code.startswith("# per rank: each of the 2 local ranks builds this loader")
    assert "LOCAL_WORLD_SIZE=2" in out.code.splitlines()[-1]
    ast.parse(out.code)
    assert out.reason.startswith("2 ranks measured at once, figures per rank; node aggregate 160")
    assert out.reasons["nproc_per_node"].startswith("2 (detected: LOCAL_WORLD_SIZE=2)")
    assert out.samples_per_s == 80.0  # per rank


# --- under a launcher: local rank 0 measures, the others wait --------------------------------


def test_a_nonzero_local_rank_returns_local_rank_zeros_result(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    dataset = SquaresDataset(22)
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert _ranks.hands_off(2)
    assert not _ranks.hands_off(1)
    _ranks.write_handoff(dataset, _result(workers=1, nproc=2))
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert _ranks.waits_for_local_rank_zero(2)
    started = time.perf_counter()
    spec = spec_from_object(dataset).with_batch_size(8)
    result = tune(spec, budget_s=5)  # measures nothing: local rank 0 did
    assert time.perf_counter() - started < 5
    assert result.nproc_per_node == 2
    assert result.recommended is not None
    assert result.recommended.config.num_workers == 1


def test_a_stale_handoff_is_not_taken(monkeypatch: pytest.MonkeyPatch) -> None:
    dataset = SquaresDataset(23)
    _ranks.write_handoff(dataset, _result(workers=1, nproc=2))
    path = _ranks.handoff_path(dataset, 8, 2)
    old = time.time() - 2 * _ranks.HANDOFF_SLACK_S
    os.utime(path, (old, old))
    monkeypatch.setattr(_ranks, "HANDOFF_GRACE_S", 0.0)
    monkeypatch.setattr(_ranks, "HANDOFF_POLL_S", 0.05)
    monkeypatch.setenv("LOCAL_RANK", "1")
    with pytest.raises(WellfedError) as info:
        _ranks.wait_for_local_rank_zero(dataset, 8, 2, budget_s=0.2)
    assert info.value.code == "WF012"
    assert "only local rank 0 measures" in str(info.value)
    assert Path(info.value.path) == path
