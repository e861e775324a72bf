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
    assert "self.state['theta']" in finding.fix
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
