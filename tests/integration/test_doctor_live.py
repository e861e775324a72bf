"""The live probe in real DataLoader workers: confirmation, refutation, crashes and hangs.

Most runs use fork (fast); spawn and forkserver run where the start method itself matters.
The autouse fixture in conftest.py fails any test that leaves a process behind.
"""

from __future__ import annotations

import dataclasses
import inspect
import random
from typing import Any

import numpy as np
import pytest
import torch
from torch.utils.data import IterableDataset, get_worker_info

from tests.doctor_corpus import datasets as d
from wellfed.doctor import diagnose
from wellfed.platform import collect_platform_info

pytestmark = [pytest.mark.workers, pytest.mark.timeout(120)]

_PLATFORM = collect_platform_info(include_gpus=False)


@pytest.fixture(autouse=True)
def _strict_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WELLFED_DOCTOR_STRICT", "1")


def test_rng_object_confirmed_live() -> None:
    report = diagnose(d.RngAttrDataset(random.Random(0)), start_methods=["fork"], timeout_s=30)
    (f,) = report.findings
    assert (f.code, f.path, f.severity) == ("WF107", "dataset.rng", "error")
    assert f.confirmed_live
    assert f.evidence.startswith("confirmed live (fork)")
    assert report.probes[0].status == "ok"


def test_constant_worker_init_seed_confirmed_live() -> None:
    report = diagnose(
        d.GlobalNumpyRandomDataset(),
        loader_kwargs={"num_workers": 2, "worker_init_fn": d.seed_constant},
        start_methods=["fork"],
        timeout_s=30,
    )
    (f,) = report.findings
    assert (f.code, f.path) == ("WF108", "loader.worker_init_fn")
    assert f.confirmed_live


def test_unused_rng_is_refuted_live() -> None:
    # An RNG object sits on the dataset, but __getitem__ draws from the global numpy RNG.
    ds = d.GlobalNumpyRandomDataset()
    ds.spare_rng = np.random.default_rng(0)  # type: ignore[attr-defined]
    report = diagnose(ds, start_methods=["fork"], timeout_s=30)
    (f,) = report.findings
    assert (f.code, f.severity) == ("WF107", "warning")
    assert "not reproduced live (fork)" in f.evidence


def test_unsharded_iterable_duplicates_counted_live() -> None:
    report = diagnose(
        d.UnshardedStream(["a", "bb", "ccc"]),
        loader_kwargs={"num_workers": 2},
        start_methods=["fork"],
        timeout_s=30,
    )
    (f,) = report.findings
    assert (f.code, f.path) == ("WF117", "type(dataset).__iter__")
    assert "3 sample(s) yielded by more than one worker" in f.evidence
    assert report.probes[0].observations["duplicate_samples"] == 3


class LeadTaggedStream(IterableDataset):
    """Every worker yields the whole stream, each sample tagged with its worker; the
    comparison ``wid == 0`` makes static analysis take the stream for split."""

    def __iter__(self) -> Any:
        info = get_worker_info()
        wid = info.id if info is not None else 0
        lead = wid == 0
        for i in range(6):
            yield {"i": i, "worker": wid, "lead": lead}


def test_worker_tagged_duplicates_counted_live_when_static_sees_a_split() -> None:
    ds = LeadTaggedStream()
    static = diagnose(ds, loader_kwargs={"num_workers": 2}, start_methods=["fork"], live=False)
    assert not static.findings  # the comparison passes for a split
    report = diagnose(ds, loader_kwargs={"num_workers": 2}, start_methods=["fork"], timeout_s=30)
    (f,) = report.findings
    assert (f.code, f.path, f.severity) == ("WF117", "type(dataset).__iter__", "error")
    assert f.confirmed_live
    obs = report.probes[0].observations
    assert obs["worker_tag_fields"] == ["'lead'", "'worker'"]
    assert obs["duplicate_samples"] == 6


