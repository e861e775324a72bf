"""WF111 confirmed or refuted in real workers, and graded by what they read (issue 15).

Note 000's real project: ``update_task()`` (through ``_update_linear``) replaces
``self.values``; its default mode edits the tensor in place (``+=``), which spawn workers see;
it rebuilds its loader for every task. The probe changes the state between two epochs and
compares what the workers read with the main process's value.
"""

from __future__ import annotations

import pathlib

import pytest
import torch
from torch.utils.data import DataLoader

from tests import helpers_stale as h
from wellfed.doctor import DoctorReport, Finding, diagnose
from wellfed.measure import close_loader
from wellfed.platform import collect_platform_info
from wellfed.target import resolve_target

pytestmark = [pytest.mark.workers, pytest.mark.timeout(240)]

_PLATFORM = collect_platform_info(include_gpus=False)
PERSISTENT = {"num_workers": 2, "persistent_workers": True}
FRESH = {"num_workers": 2, "persistent_workers": False}


@pytest.fixture(autouse=True)
def _strict_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WELLFED_DOCTOR_STRICT", "1")


def _methods(*wanted: str) -> list[str]:
    return [m for m in wanted if m in _PLATFORM.start_methods]


def _live(obj: object, kwargs: dict[str, object] | None, methods: list[str]) -> DoctorReport:
    return diagnose(
        obj, loader_kwargs=kwargs, start_methods=methods, timeout_s=120, platform_info=_PLATFORM
    )


def _stale(report: DoctorReport) -> list[Finding]:
    return [f for f in report.findings if f.code == "WF111"]


@pytest.mark.parametrize(
    "method",
    [
        *_methods("fork", "spawn"),
        *[pytest.param(m, marks=pytest.mark.slow) for m in _methods("forkserver")],
    ],
)
def test_torch_fact_in_place_tensor_edits_reach_only_workers_that_share_the_storage(
    method: str,
) -> None:
    # What the static check and the grading rely on, measured with a plain DataLoader:
    # persistent workers, the tensor edited in place in the main process between two epochs.
    ds = h.InPlaceDriftDataset(4)
    loader = DataLoader(
        ds,
        batch_size=None,
        num_workers=1,
        persistent_workers=True,
        multiprocessing_context=method,
        timeout=60,
    )
    try:
        assert [float(x) for x in loader] == [0.0] * 4
        ds.drift()
        seen = [float(x) for x in loader]
    finally:
        close_loader(loader)
    # spawn/forkserver: torch moved the storage to shared memory when it pickled the dataset.
    assert seen == ([0.0] * 4 if method == "fork" else [1.0] * 4)
    assert ds.values.is_shared() == (method != "fork")


def test_persistent_workers_replaced_values_confirmed_live() -> None:
    # (a) update_task() -> _update_linear() assigns a new tensor: stale for the workers' life.
    methods = _methods("fork", "spawn")
    (f,) = _stale(_live(h.TaskValuesDataset(), PERSISTENT, methods))
    assert (f.severity, f.path, f.start_methods) == ("error", "dataset.values", tuple(methods))
    assert f.confirmed_live
    assert f.evidence.startswith(
        f"confirmed live ({methods[0]}): after dataset.update_task() in the main process, 9 of "
        "9 samples the persistent workers served in the next epoch read the old dataset.values"
    )
    for m in methods[1:]:
        assert f"confirmed live ({m}): the same" in f.evidence
    assert f.message.startswith("TaskValuesDataset.update_task (through self._update_linear()")
    assert "Confirmed live under " + ", ".join(methods) + ": stale for the workers' life." in (
        f.message
    )
    assert "self.state.update(values=new_values)  # in update_task" in f.fix
    assert "theta" not in f.fix


def test_non_persistent_workers_stale_until_the_next_epoch() -> None:
    # (b) the same dataset, workers restarted each epoch: the change made after iter(loader)
    # is missed for the rest of that epoch only.
    methods = _methods("fork", "spawn")
    report = _live(h.TaskValuesDataset(), FRESH, methods)
    (f,) = _stale(report)
    assert (f.severity, f.start_methods) == ("warning", tuple(methods))
    assert f.confirmed_live
    assert "stale until the next epoch" in f.message
    assert f.evidence.startswith(
        f"confirmed live ({methods[0]}): dataset.update_task() made after iter(loader): 4 of 4 "
        "samples fetched later in that epoch read the old dataset.values; all 9 of the next "
        "epoch read the new one"
    )
    for m in methods[1:]:
        assert f"confirmed live ({m}): the same" in f.evidence
    assert not report.has_errors, report.errors


def test_in_place_tensor_edit_is_refuted_under_spawn_and_confirmed_under_fork() -> None:
    # (c) note 000's default mode: self.values += 1 on a CPU tensor, persistent workers.
    report = _live(h.InPlaceDriftDataset(), PERSISTENT, _methods("fork", "spawn"))
    by_method = {m: f for f in _stale(report) for m in f.start_methods}
    fork = by_method["fork"]
    assert (fork.severity, fork.start_methods) == ("error", ("fork",))
    assert "confirmed live (fork): after dataset.drift()" in fork.evidence
    if "spawn" in by_method:
        spawn = by_method["spawn"]
        assert (spawn.severity, spawn.start_methods) == ("info", ("spawn",))
        assert not spawn.confirmed_live
        assert spawn.evidence.startswith("refuted live (spawn): workers saw the update")
        assert "not stale here" in spawn.message


