"""``wellfed watch`` beside datapath-doctor on four real training loops: who names the cause.

Issue 13 asks that wellfed's watch name the cause of a data-bound loop at least as well as
datapath-doctor (0.2.1, on the package index), with no change to the loop. This benchmark runs
four training loops (the issue's three, and the fourth its healthy loop turned out to be at a
20 ms step), each twice, in a fresh process each time:

* **wellfed**: ``wellfed watch --json F THIS_FILE --loop NAME``: the loop as written, unchanged
  (``train``); the verdict and its causes are read from the JSON report.
* **datapath-doctor**: the same loop with the wiring its README documents
  (``train_with_datapath_doctor``): the loader wrapped in a ``DataLoaderProfiler``, and after
  every step ``record_compute_done(queue_depth=...)``, a ``DiskIOCollector`` reading for the
  block device that holds the data and a ``PSICollector`` reading set on the step's sample;
  at the end ``RuleEngine.with_default_rules().run(samples)``, and its correlated diagnosis
  (``correlation.correlate_findings``, what its report prints as the likely root cause).
  The queue depth is the ``loader_queue_depth()`` its README leaves to the user: batches ready
  in torch's worker iterator (``_data_queue.qsize()`` plus reordered batches held), the same
  reading wellfed's sampler takes.

The loops (every step is a ``time.sleep``: the host waiting for its GPU step):

* ``decode``, CPU-bound decode with too few workers: wellfed's built-in pipeline (Pillow JPEG
  decode, RandomResizedCrop(224), flip, normalise) over the 10 shipped photos, 192 samples
  drawn by a seeded RandomSampler; batch 8, 1 worker; 5 ms step.
* ``storage``, storage that waits: 256 files of 1 MiB of random bytes on the local disk; each
  read first drops the file's pages from the page cache (``posix_fadvise(DONTNEED)``), so
  every sample is a real device read, as for a dataset larger than RAM; batch 32, 2
  persistent workers, 8 epochs; 20 ms step. The device's bandwidth is the limit (about
  550-600 MB/s here, the same with 1 or 2 workers).
* ``healthy``: 1,024 in-memory uint8 (3, 32, 32) images returned as float; batch 32, 2
  workers; 150 ms step (a mid-size model's GPU step). Loading keeps up.
* ``handover``: 2,048 of the same images, 2 persistent workers, 2 epochs, 20 ms step. The
  workers keep the queue full, but taking a batch from a worker costs the training thread
  2-4 ms (unpickling, receiving the shared memory's file descriptors): 10-15% of the step.

The healthy loop's step is 150 ms because at 20 ms (the ``handover`` loop, the issue's
example) the in-memory loop is not healthy by either tool's threshold: with the queue full,
``next()`` still takes 2-4 ms on 2 shared CPUs (measured without any meter, 40 steps of 20 ms:
1.0 ms p50 with ``num_workers=0``, where the 32 samples are indexed and collated in the loop;
2.0-3.3 ms with 1 or 2 workers; 1.2 ms with the ``file_system`` sharing strategy), and at
100 ms it sat at 4%, on wellfed's 5% line.

Two of datapath-doctor 0.2.1's collectors misread, on this machine and any Linux:

* its worker CPU monitor (``WorkerProcessMonitor``) makes new ``psutil.Process`` objects for
  the children at every sample, and ``cpu_percent(interval=None)`` returns 0.0 on a new
  object's first call: ``worker_cpu_pct`` is 0.0 at every step, so its CPU-bound rule
  (DPD-005) cannot fire;
* ``DiskIOCollector`` takes ``io_ticks`` from index 9 of the split ``/proc/diskstats`` line,
  which is "sectors written" (``io_ticks``, field 10 after the name, is index 12;
  Documentation/admin-guide/iostats.rst): ``disk_util_pct`` is 100 x sectors written per ms,
  0 for a dataset that is only read, so its disk saturation rule (DPD-002) fires on writes,
  not on a busy device.

Beside the documented run, its rules are run a second time over the same samples with
``worker_cpu_pct`` from ``psutil.Process`` objects kept across steps and ``disk_util_pct``
from ``io_ticks`` (the "corrected" column): what it would say with working telemetry.

Each pair is compared by cause class: CPU-bound loading, storage, hand-over, worker restarts,
model in dataset, checkpoint, stalls, data-bound with no cause named (a symptom: DPD-001 or
prefetch underrun alone), or not data-bound. wellfed is "same" when it names
datapath-doctor's class, "more specific" when it names a cause where datapath-doctor names only
the symptom, or, on a loop that is not data-bound, when it also says how many workers would
keep up; "less specific" or "different" otherwise. Each tool is also checked against the
loop's cause by construction.

Run:
    python benchmarks/watch_vs_datapath_doctor.py            # ~2-3 min on 2 CPUs
    python benchmarks/watch_vs_datapath_doctor.py --loop decode --datapath-doctor out.json
    wellfed watch benchmarks/watch_vs_datapath_doctor.py --loop decode
Needs ``pip install datapath-doctor`` (it is in the ``bench`` extra). Writes
benchmarks/results/watch_vs_datapath_doctor.jsonl and .md (``--out`` to change the folder).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler

HERE = Path(__file__).resolve()
RESULTS = HERE.parent / "results"

#: Each loop: its loader settings, its step and its cause by construction.
LOOPS: dict[str, dict[str, Any]] = {
    "decode": {
        "what": "CPU-bound decode: built-in JPEG pipeline, 1 worker, 5 ms step",
        "batch_size": 8,
        "num_workers": 1,
        "persistent_workers": False,
        "epochs": 1,
        "step_ms": 5.0,
        "expected": "CPU-bound loading",
    },
    "storage": {
        "what": "storage that waits: 1 MiB files read past the page cache, 2 workers, 20 ms step",
        "batch_size": 32,
        "num_workers": 2,
        "persistent_workers": True,
        "epochs": 8,
        "step_ms": 20.0,
        "expected": "storage",
    },
    "healthy": {
        "what": "in-memory images, 2 workers, 150 ms step",
        "samples": 1024,
        "batch_size": 32,
        "num_workers": 2,
        "persistent_workers": True,
        "epochs": 1,
        "step_ms": 150.0,
        "expected": "not data-bound",
    },
    "handover": {
        "what": "the same in-memory images, 2 workers, 20 ms step: the hand-over",
        "samples": 2048,
        "batch_size": 32,
        "num_workers": 2,
        "persistent_workers": True,
        "epochs": 2,
        "step_ms": 20.0,
        "expected": "hand-over",
    },
}

#: The decode loop's samples per epoch (drawn with a seeded RandomSampler from the 320).
DECODE_SAMPLES = 192
#: The storage loop's files and their size.
STORAGE_FILES = 256
STORAGE_FILE_BYTES = 1 << 20


# --- the datasets ---------------------------------------------------------------------------


class FileRecords(Dataset[tuple[torch.Tensor, int]]):
    """One file per sample, each read past the page cache: a real device read per sample.

    ``posix_fadvise(POSIX_FADV_DONTNEED)`` on the open file drops its (clean) pages from the
    page cache, so the read that follows goes to the block device, as it would for a dataset
    far larger than RAM. Returns the first 4,096 bytes as float32 (4096,) and the index.
    """

    def __init__(self, folder: str) -> None:
        self.paths = sorted(str(p) for p in Path(folder).glob("*.bin"))

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        fd = os.open(self.paths[index], os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            chunks = []
            while chunk := os.read(fd, 1 << 20):
                chunks.append(chunk)
        finally:
            os.close(fd)
        data = torch.frombuffer(bytearray(b"".join(chunks)[:4096]), dtype=torch.uint8)
        return data.float(), index


class InMemoryImages(Dataset[tuple[torch.Tensor, int]]):
    """``n`` uint8 (3, 32, 32) images held in RAM (seeded), returned as float in [0, 1]."""

    def __init__(self, n: int = 2048) -> None:
        gen = torch.Generator().manual_seed(0)
        self.images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=gen)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index].float().div_(255), index % 10


def make_files(folder: Path, n: int = STORAGE_FILES, size: int = STORAGE_FILE_BYTES) -> None:
    """Write the storage loop's files (random bytes) and flush them to the device."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        with (folder / f"{i:04d}.bin").open("wb") as f:
            f.write(os.urandom(size))
    os.sync()  # clean pages: DONTNEED drops only clean ones


