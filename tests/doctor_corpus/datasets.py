"""Module-level dataset, transform and helper classes of the corpus (importable by spawn)."""

from __future__ import annotations

import collections
import os
import queue
import random
import sqlite3
import threading
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, IterableDataset, get_worker_info

N = 8  # samples per corpus dataset


# --- transforms ---------------------------------------------------------------------------


class Compose:
    """torchvision.transforms.Compose, reduced: applies ``self.transforms`` in order."""

    def __init__(self, transforms: list[Any]) -> None:
        self.transforms = transforms

    def __call__(self, x: Any) -> Any:
        for t in self.transforms:
            x = t(x)
        return x


class Lambda:
    """torchvision.transforms.Lambda, reduced: wraps a user callable in ``self.lambd``."""

    def __init__(self, lambd: Any) -> None:
        self.lambd = lambd

    def __call__(self, x: Any) -> Any:
        return self.lambd(x)


class ToFloat:
    def __call__(self, x: Any) -> torch.Tensor:
        return torch.as_tensor(x, dtype=torch.float32)


class Normalize:
    def __init__(self, mean: float, std: float) -> None:
        self.mean, self.std = mean, std

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class RandomFlip:
    """An augmentation holding its own RNG (albumentations >= 1.4 style ``random_generator``)."""

    def __init__(self, rng: Any) -> None:
        self.rng = rng

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return -x if self.rng.random() < 0.5 else x


class GlobalRandomFlip:
    """An augmentation drawing from the global RNGs, which PyTorch reseeds per worker."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return -x if random.random() < 0.5 else x


class MoveToCuda:
    """A transform that moves its input to the GPU inside the worker."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x.to("cuda")


class LutFromFile:
    """A transform that keeps a lookup-table file open."""

    def __init__(self, fh: Any) -> None:
        self.lut_file = fh

    def __call__(self, x: Any) -> Any:
        return x


def scale(x: Any, factor: float = 2.0) -> Any:
    return x * factor


def add_noise(x: Any, rng: Any = None, sigma: float = 0.1) -> Any:
    return x + sigma * float(rng.standard_normal()) if rng is not None else x


def jitter(x: torch.Tensor, amount: float = 0.1) -> torch.Tensor:
    return x + amount * (torch.rand(()) - 0.5)


def collate_first(batch: list[Any]) -> Any:
    return batch[0]


# --- datasets ----------------------------------------------------------------------------


class TransformDataset(Dataset):
    """The most common shape: numbers plus ``self.transform``."""

    def __init__(self, transform: Any = None) -> None:
        self.values = list(range(N))
        self.transform = transform

    def __len__(self) -> int:
        return N

    def __getitem__(self, idx: int) -> Any:
        x = torch.tensor(float(self.values[idx]))
        return self.transform(x) if self.transform is not None else x


class AttrDataset(Dataset):
    """A dataset carrying arbitrary attributes set by the factory (``**attrs``)."""

    def __init__(self, **attrs: Any) -> None:
        for k, v in attrs.items():
            setattr(self, k, v)

    def __len__(self) -> int:
        return N

    def __getitem__(self, idx: int) -> torch.Tensor:
        return torch.tensor(float(idx))


class RngAttrDataset(Dataset):
    """Augments with ``self.rng`` (the RNG object copied into every worker)."""

    def __init__(self, rng: Any) -> None:
        self.rng = rng

    def __len__(self) -> int:
        return N

    def __getitem__(self, idx: int) -> torch.Tensor:
        return torch.tensor(float(idx) + float(self.rng.random()))


class GlobalNumpyRandomDataset(Dataset):
    """Augments with the global numpy RNG (the pattern of pytorch#5059)."""

    def __len__(self) -> int:
        return N

    def __getitem__(self, idx: int) -> torch.Tensor:
        return torch.tensor(float(idx) + float(np.random.rand()))


class CudaInGetitemDataset(Dataset):
    """Moves each sample to the GPU in the worker."""

    def __len__(self) -> int:
        return N

    def __getitem__(self, idx: int) -> torch.Tensor:
        x = torch.tensor(float(idx))
        return x.cuda()


class BigListDataset(Dataset):
    """ImageNet-style index: a Python list of (path, label) tuples (pytorch#13246)."""

    def __init__(self, n: int) -> None:
        self.samples = [(f"train/{i % 1000}/img_{i}.JPEG", i % 1000) for i in range(n)]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, idx: int) -> tuple[str, int]:
        return self.samples[idx]


