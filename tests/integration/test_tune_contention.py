"""tune on a busy machine says so, in its notes and in create_dataloader's reason (issue 15).

Load 4 on 2 CPUs made tune recommend 0 workers without a word, and the result became
create_dataloader's "auto" default. Here real CPU burners outside the test's process tree
(re-parented, as another user's job would be) keep every usable CPU busy during a real tune.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys

import pytest

import wellfed
from tests.helpers import SquaresDataset
from wellfed.platform import usable_cpu_count
from wellfed.target import spec_from_object
from wellfed.tune import tune

pytestmark = [pytest.mark.workers, pytest.mark.timeout(240)]

_BURN = "import time\nt = time.monotonic()\nwhile time.monotonic() - t < 120: pass\n"
_ORPHAN = (
    "import subprocess, sys\n"
    "p = subprocess.Popen([sys.executable, '-c', sys.argv[1]], start_new_session=True,\n"
    "                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n"
    "print(p.pid, flush=True)\n"
)


def test_a_contended_run_is_named_and_its_stored_default_says_so() -> None:
    burners: list[int] = []
    try:
        for _ in range(usable_cpu_count()):
            out = subprocess.run(
                [sys.executable, "-c", _ORPHAN, _BURN],
                capture_output=True,
                text=True,
                timeout=60,
                check=True,
            )
            burners.append(int(out.stdout.split()[0]))
        dataset = SquaresDataset(96)
        spec = spec_from_object(dataset).with_batch_size(8)
        result = tune(spec, budget_s=15, max_workers=2, measure_s=0.3)
    finally:
        for pid in burners:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    assert result.contention is not None
    assert result.contention["contended"] is True
    assert {b["pid"] for b in result.contention["top"]} & set(burners)
    note = next(n for n in result.notes if n.startswith("contention (measured)"))
    assert "Tune again when the machine is quiet" in note
    assert result.stored_path is not None
    assert "stored as create_dataloader's 'auto' default and says so" in note
    loader = wellfed.create_dataloader(dataset, batch_size=8, seed=0, timeout=60)
    assert "measured under contention" in loader.plan.setting("num_workers").reason
