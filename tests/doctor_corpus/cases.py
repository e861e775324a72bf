"""The corpus: hazard cases (expected category + path) and clean cases (no error, no warning).

Each case's ``build(tmp, closers)`` creates the object to diagnose: handles, lambdas and
RNGs are made here, at run time; module-level classes come from ``datasets.py``. Anything
that must be closed is appended to ``closers``. ``source`` names the real report the
pattern comes from.
"""

from __future__ import annotations

import concurrent.futures
import functools
import json
import multiprocessing
import random
import socket
import sqlite3
import tarfile
import threading
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from tests.doctor_corpus import datasets as d
from tests.doctor_corpus import fakes

Build = Callable[[Path, list[Callable[[], Any]]], tuple[Any, dict[str, Any] | None]]


@dataclass(frozen=True)
class Case:
    """One corpus entry.

    Attributes:
        name: Short identifier (the pytest id).
        build: Makes (object to diagnose, loader_kwargs or None).
        expect: (category, path) pairs that must all be reported (error or warning);
            empty for a clean case.
        source: The real-world report or pattern this reproduces.
        start_methods: Start methods to judge; None: all available.
        platform: PlatformInfo fields to override (dataclasses.replace), e.g. small /dev/shm.
        requires: Optional modules the case needs (``"cuda"``: a CUDA device); the test is
            skipped where one is missing.
        live: Judge with the live probe too (real workers); such tests are marked slow.
    """

    name: str
    build: Build
    expect: tuple[tuple[str, str], ...]
    source: str
    start_methods: tuple[str, ...] | None = None
    platform: dict[str, Any] = field(default_factory=dict)
    requires: tuple[str, ...] = ()
    live: bool = False


def _file(tmp: Path, name: str = "data.bin", size: int = 64) -> Path:
    p = tmp / name
    p.write_bytes(bytes(range(256))[:size] * 1)
    return p


def _closing(closers: list[Callable[[], Any]], obj: Any) -> Any:
    closers.append(obj.close)
    return obj


# ------------------------------------------------------------------------------------------
# hazards


def _lambda_transform(tmp: Path, closers: list) -> tuple[Any, Any]:
    return d.TransformDataset(transform=lambda x: x * 2), None


def _compose_lambda(tmp: Path, closers: list) -> tuple[Any, Any]:
    t = d.Compose([d.ToFloat(), d.Lambda(lambda x: x / 255.0), d.Normalize(0.5, 0.5)])
    return d.TransformDataset(transform=t), None


def _local_function(tmp: Path, closers: list) -> tuple[Any, Any]:
    size = 3

    def crop(x: Any) -> Any:
        return x[:size]

    return d.TransformDataset(transform=crop), None


def _local_class(tmp: Path, closers: list) -> tuple[Any, Any]:
    class Dataset(torch.utils.data.Dataset):  # CenterNet#649 "get_dataset.<locals>.Dataset"
        def __len__(self) -> int:
            return 4

        def __getitem__(self, idx: int) -> int:
            return idx

    return Dataset(), None


def _main_class(tmp: Path, closers: list) -> tuple[Any, Any]:
    cls = type("NotebookDataset", (d.AttrDataset,), {"__module__": "__main__"})
    return cls(), None


def _lambda_collate(tmp: Path, closers: list) -> tuple[Any, Any]:
    return d.TransformDataset(), {"num_workers": 2, "collate_fn": lambda batch: batch[0]}


def _closure_worker_init(tmp: Path, closers: list) -> tuple[Any, Any]:
    seed = 42

    def worker_init_fn(worker_id: int) -> None:  # seed note 002: a closure over the seed
        np.random.seed(seed + worker_id + int(torch.initial_seed() % 1000))

    return d.TransformDataset(), {"num_workers": 2, "worker_init_fn": worker_init_fn}


def _partial_of_lambda(tmp: Path, closers: list) -> tuple[Any, Any]:
    return d.TransformDataset(transform=functools.partial(lambda x, k: x * k, k=3)), None


def _thread_lock(tmp: Path, closers: list) -> tuple[Any, Any]:
    return d.AttrDataset(lock=threading.Lock(), values=[1, 2]), None


