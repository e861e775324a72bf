"""Unit tests of the doctor: graph paths, report types, options, speed, contracts."""

from __future__ import annotations

import dataclasses
import functools
import json
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tests.doctor_corpus import datasets as d
from wellfed.doctor import CATEGORIES, CODES, DoctorReport, Finding, diagnose, render_text
from wellfed.doctor._graph import walk
from wellfed.errors import ConfigError
from wellfed.platform import collect_platform_info

ROOT = Path(__file__).resolve().parents[2]
_PLATFORM = collect_platform_info(include_gpus=False)


@pytest.fixture(autouse=True)
def _strict_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WELLFED_DOCTOR_STRICT", "1")


def _static(obj: Any, **kwargs: Any) -> DoctorReport:
    kwargs.setdefault("platform_info", _PLATFORM)
    return diagnose(obj, live=False, **kwargs)


def test_walk_names_closures_partials_dicts_and_slots() -> None:
    captured = np.random.default_rng(0)

    def local(x: Any) -> Any:
        return captured.random() + x

    class Slotted:
        __slots__ = ("inner",)

        def __init__(self) -> None:
            self.inner = {"k": [1, functools.partial(d.scale, factor=3.0)]}

    ds = d.AttrDataset(fn=local, s=Slotted())
    paths = {n.path for n in walk(ds, "dataset").nodes}
    assert "dataset.fn.__closure__[0].cell_contents" in paths
    assert "dataset.s.inner['k'][1].keywords['factor']" in paths
    assert "dataset.s.inner['k'][1].func" in paths


