"""wellfed.to_device and the device transforms on device="cpu" (no worker processes here).

The same code path as on a GPU, without pinning, streams or events; the CUDA-only parts are in
tests/integration/test_device_cuda.py (marked gpu).
"""

from __future__ import annotations

import collections
import dataclasses
import math
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader

import wellfed
from tests.helpers_device import ImagesDataset, RecordingModel, reference_batch
from wellfed import workloads
from wellfed.device import (
    BatchTransform,
    Normalize,
    RandomHorizontalFlip,
    RandomResizedCrop,
    ToFloat,
    to_device,
    uniform,
)
from wellfed.errors import ConfigError, StateError
from wellfed.workloads import IMAGENET_MEAN, IMAGENET_STD

CROP_PIPELINES = {
    "flip-normalize": lambda: [
        RandomHorizontalFlip(),
        ToFloat(),
        Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ],
    "crop-antialias": lambda: [
        ToFloat(),
        RandomResizedCrop(12),
        RandomHorizontalFlip(),
        Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ],
    "crop-grid": lambda: [
        ToFloat(),
        RandomResizedCrop((10, 14), antialias=False),
        RandomHorizontalFlip(0.3),
        Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ],
}


def _images(b: int = 16, h: int = 20, w: int = 28, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, 3, h, w), dtype=torch.uint8, generator=g)


def _seeded(n: int = 24, batch_size: int = 8, **kw: Any) -> Any:
    return wellfed.create_dataloader(
        ImagesDataset(n), batch_size=batch_size, shuffle=True, seed=5, num_workers=0, **kw
    )


# --- nested batches --------------------------------------------------------------------------


Pair = collections.namedtuple("Pair", ["image", "label"])


@dataclasses.dataclass(frozen=True)
class Record:
    image: torch.Tensor
    meta: dict[str, Any]
    name: str = "r"


def test_nested_batches_keep_their_structure_and_pass_non_tensors() -> None:
    x, y = torch.arange(6.0).view(2, 3), torch.tensor([1, 2])
    batches = [
        x,
        (x, y),
        [x, (y, "s"), 7],
        {"image": x, "nested": {"label": y, "path": ["a", "b"]}},
        Pair(x, y),
        Record(x, {"label": y, "n": 3}),
        wellfed.SeededBatch((x, y), (1, 2)),
    ]
    got = list(to_device(batches, "cpu"))
    assert torch.equal(got[0], x)
    assert type(got[1]) is tuple
    assert torch.equal(got[1][1], y)
    assert type(got[2]) is list
    assert got[2][1][1] == "s"
    assert got[2][2] == 7
    assert got[3]["nested"]["path"] == ["a", "b"]
    assert torch.equal(got[3]["nested"]["label"], y)
    assert isinstance(got[4], Pair)
    assert torch.equal(got[4].image, x)
    assert isinstance(got[5], Record)
    assert got[5].name == "r"
    assert got[5].meta["n"] == 3
    assert isinstance(got[6], wellfed.SeededBatch)
    assert got[6].seeds == (1, 2)


def test_transform_gets_the_whole_batch_under_no_grad() -> None:
    seen: list[tuple[Any, bool]] = []

    def fn(batch: Any) -> Any:
        seen.append((batch, torch.is_grad_enabled()))
        return batch["image"] * 2

    out = list(to_device([{"image": torch.ones(2, 2)}] * 3, "cpu", transform=fn))
    assert len(out) == 3
    assert torch.equal(out[0], torch.full((2, 2), 2.0))
    assert [type(b) for b, _ in seen] == [dict] * 3
    assert not any(grad for _, grad in seen)


def test_module_transform_output_trains_a_model() -> None:
    """no_grad, not inference_mode: a training model can save the outputs for backward."""
    model = RecordingModel()
    images = [_images(4, 8, 8, seed=i) for i in range(3)]
    net = torch.nn.Conv2d(3, 2, 3)
    batches = list(to_device(images, "cpu", transform=model))
    assert [c[2] for c in model.calls] == [4, 4, 4]  # once per batch, the whole batch
    assert not any(c[3] for c in model.calls)
    for y in batches:
        assert not y.requires_grad
        assert not y.is_inference()
        net(y).sum().backward()  # inference tensors would raise here
    assert net.weight.grad is not None


class _Counted:
    """An iterable of 10 one-element batches that counts how many were taken."""

    def __init__(self) -> None:
        self.pulled = 0

    def __iter__(self) -> Any:
        for i in range(10):
            self.pulled += 1
            yield torch.tensor([i])


