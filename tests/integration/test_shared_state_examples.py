"""The note 000 examples run, show stale batches without SharedState and none with it.

And the drifting-values example's own dataset (``snap["values"][i]``, a 0-d view returned
from ``__getitem__``) gives no torn sample under 1,000 updates with 4 workers (issue 14).
"""

from __future__ import annotations

import importlib
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

from tests import helpers_shared_state as h

pytestmark = [
    pytest.mark.workers,
    # 4 workers, as issue 14 asks; torch warns when that exceeds this machine's CPUs.
    pytest.mark.filterwarnings("ignore:This DataLoader will create:UserWarning"),
]

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _example(name: str) -> ModuleType:
    if str(EXAMPLES) not in sys.path:
        sys.path.insert(0, str(EXAMPLES))
    return importlib.import_module(name)


@pytest.mark.parametrize("name", ["note000_continuous_deformation", "note000_drifting_values"])
def test_example_reproduces_note_000(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    example = _example(name)
    assert example.main(["--tasks", "3", "--samples", "64", "--start-method", "fork"]) == 0
    out = capsys.readouterr().out
    naive = re.search(r"naive: (\d+) of (\d+) batches differ", out)
    shared = re.search(r"shared: (\d+) of (\d+) batches differ", out)
    assert naive is not None
    assert shared is not None
    # Tasks 1 and 2 (two thirds of the batches) ran on task 0's state in persistent workers.
    assert int(naive.group(1)) == 2 * int(naive.group(2)) // 3
    assert int(shared.group(1)) == 0
    # The fixed run looks worse (higher loss, lower accuracy): the output says why, with the
    # naive run's figure on the task's real data beside the one on the stale data (issue 15).
    stale, real = re.findall(r"task 2: \w+ +([\d.]+%?) \(on task 2's real \w+: ([\d.]+%?)\)", out)[
        0
    ]
    assert stale != real
    head = re.search(r"why the fixed run shows the|the two runs' \w+ compared", out)
    assert head is not None
    why = " ".join(out[head.start() :].split())
    assert "on task 2 it" in why
    assert f"{stale} on those stale" in why
    assert f"but {real} on the task's real ones" in why


def _recorded_example_dataset() -> Any:
    example = _example("note000_drifting_values")

    class Recorded(example.SharedDriftingValuesDataset):  # type: ignore[name-defined,misc]
        """The example's dataset, its __getitem__ unchanged, plus index and version read."""

        def __getitem__(self, i: int) -> tuple[int, torch.Tensor, int]:
            _, y = super().__getitem__(i)
            return i, y, self.state.last

    return example, Recorded


def test_example_dataset_is_never_torn_under_1000_updates() -> None:
    """The example's ``snap["values"][i]`` view, 4 fork workers, 1,000 set_task calls: 0 torn."""
    example, recorded = _recorded_example_dataset()
    x = example.make_inputs(1 << 16)  # (N, 16): each set_task computes and copies 256 KiB
    ds = recorded(x)
    ds.state = h.VersionRecorder(ds.state)
    try:
        # set_task(t) makes version t + 1: the writer's versions 2 .. 1001 are tasks 1 .. 1000
        batches = h.stress_batches(
            ds,
            lambda v: ds.set_task(v - 1),
            1000,
            "fork",
            batch_size=16,
            sampler=h.RepeatSampler(len(x)),
        )
    finally:
        ds.state.close()
    by_version: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {}
    for i, y, version in batches:
        for v in version.unique().tolist():
            sel = version == v
            by_version.setdefault(int(v), []).append((i[sel], y[sel]))
    torn = samples = 0
    for v, parts in by_version.items():
        want = example.values_for_task(x, v - 1)
        for i, y in parts:
            torn += int((y != want[i]).sum())
            samples += len(i)
    assert torn == 0, f"{torn} torn samples in {samples}"
    assert len(by_version) > 20, f"workers saw only {len(by_version)} versions: no concurrency"
    assert 1001 in by_version
