"""The decode form's parts, in one process (issue 17 item 4): file bytes as samples,
collate_encoded, EncodedImages through to_device, DecodeImages on the CPU (Pillow), lists of
variable-size images through ToFloat and RandomResizedCrop, and the errors."""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import pytest
import torch

from tests.helpers_device import pillow_rgb, reference_one
from wellfed._meter import leading_dim
from wellfed.device import (
    BatchTransform,
    DecodeImages,
    EncodedImages,
    Normalize,
    RandomHorizontalFlip,
    RandomResizedCrop,
    ToFloat,
    batch_nbytes,
    collate_encoded,
    gpu_decode_unavailable,
    to_device,
)
from wellfed.errors import BadFileError, ConfigError, DependencyError
from wellfed.seeding import SeededBatch
from wellfed.workloads import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    PHOTOS_DIR,
    builtin_dataset,
    builtin_spec,
    decode_spec,
    decode_train_transform,
)

PHOTOS = sorted(PHOTOS_DIR.rglob("*.jpg"))


def _bytes(path: Path) -> torch.Tensor:
    return torch.frombuffer(bytearray(path.read_bytes()), dtype=torch.uint8)


def _png_bytes() -> torch.Tensor:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (17, 9), color=77).save(buf, format="PNG")  # grey, not RGB, not JPEG
    return torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8)


def test_the_encoded_form_returns_each_files_bytes_and_label() -> None:
    ds = builtin_dataset(output="encoded")
    data, label = ds[3]
    path, want = ds.samples[3]
    assert data.dtype == torch.uint8
    assert data.dim() == 1
    assert bytes(data.numpy()) == Path(path).read_bytes()
    assert label == want
    assert ds.encoded
    assert ds.transform is None
    assert len(ds) == len(builtin_dataset(output="uint8"))


def test_the_encoded_form_keeps_the_sample_set(hymenoptera: Path) -> None:
    """The .gif placeholder is left out by its ending and the .jpeg kept, as in the other forms."""
    train = hymenoptera / "train"
    encoded = builtin_dataset(train, output="encoded")
    assert encoded.samples == builtin_dataset(train, output="uint8").samples
    assert any(p.endswith(".jpeg") for p, _ in encoded.samples)
    assert [Path(p).suffix for p, _ in encoded.skipped] == [".gif"]


def test_collate_encoded_keeps_a_list_counted_by_the_driver() -> None:
    samples = [(_bytes(p), i % 2) for i, p in enumerate(PHOTOS[:4])]
    images, labels = collate_encoded(samples)
    assert isinstance(images, EncodedImages)
    assert [t.numel() for t in images] == [p.stat().st_size for p in PHOTOS[:4]]
    assert labels.dtype == torch.int64
    assert labels.tolist() == [0, 1, 0, 1]
    total = sum(p.stat().st_size for p in PHOTOS[:4])
    assert batch_nbytes((images, labels)) == total + 4 * 8
    assert leading_dim((images, labels)) == 4
    assert repr(images) == f"EncodedImages(4 images, {total:,} B)"
    back = pickle.loads(pickle.dumps((images, labels)))
    assert isinstance(back[0], EncodedImages)
    assert all(torch.equal(a, b) for a, b in zip(back[0], images, strict=True))


def test_collate_encoded_refuses_decoded_images() -> None:
    with pytest.raises(ConfigError, match=r"sample 1 of the batch starts with a tensor") as e:
        collate_encoded([(_bytes(PHOTOS[0]), 0), (torch.zeros(3, 4, 4, dtype=torch.uint8), 1)])
    assert e.value.code == "WF703"


def test_to_device_leaves_encoded_bytes_on_the_host() -> None:
    batch = collate_encoded([(_bytes(p), 0) for p in PHOTOS[:3]])
    (out,) = list(to_device([batch], "cpu"))
    assert out[0] is batch[0]  # passed through, not copied: decoders read host memory


def test_decode_on_the_cpu_is_pillows_rgb_for_jpeg_and_other_formats() -> None:
    items = [_bytes(PHOTOS[0]), _png_bytes(), _bytes(PHOTOS[1])]
    step = DecodeImages("cpu")
    assert not step.uses_nvjpeg
    out = step(EncodedImages(items))
    assert [tuple(t.shape) for t in out][1] == (3, 9, 17)
    for got, data in zip(out, items, strict=True):
        assert got.dtype == torch.uint8
        assert got.device.type == "cpu"
        assert torch.equal(got, pillow_rgb(data))