def _generator_attr(tmp: Path, closers: list) -> tuple[Any, Any]:
    return d.AttrDataset(stream=(i * i for i in range(10))), None


def _module_attr(tmp: Path, closers: list) -> tuple[Any, Any]:
    return d.AttrDataset(backend=json), None


def _open_file(tmp: Path, closers: list) -> tuple[Any, Any]:
    fh = _closing(closers, open(_file(tmp), "rb"))  # noqa: SIM115
    return d.AttrDataset(path=str(tmp), fh=fh), None


def _zip_archive(tmp: Path, closers: list) -> tuple[Any, Any]:
    zpath = tmp / "images.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        zf.writestr("0.txt", "x")
    return d.AttrDataset(zf=_closing(closers, zipfile.ZipFile(zpath))), None


def _tar_archive(tmp: Path, closers: list) -> tuple[Any, Any]:
    tpath = tmp / "shard-000.tar"
    src = _file(tmp, "member.bin")
    with tarfile.open(tpath, "w") as tf:
        tf.add(src, arcname="member.bin")
    return d.AttrDataset(tar=_closing(closers, tarfile.open(tpath))), None


def _sqlite(tmp: Path, closers: list) -> tuple[Any, Any]:
    conn = _closing(closers, sqlite3.connect(str(tmp / "index.db")))
    return d.AttrDataset(conn=conn), None


def _socket(tmp: Path, closers: list) -> tuple[Any, Any]:
    sock = _closing(closers, socket.socket(socket.AF_INET, socket.SOCK_STREAM))
    return d.AttrDataset(client=sock), None


def _h5py(tmp: Path, closers: list) -> tuple[Any, Any]:
    h5 = fakes.H5File(str(tmp / "data.h5"))
    return d.AttrDataset(h5=h5, train_data=h5["train"]), None


def _lmdb(tmp: Path, closers: list) -> tuple[Any, Any]:
    return d.AttrDataset(env=fakes.LmdbEnvironment(str(tmp / "db.lmdb"))), None


def _nested_handle(tmp: Path, closers: list) -> tuple[Any, Any]:
    fh = _closing(closers, open(_file(tmp, "lut.bin"), "rb"))  # noqa: SIM115
    return d.TransformDataset(transform=d.Compose([d.LutFromFile(fh), d.ToFloat()])), None


def _random_random(tmp: Path, closers: list) -> tuple[Any, Any]:
    return d.RngAttrDataset(random.Random(0)), None


def _np_generator_in_compose(tmp: Path, closers: list) -> tuple[Any, Any]:
    t = d.Compose([d.RandomFlip(np.random.default_rng(0)), d.Normalize(0.0, 1.0)])
    return d.TransformDataset(transform=t), None


def _np_random_state(tmp: Path, closers: list) -> tuple[Any, Any]:
    return d.AttrDataset(rs=np.random.RandomState(42)), None


def _torch_generator(tmp: Path, closers: list) -> tuple[Any, Any]:
    return d.AttrDataset(g=torch.Generator().manual_seed(0)), None


def _rng_in_partial(tmp: Path, closers: list) -> tuple[Any, Any]:
    t = functools.partial(d.add_noise, rng=np.random.default_rng(1), sigma=0.2)
    return d.TransformDataset(transform=t), None


def _worker_init_constant(tmp: Path, closers: list) -> tuple[Any, Any]:
    return d.GlobalNumpyRandomDataset(), {"num_workers": 2, "worker_init_fn": d.seed_constant}


def _worker_init_mmdet(tmp: Path, closers: list) -> tuple[Any, Any]:
    wif = functools.partial(d.seed_mmdet_style, num_workers=2, rank=0, seed=1234)
    return d.GlobalNumpyRandomDataset(), {"num_workers": 2, "worker_init_fn": wif}


def _fake_cuda_tensor(tmp: Path, closers: list) -> tuple[Any, Any]:
    return d.AttrDataset(mean=fakes.FakeCudaTensor([0.485, 0.456, 0.406])), None


def _cuda_device(tmp: Path, closers: list) -> tuple[Any, Any]:
    return d.AttrDataset(device=torch.device("cuda")), None


def _cuda_in_getitem(tmp: Path, closers: list) -> tuple[Any, Any]:
    return d.CudaInGetitemDataset(), None