def make_loader(loop: str, data: str | None) -> DataLoader[Any]:
    """The loop's DataLoader (its settings in LOOPS)."""
    cfg = LOOPS[loop]
    common: dict[str, Any] = {
        "batch_size": cfg["batch_size"],
        "num_workers": cfg["num_workers"],
        "persistent_workers": cfg["persistent_workers"],
        "timeout": 120,
    }
    gen = torch.Generator().manual_seed(0)
    if loop == "decode":
        from wellfed.workloads import builtin_dataset

        dataset: Dataset[Any] = builtin_dataset()
        sampler = RandomSampler(dataset, num_samples=DECODE_SAMPLES, generator=gen)  # type: ignore[arg-type]
        return DataLoader(dataset, sampler=sampler, **common)
    if loop == "storage":
        if not data:
            raise SystemExit("--loop storage needs --data FOLDER (the files; see make_files)")
        return DataLoader(FileRecords(data), shuffle=True, generator=gen, **common)
    return DataLoader(InMemoryImages(cfg["samples"]), shuffle=True, generator=gen, **common)


# --- the loop, plain and wired for datapath-doctor ------------------------------------------


def step(batch: Any, step_s: float) -> None:
    """The training step: the host waits ``step_s`` for its GPU (as at a ``loss.item()``)."""
    time.sleep(step_s)