class BigDictDataset(Dataset):
    """Annotations kept as a dict of Python objects (COCO-style id -> record)."""

    def __init__(self, n: int) -> None:
        self.ids = np.arange(n)
        self.labels = {f"id{i}": i % 10 for i in range(n)}

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, idx: int) -> int:
        return self.labels[f"id{int(self.ids[idx])}"]


class CachingDataset(Dataset):
    """Caches decoded samples in ``self.cache`` inside ``__getitem__``."""

    def __init__(self) -> None:
        self.cache: dict[int, torch.Tensor] = {}

    def __len__(self) -> int:
        return N

    def __getitem__(self, idx: int) -> torch.Tensor:
        if idx not in self.cache:
            self.cache[idx] = torch.full((4,), float(idx))
        return self.cache[idx]


class HandLRUDataset(Dataset):
    """A cache bounded by hand: an OrderedDict trimmed with ``popitem(last=False)``.

    The pattern of many issue-thread answers (e.g. the LRU sketched in pytorch/pytorch#13246's
    follow-ups); issue 15: WF110 called a cache bounded at 1,000 entries "unbounded".
    """

    def __init__(self, maxsize: int = 1000) -> None:
        self.maxsize = maxsize
        self.cache: collections.OrderedDict[int, torch.Tensor] = collections.OrderedDict()

    def __len__(self) -> int:
        return N

    def __getitem__(self, idx: int) -> torch.Tensor:
        if idx in self.cache:
            self.cache.move_to_end(idx)
            return self.cache[idx]
        value = torch.full((4,), float(idx))
        self.cache[idx] = value
        if len(self.cache) > self.maxsize:
            self.cache.popitem(last=False)
        return value


class SizeGuardedCacheDataset(Dataset):
    """A cache filled only while ``len(self.cache) < 1000``: bounded, never evicted."""

    def __init__(self) -> None:
        self.cache: dict[int, torch.Tensor] = {}

    def __len__(self) -> int:
        return N

    def __getitem__(self, idx: int) -> torch.Tensor:
        if idx in self.cache:
            return self.cache[idx]
        value = torch.full((4,), float(idx))
        if len(self.cache) < 1000:
            self.cache[idx] = value
        return value


class DequeHistoryDataset(Dataset):
    """Keeps the last 64 indices in a ``deque(maxlen=64)``: bounded by the container."""

    def __init__(self) -> None:
        self.recent: collections.deque[int] = collections.deque(maxlen=64)

    def __len__(self) -> int:
        return N

    def __getitem__(self, idx: int) -> torch.Tensor:
        self.recent.append(idx)
        return torch.full((4,), float(idx))


class SuperResNet(torch.nn.Module):
    """A small super-resolution CNN (~57k parameters), the shape of note 001's model."""

    def __init__(self) -> None:
        super().__init__()
        self.body = torch.nn.Sequential(
            torch.nn.Conv2d(3, 64, 5, padding=2),
            torch.nn.ReLU(),
            torch.nn.Conv2d(64, 32, 3, padding=1),
            torch.nn.ReLU(),
            torch.nn.Conv2d(32, 3 * 4, 3, padding=1),
            torch.nn.PixelShuffle(2),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class ModelInGetitemDataset(Dataset):
    """Runs a CPU model per sample in ``__getitem__`` (note 001, without CUDA)."""

    def __init__(self) -> None:
        self.model = SuperResNet().eval()

    def __len__(self) -> int:
        return N

    def __getitem__(self, idx: int) -> torch.Tensor:
        with torch.no_grad():
            return self.model(torch.full((1, 3, 16, 16), float(idx)))[0]


class NormalizeModuleDataset(Dataset):
    """A parameter-free ``nn.Module`` transform (as torchvision v2 transforms are): not a model."""

    def __init__(self) -> None:
        self.transform = torch.nn.Sequential(torch.nn.Identity(), torch.nn.Flatten(0))

    def __len__(self) -> int:
        return N

    def __getitem__(self, idx: int) -> torch.Tensor:
        return self.transform(torch.full((2, 2), float(idx)))


class EpochDataset(Dataset):
    """Curriculum: ``set_epoch`` changes what ``__getitem__`` returns."""

    def __init__(self) -> None:
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return N

    def __getitem__(self, idx: int) -> torch.Tensor:
        return torch.tensor(float(idx) * (1 + self.epoch))


class ContinuousDeformationDataset(Dataset):
    """Seed note 000: an affine deformation ``theta`` the training loop updates."""

    def __init__(self, base: Dataset) -> None:
        self.base = base
        self.theta = torch.eye(2)

    def update_theta(self, delta: torch.Tensor) -> None:
        self.theta = self.theta + delta

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, idx: int) -> torch.Tensor:
        x = self.base[idx]
        return self.theta @ torch.stack([x, x])


