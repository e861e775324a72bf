"""Run a callable in a fresh child process, bounded in time, leaving no process behind.

This is the isolation under every measurement and live probe: a crashed or hung
configuration ends its own child process (and that child's DataLoader workers), never the
caller. The child gets its own process group; on timeout or error the whole tree is killed
with SIGKILL and reaped.

Nothing outlives the caller either, however it ends. On POSIX each child starts a *sentinel*:
a small forked process outside the child's group and outside the caller's tree. When the
caller dies (SIGKILL included) the sentinel kills the child's whole group, DataLoader workers
hung in ``__getitem__`` with it; on Linux the child also has ``PR_SET_PDEATHSIG``. The
sentinel is also the child tree's multiprocessing resource tracker: it hears every named
semaphore and shared-memory block the tree registers (spawn and forkserver DataLoaders make
~10 per loader) and unlinks what is left in ``/dev/shm`` once the tree is gone, which the
stock tracker, started inside the killed group, could not.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.connection
import os
import select
import signal
import sys
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import psutil

__all__ = [
    "GroupMember",
    "IsolatedResult",
    "format_exception",
    "kill_tree",
    "note_memory",
    "private_memory_bytes",
    "run_isolated",
    "run_isolated_group",
    "tree_memory",
]

#: Seconds between two samples of the child tree's memory. Reading one process's USS
#: (smaps_rollup) costs ~4.5 ms for a process that imported torch (measured here with
#: psutil 7.2), so 9 processes sampled each second take ~4% of one core.
MEMORY_SAMPLE_INTERVAL_S = 1.0

#: Seconds between two checks for the child's result or death.
POLL_INTERVAL_S = 0.1

#: Seconds between two scans for the child's descendants (a scan reads every /proc entry).
CHILDREN_SCAN_INTERVAL_S = 0.5

#: How long a finished child may take to exit (and its workers to shut down) before it is killed.
EXIT_GRACE_S = 10.0


@dataclass(frozen=True)
class IsolatedResult:
    """What came back from a child process.

    Attributes:
        status: "ok" (the callable returned), "failed" (it raised, or the child died) or
            "timeout" (the deadline passed; the tree was killed); in ``run_isolated_group``
            also "stopped" (killed because another member of the group failed first).
        value: The callable's return value when status is "ok", else None.
        error: The child's own error text (exception type, message, traceback tail), or a
            description of how it died; None when ok.
        exitcode: The child's exit code; negative: killed by that signal number.
        elapsed_s: Wall seconds from start to the end of the child.
        peak_memory_bytes: Peak memory of the child and all its descendants, sampled every
            MEMORY_SAMPLE_INTERVAL_S seconds; None when not sampled.
        memory_kind: "rss+uss" or "rss": which measure peak_memory_bytes sums (tree_memory).
        error_code: The ``code`` of the wellfed error the callable raised (e.g. "WF020", an
            unreadable image), so callers can tell a data problem from a crash; else None.
    """

    status: str
    value: Any = None
    error: str | None = None
    exitcode: int | None = None
    elapsed_s: float = 0.0
    peak_memory_bytes: int | None = None
    memory_kind: str | None = None
    error_code: str | None = None


def _preferred_context() -> multiprocessing.context.BaseContext:
    """fork where available and CUDA is not initialised here; otherwise spawn.

    fork lets the child inherit objects that cannot be pickled (the subject of a probe).
    """
    methods = multiprocessing.get_all_start_methods()
    if "fork" in methods and not _cuda_initialized():
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("spawn")


def _cuda_initialized() -> bool:
    import sys

    torch = sys.modules.get("torch")
    if torch is None:
        return False
    try:
        return bool(torch.cuda.is_initialized())
    except Exception:
        return False


def _forget_parent_forkserver() -> None:
    """After fork: drop the parent's forkserver, so this process starts its own.

    multiprocessing keeps the forkserver's pid in a module global; a forked child inherits it,
    and its first forkserver worker then fails in ``os.waitpid`` with "No child processes".
    """
    from multiprocessing import forkserver

    server = getattr(forkserver, "_forkserver", None)
    if server is None or getattr(server, "_forkserver_pid", None) is None:
        return
    alive_fd = getattr(server, "_forkserver_alive_fd", None)
    if alive_fd is not None:
        with contextlib.suppress(OSError):
            os.close(alive_fd)
    for name in (
        "_forkserver_address",
        "_forkserver_alive_fd",
        "_forkserver_pid",
        "_inherited_fds",
    ):
        if hasattr(server, name):
            setattr(server, name, None)


def _single_threaded_torch_after_fork() -> None:
    """After fork: keep torch's intra-op work on one thread.

    GNU OpenMP's thread pool does not survive fork: once the parent has run a parallel torch
    op, a forked child's next parallel op hangs forever (pytorch/pytorch#17199; reproduced
    here with torch 2.13). DataLoader workers avoid it the same way (they call
    ``torch.set_num_threads(1)``).
    """
    import sys

    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(1)


#: ``prctl`` option that sends the calling process a signal when its parent dies (Linux,
#: <linux/prctl.h>).
_PR_SET_PDEATHSIG = 1

#: Seconds between two checks by the sentinel that the caller still runs (besides the pipe
#: that reports its death at once; see _sentinel_main).
SENTINEL_POLL_S = 1.0

#: Seconds the sentinel waits, once the caller died (it then kills the child's group) or the
#: group is empty, for processes that left the group to close the tracker pipe, before it
#: unlinks what was registered and exits.
SENTINEL_DRAIN_S = 30.0


def _die_with_parent() -> None:
    """Linux: SIGKILL this process when its parent dies; exit now if the parent is gone.

    PR_SET_PDEATHSIG fires when the parent *thread* that forked us ends; ``run_isolated``
    waits in that thread until the child is reaped, so it fires only when the caller dies.
    """
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    except (OSError, AttributeError):
        return
    if _parent_gone(_parent_sentinel()):
        os._exit(1)  # the parent died before prctl took effect


def _parent_sentinel() -> int | None:
    """multiprocessing's pipe from the parent: readable (EOF) once the parent has died."""
    parent = multiprocessing.parent_process()
    fd = getattr(parent, "sentinel", None) if parent is not None else None
    return fd if isinstance(fd, int) else None