def train(loader: DataLoader[Any], *, step_s: float, epochs: int) -> int:
    """The training loop as written: what ``wellfed watch`` runs unchanged. Returns steps."""
    steps = 0
    for _epoch in range(epochs):
        for batch in loader:
            step(batch, step_s)
            steps += 1
    return steps


class _Tracked:
    """An iterable over ``loader`` that keeps the current epoch's iterator (for its queue)."""

    def __init__(self, loader: DataLoader[Any]) -> None:
        self.loader = loader
        self.it: Any = None

    def __iter__(self) -> Iterator[Any]:
        self.it = iter(self.loader)
        return self.it  # type: ignore[no-any-return]


def queue_depth(it: Any) -> int | None:
    """Batches ready for the loop in torch's worker iterator (the README's loader_queue_depth)."""
    try:
        ready = int(it._data_queue.qsize())
        ready += sum(1 for v in list(it._task_info.values()) if len(v) == 2)
    except (AttributeError, NotImplementedError, TypeError, ValueError, OSError):
        return None
    return ready


class _DiskBusy:
    """Share of wall time ``device`` had I/O in flight, between samples, in % (io_ticks).

    ``/proc/diskstats`` field 10 after the name (``io_ticks``, ms doing I/O: index 12 of the
    split line; Documentation/admin-guide/iostats.rst).
    """

    def __init__(self, device: str) -> None:
        self.device = device
        self._prev: tuple[float, int] | None = None

    def sample(self) -> float | None:
        now = time.monotonic()
        ticks = None
        with open("/proc/diskstats") as f:
            for line in f:
                parts = line.split()
                if len(parts) > 12 and parts[2] == self.device:
                    ticks = int(parts[12])
        if ticks is None:
            return None
        prev, self._prev = self._prev, (now, ticks)
        if prev is None or now <= prev[0]:
            return None
        return min(100.0, 100.0 * (ticks - prev[1]) / ((now - prev[0]) * 1e3))


class _KeptWorkerCPU:
    """Mean worker CPU % (100 = one core) from ``psutil.Process`` objects kept across samples."""

    def __init__(self) -> None:
        import psutil

        self._psutil = psutil
        self._me = psutil.Process()
        self._seen: dict[int, Any] = {}

    def sample(self) -> float | None:
        values = []
        for child in self._me.children(recursive=False):
            proc = self._seen.get(child.pid)
            try:
                if proc is None:
                    self._seen[child.pid] = child
                    child.cpu_percent(interval=None)  # primes it; the first reading is 0.0
                    continue
                values.append(proc.cpu_percent(interval=None))
            except self._psutil.Error:
                continue
        return sum(values) / len(values) if values else None


def block_device(path: str) -> str | None:
    """The block device (``/proc/diskstats`` name) holding ``path``, or None."""
    st = os.stat(path)
    link = Path(f"/sys/dev/block/{os.major(st.st_dev)}:{os.minor(st.st_dev)}")
    try:
        return os.path.basename(os.readlink(link))
    except OSError:
        return None


