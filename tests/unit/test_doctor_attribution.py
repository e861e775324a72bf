"""Unit tests of the live probe's attribution: tracebacks, dumps, categories, attribute paths.

No subprocess: real exceptions raised here (a torch ``ExceptionWrapper`` re-raise included),
a real ``faulthandler`` dump of this thread, and the doctor's own walk of corpus datasets.
"""

from __future__ import annotations

import faulthandler
import os
import threading
import traceback
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.doctor_corpus import datasets as d
from wellfed.doctor._attribution import (
    Frame,
    code_index,
    exception_facts,
    failure_category,
    frames_from_json,
    is_user_file,
    locate,
    parse_dump,
    parse_traceback,
)
from wellfed.doctor._context import Context
from wellfed.doctor._graph import walk
from wellfed.platform import collect_platform_info

_PLATFORM = collect_platform_info(include_gpus=False)
HERE = os.path.basename(__file__)


def _ctx(dataset: Any, **loader: Any) -> Context:
    ctx = Context(dataset, True, {"num_workers": 2, **loader}, ("fork",), _PLATFORM)
    seen: set[int] = set()
    ctx.walks["dataset"] = walk(dataset, "dataset", seen=seen)
    for name, value in loader.items():
        ctx.walks[f"loader.{name}"] = walk(value, f"loader.{name}", seen=seen)
    return ctx


def _frames_of(call: Any) -> list[Frame]:
    try:
        call()
    except Exception as exc:
        return frames_from_json(exception_facts(exc)["frames"])
    raise AssertionError("the call did not raise")


def _decode(raw: bytes) -> str:
    return raw.decode("ascii")  # a module-level helper no walked object owns


class DecodingDataset(torch.utils.data.Dataset):  # type: ignore[type-arg]
    def __len__(self) -> int:
        return 2

    def __getitem__(self, idx: int) -> str:
        return _decode(b"\xff")


def test_a_torch_worker_reraise_is_read_from_its_traceback_text() -> None:
    from torch._utils import ExceptionWrapper

    try:
        d.RecordReader().read(0)
    except ValueError:
        wrapper = ExceptionWrapper(where="in DataLoader worker process 1")
    with pytest.raises(ValueError, match="Caught ValueError in DataLoader worker process 1") as e:
        wrapper.reraise()
    facts = exception_facts(e.value)
    assert (facts["type"], facts["message"]) == ("ValueError", "record 0: checksum mismatch")
    assert facts["worker_id"] == 1
    assert frames_from_json(facts["frames"])[-1].name == "read"


def test_the_last_traceback_of_a_chain_is_the_one_that_escaped() -> None:
    def chained() -> None:
        try:
            {}["missing"]
        except KeyError as exc:
            raise RuntimeError("lookup failed\nsecond line") from exc

    text = "".join(traceback.format_exception(*_exc_info(chained)))
    parsed = parse_traceback(text)
    assert parsed is not None
    frames, kind, message = parsed
    assert (kind, message) == ("RuntimeError", "lookup failed\nsecond line")
    assert [f.name for f in frames][-1] == "chained"
    assert parse_traceback("no traceback here") is None


def _exc_info(call: Any) -> tuple[type[BaseException], BaseException, Any]:
    try:
        call()
    except Exception as exc:
        return type(exc), exc, exc.__traceback__
    raise AssertionError("the call did not raise")


def test_a_faulthandler_dump_is_parsed_innermost_last(tmp_path: Path) -> None:
    path = tmp_path / "dump.txt"
    with open(path, "w") as fh:
        faulthandler.dump_traceback(file=fh, all_threads=True)
    threads = parse_dump(path.read_text())
    (current,) = [frames for is_current, frames in threads if is_current]
    assert current[-1].name == "test_a_faulthandler_dump_is_parsed_innermost_last"
    assert current[-1].filename == __file__
    assert len(threads) == threading.active_count()


