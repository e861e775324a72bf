"""Picklable datasets and modules for the device-side tests (module level, so spawn imports them).

Also the per-sample references: the device transforms written out with plain torch ops, one
sample at a time, from the documented parameter functions, to compare batches against.
"""

from __future__ import annotations

import io
import os
import threading
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from wellfed.device import (
    BatchTransform,
    DecodeImages,
    Normalize,
    RandomHorizontalFlip,
    RandomResizedCrop,
)


class IndexLabelled(Dataset[tuple[Any, int]]):
    """``base[indices[i]]``'s first item with the label ``i``: the sample's own index, so a
    test can rebuild each sample of a batch (the encoded form's bytes, say) by its index."""

    def __init__(self, base: Any, indices: Sequence[int]) -> None:
        self.base = base
        self.indices = list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        return self.base[self.indices[index]][0], index


def pillow_rgb(data: bytes | torch.Tensor) -> torch.Tensor:
    """A file's bytes decoded by Pillow to RGB: uint8 (3, H, W), written out independently."""
    import numpy as np
    from PIL import Image

    raw = data.numpy().tobytes() if isinstance(data, torch.Tensor) else data
    with Image.open(io.BytesIO(raw)) as image:
        array = np.asarray(image.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1)


class ImagesDataset(Dataset[tuple[torch.Tensor, int]]):
    """n uint8 images (3, h, w), image i a pure function of i (its own generator), label i."""

    def __init__(self, n: int = 24, h: int = 20, w: int = 28) -> None:
        self.n, self.h, self.w = n, h, w

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        g = torch.Generator().manual_seed(1000 + index)
        image = torch.randint(0, 256, (3, self.h, self.w), dtype=torch.uint8, generator=g)
        return image, index


class PidImagesDataset(ImagesDataset):
    """As ImagesDataset, with the pid of the process that loaded each sample as the label."""

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:  # type: ignore[override]
        image, _ = super().__getitem__(index)
        return image, os.getpid()


class RecordingModel(nn.Module):
    """A 1x1 convolution that records, per call: pid, thread, batch size, grad mode.

    Stands in for note 001's super-resolution model given as to_device's transform.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)
        self.calls: list[tuple[int, int, int, bool]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append(
            (os.getpid(), threading.get_ident(), int(x.shape[0]), torch.is_grad_enabled())
        )
        return self.conv(x.float() / 255.0)


def reference_one(transform: BatchTransform, image: torch.Tensor, seed: int) -> torch.Tensor:
    """``transform``'s steps on one sample (C, H, W), written out with plain torch ops.

    With ``DecodeImages`` first, ``image`` is the file's bytes (N,), decoded with Pillow.

    The parameters come from the steps' documented functions (``step_seeds``, ``params``);
    the pixel work is the textbook op on the single image, not the batched code path.
    """
    x = image
    seeds = transform.step_seeds(seed)
    for step, s in zip(transform.steps, seeds, strict=True):
        if isinstance(step, DecodeImages):  # x: the file's bytes (N,), uint8
            x = pillow_rgb(x).to(step.device)
        elif isinstance(step, RandomHorizontalFlip):
            assert s is not None
            if step.params(s):
                x = x.flip(-1)
        elif isinstance(step, Normalize):
            mean = torch.tensor(step.mean, dtype=torch.float32).view(-1, 1, 1)
            std = torch.tensor(step.std, dtype=torch.float32).view(-1, 1, 1)
            x = (x - mean) / std
        elif isinstance(step, RandomResizedCrop):
            assert s is not None
            top, left, h, w = step.params(s, x.shape[-2], x.shape[-1])
            if step.antialias:
                x = F.interpolate(
                    x[None, :, top : top + h, left : left + w],
                    size=step.size,
                    mode="bilinear",
                    align_corners=False,
                    antialias=True,
                )[0]
            else:
                grid = step.grid([(top, left, h, w)], x.shape[-2], x.shape[-1], x.device, x.dtype)
                x = F.grid_sample(
                    x[None], grid, mode="bilinear", padding_mode="border", align_corners=False
                )[0]
        elif x.dtype == torch.uint8:  # ToFloat
            x = x.float() / 255.0
    return x


def reference_batch(transform: BatchTransform, images: torch.Tensor, seeds: Any) -> torch.Tensor:
    """``reference_one`` for each sample, stacked."""
    return torch.stack(
        [reference_one(transform, im, s) for im, s in zip(images, seeds, strict=False)]
    )
