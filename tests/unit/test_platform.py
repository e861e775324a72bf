"""Platform facts."""

from __future__ import annotations

import json
import os

from wellfed.platform import collect_platform_info, usable_cpu_count


def test_usable_cpus_respect_affinity() -> None:
    assert 1 <= usable_cpu_count() <= len(os.sched_getaffinity(0))


def test_platform_info_is_json_ready() -> None:
    info = collect_platform_info(include_gpus=False)
    data = json.loads(json.dumps(info.to_dict()))
    assert data["usable_cpus"] == info.usable_cpus
    assert data["start_methods"][0] == info.default_start_method
    assert set(data["start_methods"]) <= {"fork", "spawn", "forkserver"}
    assert info.ram_available_bytes <= info.ram_total_bytes


def test_platform_info_round_trips_through_its_dict() -> None:
    from wellfed.platform import HostToDevice, PlatformInfo

    info = collect_platform_info(include_gpus=False)
    assert PlatformInfo.from_dict(json.loads(json.dumps(info.to_dict()))) == info
    h2d = HostToDevice(0, "GPU", 64 * 2**20, 5, pinned_gb_s=24.5, pageable_gb_s=9.75)
    with_copy = PlatformInfo.from_dict({**info.to_dict(), "host_to_device": h2d.to_dict()})
    assert with_copy.host_to_device == h2d
    assert h2d.describe() == (
        "pinned 24.5 GB/s, pageable 9.8 GB/s (cuda:0 GPU, 64 MiB copies, median of 5)"
    )


def test_host_to_device_bandwidth_is_not_measured_without_cuda() -> None:
    import pytest
    import torch

    from wellfed.platform import measure_host_to_device

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: the gpu tests measure it")
    assert measure_host_to_device() is None
    info = collect_platform_info(measure_transfer=True)
    assert info.host_to_device is None
    assert info.to_dict()["host_to_device"] is None