def train_with_datapath_doctor(
    loader: DataLoader[Any], *, step_s: float, epochs: int, data_path: str
) -> dict[str, Any]:
    """The same loop with datapath-doctor's documented wiring; returns its diagnosis."""
    from datapath_doctor.collectors.dataloader_profiler import DataLoaderProfiler
    from datapath_doctor.collectors.proc_stats import DiskIOCollector, PSICollector

    tracked = _Tracked(loader)
    profiler = DataLoaderProfiler(
        tracked,
        num_workers=loader.num_workers,
        prefetch_factor=loader.prefetch_factor if loader.num_workers else None,
    )
    device = block_device(data_path)
    disk = DiskIOCollector(device) if device else None
    psi = PSICollector()
    kept_cpu = _KeptWorkerCPU()
    busy = _DiskBusy(device) if device else None
    if disk is not None and busy is not None:
        disk.sample()  # primes its baseline
        busy.sample()
    for _epoch in range(epochs):
        for batch in profiler:
            step(batch, step_s)
            sample = profiler.record_compute_done(queue_depth=queue_depth(tracked.it))
            if disk is not None and (reading := disk.sample()):
                for key, value in reading.items():
                    setattr(sample, key, value)
            if reading := psi.sample():
                for key, value in reading.items():
                    setattr(sample, key, value)
            sample.extra["kept_worker_cpu_pct"] = kept_cpu.sample()
            sample.extra["io_ticks_util_pct"] = busy.sample() if busy is not None else None
    return diagnose(profiler.samples, device=device)


def diagnose(samples: list[Any], *, device: str | None) -> dict[str, Any]:
    """datapath-doctor's rules and correlation over the samples: as recorded, and corrected."""
    from datapath_doctor.engine import RuleEngine

    corrected = [
        dataclasses.replace(
            s,
            worker_cpu_pct=s.extra.get("kept_worker_cpu_pct"),
            disk_util_pct=s.extra.get("io_ticks_util_pct"),
        )
        for s in samples
    ]
    wait = sum(s.data_wait_s for s in samples)
    total = sum(s.step_time_s for s in samples)
    recorded_cpu = [s.worker_cpu_pct for s in samples if s.worker_cpu_pct is not None]
    kept_cpu = [s.worker_cpu_pct for s in corrected if s.worker_cpu_pct is not None]
    engine = RuleEngine.with_default_rules()
    return {
        "steps": len(samples),
        "data_wait_fraction": wait / total if total else None,
        "disk": device,
        "mean_worker_cpu_pct_recorded": _mean(recorded_cpu),
        "mean_worker_cpu_pct_kept": _mean(kept_cpu),
        "mean_disk_util_pct_recorded": _mean([s.disk_util_pct for s in samples]),
        "mean_disk_util_pct_io_ticks": _mean([s.disk_util_pct for s in corrected]),
        "mean_psi_io_full_avg10": _mean([s.psi_io_full_avg10 for s in samples]),
        "mean_queue_depth": _mean([s.queue_depth for s in samples]),
        "documented": _run_rules(engine, samples),
        "corrected": _run_rules(engine, corrected),
    }


def _mean(values: Sequence[float | None]) -> float | None:
    got = [float(v) for v in values if v is not None]
    return sum(got) / len(got) if got else None


def _run_rules(engine: Any, samples: list[Any]) -> dict[str, Any]:
    from datapath_doctor.correlation import correlate_findings
    from datapath_doctor.report import render_findings

    findings = engine.run(samples)
    diagnosis = correlate_findings(findings)
    return {
        "findings": [f.to_dict() for f in findings],
        "diagnosis": None
        if diagnosis is None
        else {
            "summary": diagnosis.summary,
            "type": diagnosis.diagnosis_type,
            "confidence": diagnosis.confidence,
            "chain": list(diagnosis.chain),
            "supporting_rule_ids": list(diagnosis.supporting_rule_ids),
        },
        "report": render_findings(findings, num_samples=len(samples)),
    }


def run_loop(loop: str, data: str | None, doctor_out: Path | None) -> int:
    """Run one loop: plain (for ``wellfed watch``), or wired for datapath-doctor."""
    cfg = LOOPS[loop]
    loader = make_loader(loop, data)
    step_s = cfg["step_ms"] / 1e3
    if doctor_out is None:
        steps = train(loader, step_s=step_s, epochs=cfg["epochs"])
        print(f"{loop}: {steps} steps")
        return 0
    path = data or str(Path(__file__).resolve().parent)
    if loop == "decode":
        from wellfed.workloads import PHOTOS_DIR

        path = str(PHOTOS_DIR)
    result = train_with_datapath_doctor(loader, step_s=step_s, epochs=cfg["epochs"], data_path=path)
    doctor_out.write_text(json.dumps(result, indent=1, default=str))
    print(f"{loop}: {result['steps']} steps")
    return 0


