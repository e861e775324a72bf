"""How a worker process died, in words: the signal, its likely cause with the evidence, the fix.

The one place that turns a dead worker's exit status into what wellfed tells the user, for
every room that sees one die: the loaders' iterators (``seeded_loader.worker_failure``, which
raises ``WorkerStartError`` / ``WorkerCrashedError``), the loader driver in ``measure`` (tune's
trials), and the doctor's live probe (finding WF124). Bottom layer: stdlib and psutil only.

Evidence is read where the OS gives it, never guessed: the worker's last resident memory (RSS)
as sampled with psutil while it ran, the memory available now, the kernel's count of OOM
kills (``/proc/vmstat`` ``oom_kill``, and the cgroup's ``memory.events`` or v1
``memory.oom_control``) before and after, the kernel log's own record of the kill
(``/dev/kmsg``, where readable: ``dmesg``), and ``/dev/shm``'s size and free space.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wellfed._units import format_bytes

__all__ = [
    "RSS_SAMPLE_INTERVAL_S",
    "DeathReport",
    "RssSampler",
    "describe_death",
    "format_indices",
    "loading_text",
    "oom_counters",
    "signal_from_exitcode",
    "signal_from_text",
]

#: torch's words for a signal (``strsignal``, in "DataLoader worker (pid X) is killed by
#: signal: Killed.") and the signal's name.
_STRSIGNAL = {
    "Killed": "SIGKILL",
    "Segmentation fault": "SIGSEGV",
    "Bus error": "SIGBUS",
    "Aborted": "SIGABRT",
    "Floating point exception": "SIGFPE",
    "Illegal instruction": "SIGILL",
    "Terminated": "SIGTERM",
    "Hangup": "SIGHUP",
    "Interrupt": "SIGINT",
}

#: How many sample indices a message lists before it says "... (N in all)".
MAX_INDICES_SHOWN = 8


def signal_from_exitcode(exitcode: int | None) -> str | None:
    """The name of the signal behind a negative exit code ("SIGKILL" for -9), else None."""
    if exitcode is None or exitcode >= 0:
        return None
    try:
        return signal.Signals(-exitcode).name
    except ValueError:
        return f"signal {-exitcode}"


def signal_from_text(text: str) -> str | None:
    """The signal torch named in "is killed by signal: Segmentation fault." ("SIGSEGV")."""
    match = re.search(r"killed by signal: ([^.\n]+)", text)
    if match is None:
        return None
    said = match.group(1).strip()
    return _STRSIGNAL.get(said, said)


#: Seconds between two samples of the workers' RSS by a loader's iterator (each sample reads
#: /proc/PID/statm once per worker: ~20 us; taken in ``next()``, never by a thread).
RSS_SAMPLE_INTERVAL_S = 1.0


class RssSampler:
    """The last resident memory (RSS) seen of each worker, sampled at most every
    RSS_SAMPLE_INTERVAL_S seconds when ``sample`` is called (the iterator calls it per batch)."""

    def __init__(self) -> None:
        self._procs: dict[int, Any] = {}
        self._last: dict[int, tuple[int, float]] = {}
        self._next = 0.0

    def sample(self, pids: Sequence[int | None]) -> None:
        """Read each live worker's RSS, unless the last reading is under the interval old."""
        now = time.monotonic()
        if now < self._next:
            return
        self._next = now + RSS_SAMPLE_INTERVAL_S
        import psutil

        for pid in pids:
            if pid is None:
                continue
            try:
                proc = self._procs.get(pid)
                if proc is None:
                    proc = self._procs[pid] = psutil.Process(pid)
                self._last[pid] = (int(proc.memory_info().rss), now)
            except psutil.Error:
                continue

    def last(self, pid: int | None) -> tuple[int, float] | None:
        """(bytes, seconds ago) of the last RSS read of ``pid``, or None (never sampled)."""
        if pid is None or pid not in self._last:
            return None
        rss, when = self._last[pid]
        return rss, time.monotonic() - when


