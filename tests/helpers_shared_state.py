"""Module-level datasets for the SharedState tests (spawn and forkserver workers import them).

Two pairs reproduce note 000: a continuous-deformation dataset (``theta`` replaced per task)
and a drifting-values dataset (``values`` changed per task), each as the note wrote it (state
in plain attributes) and with ``wellfed.SharedState``. ``TornReadDataset`` carries, per
sample, the version it read and checksums of every field it used, taken twice (when the
sample starts and after it has used the fields) so an overwrite during use is caught too.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from wellfed.shared_state import SharedState

N_SAMPLES = 8
IMAGE_SIZE = 8
#: Every test loader's timeout, and how long a stress test waits for its writer thread.
TIMEOUT_S = 60.0


def images(n: int = N_SAMPLES, seed: int = 0) -> torch.Tensor:
    """(N, 1, H, W) float32 images in [0, 1): N samples, H = W = IMAGE_SIZE pixels."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, IMAGE_SIZE, IMAGE_SIZE, generator=g)


def theta_for(task: int) -> torch.Tensor:
    """The (2, 3) affine matrix of task ``task``: a rotation by 0.3 rad per task plus a shift."""
    a = torch.tensor(0.3 * task, dtype=torch.float64)
    c, s = torch.cos(a).item(), torch.sin(a).item()
    return torch.tensor([[c, -s, 0.05 * task], [s, c, -0.05 * task]], dtype=torch.float32)


def values_for(task: int, n: int = N_SAMPLES) -> np.ndarray:
    """(N,) float32 targets of task ``task``: a ramp that drifts by 1.0 per task."""
    return (np.arange(n, dtype=np.float32) * 0.5 + task).astype(np.float32)


