"""CPU used by processes outside wellfed's own tree while it measures (contention).

A busy machine slows every trial of ``wellfed tune`` unevenly: on 2 CPUs at load 4, worker
configurations lose more than the main process and tune recommended 0 workers without a word
(issue 15). ``ContentionMeter`` counts the CPU time every other visible process spent during a
window, so the result can say that its figures were measured under contention, by whom, and
decline to become ``create_dataloader``'s default.

Only processes in this PID namespace are visible: other containers on the same host are not
(their load still shows in the trials' noise).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import psutil

from wellfed.platform import usable_cpu_count

__all__ = ["CONTENDED_CPUS", "CONTENDED_FRACTION", "Contention", "ContentionMeter"]

#: A window is contended when other processes kept at least this many CPUs busy on average...
CONTENDED_CPUS = 0.5
#: ...or this fraction of the usable CPUs, whichever is larger. Heuristic: half a CPU taken
#: from a 2-CPU machine changes a 2-worker trial by ~25%, beyond tune's 3% tie band and its
#: 5% gain rule many times over; a background process idling at a few percent does not.
CONTENDED_FRACTION = 0.25


@dataclass(frozen=True)
class Contention:
    """CPU that other processes used during a window.

    Attributes:
        other_cpus: Mean CPUs busy with processes outside this process's tree (CPU-seconds
            per wall second; 1.0 is one CPU fully used).
        usable_cpus: CPUs this process may run on (``wellfed.platform.usable_cpu_count``).
        window_s: Wall seconds the window lasted.
        top: Up to three heaviest other processes: (pid, name, mean CPUs).
    """

    other_cpus: float
    usable_cpus: int
    window_s: float
    top: tuple[tuple[int, str, float], ...] = ()

    @property
    def contended(self) -> bool:
        """Whether other processes took enough CPU to skew the figures (see CONTENDED_*)."""
        return self.other_cpus >= max(CONTENDED_CPUS, CONTENDED_FRACTION * self.usable_cpus)

    def describe(self) -> str:
        """One line, e.g. "other processes kept 1.6 of 2 usable CPUs busy (python 4242: 1.2)"."""
        who = ", ".join(f"{name} {pid}: {cpus:.1f}" for pid, name, cpus in self.top)
        return (
            f"other processes kept {self.other_cpus:.1f} of {self.usable_cpus} usable CPUs busy "
            f"on average over {self.window_s:.0f} s" + (f" ({who})" if who else "")
        )

    def to_dict(self) -> dict[str, object]:
        """A JSON-ready dict."""
        return {
            "other_cpus": round(self.other_cpus, 3),
            "usable_cpus": self.usable_cpus,
            "window_s": round(self.window_s, 3),
            "contended": self.contended,
            "top": [{"pid": p, "name": n, "cpus": round(c, 3)} for p, n, c in self.top],
        }


def _own_tree() -> set[int]:
    me = psutil.Process()
    try:
        return {me.pid, *(c.pid for c in me.children(recursive=True))}
    except psutil.Error:
        return {me.pid}


def _cpu_seconds() -> dict[tuple[int, float], tuple[str, float]]:
    """(pid, create_time) -> (name, user+system CPU seconds) of every visible process."""
    out: dict[tuple[int, float], tuple[str, float]] = {}
    for p in psutil.process_iter(["name", "cpu_times", "create_time"]):
        info = p.info
        times = info.get("cpu_times")
        created = info.get("create_time")
        if times is None or created is None:
            continue
        out[(p.pid, created)] = (info.get("name") or "?", times.user + times.system)
    return out


class ContentionMeter:
    """Measures the CPU other processes use between ``start()`` and ``stop()``.

    Processes in this process's tree at either end (trials, their workers) are left out; a
    process that started and ended inside the window is invisible to both samples, so the
    figure is a lower bound. Cost: one ``psutil.process_iter`` per end (a few ms for a few
    hundred processes).
    """

    def __init__(self) -> None:
        self._t0 = 0.0
        self._before: dict[tuple[int, float], tuple[str, float]] = {}
        self._ours: set[int] = set()

    def start(self) -> ContentionMeter:
        """Take the first sample; returns self."""
        self._ours = _own_tree()
        self._before = _cpu_seconds()
        self._t0 = time.monotonic()
        return self

    def stop(self) -> Contention:
        """Take the second sample and return what other processes used in between."""
        used, window = self.usage()
        total = sum(u[2] for u in used)
        top = tuple((pid, name, cpus) for pid, name, cpus in used[:3] if cpus >= 0.05)
        return Contention(total, usable_cpu_count(), window, top)

    def usage(self) -> tuple[list[tuple[int, str, float]], float]:
        """Every other process's mean CPUs since ``start()``, heaviest first, and the window.

        Returns:
            ([(pid, name, mean CPUs)], window seconds).
        """
        window = max(time.monotonic() - self._t0, 1e-6)
        after = _cpu_seconds()
        ours = self._ours | _own_tree() | {os.getpid()}
        used: list[tuple[int, str, float]] = []
        for key, (name, cpu) in after.items():
            pid = key[0]
            if pid in ours:
                continue
            before = self._before.get(key)
            spent = cpu - before[1] if before is not None else cpu
            if spent > 0:
                used.append((pid, name, spent / window))
        used.sort(key=lambda u: -u[2])
        return used, window