def _parent_gone(fd: int | None) -> bool:
    if fd is None:
        return False
    try:
        return bool(select.select([fd], [], [], 0)[0])
    except (OSError, ValueError):
        return False


def _start_sentinel() -> None:
    """Start the sentinel for this child (already its own group leader); see the module doc.

    The sentinel is double-forked (so no process of the caller's tree is its parent, and
    ``kill_tree`` and ``tree_memory`` never see it) and leads its own process group (so
    neither the child's group kill nor a signal to the caller's group reaches it). This
    process, its DataLoader workers and forkserver then register semaphores with it instead
    of multiprocessing's global resource tracker.
    """
    if not hasattr(os, "fork"):
        return
    from multiprocessing import resource_tracker

    tracker = resource_tracker.ResourceTracker()
    if not (hasattr(tracker, "_fd") and hasattr(tracker, "_pid")):
        return  # a multiprocessing this code does not know: keep the stock tracker
    try:
        import _multiprocessing
        import _posixshmem
    except ImportError:
        return
    del _multiprocessing, _posixshmem  # imported now: the sentinel only looks them up
    parent_fd = _parent_sentinel()
    try:
        caller: psutil.Process | None = psutil.Process(os.getppid())
    except psutil.Error:
        caller = None
    group = os.getpgrp()
    started_ns = time.time_ns()
    read_fd, write_fd = os.pipe()
    try:
        pid = os.fork()
    except OSError:
        os.close(read_fd)
        os.close(write_fd)
        return
    if pid == 0:  # the intermediate process: fork the sentinel and exit at once
        code = 0
        try:
            if os.fork() == 0:
                _sentinel_main(read_fd, parent_fd, caller, group, started_ns)
        except BaseException:
            code = 1
        os._exit(code)
    os.close(read_fd)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)
    tracker._fd = write_fd
    tracker._pid = None  # not our child: never waited for (as in a spawned process)
    resource_tracker._resource_tracker = tracker
    resource_tracker.ensure_running = tracker.ensure_running
    resource_tracker.register = tracker.register
    resource_tracker.unregister = tracker.unregister
    resource_tracker.getfd = tracker.getfd