def test_a_broken_file_names_its_place_in_the_batch() -> None:
    broken = torch.frombuffer(bytearray(b"\xff\xd8\xff\xe0 not really a jpeg"), dtype=torch.uint8)
    with pytest.raises(BadFileError) as e:
        DecodeImages("cpu")([_bytes(PHOTOS[0]), broken])
    msg = str(e.value)
    assert e.value.code == "WF704"
    assert e.value.value == 1
    assert msg.startswith(
        "Cannot decode image 1 of the batch (22 B, first bytes ff d8 ff e0 20 6e 6f 74)"
    )
    assert "Remove or replace the file" in msg
    assert "builtin_dataset(DIR, output='uint8') names the file and sample, WF020" in msg
    assert msg.endswith("[WF704]")


def test_decode_options_and_inputs_are_checked() -> None:
    with pytest.raises(ConfigError, match=r"backend='gpu'") as e:
        DecodeImages("cpu", backend="gpu")
    assert e.value.code == "WF701"
    with pytest.raises(ConfigError, match=r"DecodeImages\(device='nowhere'\)") as e:
        DecodeImages("nowhere")
    assert e.value.code == "WF701"
    with pytest.raises(DependencyError, match=r"device 'cpu' is not a CUDA device") as d:
        DecodeImages("cpu", backend="nvjpeg")
    assert d.value.code == "WF705"
    with pytest.raises(ConfigError, match=r"takes encoded images .* got a tensor") as e:
        DecodeImages("cpu")(torch.zeros(2, 3, 4, 4, dtype=torch.uint8))
    assert e.value.code == "WF703"


@pytest.mark.skipif(torch.cuda.device_count() > 0, reason="this machine has a CUDA device")
def test_gpu_decode_is_off_without_a_gpu() -> None:
    assert gpu_decode_unavailable("cuda") == "no CUDA device"
    assert gpu_decode_unavailable("cpu") == "device 'cpu' is not a CUDA device"
    assert not DecodeImages("cuda").uses_nvjpeg


def test_a_list_of_images_becomes_one_batch_in_random_resized_crop() -> None:
    """Images of different sizes: ToFloat maps over the list, RandomResizedCrop crops each from
    its own size and stacks; each sample equals the steps applied to it alone."""
    g = torch.Generator().manual_seed(0)
    images = [
        torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g)
        for h, w in ((20, 31), (40, 17), (25, 25))
    ]
    for antialias in (True, False):
        t = BatchTransform(
            [
                ToFloat(),
                RandomResizedCrop(12, antialias=antialias),
                RandomHorizontalFlip(),
                Normalize(IMAGENET_MEAN, IMAGENET_STD),
            ],
            key=None,
        )
        seeds = [11, 12, 13]
        out = t(SeededBatch(list(images), seeds))
        assert out.shape == (3, 3, 12, 12)
        assert out.dtype == torch.float32
        for i in range(3):
            assert torch.equal(out[i], reference_one(t, images[i], seeds[i]))


def test_list_steps_say_where_the_batch_is_made() -> None:
    images = [torch.zeros(3, 5, 6), torch.zeros(3, 7, 4)]
    with pytest.raises(ConfigError, match=r"becomes one batch in RandomResizedCrop") as e:
        Normalize(IMAGENET_MEAN, IMAGENET_STD)(images)
    assert e.value.code == "WF703"
    uint8 = [im.to(torch.uint8) for im in images]
    with pytest.raises(ConfigError, match=r"image 0 of the list has dtype torch.uint8") as e:
        RandomResizedCrop(4)(uint8, [1, 2])
    assert e.value.code == "WF703"
    assert [x.dtype for x in ToFloat()(uint8)] == [torch.float32] * 2


def test_the_decode_transform_on_the_cpu_gives_a_normalised_batch() -> None:
    batch = collate_encoded([(_bytes(p), 0) for p in PHOTOS[:2]] + [(_png_bytes(), 1)])
    images, labels = decode_train_transform("cpu", size=32)(SeededBatch(batch, [5, 6, 7]))
    assert images.shape == (3, 3, 32, 32)
    assert images.dtype == torch.float32
    assert labels.tolist() == [0, 0, 1]


def test_decode_spec_is_the_builtin_workload_over_the_same_files() -> None:
    spec = builtin_spec(batch_size=4)
    dec = decode_spec(spec, "cpu")
    assert dec is not None
    assert dec.dataset.samples == spec.dataset.samples
    assert dec.dataset.encoded
    assert dec.collate_fn is collate_encoded
    assert dec.sample_seeds
    assert dec.seed is not None
    assert dec.device == "cpu"
    assert isinstance(dec.device_transform.steps[0], DecodeImages)
    assert not spec.dataset.encoded  # the float form's dataset is left as it was
    assert decode_spec(builtin_spec(output="uint8"), "cpu") is None