def test_a_method_that_needs_arguments_is_replaced_by_a_changed_copy() -> None:
    (f,) = _stale(_live(h.LabelsDataset(), FRESH, ["fork"]))
    assert (f.severity, f.path) == ("warning", "dataset.pseudo_labels")
    assert (
        "confirmed live (fork): the probe's own change (set_pseudo_labels takes arguments, so "
        "it assigned dataset.pseudo_labels a changed copy: list of 16, +1 per item)"
    ) in f.evidence


def test_a_loader_factory_that_rebuilds_per_call_is_a_warning_until_rebuilt() -> None:
    # Note 000's project calls its loader factory for every task: 0 of 16 batches stale.
    spec = resolve_target("tests.helpers_stale:make_task_loader")
    (f,) = _stale(_live(spec, None, ["fork"]))
    assert (f.severity, f.path) == ("warning", "dataset.values")
    assert f.confirmed_live
    assert "builds a new DataLoader at every call" in f.message
    assert "stale only until the loader is rebuilt" in f.message


def test_a_factory_that_returns_the_same_loader_stays_an_error() -> None:
    spec = resolve_target("tests.helpers_stale:cached_task_loader")
    (f,) = _stale(_live(spec, None, ["fork"]))
    assert f.severity == "error"
    assert "rebuilt" not in f.message


@pytest.mark.slow
@pytest.mark.parametrize("method", _methods("forkserver"))
def test_forkserver_grades_like_spawn(method: str) -> None:
    (f,) = _stale(_live(h.TaskValuesDataset(), PERSISTENT, [method]))
    assert (f.severity, f.start_methods) == ("error", (method,))
    assert f.confirmed_live
    (g,) = _stale(_live(h.InPlaceDriftDataset(), PERSISTENT, [method]))
    assert (g.severity, g.start_methods) == ("info", (method,))
    assert g.evidence.startswith(f"refuted live ({method})")


def test_the_callers_dataset_is_left_as_it_was() -> None:
    # The probe changes the state in its isolated child only: the caller's dataset is as it was.
    ds = h.TaskValuesDataset()
    before = ds.values.clone()
    _live(ds, PERSISTENT, ["fork"])
    assert ds.task == 0
    assert torch.equal(ds.values, before)


def test_a_spawn_run_probe_leaves_the_callers_cpu_tensor_unchanged() -> None:
    # run_isolated uses spawn when CUDA is initialised here: pickling the dataset to that
    # child moves the caller's CPU tensor to shared memory, so an edit there would reach it.
    from wellfed._isolate import run_isolated
    from wellfed.doctor._probe_stale import StaleTarget, probe_stale_one

    ds = h.InPlaceDriftDataset()
    before = ds.values.clone()
    t = StaleTarget("dataset.values", "dataset", "values", ("drift",), "inplace")
    res = run_isolated(
        probe_stale_one, ds, dict(PERSISTENT), "fork", [t], 30.0, timeout_s=120, context="spawn"
    )
    assert res.status == "ok", res.error
    assert res.value["targets"]["dataset.values"]["status"] == "ok", res.value
    assert "dataset.drift()" in res.value["targets"]["dataset.values"]["change"]
    assert torch.equal(ds.values, before)


def test_a_method_that_writes_a_file_is_not_called(tmp_path: pathlib.Path) -> None:
    log = tmp_path / "tasks.log"
    (f,) = _stale(_live(h.LoggingTaskDataset(str(log)), PERSISTENT, ["fork"]))
    assert not log.exists()
    assert f.confirmed_live
    assert "next_task not called: next_task holds a with statement" in f.evidence
    assert "a changed copy: torch.Tensor (16,) torch.float32, +1" in f.evidence


def test_the_rebuilt_per_call_check_runs_the_factory_in_a_child_only() -> None:
    h.CALLS.clear()
    spec = resolve_target("tests.helpers_stale:counting_task_loader")
    calls = len(h.CALLS)
    (f,) = _stale(_live(spec, None, ["fork"]))
    assert len(h.CALLS) == calls  # not called again in this process
    assert (f.severity, f.path) == ("warning", "dataset.values")
    assert "builds a new DataLoader at every call" in f.message


def test_a_factory_that_hangs_is_bounded_and_not_known() -> None:
    import time

    from wellfed.doctor._probe_stale import rebuilt_per_call

    h.CALLS.clear()
    spec = resolve_target("tests.helpers_stale:slow_after_first_loader")
    t0 = time.perf_counter()
    name, unknown = rebuilt_per_call(spec, 2.0)
    assert time.perf_counter() - t0 < 30
    assert name is None
    assert unknown.startswith(
        "not known: calling tests.helpers_stale:slow_after_first_loader twice in an isolated "
        "process timed out after 2.0 s (killed)"
    ), unknown
    assert rebuilt_per_call(spec, 0.2) == (
        None,
        "not known: the live probe's budget was spent (0.2 s left)",
    )
