"""engine="ray" on a local Ray instance (CPU) writes the same store as the local engine.

Each test's Ray is its own (``ray_tmpdir``: a fresh RAY_TMPDIR, ``address="local"``), so a Ray
cluster elsewhere on the machine can neither be joined nor break ``ray.init``, and no Ray
process may outlive the test.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers_cache import RampDataset, TinyNet, WhereDouble, store_digest
from wellfed.cache import precompute

ray = pytest.importorskip("ray", reason="ray[data] is not installed (pip install 'wellfed[ray]')")

KWARGS = {"batch_size": 4, "device": "cpu", "shard_bytes": 8 * (3 * 4 * 4 * 4 + 8)}


@pytest.fixture
def local_ray(ray_tmpdir: str) -> Iterator[None]:
    """A new local Ray instance with 2 CPUs, whatever else runs on the machine."""
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


def _data_context_settings() -> tuple[Any, Any]:
    """(preserve_order, enable_progress_bars) of Ray Data's process-wide DataContext."""
    import ray.data

    with warnings.catch_warnings():
        # Creating the DataContext, Ray 2.60 warns about its own default
        # (use_push_based_shuffle); nothing this test can change.
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"ray(\.|$)")
        ctx = ray.data.DataContext.get_current()
    return ctx.execution_options.preserve_order, ctx.enable_progress_bars


@pytest.mark.workers
@pytest.mark.timeout(300)
def test_ray_engine_store_equals_local(tmp_path: Path, local_ray: None) -> None:
    local = precompute(RampDataset(40), TinyNet(), tmp_path / "local", num_workers=0, **KWARGS)
    before = _data_context_settings()
    remote = precompute(RampDataset(40), TinyNet(), tmp_path / "ray", engine="ray", **KWARGS)
    assert store_digest(tmp_path / "ray") == store_digest(tmp_path / "local")
    remote.verify()
    assert len(remote) == len(local) == 40
    # The job's DataContext settings (batches in order, no progress bars) were put back.
    assert _data_context_settings() == before
    assert ray.is_initialized()  # the caller's Ray is the caller's to shut down


@pytest.mark.workers
@pytest.mark.timeout(300)
def test_ray_address_none_starts_its_own_ray_beside_a_running_cluster(
    tmp_path: Path, ray_tmpdir: str
) -> None:
    """ray_address=None never joins the cluster a bare ray.init() would (the one recorded in
    $RAY_TMPDIR/ray/ray_current_cluster, here a live ray.cluster_utils.Cluster): fn runs on
    a node of a new local instance, which is shut down afterwards."""
    from ray.cluster_utils import Cluster

    precompute(RampDataset(16), WhereDouble(), tmp_path / "local", num_workers=0, **KWARGS)
    cluster = Cluster(
        initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False}
    )
    try:
        assert (Path(ray_tmpdir) / "ray" / "ray_current_cluster").read_text() == cluster.address
        where = tmp_path / "where"
        where.mkdir()
        precompute(
            RampDataset(16), WhereDouble(0.0, str(where)), tmp_path / "ray", engine="ray", **KWARGS
        )
        nodes = {p.read_text() for p in where.glob("*.node")}
        assert len(nodes) == 1
        assert cluster.head_node.node_id not in nodes  # not the running cluster's node
        assert not ray.is_initialized()  # the instance it started is shut down
        assert cluster.remaining_processes_alive()  # and the cluster was left alone
    finally:
        ray.shutdown()
        cluster.shutdown()
    assert store_digest(tmp_path / "ray") == store_digest(tmp_path / "local")
