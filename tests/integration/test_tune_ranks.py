"""Per-rank tuning end to end: the real ``wellfed tune --nproc-per-node 2`` CLI measures both
ranks' loaders at once, and nothing it started outlives it (done, failed, hung, Ctrl-C)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psutil
import pytest

from tests.helpers import FailingDataset, HangingDataset, make_squares
from tests.helpers_ranks import member
from wellfed import create_dataloader
from wellfed._isolate import run_isolated_group
from wellfed.measure import LoaderConfig, measure
from wellfed.target import spec_from_object

pytestmark = pytest.mark.workers

ROOT = Path(__file__).resolve().parents[2]
LAUNCHER_VARS = ("LOCAL_WORLD_SIZE", "LOCAL_RANK", "RANK", "WORLD_SIZE")


def _env(marker: str) -> dict[str, str]:
    """This process's environment (WELLFED_CACHE_DIR included) plus a marker every process
    the CLI starts inherits, and the package under test first on the path."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARS}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), str(ROOT), env.get("PYTHONPATH", "")])
    env["WF_TEST_MARKER"] = marker
    return env


def _marked(marker: str) -> list[psutil.Process]:
    """Live processes carrying the marker: the CLI and everything it started, orphans too."""
    found = []
    for p in psutil.process_iter():
        try:
            if p.environ().get("WF_TEST_MARKER") == marker and p.status() != psutil.STATUS_ZOMBIE:
                found.append(p)
        except psutil.Error:
            continue
    return found


def _assert_none_left(marker: str) -> None:
    deadline = time.monotonic() + 10.0
    left = _marked(marker)
    while left and time.monotonic() < deadline:
        time.sleep(0.1)  # polling for exit, not synchronising
        left = _marked(marker)
    for p in left:
        p.kill()
    assert not left, [(p.pid, " ".join(p.cmdline())[:100]) for p in left]


def _tune_cli(*args: str, marker: str) -> list[str]:
    return [sys.executable, "-m", "wellfed", "tune", "tests.helpers:make_squares", *args]


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_a_group_runs_at_once_and_one_failure_stops_the_rest(method: str) -> None:
    envs = [{"LOCAL_RANK": str(rank)} for rank in range(3)]
    done = run_isolated_group(
        member, [(-1,)] * 3, timeout_s=60, context=method, env_per_member=envs
    )
    assert [r.status for r in done] == ["ok"] * 3
    assert [r.value[:2] for r in done] == [(0, "0"), (1, "1"), (2, "2")]
    met = [r.value[2] for r in done]
    assert max(met) - min(met) < 1.0  # released by one barrier
    failed = run_isolated_group(member, [(1,)] * 3, timeout_s=60, context=method)
    assert [r.status for r in failed] == ["stopped", "failed", "stopped"]
    assert "member 1 fails (test)" in (failed[1].error or "")
    assert failed[0].error == "stopped: group member 1 failed first"