def test_sharded_iterable_clean_live() -> None:
    report = diagnose(
        d.ShardedStream(["a", "bb", "ccc", "dddd"]),
        loader_kwargs={"num_workers": 2},
        start_methods=["fork"],
        timeout_s=30,
    )
    assert report.is_clean, report.findings
    assert report.probes[0].observations["duplicate_samples"] == 0


def test_unpicklable_confirmed_live_under_spawn() -> None:
    ds = d.TransformDataset(transform=d.Compose([d.Lambda(lambda x: x)]))
    report = diagnose(ds, start_methods=["spawn"], timeout_s=30)
    (f,) = report.findings
    assert (f.code, f.path) == ("WF101", "dataset.transform.transforms[0].lambd")
    assert f.evidence.startswith("confirmed live (spawn)")
    assert report.probes[0].status == "failed"


def test_hang_is_killed_and_reported() -> None:
    # timeout_s=5: both workers must be blocked before the dumps near its end, under load too
    report = diagnose(d.SleepyDataset(), start_methods=["fork"], timeout_s=5)
    (f,) = report.findings
    assert (f.code, f.path, f.severity) == ("WF122", "type(dataset).__getitem__", "error")
    assert report.probes[0].status == "timeout"
    # where each worker was blocked, from its stack dump (SIGUSR1 before the kill)
    lines, start = inspect.getsourcelines(d.SleepyDataset)
    line = start + next(i for i, ln in enumerate(lines) if "Event().wait(3600)" in ln)
    assert (
        f"DataLoader workers 0 and 1 (pids {report.probes[0].observations['hang_dumps'][0]['pid']}"
        in f.message
    ), f.message
    assert (
        f"were blocked in threading.Event.wait, called at datasets.py:{line} "
        "(`threading.Event().wait(3600)`) in SleepyDataset.__getitem__" in f.message
    ), f.message
    assert "worker 0 stack, innermost first: threading.py:" in f.evidence
    dumps = report.probes[0].observations["hang_dumps"]
    assert [dump["worker_id"] for dump in dumps] == [0, 1]


def test_crash_is_reported() -> None:
    report = diagnose(d.CrashingDataset(), start_methods=["fork"], timeout_s=20)
    (f,) = report.findings
    assert f.code == "WF122"
    assert "DataLoader worker 0 (pid " in f.message or "DataLoader worker 1 (pid " in f.message
    assert "exited with code 3" in f.message
    assert "exited unexpectedly" in f.evidence  # torch's own words
    assert report.has_errors


def test_shm_measured_live() -> None:
    ds = d.TransformDataset(transform=lambda_free_big)
    small = dataclasses.replace(_PLATFORM, shm_free_bytes=2 * 1024**2)
    report = diagnose(
        ds,
        loader_kwargs={"num_workers": 2, "batch_size": 16},
        start_methods=["fork"],
        timeout_s=30,
        platform_info=small,
    )
    (f,) = report.findings
    assert (f.code, f.path, f.severity) == ("WF113", "env.dev_shm", "error"), report.probes
    assert f.confirmed_live


def lambda_free_big(x: torch.Tensor) -> torch.Tensor:
    return torch.zeros(64, 64, 16) + x  # 256 KiB per sample


def test_clean_dataset_clean_under_every_start_method() -> None:
    ds = d.TransformDataset(transform=d.Compose([d.ToFloat(), d.GlobalRandomFlip()]))
    report = diagnose(ds, loader_kwargs={"num_workers": 2}, timeout_s=90)
    assert report.is_clean, report.findings
    assert [p.start_method for p in report.probes] == list(report.start_methods)
    assert all(p.status == "ok" for p in report.probes), report.probes
    spawnish = [p for p in report.probes if p.start_method != "fork"]
    assert any("pickled_bytes" in p.observations for p in spawnish)


def test_builtin_workload_is_clean() -> None:
    workloads = pytest.importorskip("wellfed.workloads")
    dataset = workloads.builtin_dataset()
    static = diagnose(dataset, loader_kwargs={"num_workers": 2, "batch_size": 32}, live=False)
    assert static.is_clean, static.findings
    live = diagnose(
        dataset,
        loader_kwargs={"num_workers": 2, "batch_size": 32},
        start_methods=["fork"],
        timeout_s=60,
    )
    assert live.is_clean, live.findings
    assert live.probes[0].status == "ok"