def deform(image: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Warp one (1, H, W) image with a (2, 3) affine matrix (bilinear, zero padding)."""
    image = image.to(theta.dtype)
    grid = F.affine_grid(theta.unsqueeze(0), [1, *image.shape], align_corners=False)
    return F.grid_sample(image.unsqueeze(0), grid, align_corners=False)[0]


class NaiveDeformationDataset(Dataset[torch.Tensor]):
    """Note 000's ContinuousDeformationDataset: ``theta`` a plain attribute (stale in workers)."""

    def __init__(self, n: int = N_SAMPLES) -> None:
        self.images = images(n)
        self.theta = theta_for(0)

    def set_theta(self, theta: torch.Tensor) -> None:
        self.theta = theta  # replaced: a persistent worker never sees it

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        return deform(self.images[i], self.theta)


class SharedDeformationDataset(Dataset[tuple[torch.Tensor, int]]):
    """The same dataset with ``theta`` in a SharedState; samples carry the version read."""

    def __init__(self, n: int = N_SAMPLES) -> None:
        self.images = images(n)
        self.state = SharedState(theta=theta_for(0))

    def set_theta(self, theta: torch.Tensor) -> None:
        self.state.update(theta=theta)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        snap = self.state.read()
        return deform(self.images[i], snap["theta"]), snap.version


class NaiveDriftingValuesDataset(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Note 000's DriftingValuesDataset: ``values`` is a plain attribute."""

    def __init__(self, n: int = N_SAMPLES) -> None:
        self.x = images(n).flatten(1)
        self.values = torch.from_numpy(values_for(0, n))

    def set_values(self, values: np.ndarray) -> None:
        self.values = torch.from_numpy(values)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[i], self.values[i]


class SharedDriftingValuesDataset(Dataset[tuple[torch.Tensor, torch.Tensor, int]]):
    """The same dataset with ``values`` (and the task number) in a SharedState."""

    def __init__(self, n: int = N_SAMPLES) -> None:
        self.x = images(n).flatten(1)
        self.state = SharedState(values=values_for(0, n), task=0)

    def set_values(self, values: np.ndarray, task: int) -> None:
        self.state.update(values=values, task=task)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        snap = self.state.read()
        return self.x[i], torch.tensor(snap["values"][i]), snap["task"]


class HalfUpdatedDataset(Dataset[tuple[float, float]]):
    """Two tensors as note 000 would update them: ``scale`` edited in place, ``shift`` replaced.

    Under spawn the DataLoader moves both into shared memory, so the in-place edit reaches
    persistent workers and the replacement does not: they see a mix of two updates.
    """

    def __init__(self) -> None:
        self.scale = torch.zeros(1)
        self.shift = torch.zeros(1)

    def set_task(self, task: int) -> None:
        self.scale.fill_(float(task))  # in place
        self.shift = torch.full((1,), float(task))  # replaced

    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int) -> tuple[float, float]:
        return float(self.scale.item()), float(self.shift.item())


# ----------------------------------------------------------------------- torn-read stress

TORN_K = 1 << 17  # elements per array field: 1 MiB of float64, so copies take real time


def torn_fields(version: int, k: int = TORN_K) -> dict[str, Any]:
    """Field values that belong to ``version``: every field is a function of it."""
    return {
        "a": np.full(k, float(version)),
        "b": torch.arange(k, dtype=torch.int64) + version,
        "c": version,
    }


def torn_expected(version: int, k: int = TORN_K) -> tuple[float, int, int]:
    """(sum of a, sum of b, c) for a consistent read of ``version``."""
    return float(version) * k, k * (k - 1) // 2 + version * k, version


class TornReadDataset(Dataset[torch.Tensor]):
    """Each sample: [version, sum a, sum b, c, sum a again, sum b again, pid] (float64).

    The second pair of checksums is taken after the first, so a writer overwriting the views
    while the sample is being made shows up as a mismatch too.
    """

    def __init__(self, state: SharedState, length: int = 1_000_000) -> None:
        self.state = state
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> torch.Tensor:
        snap = self.state.read()
        a, b, c = snap["a"], snap["b"], snap["c"]
        s_a, s_b = float(a.sum()), int(b.sum())
        s_a2, s_b2 = float(a.sum()), int(b.sum())
        return torch.tensor(
            [snap.version, s_a, s_b, c, s_a2, s_b2, os.getpid()], dtype=torch.float64
        )


class NaiveTornDataset(Dataset[torch.Tensor]):
    """The same checksums over plain shared tensors that the main process edits in place."""

    def __init__(self, k: int = TORN_K, length: int = 1_000_000) -> None:
        f = torn_fields(1, k)
        self.a = torch.from_numpy(f["a"]).share_memory_()
        self.b = f["b"].share_memory_()
        self.c = torch.ones((), dtype=torch.int64).share_memory_()
        self.length = length

    def set_version(self, version: int) -> None:
        f = torn_fields(version, len(self.a))
        self.c.fill_(version)
        self.a.copy_(torch.from_numpy(f["a"]))
        self.b.copy_(f["b"])

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> torch.Tensor:
        c = int(self.c.item())
        s_a, s_b = float(self.a.sum()), int(self.b.sum())
        s_a2, s_b2 = float(self.a.sum()), int(self.b.sum())
        return torch.tensor([c, s_a, s_b, c, s_a2, s_b2, os.getpid()], dtype=torch.float64)


def list_collate(batch: list[Any]) -> list[Any]:
    """Collate to a plain list: no tensor crosses the queue (so no fd passing)."""
    return batch


class PidDataset(Dataset[tuple[int, int]]):
    """Samples are (worker pid, state version): lets a test find and kill a worker."""

    def __init__(self, state: SharedState, length: int = 64) -> None:
        self.state = state
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> tuple[int, int]:
        return os.getpid(), self.state.read().version


class CrashingDataset(Dataset[tuple[int, int]]):
    """Samples are (worker pid, version); the worker that fetches ``crash_index`` SIGKILLs itself.

    It dies right after ``read()``, holding a pin on the state, and before it has produced a
    batch, so it holds none of the DataLoader's own queue locks (a worker killed from outside
    at a random moment can die holding one, and then torch hangs: that is not what we test).
    """

    def __init__(self, state: SharedState, crash_index: int, length: int = 16) -> None:
        self.state = state
        self.crash_index = crash_index
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> tuple[int, int]:
        version = self.state.read().version
        if i == self.crash_index:
            os.kill(os.getpid(), signal.SIGKILL)
        return os.getpid(), version


class ViewDataset(Dataset[tuple[torch.Tensor, int]]):
    """Returns the zero-copy ``theta`` view itself (use with batch_size=None: no collate copy).

    The worker's queue moves that tensor's storage into new shared memory; later versions must
    still read the slot, not the moved copy.
    """

    def __init__(self, state: SharedState, length: int = 4) -> None:
        self.state = state
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        snap = self.state.read()
        return snap["theta"], snap.version


# ----------------------------------------------------------------------- returned views (issue 14)

VIEW_K = 1 << 17  # elements per field: 1 MiB each, so an update takes real time
VIEW_LEN = 64  # elements of each field a sample returns (a view, not a copy)


def view_fields(version: int, k: int = VIEW_K) -> dict[str, Any]:
    """Fields of ``version``: ``a`` is ``version`` everywhere, ``b`` is ``arange + version``."""
    return {
        "a": torch.full((k,), float(version), dtype=torch.float64),
        "b": torch.arange(k, dtype=torch.int64) + version,
    }


def view_start(i: int, k: int = VIEW_K) -> int:
    """Where sample ``i``'s views start in the fields (spread over them)."""
    return (i * 4099) % (k - VIEW_LEN)


class ReturnedViewDataset(Dataset[dict[str, Any]]):
    """Each sample returns views into the snapshot, with the version they belong to.

    ``a`` and ``b`` are slices (views, no copy) of the two fields; the DataLoader collates
    (copies) them only after it has fetched every sample of the batch. A sample is torn when
    its data are not its version's: ``a != version`` or ``b != arange[start:] + version``.
    """

    def __init__(self, state: SharedState, length: int = 1_000_000) -> None:
        self.state = state
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict[str, Any]:
        snap = self.state.read()
        lo = view_start(i)
        return {
            "version": snap.version,
            "start": lo,
            "a": snap["a"][lo : lo + VIEW_LEN],
            "b": snap["b"][lo : lo + VIEW_LEN],
            "pid": os.getpid(),
        }


def doc_values(version: int, n: int) -> torch.Tensor:
    """(N,) float64 ``values`` of ``version``: ``values[i] = version * N + i`` (exact)."""
    return torch.arange(n, dtype=torch.float64) + float(version * n)


class DocPatternDataset(Dataset[tuple[int, torch.Tensor, int]]):
    """docs/shared_state.md's pattern: read once, return ``snap["values"][i]`` (a 0-d view).

    As ``examples/note000_drifting_values.py`` does, plus the index and ``snap.version`` so a
    test can tell a torn sample: ``values[i] != version * N + i``.
    """

    def __init__(self, state: SharedState, n: int, length: int = 1_000_000) -> None:
        self.state = state
        self.n = n
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor, int]:
        snap = self.state.read()  # one consistent version; zero-copy views
        return i % self.n, snap["values"][i % self.n], snap.version