def _sentinel_main(
    tracker_fd: int,
    parent_fd: int | None,
    caller: psutil.Process | None,
    group: int,
    started_ns: int,
) -> None:
    """The sentinel's whole life; never returns.

    Reads multiprocessing's resource-tracker protocol (``REGISTER:name:rtype``,
    ``UNREGISTER:...``, ``PROBE:...``, one line each) from ``tracker_fd`` until EOF, which
    comes when every process of the child's tree has exited. Meanwhile, once the caller dies
    (``parent_fd`` readable, or ``caller`` no longer running), SIGKILLs process group
    ``group``. At EOF (or SENTINEL_DRAIN_S after the caller died or the group emptied, when a
    process that left the group still holds the pipe) unlinks every name still registered,
    silently (the stock tracker would warn about "leaked" semaphores: here they are the
    expected remains of a killed tree), and exits.

    A semaphore is registered only where it is created. A shared-memory block is registered
    also where it is merely attached (Python < 3.13, ``SharedMemory(name)``): one created
    before the tree started (``started_ns``, by the caller, say, and attached by a spawn
    worker) is not the tree's to unlink, so such a block is kept only when its inode is
    younger than the tree.
    """
    code = 0
    try:
        os.setpgrp()
        for sig in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None)):
            if sig is not None:
                signal.signal(sig, signal.SIG_IGN)
        null = os.open(os.devnull, os.O_RDWR)
        for std in (0, 1, 2):
            os.dup2(null, std)
        # Hold nothing of the tree (above all not the tracker pipe's write end, or EOF would
        # never come) nor of the caller (its pipes, a terminal, a test harness's stdout).
        _close_fds_except({0, 1, 2, tracker_fd, *([parent_fd] if parent_fd is not None else [])})
        names: dict[str, set[str]] = {"semaphore": set(), "shared_memory": set()}
        pending = b""
        watch_parent = parent_fd
        orphaned = group_gone = False
        draining_since: float | None = None
        while True:
            fds = [tracker_fd] if watch_parent is None else [tracker_fd, watch_parent]
            ready = select.select(fds, [], [], SENTINEL_POLL_S)[0]
            if tracker_fd in ready:
                chunk = os.read(tracker_fd, 65536)
                if not chunk:
                    break  # the whole tree is gone
                *lines, pending = (pending + chunk).split(b"\n")
                for line in lines:
                    cmd, _, rest = line.decode("ascii", "replace").partition(":")
                    name, _, rtype = rest.rpartition(":")
                    if rtype in names and cmd == "REGISTER":
                        if rtype != "shared_memory" or _created_since(name, started_ns):
                            names[rtype].add(name)
                    elif rtype in names and cmd == "UNREGISTER":
                        names[rtype].discard(name)
            if not group_gone and not _group_alive(group):
                # Once empty, the group's id is never signalled again (it could be reused).
                group_gone = True
                draining_since = draining_since or time.monotonic()
            if not orphaned and (
                (watch_parent is not None and watch_parent in ready) or not _running(caller)
            ):
                orphaned, watch_parent = True, None
                draining_since = draining_since or time.monotonic()
                if not group_gone:
                    with contextlib.suppress(OSError):
                        os.killpg(group, signal.SIGKILL)
            # A process that left the group may still hold the pipe: do not wait for it forever.
            if draining_since is not None and time.monotonic() - draining_since > SENTINEL_DRAIN_S:
                break
        _unlink(names)
    except BaseException:
        code = 1
    os._exit(code)


def _created_since(shm_name: str, started_ns: int) -> bool:
    """Whether POSIX shared memory ``shm_name`` ("/psm_...") was made at or after started_ns.

    Where shared memory has no files to look at (no /dev/shm), False: kept, not unlinked.
    """
    try:
        st = os.stat(os.path.join("/dev/shm", shm_name.lstrip("/")))
    except OSError:
        return False
    return st.st_ctime_ns >= started_ns