def test_probe_child_that_cannot_start_is_not_probed(monkeypatch: pytest.MonkeyPatch) -> None:
    # With CUDA initialised in the caller, run_isolated starts its child with spawn, which
    # cannot pickle a dataset holding a lambda (fine for fork workers, the method judged).
    from wellfed import _isolate

    monkeypatch.setattr(_isolate, "_cuda_initialized", lambda: True)
    ds = d.RngAttrDataset(random.Random(0))
    ds.fn = lambda x: x  # type: ignore[attr-defined]
    report = diagnose(ds, start_methods=["fork"], timeout_s=30)
    (run,) = report.probes
    assert run.status == "not_probed", run
    codes = {(f.code, f.severity) for f in report.findings}
    assert codes == {("WF107", "error"), ("WF123", "info")}, report.findings
    (rng,) = [f for f in report.findings if f.code == "WF107"]
    assert "not probed (fork): the isolated process could not start (spawn)" in rng.evidence


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_failure_the_main_process_reproduces_confirms_no_worker_hazard() -> None:
    # Issue 15: "Torch not compiled with CUDA enabled", raised by ds[0] in the main process
    # too, was reported as live confirmation of WF105 (a CUDA hazard of the workers).
    report = diagnose(d.CudaInGetitemDataset(), start_methods=["fork"], timeout_s=30)
    cuda = [f for f in report.findings if f.code in ("WF105", "WF106")]
    assert cuda, report.findings
    for f in cuda:
        assert not f.confirmed_live, f.evidence
        assert "no live evidence (fork), the failure is not the workers': the first sample" in (
            f.evidence
        )
    (both,) = [f for f in report.findings if f.code == "WF122"]
    assert "with or without workers" in both.message
    assert "Torch not compiled with CUDA enabled" in both.message


class ScaledImages(torch.utils.data.Dataset):
    """milesial/Pytorch-UNet's BasicDataset output, reduced: ``img / 255.0`` as float32 in a
    dict (no Normalize transform for the static check to see), or uint8, or a spectrogram;
    or a 3-class float soft mask alone (not an image), or an ``(img, label)`` tuple."""

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def __len__(self) -> int:
        return 8

    def __getitem__(self, index: int) -> Any:
        if self.kind == "softmask":  # (3, H, W) float, but a mask: no uint8 image form
            return {"mask": torch.full((3, 32, 32), 1 / 3)}
        if self.kind == "tuple":
            return torch.full((3, 32, 48), index / 255.0), index % 2
        if self.kind == "float":
            image = torch.full((3, 32, 48), index / 255.0)
        elif self.kind == "uint8":
            image = torch.full((3, 32, 48), index, dtype=torch.uint8)
        else:  # a one-channel float spectrogram: no uint8 form
            image = torch.full((1, 64, 100), float(index))
        return {"image": image, "mask": torch.zeros(32, 48, dtype=torch.long)}


@pytest.mark.parametrize(
    ("kind", "found"),
    [
        ("float", True),
        ("uint8", False),
        ("spec", False),
        ("softmask", False),
        ("tuple", True),
    ],
)
def test_float_images_from_workers_are_seen_live(kind: str, found: bool) -> None:
    report = diagnose(ScaledImages(kind), loader_kwargs={"num_workers": 2}, start_methods=("fork",))
    wf125 = [f for f in report.findings if f.code == "WF125"]
    assert bool(wf125) is found, [f.code for f in report.findings]
    if found:
        (f,) = wf125
        assert f.path == "type(dataset).__getitem__"
        where = "batch[0]" if kind == "tuple" else "batch['image']"
        assert f"{where} float32 (1, 3, 32, 48)" in f.message
        assert "18,432 B per sample where the uint8 image is 4,608 B (4x)" in f.message
        assert f.evidence.startswith("confirmed live (fork)")
