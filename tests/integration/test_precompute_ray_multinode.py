"""engine="ray" on a real multi-node Ray cluster on this machine, nodes and driver killed.

The cluster is ``ray.cluster_utils.Cluster``: a head node with 0 CPUs (the driver's node, so
no task or actor runs there) and two worker nodes with 1 CPU each, every node its own raylet
and object store, in the test's own RAY_TMPDIR (``ray_tmpdir``: no process may outlive the
test). The store written through the faults must be byte-for-byte the local engine's.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers_cache import RampDataset, WhereDouble, store_digest
from wellfed.cache import CachedDataset, precompute

ray = pytest.importorskip("ray", reason="ray[data] is not installed (pip install 'wellfed[ray]')")

REPO = Path(__file__).resolve().parents[2]
N = 48  # 12 batches of 4, one batch per shard
KWARGS = {"batch_size": 4, "device": "cpu", "shard_bytes": 4 * (3 * 4 * 4 * 4 + 8)}
# A dead raylet is noticed by the GCS's health checks: every 1 s, dead after 5 misses
# (Ray's defaults, 3 s x 5, make the test 10 s slower; fewer misses could declare a live
# node dead on a busy machine).
HEALTH_CHECKS = {
    "health_check_initial_delay_ms": 1000,
    "health_check_period_ms": 1000,
    "health_check_failure_threshold": 5,
}


@pytest.fixture
def cluster(ray_tmpdir: str) -> Iterator[Any]:
    """A 3-node Ray cluster (head 0 CPUs, 2 workers x 1 CPU), the driver connected to it."""
    from ray.cluster_utils import Cluster

    c = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 0, "include_dashboard": False, "_system_config": HEALTH_CHECKS},
    )
    try:
        for _ in range(2):
            c.add_node(num_cpus=1)
        c.wait_for_nodes(timeout=120)
        ray.init(address=c.address, log_to_driver=False)
        yield c
    finally:
        ray.shutdown()
        c.shutdown()


def _reference(tmp_path: Path, n: int = N) -> Path:
    out = tmp_path / "local"
    precompute(RampDataset(n), WhereDouble(), out, num_workers=0, **KWARGS)
    return out


def _committed(path: Path) -> int:
    return sum(1 for p in path.glob("shard-*") if (p / "shard.json").exists())


@pytest.mark.workers
@pytest.mark.timeout(400)
def test_node_killed_mid_job_store_equals_local(tmp_path: Path, cluster: Any) -> None:
    """SIGKILL the fn actor's process and every process of its node (raylet, object store,
    workers) after 2 of 12 batches: Ray restarts the actor on the other node, reruns the lost
    work, and the job finishes with the local engine's store."""
    reference = _reference(tmp_path)
    where = tmp_path / "where"
    where.mkdir()
    workers = {node.node_id: node for node in cluster.worker_nodes}
    killed: list[tuple[int, str]] = []

    def kill_fn_node(done: int, total: int) -> None:
        if killed or done < 8:
            return
        (record,) = where.glob("*.node")  # one fn actor so far
        pid, node_id = int(record.stem), record.read_text()
        record.unlink()
        os.kill(pid, signal.SIGKILL)
        cluster.remove_node(workers[node_id], allow_graceful=False)  # SIGKILL, waits for exit
        killed.append((pid, node_id))

    store = precompute(
        RampDataset(N),
        WhereDouble(0.5, str(where)),
        tmp_path / "ray",
        engine="ray",
        progress=kill_fn_node,
        **KWARGS,
    )
    assert killed, "the job ended before 2 batches were stored"
    (_, dead_node) = killed[0]
    (survivor,) = set(workers) - {dead_node}
    assert {r.read_text() for r in where.glob("*.node")} == {survivor}  # the restarted actor
    assert store_digest(tmp_path / "ray") == store_digest(reference)  # manifest included
    store.verify()
    assert len(store) == N


def _cli(out: Path, ray_address: str | None) -> list[str]:
    """`wellfed precompute --engine ray` over 40 samples (10 batches) at 0.5 s per batch."""
    cmd = [
        sys.executable,
        "-m",
        "wellfed",
        "precompute",
        "tests.helpers_cache:RampDataset",
        "--fn",
        "tests.helpers_cache:slow_where_double",
        "--out",
        str(out),
        "--batch-size",
        "4",
        "--device",
        "cpu",
        "--shard-bytes",
        str(KWARGS["shard_bytes"]),
        "--engine",
        "ray",
    ]
    return cmd if ray_address is None else [*cmd, "--ray-address", ray_address]


def _kill_driver_after(cmd: list[str], out: Path, shards: int) -> None:
    """Run the command and SIGKILL it once ``shards`` shards are committed."""
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 300
        while _committed(out) < shards:  # poll the store, never a blind sleep
            if proc.poll() is not None:
                err = proc.stderr.read().decode() if proc.stderr else ""
                pytest.fail(f"the driver ended (rc {proc.returncode}) before the kill: {err}")
            assert time.monotonic() < deadline, f"no {shards} shards committed in 300 s"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert shards <= _committed(out) < 10
    assert json.loads((out / "wellfed-cache.json").read_text())["status"] == "building"


def _rerun(cmd: list[str], out: Path, reference: Path) -> None:
    """The same command again resumes to the local engine's store."""
    rerun = subprocess.run(
        [*cmd, "--json", "-"], cwd=REPO, capture_output=True, text=True, timeout=400
    )
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert json.loads(rerun.stdout)["samples"] == 40
    assert store_digest(out) == store_digest(reference)  # byte for byte, manifest included
    CachedDataset(out).verify()


@pytest.mark.slow
@pytest.mark.workers
@pytest.mark.timeout(600)
def test_driver_killed_mid_job_resumes_on_the_cluster(tmp_path: Path, cluster: Any) -> None:
    """SIGKILL the `wellfed precompute --engine ray --ray-address` process (the driver)
    after 2 shards: the cluster drops its job, and the same command resumes on the same
    cluster to the local engine's store."""
    reference = _reference(tmp_path, n=40)
    cmd = _cli(tmp_path / "ray", cluster.address)
    _kill_driver_after(cmd, tmp_path / "ray", shards=2)
    _rerun(cmd, tmp_path / "ray", reference)
    assert cluster.remaining_processes_alive()  # the nodes outlived the driver


@pytest.mark.slow
@pytest.mark.workers
@pytest.mark.timeout(600)
def test_driver_with_its_own_ray_killed_leaves_no_ray_process(
    tmp_path: Path, ray_tmpdir: str
) -> None:
    """SIGKILL `wellfed precompute --engine ray` (no address: it starts a local Ray) after 2
    shards: every process of that Ray exits (Ray's reaper), and the same command resumes."""
    from tests.helpers_ray import describe, ray_processes

    reference = _reference(tmp_path, n=40)
    cmd = _cli(tmp_path / "ray", None)
    _kill_driver_after(cmd, tmp_path / "ray", shards=2)
    deadline = time.monotonic() + 60
    while ray_processes(ray_tmpdir) and time.monotonic() < deadline:
        time.sleep(0.2)  # polling for exit
    assert not ray_processes(ray_tmpdir), describe(ray_processes(ray_tmpdir))
    _rerun(cmd, tmp_path / "ray", reference)
