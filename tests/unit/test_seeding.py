"""Unit tests for wellfed.seeding: per-sample seeds, the sample generators, set_seed."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

import wellfed
from wellfed.seeding import _enter_sample, _GlobalRngSnapshot, _leave_sample


@pytest.fixture
def restore_torch_flags():
    """set_seed(deterministic=True) changes process-wide torch flags; put them back."""
    det = torch.are_deterministic_algorithms_enabled()
    cudnn_det, bench = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    py, nps, ts = random.getstate(), np.random.get_state(), torch.get_rng_state()
    yield
    torch.use_deterministic_algorithms(det)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = cudnn_det, bench
    random.setstate(py)
    np.random.set_state(nps)
    torch.set_rng_state(ts)


def test_sample_seed_is_a_pure_64bit_function() -> None:
    a = wellfed.sample_seed(7, 0, 3)
    assert a == wellfed.sample_seed(7, 0, 3)
    assert 0 <= a < 2**64
    others = {wellfed.sample_seed(s, e, i) for s in (7, 8) for e in (0, 1) for i in range(50)}
    assert len(others) == 200  # no collisions among neighbours


def _draws() -> tuple[float, float, float, float, int]:
    return (
        random.random(),
        float(np.random.rand()),
        float(torch.rand(1)),
        float(wellfed.sample_rng().random()),
        int(torch.randint(0, 2**31, (1,), generator=wellfed.sample_generator())),
    )


def test_entering_a_sample_makes_every_rng_deterministic() -> None:
    snap = _GlobalRngSnapshot()
    try:
        _enter_sample(wellfed.sample_seed(1, 0, 5))
        first = _draws()
        _enter_sample(wellfed.sample_seed(1, 0, 5))
        again = _draws()
        _enter_sample(wellfed.sample_seed(1, 0, 6))
        other = _draws()
    finally:
        _leave_sample()
        snap.restore()
    assert first == again
    assert all(x != y for x, y in zip(first, other, strict=True))


def test_numpy_and_torch_streams_are_not_the_same_mt19937_stream() -> None:
    snap = _GlobalRngSnapshot()
    try:
        _enter_sample(wellfed.sample_seed(0, 0, 0))
        np_raw = np.random.randint(0, 2**32, size=4, dtype=np.uint64).tolist()
        torch_raw = torch.randint(0, 2**32, (4,), dtype=torch.int64).tolist()
    finally:
        _leave_sample()
        snap.restore()
    assert np_raw != torch_raw


def test_sample_generators_are_cached_within_a_sample() -> None:
    snap = _GlobalRngSnapshot()
    try:
        _enter_sample(123)
        assert wellfed.sample_rng() is wellfed.sample_rng()
        assert wellfed.sample_generator() is wellfed.sample_generator()
    finally:
        _leave_sample()
        snap.restore()


def test_sample_generators_outside_a_loader_are_unseeded() -> None:
    assert wellfed.sample_rng().random() != wellfed.sample_rng().random()
    g1, g2 = wellfed.sample_generator(), wellfed.sample_generator()
    assert g1 is not g2


def test_snapshot_restores_global_state() -> None:
    snap = _GlobalRngSnapshot()
    expected = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    snap.restore()
    _enter_sample(99)
    _leave_sample()
    snap.restore()
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == expected


@pytest.mark.usefixtures("restore_torch_flags")
def test_set_seed_seeds_everything_and_reports_it() -> None:
    info = wellfed.set_seed(42)
    a = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    wellfed.set_seed(42)
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == a
    assert info.seed == info.python_seed == info.torch_seed == info.numpy_seed == 42
    assert info.deterministic is False
    json.dumps(info.to_dict())


@pytest.mark.usefixtures("restore_torch_flags")
def test_set_seed_deterministic_sets_the_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    info = wellfed.set_seed(2**40 + 5, deterministic=True)
    assert info.numpy_seed == (2**40 + 5) % 2**32
    assert info.cudnn_deterministic
    assert not info.cudnn_benchmark
    assert info.deterministic_algorithms
    assert torch.are_deterministic_algorithms_enabled()
    assert info.cublas_workspace_config == ":4096:8"


@pytest.mark.usefixtures("restore_torch_flags")
def test_set_seed_benchmark_is_honoured() -> None:
    assert wellfed.set_seed(0, benchmark=True).cudnn_benchmark is True


@pytest.mark.parametrize("bad", [-1, 1.5, "3", True, 2**64, None])
def test_set_seed_rejects_bad_seeds(bad: object) -> None:
    with pytest.raises(wellfed.ConfigError) as info:
        wellfed.set_seed(bad)  # type: ignore[arg-type]
    assert info.value.code == "WF201"
    assert info.value.attribute == "seed"
