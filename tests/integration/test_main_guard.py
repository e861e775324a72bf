"""WF121 for a real unguarded script that imports its dataset class (issue 15).

spawn workers re-import the main script. A script whose classes live in another module but
whose training code sits at top level crashed with Python's bootstrap RuntimeError (printed
once per worker) and no finding; the doctor's check looked only at classes defined in
``__main__``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = [pytest.mark.workers, pytest.mark.timeout(180)]

_DATASET = """
import torch
from torch.utils.data import Dataset


class DS(Dataset):
    def __len__(self):
        return 8

    def __getitem__(self, i):
        return torch.tensor(i)
"""

_TRAIN = """
import wellfed
from dsmod import DS

loader = wellfed.create_dataloader(
    DS(), batch_size=4, num_workers=2, multiprocessing_context="spawn", seed=0, timeout=30
)
print("batches", sum(1 for _ in loader))
"""

_REPRO = """
import torch
import wellfed
from dsmod import DS

ds = DS()
report = wellfed.verify_reproducibility(
    lambda **kw: torch.utils.data.DataLoader(ds, batch_size=4, **kw),
    num_workers=(0, 2),
    start_methods=("spawn",),
)
print("REPORT", report.reproducible, [f.code for f in report.findings])
print("CAUSE", report.likely_cause)
"""


def _script(tmp_path: Path, body: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "dsmod.py").write_text(textwrap.dedent(_DATASET))
    (tmp_path / "train.py").write_text(textwrap.dedent(body))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path])}
    return subprocess.run(
        [sys.executable, "train.py"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=150,
    )


def test_create_dataloader_in_an_unguarded_script_names_wf121(tmp_path: Path) -> None:
    done = _script(tmp_path, _TRAIN)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "WorkerSafetyError" in done.stderr
    assert "The script train.py runs its training code at top level" in done.stderr
    assert "[WF121]" in done.stderr
    assert "freeze_support" not in done.stderr  # Python's bootstrap error never happened
    assert "batches" not in done.stdout


def test_verify_reproducibility_in_an_unguarded_script_names_wf121(tmp_path: Path) -> None:
    done = _script(tmp_path, _REPRO)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("REPORT") == 1, done.stdout  # workers never re-ran the script
    assert "REPORT False ['WF121']" in done.stdout
    assert "refused before its workers started: env.main_guard" in done.stdout
    assert "sample_rng" not in done.stdout  # the RNG hint belongs to RNG findings only
    assert "freeze_support" not in done.stdout + done.stderr
