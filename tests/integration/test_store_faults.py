"""Injected store and data faults (issue 14, items 4-6), each through the real command line.

Real files cut or replaced, a real second ``wellfed precompute`` process, a real ``kill -9``,
real photos (the ones wellfed ships) cut short or pointed at by a dangling symlink; every
exit code is the README's, read from a real subprocess.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest

from tests.helpers_cache import RampDataset, double, store_arrays
from wellfed.cache import CachedDataset, precompute
from wellfed.cache._store import LOCK_NAME, MANIFEST_NAME, release_store_lock, try_store_lock
from wellfed.errors import StateError
from wellfed.workloads import PHOTOS_DIR

REPO = Path(__file__).resolve().parents[2]
#: Two batches of 4 samples (float32 (3, 4, 4) output + int64 label) per shard.
SHARD_BYTES = 8 * (3 * 4 * 4 * 4 + 8)


def _wellfed(*args: str, env: dict[str, str] | None = None, timeout_s: float = 120.0) -> Any:
    """Run ``python -m wellfed ARGS`` as a real process; return the CompletedProcess."""
    return subprocess.run(
        [sys.executable, "-m", "wellfed", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        env={**os.environ, **(env or {})},
        check=False,
    )


def _precompute_args(target: Path, out: Path, fn: str = "double", workers: int = 0) -> list[str]:
    return [
        "precompute",
        f"{target}:dataset",
        "--fn",
        f"tests.helpers_cache:{fn}",
        "--out",
        str(out),
        "--batch-size",
        "4",
        "--shard-bytes",
        str(SHARD_BYTES),
        "--device",
        "cpu",
        "--num-workers",
        str(workers),
    ]


def _flat(text: str) -> str:
    """Text without whitespace: Rich wraps long lines where the output is not a terminal."""
    return "".join(text.split())


def _ramp_target(tmp_path: Path, n: int) -> Path:
    target = tmp_path / "src.py"
    target.write_text(f"from tests.helpers_cache import RampDataset\ndataset = RampDataset({n})\n")
    return target


def _reference_arrays(tmp_path: Path, n: int) -> dict[str, np.ndarray]:
    ref = tmp_path / "ref"
    precompute(
        RampDataset(n), double, ref, batch_size=4, num_workers=0, device="cpu",
        shard_bytes=SHARD_BYTES,
    )  # fmt: skip
    return store_arrays(ref)


def _wait_for(what: str, ready: Any, proc: subprocess.Popen[Any], timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while not ready():  # polling the store directory, never a blind sleep
        assert proc.poll() is None, f"the run ended (rc {proc.returncode}) before {what}"
        assert time.monotonic() < deadline, f"no {what} in {timeout_s} s"
        time.sleep(0.01)


# ----------------------------------------------------------------------------- 4. corrupt manifest


def _truncated(raw: bytes) -> bytes:
    return raw[: len(raw) // 2]


def _binary(raw: bytes) -> bytes:
    return bytes(range(256)) * 4


def _wrong_shape(raw: bytes) -> bytes:
    manifest = json.loads(raw)
    manifest["fields"] = 5
    manifest["shards"] = "shard-00000"
    return json.dumps(manifest).encode()


@pytest.mark.timeout(180)
@pytest.mark.parametrize("damage", [_truncated, _binary, _wrong_shape])
def test_corrupt_manifest_is_named_by_the_cli_and_overwrite_rebuilds(
    tmp_path: Path, damage: Any
) -> None:
    target, out = _ramp_target(tmp_path, 24), tmp_path / "s"
    job = _precompute_args(target, out)
    assert _wellfed(*job).returncode == 0
    manifest = out / MANIFEST_NAME
    manifest.write_bytes(damage(manifest.read_bytes()))

    run = _wellfed(*job)
    assert run.returncode == 3, run.stderr  # a store that cannot be used: a runtime failure
    assert "unexpected" not in run.stderr
    assert "[WF412]" in run.stderr
    assert str(manifest) in run.stderr
    assert "--overwrite" in run.stderr
    with pytest.raises(StateError) as exc:
        CachedDataset(out)
    assert exc.value.code == "WF412"
    assert exc.value.value == str(manifest)

    run = _wellfed(*job, "--overwrite")
    assert run.returncode == 0, run.stderr
    assert "corrupt manifest" in run.stderr  # the rebuild is said, once
    ds = CachedDataset(out)
    ds.verify()
    for name, array in _reference_arrays(tmp_path, 24).items():
        assert np.array_equal(store_arrays(out)[name], array)


# ----------------------------------------------------------------------------- 5. two writers


@pytest.mark.workers
@pytest.mark.timeout(240)
def test_second_writer_is_refused_naming_the_first_and_a_waiting_one_gets_the_store(
    tmp_path: Path,
) -> None:
    """Before: the second run's start-up deleted the first's half-written shard directory."""
    target, out = _ramp_target(tmp_path, 24), tmp_path / "s"
    gate = tmp_path / "gate"
    job = _precompute_args(target, out, fn="gated_double", workers=2)
    env = {**os.environ, "WELLFED_TEST_GATE": str(gate)}
    first = subprocess.Popen([sys.executable, "-m", "wellfed", *job], cwd=REPO, env=env)
    waiting: subprocess.Popen[Any] | None = None
    try:
        _wait_for("half-written shard 1", lambda: any(out.glob(".tmp-shard-00001.*")), first)
        in_progress = sorted(out.glob(".tmp-shard-00001.*"))

        second = _wellfed(*job, env=env)
        assert second.returncode == 3, second.stderr
        assert "[WF413]" in second.stderr
        assert "Store busy" in second.stderr
        assert f"pid {first.pid}" in second.stderr
        assert "-m wellfed precompute" in second.stderr  # its command line, from psutil
        assert str(out) in second.stderr
        assert "--wait" in second.stderr
        assert sorted(out.glob(".tmp-shard-00001.*")) == in_progress  # untouched
        assert first.poll() is None

        log = tmp_path / "waiting.log"
        with open(log, "w") as err:
            waiting = subprocess.Popen(
                [sys.executable, "-m", "wellfed", "-v", *job, "--wait", "120"],
                cwd=REPO,
                env=env,
                stderr=err,
                stdout=subprocess.PIPE,
                text=True,
            )
        _wait_for("wait message", lambda: "waiting up to" in log.read_text(), waiting)
        gate.touch()
        assert first.wait(timeout=120) == 0
        stdout, _ = waiting.communicate(timeout=120)
        assert waiting.returncode == 0, log.read_text()
        assert "stored 24 samples" in stdout
    finally:
        gate.touch()
        for proc in (first, waiting):
            if proc is not None and proc.poll() is None:
                proc.kill()
            if proc is not None:
                proc.wait(timeout=30)
    CachedDataset(out).verify()
    for name, array in _reference_arrays(tmp_path, 24).items():
        assert np.array_equal(store_arrays(out)[name], array)
    assert (out / LOCK_NAME).read_bytes() == b""  # released and emptied


@pytest.mark.workers
@pytest.mark.timeout(240)
def test_kill_9_releases_the_lock_and_the_same_call_resumes(tmp_path: Path) -> None:
    """The kernel drops a SIGKILLed writer's flock, and its fork-started workers, which may
    outlive it for a few seconds, hold no copy of the lock."""
    target, out = _ramp_target(tmp_path, 24), tmp_path / "s"
    gate = tmp_path / "gate"
    job = _precompute_args(target, out, fn="gated_double", workers=2)
    env = {**os.environ, "WELLFED_TEST_GATE": str(gate)}
    writer = subprocess.Popen([sys.executable, "-m", "wellfed", *job], cwd=REPO, env=env)
    try:
        _wait_for("half-written shard 1", lambda: any(out.glob(".tmp-shard-00001.*")), writer)
        workers = psutil.Process(writer.pid).children(recursive=True)
        assert workers, "the writer has no source workers"
        writer.send_signal(signal.SIGKILL)
        assert writer.wait(timeout=30) == -signal.SIGKILL
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait(timeout=30)
    fd = try_store_lock(out)  # at once, while the orphaned workers may still run
    assert fd is not None
    assert fd >= 0
    release_store_lock(fd)

    gate.touch()
    run = _wellfed(*job, env=env)
    assert run.returncode == 0, run.stderr
    CachedDataset(out).verify()
    for name, array in _reference_arrays(tmp_path, 24).items():
        assert np.array_equal(store_arrays(out)[name], array)
    _, alive = psutil.wait_procs(workers, timeout=15)
    assert not alive, f"workers of the killed writer outlived it: {[p.pid for p in alive]}"


# ----------------------------------------------------------------------------- 6. bad image files


def _photos(tmp_path: Path) -> Path:
    root = tmp_path / "photos"
    shutil.copytree(PHOTOS_DIR, root, ignore=shutil.ignore_patterns("*.md"))
    return root


TUNE_FAST = ["--budget-s", "10", "--max-workers", "0", "--max-threads", "0", "--no-store"]


@pytest.mark.timeout(180)
def test_dangling_symlink_is_named_and_honours_on_bad_file(tmp_path: Path) -> None:
    root = _photos(tmp_path)
    link = root / "scenes" / "moved.jpg"
    link.symlink_to(tmp_path / "elsewhere" / "moved.jpg")

    run = _wellfed("tune", "--data", str(root), "--on-bad-file", "fail", *TUNE_FAST)
    assert run.returncode == 1, run.stderr  # the README's 1: a problem found in the data
    assert f"Unreadable image: {link} is a dangling symlink: its target" in run.stderr
    assert f"'{tmp_path / 'elsewhere' / 'moved.jpg'}' does not exist" in run.stderr
    assert "[WF020]" in run.stderr

    run = _wellfed("tune", "--data", str(root), "--on-bad-file", "skip", *TUNE_FAST)
    assert run.returncode == 0, run.stderr
    assert f"left out 1 unreadable file(s) (on_bad_file='skip'): {link}" in run.stderr
    assert _flat("over 10 images") in _flat(run.stderr)
    assert _flat("1 files left out") in _flat(run.stderr)


@pytest.mark.workers
@pytest.mark.timeout(180)
def test_truncated_jpeg_exits_1_from_tune_and_from_precompute_workers(tmp_path: Path) -> None:
    """Before: tune exited 3 ("no configuration could be measured") on an unreadable image."""
    root = _photos(tmp_path)
    photo = root / "scenes" / "chelsea.jpg"  # sample 2: not among the fingerprint's 8 items
    photo.write_bytes(photo.read_bytes()[: photo.stat().st_size // 3])

    run = _wellfed("tune", "--data", str(root), "--on-bad-file", "fail", *TUNE_FAST)
    assert run.returncode == 1, run.stdout + run.stderr
    assert _flat(f"Unreadable image: sample 2 ({photo})") in _flat(run.stdout)
    assert "[WF020]" in _flat(run.stdout)

    target = tmp_path / "images.py"
    target.write_text(
        "from tests.helpers_cache import image_folder_source\n"
        f"dataset = image_folder_source({str(root)!r})\n"
    )
    run = _wellfed(
        "precompute", f"{target}:dataset", "--fn", "tests.helpers_cache:double",
        "--out", str(tmp_path / "s"), "--batch-size", "2", "--num-workers", "2",
        "--device", "cpu",
    )  # fmt: skip
    assert run.returncode == 1, run.stderr
    line = run.stderr.strip().splitlines()[-1]
    assert line.startswith("error: in DataLoader worker process"), line
    assert f"Unreadable image: sample 2 ({photo}) failed to decode" in line
    assert line.endswith("[WF020]")


@pytest.mark.timeout(120)
def test_empty_class_folder_is_refused_like_torchvision(tmp_path: Path) -> None:
    root = _photos(tmp_path)
    (root / "wasps").mkdir()
    run = _wellfed("tune", "--data", str(root), *TUNE_FAST)
    assert run.returncode == 2, run.stderr  # like WF005 (an empty folder): a bad TARGET
    assert f"Empty class folder: {root / 'wasps'} (label 2)" in run.stderr
    assert "[WF021]" in run.stderr
    assert "--on-bad-file skip" in run.stderr
