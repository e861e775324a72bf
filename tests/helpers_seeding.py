"""Picklable datasets for the seeding, loader and repro tests (module level, for spawn)."""

from __future__ import annotations

import hashlib
import random
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

import wellfed


class AugmentDataset(Dataset[dict[str, Any]]):
    """Augments with Python random, numpy's global RNG, torch's global RNG and the per-sample
    generators; every field depends on the RNG state when ``__getitem__`` runs."""

    def __init__(self, n: int = 24) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> dict[str, Any]:
        assert type(index) is int, f"the dataset must get a plain int, got {type(index)}"
        return {
            "index": index,
            "py": random.random(),
            "np": float(np.random.rand()),
            "torch": torch.rand(3),
            "np_gen": float(wellfed.sample_rng().random()),
            "torch_gen": torch.randint(0, 1000, (2,), generator=wellfed.sample_generator()),
        }


class GlobalAugmentDataset(Dataset[torch.Tensor]):
    """Augments with the global RNGs only (what most datasets do)."""

    def __init__(self, n: int = 16) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.tensor([index, random.random(), float(np.random.rand()), float(torch.rand(1))])


class BatchedAugmentDataset(AugmentDataset):
    """Like AugmentDataset, with batched fetch (``__getitems__``)."""

    calls = 0

    def __getitems__(self, indices: list[int]) -> list[dict[str, Any]]:
        assert all(type(i) is int for i in indices)
        noise = torch.rand(len(indices))
        return [
            {"index": i, "noise": noise[k], "py": random.random()} for k, i in enumerate(indices)
        ]


class RngObjectDataset(Dataset[float]):
    """Holds its own numpy RandomState: its copies in workers drift apart (not reproducible)."""

    def __init__(self, n: int = 16) -> None:
        self.n = n
        self.rng = np.random.RandomState(0)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> float:
        return float(self.rng.rand())


class LambdaDataset(Dataset[int]):
    """Holds a lambda: cannot be pickled for spawn or forkserver workers."""

    def __init__(self, n: int = 8) -> None:
        self.n = n
        self.transform = lambda x: x * 2

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> int:
        return int(self.transform(index))


def note002_worker_init_fn(worker_id: int) -> None:
    """Note 002's style of worker_init_fn, at module level so spawn can pickle it."""
    info = torch.utils.data.get_worker_info()
    assert info is not None
    assert info.id == worker_id


def digest(obj: Any) -> str:
    """blake2b of a batch (tensors by dtype, shape and bytes)."""
    h = hashlib.blake2b(digest_size=16)
    _feed(h, obj)
    return h.hexdigest()


def _feed(h: Any, obj: Any) -> None:
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(obj, dict):
        for k in sorted(obj, key=repr):
            h.update(repr(k).encode())
            _feed(h, obj[k])
    elif isinstance(obj, (list, tuple)):
        h.update(f"L{len(obj)}".encode())
        for x in obj:
            _feed(h, x)
    else:
        h.update(repr(obj).encode())


class ThreadYieldingDataset(Dataset[torch.Tensor]):
    """Draws from the three global RNGs and lets other threads run between the draws."""

    def __init__(self, n: int = 64) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> torch.Tensor:
        import time

        a = random.random()
        time.sleep(0)  # release the GIL: another thread may run here (not synchronisation)
        b = float(np.random.rand())
        time.sleep(0)
        return torch.tensor([float(index), a, b, float(torch.rand(1))])


class StaleStateDataset(Dataset[torch.Tensor]):
    """A curriculum: ``set_difficulty`` changes state that ``__getitem__`` reads (WF111)."""

    def __init__(self, n: int = 8) -> None:
        self.n = n
        self.difficulty = 0

    def set_difficulty(self, difficulty: int) -> None:
        self.difficulty = difficulty

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.tensor([index, self.difficulty])


class NumpyShuffleSampler(torch.utils.data.Sampler[int]):
    """Shuffles with numpy's global RNG (not a function of the epoch on its own)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Any:
        return iter(np.random.permutation(self.n).tolist())


class StreamDataset(torch.utils.data.IterableDataset[torch.Tensor]):
    """An iterable-style dataset (no indices, so no per-sample seeds)."""

    def __iter__(self) -> Any:
        return iter(torch.arange(8, dtype=torch.float32).reshape(8, 1))


class HangInWorkerDataset(Dataset[int]):
    """Never returns in a worker process (a deadlock in the dataset); fine in the main one."""

    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int) -> int:
        import threading

        if torch.utils.data.get_worker_info() is not None:
            threading.Event().wait()
        return index


class NestedSeededDataset(Dataset[torch.Tensor]):
    """Each item iterates a small seeded loader in the main process of wherever it runs."""

    def __len__(self) -> int:
        return 2

    def __getitem__(self, index: int) -> torch.Tensor:
        inner = wellfed.create_dataloader(
            GlobalAugmentDataset(4), batch_size=2, shuffle=True, seed=index, num_workers=0
        )
        return torch.cat([b.reshape(-1) for b in inner])


class IndexDataset(Dataset[torch.Tensor]):
    """Sample i is tensor([i]): no randomness at all, so only the order can differ."""

    def __init__(self, n: int = 16) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.tensor([index])


#: A shuffle seeded by its own generator over data without randomness: reproducible, as long as
#: each run starts the generator from its seed (the CLI builds the loader once per run).
seeded_shuffle_loader = torch.utils.data.DataLoader(
    IndexDataset(16), batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(0)
)


def closure_worker_init_loader() -> torch.utils.data.DataLoader[Any]:
    """Note 002's loader: a ``seed_worker`` defined inside the factory (fine under fork only)."""
    base = 7

    def seed_worker(worker_id: int) -> None:
        random.seed(base + worker_id)

    return torch.utils.data.DataLoader(IndexDataset(8), batch_size=4, worker_init_fn=seed_worker)
