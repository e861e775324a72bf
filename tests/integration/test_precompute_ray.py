"""engine="ray" on a local Ray instance (CPU) writes the same store as the local engine."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers_cache import RampDataset, TinyNet, store_digest
from wellfed.cache import precompute

ray = pytest.importorskip("ray", reason="ray[data] is not installed (pip install 'wellfed[ray]')")


@pytest.mark.workers
@pytest.mark.timeout(240)
def test_ray_engine_store_equals_local(tmp_path: Path) -> None:
    kwargs = {"batch_size": 4, "device": "cpu", "shard_bytes": 8 * (3 * 4 * 4 * 4 + 8)}
    local = precompute(RampDataset(40), TinyNet(), tmp_path / "local", num_workers=0, **kwargs)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        remote = precompute(RampDataset(40), TinyNet(), tmp_path / "ray", engine="ray", **kwargs)
    finally:
        ray.shutdown()
    assert store_digest(tmp_path / "ray") == store_digest(tmp_path / "local")
    remote.verify()
    assert len(remote) == len(local) == 40
