"""to_device with worker processes: device transforms bit-identical whatever the worker count,
equal to the per-sample reference; a Module transform per batch in the main process; the
built-in workload's uint8 split; no worker left behind."""

from __future__ import annotations

import gc
import multiprocessing
import os
import threading
import time
from typing import Any

import psutil
import pytest
import torch

import wellfed
from tests.helpers_device import (
    ImagesDataset,
    PidImagesDataset,
    RecordingModel,
    reference_batch,
    reference_one,
)
from wellfed.device import (
    BatchTransform,
    Normalize,
    RandomHorizontalFlip,
    RandomResizedCrop,
    ToFloat,
    to_device,
)
from wellfed.workloads import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    PHOTOS_DIR,
    ImageFolderDataset,
    PillowCropTransform,
    PillowTrainTransform,
    device_train_transform,
)

pytestmark = [pytest.mark.workers, pytest.mark.timeout(180)]

SEED = 7
# (num_workers, start method): 0 and 2 workers, fork and spawn where the platform has them
WORKERS = [(0, None)] + [
    (2, m) for m in ("fork", "spawn") if m in multiprocessing.get_all_start_methods()
]


def _loader(
    ds: Any,
    num_workers: int,
    method: str | None,
    batch_size: int = 8,
    sample_seeds: bool = True,
    **kw: Any,
) -> Any:
    if num_workers:
        kw.update(multiprocessing_context=method, persistent_workers=False, timeout=60)
    return wellfed.create_dataloader(
        ds,
        batch_size=batch_size,
        shuffle=True,
        seed=SEED,
        num_workers=num_workers,
        sample_seeds=sample_seeds,
        **kw,
    )


