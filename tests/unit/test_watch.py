"""wellfed.watch passes everything through; the verdict rules on figures the test sets."""

from __future__ import annotations

import pickle
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader

import wellfed
from tests.helpers import SquaresDataset
from tests.helpers_watch import WithModel
from wellfed._meter import WatchStats
from wellfed._watch import _session
from wellfed._watch._session import LoaderSession, find_module
from wellfed._watch._verdict import judge
from wellfed.errors import ConfigError


def test_same_objects_same_order_len_and_attributes() -> None:
    items = [object() for _ in range(5)]
    watched = wellfed.watch(items, name="objs")
    assert len(watched) == 5
    assert all(a is b for a, b in zip(watched, items, strict=True))
    assert [x for x in watched] == items  # a second epoch
    stats = watched.stats()
    assert (stats.epochs, stats.steps, stats.warmup_steps) == (2, 8, 2)
    assert watched.iterable is items
    assert repr(watched).startswith("watch(")


def test_a_dataloaders_attributes_and_set_epoch_pass_through() -> None:
    class Epochs:
        def __init__(self) -> None:
            self.epoch = -1
            self.batch_size = 4

        def __iter__(self) -> Any:
            return iter(range(self.epoch + 2))

        def set_epoch(self, epoch: int) -> None:
            self.epoch = epoch

    inner = Epochs()
    watched = wellfed.watch(inner)
    watched.set_epoch(3)
    assert inner.epoch == 3
    assert watched.batch_size == 4
    assert list(watched) == list(range(5))
    loader = DataLoader(SquaresDataset(12), batch_size=4)
    w = wellfed.watch(loader)
    assert w.dataset is loader.dataset
    assert w.sampler is loader.sampler
    batches = list(w)
    assert [b[1].tolist() for b in batches] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]
    assert w.stats().samples == 8  # the first batch is the warm-up


def test_no_len_and_no_set_epoch_stay_missing() -> None:
    gen = (i for i in range(3))
    watched = wellfed.watch(gen)
    with pytest.raises(TypeError):
        len(watched)
    assert not hasattr(watched, "set_epoch")
    assert list(watched) == [0, 1, 2]
    assert bool(watched)


def test_the_iterator_forwards_to_the_loaders_own() -> None:
    loader = DataLoader(SquaresDataset(8), batch_size=4)
    it = iter(wellfed.watch(loader))
    assert len(it) == 2
    assert it._num_yielded == 0  # torch's iterator attribute
    next(it)
    assert it._num_yielded == 1


def test_bad_options_are_refused() -> None:
    with pytest.raises(ConfigError, match="is not iterable") as info:
        wellfed.watch(42)  # type: ignore[arg-type]
    assert info.value.code == "WF601"
    with pytest.raises(ConfigError, match="name=3 is not a str"):
        wellfed.watch([], name=3)  # type: ignore[arg-type]


def test_a_watched_list_pickles() -> None:
    watched = wellfed.watch([1, 2, 3])
    list(watched)
    again = pickle.loads(pickle.dumps(watched))
    assert list(again) == [1, 2, 3]
    assert again.stats().steps == 4


def test_find_module_names_the_path() -> None:
    assert find_module(WithModel()) == ("dataset.model", "Linear")
    assert find_module(SquaresDataset()) is None
    nested = torch.utils.data.Subset(WithModel(), [0, 1])
    assert find_module(nested) == ("dataset.dataset.model", "Linear")


def _stats(**kw: Any) -> WatchStats:
    base: dict[str, Any] = {
        "name": "t",
        "clock": "host",
        "steps": 100,
        "samples": 800,
        "data_wait_s": 0.5,
        "step_s": 1.0,
        "data_bound_fraction": 0.5,
        "samples_per_s": 800.0,
        "wait_s_p50": 0.005,
        "wait_s_p90": 0.006,
        "step_s_p50": 0.01,
        "stalls": 0,
        "wait_s_max": 0.007,
        "epochs": 1,
        "warmup_steps": 1,
        "warmup_samples": 8,
        "warmup_wait_s": 0.1,
        "host_data_wait_s": 0.5,
        "wait_cpu_s": 0.45,
    }
    base.update(kw)
    return WatchStats(**base)


SETTINGS = {"num_workers": 2, "num_threads": 0, "persistent_workers": True}
SYSTEM = {"usable_cpus": 8}


def test_verdict_data_bound_in_the_main_process() -> None:
    v = judge(_stats(), {**SETTINGS, "num_workers": 0}, {}, SYSTEM, target="t.py:DS")
    assert v.kind == "data-bound"
    assert "50%" in v.headline
    codes = [c.code for c in v.causes]
    assert "loading-in-main-process" in codes
    assert "computing" in v.causes[codes.index("loading-in-main-process")].summary
    assert "`wellfed tune t.py:DS`" in v.next_step


