"""The uint8 split's figures and recommendation (issue 17 item 3), without processes: the rule
on hand-made trials, the split form's spec, the byte count, the time-budget skip."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from tests.helpers import SquaresDataset, tune_result
from wellfed.device import DeviceLoader, batch_nbytes
from wellfed.measure import LoaderConfig, Trial, summarize_windows
from wellfed.platform import collect_platform_info
from wellfed.seeding import SeededBatch
from wellfed.target import spec_from_object
from wellfed.tune import TuneResult
from wellfed.tune._result import DecodeComparison, Recommendation, SplitComparison
from wellfed.tune._search import _device_side
from wellfed.tune._split import (
    DECODE_CODE,
    SPLIT_CODE,
    compare_decode,
    compare_forms,
    copy_ceiling,
    decode_not_measured,
    device_facts,
)
from wellfed.workloads import (
    PillowCropTransform,
    builtin_spec,
    device_train_transform,
    split_spec,
)

CFG = LoaderConfig(num_workers=2, batch_size=32, persistent_workers=True)
FLOAT_B = 3 * 224 * 224 * 4 + 8  # a float32 image and an int64 label
UINT8_B = 3 * 224 * 224 + 8


def _trial(*windows: float) -> Trial:
    median, spread = summarize_windows(windows)
    return Trial(
        config=CFG,
        status="ok",
        samples_per_s=median,
        samples_per_s_spread=spread,
        window_samples_per_s=windows,
        elapsed_s=4.0,
    )


def test_a_faster_split_is_recommended_with_its_figures() -> None:
    c = compare_forms(CFG, "cpu", _trial(200.0), _trial(210.0), FLOAT_B, UINT8_B, 5.0)
    assert c.use_split
    assert c.recommendation == (
        f"uint8 split: 4.0x fewer bytes per sample, 1.05x the samples/s: use {SPLIT_CODE}"
    )
    assert "builtin_dataset(output='uint8')" in c.recommendation
    assert "wellfed.to_device(loader, device, transform=device_train_transform())" in SPLIT_CODE
    assert c.bytes_ratio == pytest.approx(FLOAT_B / UINT8_B)


def test_a_split_slower_within_the_noise_is_still_recommended_and_says_so() -> None:
    c = compare_forms(CFG, "cpu", _trial(200.0), _trial(190.0), FLOAT_B, UINT8_B, 12.0)
    assert c.use_split
    assert "its samples/s (190) and the float form's (200) differ by less than the noise" in (
        c.recommendation
    )
    assert "so the bytes decide: use" in c.recommendation


def test_a_split_slower_beyond_the_noise_keeps_the_float_form() -> None:
    c = compare_forms(CFG, "cpu", _trial(200.0), _trial(150.0), FLOAT_B, UINT8_B, 12.0)
    assert not c.use_split
    assert c.recommendation.startswith("float form kept: the split measured 25% slower here")
    assert "150 vs 200 samples/s, beyond the noise of 12" in c.recommendation
    assert "use builtin_dataset" not in c.recommendation
    c = compare_forms(CFG, "cpu", _trial(200.0), _trial(191.0), FLOAT_B, UINT8_B, 2.0)
    assert "4.5% slower" in c.recommendation


def test_on_a_gpu_the_text_says_whether_the_float_trial_copied_too() -> None:
    # tune measures the float form through to_device with a CUDA device: both rates then
    # count their copy; when that trial failed, the search's (no copy) is used and said so
    kept = compare_forms(CFG, "cuda", _trial(200.0), _trial(150.0), FLOAT_B, UINT8_B, 12.0)
    assert not kept.float_through_device
    assert "the copy included, which the float form's trial did not" in kept.recommendation
    both = compare_forms(
        CFG, "cuda", _trial(200.0), _trial(150.0), FLOAT_B, UINT8_B, 12.0, float_through_device=True
    )
    assert both.float_through_device
    assert "which the float form's trial did not" not in both.recommendation
    assert SplitComparison.from_dict(both.to_dict()).float_through_device


def test_copy_ceiling_is_bandwidth_over_bytes_per_sample() -> None:
    assert copy_ceiling(24.0, 150_000.0) == pytest.approx(160_000.0)


def test_batch_nbytes_counts_every_tensor_of_a_nested_batch() -> None:
    images = torch.zeros(4, 3, 8, 8, dtype=torch.uint8)
    labels = torch.zeros(4, dtype=torch.int64)
    assert batch_nbytes((images, labels)) == 4 * 192 + 4 * 8
    assert batch_nbytes({"image": images, "meta": {"label": labels, "name": "x"}}) == 800
    assert batch_nbytes(SeededBatch([images, labels], [1, 2, 3, 4])) == 800
    assert batch_nbytes(7) == 0


def test_split_spec_is_the_builtin_workload_over_the_same_files() -> None:
    spec = builtin_spec(batch_size=4)
    split = split_spec(spec, "cpu")
    assert split is not None
    assert isinstance(split.dataset.transform, PillowCropTransform)
    assert split.dataset.samples is spec.dataset.samples
    assert len(split.dataset) == len(spec.dataset)
    assert (split.seed, split.sample_seeds, split.device) == (0, True, "cpu")
    assert "uint8" in split.description
    assert spec.dataset.transform.__class__.__name__ == "PillowTrainTransform"  # untouched
    loader = split.make_loader(LoaderConfig(batch_size=2))
    assert isinstance(loader, DeviceLoader)
    images, labels = next(iter(loader))
    assert images.dtype == torch.float32
    assert images.shape == (2, 3, 224, 224)
    assert labels.shape == (2,)
    assert repr(loader.transform) == repr(device_train_transform())


def test_a_user_dataset_or_the_uint8_form_has_no_split_form() -> None:
    assert split_spec(spec_from_object(SquaresDataset(8)), "cpu") is None
    assert split_spec(builtin_spec(output="uint8"), "cpu") is None


def test_the_split_trial_is_skipped_when_the_budget_has_no_room() -> None:
    spec = builtin_spec(batch_size=4)
    float_trial = _trial(100.0, 110.0)
    rec = Recommendation(config=CFG, samples_per_s=100.0, speedup=None, reason="")
    notes: list[str] = []

    def never(config: LoaderConfig, on: object = None) -> Trial | None:
        raise AssertionError("no trial may start")

    side = _device_side(
        spec,
        rec,
        {CFG: float_trial},
        False,
        measure_once=never,
        remaining=lambda: 2.5,
        bounded=lambda s: s,
        report=lambda m: None,
        note=notes.append,
        budget_s=30.0,
        probe_timeout_s=30.0,
    )
    assert side.split is None
    assert side.bytes_per_sample is None
    (note,) = notes
    assert note.startswith("time budget: 2.5s of 30s left, the uint8 split form's trial")
    assert note.endswith("skipped")


def test_tune_result_round_trips_with_the_split_and_the_copy_facts() -> None:
    from wellfed.platform import HostToDevice

    c = compare_forms(CFG, "cuda", _trial(200.0), _trial(210.0), FLOAT_B, UINT8_B, 5.0)
    h2d = HostToDevice(0, "GPU", 64 * 2**20, 5, 24.0, 9.0)
    platform = dataclasses.replace(collect_platform_info(include_gpus=False), host_to_device=h2d)
    result = tune_result(
        platform=platform,
        trials=(c.trial,),
        best=c.trial,
        bytes_per_sample=FLOAT_B,
        copy_ceiling_samples_per_s=copy_ceiling(24.0, FLOAT_B),
        split=c,
    )
    data = json.loads(json.dumps(result.to_dict()))
    assert data["split"]["uint8_bytes_per_sample"] == UINT8_B
    assert data["split"]["recommendation"] == c.recommendation
    back = TuneResult.from_dict(data)
    assert back.split == c
    assert back.platform.host_to_device == h2d
    assert back.copy_ceiling_samples_per_s == result.copy_ceiling_samples_per_s
    assert SplitComparison.from_dict(c.to_dict()) == c


# --- the decode form (issue 17 item 4): measured only with a GPU; otherwise why not --------


def test_without_a_gpu_the_decode_form_is_not_measured_and_says_why() -> None:
    spec = builtin_spec(batch_size=4)
    rec = Recommendation(config=CFG, samples_per_s=100.0, speedup=None, reason="")

    def never(config: LoaderConfig, on: object = None) -> Trial | None:
        raise AssertionError("no trial may start")

    side = _device_side(
        spec,
        rec,
        {CFG: _trial(100.0, 110.0)},
        False,
        measure_once=never,
        remaining=lambda: 2.5,
        bounded=lambda s: s,
        report=lambda m: None,
        note=lambda n: None,
        budget_s=30.0,
        probe_timeout_s=30.0,
    )
    assert side.decode == decode_not_measured("no CUDA device")
    assert side.decode is not None
    assert side.decode.reason == "GPU decode not measured: no CUDA device"
    data = json.loads(json.dumps(side.decode.to_dict()))
    assert data["measured"] is False
    assert data["reason"] == "GPU decode not measured: no CUDA device"
    assert data["trial"] is None
    assert data["samples_per_s"] is None
    assert DecodeComparison.from_dict(data) == side.decode


def test_a_user_target_has_no_decode_form() -> None:
    rec = Recommendation(config=CFG, samples_per_s=100.0, speedup=None, reason="")
    side = _device_side(
        spec_from_object(SquaresDataset(8)),
        rec,
        {CFG: _trial(100.0)},
        False,
        measure_once=lambda c, s=None: None,
        remaining=lambda: 60.0,
        bounded=lambda s: s,
        report=lambda m: None,
        note=lambda n: None,
        budget_s=30.0,
        probe_timeout_s=30.0,
    )
    assert side.decode is None


def test_the_facts_child_says_why_gpu_decode_is_off_without_a_gpu() -> None:
    facts = device_facts([builtin_spec(batch_size=2)], False)
    assert facts["gpu_decode_unavailable"] == "no CUDA device"
    assert facts["host_to_device"] is None


def test_a_torchvision_that_fails_to_import_is_named() -> None:
    from wellfed.device import _torchvision_decoder

    found = _torchvision_decoder()
    if not isinstance(found, str):
        pytest.skip("torchvision imports here, with decode_jpeg(device=)")
    assert found.startswith("torchvision not importable (") or "takes no device" in found
    assert decode_not_measured(found).reason == f"GPU decode not measured: {found}"
    if found.startswith("torchvision not importable ("):
        name = found.removeprefix("torchvision not importable (").split(":")[0]
        assert name.endswith(("Error", "Exception"))  # the import error's type, named


def test_the_measured_decode_form_reports_its_figures() -> None:
    enc = 99_900.0
    c = compare_decode(
        CFG, "cuda", _trial(200.0), _trial(300.0), FLOAT_B, enc, 10.0, uint8_samples_per_s=220.0
    )
    assert c.measured
    assert c.samples_per_s == 300.0
    assert c.float_samples_per_s == 200.0
    assert c.reason == (
        "decode on cuda (nvJPEG): 99,900 B per sample from the workers (the files' bytes; 6.0x "
        "fewer than float32's 602,120 B); 300 samples/s against the float form's 200, the "
        f"uint8 split's 220: 1.50x the float form's. The form: {DECODE_CODE}"
    )
    tie = compare_decode(CFG, "cuda", _trial(200.0), _trial(195.0), FLOAT_B, enc, 10.0)
    assert "195 samples/s against the float form's 200: within the noise (+-10)" in tie.reason
    slow = compare_decode(CFG, "cuda", _trial(200.0), _trial(100.0), FLOAT_B, enc, 10.0)
    assert "50% below the float form's, beyond the noise" in slow.reason
    result = tune_result(decode=c)
    data = json.loads(json.dumps(result.to_dict()))
    assert data["decode"]["encoded_bytes_per_sample"] == enc
    assert data["decode"]["trial"]["samples_per_s"] == 300.0
    assert TuneResult.from_dict(data).decode == c
