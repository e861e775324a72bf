"""wellfed loaders inside a real Lightning fit (issue 16): DDP shards, reloaded loaders.

Each fit runs in a fresh interpreter (``scripts/lightning_fit.py``): Lightning's ddp strategy
starts rank 1 by running the script again, which it cannot do with pytest's own argv.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("lightning")

SCRIPT = Path(__file__).resolve().parent / "scripts" / "lightning_fit.py"
pytestmark = [pytest.mark.workers, pytest.mark.timeout(300)]


def _fit(out: Path, mode: str, workers: int) -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), str(out), mode, str(workers)],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]


def _reference_epochs(epochs: int, batch_size: int = 4) -> list[list[list[float]]]:
    """The same loader iterated epoch after epoch outside Lightning."""
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        from lightning_fit import Indexed  # type: ignore[import-not-found]
    finally:
        sys.path.pop(0)
    import wellfed

    loader = wellfed.create_dataloader(
        Indexed(), batch_size=batch_size, shuffle=True, seed=42, num_workers=0
    )
    return [
        [
            [float(a), float(b)]
            for x, i in loader
            for a, b in zip(i.tolist(), x[:, 0].tolist(), strict=False)
        ]
        for _ in range(epochs)
    ]


def test_ddp_ranks_see_disjoint_shards_identical_for_0_and_2_workers(tmp_path: Path) -> None:
    seen = {}
    for workers in (0, 2):
        out = tmp_path / f"w{workers}"
        out.mkdir()
        _fit(out, "ddp", workers)
        ranks = [json.loads((out / f"seen_{r}.json").read_text())["0"] for r in (0, 1)]
        seen[workers] = ranks
        indices = [{int(row[0]) for row in rank} for rank in ranks]
        assert not indices[0] & indices[1]  # disjoint
        assert indices[0] | indices[1] == set(range(64))  # covering the epoch
    assert seen[0] == seen[2]  # bit-identical per rank for 0 and 2 workers
    # world-size invariant: the ranks' batches of 4, in rank order, are one rank's batches of 8
    ranks = seen[0]
    merged = [row for k in range(0, 32, 4) for rank in ranks for row in rank[k : k + 4]]
    assert merged == _reference_epochs(1, batch_size=8)[0]


def test_a_reloaded_loader_does_not_repeat_an_epoch(tmp_path: Path) -> None:
    _fit(tmp_path, "reload", 0)
    epochs = json.loads((tmp_path / "epochs.json").read_text())
    got = [epochs[str(e)] for e in range(3)]
    assert got[1] != got[2]
    assert got == _reference_epochs(3)  # epochs 0, 1, 2 as one loader gives them