class DriftingValuesDataset(Dataset):
    """Seed note 000: values drift in place between tasks (``self.values.add_``)."""

    def __init__(self) -> None:
        self.values = torch.zeros(N)

    def drift(self, amount: float) -> None:
        self.values.add_(amount)

    def __len__(self) -> int:
        return N

    def __getitem__(self, idx: int) -> torch.Tensor:
        return self.values[idx]


class PseudoLabelDataset(Dataset):
    """Self-training: pseudo-labels replaced after each round."""

    def __init__(self) -> None:
        self.pseudo_labels = [0] * N

    def set_pseudo_labels(self, labels: list[int]) -> None:
        self.pseudo_labels = list(labels)

    def __len__(self) -> int:
        return N

    def __getitem__(self, idx: int) -> tuple[int, int]:
        return idx, self.pseudo_labels[idx]


class CountingDataset(Dataset):
    """Mutates itself in ``__getitem__`` (a counter used for a schedule)."""

    def __init__(self) -> None:
        self.calls = 0

    def __len__(self) -> int:
        return N

    def __getitem__(self, idx: int) -> torch.Tensor:
        self.calls += 1
        return torch.tensor(float(idx) * min(1.0, self.calls / 100))


class UnshardedStream(IterableDataset):
    """Streams every file in every worker (espnet#2081, datasets#3423)."""

    def __init__(self, files: list[str]) -> None:
        self.files = files

    def __iter__(self) -> Any:
        for i, name in enumerate(self.files):
            yield torch.tensor([i, len(name)])


class ShardedStream(IterableDataset):
    """Gives each worker its own files (torch docs' get_worker_info pattern)."""

    def __init__(self, files: list[str]) -> None:
        self.files = files

    def __iter__(self) -> Any:
        info = get_worker_info()
        wid, n = (info.id, info.num_workers) if info is not None else (0, 1)
        for i, name in enumerate(self.files[wid::n]):
            yield torch.tensor([wid, i, len(name)])


class SleepyDataset(Dataset):
    """Hangs in ``__getitem__`` (a deadlock stand-in) for the probe's timeout test."""

    def __len__(self) -> int:
        return N

    def __getitem__(self, idx: int) -> torch.Tensor:
        threading.Event().wait(3600)
        return torch.tensor(0.0)


class CrashingDataset(Dataset):
    """Kills its worker process (a segfaulting decoder stand-in)."""

    def __len__(self) -> int:
        return N

    def __getitem__(self, idx: int) -> torch.Tensor:
        os._exit(3)


