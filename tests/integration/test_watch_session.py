"""LoaderSession meters every DataLoader iterated while it is open, and undoes itself."""

from __future__ import annotations

import time

import pytest
import torch.utils.data
from torch.utils.data import DataLoader

import wellfed
from tests.helpers import SquaresDataset
from tests.helpers_watch import SleepyDataset
from wellfed._watch import LoaderSession, MeteredIterator, _session
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


def _multiscale_run(
    *,
    persistent: bool,
    change_at: int | None,
    epochs: int = 1,
    once: bool = False,
    revert_at: int | None = None,
    interval_s: float = 0.02,
    step_s: float = 0.0,
) -> tuple[list[list[float]], list[dict[str, object]]]:
    """Iterate a MultiScaleDataset with 2 fork workers; at batch ``change_at`` of each epoch
    the loop sets img_size (None: between epochs, before iter()), at ``revert_at`` it puts
    416 back; it bumps ``seen`` always, and sleeps ``step_s`` per batch (the step)."""
    from tests.helpers_watch import MultiScaleDataset

    dataset = MultiScaleDataset(48)
    loader = DataLoader(
        dataset,
        batch_size=4,
        num_workers=2,
        persistent_workers=persistent,
        multiprocessing_context="fork",
        timeout=60,
    )
    sizes: list[list[float]] = []
    with LoaderSession(interval_s=interval_s) as session:
        for epoch in range(epochs):
            if change_at is None and epoch and not (once and epoch > 1):
                dataset.img_size = 320 + epoch
            seen = []
            for i, batch in enumerate(loader):
                dataset.seen += 1  # never read by workers: not reported
                if change_at is not None and i == change_at:
                    dataset.img_size = 320 + epoch
                if revert_at is not None and i == revert_at:
                    dataset.img_size = 416
                seen.append(float(batch[0, 0]))
                time.sleep(step_s)
            sizes.append(seen)
        (record,) = session.records
    return sizes, record.stale


def test_an_attribute_the_loop_sets_mid_epoch_is_reported_stale_until_the_epoch_ends() -> None:
    sizes, stale = _multiscale_run(persistent=False, change_at=3)
    assert set(sizes[0]) == {416.0}  # the workers never saw 320: the guard is right
    (entry,) = stale
    assert entry["path"] == "dataset.img_size"
    assert (entry["before"], entry["now"]) == ("416", "320")
    assert entry["persistent"] is False
    assert entry["read_by_workers"] is True


def test_a_change_the_loop_reverts_before_the_epoch_ends_is_still_reported(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # 320 from batch 3 to batch 5, then 416 again: the epoch's end sees the workers' value, and
    # the sampler thread (one look a minute here) never looks; the hand-over check sees it.
    # Every hand-over checks here: the rate limit (tests/unit/test_watch.py) would skip the
    # one after a check that a GC pass made cost over 50 us (100x that > the 5 ms step).
    monkeypatch.setattr(_session, "STALE_CHECK_SHARE", float("inf"))
    sizes, stale = _multiscale_run(
        persistent=False, change_at=3, revert_at=5, interval_s=60.0, step_s=0.005
    )
    assert set(sizes[0]) == {416.0}
    (entry,) = stale
    assert entry["path"] == "dataset.img_size"
    assert (entry["before"], entry["now"]) == ("416", "320")
    assert entry["step"] == 5  # seen at the hand-over of batch 4, the first after it


def test_a_change_between_epochs_is_fine_without_persistent_workers_not_with_them() -> None:
    sizes, stale = _multiscale_run(persistent=False, change_at=None, epochs=2)
    assert set(sizes[1]) == {321.0}  # new workers copied the new value
    assert stale == []
    sizes, stale = _multiscale_run(persistent=True, change_at=None, epochs=2)
    assert set(sizes[1]) == {416.0}  # persistent workers kept their copy
    (entry,) = stale
    assert entry["path"] == "dataset.img_size"
    assert entry["persistent"] is True


def test_persistent_workers_missing_one_change_is_one_entry_not_one_per_epoch() -> None:
    # one change (before epoch 2), seen in epochs 2 and 3: one entry, one change
    sizes, stale = _multiscale_run(persistent=True, change_at=None, epochs=3, once=True)
    assert set(sizes[2]) == {416.0}
    (entry,) = stale
    assert entry["changes"] == 1
    # a change before epoch 2 (to 321) and another before epoch 3 (to 322): two changes
    sizes, stale = _multiscale_run(persistent=True, change_at=None, epochs=3)
    (entry,) = stale
    assert entry["changes"] == 2
    assert entry["last"] == "322"
