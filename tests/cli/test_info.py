"""wellfed info, in-process."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from wellfed.cli import main


def test_info_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["usable_cpus"] >= 1
    assert "shm_free_bytes" in data
    assert "open_files_limit" in data


def test_info_text(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "usable CPUs" in out
    assert "/dev/shm" in out


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert main(["no-such-command"]) == 2


def test_help_does_not_import_torch() -> None:
    code = (
        "import sys; from wellfed.cli import main; main(['--help']); print('torch' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert out.stdout.strip().endswith("False"), out.stdout + out.stderr


def test_info_says_the_copy_rates_are_not_measured_without_cuda(
    capsys: pytest.CaptureFixture[str],
) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: tests/integration/test_transfer_gpu.py")
    assert main(["info", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["host_to_device"] is None
    assert main(["info"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "host-to-device copy │ no CUDA device: not measured" in text