def _close_fds_except(keep: set[int]) -> None:
    try:
        open_fds = [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError:  # no /proc (macOS): every number up to the limit
        open_fds = list(range(3, min(os.sysconf("SC_OPEN_MAX"), 65536)))
    for fd in open_fds:
        if fd not in keep:
            with contextlib.suppress(OSError):
                os.close(fd)


def _group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # it exists (EPERM: not ours to signal, which never happens here)
    return True


def _running(proc: psutil.Process | None) -> bool:
    if proc is None:
        return True  # unknown: rely on the pipe alone
    try:
        return bool(proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


def _unlink(names: dict[str, set[str]]) -> None:
    """Unlink named semaphores and shared-memory blocks, ignoring names already gone."""
    import _multiprocessing
    import _posixshmem

    unlinkers: dict[str, Any] = {"shared_memory": _posixshmem.shm_unlink}
    sem_unlink = getattr(_multiprocessing, "sem_unlink", None)
    if sem_unlink is not None:
        unlinkers["semaphore"] = sem_unlink
    for rtype, found in names.items():
        unlink = unlinkers.get(rtype)
        if unlink is None:
            continue
        for name in found:
            with contextlib.suppress(OSError):
                unlink(name)


#: In an isolated child: the largest reading note_memory took, as (bytes, kind); sent back
#: with the result, and taken into the child's peak memory.
_noted_memory: tuple[int, str] | None = None


def note_memory() -> None:
    """In a child of run_isolated (or a group member): read this process tree's memory now
    (see tree_memory) and keep the largest reading, which the parent takes into the child's
    ``peak_memory_bytes``.

    The parent samples the tree once per MEMORY_SAMPLE_INTERVAL_S, so a trial shorter than
    that (a step trial of 12 batches takes ~0.3 s) was read only at its start, before its
    workers existed: 4 fork workers read less than the main process alone. A trial calls
    this at the end of its measured span, while its workers still hold their data.
    Outside an isolated child it only costs the reading (~4.5 ms a process).
    """
    global _noted_memory
    try:
        mem, kind = tree_memory(psutil.Process())
    except psutil.Error:
        return
    if mem and (_noted_memory is None or mem > _noted_memory[0]):
        _noted_memory = (mem, kind)


def _with_noted(
    peak: int, kind: str | None, message: tuple[Any, ...] | None
) -> tuple[int, str | None]:
    """The sampled (peak, kind) with the child's own note_memory reading taken in."""
    noted = message[4] if message is not None and len(message) > 4 else None
    if not noted or noted[0] <= peak:
        return peak, kind
    return int(noted[0]), str(noted[1])


def _child_main(
    conn: Any,
    func: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    forked: bool = False,
) -> None:
    if forked:
        _forget_parent_forkserver()
        _single_threaded_torch_after_fork()
    _die_with_parent()
    if hasattr(os, "setpgrp"):
        with contextlib.suppress(OSError):
            os.setpgrp()
        with contextlib.suppress(OSError):
            _start_sentinel()
    try:
        value = func(*args, **kwargs)
    except BaseException as exc:
        code = getattr(exc, "code", None)  # a WellfedError's, e.g. WF020 (a bad file)
        error = format_exception(exc)
        conn.send(("failed", None, error, code if isinstance(code, str) else None, _noted_memory))
    else:
        try:
            conn.send(("ok", value, None, None, _noted_memory))
        except Exception as exc:
            error = f"result could not be sent back: {format_exception(exc)}"
            conn.send(("failed", None, error, None, _noted_memory))
    finally:
        conn.close()


def format_exception(exc: BaseException, max_lines: int = 40) -> str:
    """How an isolated child reports an exception: ``Type: message``, then the last
    ``max_lines`` lines of its traceback (left out when the message itself spans more than
    four lines, as torch's re-raise of a worker's exception does, traceback included)."""
    head = f"{type(exc).__name__}: {exc}"
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)).splitlines()
    tail = "\n".join(tb[-max_lines:])
    return head if str(exc).count("\n") > 3 else f"{head}\n{tail}"


def tree_memory(root: psutil.Process) -> tuple[int, str]:
    """Memory of a process and its descendants: the root's RSS plus each descendant's USS.

    The root stands for a training process, which owns all its pages; its workers share
    pages with it (fork) or with each other, so each adds only its private memory (USS).
    PSS would split pages shared with *our* process too and undercount the root.

    Returns:
        (bytes, kind): kind is "rss+uss", or "rss" where the OS gives no USS (the sum then
        counts shared pages once per process and overstates the footprint).
    """
    total, kind = 0, "rss+uss"
    try:
        total += root.memory_info().rss
        children = root.children(recursive=True)
    except psutil.Error:
        return 0, kind
    for p in children:
        try:
            total += p.memory_full_info().uss
        except (psutil.AccessDenied, AttributeError):
            try:
                total += p.memory_info().rss
                kind = "rss"
            except psutil.Error:
                pass
        except psutil.Error:
            continue
    return total, kind


