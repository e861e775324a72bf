"""Batches invariant to the world size, on real gloo process groups (issue 16).

Each run is ``torchrun --standalone`` over ``scripts/world_batches.py``: 1, 2 or 4 ranks, 0 or
2 workers per rank, the same global batch (8) and seed. The ranks' batches concatenated in
rank order must be the same global batches whatever the world size, with the same augmented
values; a state saved at world size 4 resumes at world size 2 with the remaining global
batches. 37 samples: the last global batch of an epoch has 5 samples, padded by 1 (2 ranks)
or 3 (4 ranks) samples from the start of the epoch (drop_last=False).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from tests.helpers_torchrun import torchrun

SCRIPT = Path(__file__).resolve().parent / "scripts" / "world_batches.py"
GLOBAL_BATCH = 8
SAMPLES = 37
pytestmark = [pytest.mark.workers, pytest.mark.timeout(600)]


def _run(
    out: Path, world: int, workers: int, mode: str = "full", state: Path | None = None
) -> None:
    out.mkdir(parents=True, exist_ok=True)
    extra = [state] if state is not None else []
    torchrun(SCRIPT, world, out, GLOBAL_BATCH, workers, mode, *extra, WELLFED_LOG_LEVEL="WARNING")


def _global_batches(out: Path, world: int) -> list[tuple[int, list[int], torch.Tensor]]:
    """(epoch, indices, values) of each global batch: the ranks' batches in rank order."""
    ranks: list[Any] = [torch.load(out / f"rank{r}.pt") for r in range(world)]
    assert len({len(r) for r in ranks}) == 1, "ranks delivered different numbers of batches"
    batches = []
    for parts in zip(*ranks, strict=True):
        assert len({p[0] for p in parts}) == 1  # the same epoch on every rank
        indices = [i for p in parts for i in p[2]]
        values = torch.cat([p[3] for p in parts])
        batches.append((parts[0][0], indices, values))
    return batches


def _assert_same(got: list[Any], want: list[Any]) -> None:
    assert len(got) == len(want)
    for (e1, i1, v1), (e2, i2, v2) in zip(got, want, strict=True):
        assert e1 == e2
        n = len(i2)  # the reference (one rank) has no padding
        assert i1[:n] == i2
        assert torch.equal(v1[:n], v2)
        # padding: samples from the start of the epoch, with their own augmentation
        assert len(i1) - n < len(got[0][1])


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> list[Any]:
    out = tmp_path_factory.mktemp("w1")
    _run(out, 1, 0)
    batches = _global_batches(out, 1)
    assert [len(b[1]) for b in batches] == [8, 8, 8, 8, 5] * 2
    for epoch in (0, 1):
        assert sorted(i for b in batches if b[0] == epoch for i in b[1]) == list(range(SAMPLES))
    assert batches[0][1] != batches[5][1]  # a new order each epoch
    return batches


@pytest.mark.parametrize(("world", "workers"), [(2, 0), (2, 2), (4, 0), (4, 2)])
def test_global_batches_are_the_same_for_any_world_size(
    tmp_path: Path, reference: list[Any], world: int, workers: int
) -> None:
    _run(tmp_path, world, workers)
    got = _global_batches(tmp_path, world)
    _assert_same(got, reference)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(world)]
    full = SAMPLES // GLOBAL_BATCH  # global batches before the padded one, per epoch
    per_rank = [{i for b in rank[:full] for i in b[2]} for rank in ranks]
    assert sum(map(len, per_rank)) == full * GLOBAL_BATCH  # disjoint across ranks


def test_a_state_saved_at_world_size_4_resumes_at_world_size_2(
    tmp_path: Path, reference: list[Any]
) -> None:
    state = tmp_path / "state.pt"
    _run(tmp_path / "first", 4, 2, "stop", state)
    saved = torch.load(state)
    assert (saved["epoch"], saved["batches_done"], saved["batch_size"]) == (0, 3, GLOBAL_BATCH)
    _run(tmp_path / "second", 2, 0, "resume", state)
    got = _global_batches(tmp_path / "first", 4) + _global_batches(tmp_path / "second", 2)
    _assert_same(got, reference)