@pytest.mark.parametrize(
    ("kind", "message", "method", "category"),
    [
        ("_pickle.PicklingError", "Can't pickle <function <lambda>>", "spawn", "unpicklable"),
        (
            "AttributeError",
            "Can't get attribute 'Ds' on <module '__main__'>",
            "spawn",
            "unpicklable",
        ),
        (
            "RuntimeError",
            "Cannot re-initialize CUDA in forked subprocess.",
            "fork",
            "cuda-in-worker",
        ),
        ("OSError", "[Errno 9] Bad file descriptor", "fork", "fork-shared-handle"),
        ("ValueError", "I/O operation on closed file.", "fork", "fork-shared-handle"),
        ("OSError", "[Errno 9] Bad file descriptor", "spawn", "worker-config"),
        (
            "RuntimeError",
            "unable to write to file </torch_1_2>: No space left on device",
            "fork",
            "shared-memory",
        ),
        ("TypeError", "cannot pickle '_thread.lock' object", "forkserver", "unpicklable"),
        ("TypeError", "cannot pickle '_thread.lock' object", "fork", "worker-config"),
        ("ZeroDivisionError", "division by zero", "fork", "worker-config"),
    ],
)
def test_the_exception_implies_its_category(
    kind: str, message: str, method: str, category: str
) -> None:
    assert failure_category(kind, message, method) == category


def test_user_files_exclude_stdlib_torch_wellfed_and_frozen() -> None:
    import wellfed

    assert is_user_file(__file__)
    assert is_user_file(d.__file__)
    assert not is_user_file(threading.__file__)
    assert not is_user_file(torch.__file__)
    assert not is_user_file(wellfed.__file__)
    assert not is_user_file("<frozen importlib._bootstrap>")


def test_a_dataset_attributes_method_is_located_at_its_path() -> None:
    ds = d.ReaderDataset()
    loc = locate(_frames_of(lambda: ds[0]), code_index(_ctx(ds)))
    assert loc is not None
    assert (loc.path, loc.qualname, loc.frame.name) == (
        "dataset.reader.read",
        "RecordReader.read",
        "read",
    )


def test_a_collate_object_is_located_at_loader_collate_fn() -> None:
    ds, collate = d.TransformDataset(), d.StdCollate()
    loc = locate(_frames_of(lambda: collate([ds[0]])), code_index(_ctx(ds, collate_fn=collate)))
    assert loc is not None
    assert (loc.path, loc.qualname) == ("loader.collate_fn", "StdCollate.__call__")


def test_getattr_is_located_at_type_dataset_getattr() -> None:
    ds = d.ColumnsDataset()
    loc = locate(_frames_of(lambda: ds[0]), code_index(_ctx(ds)))
    assert loc is not None
    assert (loc.path, loc.qualname) == ("type(dataset).__getattr__", "ColumnsDataset.__getattr__")
    assert loc.raised_in().startswith("ColumnsDataset.__getattr__ (datasets.py:")


def test_a_helper_no_object_owns_is_named_at_its_callers_path() -> None:
    ds = DecodingDataset()
    loc = locate(_frames_of(lambda: ds[0]), code_index(_ctx(ds)))
    assert loc is not None
    assert (loc.qualname, loc.path) == ("_decode", "type(dataset).__getitem__")
    assert loc.frame.place.startswith(f"{HERE}:")


def test_frames_from_the_process_a_worker_was_forked_from_are_cut() -> None:
    # A forked worker's dump starts with its parent's frames (this test, calling diagnose),
    # then torch's worker loop: only what follows the loop is the worker's own.
    worker_loop = Frame(
        os.path.join(os.path.dirname(torch.__file__), "utils", "data", "_utils", "worker.py"),
        300,
        "_worker_loop",
    )
    mine = Frame(__file__, 1, "test_frames_from_the_process_a_worker_was_forked_from_are_cut")
    ds = d.ReaderDataset()
    inner = _frames_of(lambda: ds[0])
    index = code_index(_ctx(ds))
    assert locate([mine, worker_loop], index) is None
    loc = locate([mine, worker_loop, *inner], index)
    assert loc is not None
    assert loc.path == "dataset.reader.read"