def _cuda_in_transform(tmp: Path, closers: list) -> tuple[Any, Any]:
    return d.TransformDataset(transform=d.MoveToCuda()), None


def _big_list(tmp: Path, closers: list) -> tuple[Any, Any]:
    return d.BigListDataset(150_000), None


def _big_dict(tmp: Path, closers: list) -> tuple[Any, Any]:
    return d.BigDictDataset(120_000), None


def _cache_in_getitem(tmp: Path, closers: list) -> tuple[Any, Any]:
    return d.CachingDataset(), None


def _model_in_getitem(tmp: Path, closers: list) -> tuple[Any, Any]:
    return d.ModelInGetitemDataset(), {"num_workers": 2}


def _normalize_module(tmp: Path, closers: list) -> tuple[Any, Any]:
    return d.NormalizeModuleDataset(), {"num_workers": 2}


def _hand_lru(tmp: Path, closers: list) -> tuple[Any, Any]:
    return d.HandLRUDataset(), {"num_workers": 2}


def _size_guarded_cache(tmp: Path, closers: list) -> tuple[Any, Any]:
    return d.SizeGuardedCacheDataset(), {"num_workers": 2}


def _deque_history(tmp: Path, closers: list) -> tuple[Any, Any]:
    return d.DequeHistoryDataset(), {"num_workers": 2}


def _set_epoch_persistent(tmp: Path, closers: list) -> tuple[Any, Any]:
    return d.EpochDataset(), {"num_workers": 2, "persistent_workers": True}


def _deformation(tmp: Path, closers: list) -> tuple[Any, Any]:
    return d.ContinuousDeformationDataset(d.TransformDataset()), {
        "num_workers": 2,
        "persistent_workers": True,
    }


def _drifting(tmp: Path, closers: list) -> tuple[Any, Any]:
    return d.DriftingValuesDataset(), {"num_workers": 2, "persistent_workers": True}


def _pseudo_labels(tmp: Path, closers: list) -> tuple[Any, Any]:
    return d.PseudoLabelDataset(), {"num_workers": 2}


def _getitem_mutates(tmp: Path, closers: list) -> tuple[Any, Any]:
    return d.CountingDataset(), None


def _unsharded_iterable(tmp: Path, closers: list) -> tuple[Any, Any]:
    return d.UnshardedStream([f"part-{i}.csv" for i in range(6)]), {"num_workers": 2}


def _few_shards(tmp: Path, closers: list) -> tuple[Any, Any]:
    return d.ShardedStream(["shard-0.tar"]), {"num_workers": 2}


def _too_many_workers(tmp: Path, closers: list) -> tuple[Any, Any]:
    return d.TransformDataset(), {"num_workers": 64}


def _small_shm(tmp: Path, closers: list) -> tuple[Any, Any]:
    images = torch.zeros(16, 3, 224, 224)  # 602 KB per sample
    labels = torch.zeros(16, dtype=torch.long)
    return TensorDataset(images, labels), {"num_workers": 2, "batch_size": 64, "prefetch_factor": 2}


def _low_ulimit(tmp: Path, closers: list) -> tuple[Any, Any]:
    return TensorDataset(torch.zeros(16, 8), torch.zeros(16)), {
        "num_workers": 2,
        "prefetch_factor": 8,
    }


def _opencv(tmp: Path, closers: list) -> tuple[Any, Any]:
    return d.AttrDataset(clahe=fakes.CvClahe()), None


def _tokenizers(tmp: Path, closers: list) -> tuple[Any, Any]:
    return d.AttrDataset(tokenizer=fakes.FastTokenizer()), None


def _thread_pool(tmp: Path, closers: list) -> tuple[Any, Any]:
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=2)
    closers.append(pool.shutdown)
    return d.AttrDataset(pool=pool), None


def _fork_ctx_lock(tmp: Path, closers: list) -> tuple[Any, Any]:
    lock = multiprocessing.get_context("fork").Lock()
    return d.AttrDataset(lock=lock), None


def _bound_collate(tmp: Path, closers: list) -> tuple[Any, Any]:
    return d.TransformDataset(), {"num_workers": 2, "collate_fn": d.Collator().collate}