# --- comparing the verdicts -----------------------------------------------------------------

CPU_CAUSES = {"worker-cpu-saturated", "cpu-limit", "cpu-contention"}
STORAGE_CAUSES = {"storage-wait", "small-reads", "waits-in-dataset"}
NO_CAUSE = "data-bound, no cause named"


def wellfed_classes(verdict: dict[str, Any]) -> list[str]:
    """The cause classes wellfed's verdict names."""
    if verdict["kind"] != "data-bound":
        return [{"not-data-bound": "not data-bound"}.get(verdict["kind"], verdict["kind"])]
    out: list[str] = []
    for cause in verdict["causes"]:
        code = cause["code"]
        if code in CPU_CAUSES:
            cls = "CPU-bound loading"
        elif code in STORAGE_CAUSES:
            cls = "storage"
        elif code == "loading-in-main-process":
            cls = "CPU-bound loading" if "computing" in cause["summary"] else "storage"
        elif code == "handover-cost":
            cls = "hand-over"
        elif code == "model-in-dataset":
            cls = "model in dataset"
        elif code == "worker-restarts":
            cls = "worker restarts"
        elif code == "stalls":
            cls = "stalls"
        else:
            continue  # prefetch-underrun, no-work-in-step: symptoms
        if cls not in out:
            out.append(cls)
    return out or [NO_CAUSE]


def doctor_class(result: dict[str, Any]) -> str:
    """The cause class of datapath-doctor's correlated diagnosis."""
    ids = {f["rule_id"] for f in result["findings"]}
    if "DPD-001" not in ids:
        return "not data-bound"
    diagnosis = result["diagnosis"]
    if diagnosis is None:
        return NO_CAUSE
    rules = set(diagnosis["supporting_rule_ids"])
    if "DPD-005" in rules:
        return "CPU-bound loading"
    if rules & {"DPD-002", "DPD-003", "DPD-006", "DPD-007"}:
        return "storage"
    if "DPD-009" in rules:
        return "checkpoint"
    if "DPD-010" in rules:
        return "worker restarts"
    return NO_CAUSE


def compare(wf: list[str], recommended: int | None, dpd: str, fraction: float | None) -> str:
    """wellfed's verdict against datapath-doctor's.

    Returns "same", "more specific", "less specific" or "different".

    ``fraction`` is wellfed's data-bound fraction: between its threshold (5%) and
    datapath-doctor's (DPD-001: 15%) the two disagree on "data-bound" by definition.
    """
    if dpd == "not data-bound":
        if wf != ["not data-bound"]:
            if fraction is not None and fraction < 0.15:
                return "different (thresholds: data-bound at 5% vs 15%)"
            return "different"
        return "more specific" if recommended is not None else "same"
    if dpd == NO_CAUSE:
        if wf == [NO_CAUSE]:
            return "same"
        return "different" if wf == ["not data-bound"] else "more specific"
    if dpd in wf:
        return "same"
    return "less specific" if wf == [NO_CAUSE] else "different"


def _doctor_text(result: dict[str, Any]) -> str:
    """datapath-doctor's correlated diagnosis (or its absence) and its findings."""
    diagnosis = result["diagnosis"]
    if not result["findings"]:
        return 'no issues found ("Input path looks healthy")'
    ids = ", ".join(f"{f['rule_id']} {f['title']}" for f in result["findings"])
    if diagnosis is None:
        return f"no root cause; findings: {ids}"
    return f"{diagnosis['summary']} ({diagnosis['type']}, {diagnosis['confidence']}; {ids})"


def _wellfed_text(verdict: dict[str, Any], *, evidence: bool = False) -> str:
    """The verdict's kind and causes; with ``evidence``, each cause's first figure."""
    fraction = verdict["headline"].split(":", 1)[1].split(" of step time")[0].strip()
    if not evidence:
        codes = ", ".join(c["code"] for c in verdict["causes"])
        return f"{verdict['kind']} ({fraction}): {codes}"
    causes = "; ".join(
        f"**{c['code']}** ({c['evidence'][0]})" if c["evidence"] else f"**{c['code']}**"
        for c in verdict["causes"]
    )
    return f"{verdict['kind']} ({fraction}): {causes}"


