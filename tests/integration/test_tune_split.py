"""wellfed tune on the built-in workload measures the uint8 split beside the float32 form at
the recommended configuration, through the measuring core (issue 17 item 3), and says which
to use with the figures; a user TARGET is left as it is."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tests.helpers import SquaresDataset
from wellfed.cli import main
from wellfed.target import spec_from_object
from wellfed.tune import tune

pytestmark = [pytest.mark.workers, pytest.mark.timeout(120)]


def test_tune_measures_both_forms_of_the_builtin_workload(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "tune.json"
    argv = ["tune", "--budget-s", "40", "--max-workers", "1", "--max-threads", "0"]
    code = main([*argv, "--batch-size", "16", "--no-store", "--json", str(out)])
    assert code == 0, capsys.readouterr()
    text = capsys.readouterr().out
    data = json.loads(out.read_text())
    split = data["split"]
    assert split is not None, data["notes"]
    rec = data["recommended"]
    assert split["config"] == rec["config"]
    assert split["device"] == "cpu"
    # bytes from the workers, from one real batch of each form: images and int64 labels
    assert split["float_bytes_per_sample"] == 3 * 224 * 224 * 4 + 8
    assert split["uint8_bytes_per_sample"] == 3 * 224 * 224 + 8
    assert split["bytes_ratio"] >= 3.9
    assert data["bytes_per_sample"] == split["float_bytes_per_sample"]
    assert data["copy_ceiling_samples_per_s"] is None
    assert data["platform"]["host_to_device"] is None
    # samples/s of each form at that configuration: the search's trial and the split's own
    trial = split["trial"]
    assert trial["status"] == "ok"
    assert trial["config"] == rec["config"]
    assert split["uint8_samples_per_s"] == trial["samples_per_s"] > 0
    (float_trial,) = [t for t in data["trials"] if t["config"] == rec["config"]]
    assert split["float_samples_per_s"] == float_trial["samples_per_s"] > 0
    # the sentence agrees with the figures: never "use the split" when it is slower beyond noise
    f, u, noise = (
        split["float_samples_per_s"],
        split["uint8_samples_per_s"],
        split["noise_samples_per_s"],
    )
    assert math.isfinite(noise)
    assert noise >= 0
    sentence = split["recommendation"]
    if u < f - noise:
        assert not split["use_split"]
        assert sentence.startswith("float form kept: the split measured ")
        assert f"{u:.0f} vs {f:.0f} samples/s" in sentence
    elif u >= f:
        assert split["use_split"]
        assert sentence.startswith(
            f"uint8 split: {split['bytes_ratio']:.1f}x fewer bytes per sample, {u / f:.2f}x the "
            "samples/s"
        )
    else:  # slower, within the noise: the bytes decide, and the sentence says the rates tie
        assert split["use_split"]
        assert sentence.startswith(
            f"uint8 split: {split['bytes_ratio']:.1f}x fewer bytes per sample; its samples/s "
            f"({u:.0f}) and the float form's ({f:.0f}) differ by less than the noise"
        )
    if split["use_split"]:
        assert "builtin_dataset(output='uint8') + wellfed.to_device(loader, device, " in sentence
    # the lines under the table
    flat = " ".join(text.split())
    assert "split (measured at " in flat
    assert "bytes per sample from the workers float32 602,120 B, uint8 150,536 B" in flat
    assert " ".join(sentence.split()) in flat
    # the decode form (GPU decode): without a CUDA device (split["device"] is "cpu") not
    # measured, and the reason said
    decode = data["decode"]
    assert decode["measured"] is False
    assert decode["reason"] == "GPU decode not measured: no CUDA device"
    assert decode["trial"] is None
    assert "decode form: GPU decode not measured: no CUDA device" in flat
    # nothing more was measured for it: the split's is the only trial beyond the search's
    assert not any("decode" in n for n in data["notes"])


def test_a_user_target_gets_no_split_trial() -> None:
    spec = spec_from_object(SquaresDataset(64)).with_batch_size(8)
    result = tune(spec, budget_s=20, max_workers=1, max_threads=0, measure_s=0.3, store=False)
    assert result.recommended is not None
    assert result.split is None
    assert result.decode is None
    assert result.to_dict()["split"] is None
    assert result.to_dict()["decode"] is None
    assert not any("split" in n for n in result.notes)
