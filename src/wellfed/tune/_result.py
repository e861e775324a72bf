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

__all__ = ["DecodeComparison", "Recommendation", "SplitComparison", "TuneResult"]


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
class SplitComparison:
    """The built-in workload's two forms side by side at the recommended configuration.

    The float form (the standard pipeline in the workers: float32, normalised) is what the
    search measured; the split form (uint8 from the workers, flip and normalise per batch
    in the main process on ``device`` through ``wellfed.to_device``) is one more trial at the
    same configuration, whose samples/s counts that main-process work (issue 17).

    Attributes:
        config: The configuration both forms were measured at (the recommended one).
        device: Where the split's device half ran: "cuda" with a CUDA device, else "cpu".
        float_bytes_per_sample: Bytes per sample sent from the workers in the float form:
            the ``nbytes`` of one real batch's tensors over its samples (images and labels).
        uint8_bytes_per_sample: The same for the split form.
        bytes_ratio: float_bytes_per_sample / uint8_bytes_per_sample (~4).
        float_samples_per_s: The float form's samples/s at ``config``: the search's trial,
            repeats pooled; with a CUDA device, its trial through ``to_device`` (below).
        uint8_samples_per_s: The split form's samples/s at ``config``.
        noise_samples_per_s: 2 standard errors of the difference of the two medians,
            samples/s: a difference within it is not told apart from noise.
        use_split: True when the split is recommended: its samples/s is not below the float
            form's by more than ``noise_samples_per_s`` (with 4x fewer bytes, a tie goes to
            the split).
        recommendation: The sentence: "uint8 split: 4.0x fewer bytes per sample, 1.05x the
            samples/s: use ..." or "float form kept: the split measured 12% slower here ...".
        trial: The split form's Trial.
        float_through_device: True when ``float_samples_per_s`` is from one more trial of the
            float form through ``to_device(device)`` (with a CUDA device: both forms then pay
            their copy to the GPU); False when it is the search's trial (on the CPU, where
            ``to_device`` moves nothing, or when that trial failed: a note says so).
    """

    config: LoaderConfig
    device: str
    float_bytes_per_sample: float
    uint8_bytes_per_sample: float
    bytes_ratio: float
    float_samples_per_s: float
    uint8_samples_per_s: float
    noise_samples_per_s: float
    use_split: bool
    recommendation: str
    trial: Trial
    float_through_device: bool = False

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict (config and trial nested as dicts)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["config"] = self.config.to_dict()
        out["trial"] = self.trial.to_dict()
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SplitComparison:
        """Build from ``to_dict()`` output."""
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in names}
        kwargs["config"] = LoaderConfig.from_dict(data["config"])
        kwargs["trial"] = Trial.from_dict(data["trial"])
        return cls(**kwargs)


@dataclass(frozen=True)
class DecodeComparison:
    """The built-in workload's decode form (file bytes from the workers, decode on the GPU),
    measured beside the float and uint8 split forms at the recommended configuration, or why
    it was not measured.

    Measured only with a CUDA device where GPU decode is available (torchvision importable,
    its ``decode_jpeg`` taking ``device=``): ``wellfed.workloads.decode_spec`` through the
    measuring core, one trial, whose samples/s counts the main process's per-batch decode
    (nvJPEG), crop, flip and normalisation on the device. Without it nothing is measured
    (tune's time does not grow) and ``reason`` says why in one sentence.

    Attributes:
        measured: True when the decode form's trial ran and was ok.
        reason: Not measured: why ("GPU decode not measured: no CUDA device"). Measured: the
            figures in one sentence.
        device: Where the decode ran ("cuda"), or None when not measured.
        config: The configuration it was measured at (the recommended one), or None.
        encoded_bytes_per_sample: Bytes per sample sent from the workers: the files' bytes
            (the ``nbytes`` of one real batch's tensors over its samples), or None.
        float_bytes_per_sample: The float form's, as in ``SplitComparison``, or None.
        samples_per_s: The decode form's samples/s at ``config``, or None.
        float_samples_per_s: The float form's samples/s at ``config``, or None.
        uint8_samples_per_s: The uint8 split form's samples/s at ``config`` (None when it was
            not measured).
        noise_samples_per_s: 2 standard errors of the difference of the decode and float
            forms' medians, samples/s, or None.
        trial: The decode form's Trial, or None.
    """

    measured: bool
    reason: str
    device: str | None = None
    config: LoaderConfig | None = None
    encoded_bytes_per_sample: float | None = None
    float_bytes_per_sample: float | None = None
    samples_per_s: float | None = None
    float_samples_per_s: float | None = None
    uint8_samples_per_s: float | None = None
    noise_samples_per_s: float | None = None
    trial: Trial | None = None

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict (config and trial nested as dicts, or None)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["config"] = self.config.to_dict() if self.config is not None else None
        out["trial"] = self.trial.to_dict() if self.trial is not None else None
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DecodeComparison:
        """Build from ``to_dict()`` output."""
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in names}
        kwargs["config"] = LoaderConfig.from_dict(data["config"]) if data.get("config") else None
        kwargs["trial"] = Trial.from_dict(data["trial"]) if data.get("trial") else None
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
        bytes_per_sample: Bytes per sample of one real batch of the workload (the
            ``nbytes`` of its tensors over its samples), or None when not measured (it is
            measured with a CUDA device, for the copy ceiling, and for the built-in workload).
        copy_ceiling_samples_per_s: With a CUDA device: the samples/s that the pinned
            host-to-device copy allows, ``platform.host_to_device.pinned_gb_s`` x 10**9 /
            bytes_per_sample, measured on the first device alone; each rank copies to its own
            device, so the figure is per rank, and a node column multiplies it by N,
            assuming one device per rank and copies that do not slow each other (not
            measured); None without one. Loading cannot feed the device faster than the lower of the
            two ceilings.
        split: The built-in workload's float form against its uint8 split form at the
            recommended configuration (SplitComparison), or None: not the built-in workload
            (a user TARGET is not rewritten), nothing recommended, or skipped for the time
            budget (a "time budget:" note says so).
        decode: The built-in workload's decode form (DecodeComparison): measured with a
            CUDA device where GPU decode is available, else why not; None when not the
            built-in workload or nothing was recommended.
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
    bytes_per_sample: float | None = None
    copy_ceiling_samples_per_s: float | None = None
    split: SplitComparison | None = None
    decode: DecodeComparison | None = None

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
            "bytes_per_sample": self.bytes_per_sample,
            "copy_ceiling_samples_per_s": self.copy_ceiling_samples_per_s,
            "split": self.split.to_dict() if self.split is not None else None,
            "decode": self.decode.to_dict() if self.decode is not None else None,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TuneResult:
        """Build a TuneResult from ``to_dict()`` output (as stored on disk)."""
        platform = PlatformInfo.from_dict(dict(data["platform"]))
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
            bytes_per_sample=data.get("bytes_per_sample"),
            copy_ceiling_samples_per_s=data.get("copy_ceiling_samples_per_s"),
            split=SplitComparison.from_dict(data["split"]) if data.get("split") else None,
            decode=DecodeComparison.from_dict(data["decode"]) if data.get("decode") else None,
        )