class Collator:
    """A collate object with a lock (for bound-method collate_fn cases)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()

    def collate(self, batch: list[Any]) -> Any:
        return torch.stack(batch)


class KeyedSampler(torch.utils.data.Sampler):
    """A sampler ordering indices by a key function."""

    def __init__(self, n: int, key_fn: Any) -> None:
        self.n, self.key_fn = n, key_fn

    def __iter__(self) -> Any:
        return iter(sorted(range(self.n), key=self.key_fn))

    def __len__(self) -> int:
        return self.n


# --- clean patterns -----------------------------------------------------------------------


class LazyFileDataset(Dataset):
    """Opens its file lazily in each worker (the h5py/pytorch#11929 recommended fix)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._fh: Any = None

    def __len__(self) -> int:
        return N

    def __getitem__(self, idx: int) -> bytes:
        if self._fh is None:
            self._fh = open(self.path, "rb")  # noqa: SIM115
        self._fh.seek(idx)
        return self._fh.read(1)


class WorkerInitDbDataset(Dataset):
    """Opens its SQLite connection in worker_init_fn via ``open()``."""

    def __init__(self, db_path: str) -> None:
        self.db_path = db_path
        self.conn: Any = None

    def open(self) -> None:
        self.conn = sqlite3.connect(self.db_path)

    def __len__(self) -> int:
        return N

    def __getitem__(self, idx: int) -> int:
        if self.conn is None:
            self.open()
        row = self.conn.execute("SELECT v FROM t WHERE k = ?", (idx,)).fetchone()
        return int(row[0])


def open_db_in_worker(worker_id: int) -> None:
    info = get_worker_info()
    if info is not None:
        info.dataset.open()


class GetstateDropsHandleDataset(Dataset):
    """Reads the header in ``__init__``; ``__getstate__`` drops the handle; reopens per pid."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._fh: Any = open(path, "rb")  # noqa: SIM115
        self.header = self._fh.read(4)
        self._pid = os.getpid()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_fh"] = None
        return state

    def _file(self) -> Any:
        if self._fh is None or self._pid != os.getpid():
            self._fh = open(self.path, "rb")  # noqa: SIM115
            self._pid = os.getpid()
        return self._fh

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()

    def __len__(self) -> int:
        return N

    def __getitem__(self, idx: int) -> bytes:
        fh = self._file()
        fh.seek(idx)
        return fh.read(1)


class MemmapDataset(Dataset):
    """Samples in a memory-mapped .npy (np.load(mmap_mode='r')), labels in an np.memmap."""

    def __init__(self, npy_path: str, labels_path: str) -> None:
        self.images = np.load(npy_path, mmap_mode="r")
        self.labels = np.memmap(labels_path, dtype=np.int64, mode="r", shape=(N,))

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, idx: int) -> tuple[torch.Tensor, int]:
        return torch.from_numpy(np.array(self.images[idx])), int(self.labels[idx])


class NumpyIndexDataset(Dataset):
    """The copy-on-read fix: 200k paths in one numpy bytes array, labels in an int64 array."""

    def __init__(self, n: int) -> None:
        self.paths = np.array([f"img_{i}.jpg" for i in range(n)], dtype=np.bytes_)
        self.labels = np.arange(n, dtype=np.int64) % 10

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, idx: int) -> tuple[str, int]:
        return self.paths[idx].decode(), int(self.labels[idx])


class SharedStateLike:
    """Stands in for wellfed.SharedState (issue 7): carries the class marker, holds a lock."""

    __wellfed_shared_state__ = True

    def __init__(self, **values: Any) -> None:
        self._lock = threading.Lock()
        self._values = dict(values)

    def update(self, **values: Any) -> None:
        with self._lock:
            self._values.update(values)

    def __getitem__(self, key: str) -> Any:
        return self._values[key]

    def __getstate__(self) -> dict[str, Any]:
        return {"_values": self._values}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._values = state["_values"]
        self._lock = threading.Lock()


class SharedThetaDataset(Dataset):
    """Seed note 000 done right: theta lives in a SharedState."""

    def __init__(self) -> None:
        self.state = SharedStateLike(theta=torch.eye(2))

    def update_theta(self, theta: torch.Tensor) -> None:
        self.state.update(theta=theta)

    def __len__(self) -> int:
        return N

    def __getitem__(self, idx: int) -> torch.Tensor:
        theta = self.state["theta"]
        return theta @ torch.full((2,), float(idx))


class LazyWorkerRngDataset(Dataset):
    """Creates its RNG lazily in each worker from the worker's seed."""

    def __init__(self) -> None:
        self.rng: Any = None

    def __len__(self) -> int:
        return N

    def __getitem__(self, idx: int) -> torch.Tensor:
        if self.rng is None:
            info = get_worker_info()
            self.rng = np.random.default_rng(info.seed if info is not None else None)
        return torch.tensor(float(idx) + float(self.rng.random()))


class PerIndexSeedDataset(Dataset):
    """Derives a fresh generator from (seed, epoch, index) for each sample."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return N

    def __getitem__(self, idx: int) -> torch.Tensor:
        rng = np.random.default_rng((self.seed, self.epoch, idx))
        return torch.tensor(float(idx) + float(rng.random()))


class LoggingDataset(Dataset):
    """Holds a logging.Logger (pickles by name) and a CPU nn.Module transform."""

    def __init__(self, logger: Any, model: torch.nn.Module) -> None:
        self.log = logger
        self.model = model

    def __len__(self) -> int:
        return N

    def __getitem__(self, idx: int) -> torch.Tensor:
        with torch.no_grad():
            return self.model(torch.full((1, 4), float(idx)))[0]


class PilFolderDataset(Dataset):
    """ImageFolder-like: a short list of PNG paths decoded with Pillow, module-level transforms."""

    def __init__(self, paths: list[str], transform: Any) -> None:
        self.paths = paths
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, idx: int) -> torch.Tensor:
        from PIL import Image

        with Image.open(self.paths[idx]) as img:
            arr = np.asarray(img.convert("RGB"), dtype=np.uint8)
        return self.transform(torch.from_numpy(arr.copy()).permute(2, 0, 1).float())


def seed_from_torch(worker_id: int) -> None:
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def seed_constant(worker_id: int) -> None:
    np.random.seed(0)
    random.seed(0)


def seed_mmdet_style(worker_id: int, num_workers: int, rank: int, seed: int) -> None:
    worker_seed = num_workers * rank + worker_id + seed
    np.random.seed(worker_seed)
    random.seed(worker_seed)


# --- legal loader shapes the live probe must respect (review 2.2) ---------------------------


class PlainDataset(Dataset):
    """Sample i is a (3,) float tensor filled with i."""

    def __len__(self) -> int:
        return N

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.full((3,), float(i))


def per_sample_collate(sample: torch.Tensor) -> torch.Tensor:
    """A collate_fn for batch_size=None: it receives ONE sample, not a list."""
    return sample.double()


class KeyedDataset(Dataset):
    """Indexed by string keys ("k0".."k7"), not by integers: dataset[0] is a KeyError."""

    def __init__(self) -> None:
        self.values = {f"k{i}": float(i) for i in range(N)}

    def __len__(self) -> int:
        return len(self.values)

    def __getitem__(self, key: str) -> torch.Tensor:
        return torch.tensor(self.values[key])


class EmptyDataset(Dataset):
    """len() == 0: there is no index to fetch."""

    def __len__(self) -> int:
        return 0

    def __getitem__(self, i: int) -> torch.Tensor:
        raise IndexError(i)


class OffsetDataset(Dataset):
    """Valid indices are 100..107 only (a slice of a bigger index space)."""

    def __len__(self) -> int:
        return N

    def __getitem__(self, i: int) -> torch.Tensor:
        if not 100 <= i < 100 + N:
            raise IndexError(i)
        return torch.full((2,), float(i))


class BatchIndexedDataset(Dataset):
    """__getitem__ takes a list of indices (used with sampler=BatchSampler, batch_size=None)."""

    def __len__(self) -> int:
        return N

    def __getitem__(self, idx: list[int]) -> torch.Tensor:
        return torch.tensor([float(i) for i in idx])


# --- failures the live probe attributes to an attribute path (issue 15) --------------------


class StdCollate:
    """A collate object with a Bessel-corrected scale: a batch of one divides by zero."""

    def __call__(self, batch: list[torch.Tensor]) -> torch.Tensor:
        scale = 1 / (len(batch) - 1)
        return torch.stack(batch) * scale


def init_shards_from_env(worker_id: int) -> None:
    """A worker_init_fn reading a shard count that is not set: ValueError, in workers only."""
    shards = int(os.environ.get("WELLFED_TEST_SHARDS", "unset"))
    info = get_worker_info()
    if info is not None:
        info.dataset.shard = worker_id % shards


class RecordReader:
    """Reads records by index; record 0 fails its checksum (ValueError in ``read``)."""

    def read(self, idx: int) -> torch.Tensor:
        if idx == 0:
            raise ValueError(f"record {idx}: checksum mismatch")
        return torch.tensor(float(idx))


class ReaderDataset(Dataset):
    """Delegates each sample to ``self.reader.read``."""

    def __init__(self, reader: Any = None) -> None:
        self.reader = RecordReader() if reader is None else reader

    def __len__(self) -> int:
        return N

    def __getitem__(self, idx: int) -> torch.Tensor:
        return self.reader.read(idx)


class ColumnsDataset(Dataset):
    """Serves missing attributes from ``self.columns`` (as a data-frame wrapper does); the
    column ``label`` is missing, so ``self.label`` raises AttributeError in ``__getattr__``."""

    def __init__(self) -> None:
        self.columns = {"x": list(range(N))}

    def __getattr__(self, name: str) -> Any:
        try:
            return self.__dict__["columns"][name]
        except KeyError:
            raise AttributeError(f"no column or attribute {name!r}") from None

    def __len__(self) -> int:
        return N

    def __getitem__(self, idx: int) -> torch.Tensor:
        return torch.tensor(float(self.x[idx] + self.label[idx]))


class BlockingReader:
    """Waits for a record that never arrives (``queue.Queue.get`` without a timeout)."""

    def read(self, idx: int) -> torch.Tensor:
        record = queue.Queue().get()
        return torch.tensor(float(record))