@pytest.mark.parametrize(
    "module", ["repro_ds", "readers", "iotools", "enumerations", "queue_utils"]
)
def test_user_module_named_like_the_standard_library_is_still_entered(
    module: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Issue 15: "re", "io", "enum", "queue" were matched with a bare startswith, so a user
    # module named repro_ds/readers/iotools... was judged opaque and its lambda reported at
    # "dataset" instead of "dataset.t".
    (tmp_path / f"{module}.py").write_text(
        "import torch.utils.data\n"
        "class DS(torch.utils.data.Dataset):\n"
        "    def __init__(self):\n"
        "        self.t = lambda x: x\n"
        "    def __len__(self):\n"
        "        return 4\n"
        "    def __getitem__(self, i):\n"
        "        return self.t(i)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib

    ds = importlib.import_module(module).DS()
    paths = {f.path for f in _static(ds).findings if f.code == "WF101"}
    assert paths == {"dataset.t"}


def test_every_offending_path_is_reported_not_only_the_first() -> None:
    ds = d.AttrDataset(a=lambda x: x, b=threading.Lock(), c=[1, (x for x in range(2))])
    paths = {f.path for f in _static(ds).findings if f.code == "WF101"}
    assert paths == {"dataset.a", "dataset.b", "dataset.c[1]"}


def test_getstate_that_drops_a_handle_is_picklable(tmp_path: Path) -> None:
    p = tmp_path / "f.bin"
    p.write_bytes(b"abcdefgh")
    ds = d.GetstateDropsHandleDataset(str(p))
    try:
        report = _static(ds)
    finally:
        ds.close()
    assert not report.findings


def test_shared_state_internals_are_not_findings() -> None:
    ds = d.SharedThetaDataset()
    ds.state._lock = threading.Lock()  # internals a real SharedState holds: locks, shm handles
    report = _static(ds, loader_kwargs={"num_workers": 2, "persistent_workers": True})
    assert report.is_clean, report.findings


def test_stale_state_fix_points_to_shared_state() -> None:
    report = _static(d.EpochDataset(), loader_kwargs={"num_workers": 2, "persistent_workers": True})
    (finding,) = report.errors
    assert finding.category == "stale-worker-state"
    assert finding.path == "dataset.epoch"
    assert "wellfed.SharedState(" in finding.fix
    assert "state.update(" in finding.fix
    assert "self.state['epoch']" in finding.fix  # the real attribute, not 'theta'
    assert "theta" not in finding.fix
    assert "set_epoch" in finding.message


def test_stale_state_without_persistent_workers_is_a_warning() -> None:
    report = _static(d.EpochDataset(), loader_kwargs={"num_workers": 2})
    assert [f.severity for f in report.findings] == ["warning"]


def test_start_methods_filter_findings() -> None:
    ds = d.TransformDataset(transform=lambda x: x)
    assert not _static(ds, start_methods="fork").findings
    (f,) = _static(ds, start_methods=["spawn"]).findings
    assert f.start_methods == ("spawn",)


def test_dataloader_settings_are_judged() -> None:
    loader = torch.utils.data.DataLoader(d.TransformDataset(), num_workers=2)
    one_cpu = dataclasses.replace(_PLATFORM, usable_cpus=1)
    report = _static(loader, platform_info=one_cpu)
    assert [(f.code, f.path) for f in report.findings] == [("WF119", "loader.num_workers")]
    assert report.target.startswith("DataLoader over ")


def test_multiprocessing_context_sets_the_start_method() -> None:
    loader = torch.utils.data.DataLoader(
        d.TransformDataset(transform=lambda x: x), num_workers=2, multiprocessing_context="fork"
    )
    report = _static(loader)
    assert report.start_methods == ("fork",)
    assert not report.findings


def test_shm_check_uses_injected_platform() -> None:
    ds = torch.utils.data.TensorDataset(torch.zeros(8, 3, 64, 64))
    small = dataclasses.replace(_PLATFORM, shm_free_bytes=1024**2)
    report = _static(ds, loader_kwargs={"num_workers": 2, "batch_size": 8}, platform_info=small)
    (f,) = report.findings
    assert (f.code, f.path, f.severity) == ("WF113", "env.dev_shm", "error")
    big = dataclasses.replace(_PLATFORM, shm_free_bytes=1024**4)
    assert not _static(ds, loader_kwargs={"num_workers": 2}, platform_info=big).findings


def test_judging_does_not_move_tensors_to_shared_memory() -> None:
    t = torch.zeros(4)
    _static(d.AttrDataset(t=t))
    assert not t.is_shared()


def test_static_checks_of_a_million_items_take_under_2s() -> None:
    ds = d.BigListDataset(1_000_000)
    start = time.perf_counter()
    report = _static(ds, loader_kwargs={"num_workers": 2})
    elapsed = time.perf_counter() - start
    assert elapsed < 2.0
    assert [f.code for f in report.findings] == ["WF109"]
    assert "dataset.samples" in report.sampled_containers


def test_finding_and_report_to_dict_are_json_ready() -> None:
    report = _static(d.RngAttrDataset(np.random.default_rng(0)))
    data = json.loads(json.dumps(report.to_dict()))
    assert data["has_errors"] is True
    (f,) = data["findings"]
    assert set(f) >= {
        "code",
        "category",
        "severity",
        "path",
        "start_methods",
        "message",
        "fix",
        "evidence",
    }
    assert f["evidence"].startswith("static:")
    assert report.errors == report.findings
    assert report.has_errors
    assert not report.is_clean
    with pytest.raises(dataclasses.FrozenInstanceError):
        report.findings[0].code = "WF999"  # type: ignore[misc]


def test_findings_are_four_part_messages_with_codes() -> None:
    report = _static(d.AttrDataset(a=lambda x: x, rng=np.random.RandomState(0)))
    for f in report.findings:
        assert f.message.endswith(f"[{f.code}]")
        assert f.category == CODES[f.code][0]
        assert f.fix.strip()


def test_render_groups_by_severity() -> None:
    report = _static(d.AttrDataset(a=lambda x: x, calls=0), loader_kwargs={"num_workers": 64})
    text = render_text(report)
    assert text.index("ERRORS") < text.index("WARNINGS")
    assert "fix:" in text
    assert "dataset.a" in text


def test_bad_options_raise_config_error() -> None:
    with pytest.raises(ConfigError) as exc:
        diagnose(d.TransformDataset(), timeout_s=0)
    assert exc.value.attribute == "timeout_s"
    with pytest.raises(ConfigError):
        diagnose(d.TransformDataset(), live=False, start_methods=["threads"])


def test_codes_categories_and_docs_agree() -> None:
    assert {c for c, _ in CODES.values()} == set(CATEGORIES)
    errors_md = (ROOT / "docs" / "errors.md").read_text()
    doctor_md = (ROOT / "docs" / "doctor.md").read_text()
    for code in CODES:
        assert f"### {code}" in errors_md, code
        assert code in doctor_md, code


def test_public_names() -> None:
    import wellfed

    assert wellfed.diagnose is diagnose
    assert wellfed.DoctorReport is DoctorReport
    assert wellfed.Finding is Finding


# --- review of issue 3 (regressions) ---------------------------------------------------------


def test_probe_that_cannot_start_is_not_probed_and_keeps_static_findings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # run_isolated answers "failed ... could not start" when the child cannot even start
    # (spawn, because CUDA is initialised in the caller, and the dataset does not pickle).
    from wellfed import _isolate
    from wellfed.doctor import _probe

    def cannot_start(*args: Any, **kwargs: Any) -> _isolate.IsolatedResult:
        return _isolate.IsolatedResult(
            "failed",
            error="the isolated process could not start (spawn): AttributeError: Can't "
            "pickle local object 'f.<locals>.<lambda>'",
        )

    monkeypatch.setattr(_probe, "run_isolated", cannot_start)
    ds = d.RngAttrDataset(np.random.default_rng(0))
    report = diagnose(ds, start_methods=["fork"], platform_info=_PLATFORM)
    (run,) = report.probes
    assert run.status == "not_probed"
    assert "could not start" in (run.error or "")
    assert not any(f.code == "WF122" for f in report.findings)
    rng = [f for f in report.findings if f.code == "WF107"]
    assert [(f.path, f.severity) for f in rng] == [("dataset.rng", "error")]
    assert "not probed (fork): the isolated process could not start" in rng[0].evidence
    (info,) = [f for f in report.findings if f.severity == "info"]
    assert info.code == "WF123"
    assert info.evidence.startswith("not probed (fork): ")


def test_worker_count_is_judged_per_local_rank(monkeypatch: pytest.MonkeyPatch) -> None:
    # 4 ranks on a 16-CPU machine, 8 workers each: 32 workers on 16 CPUs.
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    sixteen = dataclasses.replace(_PLATFORM, usable_cpus=16, cpu_count=16)
    report = _static(d.TransformDataset(), loader_kwargs={"num_workers": 8}, platform_info=sixteen)
    (f,) = [f for f in report.findings if f.code == "WF119"]
    assert "4 usable CPU(s) per rank" in f.message
    assert "num_workers=3" in f.fix
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    report = _static(d.TransformDataset(), loader_kwargs={"num_workers": 8}, platform_info=sixteen)
    assert not any(f.code == "WF119" for f in report.findings)


def test_static_errors_keeps_errors_for_one_start_method() -> None:
    from wellfed.doctor import static_errors

    ds = d.TransformDataset(transform=lambda x: x)
    (f,) = static_errors(ds, loader_kwargs={"num_workers": 2}, start_method="spawn")
    assert (f.code, f.severity, f.start_methods) == ("WF101", "error", ("spawn",))
    assert static_errors(ds, loader_kwargs={"num_workers": 2}, start_method="fork") == ()
    # Warnings are not errors: a stale attribute without persistent workers.
    stale = d.EpochDataset()
    assert static_errors(stale, loader_kwargs={"num_workers": 2}, start_method="fork") == ()
    assert static_errors(
        stale, loader_kwargs={"num_workers": 2, "persistent_workers": True}, start_method="fork"
    )


def test_static_errors_default_start_method(monkeypatch: pytest.MonkeyPatch) -> None:
    from wellfed import platform
    from wellfed.doctor import static_errors

    ds = d.TransformDataset(transform=lambda x: x)
    monkeypatch.setattr(platform, "default_start_method", lambda: "spawn")
    (f,) = static_errors(ds)
    assert f.start_methods == ("spawn",)
    monkeypatch.setattr(platform, "default_start_method", lambda: "fork")
    assert static_errors(ds) == ()
    # The loader's own multiprocessing_context wins over the platform default.
    ctx_kwargs = {"num_workers": 2, "multiprocessing_context": "spawn"}
    assert static_errors(ds, loader_kwargs=ctx_kwargs)


def test_probe_digest_is_repro_batch_digest() -> None:
    from wellfed.doctor import _probe
    from wellfed.repro import batch_digest

    batch = {"x": torch.arange(6).reshape(2, 3), "y": [1, "a"], "z": np.zeros(3)}
    assert _probe._digest(batch) == batch_digest(batch)


def test_probe_worker_memory_comes_from_isolate(monkeypatch: pytest.MonkeyPatch) -> None:
    from wellfed import _isolate
    from wellfed.doctor import _probe

    seen: list[int] = []

    def fake(pid: int) -> int | None:
        seen.append(pid)
        return 1234 if pid == 11 else None

    monkeypatch.setattr(_isolate, "private_memory_bytes", fake)
    it = type("It", (), {"_workers": [type("W", (), {"pid": p})() for p in (11, 12)]})()
    assert _probe._worker_uss(it) == [1234]
    assert seen == [11, 12]


def test_slow_unpickling_is_flagged_below_the_size_threshold() -> None:
    from wellfed.doctor._checks_worker_config import (
        PICKLED_SLOW_BYTES,
        UNPICKLE_SLOW_S,
        check_pickled_size,
    )
    from wellfed.doctor._context import Context

    ds = d.TransformDataset()
    ctx = Context(ds, True, {"num_workers": 4}, ("spawn",), _PLATFORM)
    ctx.walks["dataset"] = walk(ds, "dataset")
    size = 56 * 1024**2
    assert size < PICKLED_SLOW_BYTES
    (f,) = check_pickled_size(ctx, (size, 0.3, 5.2))
    assert f.code == "WF120"
    assert "5.2 s" in f.message
    assert "unpickle" in f.message
    assert check_pickled_size(ctx, (size, 0.3, UNPICKLE_SLOW_S / 2)) == []


def test_rng_object_fix_points_to_sample_rng_when_seeded() -> None:
    import wellfed

    ds = d.RngAttrDataset(np.random.default_rng(0))
    (f,) = _static(ds, loader_kwargs={"num_workers": 2, "seed": 3}).findings
    assert f.code == "WF107"
    assert "wellfed.sample_rng()" in f.fix
    assert "wellfed.sample_generator()" in f.fix
    assert "worker_init_fn" not in f.fix
    unseeded = _static(ds, loader_kwargs={"num_workers": 2}).findings[0]
    assert "worker_init_fn" in unseeded.fix
    assert "wellfed.sample_rng()" in unseeded.fix  # offered as the reproducible way
    # The same dataset in a loader from wellfed.create_dataloader(seed=...).
    loader = wellfed.create_dataloader(ds, batch_size=2, seed=3, num_workers=0)
    (f,) = _static(loader).findings
    assert "wellfed.sample_rng()" in f.fix
    assert "worker_init_fn" not in f.fix


def test_a_seeded_loader_is_judged_with_the_users_own_sampler() -> None:
    """SeededDataLoader keeps the user's sampler and batch sampler as its own attributes (the
    seeds ride in its iterator), so the doctor judges them as they are: no unwrapping."""
    from wellfed import SeededDataLoader

    sampler = d.KeyedSampler(d.N, key_fn=lambda i: -i)
    loader = SeededDataLoader(
        d.TransformDataset(), seed=3, batch_size=2, sampler=sampler, num_workers=2
    )
    found = {(f.code, f.path) for f in _static(loader, start_methods="spawn").findings}
    assert ("WF103", "loader.sampler.key_fn") in found
    batches = torch.utils.data.BatchSampler(sampler, batch_size=2, drop_last=False)
    loader = SeededDataLoader(d.TransformDataset(), seed=3, batch_sampler=batches, num_workers=2)
    found = {(f.code, f.path) for f in _static(loader, start_methods="spawn").findings}
    assert ("WF103", "loader.batch_sampler.sampler.key_fn") in found


class KeyErrorColumns(torch.utils.data.Dataset):
    """Columns looked up by ``__getattr__``, which raises KeyError (not AttributeError) for a
    name that is not a column: ``hasattr`` does not catch it."""

    def __init__(self) -> None:
        self.cols = {"x": [1, 2, 3]}

    def __len__(self) -> int:
        return 3

    def __getitem__(self, index: int) -> int:
        return self.cols["x"][index]

    def __getattr__(self, name: str) -> object:
        return self.__dict__["cols"][name]


def test_a_getattr_that_raises_key_error_does_not_crash_the_doctor() -> None:
    report = diagnose(KeyErrorColumns(), live=False)
    assert "KeyErrorColumns" in report.target