def _sampler_lambda(tmp: Path, closers: list) -> tuple[Any, Any]:
    ds = d.TransformDataset()
    loader = DataLoader(
        ds, batch_size=2, sampler=d.KeyedSampler(d.N, key_fn=lambda i: -i), num_workers=2
    )
    return loader, None


def _loader_lambda_transform(tmp: Path, closers: list) -> tuple[Any, Any]:
    ds = d.TransformDataset(transform=d.Compose([d.Lambda(lambda x: x + 1)]))
    return DataLoader(ds, batch_size=2, num_workers=2), None


HAZARDS: tuple[Case, ...] = (
    Case(
        "lambda_transform",
        _lambda_transform,
        (("unpicklable", "dataset.transform"),),
        "openai/CLIP#151, qfgaohao/pytorch-ssd#19: Can't pickle local object <lambda>",
    ),
    Case(
        "compose_lambda",
        _compose_lambda,
        (("unpicklable", "dataset.transform.transforms[1].lambd"),),
        "belskikh/kekas#26: transforms.Lambda(lambda ...) inside Compose on Windows",
    ),
    Case(
        "local_function",
        _local_function,
        (("unpicklable", "dataset.transform"),),
        "taoyang1122/MutualNet#5: Can't pickle local object 'get_cifar.<locals>...'",
    ),
    Case(
        "local_class",
        _local_class,
        (("unpicklable", "type(dataset)"),),
        "xingyizhou/CenterNet#649: Can't pickle local object 'get_dataset.<locals>.Dataset'",
    ),
    Case(
        "main_class",
        _main_class,
        (("unpicklable", "type(dataset)"),),
        "sicara/easy-few-shot-learning#51: attribute lookup on __main__ failed (notebook)",
    ),
    Case(
        "lambda_collate",
        _lambda_collate,
        (("unpicklable", "loader.collate_fn"),),
        "HazyResearch/cartridges#20: DataLoader(collate_fn=lambda ...) breaks on Windows",
    ),
    Case(
        "closure_worker_init_fn",
        _closure_worker_init,
        (("unpicklable", "loader.worker_init_fn"),),
        "seed note 002: a closure passed as worker_init_fn cannot be pickled under spawn",
    ),
    Case(
        "partial_of_lambda",
        _partial_of_lambda,
        (("unpicklable", "dataset.transform.func"),),
        "catalyst-team/catalyst#1024: lambda wrapped in the loader factory",
    ),
    Case(
        "thread_lock",
        _thread_lock,
        (("unpicklable", "dataset.lock"),),
        "TypeError: cannot pickle '_thread.lock' object (thread-safe caches)",
    ),
    Case(
        "generator_attr",
        _generator_attr,
        (("unpicklable", "dataset.stream"),),
        "TypeError: cannot pickle 'generator' object (a stream stored on the dataset)",
    ),
    Case(
        "module_attr",
        _module_attr,
        (("unpicklable", "dataset.backend"),),
        "TypeError: cannot pickle 'module' object (a backend module stored on self)",
    ),
    Case(
        "open_file",
        _open_file,
        (("fork-shared-handle", "dataset.fh"), ("unpicklable", "dataset.fh")),
        "pytorch/pytorch#11887: wrong data with num_workers > 1 from a shared handle",
    ),
    Case(
        "zip_archive",
        _zip_archive,
        (("fork-shared-handle", "dataset.zf"), ("unpicklable", "dataset.zf")),
        "zipfile.ZipFile opened in __init__: BadZipFile / CRC errors in workers",
    ),
    Case(
        "tar_archive",
        _tar_archive,
        (("fork-shared-handle", "dataset.tar"),),
        "webdataset-style tar shard opened before the workers",
    ),
    Case(
        "sqlite",
        _sqlite,
        (("fork-shared-handle", "dataset.conn"), ("unpicklable", "dataset.conn")),
        "sqlite3 connection shared across fork ('database disk image is malformed')",
    ),
    Case(
        "socket",
        _socket,
        (("fork-shared-handle", "dataset.client"),),
        "a client socket (Redis/HTTP) created in __init__ and shared by workers",
    ),
    Case(
        "h5py",
        _h5py,
        (("fork-shared-handle", "dataset.h5"), ("unpicklable", "dataset.h5")),
        "pytorch/pytorch#11929, #1919, maskrcnn-benchmark#1195: h5py.File in __init__",
    ),
    Case(
        "lmdb",
        _lmdb,
        (("fork-shared-handle", "dataset.env"),),
        "lmdb.open() in __init__: 'environment already open in this process' in workers",
    ),
    Case(
        "nested_handle",
        _nested_handle,
        (("fork-shared-handle", "dataset.transform.transforms[0].lut_file"),),
        "a transform deep inside Compose holding an open file",
    ),
    Case(
        "random_random",
        _random_random,
        (("rng-duplication", "dataset.rng"),),
        "wolny/pytorch-3dunet#32: a seeded RNG object in the dataset",
    ),
    Case(
        "np_generator_in_compose",
        _np_generator_in_compose,
        (("rng-duplication", "dataset.transform.transforms[0].rng"),),
        "augmentation objects holding np.random.Generator (albumentations >= 1.4)",
    ),
    Case(
        "np_random_state",
        _np_random_state,
        (("rng-duplication", "dataset.rs"),),
        "OpenPCDet#886: numpy randomness identical between workers",
    ),
    Case(
        "torch_generator",
        _torch_generator,
        (("rng-duplication", "dataset.g"),),
        "torch.Generator().manual_seed(0) kept on the dataset for augmentation",
    ),
    Case(
        "rng_in_partial",
        _rng_in_partial,
        (("rng-duplication", "dataset.transform.keywords['rng']"),),
        "functools.partial(noise_fn, rng=np.random.default_rng(seed))",
    ),
    Case(
        "worker_init_constant_seed",
        _worker_init_constant,
        (("rng-duplication", "loader.worker_init_fn"),),
        "worker_init_fn calling np.random.seed(0): identical workers, every epoch",
    ),
    Case(
        "worker_init_mmdet_seed",
        _worker_init_mmdet,
        (("rng-duplication", "loader.worker_init_fn"),),
        "CenterNet#233 / mmdet worker_init_fn(worker_id, num_workers, rank, seed): "
        "seeds repeat every epoch",
    ),
    Case(
        "cuda_tensor",
        _fake_cuda_tensor,
        (("cuda-in-worker", "dataset.mean"),),
        "seed note 001: CUDA state in the dataset ('Cannot re-initialize CUDA in forked "
        "subprocess')",
    ),
    Case(
        "cuda_device",
        _cuda_device,
        (("cuda-in-worker", "dataset.device"),),
        "self.device = torch.device('cuda') used by __getitem__",
    ),
    Case(
        "cuda_in_getitem",
        _cuda_in_getitem,
        (("cuda-in-worker", "type(dataset).__getitem__"),),
        "x.cuda() inside __getitem__ (pytorch forums: CUDA in forked subprocess)",
    ),
    Case(
        "cuda_in_transform",
        _cuda_in_transform,
        (("cuda-in-worker", "type(dataset.transform).__call__"),),
        "a GPU transform (x.to('cuda')) applied in the worker",
    ),
    Case(
        "model_in_getitem_cpu",
        _model_in_getitem,
        (("model-in-worker", "dataset.model"),),
        "issue 15 / note 001: a super-resolution CNN run per sample in __getitem__ on the CPU "
        "was reported clean",
    ),
    Case(
        "big_list",
        _big_list,
        (("memory-growth", "dataset.samples"),),
        "pytorch/pytorch#13246: Python lists of paths replicated per worker (copy-on-read)",
    ),
    Case(
        "big_dict",
        _big_dict,
        (("memory-growth", "dataset.labels"),),
        "pytorch/pytorch#13246: dict annotations grow worker memory",
    ),
    Case(
        "cache_in_getitem",
        _cache_in_getitem,
        (("memory-growth", "dataset.cache"),),
        "per-worker caches filled in __getitem__ (memory x num_workers)",
    ),
    Case(
        "set_epoch_persistent",
        _set_epoch_persistent,
        (("stale-worker-state", "dataset.epoch"),),
        "curriculum set_epoch with persistent_workers=True never reaches the workers",
    ),
    Case(
        "deformation_theta",
        _deformation,
        (("stale-worker-state", "dataset.theta"),),
        "seed note 000: ContinuousDeformationDataset.theta updated by the training loop",
    ),
    Case(
        "drifting_values",
        _drifting,
        (("stale-worker-state", "dataset.values"),),
        "seed note 000: DriftingValuesDataset.values drifted in place",
    ),
    Case(
        "pseudo_labels",
        _pseudo_labels,
        (("stale-worker-state", "dataset.pseudo_labels"),),
        "self-training: pseudo-labels replaced between rounds",
    ),
    Case(
        "getitem_mutates_self",
        _getitem_mutates,
        (("stale-worker-state", "dataset.calls"),),
        "a counter in __getitem__ driving a schedule (each worker counts alone)",
    ),
    Case(
        "unsharded_iterable",
        _unsharded_iterable,
        (("iterable-sharding", "type(dataset).__iter__"),),
        "espnet/espnet#2081, huggingface/datasets#3423, vahidk/tfrecord#78: duplicates",
    ),
    Case(
        "fewer_shards_than_workers",
        _few_shards,
        (("iterable-sharding", "dataset.files"),),
        "one shard for several workers: idle workers",
    ),
    Case(
        "too_many_workers",
        _too_many_workers,
        (("worker-config", "loader.num_workers"),),
        "num_workers=64 on a 2-CPU container (homr#128: 12 x 16 threads)",
    ),
    Case(
        "small_dev_shm",
        _small_shm,
        (("shared-memory", "env.dev_shm"),),
        "Docker's 64MB /dev/shm: 'DataLoader worker killed by signal: Bus error'",
        platform={"shm_free_bytes": 64 * 1024**2, "shm_total_bytes": 64 * 1024**2},
    ),
    Case(
        "low_ulimit",
        _low_ulimit,
        (("shared-memory", "env.ulimit_nofile"),),
        "pytorch/pytorch#11201: 'received 0 items of ancdata' with ulimit -n 256",
        platform={"open_files_limit": 96},
    ),
    Case(
        "opencv",
        _opencv,
        (("thread-hazard", "dataset.clahe"),),
        "pytorch/pytorch#1355, #1838: OpenCV deadlocks in forked workers",
    ),
    Case(
        "tokenizers",
        _tokenizers,
        (("thread-hazard", "dataset.tokenizer._tokenizer"),),
        "huggingface/tokenizers#646: 'The current process just got forked...'",
    ),
    Case(
        "thread_pool",
        _thread_pool,
        (("thread-hazard", "dataset.pool"), ("unpicklable", "dataset.pool")),
        "a ThreadPoolExecutor for I/O created in __init__",
    ),
    Case(
        "fork_context_lock",
        _fork_ctx_lock,
        (("unpicklable", "dataset.lock"),),
        "multiprocessing.Lock() from the fork context sent to spawn workers",
        start_methods=("spawn",),
    ),
    Case(
        "bound_method_collate",
        _bound_collate,
        (("unpicklable", "loader.collate_fn.__self__.lock"),),
        "collate_fn=self.collate on an object holding a lock",
    ),
    Case(
        "sampler_lambda",
        _sampler_lambda,
        (("unpicklable", "loader.sampler.key_fn"),),
        "Lightning ddp_spawn pickles the DataLoader, sampler included",
    ),
    Case(
        "loader_lambda_transform",
        _loader_lambda_transform,
        (("unpicklable", "dataset.transform.transforms[0].lambd"),),
        "a DataLoader (not a bare dataset) over a dataset with a Lambda transform",
    ),
)

