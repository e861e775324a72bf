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
