"""The records ``wellfed watch`` hands back: per loader its stats, evidence and verdict."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from wellfed._meter import WatchStats

__all__ = ["Cause", "LoaderReport", "Verdict", "WatchReport"]


@dataclass(frozen=True)
class Cause:
    """One reason a loader is (or is not) holding the step back, with the figures behind it.

    Attributes:
        code: A stable name: "loading-in-main-process", "model-in-dataset",
            "worker-cpu-saturated", "cpu-limit", "cpu-contention", "storage-wait",
            "waits-in-dataset", "prefetch-underrun", "handover-cost", "worker-restarts",
            "stalls", "small-reads", "no-work-in-step", "queue-full", "loading-keeps-up".
        summary: One sentence.
        evidence: The measured figures, one line each.
    """

    code: str
    summary: str
    evidence: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return {"code": self.code, "summary": self.summary, "evidence": list(self.evidence)}


@dataclass(frozen=True)
class Verdict:
    """Is this loader holding the step back, why, and what to do next.

    Attributes:
        kind: "data-bound" (data wait >= 5% of the step), "not-data-bound", or "too-short"
            (fewer than 5 measured steps).
        headline: One line with the data-bound fraction.
        causes: The causes found, most telling first.
        next_step: The command or change to try next.
        recommended_workers: For a loader with spare workers, the count that would keep up
            (None otherwise).
    """

    kind: str
    headline: str
    causes: tuple[Cause, ...] = ()
    next_step: str = ""
    recommended_workers: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return {
            "kind": self.kind,
            "headline": self.headline,
            "causes": [c.to_dict() for c in self.causes],
            "next_step": self.next_step,
            "recommended_workers": self.recommended_workers,
        }


@dataclass(frozen=True)
class LoaderReport:
    """One loader of a watched program.

    Attributes:
        name: ``"#<n> <dataset class> at <file>:<line>"`` (where it was first iterated).
        settings: Its settings: loader and dataset class, batch size, workers, threads,
            persistent workers, prefetch factor, pin memory, start method.
        stats: Its ``WatchStats`` over the whole run.
        workers: What ``/proc`` showed of its workers (empty without workers or /proc):
            ``restarts``, ``cpu_cores`` (all workers together), ``cpu_per_worker`` (0..1),
            ``states`` (share of samples per wait class), ``queue_empty_at_request`` (share of
            steps that found no batch ready), ``queue_full_share`` (share of samples with the
            prefetch queue full), ``uss_bytes_per_worker``, ``read_bytes``, ``read_calls``,
            ``bytes_per_read``.
        target: A TARGET for ``wellfed tune``/``precompute`` found in the program, or None.
        model: "path (class)" of a ``torch.nn.Module`` reachable from the dataset, or None.
        verdict: The ``Verdict``.
        stale: Dataset attributes the program changed while workers held copies made before
            the change (``wellfed._watch._stale``; ``LoaderRecord.stale`` for the keys), each
            with ``message`` and ``fix`` in words: silently stale data, whatever the verdict.
        timeline: Per step (hand-over time s since the session began, data wait s, step s);
            left out of ``to_dict()``.
    """

    name: str
    settings: dict[str, Any]
    stats: WatchStats
    workers: dict[str, Any]
    target: str | None
    model: str | None
    verdict: Verdict
    stale: tuple[dict[str, Any], ...] = ()
    timeline: tuple[tuple[float, float, float], ...] = field(default=(), repr=False)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict (without the per-step timeline)."""
        return {
            "name": self.name,
            "settings": dict(self.settings),
            "stats": self.stats.to_dict(),
            "workers": dict(self.workers),
            "target": self.target,
            "model": self.model,
            "verdict": self.verdict.to_dict(),
            "stale": [dict(e) for e in self.stale],
        }


@dataclass(frozen=True)
class WatchReport:
    """What ``wellfed.watch_script`` saw of a program's loaders, and how the program ended.

    Attributes:
        program: The script path or ``-m`` module name, as given.
        argv: The arguments it got (``sys.argv[1:]``).
        exit_code: The program's exit status (``SystemExit``'s code; 1 for an exception;
            130 when interrupted by Ctrl-C / SIGINT).
        interrupted: True when a KeyboardInterrupt ended it.
        error: The traceback of the exception that ended it (text), or None.
        elapsed_s: Wall seconds the program ran.
        loaders: One ``LoaderReport`` per DataLoader iterated, in order of first iteration.
        system: ``usable_cpus``, ``io_pressure_share`` (share of the run in which some task
            waited on I/O, ``/proc/pressure/io``), ``disk_busy_share`` (per device, from
            ``/proc/diskstats``), ``main_process_cores`` (the program's own CPU use); each None
            where unreadable.
    """

    program: str
    argv: tuple[str, ...]
    exit_code: int
    interrupted: bool
    error: str | None
    elapsed_s: float
    loaders: tuple[LoaderReport, ...]
    system: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict (no per-step timelines)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["argv"] = list(self.argv)
        out["loaders"] = [lr.to_dict() for lr in self.loaders]
        out["system"] = dict(self.system)
        return out
