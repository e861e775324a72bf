"""Module-level targets for the process-fault tests (spawn workers import them by name)."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset, get_worker_info

#: Folder where a hanging worker leaves ``hang-<pid>`` before it blocks, so that a test knows
#: the hang has begun (polling for that file, never sleeping for it).
HANG_DIR_ENV = "WELLFED_TEST_HANG_DIR"


class AnnouncedHang(Dataset):  # type: ignore[type-arg]
    """n samples; in a worker process, sample >= hang_at announces itself, then blocks forever.

    The main process (and thread workers) load every sample, so tune's main-process trial and
    its probes succeed, and only trials and probes with worker processes hang.
    """

    def __init__(self, n: int = 64, hang_at: int = 4) -> None:
        self.n = n
        self.hang_at = hang_at

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if index >= self.hang_at and get_worker_info() is not None:
            folder = os.environ.get(HANG_DIR_ENV)
            if folder:
                Path(folder, f"hang-{os.getpid()}").touch()
            threading.Event().wait()  # never set: a hang, as a stuck network read would be
        return torch.tensor([float(index), float(index * index)]), index


class SlowDataset(Dataset):  # type: ignore[type-arg]
    """n samples, each taking ``delay_s`` seconds (as slow storage would): a float tensor [i]."""

    def __init__(self, n: int, delay_s: float) -> None:
        self.n = n
        self.delay_s = delay_s

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> torch.Tensor:
        time.sleep(self.delay_s)
        return torch.tensor([float(index)])


hang_in_workers = AnnouncedHang()
#: 0.4 s per batch of 8: a main-process trial (at least 12 batches) outlasts a 3 s budget.
slow_loader = DataLoader(SlowDataset(512, 0.05), batch_size=8)
#: 3.2 s per batch of 16: a main-process trial (at least 12 batches) outlasts the budget's
#: bound for a 1 s budget (27 s).
slower_loader = DataLoader(SlowDataset(512, 0.2), batch_size=16)


class PoolInInitDataset(torch.utils.data.Dataset):
    """milesial/Pytorch-UNet's BasicDataset pattern: ``__init__`` runs helper processes (a
    ``multiprocessing.Pool`` there) and ends them with SIGTERM (``Pool.terminate``, here
    ``Process.terminate`` on a sleeping one, so the signal always lands)."""

    def __init__(self, n: int = 8) -> None:
        import multiprocessing

        helper = multiprocessing.get_context("fork").Process(target=time.sleep, args=(30,))
        helper.start()
        time.sleep(0.2)  # let it reach its sleep
        helper.terminate()
        helper.join(10)
        self.helper_exitcode = helper.exitcode
        self.values = list(range(n))

    def __len__(self) -> int:
        return len(self.values)

    def __getitem__(self, index: int) -> int:
        return self.values[index]


def pool_in_init() -> PoolInInitDataset:
    """A TARGET factory for the CLI tests; fails when the helper did not die of SIGTERM."""
    import signal

    ds = PoolInInitDataset()
    if ds.helper_exitcode != -signal.SIGTERM:
        raise RuntimeError(f"the helper process exited with {ds.helper_exitcode}, not -SIGTERM")
    return ds
