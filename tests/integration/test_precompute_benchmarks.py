"""The precompute benchmarks' --smoke runs and the note 001 example (nightly: slow)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _load(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
@pytest.mark.workers
@pytest.mark.timeout(300)
@pytest.mark.filterwarnings(
    # torch's own advice when a tune trial asks for more workers than CPUs; not ours to fix
    "ignore:This DataLoader will create:UserWarning"
)
@pytest.mark.parametrize("name", ["store_format", "precompute_superres"])
def test_benchmark_smoke(tmp_path: Path, name: str) -> None:
    module = _load(REPO / "benchmarks" / f"{name}.py")
    out = tmp_path / "out.jsonl"
    assert module.main(["--smoke", "--out", str(out)]) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert records
    if name == "precompute_superres":
        assert records[0]["speedup_per_epoch"] > 1


@pytest.mark.slow
@pytest.mark.workers
@pytest.mark.timeout(300)
def test_note001_example_runs(tmp_path: Path) -> None:
    module = _load(REPO / "examples" / "note001_superres.py")
    assert module.main(["--out", str(tmp_path / "sr"), "--num-workers", "1"]) == 0
