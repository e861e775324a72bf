"""precompute integration: kill -9 resume, workers over a CachedDataset, full disk, CLI."""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers_cache import (
    RampDataset,
    RandomDataset,
    double,
    run_slow_precompute,
    store_arrays,
    store_digest,
)
from wellfed.cache import CachedDataset, PrecomputeError, precompute
from wellfed.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
START_METHODS = [
    m for m in ("spawn", "fork", "forkserver") if m in multiprocessing.get_all_start_methods()
]


def _committed(path: Path) -> int:
    return sum(1 for p in path.glob("shard-*") if (p / "shard.json").exists())


@pytest.mark.workers
@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("after_shards", "batches_per_shard", "fn_concurrency"),
    [(1, 1, 1), (5, 1, 1), (2, 2, 3)],  # the last: shards streamed in pieces, fn in threads
)
def test_kill_9_then_same_call_resumes_to_identical_store(
    tmp_path: Path, after_shards: int, batches_per_shard: int, fn_concurrency: int
) -> None:
    shape = {"batches_per_shard": batches_per_shard}
    reference = tmp_path / "ref"
    run_slow_precompute(str(reference), delay_s=0.0, **shape)
    out = tmp_path / "killed"
    # fn in 3 threads runs 3 batches per delay: 0.2 s keeps the rest of the run (~0.6 s after
    # the second shard) longer than a loaded machine's delay in this poll
    delay_s = 0.05 if fn_concurrency == 1 else 0.2
    code = (
        "from tests.helpers_cache import run_slow_precompute; "
        f"run_slow_precompute({str(out)!r}, delay_s={delay_s}, "
        f"batches_per_shard={batches_per_shard}, fn_concurrency={fn_concurrency})"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO)
    try:
        deadline = time.monotonic() + 90
        while _committed(out) < after_shards:  # poll the directory, never a blind sleep
            assert proc.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline, "no shard committed in 90 s"
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    done = _committed(out)
    assert after_shards <= done < 12 // batches_per_shard, done
    manifest = json.loads((out / "wellfed-cache.json").read_text())
    assert manifest["status"] == "building"
    with pytest.raises(Exception, match="WF406"):
        CachedDataset(out)
    # The same call (neither the delay nor the concurrency is part of the fingerprint).
    run_slow_precompute(str(out), delay_s=0.0, **shape)
    assert store_digest(out) == store_digest(reference)  # byte for byte, manifest included
    ds = CachedDataset(out)
    ds.verify()
    assert len(ds) == 48
    assert np.array_equal(store_arrays(out)["source_1.npy"], np.arange(48))


@pytest.mark.workers
@pytest.mark.timeout(60)
def test_failing_fingerprint_stops_the_workers_started_early(tmp_path: Path) -> None:
    """A new store's source workers start before the fingerprint is taken; when taking it
    fails (a random source), they are shut down at once, not left behind."""
    before = set(multiprocessing.active_children())  # other tests' long-lived helpers
    with pytest.raises(ConfigError) as exc:
        precompute(RandomDataset(8), double, tmp_path / "s", batch_size=4, num_workers=2)
    assert exc.value.code == "WF402"
    assert set(multiprocessing.active_children()) - before == set()


@pytest.mark.workers
@pytest.mark.timeout(120)
@pytest.mark.parametrize("method", START_METHODS)
def test_workers_read_cached_dataset(tmp_path: Path, method: str) -> None:
    ds = precompute(
        RampDataset(40),
        torch.nn.Identity(),
        tmp_path / "s",
        batch_size=8,
        num_workers=0,
        device="cpu",
        shard_bytes=1,
    )
    ds[3]  # opened in the parent before the workers start: each worker must map its own
    loader = torch.utils.data.DataLoader(
        ds,
        batch_size=5,
        shuffle=True,
        generator=torch.Generator().manual_seed(0),
        num_workers=2,
        multiprocessing_context=method,
        timeout=60,
    )
    seen = []
    for x, y in loader:
        assert torch.equal(x[:, 0, 0, 0], y.float())
        seen.extend(int(v) for v in y)
    assert sorted(seen) == list(range(40))


@pytest.mark.workers
@pytest.mark.timeout(120)
def test_precompute_with_spawn_source_workers(tmp_path: Path) -> None:
    ds = precompute(
        RampDataset(24),
        torch.nn.Identity(),
        tmp_path / "s",
        batch_size=4,
        num_workers=2,
        device="cpu",
        multiprocessing_context="spawn",
        shard_bytes=1,
    )
    ref = precompute(
        RampDataset(24),
        torch.nn.Identity(),
        tmp_path / "r",
        batch_size=4,
        num_workers=0,
        device="cpu",
        shard_bytes=1,
    )
    assert len(ds) == 24
    a, b = store_digest(tmp_path / "s"), store_digest(tmp_path / "r")
    assert a == b
    assert ref[23][1] == 23


@pytest.fixture
def small_tmpfs(tmp_path: Path):
    """A 256 KiB tmpfs (root only); skipped where mount is not allowed."""
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)],
        capture_output=True,
        check=False,
    )
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.mark.timeout(60)
def test_full_disk_on_tmpfs_is_clear_and_resumable(tmp_path: Path, small_tmpfs: Path) -> None:
    """A real ENOSPC: a 256 KiB tmpfs, a store of ~400 KiB; then grow the tmpfs and resume."""

    def run(out: Path) -> CachedDataset:
        return precompute(
            RampDataset(64, side=16),
            torch.nn.Identity(),
            out,
            batch_size=8,
            num_workers=0,
            device="cpu",
            shard_bytes=16 * 1024,
        )

    reference = run(tmp_path / "ref")
    out = small_tmpfs / "s"
    with pytest.raises(PrecomputeError) as exc:
        run(out)
    assert exc.value.code == "WF405"
    assert "Disk full" in str(exc.value)
    assert _committed(out) > 0
    assert not list(out.glob(".tmp-*"))
    subprocess.run(["mount", "-o", "remount,size=2m", str(small_tmpfs)], check=True)
    ds = run(out)
    ds.verify()
    assert store_digest(out) == store_digest(tmp_path / "ref")
    assert len(reference) == 64


@pytest.mark.timeout(120)
def test_cli_precompute(tmp_path: Path) -> None:
    from wellfed.cli import main

    target = tmp_path / "src.py"
    target.write_text(
        "from tests.helpers_cache import RampDataset, double\ndataset = RampDataset(20)\n"
    )
    out = tmp_path / "s"
    job = ["precompute", f"{target}:dataset", "--fn", "tests.helpers_cache:double"]
    job += ["--out", str(out), "--num-workers", "0", "--device", "cpu"]
    rc = main([*job, "--batch-size", "4", "--fn-concurrency", "2", "--json"])
    assert rc == 0
    ds = CachedDataset(out)
    assert float(ds[3][0][0, 0, 0]) == 7.0
    rc = main([*job, "--batch-size", "8"])
    assert rc == 3  # another fingerprint: a runtime state error, not usage
    rc = main(
        [
            "precompute",
            f"{target}:dataset",
            "--fn",
            "tests.helpers_cache:nothing",
            "--out",
            str(out),
        ]
    )
    assert rc == 2
    rc = main([*job, "--fn-concurrency", "many"])
    assert rc == 2