def fds_into(prefix: str) -> list[str]:
    """Targets of this process's descriptors that are files of the state named ``prefix``."""
    return sorted(target for target, _ in fd_modes(prefix))


def fd_modes(prefix: str) -> list[tuple[str, str]]:
    """(target, "r" or "rw") per descriptor into the state's files: a pin is opened "r"."""
    out = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
            with open(f"/proc/self/fdinfo/{fd}") as info:
                flags = next(int(line.split()[1], 8) for line in info if line.startswith("flags"))
        except (OSError, StopIteration):
            continue
        if os.path.basename(target).startswith(prefix):
            out.append((target, "r" if flags & os.O_ACCMODE == os.O_RDONLY else "rw"))
    return sorted(out)


class FdDataset(Dataset[tuple[int, list[tuple[str, str]], list[tuple[str, str]]]]):
    """Samples: (worker pid, fd_modes before this read, fd_modes during it)."""

    def __init__(self, state: SharedState, length: int = 8) -> None:
        self.state = state
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> tuple[int, list[tuple[str, str]], list[tuple[str, str]]]:
        prefix = self.state._prefix
        before = fd_modes(prefix)
        snap = self.state.read()
        during = fd_modes(prefix)
        del snap
        return os.getpid(), before, during


_HOARD: list[Any] = []  # views a HoardingDataset keeps, per worker process