def _read_counter(path: str, key: str) -> int | None:
    try:
        text = Path(path).read_text()
    except OSError:
        return None
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == key:
            with contextlib.suppress(ValueError):
                return int(parts[1])
    return None


def _own_memory_cgroup() -> str | None:
    """This process's memory cgroup directory (v2 unified, else v1 "memory"), if mounted."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    v1 = v2 = None
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        if parts[0] == "0" and parts[1] == "":
            v2 = parts[2]
        elif "memory" in parts[1].split(","):
            v1 = parts[2]
    if v2 is not None and Path("/sys/fs/cgroup", v2.lstrip("/"), "memory.events").is_file():
        return str(Path("/sys/fs/cgroup", v2.lstrip("/")))
    if v1 is not None:
        base = Path("/sys/fs/cgroup/memory", v1.lstrip("/"))
        if (base / "memory.oom_control").is_file():
            return str(base)
    return None


def oom_counters() -> dict[str, int]:
    """The kernel's OOM-kill counts readable here: "system" (``/proc/vmstat`` oom_kill, every
    kernel OOM kill since boot) and "cgroup" (this process's memory cgroup). Missing: absent."""
    out: dict[str, int] = {}
    system = _read_counter("/proc/vmstat", "oom_kill")
    if system is not None:
        out["system"] = system
    group = _own_memory_cgroup()
    if group is not None:
        name = "memory.events" if Path(group, "memory.events").is_file() else "memory.oom_control"
        count = _read_counter(str(Path(group, name)), "oom_kill")
        if count is not None:
            out["cgroup"] = count
    return out


def kernel_kill_record(pid: int, max_records: int = 20_000) -> str | None:
    """The kernel log's line about killing ``pid`` ("Out of memory: Killed process 4711
    (python) total-vm:..., anon-rss:...") from ``/dev/kmsg``, or None (not there, or the log
    is not readable by this user: ``dmesg`` needs CAP_SYSLOG where dmesg_restrict is 1)."""
    try:
        fd = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return None
    wanted = f"Killed process {pid} "
    found: str | None = None
    try:
        for _ in range(max_records):
            try:
                record = os.read(fd, 8192)
            except BlockingIOError:
                break
            except OSError:  # EPIPE: a record was overwritten while reading; go on
                continue
            if not record:
                break
            text = record.decode("utf-8", "replace")
            if wanted in text:
                found = text.split(";", 1)[-1].strip()
    finally:
        os.close(fd)
    return found


def _shm() -> tuple[int, int] | None:
    """(free, total) bytes of /dev/shm, or None."""
    try:
        st = os.statvfs("/dev/shm")
    except OSError:
        return None
    return st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize


def _available_memory() -> tuple[int, int] | None:
    """(available, total) bytes of system memory now (psutil), or None."""
    try:
        import psutil

        vm = psutil.virtual_memory()
        return int(vm.available), int(vm.total)
    except Exception:
        return None


def format_indices(indices: Sequence[Any] | None) -> str:
    """Sample indices as a message lists them: "[12, 13, 14]" (at most MAX_INDICES_SHOWN)."""
    if not indices:
        return "[]"
    shown = ", ".join(repr(i) for i in list(indices)[:MAX_INDICES_SHOWN])
    more = f", ... ({len(indices)} in all)" if len(indices) > MAX_INDICES_SHOWN else ""
    return f"[{shown}{more}]"


def loading_text(tasks: Sequence[Sequence[Any]] | None) -> str:
    """What a dead worker was loading, from the index lists of the tasks it had not
    delivered (oldest first): ", loading samples [3]", or ", loading one of the batches it
    had not delivered: samples [0, 1] then [4, 5]" (it died in one of them: a finished
    result can die with it, unsent); "" when unknown."""
    if not tasks:
        return ""
    if len(tasks) == 1:
        return f", loading samples {format_indices(tasks[0])}"
    shown = " then ".join(format_indices(t) for t in tasks[:4])
    more = f" and {len(tasks) - 4} more batch(es)" if len(tasks) > 4 else ""
    return f", loading one of the batches it had not delivered: samples {shown}{more}"


@dataclass(frozen=True)
class DeathReport:
    """What a worker's death means: the likely cause (with the evidence read) and the fix.

    Attributes:
        signal: The signal's name ("SIGKILL"), or None when the worker exited with a code.
        cause: The likely cause, with its evidence, e.g. "likely the OOM killer; memory at
            death: ...".
        fix: What to try, in order.
        memory: Facts about memory at death (bytes and counters), for ``exc.memory``.
    """

    signal: str | None
    cause: str
    fix: str
    memory: dict[str, Any]


def _memory_at_death(
    rss: tuple[int, float] | None, oom_before: Mapping[str, int] | None, pid: int | None
) -> tuple[str, dict[str, Any], bool]:
    """(text, facts, the kernel OOM killer is known to have killed it)."""
    facts: dict[str, Any] = {}
    parts: list[str] = []
    if rss is not None:
        facts["worker_rss_bytes"], facts["rss_age_s"] = rss[0], round(rss[1], 2)
        parts.append(
            f"the worker's RSS was {format_bytes(rss[0])} when last sampled, {rss[1]:.1f} s before"
        )
    else:
        parts.append("the worker's RSS was not sampled")
    avail = _available_memory()
    if avail is not None:
        facts["available_bytes"], facts["total_bytes"] = avail
        parts.append(f"{format_bytes(avail[0])} of {format_bytes(avail[1])} available now")
    text = "memory at death: " + ", ".join(parts)
    killed_by_kernel = False
    after = oom_counters()
    if after:
        facts["oom_kill_after"] = dict(after)
    if oom_before:
        facts["oom_kill_before"] = dict(oom_before)
        rose = {k: (oom_before[k], after[k]) for k in after if k in oom_before}
        grew = {k: v for k, v in rose.items() if v[1] > v[0]}
        if grew:
            killed_by_kernel = True
            text += (
                "; the kernel's OOM killer ran meanwhile ("
                + ", ".join(
                    f"{'/proc/vmstat' if k == 'system' else 'cgroup'} oom_kill {a} -> {b}"
                    for k, (a, b) in grew.items()
                )
                + ")"
            )
        elif rose:
            system = rose.get("system", next(iter(rose.values())))
            text += (
                f"; the kernel's oom_kill count did not change ({system[1]}), so not the "
                "kernel's OOM killer: a user-space one (systemd-oomd, earlyoom, a container "
                "runtime) or another process's `kill -9`"
            )
    record = kernel_kill_record(pid) if pid is not None else None
    if record is not None:
        facts["kernel_log"] = record
        killed_by_kernel = killed_by_kernel or "out of memory" in record.lower()
        text += f"; kernel log: {record!r}"
    return text, facts, killed_by_kernel


def describe_death(
    *,
    exitcode: int | None,
    signal_name: str | None = None,
    pid: int | None = None,
    rss: tuple[int, float] | None = None,
    oom_before: Mapping[str, int] | None = None,
    start_method: str | None = None,
    num_workers: int | None = None,
    prefetch_factor: int | None = None,
) -> DeathReport:
    """Likely cause and fix of a worker's death (read the evidence now, right after it).

    Args:
        exitcode: The worker's exit code (negative: killed by that signal), or None.
        signal_name: The signal's name when known otherwise (torch's text), e.g. "SIGSEGV".
        pid: The worker's pid (the kernel log is searched for it).
        rss: (bytes, seconds since) of the worker's last sampled RSS, or None.
        oom_before: ``oom_counters()`` read when the workers started, or None.
        start_method: The workers' start method, or None when unknown.
        num_workers: Worker processes of the loader, for the fix.
        prefetch_factor: Batches in flight per worker, for the fix.

    Returns:
        A DeathReport.

    Source:
        The causes are the common ones: SIGKILL from the kernel's OOM killer
        (``mm/oom_kill.c`` counts each kill in /proc/vmstat ``oom_kill``), SIGBUS from a full
        /dev/shm (torch's shared-memory batches; Docker's default is 64 MB), SIGSEGV from
        native code (C extensions, and libraries whose threads do not survive fork:
        pytorch/pytorch#17199 for OpenMP, "Cannot re-initialize CUDA in forked subprocess").
    """
    name = signal_from_exitcode(exitcode) or signal_name
    method = f" (now {start_method!r})" if start_method else ""
    fewer = []
    if num_workers is not None:
        fewer.append(f"num_workers (now {num_workers})")
    if prefetch_factor is not None:
        fewer.append(f"prefetch_factor (now {prefetch_factor})")
    lower = " or ".join(fewer) if fewer else "num_workers or prefetch_factor"
    if name == "SIGKILL":
        text, facts, by_kernel = _memory_at_death(rss, oom_before, pid)
        head = "the kernel's OOM killer" if by_kernel else "likely the OOM killer"
        return DeathReport(
            name,
            f"{head}; {text}",
            f"lower {lower} or the batch size, hold less per sample in the dataset, or give "
            "the job more memory; `dmesg` shows the kernel's kills",
            facts,
        )
    if name == "SIGBUS":
        shm = _shm()
        shm_facts: dict[str, Any] = {}
        where = "/dev/shm"
        if shm is not None:
            shm_facts["shm_free_bytes"], shm_facts["shm_total_bytes"] = shm
            where = (
                f"/dev/shm ({format_bytes(shm[0])} free of {format_bytes(shm[1])} now, after "
                "the dead worker's segments were freed)"
            )
        return DeathReport(
            name,
            f"likely shared memory exhausted: batches travel from workers through {where}"
            ", and a worker writing past its end gets SIGBUS (or a memory-mapped file shrank "
            "while a worker read it)",
            f"give the container more shared memory (docker run --shm-size=8g), or lower "
            f"{lower} or the batch size; `df -h /dev/shm` shows its size",
            shm_facts,
        )
    if name == "SIGSEGV":
        forked = start_method not in ("spawn", "forkserver")
        return DeathReport(
            name,
            "a crash in native code: a C extension or decoder called by __getitem__ (OpenCV, "
            "a corrupt file, a library bug)"
            + (
                ", or a library whose threads do not survive fork (CUDA, OpenMP thread pools "
                "started in the parent before the workers were forked)"
                if forked
                else ""
            ),
            "run with num_workers=0 to get the crash in the main process (with "
            "`python -X faulthandler` for the Python traceback), or call "
            "faulthandler.enable() in worker_init_fn to have the worker print its stack"
            + (f"; try multiprocessing_context='spawn' or 'forkserver'{method}" if forked else ""),
            {},
        )
    if name == "SIGABRT":
        forked = start_method not in ("spawn", "forkserver")
        return DeathReport(
            name,
            "an abort in native code (a failed assertion in a C extension, or a C++ exception "
            "nobody caught)",
            "run with num_workers=0 to see the native error in the main process"
            + (f"; try multiprocessing_context='spawn' or 'forkserver'{method}" if forked else ""),
            {},
        )
    if name is not None:
        return DeathReport(
            name,
            f"{name} was sent to the worker (by another process, or by the worker's own code)",
            "find who sends it; run with num_workers=0 to see whether the dataset does",
            {},
        )
    code = f"exit code {exitcode}" if exitcode is not None else "an unknown exit status"
    return DeathReport(
        None,
        f"the worker process ended with {code} (sys.exit or os._exit in worker code, or a "
        "failure before it could report an exception; its own output is above, on stderr)",
        "run with num_workers=0 to see the error in the main process",
        {},
    )