@pytest.mark.parametrize("depth", [0, 1, 2, 4])
def test_depth_is_how_many_batches_are_taken_ahead(depth: int) -> None:
    source = _Counted()
    it = iter(to_device(source, "cpu", depth=depth))
    assert int(next(it)) == 0
    assert source.pulled == depth + 1
    assert [int(b) for b in it] == list(range(1, 10))


# --- what the wrapped loader has -------------------------------------------------------------


def test_len_set_epoch_and_attributes_are_the_loaders() -> None:
    loader = _seeded()
    dev = to_device(loader, "cpu")
    assert len(dev) == len(loader) == 3
    assert dev.dataset is loader.dataset
    assert dev.batch_size == 8
    dev.set_epoch(4)
    assert loader.state_dict()["epoch"] == 4
    first = [b[1].tolist() for b in dev]
    loader.set_epoch(4)
    assert first == [b[1].tolist() for b in loader]
    plain = to_device(DataLoader(ImagesDataset(8), batch_size=4), "cpu")
    with pytest.raises(AttributeError, match="has no set_epoch method"):
        plain.set_epoch(0)
    with pytest.raises(TypeError):
        len(to_device(iter([1, 2]), "cpu"))


@pytest.mark.parametrize("depth", [0, 2, 5])
@pytest.mark.parametrize("stop", [1, 2, 3])
def test_state_dict_counts_only_delivered_batches(depth: int, stop: int) -> None:
    """Resume conformance through to_device: no batch skipped or repeated, this epoch and next."""
    n, batch = 30, 4  # 8 batches, the last one short
    whole = [b[1].tolist() for b in _seeded(n, batch)]
    nxt = _seeded(n, batch)
    nxt.set_epoch(1)
    following = [b[1].tolist() for b in nxt]
    dev = to_device(_seeded(n, batch), "cpu", depth=depth)
    it = iter(dev)
    seen = [next(it)[1].tolist() for _ in range(stop)]
    state = dev.state_dict()
    assert state["epoch"] == 0
    assert state["batches_done"] == stop
    del it
    fresh = to_device(_seeded(n, batch), "cpu", depth=depth)
    fresh.load_state_dict(state)
    rest = [b[1].tolist() for b in fresh]
    assert seen + rest == whole
    assert fresh.state_dict()["epoch"] == 1
    assert [b[1].tolist() for b in fresh] == following


def test_state_dict_at_the_end_of_an_epoch_is_the_next_epoch() -> None:
    dev = to_device(_seeded(), "cpu", depth=3)
    assert len(list(dev)) == 3
    state = dev.state_dict()
    assert (state["epoch"], state["batches_done"]) == (1, 0)


class _OtherStateful:
    """A loader with its own state format (as torchdata's StatefulDataLoader has)."""

    def __init__(self) -> None:
        self.done = 0

    def __iter__(self) -> Any:
        for i in range(6):
            self.done += 1
            yield torch.tensor([i])

    def state_dict(self) -> dict[str, Any]:
        return {"done": self.done}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.done = state["done"]


def test_state_dict_of_another_format_with_batches_in_flight_raises() -> None:
    dev = to_device(_OtherStateful(), "cpu", depth=2)
    it = iter(dev)
    next(it)
    with pytest.raises(StateError, match="not yet delivered") as info:
        dev.state_dict()
    assert info.value.code == "WF702"
    assert info.value.value == 2
    assert to_device(_OtherStateful(), "cpu", depth=0).state_dict() == {"done": 0}
    list(it)
    assert dev.state_dict() == {"done": 6}  # nothing in flight: the loader's own


def test_state_dict_of_an_unseeded_loader_raises_the_loaders_error() -> None:
    dev = to_device(wellfed.create_dataloader(ImagesDataset(8), batch_size=4, num_workers=0), "cpu")
    next(iter(dev))
    with pytest.raises(StateError) as info:
        dev.state_dict()
    assert info.value.code == "WF208"


@pytest.mark.parametrize(
    ("kwargs", "attribute"),
    [
        ({"device": "nonsense"}, "device"),
        ({"device": "cpu", "depth": -1}, "depth"),
        ({"device": "cpu", "depth": True}, "depth"),
        ({"device": "cpu", "transform": 3}, "transform"),
    ],
)
def test_invalid_options(kwargs: dict[str, Any], attribute: str) -> None:
    with pytest.raises(ConfigError) as info:
        to_device([torch.zeros(1)], **kwargs)
    assert info.value.code == "WF701"
    assert info.value.attribute == attribute


def test_not_iterable_and_cuda_without_cuda() -> None:
    with pytest.raises(ConfigError, match="is not iterable"):
        to_device(3, "cpu")
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.raises(ConfigError, match=r"torch.cuda.is_available\(\) is False") as info:
        to_device([torch.zeros(1)], "cuda")
    assert info.value.code == "WF701"