def _doctor_cell(result: dict[str, Any]) -> str:
    """datapath-doctor's diagnosis with its evidence chain, for the Markdown table."""
    diagnosis = result["diagnosis"]
    if diagnosis is None:
        return _doctor_text(result)
    return f"{_doctor_text(result)}: {'; '.join(diagnosis['chain'])}"


def _run(cmd: list[str], timeout_s: float) -> tuple[int, str, float]:
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired as exc:
        out = (exc.stderr or b"").decode() if isinstance(exc.stderr, bytes) else exc.stderr or ""
        return 124, out, time.perf_counter() - t0
    return proc.returncode, proc.stdout + proc.stderr, time.perf_counter() - t0


def compare_loop(loop: str, data: str | None, work: Path, timeout_s: float) -> dict[str, Any]:
    """Run ``loop`` under ``wellfed watch`` and wired for datapath-doctor; the record."""
    extra = ["--data", data] if data else []
    wf_json = work / f"{loop}.wellfed.json"
    dpd_json = work / f"{loop}.datapath_doctor.json"
    load = os.getloadavg()
    script = os.path.relpath(HERE)
    wf_cmd = [sys.executable, "-m", "wellfed", "watch", "--json", str(wf_json), script]
    rc_wf, out_wf, wall_wf = _run([*wf_cmd, "--loop", loop, *extra], timeout_s)
    dpd_cmd = [sys.executable, script, "--loop", loop, *extra]
    rc_dpd, out_dpd, wall_dpd = _run([*dpd_cmd, "--datapath-doctor", str(dpd_json)], timeout_s)
    record: dict[str, Any] = {
        "record": "loop",
        "loop": loop,
        **LOOPS[loop],
        "load_average_before": [round(x, 2) for x in load],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "wellfed": {"exit_code": rc_wf, "wall_s": round(wall_wf, 2)},
        "datapath_doctor": {"exit_code": rc_dpd, "wall_s": round(wall_dpd, 2)},
    }
    if rc_wf != 0 or not wf_json.exists():
        record["wellfed"]["output_tail"] = out_wf[-3000:]
    else:
        report = json.loads(wf_json.read_text())
        lr = report["loaders"][0]
        record["wellfed"].update(
            verdict=lr["verdict"],
            stats=lr["stats"],
            workers=lr["workers"],
            system=report["system"],
        )
    if rc_dpd != 0 or not dpd_json.exists():
        record["datapath_doctor"]["output_tail"] = out_dpd[-3000:]
    else:
        record["datapath_doctor"].update(json.loads(dpd_json.read_text()))
    return judge_record(record)


def judge_record(record: dict[str, Any]) -> dict[str, Any]:
    """Set the cause classes, the comparisons and who got the loop's cause right."""
    wf, dpd = record["wellfed"], record["datapath_doctor"]
    if "verdict" not in wf or "documented" not in dpd:
        return record
    wf["classes"] = wellfed_classes(wf["verdict"])
    for kind in ("documented", "corrected"):
        dpd[kind]["class"] = doctor_class(dpd[kind])
    rec = wf["verdict"].get("recommended_workers")
    fraction = wf["stats"].get("data_bound_fraction")
    for kind in ("documented", "corrected"):
        record[f"wellfed_vs_{kind}"] = compare(wf["classes"], rec, dpd[kind]["class"], fraction)
    record["wellfed_right"] = record["expected"] in wf["classes"]
    record["datapath_doctor_right"] = {
        kind: dpd[kind]["class"] == record["expected"] for kind in ("documented", "corrected")
    }
    return record


def _env() -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    sys.path.insert(0, str(HERE.parents[1]))  # the repo root: benchmarks._env
    import wellfed
    from benchmarks._env import git_sha
    from wellfed.platform import collect_platform_info

    try:
        dpd_version: str | None = version("datapath-doctor")
    except PackageNotFoundError:
        dpd_version = None
    info = collect_platform_info(include_gpus=False)
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "wellfed": wellfed.__version__,
        "datapath_doctor": dpd_version,
        "psutil": version("psutil"),
        "git_sha": git_sha(mark_dirty=True),
        "cpu": platform.processor() or platform.machine(),
        "usable_cpus": info.usable_cpus,
        "os": f"{info.os} {info.os_release}",
    }


