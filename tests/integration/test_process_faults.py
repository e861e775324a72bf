"""Signals to the tool and hung workers leave nothing behind: no process, no /dev/shm entry.

The signal tests run the real command (``wellfed.cli.main`` through
scripts/wellfed_semprefix.py, which sets multiprocessing's semaphore prefix to a name of this
test's own, so that its /dev/shm entries can be told from those of anything else running here)
on a dataset whose worker processes announce that they hang, then block forever. Once a worker
hangs, the test signals the tool; then, until 10 s after the tool exited, it waits for every
process carrying the test's mark in its environment to be gone, and for the semaphores with
the test's prefix to be unlinked. Both must be true 10 s after the exit at the latest.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from multiprocessing import process
from pathlib import Path

import psutil
import pytest

from tests.helpers_process_faults import HANG_DIR_ENV, AnnouncedHang

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).with_name("scripts") / "wellfed_semprefix.py"
SHM = Path("/dev/shm")
MARK_ENV = "WELLFED_TEST_MARK"

#: The issue's rule: nothing of the tool's may be alive this long after it exited.
AFTER_EXIT_S = 10.0

pytestmark = [
    pytest.mark.workers,
    pytest.mark.skipif(not SHM.is_dir() or not hasattr(os, "fork"), reason="POSIX /dev/shm"),
]


def _marked(token: str) -> list[psutil.Process]:
    """Live (not zombie) processes whose environment carries MARK_ENV=token."""
    found = []
    for p in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if p.environ().get(MARK_ENV) == token and p.status() != psutil.STATUS_ZOMBIE:
                found.append(p)
    return found


def _entries(prefix: str) -> list[str]:
    """This test's /dev/shm entries: semaphores named "<prefix>-<random>"."""
    return sorted(p.name for p in SHM.glob(f"sem.{prefix}-*"))


def _describe(procs: list[psutil.Process]) -> list[str]:
    out = []
    for p in procs:
        with contextlib.suppress(psutil.Error):
            out.append(f"{p.pid} {' '.join(p.cmdline())[:100]}")
    return out


@contextlib.contextmanager
def _cleanup(token: str, prefix: str) -> Iterator[None]:
    """Whatever the test finds, leave nothing of its own behind."""
    try:
        yield
    finally:
        for p in _marked(token):
            with contextlib.suppress(psutil.Error):
                p.kill()
        for name in _entries(prefix):
            with contextlib.suppress(OSError):
                (SHM / name).unlink()


def _wait_until_gone(token: str, prefix: str, exited_at: float) -> tuple[list[str], list[str]]:
    """Poll until no marked process and no prefixed entry is left, or AFTER_EXIT_S passed."""
    while True:
        procs, entries = _marked(token), _entries(prefix)
        if (not procs and not entries) or time.monotonic() - exited_at > AFTER_EXIT_S:
            return _describe(procs), entries
        time.sleep(0.1)  # polling for exits, not synchronising


def _start(tmp_path: Path, token: str, argv: list[str]) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    env.update(
        {
            MARK_ENV: token,
            HANG_DIR_ENV: str(tmp_path),
            "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)]),
        }
    )
    with (tmp_path / "stdout.txt").open("wb") as out, (tmp_path / "stderr.txt").open("wb") as err:
        return subprocess.Popen(
            [sys.executable, str(SCRIPT), token, *argv],
            env=env,
            stdout=out,
            stderr=err,
            cwd=tmp_path,
        )


def _wait_for_hang(proc: subprocess.Popen[bytes], tmp_path: Path, prefix: str) -> int:
    """Block until a worker announced its hang; return the most prefixed entries seen."""
    deadline = time.monotonic() + 150
    seen = 0
    while not list(tmp_path.glob("hang-*")):
        seen = max(seen, len(_entries(prefix)))
        err = (tmp_path / "stderr.txt").read_text(errors="replace")
        assert proc.poll() is None, f"the tool exited ({proc.returncode}) before a hang: {err}"
        assert time.monotonic() < deadline, f"no worker hung within 150 s: {err}"
        time.sleep(0.1)  # polling for the hang, not synchronising
    return max(seen, len(_entries(prefix)))


COMMANDS = {
    "tune": [
        "tune",
        "tests.helpers_process_faults:hang_in_workers",
        "--no-store",
        "--max-threads",
        "0",
        "--budget-s",
        "120",
    ],
    "doctor": ["doctor", "tests.helpers_process_faults:hang_in_workers", "--timeout-s", "120"],
}


@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    ("command", "signame", "method"),
    [
        ("tune", "SIGTERM", "spawn"),
        ("tune", "SIGKILL", "spawn"),
        ("tune", "SIGHUP", "fork"),
        ("doctor", "SIGTERM", "forkserver"),
        ("doctor", "SIGKILL", "spawn"),
    ],
)
def test_a_signal_to_the_tool_during_a_hung_trial_leaves_nothing(
    tmp_path: Path, command: str, signame: str, method: str
) -> None:
    token = f"wft{uuid.uuid4().hex[:12]}"
    argv = [*COMMANDS[command], "--start-method", method]
    with _cleanup(token, token):
        proc = _start(tmp_path, token, argv)
        try:
            seen = _wait_for_hang(proc, tmp_path, token)
            during = _describe(_marked(token))
            # a tool, a trial (or probe) process, its workers
            assert len(during) >= 3, during
            if method != "fork":  # fork's semaphores are unlinked at creation
                assert seen > 0, "the hung loader's named semaphores were not seen in /dev/shm"
            sig = getattr(signal, signame)
            proc.send_signal(sig)
            code = proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        exited_at = time.monotonic()
        left, entries = _wait_until_gone(token, token, exited_at)
        err = (tmp_path / "stderr.txt").read_text(errors="replace")
        assert not left, f"processes alive {AFTER_EXIT_S:.0f}s after the tool exited: {left}"
        assert not entries, f"/dev/shm entries left: {entries}"
        if sig == signal.SIGKILL:
            assert code == -sig
        else:
            assert code == 128 + sig, err
            assert f"terminated by {signame}; the processes wellfed had started were stopped" in err


