"""What Linux shows about a loader's processes and the storage under them (``/proc``).

Every reader returns None where the file is missing or unreadable (not Linux, a container
that hides it, a process that just exited), so a verdict uses a cause only where this machine
can see it. Nothing here writes or signals.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = [
    "CLOCK_TICKS_PER_S",
    "disk_busy_ms",
    "psi_io_us",
    "read_io",
    "read_schedstat",
    "read_stat",
    "read_uss_bytes",
    "read_wchan",
    "wait_class",
]

try:
    CLOCK_TICKS_PER_S = int(os.sysconf("SC_CLK_TCK"))
except (AttributeError, ValueError, OSError):  # not POSIX
    CLOCK_TICKS_PER_S = 100

_PROC = Path("/proc")


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except (OSError, ValueError):
        return None


def read_stat(pid: int) -> tuple[str, int] | None:
    """(state letter, CPU ticks in user + system mode) of ``pid`` from ``/proc/<pid>/stat``.

    The state is R (running), S (sleeping), D (uninterruptible: disk wait), Z, T...; ticks
    are ``CLOCK_TICKS_PER_S`` per second.
    """
    text = _read(_PROC / str(pid) / "stat")
    if not text:
        return None
    fields = text[text.rfind(")") + 2 :].split()  # comm may hold spaces and parentheses
    try:
        return fields[0], int(fields[11]) + int(fields[12])
    except (IndexError, ValueError):
        return None


def read_schedstat(pid: int, tid: int | None = None) -> tuple[int, int] | None:
    """(ns on a CPU, ns waiting for a CPU while runnable) of ``pid`` (or its thread ``tid``).

    From ``/proc/<pid>[/task/<tid>]/schedstat``: the second figure is run-queue wait, time in
    which the process could run but every CPU it may use was taken.
    """
    path = (
        _PROC / str(pid) / "schedstat"
        if tid is None
        else _PROC / str(pid) / "task" / str(tid) / "schedstat"
    )
    text = _read(path)
    if not text:
        return None
    parts = text.split()
    try:
        return int(parts[0]), int(parts[1])
    except (IndexError, ValueError):
        return None


def read_wchan(pid: int) -> str | None:
    """The kernel function ``pid`` sleeps in (``/proc/<pid>/wchan``), or None."""
    text = _read(_PROC / str(pid) / "wchan")
    if not text or text.strip() in ("", "0"):
        return None
    return text.strip()


#: wchan names of a process waiting for work: a DataLoader worker blocked on its index queue
#: (``poll``/``select`` on the queue's pipe; a socket read with a timeout looks the same).
_IDLE = ("poll", "select", "epoll")
_SLEEP = ("nanosleep",)
_LOCK = ("futex",)


def wait_class(state: str, wchan: str | None) -> str:
    """One of "cpu", "disk", "idle", "sleep", "lock", "other" for a sampled process.

    "cpu": running or runnable (R). "disk": uninterruptible sleep (D: block I/O, page
    faults on slow storage, NFS). "idle": sleeping in poll/select (a worker waiting for its
    next index, or a socket read with a timeout). "sleep": sleeping in nanosleep (the dataset
    sleeps: back-off, rate limits). "lock": in futex (a lock or another thread's GIL).
    "other": any other sleep (a blocking socket or pipe read: network, remote storage).
    A sleeping process whose wchan reads empty woke up between the two reads: the caller
    leaves such a sample out.
    """
    if state == "R":
        return "cpu"
    if state == "D":
        return "disk"
    name = wchan or ""
    if any(k in name for k in _SLEEP):
        return "sleep"
    if any(k in name for k in _LOCK):
        return "lock"
    if any(k in name for k in _IDLE):
        return "idle"
    return "other"


def read_io(pid: int) -> dict[str, int] | None:
    """``/proc/<pid>/io``: ``rchar`` (bytes read by any read call), ``syscr`` (read calls),
    ``read_bytes`` (bytes fetched from storage), or None."""
    text = _read(_PROC / str(pid) / "io")
    if not text:
        return None
    out: dict[str, int] = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key in ("rchar", "syscr", "read_bytes"):
            try:
                out[key] = int(value)
            except ValueError:
                return None
    return out if len(out) == 3 else None


def read_uss_bytes(pid: int) -> int | None:
    """Private memory of ``pid`` (``Private_Clean + Private_Dirty`` of smaps_rollup), bytes."""
    text = _read(_PROC / str(pid) / "smaps_rollup")
    if not text:
        return None
    total = 0
    for line in text.splitlines():
        if line.startswith(("Private_Clean:", "Private_Dirty:")):
            try:
                total += int(line.split()[1]) * 1024
            except (IndexError, ValueError):
                return None
    return total


def psi_io_us() -> int | None:
    """``/proc/pressure/io``'s ``some total``: microseconds in which some task waited on I/O."""
    text = _read(_PROC / "pressure" / "io")
    if not text:
        return None
    for line in text.splitlines():
        if line.startswith("some"):
            for part in line.split():
                if part.startswith("total="):
                    try:
                        return int(part[6:])
                    except ValueError:
                        return None
    return None


def disk_busy_ms() -> dict[str, int] | None:
    """Milliseconds each block device was busy (``/proc/diskstats`` field 13, io_ticks).

    Whole devices only (those in ``/sys/block``), loop and RAM devices left out.
    """
    text = _read(_PROC / "diskstats")
    if not text:
        return None
    try:
        whole = set(os.listdir("/sys/block"))
    except OSError:
        whole = set()
    out: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 14:
            continue
        name = parts[2]
        if (whole and name not in whole) or name.startswith(("loop", "ram", "zram")):
            continue
        try:
            out[name] = int(parts[12])
        except ValueError:
            continue
    return out
