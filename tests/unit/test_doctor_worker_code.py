"""Unit tests of what the doctor reads in worker code (issue 15's unseen-corpus fixes): the
libraries it calls (OpenCV, BLAS), where worker identity flows (splitting vs tagging an
iterable stream), transfers to a device held by the dataset; and the live probe's
worker-tag fields. No worker processes: every test here is static or a pure function."""

from __future__ import annotations

import ast
import dataclasses
import itertools
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from wellfed.doctor import DoctorReport, diagnose
from wellfed.doctor._probe import _field_digests, _worker_tag_fields
from wellfed.doctor._source import (
    blas_calls,
    device_attr_transfers,
    module_level_calls,
    worker_calls,
    worker_info_use,
)
from wellfed.platform import collect_platform_info

try:
    import cv2
except ImportError:  # optional: the OpenCV tests are skipped
    cv2 = None

needs_cv2 = pytest.mark.skipif(cv2 is None, reason="needs opencv-python-headless")

# Judged for 4 usable CPUs whatever this machine has, so that a thread pool of "one per CPU"
# has more than one thread; spawn workers start from the libraries' defaults (fork inherits
# this process's settings, which the tests do not rely on unless they say so).
_PLATFORM = dataclasses.replace(collect_platform_info(include_gpus=False), usable_cpus=4)


@pytest.fixture(autouse=True)
def _strict_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WELLFED_DOCTOR_STRICT", "1")
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        monkeypatch.delenv(name, raising=False)


def _static(obj: Any, methods: tuple[str, ...] = ("spawn",), **kwargs: Any) -> DoctorReport:
    kwargs.setdefault("loader_kwargs", {"num_workers": 2})
    return diagnose(obj, live=False, start_methods=methods, platform_info=_PLATFORM, **kwargs)


def _pairs(report: DoctorReport) -> set[tuple[str, str]]:
    return {(f.code, f.path) for f in report.findings if f.severity in ("error", "warning")}


# --- worker identity: splitting the stream, or only tagging it --------------------------------


class _Source:
    def __iter__(self) -> Iterator[int]:
        return iter(range(8))


class TagsOnly(IterableDataset):
    def __iter__(self) -> Any:
        worker_id = getattr(get_worker_info(), "id", -1)
        for i in range(8):
            yield i, worker_id


class TagsInTensor(IterableDataset):
    def __iter__(self) -> Any:
        info = get_worker_info()
        wid = info.id if info is not None else 0
        for i in range(8):
            yield torch.tensor([i, wid])


class NoneCheckOnly(IterableDataset):
    def __iter__(self) -> Any:
        if get_worker_info() is None:
            yield -1
        yield from range(8)


class SplitByModulo(IterableDataset):
    def __iter__(self) -> Any:
        info = get_worker_info()
        for i, item in enumerate(_Source()):
            if info is not None and i % info.num_workers != info.id:
                continue
            yield item


class SplitByStride(IterableDataset):
    def __init__(self) -> None:
        self.files = [f"shard-{i}" for i in range(4)]

    def __iter__(self) -> Any:
        info = get_worker_info()
        wid, n = (info.id, info.num_workers) if info is not None else (0, 1)
        yield from self.files[wid::n]


class SplitByRange(IterableDataset):
    def __iter__(self) -> Any:
        info = get_worker_info()
        per = 8 // (info.num_workers if info else 1)
        start = (info.id if info else 0) * per
        yield from range(start, start + per)


class SplitInHelper(IterableDataset):
    def __iter__(self) -> Any:
        info = get_worker_info()
        wid, n = (info.id, info.num_workers) if info is not None else (0, 1)
        return self._shard(_Source(), wid, n)

    def _shard(self, it: Any, index: int, count: int) -> Any:
        return itertools.islice(it, index, None, count)


class NoWorkerInfo(IterableDataset):
    def __iter__(self) -> Any:
        yield from range(8)


