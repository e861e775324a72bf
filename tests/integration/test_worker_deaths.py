"""A worker killed by a real signal is named everywhere wellfed sees it (issue 14, class 2).

create_dataloader's loaders raise WorkerStartError / WorkerCrashedError naming the worker (id
and pid), the signal, the samples it had not delivered, the likely cause with its evidence
(SIGKILL: "likely the OOM killer; memory at death: ...") and the fix, with torch's error
chained; the death is named also when torch's SIGCHLD handler raises it in the loop body. The
doctor reports WF124 (never WF101); tune's trial carries the named error. Workers die for real:
``ctypes.string_at(0)`` segfaults, ``os.kill(os.getpid(), SIGKILL)``. The autouse fixture fails
any test that leaves a process behind; the CLI test checks the tool's whole tree by a marker.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psutil
import pytest

import wellfed
from tests.helpers import SignalDataset
from wellfed._isolate import run_isolated
from wellfed.doctor import diagnose
from wellfed.measure import LoaderConfig, measure
from wellfed.target import spec_from_object

pytestmark = [pytest.mark.workers, pytest.mark.timeout(180)]

METHODS = [m for m in ("fork", "spawn") if m in multiprocessing.get_all_start_methods()]
ROOT = Path(__file__).resolve().parents[2]


def _loader(ds: object, method: str, **kwargs: object) -> wellfed.SeededDataLoader:
    kwargs.setdefault("batch_size", 2)
    return wellfed.create_dataloader(
        ds,
        num_workers=2,
        multiprocessing_context=method,
        timeout=60,
        on_unsafe="warn",
        **kwargs,  # type: ignore[arg-type]
    )


def _consume(loader: wellfed.SeededDataLoader) -> int:
    return sum(1 for _ in loader)


@pytest.mark.parametrize("method", METHODS)
def test_a_segfaulting_worker_is_named_with_signal_samples_cause_and_fix(method: str) -> None:
    # at=10: index 10 is in batch 5, sent when batch 1 is handed over, so at least one batch
    # was delivered whenever the death lands (batch 4, sent while batch 0 was handed over,
    # could kill its worker before the first delivery was counted: a WorkerStartError)
    loader = _loader(SignalDataset(32, "segfault", at=10), method)
    with pytest.raises(wellfed.WorkerCrashedError) as info:
        _consume(loader)
    err = info.value
    assert isinstance(err, RuntimeError)  # `except RuntimeError` keeps working
    assert err.code == "WF302"
    assert err.signal == "SIGSEGV"
    assert err.exitcode == -signal.SIGSEGV
    assert err.worker_id in (0, 1)
    assert isinstance(err.pid, int)
    assert err.batches_delivered >= 1
    # the worker died loading one of the batches it had been sent: those hold index >= 10
    assert err.indices
    assert max(err.indices) >= 10
    text = str(err)
    assert text.startswith(
        f"DataLoader worker {err.worker_id} (pid {err.pid}) was killed by SIGSEGV"
    )
    assert "a crash in native code" in text
    assert "num_workers=0" in text
    assert "faulthandler" in text
    if method == "fork":
        assert "do not survive fork (CUDA, OpenMP" in text
        assert "multiprocessing_context='spawn' or 'forkserver' (now 'fork')" in text
    else:
        assert "survive fork" not in text  # the fork hint is not spawn's cause
    assert text.endswith("[WF302]")
    assert "PyTorch said: " in text
    cause = err.__cause__
    assert isinstance(cause, (RuntimeError, ConnectionError, EOFError))  # torch's, chained
    assert not isinstance(cause, wellfed.WorkerError)


@pytest.mark.parametrize("method", METHODS)
def test_a_sigkilled_worker_is_likely_the_oom_killer_with_memory_at_death(method: str) -> None:
    # batch_size 8: index 8 opens the second batch, so the first batch is still delivered
    loader = _loader(SignalDataset(32, "SIGKILL", at=8), method, batch_size=8)
    with pytest.raises((wellfed.WorkerStartError, wellfed.WorkerCrashedError)) as info:
        _consume(loader)
    err = info.value
    assert err.signal == "SIGKILL"
    assert err.exitcode == -signal.SIGKILL
    assert "likely the OOM killer; memory at death: " in str(err) or (
        "the kernel's OOM killer; memory at death: " in str(err)
    )
    assert f"pid {err.pid}" in str(err)
    memory = err.memory
    assert memory["available_bytes"] > 0
    assert "Fix: lower num_workers (now 2) or prefetch_factor (now 2)" in str(err)
    # a kill that is no kernel OOM kill is not passed off as one
    before, after = memory.get("oom_kill_before"), memory.get("oom_kill_after")
    if before and after and before == after:
        assert "the kernel's oom_kill count did not change" in str(err)


def test_the_first_batch_never_came_is_a_start_error() -> None:
    loader = _loader(SignalDataset(32, "segfault", at=0), METHODS[0])
    with pytest.raises(wellfed.WorkerStartError) as info:
        _consume(loader)
    assert info.value.code == "WF301"
    assert info.value.batches_delivered == 0
    assert "before the first batch" in str(info.value)


def test_a_sigbus_names_dev_shm() -> None:
    loader = _loader(SignalDataset(32, "SIGBUS", at=4), METHODS[0])
    with pytest.raises(wellfed.WorkerError) as info:
        _consume(loader)
    err = info.value
    assert err.signal == "SIGBUS"
    assert "shared memory exhausted" in str(err)
    assert "/dev/shm (" in str(err)
    assert "--shm-size" in str(err)


@pytest.mark.parametrize("method", METHODS)
def test_a_death_landing_in_the_loop_body_is_named_there(method: str, tmp_path: Path) -> None:
    # torch's SIGCHLD handler raises wherever the main thread is: here, in the training step.
    go = tmp_path / "go"
    ds = SignalDataset(64, "segfault", at=4, go_file=str(go))
    loader = _loader(ds, method, prefetch_factor=1)
    me = psutil.Process()
    it = iter(loader)
    batch = next(it)
    assert batch is not None
    workers = [psutil.Process(w.pid) for w in it._workers]
    with pytest.raises(wellfed.WorkerCrashedError) as info:
        _training_step(me, go)
    err = info.value
    assert err.signal == "SIGSEGV"
    assert err.indices == [4, 5]
    assert "is killed by signal: Segmentation fault" in str(err)  # torch's SIGCHLD text
    assert isinstance(err.__cause__, RuntimeError)
    assert loader._iterator is None  # the loader let go of it: its next epoch starts afresh
    # the other worker is stopped at once, though the exception (and so the iterator) lives on
    deadline = time.monotonic() + 5
    while any(not _zombie(w) for w in workers) and time.monotonic() < deadline:
        time.sleep(0.01)  # polling for exit, not synchronising
    assert all(_zombie(w) for w in workers)
    del it


def _training_step(me: psutil.Process, go: Path) -> None:
    """Stands for the training step between two batches: no next() runs here. It creates
    ``go`` first (inside the caller's pytest.raises: the death may land as soon as it exists)."""
    go.touch()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # poll for the death; the handler may raise anywhere
        if any(_zombie(c) for c in me.children()):
            break
        time.sleep(0.01)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        time.sleep(0.01)
    pytest.fail("no error was raised for the dead worker")


def _zombie(p: psutil.Process) -> bool:
    try:
        return p.status() == psutil.STATUS_ZOMBIE
    except psutil.Error:
        return True


def test_a_worker_exiting_with_a_code_is_named_without_a_signal() -> None:
    from tests.doctor_corpus.datasets import CrashingDataset

    loader = _loader(CrashingDataset(), METHODS[0])
    with pytest.raises(wellfed.WorkerStartError) as info:
        _consume(loader)
    assert info.value.signal is None
    assert info.value.exitcode == 3
    assert "exited with code 3" in str(info.value)


# --- tune: a trial whose workers die --------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_a_trial_whose_worker_dies_is_failed_with_the_named_error(method: str) -> None:
    spec = spec_from_object(SignalDataset(64, "SIGKILL", at=8))
    cfg = LoaderConfig(
        num_workers=2,
        batch_size=4,
        persistent_workers=True,
        multiprocessing_context=method,
        prefetch_factor=2,
    )
    trial = measure(spec, cfg, timeout_s=90, measure_s=0.3, min_batches=4, windows=2)
    assert trial.status == "failed"
    assert trial.error_code in ("WF301", "WF302")
    assert trial.error is not None
    assert "was killed by SIGKILL" in trial.error
    assert "likely the OOM killer; memory at death: " in trial.error or (
        "the kernel's OOM killer" in trial.error
    )
    assert "Traceback" not in trial.error  # the message says it all
    assert trial.to_dict()["error_code"] == trial.error_code


def test_a_group_trial_whose_worker_dies_names_the_rank_and_the_death() -> None:
    spec = spec_from_object(SignalDataset(64, "SIGKILL", at=8))
    cfg = LoaderConfig(num_workers=1, batch_size=4, persistent_workers=True)
    trial = measure(spec, cfg, timeout_s=90, measure_s=0.3, min_batches=4, windows=2, nproc=2)
    assert trial.status == "failed"
    assert trial.error_code in ("WF301", "WF302")
    assert trial.error is not None
    assert trial.error.startswith(
        (
            "rank 0: WorkerStartError: DataLoader worker 0 (pid ",
            "rank 0: WorkerCrashedError: DataLoader worker 0 (pid ",
            "rank 1: WorkerStartError: DataLoader worker 0 (pid ",
            "rank 1: WorkerCrashedError: DataLoader worker 0 (pid ",
        )
    )
    assert "was killed by SIGKILL" in trial.error
    assert "Traceback" not in trial.error


def test_tune_reports_the_dead_workers_trial() -> None:
    from wellfed.tune import tune

    spec = spec_from_object(SignalDataset(64, "segfault", at=8)).with_batch_size(4)
    result = tune(spec, budget_s=60, start_method=METHODS[0], max_workers=2, measure_s=0.3)
    failed = [t for t in result.trials if t.config.num_workers > 0 and not t.ok]
    assert failed, [(t.config.label(), t.status) for t in result.trials]
    assert all("killed by SIGSEGV" in (t.error or "") for t in failed)
    assert all(t.error_code in ("WF301", "WF302") for t in failed)
    assert result.recommended is not None
    assert result.recommended.config.num_workers == 0


# --- the doctor: WF124, never WF101 ----------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_doctor_names_a_segfault_not_an_unpicklable_dataset(method: str) -> None:
    report = diagnose(SignalDataset(32, "segfault", at=3), start_methods=[method], timeout_s=60)
    codes = [f.code for f in report.findings]
    assert "WF101" not in codes
    assert "WF102" not in codes
    (f,) = [f for f in report.findings if f.code == "WF124"]
    assert f.severity == "error"
    assert f.path == "type(dataset).__getitem__"
    assert f.start_methods == (method,)
    assert "was killed by SIGSEGV" in f.message
    assert "a crash in native code" in f.message
    assert "num_workers=0" in f.fix
    assert f.evidence.startswith(f"confirmed live ({method}): exit code -11 (SIGSEGV)")
    (run,) = report.probes
    assert run.status == "failed"
    assert run.observations["worker_death"]["signal"] == "SIGSEGV"


def test_doctor_names_sigkill_and_bus_with_their_causes() -> None:
    killed = diagnose(SignalDataset(32, "SIGKILL", at=3), start_methods=["fork"], timeout_s=60)
    (f,) = [f for f in killed.findings if f.code == "WF124"]
    assert "was killed by SIGKILL" in f.message
    assert "OOM killer; memory at death: " in f.message
    assert "(now 2)" not in f.fix  # the probe's own 2 workers are not the user's setting
    bus = diagnose(SignalDataset(32, "SIGBUS", at=3), start_methods=["fork"], timeout_s=60)
    (g,) = [g for g in bus.findings if g.code == "WF124"]
    assert g.path == "env.dev_shm"
    assert "shared memory exhausted" in g.message


def _marked(marker: str) -> list[psutil.Process]:
    """Live processes whose environment carries WELLFED_TEST_MARK=marker (the tool's tree)."""
    found = []
    for p in psutil.process_iter():
        try:
            if p.environ().get("WELLFED_TEST_MARK") == marker and p.status() != "zombie":
                found.append(p)
        except psutil.Error:
            continue
    return found


def test_doctor_cli_on_segfaulting_workers_leaves_nothing_behind() -> None:
    marker = uuid.uuid4().hex
    env = {
        **os.environ,
        "WELLFED_TEST_MARK": marker,
        "PYTHONPATH": os.pathsep.join(
            [str(ROOT / "src"), str(ROOT), os.environ.get("PYTHONPATH", "")]
        ),
    }
    args = [sys.executable, "-m", "wellfed", "doctor", "tests.helpers:segfaulting"]
    args += [a for m in METHODS for a in ("--start-method", m)]
    done = subprocess.run(
        [*args, "--json"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=150
    )
    assert done.returncode == 1, done.stderr[-2000:]
    data = json.loads(done.stdout)
    codes = [f["code"] for f in data["findings"]]
    assert "WF124" in codes, codes
    assert "WF101" not in codes, codes
    (f,) = [f for f in data["findings"] if f["code"] == "WF124"]
    assert "SIGSEGV" in f["message"]
    assert f["start_methods"] == METHODS
    text = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=150)
    assert text.returncode == 1
    assert "[WF124] worker-config at type(dataset).__getitem__" in text.stdout
    assert "was killed by SIGSEGV" in text.stdout
    deadline = time.monotonic() + 10
    while _marked(marker) and time.monotonic() < deadline:
        time.sleep(0.1)  # polling for exit, not synchronising
    left = _marked(marker)
    assert not left, [(p.pid, p.cmdline()) for p in left]


# --- the isolated process: a SIGKILL is always reported as one -------------------------------


def _kill_myself() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def test_a_sigkilled_isolated_process_is_never_reported_as_not_exited() -> None:
    # The race: the pipe's EOF was seen before the child could be reaped, and kill_tree's
    # psutil wait took its exit status (~1 run in 20 said "the process did not exit").
    errors = {run_isolated(_kill_myself, timeout_s=30).error for _ in range(60)}
    assert errors == {
        "the process was killed by SIGKILL (likely the out-of-memory killer; see `dmesg` and "
        "`wellfed info`)"
    }