def private_memory_bytes(pid: int) -> int | None:
    """Private memory (USS) of one process in bytes, the measure tree_memory gives each
    descendant; None when the process is gone or the OS gives no USS."""
    try:
        return int(psutil.Process(pid).memory_full_info().uss)
    except (psutil.Error, AttributeError, ValueError):
        return None


def kill_tree(pid: int, procs: list[psutil.Process] | None = None) -> None:
    """SIGKILL a process, its process group and every known descendant; reap what we can."""
    try:
        root = psutil.Process(pid)
        found = [root, *root.children(recursive=True)]
    except psutil.Error:
        found = []
    victims = {p.pid: p for p in [*(procs or []), *found]}
    if hasattr(os, "killpg"):
        with contextlib.suppress(OSError):
            os.killpg(pid, signal.SIGKILL)
    for p in victims.values():
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(list(victims.values()), timeout=5)


def run_isolated(
    func: Callable[..., Any],
    *args: Any,
    timeout_s: float,
    sample_memory: bool = False,
    context: str | None = None,
    **kwargs: Any,
) -> IsolatedResult:
    """Run ``func(*args, **kwargs)`` in a fresh child process and return what happened.

    The child runs in its own process group. Whatever happens (return, exception, crash,
    hang), the child and all its descendants are gone when this function returns. A forked
    child runs torch on one intra-op thread (see _single_threaded_torch_after_fork).

    Args:
        func: The callable. With the default fork context it may be anything; with spawn it
            and its arguments must pickle.
        *args: Positional arguments for func.
        timeout_s: Seconds until the child tree is killed and the status is "timeout".
        sample_memory: Sample the tree's memory (see tree_memory) while it runs.
        context: Start method for the child; None: fork where safe, else spawn.
        **kwargs: Keyword arguments for func.

    Returns:
        An IsolatedResult.
    """
    ctx: Any = multiprocessing.get_context(context) if context else _preferred_context()
    parent_conn, child_conn = ctx.Pipe(duplex=False)
    forked = ctx.get_start_method() == "fork"
    proc = ctx.Process(
        target=_child_main, args=(child_conn, func, args, kwargs, forked), daemon=False
    )
    start = time.perf_counter()
    try:
        proc.start()
    except Exception as exc:  # spawn pickles func and args here: an unpicklable one fails
        child_conn.close()
        parent_conn.close()
        return IsolatedResult(
            "failed",
            error=f"the isolated process could not start ({ctx.get_start_method()}): "
            + format_exception(exc),
            elapsed_s=time.perf_counter() - start,
        )
    child_conn.close()
    assert proc.pid is not None
    try:
        ps_proc: psutil.Process | None = psutil.Process(proc.pid)
    except psutil.Error:
        ps_proc = None
    known: dict[int, psutil.Process] = {}
    peak, kind = 0, None
    next_sample = next_scan = start
    deadline = start + timeout_s
    message: tuple[Any, ...] | None = None
    try:
        while True:
            now = time.perf_counter()
            if ps_proc is not None and now >= next_scan:
                # Remember descendants, so that they are killed even after the child is gone.
                next_scan = now + CHILDREN_SCAN_INTERVAL_S
                with contextlib.suppress(psutil.Error):
                    for c in ps_proc.children(recursive=True):
                        known.setdefault(c.pid, c)
            if ps_proc is not None and sample_memory and now >= next_sample:
                mem, kind = tree_memory(ps_proc)
                peak = max(peak, mem)
                next_sample = now + MEMORY_SAMPLE_INTERVAL_S
            if now >= deadline:
                break
            wait = min(POLL_INTERVAL_S, deadline - now)
            if parent_conn.poll(wait):
                try:
                    message = parent_conn.recv()
                except EOFError:
                    # The child closed its end: it is exiting (a crash, a signal). Reap it
                    # here, with its exit status; kill_tree's psutil wait would take the status
                    # and leave "the process did not exit" (a SIGKILL once in ~20 runs, issue 14).
                    message = None
                    proc.join(timeout=EXIT_GRACE_S)
                break
            if not proc.is_alive():
                if parent_conn.poll(0):
                    with contextlib.suppress(EOFError):
                        message = parent_conn.recv()
                break
        if message is not None:
            proc.join(timeout=EXIT_GRACE_S)
    finally:
        if proc.is_alive() or message is None:
            kill_tree(proc.pid, list(known.values()))
        else:
            kill_tree(proc.pid, list(known.values()))  # stray descendants of a finished child
        proc.join(timeout=5)
        parent_conn.close()
    elapsed = time.perf_counter() - start
    if sample_memory:
        peak, kind = _with_noted(peak, kind, message)
    peak_or_none = peak if sample_memory and peak else None
    if message is not None:
        status, value, error, code = message[:4]
        return IsolatedResult(
            status, value, error, proc.exitcode, elapsed, peak_or_none, kind, error_code=code
        )
    if elapsed >= timeout_s:
        return IsolatedResult(
            "timeout",
            error=f"no result after {timeout_s:.1f}s; the process tree was killed",
            exitcode=proc.exitcode,
            elapsed_s=elapsed,
            peak_memory_bytes=peak_or_none,
            memory_kind=kind,
        )
    return IsolatedResult(
        "failed",
        error=describe_exit(proc.exitcode),
        exitcode=proc.exitcode,
        elapsed_s=elapsed,
        peak_memory_bytes=peak_or_none,
        memory_kind=kind,
    )


