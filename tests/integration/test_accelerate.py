"""Seeded loaders through real Hugging Face Accelerate on 2 CPU processes (issue 16).

``scripts/accelerate_run.py`` runs under ``torchrun --standalone`` (what ``accelerate
launch`` does): a bare ``accelerator.prepare(loader)`` must refuse the seeded loader (WF213);
``wellfed.integrations.accelerate.prepare_data_loader`` then keeps its seeds and shards: the
ranks see disjoint samples covering the epoch, the same for 0 and 2 workers, and together the
batches one process gets with the global batch size.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.helpers_torchrun import torchrun

pytest.importorskip("accelerate")

SCRIPT = Path(__file__).resolve().parent / "scripts" / "accelerate_run.py"
pytestmark = [pytest.mark.workers, pytest.mark.timeout(300)]


def _run(out: Path, workers: int) -> list[dict[str, Any]]:
    out.mkdir(parents=True, exist_ok=True)
    torchrun(SCRIPT, 2, out, workers)
    return [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]


def _reference() -> list[list[list[Any]]]:
    """Both epochs as one process loads them with the global batch (8)."""
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        from accelerate_run import Indexed  # type: ignore[import-not-found]
    finally:
        sys.path.pop(0)
    import wellfed

    loader = wellfed.create_dataloader(
        Indexed(), batch_size=8, shuffle=True, seed=42, num_workers=0
    )
    return [
        [
            [int(a), float(b)]
            for x, i in loader
            for a, b in zip(i.tolist(), x[:, 0].tolist(), strict=True)
        ]
        for _ in range(2)
    ]


def test_accelerate_prepare_keeps_seeds_and_shards(tmp_path: Path) -> None:
    runs = {workers: _run(tmp_path / f"w{workers}", workers) for workers in (0, 2)}
    ranks = runs[0]
    for rank in ranks:
        assert "WF213" in rank["refused"] or "prepare_data_loader" in rank["refused"]
        assert rank["gathered"] == 30  # gather_for_metrics dropped no real sample, kept no pad
        assert rank["last"] == [True, 30 % 8]
    epoch0 = [{row[0] for batch in rank["epochs"][0] for row in batch} for rank in ranks]
    assert not epoch0[0] & epoch0[1]  # disjoint (30 = 3 x 8 + 6: no padding on 2 ranks)
    assert epoch0[0] | epoch0[1] == set(range(30))  # covering the epoch
    assert [r["epochs"] for r in runs[0]] == [r["epochs"] for r in runs[2]]  # 0 vs 2 workers
    merged = [
        [row for k in range(len(ranks[0]["epochs"][e])) for r in ranks for row in r["epochs"][e][k]]
        for e in (0, 1)
    ]
    assert merged == _reference()  # the same batches as one process with the global batch
    assert merged[0] != merged[1]


def test_prepare_data_loader_refuses_an_unseeded_loader() -> None:
    accelerate = pytest.importorskip("accelerate")
    import torch

    import wellfed
    import wellfed.integrations.accelerate as wf_accelerate

    loader = torch.utils.data.DataLoader(list(range(4)), batch_size=2)
    with pytest.raises(wellfed.ConfigError, match="not a seeded wellfed loader"):
        wf_accelerate.prepare_data_loader(accelerate.Accelerator(cpu=True), loader)
