"""Pinned-memory facts with a CUDA device (issue 17 item 5): ``wellfed info`` reports pinned vs
pageable host-to-device bandwidth, and tune's copy ceiling and the split's device half use
the GPU. Marked gpu: skipped without CUDA. Never asserts a speed, only that figures exist and
agree with each other."""

from __future__ import annotations

import json

import pytest

from wellfed.cli import main
from wellfed.platform import measure_host_to_device
from wellfed.tune import tune
from wellfed.workloads import builtin_spec

pytestmark = [pytest.mark.gpu, pytest.mark.workers, pytest.mark.timeout(180)]


def test_host_to_device_bandwidth_pinned_and_pageable() -> None:
    h2d = measure_host_to_device(copy_bytes=16 * 2**20, repeats=3)
    assert h2d is not None
    assert h2d.pinned_gb_s > 0
    assert h2d.pageable_gb_s > 0
    assert (h2d.copy_bytes, h2d.repeats) == (16 * 2**20, 3)


def test_info_reports_the_copy_rates(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", "--json", "-"]) == 0
    h2d = json.loads(capsys.readouterr().out)["host_to_device"]
    assert h2d["pinned_gb_s"] > 0
    assert h2d["pageable_gb_s"] > 0
    assert h2d["copy_bytes"] == 64 * 2**20
    assert h2d["repeats"] == 5
    assert main(["info"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "host-to-device copy" in text
    assert "pinned" in text
    assert "GB/s" in text


def test_tune_copy_ceiling_and_split_on_the_gpu(capsys: pytest.CaptureFixture[str]) -> None:
    spec = builtin_spec(batch_size=16)
    result = tune(spec, budget_s=60, max_workers=1, max_threads=0, measure_s=0.3, store=False)
    h2d = result.platform.host_to_device
    assert h2d is not None, result.notes
    assert result.bytes_per_sample == 3 * 224 * 224 * 4 + 8
    assert result.copy_ceiling_samples_per_s == pytest.approx(
        h2d.pinned_gb_s * 1e9 / result.bytes_per_sample
    )
    split = result.split
    assert split is not None, result.notes
    assert split.device == "cuda"
    assert split.trial.ok
    assert split.config.pin_memory
    assert split.float_through_device, result.notes  # both forms' rates count their copy
    from wellfed.cli import _render_tune

    _render_tune(result)
    text = " ".join(capsys.readouterr().out.split())
    assert f"ceiling: pinned copy to cuda:{h2d.device}" in text
    assert "device half on cuda" in text