def describe_exit(exitcode: int | None) -> str:
    """Say how a process ended, naming the signal ("killed by SIGKILL, likely the OOM killer")."""
    if exitcode is None:
        return "the process did not exit"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        hint = ""
        if name == "SIGKILL":
            hint = " (likely the out-of-memory killer; see `dmesg` and `wellfed info`)"
        elif name == "SIGBUS":
            hint = " (often /dev/shm exhausted; `wellfed info` shows its free space)"
        elif name == "SIGSEGV":
            hint = " (a crash in native code, such as a decoder or a library not fork-safe)"
        return f"the process was killed by {name}{hint}"
    return f"the process exited with code {exitcode} without a result"


# --- a group of children run at once (per-rank tuning) ----------------------------------------


@dataclass(frozen=True)
class GroupMember:
    """What each member of ``run_isolated_group`` gets as its ``group=`` keyword argument.

    It lets the members line up their measured spans: ``wait_for_all`` is a barrier, and
    ``finish``/``all_finished`` let a member that is done keep the load on (go on loading,
    unmeasured) until the slowest member is done too.

    Attributes:
        rank: This member's index, 0 to size - 1.
        size: Members in the group.
    """

    rank: int
    size: int
    barrier: Any = field(repr=False)
    finished: Any = field(repr=False)

    def wait_for_all(self, timeout_s: float | None = None) -> None:
        """Block until every member has called this (once each).

        Raises:
            RuntimeError: Another member failed (the parent broke the barrier) or
                ``timeout_s`` seconds passed first.
        """
        import threading

        try:
            self.barrier.wait(timeout_s)
        except threading.BrokenBarrierError:
            raise RuntimeError(
                f"group member {self.rank}: another member of the group failed or did not "
                "reach the start of the measured span in time"
            ) from None

    def finish(self) -> None:
        """Say that this member's measured span is over."""
        with self.finished.get_lock():
            self.finished.value += 1

    def all_finished(self) -> bool:
        """True once every member has called ``finish``."""
        return bool(self.finished.value >= self.size)


#: Members of a group whose memory is sampled per MEMORY_SAMPLE_INTERVAL_S: two keeps the
#: sampling of a group of 2 complete and that of 8 ranks x 8 workers near one trial's cost
#: (each member is then sampled every 4 s, several times in a trial of warm-up plus 3 s).
GROUP_SAMPLES_PER_TICK = 2