def test_verdict_model_in_dataset_says_precompute() -> None:
    v = judge(_stats(), SETTINGS, {}, SYSTEM, model="dataset.model (Conv2d)", program="t.py")
    assert v.kind == "data-bound"
    assert "model-in-dataset" in [c.code for c in v.causes]
    assert "wellfed precompute t.py:ATTR" in v.next_step


def test_verdict_prefetch_underrun_against_the_cost_of_the_handover() -> None:
    """Steps that wait while the queue is full pay for the hand-over, not for slow workers."""
    stats = _stats(data_bound_fraction=0.13, wait_s_p50=0.0028, step_s_p50=0.023)
    starved = {"queue_empty_at_request": 0.9, "queue_ready_mean": 0.1, "queue_capacity": 4}
    v = judge(stats, SETTINGS, starved, SYSTEM)
    codes = [c.code for c in v.causes]
    assert "prefetch-underrun" in codes
    assert "handover-cost" not in codes
    ahead = {"queue_empty_at_request": 0.99, "queue_ready_mean": 3.8, "queue_capacity": 4}
    v = judge(stats, SETTINGS, ahead, SYSTEM, target="t.py:DS")
    codes = [c.code for c in v.causes]
    assert "handover-cost" in codes
    assert "prefetch-underrun" not in codes
    evidence = " ".join(v.causes[codes.index("handover-cost")].evidence)
    assert "queue sampled 3.8 of 4 batches ready" in evidence
    assert "99% of steps still waited" in evidence
    assert "on the CPU 90%" in evidence  # wait_cpu_s 0.45 of host_data_wait_s 0.5
    assert v.next_step.startswith("The hand-over costs 2.8 ms per batch")
    assert "`wellfed tune t.py:DS`" in v.next_step


def test_verdict_cpu_saturated_workers_and_the_cpu_limit() -> None:
    workers = {"cpu_per_worker": 0.97, "cpu_cores": 1.94}
    few = judge(_stats(), SETTINGS, workers, SYSTEM)
    assert "worker-cpu-saturated" in [c.code for c in few.causes]
    assert "wellfed tune" in few.next_step
    full = judge(_stats(), {**SETTINGS, "num_workers": 8}, workers, SYSTEM)
    assert "cpu-limit" in [c.code for c in full.causes]
    assert "The CPUs are the limit" in full.next_step


def test_verdict_cpu_contention_by_other_processes() -> None:
    workers = {"cpu_per_worker": 0.25, "cpu_cores": 0.5, "cpu_wait_per_worker": 0.7}
    v = judge(_stats(), SETTINGS, workers, {"usable_cpus": 2})
    assert "cpu-contention" in [c.code for c in v.causes]
    assert v.next_step.startswith("Free the CPUs")


def test_verdict_storage_and_small_reads() -> None:
    workers = {
        "states": {"disk": 0.6, "cpu": 0.1, "idle": 0.3},
        "read_bytes": 10 << 30,
        "read_calls": 400_000,
        "bytes_per_read": 8192.0,
    }
    system = {**SYSTEM, "io_pressure_share": 0.4, "disk_busy_share": {"vda": 0.95}}
    v = judge(_stats(), SETTINGS, workers, system)
    codes = [c.code for c in v.causes]
    assert "storage-wait" in codes
    assert "small-reads" in codes
    evidence = " ".join(v.causes[codes.index("storage-wait")].evidence)
    assert "D state" in evidence
    assert "/proc/pressure/io" in evidence
    assert "vda busy 95%" in evidence
    # the next step is the storage's, not only tune's
    assert v.next_step.startswith("Loading waits on storage: more workers help only while")
    assert "(vda was busy 95% of the run: near its limit for a device" in v.next_step
    assert "local or faster storage" in v.next_step
    assert "`wellfed tune " in v.next_step
    # disk wait without a busy device: no saturation claimed
    calm = judge(_stats(), SETTINGS, {**workers, "states": {"disk": 0.6, "idle": 0.4}}, SYSTEM)
    assert "storage-wait" in [c.code for c in calm.causes]
    assert calm.next_step.startswith("Loading waits on storage")
    assert "was busy" not in calm.next_step
    # no workers: loading in workers comes first (the reads then overlap the step)
    alone = judge(_stats(), {**SETTINGS, "num_workers": 0}, workers, system)
    assert alone.next_step.startswith("Load in workers: "), alone.next_step


