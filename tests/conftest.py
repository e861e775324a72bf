"""Shared fixtures: --runslow, the gpu marker, and a check that no process outlives a test."""

from __future__ import annotations

import contextlib
import gc
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
HYMENOPTERA = SHARED / "data" / "hymenoptera_data"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--runslow", action="store_true", default=False, help="run slow tests")


def pytest_configure(config: pytest.Config) -> None:
    """A run started as a background job (``cmd &`` in a non-interactive shell, as POSIX
    shells start it) has SIGINT ignored, and every process it starts inherits the ignore
    through exec: the Ctrl-C tests' children would never see their SIGINT. Python's own
    handler here is reset to the default in each child at exec, as in a terminal's run."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip_slow = pytest.mark.skip(reason="slow: run with --runslow")
    cuda = _cuda_available()
    skip_gpu = pytest.mark.skip(reason="gpu: no CUDA device here")
    for item in items:
        if "slow" in item.keywords and not config.getoption("--runslow"):
            item.add_marker(skip_slow)
        if "gpu" in item.keywords and not cuda:
            item.add_marker(skip_gpu)


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def _helper_pids() -> set[int]:
    """Pids of multiprocessing's own long-lived helpers (forkserver, resource tracker)."""
    pids: set[int] = set()
    try:
        from multiprocessing import forkserver, resource_tracker

        fs_pid = getattr(forkserver._forkserver, "_forkserver_pid", None)
        rt_pid = getattr(resource_tracker._resource_tracker, "_pid", None)
        pids.update(p for p in (fs_pid, rt_pid) if p)
    except (ImportError, AttributeError):
        pass
    return pids


@pytest.fixture(autouse=True)
def _isolated_cache(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stored tune results go to a temporary folder, never to the user's ~/.cache."""
    monkeypatch.setenv("WELLFED_CACHE_DIR", str(tmp_path_factory.mktemp("wellfed-cache")))


@pytest.fixture(autouse=True)
def no_leaked_processes() -> Iterator[None]:
    """Fail the test if child processes or non-daemon threads outlive it."""
    me = psutil.Process(os.getpid())
    before = {p.pid for p in me.children(recursive=True)}
    threads_before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + 10.0
    leaked: list[psutil.Process] = []
    while True:
        ignore = before | _helper_pids()
        leaked = [p for p in me.children(recursive=True) if p.pid not in ignore and _alive(p)]
        if not leaked or time.monotonic() > deadline:
            break
        time.sleep(0.05)  # polling for exit, not synchronising the test
    for p in leaked:
        with contextlib.suppress(psutil.Error):
            p.kill()
    for child in multiprocessing.active_children():  # reap what we killed
        child.join(timeout=1)
    # wellfed's thread workers are daemons, but none may outlive its loader either
    fetchers = _new_thread_workers(threads_before)
    while fetchers and time.monotonic() < deadline:
        gc.collect()  # an iterator dropped inside a reference cycle
        time.sleep(0.05)
        fetchers = _new_thread_workers(threads_before)
    new_threads = [
        t
        for t in threading.enumerate()
        if t not in threads_before and not t.daemon and t.is_alive()
    ]
    assert not leaked, f"processes outlived the test: {[(p.pid, _cmd(p)) for p in leaked]}"
    assert not new_threads, f"non-daemon threads outlived the test: {new_threads}"
    assert not fetchers, f"wellfed thread workers outlived their loader: {fetchers}"


def _new_thread_workers(before: set[threading.Thread]) -> list[threading.Thread]:
    return [
        t
        for t in threading.enumerate()
        if t not in before and t.name.startswith("wellfed-thread") and t.is_alive()
    ]


def _alive(p: psutil.Process) -> bool:
    try:
        return p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _cmd(p: psutil.Process) -> str:
    try:
        return " ".join(p.cmdline())[:120]
    except psutil.Error:
        return "?"


@pytest.fixture
def hymenoptera() -> Path:
    """The shared real-photo dataset; skips when ../shared is absent (a plain clone)."""
    if not HYMENOPTERA.is_dir():
        pytest.skip("../shared/data/hymenoptera_data is absent")
    return HYMENOPTERA


@pytest.fixture
def ray_tmpdir(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """This test's own RAY_TMPDIR; fails the test if a process of its Ray outlives it
    (tests/helpers_ray.py)."""
    from tests.helpers_ray import own_ray_tmpdir

    with own_ray_tmpdir(monkeypatch) as tmpdir:
        yield tmpdir
