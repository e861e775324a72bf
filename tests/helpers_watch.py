"""Datasets for the watch tests (module level, so spawn can import them)."""

from __future__ import annotations

import time

import torch
from torch.utils.data import Dataset


class SleepyDataset(Dataset):
    """n samples; each ``__getitem__`` sleeps ``ms_per_sample`` milliseconds (a known load time).

    Sample i is (a float tensor of 4 values i, label i).
    """

    def __init__(self, n: int = 64, ms_per_sample: float = 2.0) -> None:
        self.n = n
        self.ms_per_sample = ms_per_sample

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        time.sleep(self.ms_per_sample / 1e3)
        return torch.full((4,), float(index)), index


class WithModel(Dataset):
    """A dataset that runs a small model in ``__getitem__`` (note 001's pattern)."""

    def __init__(self, n: int = 32) -> None:
        self.n = n
        self.model = torch.nn.Linear(4, 4)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> torch.Tensor:
        with torch.no_grad():
            return self.model(torch.full((4,), float(index)))


class SleepyDicts(SleepyDataset):
    """``SleepyDataset`` with dict samples, as Hugging Face models take them."""

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:  # type: ignore[override]
        x, _ = super().__getitem__(index)
        return {"x": x, "labels": x.sum().reshape(1)}


class DictRegressor(torch.nn.Module):
    """The smallest model ``transformers.Trainer`` trains: returns {"loss": ...}."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(4, 1)

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"loss": torch.nn.functional.mse_loss(self.linear(x), labels)}


class MultiScaleDataset(Dataset):
    """Multi-scale training's pattern: ``__getitem__`` reads ``img_size``, which the training
    loop assigns from outside the class (``dataset.img_size = s``); ``seen`` is a counter the
    loop keeps on the dataset and worker code never reads.

    Sample i is a float tensor of 2 values, both ``img_size``.
    """

    def __init__(self, n: int = 48, img_size: int = 416) -> None:
        self.n = n
        self.img_size = img_size
        self.seen = 0

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.full((2,), float(self.img_size))
