"""What a tune run returns: the measured trials and the recommendation, as frozen records.

Kept apart from the search (``_search``) and the store (``_store``), which both use them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from wellfed.measure import Trial
from wellfed.platform import PlatformInfo
from wellfed.target import LoaderConfig

__all__ = ["Recommendation", "TuneResult"]


@dataclass(frozen=True)
class Recommendation:
    """The configuration wellfed recommends, and why.

    Attributes:
        config: The recommended configuration.
        samples_per_s: Its measured throughput (median over windows), samples/s.
        speedup: samples_per_s over the num_workers=0 baseline's.
        reason: One paragraph: the evidence behind the choice.
        reasons: Per setting (``num_workers``, ``persistent_workers``, ...), the reason for its
            value and whether it was measured or detected.
        code: Ready-to-paste code building the measured loader: ``DataLoader(...)`` for worker
            processes or the main process, ``wellfed.create_dataloader(...)`` for thread
            workers. Every line fits 79 columns (a long comment goes on as ``#`` lines), so
            it pastes as Python from any terminal of 80 columns or more.
    """

    config: LoaderConfig
    samples_per_s: float
    speedup: float | None
    reason: str
    reasons: dict[str, str] = field(default_factory=dict)
    code: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        out = dataclasses.asdict(self)
        out["config"] = self.config.to_dict()
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Recommendation:
        """Build from ``to_dict()`` output."""
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in names}
        kwargs["config"] = LoaderConfig.from_dict(data["config"])
        return cls(**kwargs)


@dataclass(frozen=True)
class TuneResult:
    """What ``tune`` measured and recommends.

    Attributes:
        platform: The machine (see PlatformInfo).
        workload: description, samples (len of the dataset or None), source, target,
            batch_size, start_method, and user_config (the target's own settings or None).
        trials: Every measured configuration, in the order measured (repeats pooled).
        baseline: The num_workers=0 trial, or None when it was not measured.
        recommended: The recommendation, or None when no configuration could be measured.
        best: The fastest trial.
        ceiling_samples_per_s: The best single-process rate (num_workers 0 or 1) times the
            usable CPUs: what perfect scaling over the cores would give (storage-bound data
            can beat it).
        tuning_time_s: Wall seconds the whole run took.
        budget_s: The time bound it ran under.
        stopped_because: Why the sweep ended (a fact, e.g. "4 workers gained < 5% over 2").
        findings: Doctor findings (as dicts) that made tune refuse worker configurations.
        probes: What the live probes found: ``{"batched_fetch": {"eligible", "why"},
            "threads": {"safe", "why", "fix"}}``.
        notes: The search's decisions, each with its evidence (measured or detected), in the
            order taken: e.g. "loading is wait-bound (detected): ...", or why thread workers,
            though fastest, were not recommended.
        stored_path: Where the result was stored for ``create_dataloader``'s "auto", or None.
        nproc_per_node: Loaders measured at once, as that many local ranks will run
            (``tune(nproc_per_node=N)``); with N > 1 every trial's figures, the
            recommendation and the ceiling are per rank (see ``Trial.nproc``).
        contention: CPU other processes used while tuning
            (``wellfed._contention.Contention.to_dict()``: other_cpus, usable_cpus, window_s,
            contended, top), or None when not measured. A contended result is still stored,
            and says so: tune's notes, and ``create_dataloader``'s reason for "auto".
    """

    platform: PlatformInfo
    workload: dict[str, Any]
    trials: tuple[Trial, ...]
    baseline: Trial | None
    recommended: Recommendation | None
    best: Trial | None
    ceiling_samples_per_s: float | None
    tuning_time_s: float
    budget_s: float
    stopped_because: str
    findings: tuple[dict[str, Any], ...] = ()
    probes: dict[str, Any] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    stored_path: str | None = None
    nproc_per_node: int = 1
    contention: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON contract: platform, workload, trials, baseline, recommended, ..."""
        return {
            "platform": self.platform.to_dict(),
            "workload": dict(self.workload),
            "trials": [t.to_dict() for t in self.trials],
            "baseline": self.baseline.to_dict() if self.baseline else None,
            "recommended": self.recommended.to_dict() if self.recommended else None,
            "best": self.best.to_dict() if self.best else None,
            "ceiling_samples_per_s": self.ceiling_samples_per_s,
            "tuning_time_s": self.tuning_time_s,
            "budget_s": self.budget_s,
            "stopped_because": self.stopped_because,
            "findings": list(self.findings),
            "probes": dict(self.probes),
            "notes": list(self.notes),
            "stored_path": self.stored_path,
            "nproc_per_node": self.nproc_per_node,
            "contention": dict(self.contention) if self.contention is not None else None,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TuneResult:
        """Build a TuneResult from ``to_dict()`` output (as stored on disk)."""
        from wellfed.platform import GPUInfo

        pdata = dict(data["platform"])
        pdata["start_methods"] = tuple(pdata["start_methods"])
        pdata["gpus"] = tuple(GPUInfo(**g) for g in pdata.get("gpus", ()))
        names = {f.name for f in dataclasses.fields(PlatformInfo)}
        platform = PlatformInfo(**{k: v for k, v in pdata.items() if k in names})
        return cls(
            platform=platform,
            workload=dict(data["workload"]),
            trials=tuple(Trial.from_dict(t) for t in data["trials"]),
            baseline=Trial.from_dict(data["baseline"]) if data.get("baseline") else None,
            recommended=Recommendation.from_dict(data["recommended"])
            if data.get("recommended")
            else None,
            best=Trial.from_dict(data["best"]) if data.get("best") else None,
            ceiling_samples_per_s=data.get("ceiling_samples_per_s"),
            tuning_time_s=data.get("tuning_time_s", 0.0),
            budget_s=data.get("budget_s", 0.0),
            stopped_because=data.get("stopped_because", ""),
            findings=tuple(data.get("findings", ())),
            probes=dict(data.get("probes") or {}),
            notes=tuple(data.get("notes", ())),
            stored_path=data.get("stored_path"),
            nproc_per_node=int(data.get("nproc_per_node") or 1),
            contention=dict(data["contention"]) if data.get("contention") else None,
        )