# ------------------------------------------------------------------------------------------
# clean


def _global_rng(tmp: Path, closers: list) -> tuple[Any, Any]:
    t = d.Compose([d.GlobalRandomFlip(), d.jitter])
    return d.TransformDataset(transform=t), {"num_workers": 2}


def _lazy_file(tmp: Path, closers: list) -> tuple[Any, Any]:
    return d.LazyFileDataset(str(_file(tmp))), {"num_workers": 2}


def _worker_init_db(tmp: Path, closers: list) -> tuple[Any, Any]:
    db = tmp / "kv.db"
    with sqlite3.connect(str(db)) as conn:
        conn.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v INTEGER)")
        conn.executemany("INSERT INTO t VALUES (?, ?)", [(i, i * i) for i in range(d.N)])
    conn.close()
    return d.WorkerInitDbDataset(str(db)), {"num_workers": 2, "worker_init_fn": d.open_db_in_worker}


def _getstate_drops(tmp: Path, closers: list) -> tuple[Any, Any]:
    ds = d.GetstateDropsHandleDataset(str(_file(tmp)))
    closers.append(ds.close)
    return ds, {"num_workers": 2}


def _memmap(tmp: Path, closers: list) -> tuple[Any, Any]:
    npy = tmp / "images.npy"
    np.save(npy, np.arange(d.N * 12, dtype=np.uint8).reshape(d.N, 3, 2, 2))
    labels = tmp / "labels.bin"
    np.arange(d.N, dtype=np.int64).tofile(labels)
    return d.MemmapDataset(str(npy), str(labels)), {"num_workers": 2, "batch_size": 4}


