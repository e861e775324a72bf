"""Ray in tests: every test's Ray lives in a RAY_TMPDIR of its own and leaves no process behind.

Ray keeps its sessions, sockets and the ``ray_current_cluster`` file (the cluster a bare
``ray.init()`` joins) under ``$RAY_TMPDIR/ray`` (default ``/tmp/ray``). A test that gives its
Ray a fresh RAY_TMPDIR never meets another Ray on the machine (another test run, another
user's ``ray start``), and every process of its Ray (gcs_server, raylets, workers, the
dashboard agents) inherits that variable, which is how ``ray_processes`` finds them: a worker
renames itself ``ray::IDLE`` and its raylet may have been killed, so neither the command line
nor the process tree would.

Ray Data's usage statistics are switched off (``RAY_DATA_USAGE_DISABLED=1``,
``RAY_USAGE_STATS_ENABLED=0``): connected to a cluster it did not start, a Ray 2.60 driver
otherwise starts a daemon thread (``data-usage-metrics-poller``) that queries Prometheus every
10 s for the rest of the process and formats each failure's traceback, which on CPython 3.11
calls ``ast.parse``, racing the main thread's compiles (pytest's assertion rewriting) into
``SystemError: AST constructor recursion depth mismatch``. Tests also never report usage over
the network.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator

import psutil
import pytest


def ray_processes(tmpdir: str) -> list[psutil.Process]:
    """Live processes (not this one) whose environment has RAY_TMPDIR=tmpdir."""
    found = []
    for p in psutil.process_iter():
        if p.pid == os.getpid():
            continue
        try:
            if p.environ().get("RAY_TMPDIR") == tmpdir and p.status() != psutil.STATUS_ZOMBIE:
                found.append(p)
        except psutil.Error:  # exited meanwhile, or not ours to read
            continue
    return found


def describe(procs: list[psutil.Process]) -> list[tuple[int, str]]:
    """(pid, command line) of each process, for a failure message."""
    out = []
    for p in procs:
        try:
            out.append((p.pid, " ".join(p.cmdline())[:100]))
        except psutil.Error:
            out.append((p.pid, "?"))
    return out


@contextlib.contextmanager
def own_ray_tmpdir(monkeypatch: pytest.MonkeyPatch, wait_s: float = 60.0) -> Iterator[str]:
    """A fresh RAY_TMPDIR (short: Unix socket paths live under it), RAY_ADDRESS unset, usage
    statistics off; on exit, waits up to ``wait_s`` for every process of that Ray, and every
    thread started meanwhile (daemon or not), to end, kills the processes left and fails
    naming them."""
    # /tmp, not pytest's tmp_path: a socket path must fit in 107 bytes.
    tmpdir = tempfile.mkdtemp(prefix="wf-ray-", dir="/tmp" if os.path.isdir("/tmp") else None)
    monkeypatch.setenv("RAY_TMPDIR", tmpdir)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_DATA_USAGE_DISABLED", "1")
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    threads_before = set(threading.enumerate())
    try:
        yield tmpdir
    finally:
        deadline = time.monotonic() + wait_s
        left = ray_processes(tmpdir)
        while left and time.monotonic() < deadline:
            time.sleep(0.2)  # polling for exit
            left = ray_processes(tmpdir)
        leaked = describe(left)
        for p in left:
            with contextlib.suppress(psutil.Error):
                p.kill()
        threads = _new_threads(threads_before)
        while threads and time.monotonic() < deadline:
            time.sleep(0.05)  # polling for exit
            threads = _new_threads(threads_before)
        shutil.rmtree(tmpdir, ignore_errors=True)
    assert not leaked, f"Ray processes outlived the test: {leaked}"
    assert not threads, f"threads outlived the test's Ray: {[t.name for t in threads]}"


def _new_threads(before: set[threading.Thread]) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t not in before and t.is_alive()]