def test_cli_measures_both_ranks_at_once(tmp_path: Path) -> None:
    marker = uuid.uuid4().hex
    out = tmp_path / "tune.json"
    cmd = _tune_cli(
        "--nproc-per-node",
        "2",
        "--batch-size",
        "4",
        "--budget-s",
        "30",
        "--max-workers",
        "2",
        "--max-threads",
        "2",
        "--json",
        str(out),
        marker=marker,
    )
    done = subprocess.run(
        cmd, env=_env(marker), capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    _assert_none_left(marker)
    assert done.returncode == 0, done.stderr[-3000:]
    data = json.loads(out.read_text())
    assert data["nproc_per_node"] == 2
    assert data["workload"]["nproc_per_node_source"] == "given"
    trials = [t for t in data["trials"] if t["status"] == "ok"]
    assert trials
    for t in trials:
        assert t["nproc"] == 2
        assert [r["rank"] for r in t["ranks"]] == [0, 1]
        rates = [r["samples_per_s"] for r in t["ranks"]]
        assert t["samples_per_s"] == min(rates)  # the slowest rank's
        assert t["aggregate_samples_per_s"] == pytest.approx(2 * min(rates))
        # both ranks were measured at once: every run's spans overlap
        for span0, span1 in zip(
            t["ranks"][0]["spans_unix_s"], t["ranks"][1]["spans_unix_s"], strict=True
        ):
            assert max(span0[0], span1[0]) < min(span0[1], span1[1]), (span0, span1)
    # the caps are per node: --max-workers 2 and --max-threads 2 are 1 each per rank
    assert max(t["config"]["num_workers"] for t in data["trials"]) == 1
    assert max(t["config"]["num_threads"] for t in data["trials"]) <= 1
    assert {t["config"]["num_workers"] > 0 for t in trials} == {False, True}  # processes reached
    rec = data["recommended"]
    assert rec["code"].startswith("# per rank: each of the 2 local ranks builds this loader")
    assert rec["reasons"]["nproc_per_node"].startswith("2 (given)")
    stored = Path(data["stored_path"])
    assert stored.name.endswith(".nproc2.json")
    assert stored.parent == Path(os.environ["WELLFED_CACHE_DIR"]) / "tune"
    assert stored.is_file()
    assert "2 ranks at once" in done.stdout
    assert "Recommended per rank" in done.stdout
    assert "time bound 30s" in done.stderr or "time bound 30s" in done.stdout


def test_auto_under_local_world_size_2_picks_the_nproc2_result(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from wellfed.tune import tune

    for name in LAUNCHER_VARS:
        monkeypatch.delenv(name, raising=False)
    spec = spec_from_object(make_squares()).with_batch_size(4)
    result = tune(spec, budget_s=15, max_threads=0, max_workers=2, measure_s=0.3, nproc_per_node=2)
    assert result.stored_path is not None
    assert result.stored_path.endswith(".nproc2.json")
    assert result.recommended is not None
    expected = result.recommended.config.num_workers
    single = create_dataloader(make_squares(), batch_size=4, num_workers="auto")
    assert ".nproc2.json" not in single.plan.setting("num_workers").reason
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    loader = create_dataloader(make_squares(), batch_size=4, num_workers="auto")
    setting = loader.plan.setting("num_workers")
    assert result.stored_path in setting.reason
    assert setting.value == expected


def test_a_failing_rank_fails_the_trial_and_leaves_no_process() -> None:
    spec = spec_from_object(FailingDataset(32, fail_at=5))
    config = LoaderConfig(num_workers=1, batch_size=4, persistent_workers=True)
    trial = measure(spec, config, measure_s=0.3, nproc=2, timeout_s=60)
    assert trial.status == "failed"
    assert trial.error is not None
    assert trial.error.startswith(("rank 0:", "rank 1:"))
    assert "sample 5 is corrupt (test)" in trial.error
    assert trial.nproc == 2


def test_a_hanging_rank_times_out_and_leaves_no_process() -> None:
    spec = spec_from_object(HangingDataset(32, hang_at=4))
    config = LoaderConfig(num_workers=1, batch_size=4, persistent_workers=True)
    started = time.perf_counter()
    trial = measure(spec, config, measure_s=0.3, nproc=2, timeout_s=4)
    assert trial.status == "timeout"
    assert time.perf_counter() - started < 30


def test_ctrl_c_leaves_no_process(tmp_path: Path) -> None:
    marker = uuid.uuid4().hex
    cmd = _tune_cli("--nproc-per-node", "2", "--batch-size", "4", "--no-store", marker=marker)
    proc = subprocess.Popen(
        cmd,
        env=_env(marker),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        cwd=ROOT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        # wait until both ranks' trial processes run (the CLI, the 2 ranks, maybe workers)
        while len(_marked(marker)) < 3 and time.monotonic() < deadline:
            time.sleep(0.1)  # polling for the trial processes to appear
        assert len(_marked(marker)) >= 3
        os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C sends to its foreground
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        assert proc.stderr is not None
        proc.stderr.close()
    assert proc.returncode == 130
    _assert_none_left(marker)


def test_under_torchrun_local_rank_0_measures_for_both(tmp_path: Path) -> None:
    marker = uuid.uuid4().hex
    out = tmp_path / "tune.json"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node=2",
        "-m",
        "wellfed",
        "tune",
        "tests.helpers:make_squares",
        "--batch-size",
        "4",
        "--budget-s",
        "20",
        "--max-threads",
        "0",
        "--json",
        str(out),
    ]
    env = {**_env(marker), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180, cwd=ROOT)
    _assert_none_left(marker)
    assert done.returncode == 0, done.stderr[-3000:]
    data = json.loads(out.read_text())
    assert data["nproc_per_node"] == 2
    assert data["workload"]["nproc_per_node_source"] == "LOCAL_WORLD_SIZE=2"
    assert all(t["nproc"] == 2 for t in data["trials"])
    assert Path(data["stored_path"]).name.endswith(".nproc2.json")
    # one table (local rank 0's); local rank 1 waited for it instead of measuring 2 more
    assert done.stdout.count("Recommended per rank") == 1
    assert "local rank 1 of 2: local rank 0 measures all 2 loaders at once" in done.stderr