def _descendants(roots: list[int]) -> dict[int, list[psutil.Process]]:
    """Every descendant of each root pid, from one pass over the process table."""
    children: dict[int, list[psutil.Process]] = {}
    for p in psutil.process_iter(["ppid"]):
        ppid = p.info.get("ppid")
        if ppid is not None:
            children.setdefault(ppid, []).append(p)
    out: dict[int, list[psutil.Process]] = {}
    for root in roots:
        found: list[psutil.Process] = []
        stack = list(children.get(root, ()))
        while stack:
            p = stack.pop()
            found.append(p)
            stack.extend(children.get(p.pid, ()))
        out[root] = found
    return out


def _group_child_main(
    conn: Any,
    func: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    forked: bool,
    env: dict[str, str],
) -> None:
    os.environ.update(env)
    _child_main(conn, func, args, kwargs, forked)


def run_isolated_group(
    func: Callable[..., Any],
    args_per_member: Sequence[tuple[Any, ...]],
    *,
    timeout_s: float,
    sample_memory: bool = False,
    context: str | None = None,
    env_per_member: Sequence[Mapping[str, str]] | None = None,
    **kwargs: Any,
) -> list[IsolatedResult]:
    """Run ``func(*args, group=member, **kwargs)`` in one fresh child per member, all at once.

    The children are started back to back, each in its own process group, and run
    concurrently; ``group`` (a GroupMember) gives each its rank and a barrier shared by all.
    When one member fails (raises, dies, or its start fails) the barrier is broken and the
    other members are killed: their status is "stopped". Whatever happens, every child and
    all their descendants are gone when this function returns, also when it is interrupted
    (KeyboardInterrupt).

    Args:
        func: The callable; it must take the ``group`` keyword. With spawn it and its
            arguments must pickle.
        args_per_member: Positional arguments of each member; its length is the group size
            (at least 1).
        timeout_s: Seconds until every child tree still running is killed (status "timeout").
        sample_memory: Sample each member's tree memory (see tree_memory) while it runs, at
            most GROUP_SAMPLES_PER_TICK members per MEMORY_SAMPLE_INTERVAL_S, in turn.
        context: Start method for the children; None: fork where safe, else spawn.
        env_per_member: Environment variables each child sets before calling func.
        **kwargs: Keyword arguments for func, the same for every member.

    Returns:
        One IsolatedResult per member, in member order; status "ok", "failed", "timeout" or
        "stopped" (killed because another member failed first).
    """
    size = len(args_per_member)
    if size < 1:
        raise ValueError("run_isolated_group needs at least one member")
    envs = [dict(e) for e in env_per_member] if env_per_member is not None else [{}] * size
    ctx: Any = multiprocessing.get_context(context) if context else _preferred_context()
    forked = ctx.get_start_method() == "fork"
    barrier = ctx.Barrier(size)
    finished = ctx.Value("i", 0)
    conns: list[Any] = []
    procs: list[Any] = []
    ps_procs: list[psutil.Process | None] = []
    known: list[dict[int, psutil.Process]] = [{} for _ in range(size)]
    peaks = [0] * size
    kinds: list[str | None] = [None] * size
    messages: list[tuple[str, Any, str | None] | None] = [None] * size
    ended: list[float | None] = [None] * size
    outcome: list[str | None] = [None] * size  # "ok", "failed", "timeout", "stopped"
    errors: list[str | None] = [None] * size
    start = time.perf_counter()
    try:
        for rank, args in enumerate(args_per_member):
            parent_conn, child_conn = ctx.Pipe(duplex=False)
            member = GroupMember(rank, size, barrier, finished)
            proc = ctx.Process(
                target=_group_child_main,
                args=(child_conn, func, args, {**kwargs, "group": member}, forked, envs[rank]),
                daemon=False,
            )
            try:
                proc.start()
            except Exception as exc:  # spawn pickles func and args here
                child_conn.close()
                parent_conn.close()
                error = (
                    f"group member {rank} could not start ({ctx.get_start_method()}): "
                    + format_exception(exc)
                )
                barrier.abort()
                now = time.perf_counter()
                results = []
                for i in range(size):
                    if i == rank:
                        results.append(IsolatedResult("failed", error=error, elapsed_s=now - start))
                    else:
                        results.append(
                            IsolatedResult(
                                "stopped",
                                error=f"stopped: group member {rank} could not start",
                                elapsed_s=now - start,
                            )
                        )
                return results
            child_conn.close()
            conns.append(parent_conn)
            procs.append(proc)
            try:
                ps_procs.append(psutil.Process(proc.pid))
            except psutil.Error:
                ps_procs.append(None)
        deadline = start + timeout_s
        next_sample = next_scan = start
        turn = 0  # the next member whose memory is sampled
        first_failure: int | None = None
        while any(o is None for o in outcome):
            now = time.perf_counter()
            if now >= next_scan:
                next_scan = now + CHILDREN_SCAN_INTERVAL_S
                live = {procs[r].pid: r for r in range(size) if outcome[r] is None}
                for root, found in _descendants(list(live)).items():
                    for c in found:
                        known[live[root]].setdefault(c.pid, c)
            if sample_memory and now >= next_sample:
                # members in turn, at most GROUP_SAMPLES_PER_TICK a tick: the sampling costs
                # what one trial's does (see MEMORY_SAMPLE_INTERVAL_S), whatever the group size
                next_sample = now + MEMORY_SAMPLE_INTERVAL_S
                for _ in range(min(size, GROUP_SAMPLES_PER_TICK)):
                    rank, turn = turn, (turn + 1) % size
                    ps = ps_procs[rank]
                    if ps is not None and outcome[rank] is None:
                        mem, kinds[rank] = tree_memory(ps)
                        peaks[rank] = max(peaks[rank], mem)
            if now >= deadline:
                for rank in range(size):
                    if outcome[rank] is None:
                        outcome[rank] = "timeout"
                        errors[rank] = (
                            f"no result after {timeout_s:.1f}s; the process tree was killed"
                        )
                        ended[rank] = now
                break
            pending = [conns[r] for r in range(size) if outcome[r] is None]
            ready = multiprocessing.connection.wait(
                pending, timeout=min(POLL_INTERVAL_S, deadline - now)
            )
            for rank in range(size):
                if outcome[rank] is not None:
                    continue
                conn = conns[rank]
                message = None
                if conn in ready or not procs[rank].is_alive():
                    if conn.poll(0):
                        with contextlib.suppress(EOFError, OSError):
                            message = conn.recv()
                    if message is None and procs[rank].is_alive():
                        continue  # woken by EOF of a pipe whose child is still exiting
                    ended[rank] = time.perf_counter()
                    if message is None:
                        procs[rank].join(timeout=1)
                        outcome[rank] = "failed"
                        errors[rank] = describe_exit(procs[rank].exitcode)
                    else:
                        messages[rank] = message
                        outcome[rank] = message[0]
                        errors[rank] = message[2]
                    if outcome[rank] != "ok" and first_failure is None:
                        first_failure = rank
            if first_failure is not None:
                barrier.abort()
                for rank in range(size):
                    if outcome[rank] is None:
                        outcome[rank] = "stopped"
                        errors[rank] = f"stopped: group member {first_failure} failed first"
                        ended[rank] = time.perf_counter()
                break
        # finished members exit (and stop their workers) on their own, within EXIT_GRACE_S
        grace_end = time.perf_counter() + EXIT_GRACE_S
        for rank, proc in enumerate(procs):
            if outcome[rank] == "ok":
                proc.join(timeout=max(0.0, grace_end - time.perf_counter()))
    finally:
        barrier.abort()  # nobody may wait on it any more
        for rank, proc in enumerate(procs):
            kill_tree(proc.pid, list(known[rank].values()))
        for proc in procs:
            proc.join(timeout=5)
        for conn in conns:
            conn.close()
    results = []
    for rank in range(size):
        status = outcome[rank] or "failed"
        message = messages[rank]
        if sample_memory:
            peaks[rank], kinds[rank] = _with_noted(peaks[rank], kinds[rank], message)
        peak = peaks[rank] if sample_memory and peaks[rank] else None
        elapsed = (ended[rank] or time.perf_counter()) - start
        value = message[1] if message is not None and status == "ok" else None
        results.append(
            IsolatedResult(
                status,
                value,
                errors[rank],
                procs[rank].exitcode,
                elapsed,
                peak,
                kinds[rank],
                error_code=message[3] if message is not None and len(message) > 3 else None,
            )
        )
    return results
