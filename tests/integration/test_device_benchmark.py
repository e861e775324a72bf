"""The device-split benchmark's smoke run: every form runs; the bytes ratio is a fact, 4x.

It asserts no speed (STYLE.md section 8: CI never asserts absolute speed).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from benchmarks.device_split import main

pytestmark = [pytest.mark.workers, pytest.mark.timeout(300)]


def test_device_split_smoke(tmp_path: Path) -> None:
    out = tmp_path / "device_split.jsonl"
    assert main(["--smoke", "--batch-size", "8", "--out", str(out)]) == 0
    record = json.loads(out.read_text().splitlines()[-1])
    assert record["float_image_bytes_per_sample"] == 3 * 224 * 224 * 4
    assert record["uint8_image_bytes_per_sample"] == 3 * 224 * 224
    assert record["image_bytes_ratio"] == 4.0
    for form in ("plain", "float", "uint8"):
        assert record[f"{form}_samples_per_s_p50"] > 0
    assert record["env"]["git_sha"]
