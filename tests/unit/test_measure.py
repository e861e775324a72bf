"""LoaderConfig validation and the measuring arithmetic (no processes)."""

from __future__ import annotations

import pytest
import torch

from wellfed._meter import leading_dim
from wellfed.errors import ConfigError
from wellfed.measure import LoaderConfig, Trial, summarize_windows


def test_loader_kwargs_leave_worker_options_out_for_zero_workers() -> None:
    kwargs = LoaderConfig(num_workers=0, batch_size=8).loader_kwargs()
    assert kwargs == {"num_workers": 0, "batch_size": 8, "pin_memory": False}


def test_loader_kwargs_for_workers() -> None:
    cfg = LoaderConfig(
        num_workers=4,
        batch_size=8,
        persistent_workers=True,
        prefetch_factor=3,
        multiprocessing_context="spawn",
    )
    assert cfg.loader_kwargs() == {
        "num_workers": 4,
        "batch_size": 8,
        "pin_memory": False,
        "persistent_workers": True,
        "prefetch_factor": 3,
        "multiprocessing_context": "spawn",
    }
    assert cfg.label() == "4 workers, persistent, prefetch 3, spawn"


@pytest.mark.parametrize(
    ("kwargs", "attribute"),
    [
        ({"num_workers": -1}, "num_workers"),
        ({"batch_size": 0}, "batch_size"),
        ({"num_workers": 0, "persistent_workers": True}, "num_workers"),
    ],
)
def test_invalid_configs_raise_config_error(kwargs: dict[str, object], attribute: str) -> None:
    with pytest.raises(ConfigError) as info:
        LoaderConfig(**kwargs)  # type: ignore[arg-type]
    assert info.value.code == "WF010"
    assert info.value.attribute == attribute


def test_config_round_trips_through_dict() -> None:
    cfg = LoaderConfig(num_workers=2, batch_size=16, persistent_workers=True)
    assert LoaderConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize(
    ("batch", "expected"),
    [
        (torch.zeros(5, 3), 5),
        ((torch.zeros(7, 2), torch.zeros(7)), 7),
        ({"image": torch.zeros(3, 1), "label": torch.zeros(3)}, 3),
        ([[1, 2], [3, 4]], 2),
    ],
)
def test_samples_in_a_batch_are_its_leading_dimension(batch: object, expected: int) -> None:
    assert leading_dim(batch) == expected


def test_summarize_windows_median_and_iqr() -> None:
    median, spread = summarize_windows([10.0, 12.0, 11.0, 13.0, 100.0])
    assert median == 12.0
    assert spread == pytest.approx(2.0)


def test_trial_merge_pools_windows() -> None:
    cfg = LoaderConfig(num_workers=1, batch_size=4, persistent_workers=True)
    a = Trial(
        config=cfg,
        status="ok",
        samples_per_s=10.0,
        samples_per_s_spread=0.0,
        window_samples_per_s=(10.0, 10.0),
    )
    b = Trial(
        config=cfg,
        status="ok",
        samples_per_s=20.0,
        samples_per_s_spread=0.0,
        window_samples_per_s=(20.0, 20.0),
    )
    merged = a.merged(b)
    assert merged.window_samples_per_s == (10.0, 10.0, 20.0, 20.0)
    assert merged.samples_per_s == 15.0
    assert Trial.from_dict(merged.to_dict()) == merged