def _augment() -> BatchTransform:
    return BatchTransform(
        [
            RandomHorizontalFlip(),
            ToFloat(),
            RandomResizedCrop(16),
            Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


@pytest.mark.parametrize(("num_workers", "method"), WORKERS)
def test_device_transforms_match_the_per_sample_reference(
    num_workers: int, method: str | None
) -> None:
    """Two epochs through to_device(cpu) equal the steps applied to each sample alone, on the
    CPU, with the sample seeds sample_seed(SEED, epoch, index): so equal for 0 and 2 workers."""
    ds = ImagesDataset(24)
    transform = _augment()
    dev = to_device(_loader(ds, num_workers, method), "cpu", transform=transform)
    for epoch in range(2):
        batches = list(dev)
        assert len(batches) == 3
        for images, index in batches:
            raw = torch.stack([ds[int(i)][0] for i in index])
            seeds = [wellfed.sample_seed(SEED, epoch, int(i)) for i in index]
            assert torch.equal(images, reference_batch(transform, raw, seeds))


def test_module_transform_runs_per_batch_in_the_main_process() -> None:
    """Note 001's fix: workers load, the model runs once per batch in the main process."""
    model = RecordingModel()
    loader = wellfed.create_dataloader(
        PidImagesDataset(20),
        batch_size=8,
        num_workers=2,
        persistent_workers=False,
        timeout=60,
    )
    out = list(to_device(loader, "cpu", transform=BatchTransform([model], key=0)))
    main, thread = os.getpid(), threading.get_ident()
    assert [o[0].shape for o in out] == [(8, 3, 20, 28), (8, 3, 20, 28), (4, 3, 20, 28)]
    assert [(c[0], c[1], c[2]) for c in model.calls] == [(main, thread, 8)] * 2 + [
        (main, thread, 4)
    ]
    assert not any(c[3] for c in model.calls)  # under no_grad
    loaders = {int(p) for _, pids in out for p in pids}
    assert main not in loaders
    assert len(loaders) == 2


@pytest.mark.parametrize(("num_workers", "method"), WORKERS[:2])
def test_builtin_split_form_equals_the_float_form_up_to_the_flip(
    num_workers: int, method: str | None
) -> None:
    """Workers crop to uint8, the device flips and normalises: the same crops and the same
    float32 arithmetic as the float form (PillowTrainTransform), so each sample is the float
    form's, or its mirror image where the two forms' flip draws differ."""
    split_ds = ImageFolderDataset(PHOTOS_DIR, PillowCropTransform(224))
    float_ds = ImageFolderDataset(PHOTOS_DIR, PillowTrainTransform(224))
    transform = device_train_transform()
    raw = [b for b in _loader(split_ds, 0, None, batch_size=4)]  # the uint8 batches
    split = list(to_device(_loader(split_ds, num_workers, method, 4), "cpu", transform=transform))
    floats = list(_loader(float_ds, num_workers, method, 4, sample_seeds=False))
    assert len(split) == len(floats) == len(raw) == 3
    flips = 0
    for (images, labels), (f_images, f_labels), r in zip(split, floats, raw, strict=True):
        assert torch.equal(labels, f_labels)
        assert images.dtype == torch.float32
        assert r.batch[0].dtype == torch.uint8  # 1 byte per value crossed from the workers
        for i in range(images.shape[0]):
            assert torch.equal(images[i], reference_one(transform, r.batch[0][i], r.seeds[i]))
            same = torch.equal(images[i], f_images[i])
            assert same or torch.equal(images[i], f_images[i].flip(-1))
            flips += not same
    assert 0 < flips < 10  # the flip decisions are drawn, not all equal


def test_breaking_out_leaves_no_worker_behind() -> None:
    loader = wellfed.create_dataloader(
        ImagesDataset(64), batch_size=4, num_workers=2, persistent_workers=False, timeout=60
    )
    me = psutil.Process()
    before = {p.pid for p in me.children(recursive=True)}
    workers: set[int] = set()
    for _ in to_device(loader, "cpu", depth=3):
        workers = {p.pid for p in me.children(recursive=True)} - before
        break
    assert len(workers) >= 2
    gc.collect()
    deadline = time.monotonic() + 20
    alive = workers
    while alive and time.monotonic() < deadline:
        time.sleep(0.05)  # polling for exit, not synchronising the test
        alive = {p.pid for p in me.children(recursive=True) if p.status() != "zombie"} & workers
    assert not alive, f"workers outlived the loop: {alive}"


def test_the_loader_driver_stops_the_workers_at_once() -> None:
    """measure.iterate (tune's, the benchmarks' driver) closes a to_device pass like a
    DataLoader's: the wrapped loader's workers are shut down when it ends early."""
    from wellfed.measure import iterate

    loader = wellfed.create_dataloader(
        ImagesDataset(64), batch_size=4, num_workers=2, persistent_workers=False, timeout=60
    )
    me = psutil.Process()
    before = {p.pid for p in me.children(recursive=True)}
    dev = to_device(loader, "cpu")
    it = iter(dev)
    got = list(iterate(_Once(it), max_batches=2))
    assert len(got) == 2
    alive = {p.pid for p in me.children(recursive=True) if p.status() != "zombie"} - before
    assert not alive, f"workers still running after the driver closed the pass: {alive}"
    with pytest.raises(StopIteration):
        next(it)


class _Once:
    """An iterable handing out one given iterator (so the test holds a reference to it)."""

    def __init__(self, it: Any) -> None:
        self.it = it

    def __iter__(self) -> Any:
        return self.it


def _alive_children(before: set[int]) -> set[int]:
    me = psutil.Process()
    return {p.pid for p in me.children(recursive=True) if p.status() != "zombie"} - before


def test_the_driver_stops_persistent_workers_through_to_device() -> None:
    """measure's close path (``stream`` then ``close_loader``, every trial's) stops a wrapped
    loader's persistent workers at once, and a pass stopped early leaves the loader able to
    start new workers (not reuse dead ones)."""
    from wellfed.measure import iterate, stream

    loader = wellfed.create_dataloader(
        ImagesDataset(16), batch_size=4, num_workers=2, persistent_workers=True, timeout=60
    )
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    dev = to_device(loader, "cpu", transform=_augment())
    batches = stream(dev)
    for _ in range(6):  # past one epoch of 4 batches: the workers persist between epochs
        next(batches)
    assert len(_alive_children(before)) >= 2
    batches.close()
    assert loader._iterator is None
    assert not _alive_children(before), "persistent workers outlived the driver's close"
    got = list(iterate(dev, max_batches=2))  # a pass stopped early by the driver
    assert len(got) == 2
    assert loader._iterator is None
    assert not _alive_children(before)
    assert len(list(iterate(dev))) == 4  # new workers, a whole epoch
    assert not _alive_children(before)