def _partials(tmp: Path, closers: list) -> tuple[Any, Any]:
    t = d.Compose([d.ToFloat(), functools.partial(d.scale, factor=0.5), d.Normalize(0.1, 2.0)])
    return d.TransformDataset(transform=t), {"num_workers": 2}


def _sharded_iterable(tmp: Path, closers: list) -> tuple[Any, Any]:
    return d.ShardedStream([f"shard-{i}.tar" for i in range(4)]), {"num_workers": 2}


def _tensor_dataset(tmp: Path, closers: list) -> tuple[Any, Any]:
    ds = TensorDataset(torch.randn(16, 3, 8, 8), torch.arange(16))
    return DataLoader(
        ds,
        batch_size=4,
        shuffle=True,
        num_workers=2,
        persistent_workers=True,
        generator=torch.Generator().manual_seed(0),
    ), None


def _pil_folder(tmp: Path, closers: list) -> tuple[Any, Any]:
    from PIL import Image

    paths = []
    for i in range(4):
        p = tmp / f"img_{i}.png"
        Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(p)
        paths.append(str(p))
    t = d.Compose([d.Normalize(127.5, 127.5), d.GlobalRandomFlip()])
    return d.PilFolderDataset(paths, t), {"num_workers": 2, "batch_size": 2}


