"""Datasets for the stale-worker-state probe (WF111), after note 000's real project.

Module level, so spawn and forkserver workers can import them. Each holds a few samples.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

N = 16


class TaskValuesDataset(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Note 000's pattern: ``update_task`` (public) calls ``_update_linear``, which replaces
    ``self.values`` with a new tensor (the targets of the next task)."""

    def __init__(self, n: int = N) -> None:
        self.x = torch.arange(n, dtype=torch.float32)
        self.task = 0
        self._update_linear()

    def _update_linear(self) -> None:
        w = torch.Generator().manual_seed(self.task)
        self.values = self.x * torch.rand(1, generator=w) + self.task

    def update_task(self) -> None:
        self.task += 1
        self._update_linear()

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[i], self.values[i]


class InPlaceDriftDataset(Dataset[torch.Tensor]):
    """Note 000's default mode: ``drift`` edits the ``values`` tensor in place (``+=``)."""

    def __init__(self, n: int = N) -> None:
        self.values = torch.zeros(n)

    def drift(self) -> None:
        self.values += 1

    def __len__(self) -> int:
        return len(self.values)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.values[i]


class ArrayDriftDataset(Dataset[float]):
    """The same in-place drift on a numpy array: pickled as a copy for spawn workers."""

    def __init__(self, n: int = N) -> None:
        self.values = np.zeros(n)

    def drift(self) -> None:
        self.values += 1

    def __len__(self) -> int:
        return len(self.values)

    def __getitem__(self, i: int) -> float:
        return float(self.values[i])


class LabelsDataset(Dataset[tuple[int, int]]):
    """Self-training: ``set_pseudo_labels(labels)`` needs an argument, so the probe assigns a
    changed copy of the list itself."""

    def __init__(self, n: int = N) -> None:
        self.pseudo_labels = [0] * n

    def set_pseudo_labels(self, labels: list[int]) -> None:
        self.pseudo_labels = list(labels)

    def __len__(self) -> int:
        return len(self.pseudo_labels)

    def __getitem__(self, i: int) -> tuple[int, int]:
        return i, self.pseudo_labels[i]


class LoggingTaskDataset(Dataset[torch.Tensor]):
    """``next_task`` writes a line to a log file before it replaces ``values``: the probe
    must not call it (the file would appear), but change a copy of ``values`` itself."""

    def __init__(self, log_path: str, n: int = N) -> None:
        self.log_path = log_path
        self.values = torch.zeros(n)

    def next_task(self) -> None:
        with open(self.log_path, "a") as f:
            f.write("next task\n")
        self.values = self.values + 1

    def __len__(self) -> int:
        return len(self.values)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.values[i]


def make_task_loader() -> DataLoader[tuple[torch.Tensor, torch.Tensor]]:
    """A loader factory, as note 000's project calls per task: a new loader (and dataset)."""
    return DataLoader(
        TaskValuesDataset(), batch_size=4, num_workers=2, persistent_workers=True, timeout=60
    )


_CACHED: list[DataLoader[tuple[torch.Tensor, torch.Tensor]]] = []


def cached_task_loader() -> DataLoader[tuple[torch.Tensor, torch.Tensor]]:
    """A factory that returns the same loader every call: its workers outlive each task."""
    if not _CACHED:
        _CACHED.append(make_task_loader())
    return _CACHED[0]


#: How often ``counting_task_loader`` ran in this process.
CALLS: list[int] = []


def counting_task_loader() -> DataLoader[tuple[torch.Tensor, torch.Tensor]]:
    """A per-call factory that counts its calls in the process it runs in."""
    CALLS.append(1)
    return make_task_loader()


def slow_after_first_loader() -> DataLoader[tuple[torch.Tensor, torch.Tensor]]:
    """A factory whose every call after the first (the TARGET's resolution) hangs 60 s."""
    import time

    if CALLS:
        time.sleep(60)
    CALLS.append(1)
    return make_task_loader()
