"""WF111 judged statically: the method a caller calls, the real attribute, in-place tensors.

Issue 15: on note 000's real project WF111 named the helper ``_update_linear`` instead of
``update_task``, wrote ``theta`` in the fix of a dataset whose state is ``values``, and called
an in-place tensor edit stale "forever" under spawn, where the workers see it.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from tests import helpers_stale as h
from wellfed.doctor import DoctorReport, diagnose
from wellfed.doctor._context import Context
from wellfed.doctor._graph import walk
from wellfed.doctor._probe_stale import (
    StaleTarget,
    _changed_copy,
    judge_stale_live,
    resolve_path,
    stale_targets,
)
from wellfed.doctor._report import ProbeRun
from wellfed.doctor._source import analyze_class
from wellfed.platform import collect_platform_info

_PLATFORM = collect_platform_info(include_gpus=False)

PERSISTENT = {"num_workers": 2, "persistent_workers": True}


def _static(ds: object, kwargs: dict[str, object] | None = None) -> DoctorReport:
    return diagnose(ds, loader_kwargs=kwargs or PERSISTENT, live=False, platform_info=_PLATFORM)


def _wf111(report: DoctorReport) -> list[tuple[str, str, tuple[str, ...]]]:
    return [(f.severity, f.path, f.start_methods) for f in report.findings if f.code == "WF111"]


def test_the_public_method_is_named_not_its_helper() -> None:
    ana = analyze_class(h.TaskValuesDataset)
    assert ana.changers["values"][0] == "update_task"
    assert ana.changer_helpers["values"] == "_update_linear"
    assert ana.changer_entries["values"] == ("update_task",)
    assert ana.changer_kinds["values"] == "assign"
    (f,) = [f for f in _static(h.TaskValuesDataset()).findings if f.code == "WF111"]
    assert (f.severity, f.path) == ("error", "dataset.values")
    assert f.message.startswith(
        "TaskValuesDataset.update_task (through self._update_linear(), line "
    )
    assert "for the workers' life" in f.message
    assert "self.state = wellfed.SharedState(values=values)" in f.fix
    assert "values = self.state['values']  # in __getitem__" in f.fix
    assert "self.state.update(values=new_values)  # in update_task" in f.fix
    assert "theta" not in f.fix


class _InitOnlyHelper(Dataset[float]):
    """A private helper only ``__init__`` calls runs before any worker exists: no finding."""

    def __init__(self) -> None:
        self._build()

    def _build(self) -> None:
        self.table = [1.0, 2.0]

    def __len__(self) -> int:
        return 2

    def __getitem__(self, i: int) -> float:
        return self.table[i]


class _ReachedTwice(Dataset[float]):
    """A helper ``__init__`` and a public method both call: named through the public one."""

    def __init__(self) -> None:
        self.step = 0
        self._build()

    def _build(self) -> None:
        self.table = [float(self.step)] * 2

    def __len__(self) -> int:
        return 2

    def next_round(self, step: int) -> None:
        self.step = step
        self._build()

    def reset(self) -> None:
        self.next_round(0)

    def __getitem__(self, i: int) -> float:
        return self.table[i]


def test_helper_only_init_calls_is_not_a_changer() -> None:
    assert _wf111(_static(_InitOnlyHelper())) == []


def test_helper_reached_from_init_and_a_public_method_is_named_by_the_public_one() -> None:
    ana = analyze_class(_ReachedTwice)
    assert ana.changers["table"][0] == "next_round"
    assert ana.changer_entries["table"] == ("next_round", "reset")
    (f,) = [f for f in _static(_ReachedTwice()).findings if f.code == "WF111"]
    assert "_ReachedTwice.next_round (through self._build(), line" in f.message
    assert "np.asarray(table)" in f.fix  # a list is stored as an array in SharedState


def test_in_place_cpu_tensor_edit_is_stale_under_fork_only() -> None:
    report = _static(h.InPlaceDriftDataset())
    got = _wf111(report)
    assert ("error", "dataset.values", ("fork",)) in got
    spawnish = [m for m in ("spawn", "forkserver") if m in report.start_methods]
    if spawnish:
        assert ("info", "dataset.values", tuple(spawnish)) in got
        (info,) = [f for f in report.findings if f.severity == "info" and f.code == "WF111"]
        assert "not stale" in info.message
    (err,) = report.errors
    assert "copy-on-write" in err.message


def test_in_place_edit_of_a_shared_tensor_is_seen_by_every_start_method() -> None:
    ds = h.InPlaceDriftDataset()
    ds.values.share_memory_()
    report = _static(ds)
    assert report.errors == ()
    assert {f.severity for f in report.findings if f.code == "WF111"} == {"info"}


def test_in_place_array_edit_is_stale_everywhere() -> None:
    report = _static(h.ArrayDriftDataset())
    assert [(s, p) for s, p, _ in _wf111(report)] == [("error", "dataset.values")]


def test_resolve_path_follows_attributes_and_items() -> None:
    ds = h.TaskValuesDataset()
    ds.parts = [{"k": ds}]  # type: ignore[attr-defined]
    assert resolve_path(ds, "dataset") is ds
    assert resolve_path(ds, "dataset.parts[0]['k'].values") is ds.values
    with pytest.raises(ValueError, match="cannot follow"):
        resolve_path(ds, "type(dataset)")


@pytest.mark.parametrize(
    ("value", "inplace"),
    [
        (torch.zeros(3), False),
        (torch.zeros(3), True),
        (torch.zeros(2, dtype=torch.bool), True),
        (np.zeros(3), True),
        (np.zeros(3, dtype=np.int64), False),
        ([1, 2, 3], True),
        ((1.0, 2.0), False),
        (3, False),
        (0.5, False),
        (True, False),
    ],
)
def test_changed_copy_keeps_type_and_shape(value: object, inplace: bool) -> None:
    before = value.clone() if isinstance(value, torch.Tensor) else np.copy(value)  # type: ignore[call-overload]
    changed = _changed_copy(value, inplace)
    assert changed is not None
    new, _how = changed
    assert type(new) is type(value)
    assert np.shape(new) == np.shape(before)
    assert not np.array_equal(np.asarray(new), np.asarray(before))
    mutable = isinstance(value, (torch.Tensor, np.ndarray, list))
    assert (new is value) == (inplace and mutable)


@pytest.mark.parametrize("value", [torch.zeros(0), ["a", "b"], {"k": 1}, "text", object()])
def test_changed_copy_refuses_what_it_cannot_change_safely(value: object) -> None:
    assert _changed_copy(value, inplace=False) is None


def test_stale_target_names_the_methods_to_try() -> None:
    ds = h.TaskValuesDataset()
    report = _static(ds)
    ctx = Context(ds, True, dict(PERSISTENT), report.start_methods, _PLATFORM)
    ctx.walks["dataset"] = walk(ds, "dataset")
    (t,) = stale_targets(ctx, list(report.findings))
    assert t == StaleTarget(
        "dataset.values", "dataset", "values", ("update_task", "_update_linear"), "assign"
    )


def test_no_budget_left_keeps_the_static_grade_and_says_so() -> None:
    ds = h.TaskValuesDataset()
    report = diagnose(
        ds, loader_kwargs=PERSISTENT, live=False, start_methods="fork", platform_info=_PLATFORM
    )
    ctx = Context(ds, True, dict(PERSISTENT), ("fork",), _PLATFORM)
    ctx.walks["dataset"] = walk(ds, "dataset")
    probes = [ProbeRun("fork", "ok", 0.1)]
    findings, runs = judge_stale_live(ctx, ds, list(report.findings), probes, budget_s=0.5)
    (f,) = findings
    assert f.severity == "error"
    assert not f.confirmed_live
    assert "stale state not probed live (fork): the live probe's budget was spent" in f.evidence
    assert runs[0].observations["stale_state"]["error"].startswith("the live probe's budget")


class _ScratchDraw:
    """MONAI's randomize() pattern: the draw stored on self, used in the same call."""

    def __init__(self) -> None:
        self.val = 0.0
        self.calls = 0

    def randomize(self) -> None:
        self.val = float(torch.rand(1))

    def __call__(self, x: float) -> float:
        self.randomize()
        return x + self.val