def _numpy_index(tmp: Path, closers: list) -> tuple[Any, Any]:
    return d.NumpyIndexDataset(200_000), {"num_workers": 2, "batch_size": 32}


def _shared_state(tmp: Path, closers: list) -> tuple[Any, Any]:
    return d.SharedThetaDataset(), {"num_workers": 2, "persistent_workers": True}


def _seeded_worker_init(tmp: Path, closers: list) -> tuple[Any, Any]:
    return d.GlobalNumpyRandomDataset(), {"num_workers": 2, "worker_init_fn": d.seed_from_torch}


def _lazy_worker_rng(tmp: Path, closers: list) -> tuple[Any, Any]:
    return d.LazyWorkerRngDataset(), {"num_workers": 2}


def _per_index_seed(tmp: Path, closers: list) -> tuple[Any, Any]:
    return d.PerIndexSeedDataset(seed=7), {"num_workers": 2}


def _logger_and_module(tmp: Path, closers: list) -> tuple[Any, Any]:
    import logging

    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU())
    return d.LoggingDataset(logging.getLogger("corpus.data"), model), {"num_workers": 2}


def _module_level_collate(tmp: Path, closers: list) -> tuple[Any, Any]:
    return d.TransformDataset(), {"num_workers": 2, "batch_size": 1, "collate_fn": d.collate_first}


def _unbatched_collate(tmp: Path, closers: list) -> tuple[Any, Any]:
    ds = d.PlainDataset()
    return DataLoader(ds, batch_size=None, collate_fn=d.per_sample_collate, num_workers=2), None


def _keyed_sampler(tmp: Path, closers: list) -> tuple[Any, Any]:
    keys = [f"k{i}" for i in range(d.N)]
    return DataLoader(d.KeyedDataset(), batch_size=2, sampler=keys, num_workers=2), None


def _empty_dataset(tmp: Path, closers: list) -> tuple[Any, Any]:
    return DataLoader(d.EmptyDataset(), batch_size=2, num_workers=2), None


