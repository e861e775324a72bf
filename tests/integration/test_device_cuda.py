"""to_device on a CUDA device: the copy overlaps the step, memory stays safe whatever the
depth, device transforms on the GPU equal the CPU's. Marked gpu: skipped without CUDA.

Never asserts absolute speed: the overlap test compares depth=2 with depth=0 on the same
batches and the same step, in one run.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import pytest
import torch

import wellfed
from tests.helpers_device import ImagesDataset, RecordingModel
from wellfed.device import (
    BatchTransform,
    Normalize,
    RandomHorizontalFlip,
    RandomResizedCrop,
    ToFloat,
    to_device,
)
from wellfed.workloads import IMAGENET_MEAN, IMAGENET_STD

pytestmark = [pytest.mark.gpu, pytest.mark.timeout(300)]

MB = 1 << 20


def _cycles_per_ms() -> float:
    """GPU clock cycles per millisecond of ``torch.cuda._sleep``, measured with events."""
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    torch.cuda._sleep(10_000_000)
    end.record()
    end.synchronize()
    return 10_000_000 / start.elapsed_time(end)


def _host_batches(n: int, nbytes: int, *, pinned: bool) -> list[torch.Tensor]:
    """n host batches of float32, batch i filled with the value i."""
    out = []
    for i in range(n):
        t = torch.full((nbytes // 4,), float(i), dtype=torch.float32)
        out.append(t.pin_memory() if pinned else t)
    return out


def _copy_ms(batch: torch.Tensor) -> float:
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(3):
        batch.to("cuda", non_blocking=True)
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / 3 * 1e3


def _epoch_s(batches: list[torch.Tensor], depth: int, step_cycles: int) -> float:
    """Wall seconds for one pass: each step sleeps on the GPU, then syncs (as .item() does)."""
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for b in to_device(batches, "cuda", depth=depth):
        torch.cuda._sleep(step_cycles)
        float(b[:1].sum())  # a host sync at the end of the step, as loss.item() is
    torch.cuda.synchronize()
    return time.perf_counter() - t0


def test_copy_is_hidden_behind_the_step() -> None:
    """With depth=2 the next batches copy on the side stream while the step runs: the pass
    takes about max(copy, step) per batch; with depth=0, copy + step."""
    batches = _host_batches(12, 256 * MB, pinned=True)
    copy_ms = _copy_ms(batches[0])
    step_cycles = int(copy_ms * _cycles_per_ms())  # a step as long as the copy
    _epoch_s(batches[:3], 2, step_cycles)  # warm-up: stream, allocator, host allocator
    serial = min(_epoch_s(batches, 0, step_cycles) for _ in range(2))
    overlapped = min(_epoch_s(batches, 2, step_cycles) for _ in range(2))
    assert overlapped < 0.8 * serial, (
        f"copy {copy_ms:.1f} ms/batch, depth=0 {serial:.3f} s, depth=2 {overlapped:.3f} s"
    )


@pytest.mark.parametrize("depth", [0, 1, 2, 4])
@pytest.mark.parametrize("pinned", [True, False])
@pytest.mark.parametrize("own_stream", [False, True])
def test_memory_stays_safe_across_depth(depth: int, pinned: bool, own_stream: bool) -> None:
    """A slow step reads each batch after the loop dropped it; later copies (into memory the
    allocator could hand out again) must not overwrite it: record_stream keeps it."""
    n, nbytes = 10, 16 * MB
    batches = _host_batches(n, nbytes, pinned=pinned)
    sleep = int(2 * _cycles_per_ms())  # 2 ms per step: the copies run ahead of the reads
    stream = torch.cuda.Stream() if own_stream else torch.cuda.current_stream()
    sums = []
    with torch.cuda.stream(stream):
        for b in to_device(batches, "cuda", depth=depth):
            torch.cuda._sleep(sleep)
            sums.append(b.sum())  # queued behind the sleep; `b` is dropped next iteration
            del b
    torch.cuda.synchronize()
    expected = [float(i) * (nbytes // 4) for i in range(n)]
    assert [float(s) for s in sums] == expected


def test_unpinned_batches_are_pinned_and_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    batches = _host_batches(4, MB, pinned=False)
    with caplog.at_level(logging.INFO, logger="wellfed.device"):
        out = [b.clone() for b in to_device(batches, "cuda")]
    assert [float(b[0]) for b in out] == [0.0, 1.0, 2.0, 3.0]
    notes = [r for r in caplog.records if "not in pinned memory" in r.getMessage()]
    assert len(notes) == 1


def _pipeline(antialias: bool) -> BatchTransform:
    return BatchTransform(
        [
            RandomHorizontalFlip(),
            ToFloat(),
            RandomResizedCrop(32, antialias=antialias),
            Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


def _seeded_batch(b: int = 16) -> Any:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (b, 3, 48, 64), dtype=torch.uint8, generator=g)
    seeds = tuple(wellfed.sample_seed(1, 0, i) for i in range(b))
    return wellfed.SeededBatch((images, torch.arange(b)), seeds)


def test_flip_and_normalize_on_cuda_are_bit_identical_to_the_cpu() -> None:
    """Flip, the uint8 -> float division and the normalisation are exact IEEE float32 ops."""
    transform = BatchTransform(
        [RandomHorizontalFlip(), ToFloat(), Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    )
    batch = _seeded_batch()
    cpu, _ = next(iter(to_device([batch], "cpu", transform=transform)))
    gpu, labels = next(iter(to_device([batch], "cuda", transform=transform)))
    assert gpu.is_cuda
    assert labels.is_cuda
    assert torch.equal(gpu.cpu(), cpu)


@pytest.mark.parametrize("antialias", [True, False])
def test_crop_on_cuda_matches_the_cpu(antialias: bool) -> None:
    """The same crops (drawn on the host); the resampling kernels round differently."""
    batch = _seeded_batch()
    transform = _pipeline(antialias)
    cpu, _ = transform(batch)
    gpu, _ = next(iter(to_device([batch], "cuda", transform=transform)))
    assert gpu.shape == cpu.shape == (16, 3, 32, 32)
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-4, rtol=1e-4)


def test_seeded_workers_pinned_batches_to_cuda_with_a_model() -> None:
    """The whole path: 2 workers, pin_memory=True, SeededBatch, device transform, a model."""
    ds = ImagesDataset(24)
    model = RecordingModel().cuda().eval()
    loader = wellfed.create_dataloader(
        ds,
        batch_size=8,
        seed=3,
        num_workers=2,
        pin_memory=True,
        persistent_workers=False,
        timeout=60,
        sample_seeds=True,
    )
    flip = BatchTransform([RandomHorizontalFlip()])
    gpu = [(x.cpu(), y.cpu()) for x, y in to_device(loader, "cuda", transform=flip)]
    loader.set_epoch(0)  # the same epoch again, on the CPU
    cpu = list(to_device(loader, "cpu", transform=flip))
    assert len(gpu) == len(cpu) == 3
    for (gx, gy), (cx, cy) in zip(gpu, cpu, strict=True):
        assert torch.equal(gx, cx)
        assert torch.equal(gy, cy)
    out = list(to_device(loader, "cuda", transform=BatchTransform([model], key=0)))
    assert all(x.is_cuda for x, _ in out)
    assert [c[2] for c in model.calls] == [8, 8, 8]
