"""The live probe says where a worker failed or hung, as an attribute path (issue 15).

Real DataLoader workers, under fork except one spawn run (a hang: a spawned worker's stack
dump); the fork hang is test_doctor_live.py::test_hang_is_killed_and_reported. The autouse
fixture in conftest.py fails any test that leaves a process behind; each test here also checks
that the probe left no dump folder in the temporary directory.
"""

from __future__ import annotations

import errno
import glob
import os
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from torch.utils.data import Dataset, get_worker_info

from tests.doctor_corpus import datasets as d
from wellfed.doctor import Finding, diagnose

pytestmark = [pytest.mark.workers, pytest.mark.timeout(60)]

HERE = os.path.basename(d.__file__)  # "datasets.py": where the corpus code lives


@pytest.fixture(autouse=True)
def _strict_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WELLFED_DOCTOR_STRICT", "1")


@pytest.fixture(autouse=True)
def _no_dump_folder_left(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Iterator[None]:
    # this test's own temporary folder: other runs on the machine make their own dump folders
    own = tmp_path_factory.mktemp("tmpdir")
    monkeypatch.setattr(tempfile, "tempdir", str(own))
    yield
    left = glob.glob(os.path.join(str(own), "wellfed-probe-*"))
    assert not left, "the probe left its dump folder behind"


def _line_of(obj: object, text: str) -> int:
    """The line of ``text`` in the source of ``obj`` (a class or function of the corpus)."""
    import inspect

    lines, start = inspect.getsourcelines(obj)  # type: ignore[arg-type]
    return start + next(i for i, ln in enumerate(lines) if text in ln)


def _only(findings: tuple[Finding, ...], code: str) -> Finding:
    (f,) = [f for f in findings if f.code == code]
    return f


def test_failure_in_a_collate_fn_is_reported_at_loader_collate_fn() -> None:
    report = diagnose(
        d.TransformDataset(),
        loader_kwargs={"num_workers": 2, "collate_fn": d.StdCollate()},
        start_methods=["fork"],
        timeout_s=20,
    )
    f = _only(report.findings, "WF122")
    line = _line_of(d.StdCollate, "scale = 1 / (len(batch) - 1)")
    assert f.path == "loader.collate_fn", f
    assert (
        f"ZeroDivisionError: division by zero, raised in StdCollate.__call__ ({HERE}:{line})"
        in f.message
    ), f.message
    # the collate_fn fails in the main process too: said so, and nothing is confirmed by it
    assert "with or without workers" in f.message
    assert not f.confirmed_live


def test_failure_in_a_worker_init_fn_is_reported_at_loader_worker_init_fn() -> None:
    report = diagnose(
        d.TransformDataset(),
        loader_kwargs={"num_workers": 2, "worker_init_fn": d.init_shards_from_env},
        start_methods=["fork"],
        timeout_s=20,
    )
    f = _only(report.findings, "WF122")
    line = _line_of(d.init_shards_from_env, 'int(os.environ.get("WELLFED_TEST_SHARDS"')
    assert f.path == "loader.worker_init_fn", f
    assert f.message.startswith("Workers crashed under fork in the live probe: ValueError: ")
    assert f"raised in init_shards_from_env ({HERE}:{line})" in f.message, f.message
    assert f.confirmed_live
    assert "in DataLoader worker process " in f.evidence
    assert "which the workers reach as loader.worker_init_fn" in f.fix


def test_failure_in_a_method_of_a_dataset_attribute_is_reported_at_its_path() -> None:
    report = diagnose(
        d.ReaderDataset(), loader_kwargs={"num_workers": 2}, start_methods=["fork"], timeout_s=20
    )
    f = _only(report.findings, "WF122")
    line = _line_of(d.RecordReader, "checksum mismatch")
    assert f.path == "dataset.reader.read", f
    assert (
        f"ValueError: record 0: checksum mismatch, raised in RecordReader.read ({HERE}:{line})"
        in f.message
    ), f.message
    # the evidence walks back to the dataset's own frame
    assert f"{HERE}:{line} in read" in f.evidence
    assert "in __getitem__ `return self.reader.read(idx)`" in f.evidence


def test_failure_in_the_datasets_getattr_is_reported_at_type_dataset_getattr() -> None:
    report = diagnose(
        d.ColumnsDataset(), loader_kwargs={"num_workers": 2}, start_methods=["fork"], timeout_s=20
    )
    f = _only(report.findings, "WF122")
    line = _line_of(d.ColumnsDataset, "raise AttributeError(")
    assert f.path == "type(dataset).__getattr__", f
    assert (
        "AttributeError: no column or attribute 'label', raised in "
        f"ColumnsDataset.__getattr__ ({HERE}:{line})" in f.message
    ), f.message


def test_hung_worker_in_a_dataset_attribute_is_dumped_under_spawn() -> None:
    # A spawned worker registers its dump through the pickled ProbeWorkerInit, and its
    # stack starts in multiprocessing's spawn bootstrap, not in this test.
    report = diagnose(
        d.ReaderDataset(d.BlockingReader()),
        loader_kwargs={"num_workers": 2},
        start_methods=["spawn"],
        timeout_s=20,  # the dumps are taken near the end: two spawned workers import torch
    )
    f = _only(report.findings, "WF122")
    line = _line_of(d.BlockingReader, "record = queue.Queue().get()")
    assert f.path == "dataset.reader.read", f
    assert (
        f"blocked in queue.Queue.get, called at {HERE}:{line} "
        "(`record = queue.Queue().get()`) in BlockingReader.read" in f.message
    ), f.message
    assert f"Make the call at {HERE}:{line} in BlockingReader.read return" in f.fix


class _CorruptZipDataset(Dataset[bytes]):
    """Opens its zip lazily in __getitem__ (no handle in the graph); the file is corrupt."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int) -> bytes:
        if get_worker_info() is None:  # the main process reads another (good) copy
            return b""
        with zipfile.ZipFile(self.path) as z:
            return z.read("a")


class _DiskFullDataset(Dataset[int]):
    """A full disk: OSError(ENOSPC), nothing to do with /dev/shm."""

    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int) -> int:
        if get_worker_info() is None:  # the workers' cache disk is full, not the main one's
            return i
        raise OSError(errno.ENOSPC, "No space left on device", "/data/cache.bin")


class _CudaWordDataset(Dataset[int]):
    """A user's own error in a worker that happens to say "cuda": no CUDA was used."""

    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int) -> int:
        if get_worker_info() is None:
            return i
        raise ValueError("config key 'cuda_visible' is not set")


