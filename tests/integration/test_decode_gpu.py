"""GPU decode (nvJPEG through torchvision) on the real photos, and tune's decode form on a
CUDA device (issue 17 item 4). Marked gpu: skipped without CUDA; skipped with a reason where
CUDA is present but GPU decode is not (torchvision missing or too old to decode on a device).

nvJPEG is not bit-identical to Pillow's libjpeg-turbo: shapes and dtype must match, pixels
within a small mean absolute difference.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

import wellfed
from wellfed.device import (
    DecodeImages,
    EncodedImages,
    collate_encoded,
    gpu_decode_unavailable,
    to_device,
)
from wellfed.errors import BadFileError
from wellfed.workloads import builtin_dataset, builtin_spec, decode_train_transform

pytestmark = [pytest.mark.gpu, pytest.mark.timeout(300)]

#: Largest mean absolute difference, in 0..255 units, allowed between nvJPEG's and Pillow's
#: pixels of one photo. Decoders differ in IDCT and chroma upsampling by a level or two at
#: edges; a wrong colour conversion or orientation differs by tens.
MAX_MEAN_ABS_DIFF = 3.0


@pytest.fixture
def nvjpeg() -> None:
    why = gpu_decode_unavailable("cuda")
    if why is not None:
        pytest.skip(f"GPU decode unavailable here: {why}")


def _encoded(hymenoptera: Path, n: int = 32) -> tuple[EncodedImages, list[str]]:
    ds = builtin_dataset(hymenoptera / "train", output="encoded")
    jpeg = next(i for i, (p, _) in enumerate(ds.samples) if p.endswith(".jpeg"))
    indices = sorted({jpeg, *range(0, len(ds), max(1, len(ds) // (n - 1)))})[:n]
    images, _ = collate_encoded([ds[i] for i in indices])
    return images, [ds.samples[i][0] for i in indices]


@pytest.mark.usefixtures("nvjpeg")
def test_nvjpeg_decode_matches_pillow_within_a_small_difference(hymenoptera: Path) -> None:
    batch, paths = _encoded(hymenoptera)
    gpu = DecodeImages("cuda", backend="nvjpeg")
    assert gpu.uses_nvjpeg
    decoded = gpu(batch)
    reference = DecodeImages("cpu", backend="pillow")(batch)
    assert len(decoded) == len(reference) == len(batch)
    for path, got, want in zip(paths, decoded, reference, strict=True):
        assert got.device.type == "cuda", path
        assert got.dtype == want.dtype == torch.uint8, path
        assert got.shape == want.shape, path
        diff = (got.cpu().float() - want.float()).abs().mean().item()
        assert diff <= MAX_MEAN_ABS_DIFF, f"{path}: mean |nvJPEG - Pillow| = {diff:.2f}"
    # the same decoder, the same bytes: the same pixels
    again = gpu(batch)
    assert all(torch.equal(a, b) for a, b in zip(decoded, again, strict=True))


@pytest.mark.usefixtures("nvjpeg")
def test_a_broken_jpeg_on_the_gpu_names_its_place_in_the_batch(
    hymenoptera: Path, caplog: pytest.LogCaptureFixture
) -> None:
    batch, _ = _encoded(hymenoptera, n=4)
    broken = torch.frombuffer(bytearray(b"\xff\xd8\xff\xe0" + b"\x00" * 60), dtype=torch.uint8)
    items = EncodedImages([batch[0], broken, batch[1]])
    with caplog.at_level(logging.INFO, logger="wellfed.device"), pytest.raises(BadFileError) as e:
        DecodeImages("cuda")(items)
    assert e.value.code == "WF704"
    assert e.value.value == 1
    assert str(e.value).startswith("Cannot decode image 1 of the batch (64 B, first bytes ff d8")


@pytest.mark.usefixtures("nvjpeg")
def test_the_decode_form_through_to_device_on_cuda(hymenoptera: Path) -> None:
    ds = builtin_dataset(hymenoptera / "train", output="encoded")
    loader = wellfed.create_dataloader(
        ds,
        batch_size=16,
        shuffle=True,
        seed=0,
        num_workers=2,
        persistent_workers=False,
        timeout=60,
        sample_seeds=True,
        collate_fn=collate_encoded,
        pin_memory=True,
    )
    transform = decode_train_transform("cuda")
    dev = to_device(loader, "cuda", transform=transform)
    first = None
    for n, (images, labels) in enumerate(dev):
        assert images.device.type == "cuda"
        assert images.dtype == torch.float32
        assert images.shape == (labels.shape[0], 3, 224, 224)
        first = images if first is None else first
        if n == 3:
            break
    assert first is not None
    assert torch.isfinite(first).all()


@pytest.mark.usefixtures("nvjpeg")
def test_tune_measures_the_decode_form_on_cuda() -> None:
    from wellfed.tune import tune

    result = tune(
        builtin_spec(batch_size=16), budget_s=60, max_workers=2, max_threads=0, store=False
    )
    decode = result.decode
    assert decode is not None
    assert decode.measured, decode.reason
    assert decode.device == "cuda"
    assert decode.trial is not None
    assert decode.trial.ok
    assert decode.samples_per_s is not None
    assert decode.samples_per_s > 0
    assert result.recommended is not None
    assert decode.config == result.recommended.config
    assert decode.encoded_bytes_per_sample is not None
    assert decode.float_bytes_per_sample is not None
    assert decode.encoded_bytes_per_sample < decode.float_bytes_per_sample
    assert decode.reason.startswith("decode on cuda (nvJPEG): ")
    assert result.to_dict()["decode"]["measured"] is True