def test_verdict_waits_in_the_dataset() -> None:
    workers = {"states": {"sleep": 0.7, "cpu": 0.1, "idle": 0.2}}
    v = judge(_stats(), SETTINGS, workers, SYSTEM)
    assert "waits-in-dataset" in [c.code for c in v.causes]


def test_verdict_restarts_and_stalls() -> None:
    stats = _stats(warmup_wait_s=2.0, warmup_steps=4, stalls=3)
    settings = {**SETTINGS, "persistent_workers": False}
    waits = [0.005] * 97 + [0.2, 0.3, 0.4]
    v = judge(stats, settings, {"restarts": 3}, SYSTEM, waits=waits)
    codes = [c.code for c in v.causes]
    assert "worker-restarts" in codes
    assert "stalls" in codes
    assert "persistent_workers=True" in v.next_step
    assert "400.0 ms" in " ".join(v.causes[codes.index("stalls")].evidence)


def test_verdict_no_work_in_the_step() -> None:
    v = judge(_stats(), SETTINGS, {}, SYSTEM, waits=[0.005] * 10, steps=[0.0051] * 10)
    assert v.causes[0].code == "no-work-in-step"


def test_verdict_spare_workers_frees_cores_and_memory() -> None:
    stats = _stats(data_wait_s=0.01, data_bound_fraction=0.01, host_data_wait_s=0.01)
    workers = {
        "states": {"idle": 0.8, "cpu": 0.2},
        "state_samples": 200,
        "queue_full_share": 0.9,
        "uss_bytes_per_worker": 100 << 20,
    }
    v = judge(stats, {**SETTINGS, "num_workers": 8}, workers, SYSTEM, target="t.py:DS")
    assert v.kind == "not-data-bound"
    assert v.recommended_workers == 2  # 8 workers x 20% busy / 80% headroom
    assert v.causes[0].code == "queue-full"
    assert "Fewer workers would free 6 cores and 600.0 MiB" in v.next_step
    assert "num_workers=2" in v.next_step


def test_verdict_loading_keeps_up_and_too_short() -> None:
    stats = _stats(data_wait_s=0.01, data_bound_fraction=0.01)
    v = judge(stats, {**SETTINGS, "num_workers": 1}, {}, SYSTEM)
    assert v.kind == "not-data-bound"
    assert v.causes[0].code == "loading-keeps-up"
    short = judge(_stats(steps=3), SETTINGS, {}, SYSTEM)
    assert short.kind == "too-short"


def test_the_docstring_example_runs() -> None:
    import doctest

    from wellfed._watch import _wrap

    result = doctest.testmod(_wrap, extraglobs={"wellfed": wellfed})
    assert result.attempted >= 3
    assert result.failed == 0


class _Clocks:
    """Stands in for the ``time`` module in ``wellfed._watch._session``: wall and CPU time
    move only when the test moves them."""

    def __init__(self) -> None:
        self.wall = 0.0
        self.cpu = 0.0

    def perf_counter(self) -> float:
        return self.wall

    def thread_time(self) -> float:
        return self.cpu


@pytest.mark.parametrize(
    ("check_us", "step_ms", "checks"),
    [
        (6.0, 5.0, 1000),  # a check of 6 us every 5 ms is 0.12%: every hand-over checks
        (50.0, 1.0, 200),  # 50 us every 1 ms would be 5%: one hand-over in 5 checks
        (2000.0, 10.0, 50),  # 2 ms every 10 ms would be 20%: one hand-over in 20
    ],
)
def test_the_hand_over_stale_check_takes_at_most_its_share_of_the_loop(
    monkeypatch: pytest.MonkeyPatch, check_us: float, step_ms: float, checks: int
) -> None:
    clocks = _Clocks()
    monkeypatch.setattr(_session, "time", clocks)
    session = LoaderSession(interval_s=60.0)
    ran: list[float] = []

    def check(record: object) -> None:
        ran.append(clocks.wall)
        clocks.cpu += check_us * 1e-6

    monkeypatch.setattr(session, "_check_stale", check)
    on_batch = session._on_batch(record=None)  # type: ignore[arg-type]
    for i in range(1000):  # 1,000 hand-overs, step_ms apart
        clocks.wall = i * step_ms * 1e-3
        on_batch()
    # at most its share, and not far below it (float rounding of the clocks skips a few)
    assert 0.95 * checks <= len(ran) <= checks + 1, len(ran)
    share = clocks.cpu / (1000 * step_ms * 1e-3)
    assert share <= _session.STALE_CHECK_SHARE * 1.01 + 1e-9, share