# --- device transforms -----------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(CROP_PIPELINES))
def test_batched_transform_equals_per_sample_reference(name: str) -> None:
    transform = BatchTransform(CROP_PIPELINES[name]())
    images = _images(16)
    labels = torch.arange(16)
    seeds = tuple(wellfed.sample_seed(3, 0, i) for i in range(16))
    out, got_labels = transform(wellfed.SeededBatch((images, labels), seeds))
    assert got_labels is labels
    expected = reference_batch(transform, images, seeds)
    assert out.dtype == torch.float32
    assert out.shape == expected.shape
    assert torch.equal(out, expected)


def test_flip_and_crop_draw_per_sample() -> None:
    flip = RandomHorizontalFlip()
    draws = [flip.params(wellfed.sample_seed(0, 0, i)) for i in range(2000)]
    assert 0.45 < sum(draws) / len(draws) < 0.55
    crop = RandomResizedCrop(8)
    boxes = {crop.params(wellfed.sample_seed(0, 0, i), 30, 40) for i in range(300)}
    assert len(boxes) > 250  # distinct per sample
    for top, left, h, w in boxes:
        assert top >= 0
        assert top + h <= 30
        assert left >= 0
        assert left + w <= 40
        assert 0.08 * 1200 * 0.9 <= h * w <= 1200
    assert all(0.0 <= uniform(s, j) < 1.0 for s in (0, 2**64 - 1) for j in range(5))


def test_crop_falls_back_to_the_central_crop() -> None:
    """torchvision's rule after 10 failed attempts: the largest crop in the ratio range."""
    crop = RandomResizedCrop(8, scale=(2.0, 3.0))  # never fits: always the fallback
    assert crop.params(123, 10, 40) == (0, 13, 10, 13)  # too wide: ratio 4/3 -> w = 13
    assert crop.params(123, 40, 10) == (13, 0, 13, 10)  # too tall: ratio 3/4 -> h = 13
    assert crop.params(123, 20, 20) == (0, 0, 20, 20)


def test_step_seeds_do_not_depend_on_deterministic_steps() -> None:
    a = BatchTransform([RandomHorizontalFlip(), RandomResizedCrop(4)])
    b = BatchTransform(
        [ToFloat(), RandomHorizontalFlip(), Normalize([0.0], [1.0]), RandomResizedCrop(4)]
    )
    assert [s for s in b.step_seeds(9) if s is not None] == list(a.step_seeds(9))
    two = BatchTransform([RandomHorizontalFlip(), RandomHorizontalFlip()])
    first, second = two.step_seeds(9)
    assert first != second  # the second flip of a kind has its own stream
    assert not BatchTransform([ToFloat()]).random


def test_bare_batch_draws_seeds_from_the_global_generator() -> None:
    transform = BatchTransform([RandomHorizontalFlip()], key=None)
    images = _images(32)
    torch.manual_seed(0)
    a = transform(images)
    torch.manual_seed(0)
    b = transform(images)
    assert torch.equal(a, b)
    assert not torch.equal(a, images)


def test_keys_for_dicts_namedtuples_and_dataclasses() -> None:
    images = _images(4)
    t = BatchTransform([ToFloat()], key="image")
    out = t({"image": images, "label": 1})
    assert out["image"].dtype == torch.float32
    assert out["label"] == 1
    assert t(Pair(images, 2)).image.dtype == torch.float32
    assert t(Record(images, {})).image.dtype == torch.float32
    assert BatchTransform([ToFloat()], key=1)(["x", images])[1].dtype == torch.float32


@pytest.mark.parametrize(
    ("transform", "batch", "match"),
    [
        (BatchTransform([ToFloat()], key="image"), (torch.zeros(2, 3, 4, 4),), "no images at key"),
        (BatchTransform([ToFloat()], key=0), (torch.zeros(3, 4, 4),), "got a tensor of shape"),
        (
            BatchTransform([Normalize(IMAGENET_MEAN, IMAGENET_STD)]),
            (torch.zeros(2, 3, 4, 4, dtype=torch.uint8),),
            "Put ToFloat",
        ),
        (
            BatchTransform([RandomResizedCrop(2)]),
            (torch.zeros(2, 3, 4, 4, dtype=torch.uint8),),
            "Put ToFloat",
        ),
        (
            BatchTransform([RandomHorizontalFlip()]),
            wellfed.SeededBatch((torch.zeros(2, 3, 4, 4),), (1, 2, 3)),
            "3 sample seed",
        ),
    ],
)
def test_transform_errors_name_the_fix(transform: BatchTransform, batch: Any, match: str) -> None:
    with pytest.raises(ConfigError, match=match) as info:
        transform(batch)
    assert info.value.code == "WF703"


