"""The decode form with worker processes, on the real photos (issue 17 item 4): workers send
each file's bytes, the main process decodes (Pillow on the CPU), crops, flips, normalises per
batch through to_device; bit-identical to the same steps applied to each sample alone, and
the same batches for 0 and 2 workers. Skips without ../shared/data/hymenoptera_data."""

from __future__ import annotations

import multiprocessing
from pathlib import Path
from typing import Any

import pytest
import torch

import wellfed
from tests.helpers_device import IndexLabelled, reference_one
from wellfed.device import (
    BatchTransform,
    DecodeImages,
    Normalize,
    RandomHorizontalFlip,
    RandomResizedCrop,
    ToFloat,
    collate_encoded,
    to_device,
)
from wellfed.workloads import IMAGENET_MEAN, IMAGENET_STD, builtin_dataset

pytestmark = [pytest.mark.workers, pytest.mark.timeout(180)]

SEED = 11
METHODS = [m for m in ("fork", "spawn") if m in multiprocessing.get_all_start_methods()]


def _photos(hymenoptera: Path) -> IndexLabelled:
    """20 photos of the train split, the .jpeg among them: (file bytes, sample index)."""
    ds = builtin_dataset(hymenoptera / "train", output="encoded")
    jpeg = next(i for i, (p, _) in enumerate(ds.samples) if p.endswith(".jpeg"))
    step = len(ds) // 19
    indices = sorted({jpeg, *range(0, len(ds), step)})[:20]
    assert jpeg in indices
    return IndexLabelled(ds, indices)


def _transform() -> BatchTransform:
    return BatchTransform(
        [
            DecodeImages("cpu"),
            ToFloat(),
            RandomResizedCrop(48),
            RandomHorizontalFlip(),
            Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ],
        key=0,
    )


def _run(
    ds: Any, num_workers: int, method: str, transform: BatchTransform
) -> list[tuple[Any, Any]]:
    kw: dict[str, Any] = {}
    if num_workers:
        kw.update(multiprocessing_context=method, persistent_workers=False, timeout=60)
    loader = wellfed.create_dataloader(
        ds,
        batch_size=8,
        shuffle=True,
        seed=SEED,
        num_workers=num_workers,
        sample_seeds=True,
        collate_fn=collate_encoded,
        **kw,
    )
    return list(to_device(loader, "cpu", transform=transform))


@pytest.mark.parametrize("method", METHODS)
def test_decode_form_equals_the_per_sample_steps_for_0_and_2_workers(
    hymenoptera: Path, method: str
) -> None:
    ds = _photos(hymenoptera)
    transform = _transform()
    runs = {n: _run(ds, n, method, transform) for n in (0, 2)}
    assert [len(r) for r in runs.values()] == [3, 3]
    for (images, index), (images2, index2) in zip(runs[0], runs[2], strict=True):
        assert torch.equal(index, index2)
        assert torch.equal(images, images2)  # reproducible whatever the worker count
        assert images.shape == (len(index), 3, 48, 48)
        assert images.dtype == torch.float32
    seen = []
    for images, index in runs[2]:
        for row, i in enumerate(index.tolist()):
            data, _ = ds[i]
            seed = wellfed.sample_seed(SEED, 0, i)
            assert torch.equal(images[row], reference_one(transform, data, seed)), i
            seen.append(i)
    assert sorted(seen) == list(range(len(ds)))