@pytest.mark.parametrize(
    ("cls", "use"),
    [
        (TagsOnly, "tags"),
        (TagsInTensor, "tags"),
        (NoneCheckOnly, "tags"),
        (SplitByModulo, "splits"),
        (SplitByStride, "splits"),
        (SplitByRange, "splits"),
        (SplitInHelper, "splits"),
        (NoWorkerInfo, "none"),
    ],
)
def test_worker_identity_splits_or_only_tags(cls: type, use: str) -> None:
    assert worker_info_use(cls)[0] == use


def test_split_names_the_expression_that_splits() -> None:
    assert worker_info_use(SplitByStride) == ("splits", "self.files[wid::n]")


def test_a_stream_tagged_with_the_worker_id_is_reported_unsharded() -> None:
    report = _static(TagsOnly(), methods=("fork",))
    (f,) = [f for f in report.findings if f.code == "WF117"]
    assert f.path == "type(dataset).__iter__"
    assert "only to tag" in f.message


def test_a_stream_split_by_stride_is_clean() -> None:
    assert not _pairs(_static(SplitByStride(), methods=("fork",)))


def test_worker_tag_fields_are_the_per_worker_constants() -> None:
    by_worker = {w: [_field_digests((i, w)) for i in range(4)] for w in (0, 1)}
    assert _worker_tag_fields(by_worker) == {"1"}


def test_worker_tag_fields_need_a_field_left_to_compare() -> None:
    single = {w: [_field_digests(w), _field_digests(w)] for w in (0, 1)}
    assert _worker_tag_fields(single) == set()
    varying = {w: [_field_digests((i, i * w)) for i in range(4)] for w in (0, 1)}
    assert _worker_tag_fields(varying) == set()


# --- OpenCV called from worker code ----------------------------------------------------------


def read_image(path: str) -> Any:
    return cv2.imread(path)


class Cv2Direct(Dataset):
    def __len__(self) -> int:
        return 4

    def __getitem__(self, idx: int) -> Any:
        import cv2 as cv  # a local import resolves too

        return cv.resize(np.zeros((8, 8), np.uint8), (4, 4))


class Cv2ThroughHelper(Dataset):
    def __len__(self) -> int:
        return 4

    def __getitem__(self, idx: int) -> Any:
        return read_image(f"{idx}.png")


def cv2_off(worker_id: int) -> None:
    cv2.setNumThreads(0)


def torch_threads_one(worker_id: int) -> None:
    torch.set_num_threads(1)


@needs_cv2
def test_cv2_calls_resolve_through_local_imports_and_helpers() -> None:
    assert ("cv.resize", "cv2") in [(c.name, c.module) for c in worker_calls(Cv2Direct)]
    (call,) = [c for c in worker_calls(Cv2ThroughHelper) if c.module == "cv2"]
    assert (call.method, call.name, call.via) == ("__getitem__", "cv2.imread", "read_image")


@needs_cv2
def test_cv2_in_worker_code_is_a_thread_hazard_until_worker_init_turns_it_off() -> None:
    report = _static(Cv2ThroughHelper())
    (f,) = [f for f in report.findings if f.code == "WF115"]
    assert f.path == "type(dataset).__getitem__"
    assert "through read_image" in f.message
    assert "cv2.setNumThreads(0)" in f.fix
    assert not _pairs(_static(Cv2ThroughHelper(), loader_kwargs={"worker_init_fn": cv2_off}))


@needs_cv2
def test_cv2_threads_off_in_this_process_covers_fork_only() -> None:
    before = cv2.getNumThreads()
    cv2.setNumThreads(0)
    try:
        report = _static(Cv2Direct(), methods=("fork", "spawn"))
    finally:
        cv2.setNumThreads(before)
    (f,) = [f for f in report.findings if f.code == "WF115"]
    assert f.start_methods == ("spawn",)  # spawn workers start from OpenCV's default