def test_invalid_transform_options() -> None:
    for make in (
        lambda: BatchTransform([]),
        lambda: BatchTransform([1]),
        lambda: Normalize([0.5], [0.0]),
        lambda: Normalize([0.5, 0.5], [1.0]),
        lambda: RandomHorizontalFlip(1.5),
        lambda: RandomResizedCrop(0),
        lambda: RandomResizedCrop(4, scale=(0.9, 0.1)),
    ):
        with pytest.raises(ConfigError) as info:
            make()
        assert info.value.code == "WF701"


def test_normalize_leaves_its_input_alone() -> None:
    x = torch.rand(2, 3, 4, 4)
    before = x.clone()
    Normalize(IMAGENET_MEAN, IMAGENET_STD)(x)
    assert torch.equal(x, before)
    assert math.isclose(float(ToFloat()(torch.full((1, 1, 1, 1), 255, dtype=torch.uint8))), 1.0)


# --- seeds from the loader -------------------------------------------------------------------


def test_sample_seeds_are_the_loaders_per_sample_seeds() -> None:
    loader = _seeded(sample_seeds=True)
    for epoch in range(2):
        for batch in loader:
            assert isinstance(batch, wellfed.SeededBatch)
            _, index = batch.batch
            assert batch.seeds == tuple(wellfed.sample_seed(5, epoch, int(i)) for i in index)


def test_sample_seeds_with_batched_fetch_and_threads() -> None:
    ds = torch.utils.data.TensorDataset(torch.arange(12))
    for kw in ({"batched_fetch": True}, {"num_threads": 2}):
        loader = wellfed.create_dataloader(
            ds, batch_size=4, seed=1, num_workers=0, sample_seeds=True, **kw
        )
        batches = list(loader)
        assert all(isinstance(b, wellfed.SeededBatch) for b in batches)
        assert [b.seeds for b in batches] == [
            tuple(wellfed.sample_seed(1, 0, int(i)) for i in b.batch[0]) for b in batches
        ]


@pytest.mark.parametrize(
    ("kwargs", "code"),
    [({"seed": 0, "sample_seeds": "yes"}, "WF202"), ({"sample_seeds": True}, "WF203")],
)
def test_sample_seeds_option_errors(kwargs: dict[str, Any], code: str) -> None:
    with pytest.raises(ConfigError) as info:
        wellfed.create_dataloader(ImagesDataset(8), batch_size=4, num_workers=0, **kwargs)
    assert info.value.code == code
    assert info.value.attribute == "sample_seeds"
    with pytest.raises(ConfigError, match="batch_size=None") as info:
        wellfed.SeededDataLoader(ImagesDataset(8), batch_size=None, seed=0, sample_seeds=True)
    assert info.value.code == "WF203"


# --- the doctor's suggestion -----------------------------------------------------------------


def test_doctor_suggests_the_uint8_split_for_normalised_float_images() -> None:
    from wellfed.workloads import PHOTOS_DIR, ImageFolderDataset, PillowTrainTransform

    float_ds = ImageFolderDataset(PHOTOS_DIR, PillowTrainTransform(224))
    report = wellfed.diagnose(float_ds, loader_kwargs={"num_workers": 2}, live=False)
    (f,) = [f for f in report.findings if f.code == "WF125"]
    assert f.severity == "info"
    assert f.category == "worker-config"
    assert f.path == "dataset.transform"
    assert "602,112 B" in f.message
    assert "sample_seeds=True" in f.fix
    assert "wellfed.to_device(loader, 'cuda', transform=wellfed.BatchTransform([" in f.fix
    assert "device_train_transform()" in f.fix
    assert report.is_clean
    split = workloads.builtin_dataset(output="uint8")
    for ds, kwargs in ((split, {"num_workers": 2}), (float_ds, {"num_workers": 0})):
        codes = {f.code for f in wellfed.diagnose(ds, loader_kwargs=kwargs, live=False).findings}
        assert "WF125" not in codes


def test_builtin_dataset_output_option() -> None:
    ds = workloads.builtin_dataset(output="uint8")
    assert type(ds.transform).__name__ == "PillowCropTransform"
    with pytest.raises(ConfigError) as info:
        workloads.builtin_dataset(output="float16")
    assert info.value.code == "WF010"
    spec = workloads.builtin_spec(output="uint8")
    assert "split form" in spec.description