def _offset_batch_sampler(tmp: Path, closers: list) -> tuple[Any, Any]:
    from torch.utils.data import BatchSampler

    batches = BatchSampler(list(range(100, 100 + d.N)), batch_size=3, drop_last=False)
    return DataLoader(d.OffsetDataset(), batch_sampler=batches, num_workers=2), None


def _batch_indexed(tmp: Path, closers: list) -> tuple[Any, Any]:
    from torch.utils.data import BatchSampler, SequentialSampler

    ds = d.BatchIndexedDataset()
    batches = BatchSampler(SequentialSampler(range(d.N)), batch_size=4, drop_last=False)
    return DataLoader(ds, sampler=batches, batch_size=None, num_workers=2), None


CLEAN: tuple[Case, ...] = (
    Case(
        "hand_bounded_lru_cache",
        _hand_lru,
        (),
        "issue 15: an OrderedDict LRU trimmed with popitem was called an unbounded cache",
    ),
    Case(
        "size_guarded_cache",
        _size_guarded_cache,
        (),
        "issue 15: a cache filled only while len(self.cache) < 1000",
    ),
    Case("deque_maxlen_history", _deque_history, (), "a deque(maxlen=64) filled in __getitem__"),
    Case(
        "parameter_free_module_transform",
        _normalize_module,
        (),
        "an nn.Module transform without parameters (torchvision v2 style) is not a model",
    ),
    Case(
        "global_rng_augment",
        _global_rng,
        (),
        "pytorch/pytorch#5059 fixed: global RNGs are "
        "reseeded per worker (torch >= 1.9 seeds numpy too)",
    ),
    Case("lazy_file_open", _lazy_file, (), "pytorch/pytorch#11929: open in the first __getitem__"),
    Case("worker_init_opens_db", _worker_init_db, (), "connection opened in worker_init_fn"),
    Case(
        "getstate_drops_handle",
        _getstate_drops,
        (),
        "__getstate__ drops the handle, reopened per process (os.getpid guard)",
    ),
    Case("memmap_numpy", _memmap, (), "np.load(mmap_mode='r') and np.memmap shared read-only"),
    Case("partial_transforms", _partials, (), "functools.partial of module-level functions"),
    Case("sharded_iterable", _sharded_iterable, (), "IterableDataset split by get_worker_info"),
    Case(
        "tensor_dataset_loader",
        _tensor_dataset,
        (),
        "TensorDataset in a DataLoader with a seeded generator and persistent workers",
    ),
    Case("pil_image_folder", _pil_folder, (), "ImageFolder-like decode + augment with Pillow"),
    Case(
        "numpy_index",
        _numpy_index,
        (),
        "pytorch/pytorch#13246 fix: 200k paths in a numpy bytes array",
    ),
    Case("shared_state", _shared_state, (), "seed note 000 done right: SharedState"),
    Case(
        "worker_init_torch_seed",
        _seeded_worker_init,
        (),
        "worker_init_fn seeding from torch.initial_seed() (PyTorch docs' seed_worker)",
    ),
    Case("lazy_worker_rng", _lazy_worker_rng, (), "RNG created lazily per worker from its seed"),
    Case("per_index_seed", _per_index_seed, (), "generator derived from (seed, epoch, index)"),
    Case("logger_and_cpu_module", _logger_and_module, (), "a logging.Logger and a CPU nn.Module"),
    Case("module_level_collate", _module_level_collate, (), "module-level collate_fn"),
    Case(
        "unbatched_per_sample_collate",
        _unbatched_collate,
        (),
        "DataLoader(batch_size=None, collate_fn=f): f receives one sample (automatic batching off)",
    ),
    Case("string_key_sampler", _keyed_sampler, (), "dataset keyed by str, sampler of keys"),
    Case("empty_dataset", _empty_dataset, (), "len(dataset) == 0 (e.g. an empty split)"),
    Case(
        "offset_batch_sampler",
        _offset_batch_sampler,
        (),
        "batch_sampler over indices 100..107 (index 0 is not valid)",
    ),
    Case(
        "batch_indexed_sampler",
        _batch_indexed,
        (),
        "sampler=BatchSampler(...), batch_size=None: __getitem__ takes a list of indices",
    ),
)
