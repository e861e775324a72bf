"""Run a test script as a real multi-process job: ``torchrun --standalone`` (what ``accelerate
launch`` does too), with a timeout, and fail if any of its processes outlive it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psutil


def torchrun(script: Path, nproc: int, *args: object, **env: str) -> None:
    """Run ``script`` on ``nproc`` local ranks with ``args``; extra environment from ``env``.

    Raises:
        AssertionError: the job exited non-zero (with its stderr's tail), or a process whose
            command line names ``script`` is still alive after it.
    """
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        str(script),
        *map(str, args),
    ]
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **env}
    done = subprocess.run(
        cmd, capture_output=True, text=True, timeout=240, check=False, env=full_env
    )
    assert done.returncode == 0, done.stderr[-4000:]
    left = [
        p
        for p in psutil.process_iter(["cmdline"])
        if str(script) in " ".join(p.info["cmdline"] or [])
    ]
    assert not left, f"processes left behind: {[p.pid for p in left]}"