def test_import_time_calls_skip_functions_and_the_main_guard(tmp_path: Path) -> None:
    path = tmp_path / "threads_at_import.py"
    path.write_text(
        "import cv2\ncv2.setNumThreads(0)\n"
        "def f():\n    cv2.setNumThreads(4)\n"
        "if __name__ == '__main__':\n    cv2.setNumThreads(2)\n",
        encoding="utf-8",
    )
    mod = types.ModuleType("threads_at_import")
    mod.__file__ = str(path)
    calls = module_level_calls(mod, frozenset({"setNumThreads"}))
    assert [ast.unparse(call) for _, call in calls] == ["cv2.setNumThreads(0)"]


# --- BLAS called from worker code -------------------------------------------------------------


class NumpyMatmul(Dataset):
    def __init__(self) -> None:
        self.weights = np.eye(64, dtype=np.float32)

    def __len__(self) -> int:
        return 4

    def __getitem__(self, idx: int) -> Any:
        x = np.full((64, 64), idx, dtype=np.float32)
        return torch.from_numpy(x @ self.weights)


class NumpyDot(Dataset):
    def __len__(self) -> int:
        return 4

    def __getitem__(self, idx: int) -> Any:
        return np.dot(np.ones((8, 8)), np.ones((8, 8)))


class TorchMatmul(Dataset):
    def __init__(self) -> None:
        self.weights = torch.eye(8)

    def __len__(self) -> int:
        return 4

    def __getitem__(self, idx: int) -> Any:
        x = torch.full((8, 8), float(idx))
        return x @ self.weights


def test_blas_calls_count_numpy_matmul_not_torch() -> None:
    assert [s for _, _, s in blas_calls(NumpyMatmul, frozenset({"weights"}))] == [
        "x @ self.weights"
    ]
    assert [s for _, _, s in blas_calls(NumpyDot)] == ["np.dot(...)"]
    assert blas_calls(TorchMatmul) == []


def test_blas_in_worker_code_is_a_thread_hazard() -> None:
    report = _static(NumpyMatmul())
    (f,) = [f for f in report.findings if f.code == "WF115"]
    assert f.path == "type(dataset).__getitem__"
    assert "OMP_NUM_THREADS" in f.message
    assert "threadpool_limits(1)" in f.fix
    assert not _pairs(_static(TorchMatmul()))


def test_torch_set_num_threads_does_not_limit_blas() -> None:
    report = _static(
        NumpyDot(), loader_kwargs={"num_workers": 2, "worker_init_fn": torch_threads_one}
    )
    assert ("WF115", "type(dataset).__getitem__") in _pairs(report)


def test_a_blas_thread_variable_set_by_the_user_is_respected(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert not _pairs(_static(NumpyDot()))


# --- transfers to a device the dataset holds -------------------------------------------------


class ToSelfDevice(Dataset):
    def __init__(self, device: Any) -> None:
        self.device = device

    def __len__(self) -> int:
        return 4

    def __getitem__(self, idx: int) -> Any:
        dev = self.device
        return torch.zeros(2).to(dev)


class DeviceForTheLoop(Dataset):
    def __init__(self) -> None:
        self.device = "cuda:0"

    def __len__(self) -> int:
        return 4

    def __getitem__(self, idx: int) -> Any:
        return torch.zeros(2)


def test_device_transfers_through_attributes_and_aliases() -> None:
    ((method, _line, attr, snippet),) = device_attr_transfers(ToSelfDevice)
    assert (method, attr, snippet) == ("__getitem__", "device", ".to(dev)")


@pytest.mark.parametrize("device", ["cuda", torch.device("cuda", 1)])
def test_transfer_to_a_cuda_attribute_is_reported_at_the_method(device: Any) -> None:
    report = _static(ToSelfDevice(device), methods=("fork",))
    assert _pairs(report) == {("WF106", "type(dataset).__getitem__")}
    (f,) = [f for f in report.findings if f.code == "WF106"]
    assert "dataset.device=" in f.message


def test_a_cpu_device_attribute_is_clean() -> None:
    assert not _pairs(_static(ToSelfDevice("cpu"), methods=("fork",)))


def test_a_device_string_no_worker_code_reads_is_clean() -> None:
    assert not _pairs(_static(DeviceForTheLoop(), methods=("fork",)))