def render_markdown(run: dict[str, Any], loops: list[dict[str, Any]], end: dict[str, Any]) -> str:
    """The results page: the table, then each loop's two verdicts in full."""
    env = run["env"]
    lines = [
        "# wellfed watch beside datapath-doctor",
        "",
        f"`{run['command']}` at git {env['git_sha']}, wellfed {env['wellfed']}, "
        f"datapath-doctor {env['datapath_doctor']}, torch {env['torch']}, Python "
        f"{env['python']}, {env['usable_cpus']} usable CPUs ({env['os']}). Load average "
        f"{run['load_average']} before, {end['load_average']} after; {end['wall_s']} s in all."
        + (f" Judged again with `{run['rendered']}`." if run.get("rendered") else ""),
        "",
        "| loop | datapath-doctor (documented wiring) "
        "| datapath-doctor (worker CPU, disk util corrected) | wellfed watch (unchanged loop) "
        "| wellfed vs datapath-doctor |",
        "|---|---|---|---|---|",
    ]
    for r in loops:
        wf, dpd = r["wellfed"], r["datapath_doctor"]
        if "verdict" not in wf or "documented" not in dpd:
            lines.append(f"| {r['loop']} | failed | failed | failed | - |")
            continue
        lines.append(
            f"| {r['loop']}: {r['what']} "
            f"| {_doctor_cell(dpd['documented'])} | {_doctor_cell(dpd['corrected'])} "
            f"| {_wellfed_text(wf['verdict'], evidence=True)} "
            f"| {r['wellfed_vs_documented']} (corrected: {r['wellfed_vs_corrected']}) |"
        )
    lines += [
        "",
        "Cause classes against the loop's cause by construction: "
        + "; ".join(
            f"{r['loop']} ({r['expected']}): wellfed "
            f"{'right' if r.get('wellfed_right') else 'wrong'}"
            f" ({', '.join(r['wellfed'].get('classes', []))}), datapath-doctor "
            f"{r['datapath_doctor'].get('documented', {}).get('class')} / corrected "
            f"{r['datapath_doctor'].get('corrected', {}).get('class')}"
            for r in loops
        )
        + ".",
        "",
    ]
    for r in loops:
        wf, dpd = r["wellfed"], r["datapath_doctor"]
        lines += [f"## {r['loop']}: {r['what']}", ""]
        lines.append(
            f"Load average {r['load_average_before']} before, {r['load_average_after']} after."
        )
        lines.append("")
        if "verdict" in wf:
            v = wf["verdict"]
            lines += ["wellfed watch:", "", "```text", v["headline"]]
            for c in v["causes"]:
                lines.append(f"- {c['code']}: {c['summary']}")
                lines += [f"    {e}" for e in c["evidence"]]
            lines += [f"next: {v['next_step']}", "```", ""]
        else:
            lines += ["wellfed watch failed:", "", "```text", wf.get("output_tail", ""), "```", ""]
        if "documented" in dpd:
            lines.append(
                f"datapath-doctor ({dpd['steps']} steps; data wait "
                f"{100 * (dpd['data_wait_fraction'] or 0):.0f}% of step time; worker CPU "
                f"recorded {_fmt(dpd['mean_worker_cpu_pct_recorded'])}%, kept-object psutil "
                f"{_fmt(dpd['mean_worker_cpu_pct_kept'])}%; disk {dpd['disk']} util recorded "
                f"{_fmt(dpd['mean_disk_util_pct_recorded'])}%, from io_ticks "
                f"{_fmt(dpd['mean_disk_util_pct_io_ticks'])}%; PSI io full avg10 "
                f"{_fmt(dpd['mean_psi_io_full_avg10'])}; queue depth "
                f"{_fmt(dpd['mean_queue_depth'])}), documented wiring:"
            )
            lines += ["", "```text", dpd["documented"]["report"], "```", ""]
            if dpd["corrected"]["report"] != dpd["documented"]["report"]:
                lines += ["With worker CPU corrected:", "", "```text"]
                lines += [dpd["corrected"]["report"], "```", ""]
        else:
            lines += ["datapath-doctor failed:", "", "```text", dpd.get("output_tail", ""), "```"]
            lines.append("")
    return "\n".join(lines)


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}"