class HoardingDataset(Dataset[tuple[int, int]]):
    """Keeps a view of every version it reads (a dataset bug): its worker pins them all."""

    def __init__(self, state: SharedState, length: int = 64) -> None:
        self.state = state
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> tuple[int, int]:
        snap = self.state.read()
        _HOARD.append(snap["a"])
        return os.getpid(), snap.version


class NaiveViewDataset(Dataset[dict[str, Any]]):
    """ReturnedViewDataset's samples over plain shared tensors that the main process edits."""

    def __init__(self, k: int = VIEW_K, length: int = 1_000_000) -> None:
        f = view_fields(1, k)
        self.a = f["a"].share_memory_()
        self.b = f["b"].share_memory_()
        self.version = torch.ones((), dtype=torch.int64).share_memory_()
        self.length = length

    def set_version(self, version: int) -> None:
        f = view_fields(version, len(self.a))
        self.version.fill_(version)
        self.a.copy_(f["a"])
        self.b.copy_(f["b"])

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict[str, Any]:
        lo = view_start(i, len(self.a))
        return {
            "version": int(self.version),
            "start": lo,
            "a": self.a[lo : lo + VIEW_LEN],
            "b": self.b[lo : lo + VIEW_LEN],
            "pid": os.getpid(),
        }


class RepeatSampler(torch.utils.data.Sampler[int]):
    """0, 1, ..., n - 1, 0, 1, ... without end: a stress test stops when it has enough."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __iter__(self) -> Any:
        i = 0
        while True:
            yield i % self.n
            i += 1


class VersionRecorder:
    """Stands in for a dataset's SharedState: forwards to it and remembers the version read.

    Lets a test run an example's own ``__getitem__`` unchanged and still know which version
    each sample was made from.
    """

    def __init__(self, state: SharedState) -> None:
        self.state = state
        self.last = 0

    def read(self) -> Any:
        snap = self.state.read()
        self.last = snap.version
        return snap

    def update(self, *args: Any, **kwargs: Any) -> int:
        return self.state.update(*args, **kwargs)

    def close(self) -> None:
        self.state.close()


# --- loaders and the stress run, shared by test_shared_state_workers and _examples -----------


def make_loader(ds: Any, method: str, workers: int, persistent: bool, **kw: Any) -> DataLoader:
    """A DataLoader over ``ds`` with ``workers`` workers started by ``method``; batch 2 unless
    ``batch_size`` is given; the loader's timeout is ``TIMEOUT_S``."""
    return DataLoader(
        ds,
        batch_size=kw.pop("batch_size", 2),
        num_workers=workers,
        persistent_workers=persistent,
        multiprocessing_context=method,
        timeout=TIMEOUT_S,
        **kw,
    )


def stress_batches(
    ds: Any, set_version: Callable[[int], Any], updates: int, method: str, **kw: Any
) -> list[Any]:
    """Batches from 4 workers while a thread of this (the main) process calls
    ``set_version(v)`` for v = 2 .. updates + 1, and enough batches after the last call that
    the final version is among them. ``kw`` goes to ``make_loader`` (batch 8 by default)."""
    loader = make_loader(ds, method, 4, False, batch_size=kw.pop("batch_size", 8), **kw)
    it = iter(loader)
    batches = [next(it)]  # workers are up before the writer starts
    done = threading.Event()
    failed: list[BaseException] = []

    def writer() -> None:
        try:
            for v in range(2, updates + 2):
                set_version(v)
        except BaseException as exc:  # reported by the test, not lost in the thread
            failed.append(exc)
        finally:
            done.set()

    t = threading.Thread(target=writer, daemon=True)
    t.start()
    try:
        while not done.is_set():
            batches.append(next(it))
        # The last versions too: 8 batches (4 workers x prefetch_factor 2) were requested
        # before the final update and may all have been loaded before it; the 9th onwards
        # were requested after it. 17 reads leave a margin of a second round.
        batches.extend(next(it) for _ in range(17))
    finally:
        done.wait(TIMEOUT_S)
        t.join(TIMEOUT_S)
        it._shutdown_workers()
        del it
    assert not failed, f"update() failed: {failed[0]!r}"
    return batches
