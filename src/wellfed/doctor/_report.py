"""What the doctor hands back: findings, the report, the stable codes, and the text rendering."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "CATEGORIES",
    "CODES",
    "SEVERITIES",
    "START_METHODS",
    "DoctorReport",
    "Finding",
    "ProbeRun",
    "dedupe",
    "hanging_lines",
    "ordered",
    "render_text",
]

#: The categories of finding, as the issue names them. These strings are stable API.
CATEGORIES: tuple[str, ...] = (
    "unpicklable",
    "fork-shared-handle",
    "cuda-in-worker",
    "rng-duplication",
    "memory-growth",
    "stale-worker-state",
    "shared-memory",
    "thread-hazard",
    "iterable-sharding",
    "worker-config",
    "model-in-worker",
)

#: The start methods a finding names, in the order reports list them.
START_METHODS: tuple[str, ...] = ("fork", "spawn", "forkserver")

#: Severities, worst first. error: breaks or corrupts data; warning: slow, wasteful or risky.
SEVERITIES: tuple[str, ...] = ("error", "warning", "info")

#: Every finding code with its category and a title. Codes never change meaning; each one is
#: documented in docs/errors.md (WF1xx) and docs/doctor.md.
CODES: dict[str, tuple[str, str]] = {
    "WF101": ("unpicklable", "cannot be pickled to spawn/forkserver workers"),
    "WF102": ("unpicklable", "defined in an interactive __main__ that workers cannot import"),
    "WF103": ("unpicklable", "sampler cannot be pickled (breaks when the loader is pickled)"),
    "WF104": ("fork-shared-handle", "OS handle opened before the workers start"),
    "WF105": ("cuda-in-worker", "CUDA tensor, module or device reachable from workers"),
    "WF106": ("cuda-in-worker", "device transfer to CUDA inside worker code"),
    "WF107": ("rng-duplication", "RNG object copied identically into every worker"),
    "WF108": ("rng-duplication", "worker_init_fn seeds repeat across workers or epochs"),
    "WF109": ("memory-growth", "large container of Python objects (copy-on-read)"),
    "WF110": ("memory-growth", "cache filled inside worker code"),
    "WF111": ("stale-worker-state", "attribute changed by a method after workers copied it"),
    "WF112": ("stale-worker-state", "worker code mutates the dataset"),
    "WF113": ("shared-memory", "batches in flight do not fit in /dev/shm"),
    "WF114": ("shared-memory", "file descriptors in flight near ulimit -n"),
    "WF115": ("thread-hazard", "thread pool that breaks or oversubscribes in forked workers"),
    "WF116": ("thread-hazard", "threads running in this process before fork"),
    "WF117": ("iterable-sharding", "IterableDataset yields the same samples in every worker"),
    "WF118": ("iterable-sharding", "fewer shards than workers"),
    "WF119": ("worker-config", "more workers than usable CPUs"),
    "WF120": ("worker-config", "large pickled dataset: slow start-up under spawn/forkserver"),
    "WF121": ("worker-config", "script without the __main__ guard that spawn needs"),
    "WF122": ("worker-config", "workers crashed or hung in the live probe"),
    "WF123": ("worker-config", "live probe not run for a start method (static findings only)"),
    "WF124": (
        "worker-config",
        "workers killed by a signal in the live probe (SIGSEGV, SIGKILL...)",
    ),
    "WF125": ("worker-config", "normalised float32 images sent from workers (4x uint8's bytes)"),
    "WF126": ("model-in-worker", "neural-network model run per sample in the workers"),
}


@dataclass(frozen=True)
class Finding:
    """One hazard, where it is, why it matters and how to fix it.

    Attributes:
        code: Stable code such as "WF101" (see ``docs/errors.md``).
        category: One of CATEGORIES, e.g. "unpicklable".
        severity: "error" (breaks or corrupts data), "warning" (slow, wasteful or risky) or
            "info".
        path: Attribute path rooted at ``dataset`` or ``loader`` (``dataset.transform.
            transforms[0].lambd``, ``type(dataset).__getitem__``), or ``env.<name>`` for the
            environment (``env.dev_shm``).
        start_methods: The start methods it affects, e.g. ("spawn", "forkserver").
        message: What is wrong and why, ending with the code.
        fix: Concrete code-level advice.
        evidence: What was seen or measured, starting "static:" (inferred from the object
            graph or source) or "confirmed live (<method>):" (reproduced in real workers).
    """

    code: str
    category: str
    severity: str
    path: str
    start_methods: tuple[str, ...]
    message: str
    fix: str
    evidence: str

    @property
    def confirmed_live(self) -> bool:
        """True when the live probe reproduced the hazard in real workers."""
        return "confirmed live" in self.evidence

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict of the fields (``start_methods`` as a list)."""
        out = dataclasses.asdict(self)
        out["start_methods"] = list(self.start_methods)
        out["confirmed_live"] = self.confirmed_live
        return out


