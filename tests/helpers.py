"""Picklable toy datasets for tests that spawn workers (module level, so spawn can import them)."""

from __future__ import annotations

import ctypes
import os
import signal
import threading
import time
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, get_worker_info


class SquaresDataset(Dataset):
    """n samples; sample i is a float tensor [i, i*i] and label i."""

    def __init__(self, n: int = 64) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return torch.tensor([float(index), float(index * index)]), index


class BallastDataset(SquaresDataset):
    """SquaresDataset whose every loading process (a worker, or the main process) fills
    ``mib`` MiB of its own memory at its first sample and keeps it: each worker's private
    memory is known."""

    def __init__(self, n: int = 64, mib: int = 64) -> None:
        super().__init__(n)
        self.mib = mib
        self._ballast: torch.Tensor | None = None

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if self._ballast is None:
            self._ballast = torch.ones(self.mib * 2**20, dtype=torch.uint8)  # pages touched
        return super().__getitem__(index)


class FailingDataset(SquaresDataset):
    """Raises a ValueError with a recognisable message at one index."""

    def __init__(self, n: int = 64, fail_at: int = 5) -> None:
        super().__init__(n)
        self.fail_at = fail_at

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if index == self.fail_at:
            raise ValueError(f"sample {index} is corrupt (test)")
        return super().__getitem__(index)


class KilledWorkerDataset(SquaresDataset):
    """In a worker process, the worker kills itself with SIGKILL (as the OOM killer would)."""

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if get_worker_info() is not None and index >= 4:
            os.kill(os.getpid(), signal.SIGKILL)
        return super().__getitem__(index)


class HangingDataset(SquaresDataset):
    """Blocks forever at index >= hang_at (in workers only, unless in_main is True)."""

    def __init__(self, n: int = 64, hang_at: int = 4, in_main: bool = False) -> None:
        super().__init__(n)
        self.hang_at = hang_at
        self.in_main = in_main

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if index >= self.hang_at and (self.in_main or get_worker_info() is not None):
            threading.Event().wait()  # never set: a hang, as a stuck network read would be
        return super().__getitem__(index)


class SignalDataset(SquaresDataset):
    """In a worker process, indices >= ``at`` die by a real signal.

    ``how`` is "segfault" (a real SIGSEGV: native code reads address 0), or the name of a
    signal the worker sends itself ("SIGKILL", as the OOM killer would; "SIGBUS"). With
    ``go_file``, a worker waits (up to 60 s) for that file to exist before it dies, so that a
    test can choose where the main process is when the death lands. The main process never
    dies: ``dataset[i]`` there returns the sample.
    """

    def __init__(
        self, n: int = 32, how: str = "segfault", at: int = 8, go_file: str | None = None
    ) -> None:
        super().__init__(n)
        self.how = how
        self.at = at
        self.go_file = go_file

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if index >= self.at and get_worker_info() is not None:
            if self.go_file is not None:
                deadline = time.monotonic() + 60
                while not os.path.exists(self.go_file) and time.monotonic() < deadline:
                    time.sleep(0.01)  # polling a file the test creates, not a timed wait
            if self.how == "segfault":
                ctypes.string_at(0)  # reads address 0: SIGSEGV
            os.kill(os.getpid(), getattr(signal, self.how))
            threading.Event().wait(10)  # the signal is delivered before this returns
        return super().__getitem__(index)


# Targets for resolve_target and the CLI (tests.helpers:<name>).
squares = SquaresDataset(64)
empty = SquaresDataset(0)
not_a_dataset = 42
squares_loader = DataLoader(
    SquaresDataset(48), batch_size=8, shuffle=True, num_workers=2, drop_last=True
)


def make_squares() -> SquaresDataset:
    """A zero-argument factory."""
    return SquaresDataset(32)


def broken_factory() -> SquaresDataset:
    """A factory that raises, as one whose database is unreachable would."""
    raise RuntimeError("database unreachable (test)")


class TransformedSquares(SquaresDataset):
    """SquaresDataset with a user transform (a lambda in the hazard below)."""

    def __init__(self, n: int, transform: object) -> None:
        super().__init__(n)
        self.transform = transform

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        x, y = super().__getitem__(index)
        return self.transform(x), y  # type: ignore[operator]


# Unpicklable under spawn and forkserver (a lambda); fine under fork.
lambda_squares = TransformedSquares(32, lambda x: x * 2)

# Workers die by signal from the 4th sample on (the doctor's probe fetches 0 x16, then 1..8).
segfaulting = SignalDataset(32, "segfault", at=3)
sigkilled = SignalDataset(32, "SIGKILL", at=3)


def tune_result(**fields: Any) -> Any:
    """A ``wellfed.tune.TuneResult`` for tests that store or render one: the required fields
    filled (this machine's platform without GPUs, no trials, a 1 s run of a 10 s budget), any
    field given by keyword."""
    from wellfed.platform import collect_platform_info
    from wellfed.tune import TuneResult

    base: dict[str, Any] = {
        "platform": collect_platform_info(include_gpus=False),
        "workload": {"description": "test"},
        "trials": (),
        "baseline": None,
        "recommended": None,
        "best": None,
        "ceiling_samples_per_s": None,
        "tuning_time_s": 1.0,
        "budget_s": 10.0,
        "stopped_because": "",
    }
    return TuneResult(**{**base, **fields})
