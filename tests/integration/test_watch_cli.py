"""``wellfed watch SCRIPT``: real scripts in real subprocesses (runpy, workers, SIGINT).

Each run is ``python -m wellfed watch ...`` in a fresh interpreter, as a user runs it; the
script is ``scripts/watch_loop.py`` (a sleeping loader and step) or examples/note002_train.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[2]
LOOP = ROOT / "tests" / "integration" / "scripts" / "watch_loop.py"
NOTE002 = ROOT / "examples" / "note002_train.py"

pytestmark = [pytest.mark.workers, pytest.mark.timeout(240)]

STATS_FIELDS = {
    "steps",
    "samples",
    "data_wait_s",
    "step_s",
    "data_bound_fraction",
    "samples_per_s",
    "wait_s_p50",
    "wait_s_p90",
    "step_s_p50",
    "stalls",
}


def _env() -> dict[str, str]:
    src = str(ROOT / "src")
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": src + (os.pathsep + path if path else "")}


def _watch(*args: str, timeout: float = 200) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "wellfed", "watch", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=ROOT,
        env=_env(),
    )


def _tagged(tag: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        if tag in " ".join(proc.info["cmdline"] or ()):
            found.append(proc)
    return found


def _no_survivors(tag: str) -> None:
    """No process whose command line holds ``tag`` (the run and its workers) is left."""
    deadline = time.monotonic() + 15
    while _tagged(tag) and time.monotonic() < deadline:
        time.sleep(0.1)  # polling for exit
    assert not _tagged(tag)


def test_watch_meters_the_scripts_loader_and_writes_json_and_plot(tmp_path: Path) -> None:
    tag = uuid.uuid4().hex
    out, png = tmp_path / "watch.json", tmp_path / "watch.png"
    done = _watch("--json", str(out), "--plot", str(png), str(LOOP), "--workers", "1", "--tag", tag)
    assert done.returncode == 0, done.stderr
    assert "done: 12 batches" in done.stdout  # the script's own output, on stdout
    assert "[watch] #1 SleepyDataset at watch_loop.py:" in done.stderr  # the live line
    assert "data-bound" in done.stderr
    assert "samples/s" in done.stderr
    assert "exited with 0" in done.stderr
    assert "next:" in done.stderr
    report = json.loads(out.read_text())
    assert report["exit_code"] == 0
    assert not report["interrupted"]
    (loader,) = report["loaders"]
    assert set(loader["stats"]) >= STATS_FIELDS
    assert loader["stats"]["steps"] == 2 * 5  # 6 batches, 1 worker: 1 warm-up per epoch
    assert loader["stats"]["samples"] == 2 * 5 * 8
    assert loader["settings"]["num_workers"] == 1
    assert loader["verdict"]["kind"] in ("data-bound", "not-data-bound")
    assert loader["target"] == f"{LOOP}:DATA"  # the module-level dataset, for wellfed tune
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    _no_survivors(tag)


def test_a_script_that_raises_gets_its_summary_and_exit_code(tmp_path: Path) -> None:
    out = tmp_path / "watch.json"
    done = _watch("--json", str(out), str(LOOP), "--workers", "1", "--raise-at", "9")
    assert done.returncode == 1
    assert "ValueError: boom at batch 9 (test)" in done.stderr
    assert 'watch_loop.py", line' in done.stderr  # the script's traceback, from its frames
    assert "runpy" not in done.stderr
    assert "exited with 1" in done.stderr
    report = json.loads(out.read_text())
    assert report["exit_code"] == 1
    assert "ValueError" in report["error"]
    assert report["loaders"][0]["stats"]["steps"] == 5 + 2  # 6 + 3 batches, 2 warm-ups


def test_sys_exit_code_is_passed_on() -> None:
    done = _watch(str(LOOP), "--epochs", "1", "--exit", "3")
    assert done.returncode == 3
    assert "exited with 3" in done.stderr


def test_ctrl_c_ends_the_script_and_still_prints_the_summary(tmp_path: Path) -> None:
    tag = uuid.uuid4().hex
    out = tmp_path / "watch.json"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "wellfed",
            "watch",
            "--json",
            str(out),
            str(LOOP),
            "--workers",
            "2",
            "--forever",
            "--tag",
            tag,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=_env(),
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "READY"
        proc.send_signal(signal.SIGINT)  # what Ctrl-C sends
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, stderr
    assert "was interrupted (Ctrl-C)" in stderr
    assert "#1 SleepyDataset" in stderr
    report = json.loads(out.read_text())
    assert report["interrupted"]
    assert report["exit_code"] == 130
    # READY came at batch 8: epoch 1 gave 4 steps (6 batches, 2 warm-up: one per worker)
    assert report["loaders"][0]["stats"]["steps"] >= 4
    _no_survivors(tag)


def test_module_form_runs_the_module_with_its_arguments(tmp_path: Path) -> None:
    out = tmp_path / "watch.json"
    done = _watch("--json", str(out), "-m", "tests.integration.scripts.watch_loop", "--epochs", "1")
    assert done.returncode == 0, done.stderr
    assert "done: 6 batches" in done.stdout
    report = json.loads(out.read_text())
    assert report["program"] == "tests.integration.scripts.watch_loop"
    assert report["argv"] == ["--epochs", "1"]
    assert report["loaders"][0]["stats"]["steps"] == 5
    assert report["loaders"][0]["name"].endswith(f"at watch_loop.py:{_loader_line()}")


def _loader_line() -> int:
    lines = LOOP.read_text().splitlines()
    return next(i for i, line in enumerate(lines, 1) if "for _x, _y in loader" in line)


@pytest.mark.slow  # ~50 s on 2 busy CPUs: the example starts spawn workers five times
def test_note002_runs_unchanged_with_a_live_line_a_verdict_and_json(tmp_path: Path) -> None:
    out = tmp_path / "watch.json"
    done = _watch("--json", str(out), str(NOTE002), timeout=400)
    assert done.returncode == 0, done.stderr
    assert "reproducible: True" in done.stdout  # the example's own check, unchanged
    assert "[watch] #1 Subset(NoisyTiles) at note002_train.py:" in done.stderr
    assert "data-bound" in done.stderr
    assert "next:" in done.stderr
    report = json.loads(out.read_text())
    train = report["loaders"][0]
    assert set(train["stats"]) >= STATS_FIELDS
    assert train["settings"]["num_workers"] == 2
    assert train["settings"]["start_method"] == "spawn"
    assert train["stats"]["epochs"] == 2
    assert train["stats"]["samples"] + train["stats"]["warmup_samples"] == 2 * 48
    assert train["verdict"]["kind"] in ("data-bound", "not-data-bound")


def test_an_attribute_the_loop_sets_while_workers_run_is_reported(tmp_path: Path) -> None:
    out = tmp_path / "watch.json"
    script = ROOT / "tests" / "integration" / "scripts" / "watch_multiscale.py"
    run = _watch("--json", str(out), str(script))
    assert run.returncode == 0, run.stderr
    assert "stale dataset state" in run.stderr  # the summary goes to stderr
    assert "dataset.img_size changed from 416 to" in run.stderr
    (loader,) = json.loads(out.read_text())["loaders"]
    (entry,) = loader["stale"]
    assert entry["path"] == "dataset.img_size"
    assert "SharedState" in entry["fix"]
