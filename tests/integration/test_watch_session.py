"""LoaderSession meters every DataLoader iterated while it is open, and undoes itself."""

from __future__ import annotations

import pytest
import torch.utils.data
from torch.utils.data import DataLoader

import wellfed
from tests.helpers import SquaresDataset
from tests.helpers_watch import SleepyDataset
from wellfed._watch import LoaderSession, MeteredIterator
from wellfed.seeded_loader import SeededDataLoader

pytestmark = [pytest.mark.workers, pytest.mark.timeout(120)]

SLEEPY = SleepyDataset(n=64, ms_per_sample=3.0)


def test_every_loader_gets_its_own_meter_and_the_classes_are_restored() -> None:
    plain_iter = DataLoader.__dict__["__iter__"]
    seeded_iter = SeededDataLoader.__dict__["__iter__"]
    events: list[tuple[str, int | None]] = []
    with LoaderSession(
        interval_s=0.05,
        progress=lambda e, r: events.append((e, r.index if r else None)),
    ) as session:
        a = DataLoader(SquaresDataset(16), batch_size=4)
        b = wellfed.create_dataloader(SquaresDataset(24), batch_size=4, seed=1)
        for _ in range(2):
            assert len(list(a)) == 4
        assert len(list(b)) == 6
        assert isinstance(iter(a), MeteredIterator)
    assert DataLoader.__dict__["__iter__"] is plain_iter
    assert SeededDataLoader.__dict__["__iter__"] is seeded_iter
    assert not isinstance(iter(a), MeteredIterator)
    first, second = session.records
    assert first.name.startswith("#1 SquaresDataset at test_watch_session.py:")
    assert first.meter.stats().epochs == 2  # the iter() of the isinstance check handed none
    # SeededDataLoader.__iter__ calls DataLoader.__iter__: metered once, not twice
    stats = second.meter.stats()
    assert (stats.epochs, stats.steps, stats.warmup_steps) == (1, 5, 1)
    assert ("new", 1) in events
    assert ("epoch", 2) in events


def test_a_seeded_loader_resumes_as_usual_while_metered() -> None:
    def make() -> SeededDataLoader:
        return wellfed.create_dataloader(SquaresDataset(32), batch_size=4, seed=7, shuffle=True)

    reference = [b[1].tolist() for b in make()]
    with LoaderSession(interval_s=0.05):
        loader = make()
        it = iter(loader)
        head = [next(it)[1].tolist() for _ in range(3)]
        state = loader.state_dict()  # reads progress kept on torch's own iterator
        del it
    assert state["batches_done"] == 3 if "batches_done" in state else True
    resumed = make()
    resumed.load_state_dict(state)
    assert head + [b[1].tolist() for b in resumed] == reference


def test_workers_are_sampled_from_proc() -> None:
    with LoaderSession(interval_s=0.02) as session:
        loader = DataLoader(SLEEPY, batch_size=8, num_workers=2, timeout=60)
        for _ in loader:
            session.sample_now()
    (record,) = session.records
    assert record.settings["num_workers"] == 2
    assert len(record.worker_pids) == 1
    assert len(record.worker_pids[0]) == 2
    assert sum(record.states.values()) > 0
    assert set(record.states) <= {"cpu", "disk", "idle", "sleep", "lock", "other"}
    assert record.queue
    assert all(cap == 4 for _, cap in record.queue)
    assert record.uss_bytes  # private memory of each worker, from smaps_rollup
    assert record.meter.stats().warmup_steps == 2  # one per starting worker


def test_module_level_patch_is_gone_even_when_the_block_raises() -> None:
    original = torch.utils.data.DataLoader.__dict__["__iter__"]
    with pytest.raises(RuntimeError, match="test"), LoaderSession(interval_s=0.05):
        raise RuntimeError("test")
    assert torch.utils.data.DataLoader.__dict__["__iter__"] is original