@pytest.mark.timeout(300)
def test_doctor_on_a_hanging_dataset_leaves_no_dev_shm_entry(tmp_path: Path) -> None:
    token = f"wfd{uuid.uuid4().hex[:12]}"
    argv = [
        "doctor",
        "tests.helpers_process_faults:hang_in_workers",
        "--start-method",
        "spawn",
        "--timeout-s",
        "15",
    ]
    with _cleanup(token, token):
        proc = _start(tmp_path, token, argv)
        seen = 0
        try:
            while proc.poll() is None:
                seen = max(seen, len(_entries(token)))
                time.sleep(0.1)  # polling while the probe runs, not synchronising
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=240)
        left, entries = _wait_until_gone(token, token, time.monotonic())
        out = (tmp_path / "stdout.txt").read_text(errors="replace")
        assert proc.returncode == 1, out
        assert "hung" in out.lower(), out
        assert seen > 0, f"the hung probe's named semaphores were not seen in /dev/shm: {out}"
        assert not entries, f"/dev/shm entries left: {entries}"
        assert not left, f"processes alive after doctor exited: {left}"


@pytest.mark.timeout(120)
def test_a_trial_killed_at_its_timeout_leaves_no_dev_shm_entry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """tune's trial driver, in this process, on workers that hang under spawn."""
    from wellfed.measure import LoaderConfig, measure
    from wellfed.target import spec_from_object

    prefix = f"wfm{uuid.uuid4().hex[:12]}"
    monkeypatch.setitem(process.current_process()._config, "semprefix", "/" + prefix)
    monkeypatch.setenv(HANG_DIR_ENV, str(tmp_path))
    spec = spec_from_object(AnnouncedHang())
    config = LoaderConfig(num_workers=2, batch_size=4, multiprocessing_context="spawn")
    trials = []
    runner = threading.Thread(
        target=lambda: trials.append(measure(spec, config, measure_s=1.0, timeout_s=12.0))
    )
    seen = 0
    with _cleanup("-", prefix):
        runner.start()
        while runner.is_alive():
            seen = max(seen, len(_entries(prefix)))
            runner.join(0.1)
        _, entries = _wait_until_gone("-", prefix, time.monotonic())
        assert trials[0].status == "timeout", trials[0]
        assert seen > 0, "the hung trial's named semaphores were not seen in /dev/shm"
        assert not entries, f"/dev/shm entries left: {entries}"


def _forks_of_me_since(started: float) -> list[psutil.Process]:
    """Live processes with this process's command line, started after ``started`` (epoch s)."""
    me = psutil.Process()
    found = []
    for p in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if (
                p.pid != me.pid
                and p.create_time() >= started
                and p.cmdline() == me.cmdline()
                and p.status() != psutil.STATUS_ZOMBIE
            ):
                found.append(p)
    return found


def _create_block_and_hang(name: str) -> None:
    from multiprocessing import shared_memory

    shared_memory.SharedMemory(name=name, create=True, size=4096)
    threading.Event().wait()


def _attach_block(name: str) -> int:
    from multiprocessing import shared_memory

    block = shared_memory.SharedMemory(name=name)  # Python < 3.13 registers it here too
    size = block.size
    block.close()
    return size


@pytest.mark.timeout(60)
def test_shared_memory_of_a_killed_tree_is_unlinked_and_the_callers_is_kept() -> None:
    from multiprocessing import shared_memory

    from wellfed._isolate import run_isolated

    made = f"wfs{uuid.uuid4().hex[:12]}"
    try:
        result = run_isolated(_create_block_and_hang, made, timeout_s=3.0)
        assert result.status == "timeout"
        deadline = time.monotonic() + AFTER_EXIT_S
        while (SHM / made).exists() and time.monotonic() < deadline:
            time.sleep(0.05)  # polling for the unlink, not synchronising
        assert not (SHM / made).exists(), "the killed tree's shared memory was left"
    finally:
        with contextlib.suppress(OSError):
            (SHM / made).unlink()
    mine = shared_memory.SharedMemory(name=f"wfs{uuid.uuid4().hex[:12]}", create=True, size=4096)
    try:
        started = time.time() - 1.0
        result = run_isolated(_attach_block, mine.name, timeout_s=30.0)
        assert result.status == "ok", result.error
        # the run's sentinel (a fork of this process, orphaned) unlinks, if at all, on its way out
        deadline = time.monotonic() + AFTER_EXIT_S
        while _forks_of_me_since(started) and time.monotonic() < deadline:
            time.sleep(0.05)  # polling for the sentinel's exit, not synchronising
        assert not _forks_of_me_since(started), "the sentinel outlived its tree"
        assert (SHM / mine.name).exists(), "a block the caller made was unlinked by the tree"
    finally:
        mine.close()
        mine.unlink()


def test_a_pool_the_users_dataset_ends_with_sigterm_prints_no_wellfed_traceback() -> None:
    # the pool's workers are forked from the CLI process and inherit its SIGTERM handler
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "wellfed",
            "doctor",
            "tests.helpers_process_faults:pool_in_init",
            "--static-only",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert run.returncode == 0, run.stderr
    assert "_Terminated" not in run.stderr
    assert "Traceback" not in run.stderr
