"""ContentionMeter: CPU of processes outside wellfed's tree, real processes (issue 15)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time

import pytest

from wellfed._contention import Contention, ContentionMeter

#: Burns {s} CPU-seconds, then sleeps (stays visible) until killed.
_BURN = "import time\nwhile time.process_time() < {s}: pass\ntime.sleep(120)\n"

#: Starts a CPU burner in a new session and exits, so the burner is re-parented away from
#: this process's tree, as another user's job would be; prints the burner's pid.
_ORPHAN = (
    "import subprocess, sys\n"
    "p = subprocess.Popen([sys.executable, '-c', sys.argv[1]], start_new_session=True,\n"
    "                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n"
    "print(p.pid, flush=True)\n"
)


def test_other_processes_count_and_our_own_children_do_not() -> None:
    meter = ContentionMeter().start()
    ours = subprocess.Popen([sys.executable, "-c", _BURN.format(s=0.5)])
    launcher = subprocess.run(
        [sys.executable, "-c", _ORPHAN, _BURN.format(s=0.5)],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    other = int(launcher.stdout.split()[0])
    try:
        deadline = time.monotonic() + 90
        while _burned(other) < 0.45 and time.monotonic() < deadline:
            time.sleep(0.1)
        used, window = meter.usage()
    finally:
        ours.kill()
        ours.wait(timeout=30)
        with contextlib.suppress(ProcessLookupError):
            os.kill(other, signal.SIGKILL)
    pids = {pid for pid, _, _ in used}
    assert ours.pid not in pids  # a child of ours is part of the measurement, not contention
    assert other in pids  # the re-parented burner is another process's load
    burner = next(cpus for pid, _, cpus in used if pid == other)
    assert burner * window >= 0.4  # CPU-seconds it spent inside the window (~0.5 burned)


def _burned(pid: int) -> float:
    import psutil

    try:
        t = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return 0.0
    return float(t.user + t.system)


@pytest.mark.parametrize(
    ("other", "usable", "contended"),
    [(0.1, 2, False), (0.5, 2, True), (0.6, 8, False), (2.0, 8, True)],
)
def test_contended_threshold(other: float, usable: int, contended: bool) -> None:
    c = Contention(other, usable, 30.0, ((42, "python", other),))
    assert c.contended is contended
    assert c.to_dict()["contended"] is contended
    assert f"{other:.1f} of {usable} usable CPUs" in c.describe()