class _CountingCall:
    """State that carries from one call to the next: a counter, and a value set only
    sometimes (read in every call)."""

    def __init__(self) -> None:
        self.calls = 0
        self.last = 0.0

    def __call__(self, x: float) -> float:
        self.calls += 1
        if x > 0:
            self.last = x
        return self.last


def test_per_call_scratch_state_is_not_a_mutation_but_carried_state_is() -> None:
    from wellfed.doctor._source import analyze_class

    scratch = analyze_class(_ScratchDraw)
    assert "val" in scratch.scratch
    assert "val" not in scratch.mutations
    carried = analyze_class(_CountingCall)
    assert set(carried.mutations) == {"calls", "last"}
    assert not carried.scratch


class _CollateReadsState(Dataset[int]):
    """Only the bound collate_fn reads self.scale, which next_task() replaces."""

    def __init__(self) -> None:
        self.scale = torch.ones(3)

    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int) -> int:
        return i

    def next_task(self) -> None:
        self.scale = self.scale * 2

    def collate_fn(self, batch: list[int]) -> torch.Tensor:
        return torch.tensor(batch) * self.scale.sum()


def test_a_suspect_read_only_by_a_bound_collate_fn_is_a_probe_target() -> None:
    ds = _CollateReadsState()
    kwargs = {**PERSISTENT, "collate_fn": ds.collate_fn}
    report = _static(ds, kwargs)
    assert "dataset.scale" in {p for _s, p, _m in _wf111(report)}, _wf111(report)
    ctx = Context(ds, True, kwargs, report.start_methods, _PLATFORM)
    ctx.walks["dataset"] = walk(ds, "dataset")
    (t,) = stale_targets(ctx, list(report.findings))
    assert (t.path, t.methods, t.kind) == ("dataset.scale", ("next_task",), "assign")


def test_only_methods_that_compute_and_assign_self_attributes_are_called(tmp_path: object) -> None:
    from wellfed.doctor._probe_stale import _pure_method

    assert _pure_method(h.TaskValuesDataset(), "update_task") == ""
    assert _pure_method(h.InPlaceDriftDataset(), "drift") == ""
    why = _pure_method(h.LoggingTaskDataset(f"{tmp_path}/log"), "next_task")
    assert why == "next_task holds a with statement"