@dataclass(frozen=True)
class ProbeRun:
    """One live-probe run: the target in real DataLoader workers under one start method.

    Attributes:
        start_method: "fork", "spawn" or "forkserver".
        status: "ok", "failed" (an exception or a crash), "timeout" (hung; killed) or
            "not_probed" (nothing ran in workers: the isolated child could not start, or
            there was nothing to fetch; ``error`` says why).
        elapsed_s: Wall seconds of the run, worker start-up included.
        batches: Batches received from the workers.
        error: The error text when not ok, else None.
        observations: What was measured: ``sample_bytes``, ``tensors_per_sample``,
            ``worker_uss_bytes`` (private memory per worker), ``duplicate_samples``,
            ``pickled_bytes``, ``pickle_s``, ``unpickle_s``... (keys depend on the dataset
            kind). A failed run has ``failure`` (an exception: ``type``, ``message``,
            ``frames`` as ``[[file, line, function], ...]`` outermost first, ``worker_id``
            (None: the probe's own process), and ``main``, the same facts of the main
            process's exception when it fails too) or ``worker_death`` (a worker exited or
            was killed); a hung one ``hang_dumps`` (each hung worker's ``worker_id``, ``pid``
            and ``threads``, each ``{"current": bool, "frames": [...]}``, from its
            faulthandler dump).
    """

    start_method: str
    status: str
    elapsed_s: float
    batches: int = 0
    error: str | None = None
    observations: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict of the fields."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class DoctorReport:
    """The doctor's verdict on a dataset or DataLoader.

    Attributes:
        findings: Every finding, errors first, then by code and path.
        target: What was diagnosed, in one line (the dataset's class and size).
        start_methods: The start methods judged.
        live: Whether the live probe ran.
        probes: The live-probe runs (empty with live=False).
        static_s: Wall seconds of the static checks.
        live_s: Wall seconds of the live probe (0.0 when it did not run).
        objects_visited: Objects the graph walk visited.
        sampled_containers: Paths of large containers of which only a sample was walked.
    """

    findings: tuple[Finding, ...]
    target: str = ""
    start_methods: tuple[str, ...] = ()
    live: bool = False
    probes: tuple[ProbeRun, ...] = ()
    static_s: float = 0.0
    live_s: float = 0.0
    objects_visited: int = 0
    sampled_containers: tuple[str, ...] = ()

    @property
    def errors(self) -> tuple[Finding, ...]:
        """The error-severity findings: what breaks or corrupts data."""
        return tuple(f for f in self.findings if f.severity == "error")

    @property
    def warnings(self) -> tuple[Finding, ...]:
        """The warning-severity findings: slow, wasteful or risky."""
        return tuple(f for f in self.findings if f.severity == "warning")

    @property
    def has_errors(self) -> bool:
        """True when at least one finding is an error."""
        return any(f.severity == "error" for f in self.findings)

    @property
    def is_clean(self) -> bool:
        """True when there is no error and no warning (info findings allowed)."""
        return not any(f.severity in ("error", "warning") for f in self.findings)

    def for_start_method(self, method: str) -> tuple[Finding, ...]:
        """The findings that affect one start method."""
        return tuple(f for f in self.findings if method in f.start_methods)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict: findings, probes and timings."""
        return {
            "target": self.target,
            "start_methods": list(self.start_methods),
            "live": self.live,
            "has_errors": self.has_errors,
            "counts": {s: sum(f.severity == s for f in self.findings) for s in SEVERITIES},
            "findings": [f.to_dict() for f in self.findings],
            "probes": [p.to_dict() for p in self.probes],
            "static_s": self.static_s,
            "live_s": self.live_s,
            "objects_visited": self.objects_visited,
            "sampled_containers": list(self.sampled_containers),
        }


def hanging_lines(text: str, head: str) -> list[str]:
    """``text`` under a label: ``head`` before its first line, as many spaces before the rest.

    A multi-line fix keeps its own indentation (the body of a ``def``) beneath the label, so
    the code in it stays aligned and pastes as written.

    Args:
        text: One or more lines, e.g. a finding's fix.
        head: The label and its indent, e.g. ``"    fix: "``.

    Returns:
        The lines, without trailing newlines (one line, ``head`` alone, for empty text).

    Example:
        >>> hanging_lines("Define it at module level:\\n    def f(x): ...", "  fix: ")
        ['  fix: Define it at module level:', '           def f(x): ...']
    """
    body = text.splitlines() or [""]
    pad = " " * len(head)
    return [f"{head}{body[0]}".rstrip(), *(f"{pad}{line}".rstrip() for line in body[1:])]


def render_text(report: DoctorReport) -> str:
    """Render a report for a terminal: findings grouped by severity, each with path, why, fix.

    Args:
        report: The report to render.

    Returns:
        Plain text (no colour codes), ending with a one-line summary.
    """
    lines: list[str] = [f"wellfed doctor: {report.target}"]
    methods = ", ".join(report.start_methods) or "-"
    mode = "static + live" if report.live else "static only"
    lines.append(f"start methods: {methods}   checks: {mode}")
    titles = {
        "error": "ERRORS (break or corrupt data)",
        "warning": "WARNINGS (slow, wasteful or risky)",
        "info": "INFO",
    }
    for severity in SEVERITIES:
        group = [f for f in report.findings if f.severity == severity]
        if not group:
            continue
        lines.append("")
        lines.append(f"{titles[severity]}: {len(group)}")
        for f in group:
            lines.append(f"  [{f.code}] {f.category} at {f.path}  ({', '.join(f.start_methods)})")
            lines.append(f"    why: {f.message}")
            lines.extend(hanging_lines(f.fix, "    fix: "))
            lines.append(f"    evidence: {f.evidence}")
    if report.probes:
        lines.append("")
        lines.append("live probe:")
        for p in report.probes:
            extra = f": {p.error.splitlines()[0][:160]}" if p.error else ""
            lines.append(
                f"  {p.start_method:<10} {p.status:<10} {p.elapsed_s:6.2f} s  "
                f"{p.batches} batches{extra}"
            )
    lines.append("")
    n_err, n_warn = len(report.errors), len(report.warnings)
    if report.is_clean:
        lines.append(
            f"clean: no errors, no warnings (static {report.static_s:.2f} s, "
            f"live {report.live_s:.2f} s)"
        )
    else:
        lines.append(
            f"{n_err} error(s), {n_warn} warning(s) (static {report.static_s:.2f} s, "
            f"live {report.live_s:.2f} s)"
        )
    return "\n".join(lines)


def dedupe(findings: list[Finding]) -> list[Finding]:
    """One finding per (code, path, severity); start methods merged."""
    merged: dict[tuple[str, str, str], Finding] = {}
    for f in findings:
        key = (f.code, f.path, f.severity)
        if key in merged:
            old = merged[key]
            methods = tuple(m for m in START_METHODS if m in old.start_methods + f.start_methods)
            merged[key] = dataclasses.replace(old, start_methods=methods)
        else:
            merged[key] = f
    return list(merged.values())


def ordered(findings: list[Finding]) -> tuple[Finding, ...]:
    """The findings as reports list them: by severity (worst first), code, then path."""
    rank = {s: i for i, s in enumerate(SEVERITIES)}
    return tuple(sorted(findings, key=lambda f: (rank.get(f.severity, 9), f.code, f.path)))