def _fork_live(ds: object) -> tuple[Finding, ...]:
    return diagnose(
        ds, loader_kwargs={"num_workers": 2}, start_methods=["fork"], timeout_s=30
    ).findings


def test_a_corrupt_zip_with_no_handle_in_the_graph_is_wf122_with_a_hint(tmp_path: Path) -> None:
    bad = tmp_path / "bad.zip"
    bad.write_bytes(b"PK\x03\x04 not really a zip file " * 8)
    findings = _fork_live(_CorruptZipDataset(str(bad)))
    assert not [f for f in findings if f.code == "WF104"], findings
    f = _only(findings, "WF122")
    assert f.path == "type(dataset).__getitem__"
    assert "BadZipFile" in f.message
    assert (
        "The error suggests fork-shared-handle (a file handle shared by forked workers), but "
        "no object holding a handle is on the failing path type(dataset).__getitem__: the "
        "file itself may be corrupt."
    ) in f.message


def test_a_full_disk_is_wf122_not_a_shared_memory_finding() -> None:
    findings = _fork_live(_DiskFullDataset())
    assert not [f for f in findings if f.code == "WF113" and f.severity == "error"], findings
    f = _only(findings, "WF122")
    assert "No space left on device" in f.message
    assert (
        "The error suggests shared-memory (/dev/shm exhausted), but the error does not name "
        "shared memory (a full disk says the same)."
    ) in f.message


def test_the_word_cuda_in_a_users_error_is_wf122_not_wf106() -> None:
    findings = _fork_live(_CudaWordDataset())
    assert not [f for f in findings if f.code == "WF106"], findings
    f = _only(findings, "WF122")
    assert "The error suggests cuda-in-worker (CUDA used in worker code), but it is not a " in (
        f.message
    )
