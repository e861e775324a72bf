"""The data-wait books (wellfed._meter) on a clock the test drives: exact figures."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wellfed import _meter
from wellfed._meter import WaitMeter, leading_dim, percentile, warmup_for


class Clock:
    def __init__(self) -> None:
        self.now = 100.0
        self.cpu = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(_meter, "_perf_counter", c)
    monkeypatch.setattr(_meter, "_thread_time", lambda: c.cpu)
    return c


def _step(meter: WaitMeter, clock: Clock, wait: float, work: float, samples: int = 8) -> None:
    """The consumer works ``work`` s on the previous batch, then waits ``wait`` s for this one."""
    clock.now += work
    meter.begin()
    clock.now += wait
    clock.cpu += wait / 2
    meter.end(samples)


def test_steps_waits_and_fraction(clock: Clock) -> None:
    meter = WaitMeter("t")
    meter.new_epoch()
    _step(meter, clock, wait=5.0, work=0.0)  # the warm-up: worker start-up
    for _ in range(4):
        _step(meter, clock, wait=0.002, work=0.008)
    s = meter.stats()
    assert s.name == "t"
    assert s.clock == "host"
    assert s.steps == 4
    assert s.samples == 32
    assert s.data_wait_s == pytest.approx(0.008)
    assert s.step_s == pytest.approx(0.040)
    assert s.data_bound_fraction == pytest.approx(0.2)
    assert s.samples_per_s == pytest.approx(32 / 0.040)
    assert s.wait_s_p50 == pytest.approx(0.002)
    assert s.step_s_p50 == pytest.approx(0.010)
    assert s.warmup_steps == 1
    assert s.warmup_samples == 8
    assert s.warmup_wait_s == pytest.approx(5.0)
    assert s.epochs == 1
    assert s.stalls == 0
    assert s.wait_cpu_s == pytest.approx(0.004)  # steady steps only
    assert s.host_data_wait_s == pytest.approx(s.data_wait_s)
    assert set(s.to_dict()) >= {"steps", "data_bound_fraction", "stalls", "wait_s_p90"}


def test_stalls_are_waits_over_twice_the_median_step(clock: Clock) -> None:
    meter = WaitMeter()
    meter.new_epoch()
    _step(meter, clock, wait=1.0, work=0.0)
    for _ in range(9):
        _step(meter, clock, wait=0.001, work=0.009)
    _step(meter, clock, wait=0.5, work=0.009)  # one long wait
    s = meter.stats()
    assert s.steps == 10
    assert s.stalls == 1
    assert s.wait_s_max == pytest.approx(0.5)
    assert s.wait_s_p90 is not None
    assert s.wait_s_p90 < 0.5


def test_each_epoch_warms_up_again_with_its_workers(clock: Clock) -> None:
    meter = WaitMeter()
    for _ in range(2):
        meter.new_epoch(warmup=3)  # three workers start: each one's first batch is warm-up
        for _ in range(3):
            _step(meter, clock, wait=0.3, work=0.0)
        for _ in range(2):
            _step(meter, clock, wait=0.001, work=0.009)
        clock.now += 60.0  # between epochs (validation): no step
    s = meter.stats()
    assert s.epochs == 2
    assert s.warmup_steps == 6
    assert s.warmup_wait_s == pytest.approx(1.8)
    assert s.steps == 4
    assert s.step_s == pytest.approx(0.040)
    assert meter.warmup_waits == pytest.approx([0.9, 0.9])


def test_skip_step_leaves_the_interrupted_step_out(clock: Clock) -> None:
    meter = WaitMeter()
    meter.new_epoch()
    _step(meter, clock, wait=1.0, work=0.0)
    _step(meter, clock, wait=0.001, work=0.009)
    meter.skip_step()  # validation runs here
    _step(meter, clock, wait=0.001, work=30.0)
    _step(meter, clock, wait=0.001, work=0.009)
    s = meter.stats()
    assert s.steps == 2
    assert s.step_s == pytest.approx(0.020)


def test_add_samples_and_abandon(clock: Clock) -> None:
    meter = WaitMeter()
    meter.new_epoch()
    _step(meter, clock, wait=0.1, work=0.0, samples=0)
    meter.add_samples(4)  # known after the hand-over (Lightning's on_train_batch_start)
    _step(meter, clock, wait=0.001, work=0.009, samples=0)
    meter.add_samples(4)
    meter.begin()
    meter.abandon()  # StopIteration: no hand-over
    s = meter.stats()
    assert (s.warmup_samples, s.samples, s.steps) == (4, 4, 1)


def test_no_steps_gives_none_not_a_division_by_zero() -> None:
    s = WaitMeter().stats()
    assert s.steps == 0
    assert s.data_bound_fraction is None
    assert s.samples_per_s is None
    assert s.wait_s_p50 is None
    assert s.stalls == 0


def test_live_figures_are_running_totals(clock: Clock) -> None:
    meter = WaitMeter()
    meter.new_epoch()
    assert meter.live()["data_bound_fraction"] is None
    _step(meter, clock, wait=0.5, work=0.0)
    _step(meter, clock, wait=0.005, work=0.005)
    live = meter.live()
    assert live["steps"] == 1
    assert live["data_bound_fraction"] == pytest.approx(0.5)
    assert live["wait_s_p90"] == pytest.approx(0.005)


def test_a_cuda_device_without_cuda_is_refused() -> None:
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    from wellfed.errors import ConfigError

    with pytest.raises(ConfigError, match="CUDA is not available") as info:
        WaitMeter(device="cuda")
    assert info.value.code == "WF601"
    assert WaitMeter(device="cpu").clock == "host"


def test_leading_dim() -> None:
    assert leading_dim(torch.zeros(5, 3)) == 5
    assert leading_dim(np.zeros((7, 2))) == 7
    assert leading_dim((torch.zeros(4, 2), torch.zeros(4))) == 4
    assert leading_dim({"x": torch.zeros(6, 1), "y": torch.zeros(6)}) == 6
    assert leading_dim([{"x": torch.zeros(2)}]) == 2
    assert leading_dim(["a", "b", "c"]) == 3
    assert leading_dim(torch.tensor(1.0)) == 1
    assert leading_dim(42) == 1
    assert leading_dim([]) == 0


def test_percentile() -> None:
    assert percentile([], 50) is None
    assert percentile([3.0], 90) == 3.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile([0.0, 10.0], 90) == pytest.approx(9.0)


def test_warmup_for_counts_starting_workers() -> None:
    class Loader:
        num_workers = 4
        persistent_workers = True
        _iterator = None

    loader = Loader()
    assert warmup_for(loader) == 4  # workers start on this iter()
    loader._iterator = object()  # type: ignore[assignment]
    assert warmup_for(loader) == 1  # persistent workers already running
    assert warmup_for(range(3)) == 1

    class Shard:
        base_dataloader = Loader()

    assert warmup_for(Shard()) == 4