def compare_all(out: Path, loops: Sequence[str], timeout_s: float) -> int:
    """Run every loop both ways; print the table; write the .jsonl and .md."""
    try:
        import datapath_doctor  # noqa: F401
    except ImportError:
        print("datapath-doctor is not installed: pip install datapath-doctor", file=sys.stderr)
        return 2
    started = time.perf_counter()
    argv = " ".join(sys.argv[1:])
    run = {
        "record": "run",
        "benchmark": "watch_vs_datapath_doctor",
        "command": f"python benchmarks/watch_vs_datapath_doctor.py {argv}".strip(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "env": _env(),
    }
    print(f"load average before: {run['load_average']} on {run['env']['usable_cpus']} CPUs")
    work = Path(tempfile.mkdtemp(prefix="wellfed-vs-dpd-"))
    records = []
    try:
        data = None
        if "storage" in loops:
            data = work / "files"
            make_files(data)
        for loop in loops:
            print(f"{loop}: {LOOPS[loop]['what']} ...", flush=True)
            record = compare_loop(loop, str(data) if loop == "storage" else None, work, timeout_s)
            records.append(record)
            wf, dpd = record["wellfed"], record["datapath_doctor"]
            print(
                f"  wellfed: {_wellfed_text(wf['verdict']) if 'verdict' in wf else 'failed'} "
                f"({wf['wall_s']} s)"
            )
            print(
                "  datapath-doctor: "
                + (_doctor_text(dpd["documented"]) if "documented" in dpd else "failed")
                + f" ({dpd['wall_s']} s)"
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    end = {
        "record": "end",
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "wall_s": round(time.perf_counter() - started, 1),
    }
    return write_results(out, run, records, end)


def write_results(
    out: Path, run: dict[str, Any], records: list[dict[str, Any]], end: dict[str, Any]
) -> int:
    """Print the table; write the .jsonl and .md into ``out``; 1 if a run failed."""
    print()
    header = ("loop", "datapath-doctor", "wellfed", "wellfed is")
    rows = [
        (
            r["loop"],
            _doctor_text(r["datapath_doctor"]["documented"])
            if "documented" in r["datapath_doctor"]
            else "failed",
            _wellfed_text(r["wellfed"]["verdict"]) if "verdict" in r["wellfed"] else "failed",
            r.get("wellfed_vs_documented", "-"),
        )
        for r in records
    ]
    for row in (header, *rows):
        print(" | ".join(row))
    print(
        f"load average before: {run['load_average']}, after: {end['load_average']} "
        f"({run['env']['usable_cpus']} CPUs); {end['wall_s']} s"
    )
    out.mkdir(parents=True, exist_ok=True)
    with (out / "watch_vs_datapath_doctor.jsonl").open("w") as f:
        for rec in (run, *records, end):
            f.write(json.dumps(rec, default=str) + "\n")
    (out / "watch_vs_datapath_doctor.md").write_text(render_markdown(run, records, end) + "\n")
    print(f"wrote {out / 'watch_vs_datapath_doctor.md'} and .jsonl")
    failed = any(
        "verdict" not in r["wellfed"] or "documented" not in r["datapath_doctor"] for r in records
    )
    return 1 if failed else 0


def render(jsonl: Path, out: Path) -> int:
    """Judge the records of an earlier run again (the rules here) and rewrite its results."""
    records = [json.loads(line) for line in jsonl.read_text().splitlines() if line.strip()]
    run, end = records[0], records[-1]
    loops = []
    for record in records[1:-1]:
        for key in ("what", "expected"):
            record[key] = LOOPS[record["loop"]][key]
        loops.append(judge_record(record))
    run["rendered"] = f"python benchmarks/watch_vs_datapath_doctor.py --render {jsonl}"
    return write_results(out, run, loops, end)


def main(argv: Sequence[str] | None = None) -> int:
    """Compare all loops, or (``--loop``) run one loop as a training script."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loop", choices=sorted(LOOPS), help="run this loop as a script")
    parser.add_argument("--data", help="the storage loop's folder of files")
    parser.add_argument(
        "--datapath-doctor", type=Path, metavar="JSON", help="with --loop: wire datapath-doctor"
    )
    parser.add_argument("--only", action="append", choices=sorted(LOOPS), help="compare these")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for .jsonl and .md")
    parser.add_argument("--timeout-s", type=float, default=150.0, help="per run")
    parser.add_argument(
        "--render", type=Path, metavar="JSONL", help="judge an earlier run's records again"
    )
    args = parser.parse_args(argv)
    if args.render:
        return render(args.render, args.out)
    if args.loop:
        return run_loop(args.loop, args.data, args.datapath_doctor)
    return compare_all(args.out, args.only or list(LOOPS), args.timeout_s)


if __name__ == "__main__":  # spawn workers import this file
    sys.exit(main())
