"""Store format for wellfed.precompute: .npy memmap shards vs Arrow IPC vs safetensors.

Each candidate stores the same data: N samples of a float32 (3, S, S) "output" (the shape of
a super-resolved image) plus an int64 label, in shards of about 64 MiB, and reads it back
through a map-style Dataset:

* ``npy``: one ``.npy`` per field per shard, read with ``np.load(mmap_mode="c")`` (what
  wellfed.cache writes);
* ``arrow``: one Arrow IPC file per shard (uncompressed; output as a fixed-size list column),
  read with ``pa.memory_map`` + ``pa.ipc.open_file`` (zero-copy record batches);
* ``safetensors``: one ``.safetensors`` file per shard, read with ``safe_open(framework="pt")``
  (which mmaps the file; ``get_slice`` reads one row).

Measured per format (page cache warm: the files were just written; this machine cannot drop
caches, so these are memory-bandwidth-and-overhead figures, not disk figures):

* write: MB/s to write all shards, each fsync'ed (median of ``--repeats``);
* random read: samples/s of a shuffled DataLoader (batch 64) over the store with 0 and 2
  workers (fork), after one warm-up batch; median of ``--repeats`` epochs; plus single-sample
  ``__getitem__`` latency (us, median / p90) in the main process.

Run:
    python benchmarks/store_format.py            # about 1 minute on 2 CPUs
    python benchmarks/store_format.py --smoke    # < 30 s
Writes a JSON line per format to benchmarks/results/store_format.jsonl (``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from wellfed.measure import iterate

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root: benchmarks._env
from benchmarks._env import git_sha

RESULTS = Path(__file__).resolve().parent / "results"
SHARD_BYTES = 64 * 2**20


def _p(values: Sequence[float], pct: float) -> float:
    ordered = sorted(values)
    k = pct / 100 * (len(ordered) - 1)
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ----------------------------------------------------------------------------- writers


def write_npy(root: Path, shards: list[tuple[np.ndarray, np.ndarray]]) -> None:
    for k, (x, y) in enumerate(shards):
        for name, arr in (("output", x), ("label", y)):
            path = root / f"{k:05d}.{name}.npy"
            with open(path, "wb") as f:
                np.lib.format.write_array(f, arr, allow_pickle=False)
                f.flush()
                os.fsync(f.fileno())


def write_arrow(root: Path, shards: list[tuple[np.ndarray, np.ndarray]]) -> None:
    import pyarrow as pa

    for k, (x, y) in enumerate(shards):
        per = int(np.prod(x.shape[1:]))
        values = pa.array(x.reshape(-1))
        col = pa.FixedSizeListArray.from_arrays(values, per)
        table = pa.table({"output": col, "label": pa.array(y)})
        path = root / f"{k:05d}.arrow"
        with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table)
        with open(path, "rb+") as f:
            os.fsync(f.fileno())


def write_safetensors(root: Path, shards: list[tuple[np.ndarray, np.ndarray]]) -> None:
    from safetensors.numpy import save_file

    for k, (x, y) in enumerate(shards):
        path = root / f"{k:05d}.safetensors"
        save_file({"output": x, "label": y}, str(path))
        with open(path, "rb+") as f:
            os.fsync(f.fileno())


# ----------------------------------------------------------------------------- readers


class _Store(Dataset):
    def __init__(self, root: str, rows: int, n: int, shape: tuple[int, ...]) -> None:
        self.root, self.rows, self.n, self.shape = root, rows, n, shape
        self._pid = -1
        self._open: dict[int, Any] = {}

    def __len__(self) -> int:
        return self.n

    def __getstate__(self) -> dict[str, Any]:
        return {"root": self.root, "rows": self.rows, "n": self.n, "shape": self.shape}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._pid, self._open = -1, {}

    def _shard(self, k: int) -> Any:
        if self._pid != os.getpid():
            self._pid, self._open = os.getpid(), {}
        if k not in self._open:
            self._open[k] = self.open(k)
        return self._open[k]

    def open(self, k: int) -> Any:
        raise NotImplementedError


class NpyStore(_Store):
    def open(self, k: int) -> Any:
        return tuple(
            np.load(Path(self.root) / f"{k:05d}.{name}.npy", mmap_mode="c", allow_pickle=False)
            for name in ("output", "label")
        )

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        k, r = divmod(i, self.rows)
        x, y = self._shard(k)
        return torch.from_numpy(x[r]), torch.from_numpy(y[r : r + 1]).reshape(())


class ArrowStore(_Store):
    def open(self, k: int) -> Any:
        import pyarrow as pa

        source = pa.memory_map(str(Path(self.root) / f"{k:05d}.arrow"), "r")
        table = pa.ipc.open_file(source).read_all()
        col = table.column("output").combine_chunks()
        # Zero-copy: flatten the fixed-size list into one numpy view over the mmap.
        flat = col.values.to_numpy(zero_copy_only=True)
        labels = table.column("label").combine_chunks().to_numpy(zero_copy_only=True)
        return flat.reshape(len(col), *self.shape), labels

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        k, r = divmod(i, self.rows)
        x, y = self._shard(k)
        # Arrow buffers are read-only: torch needs a writable array, so copy the row.
        return torch.from_numpy(np.array(x[r])), torch.tensor(int(y[r]))


class SafetensorsStore(_Store):
    def open(self, k: int) -> Any:
        from safetensors import safe_open

        f = safe_open(str(Path(self.root) / f"{k:05d}.safetensors"), framework="pt")
        return f.get_slice("output"), f.get_slice("label")

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        k, r = divmod(i, self.rows)
        x, y = self._shard(k)
        return x[r : r + 1][0], y[r : r + 1][0]


FORMATS = {
    "npy": (write_npy, NpyStore),
    "arrow": (write_arrow, ArrowStore),
    "safetensors": (write_safetensors, SafetensorsStore),
}


def _epoch(ds: Dataset, workers: int, seed: int) -> tuple[float, int]:
    g = torch.Generator().manual_seed(seed)
    kwargs: dict[str, Any] = {
        "batch_size": 64,
        "shuffle": True,
        "generator": g,
        "num_workers": workers,
    }
    if workers:
        kwargs.update(multiprocessing_context="fork", timeout=120)
    loader = DataLoader(ds, **kwargs)
    batches = iterate(loader)  # the loader driver: workers stopped when the epoch ends
    next(batches)  # warm-up: worker start, first maps
    t0 = time.perf_counter()
    samples = 0
    for x, _ in batches:
        samples += x.shape[0]
    return time.perf_counter() - t0, samples


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; print a table; append JSON lines to the results file."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a short run (< 30 s)")
    parser.add_argument(
        "--samples", type=int, default=None, help="samples stored (default 2048; smoke 256)"
    )
    parser.add_argument(
        "--size", type=int, default=128, help="side S of the (3, S, S) float32 output"
    )
    parser.add_argument("--repeats", type=int, default=None, help="default 3; smoke 1")
    parser.add_argument("--formats", default="npy,arrow,safetensors")
    parser.add_argument(
        "--dir", type=Path, default=None, help="where to write (default: a temp dir)"
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "store_format.jsonl")
    args = parser.parse_args(argv)
    # One intra-op thread: on a loaded 2-core machine OpenMP's spinning threads made the
    # main-process collate (torch.stack) 100x slower at random, which measured the scheduler.
    torch.set_num_threads(1)
    n = args.samples or (256 if args.smoke else 2048)
    repeats = args.repeats or (1 if args.smoke else 3)
    shape = (3, args.size, args.size)
    per = int(np.prod(shape)) * 4 + 8
    rows = max(1, SHARD_BYTES // per)
    rng = np.random.default_rng(0)
    data = rng.standard_normal((n, *shape), dtype=np.float32)
    labels = rng.integers(0, 1000, n).astype(np.int64)
    shards = [(data[lo : lo + rows], labels[lo : lo + rows]) for lo in range(0, n, rows)]
    total_bytes = data.nbytes + labels.nbytes
    base = Path(tempfile.mkdtemp(prefix="wf-store-", dir=args.dir))
    records = []
    try:
        names = args.formats.split(",")
        writes: dict[str, list[float]] = {name: [] for name in names}
        for r in range(repeats):
            # Rotate the order each repeat: the first writer of a run pays for the page
            # cache growing, which measured ordering rather than the format.
            for name in names[r % len(names) :] + names[: r % len(names)]:
                root = base / name
                shutil.rmtree(root, ignore_errors=True)
                root.mkdir(parents=True)
                t0 = time.perf_counter()
                FORMATS[name][0](root, shards)
                writes[name].append(time.perf_counter() - t0)
        for name in names:
            store_cls = FORMATS[name][1]
            root = base / name
            ds = store_cls(str(root), rows, n, shape)
            x0, _ = ds[0]
            assert torch.equal(x0, torch.from_numpy(data[0])), name
            lat = []
            order = np.random.default_rng(1).permutation(n)[: min(n, 512)]
            for i in order:
                t0 = time.perf_counter()
                ds[int(i)]
                lat.append(time.perf_counter() - t0)
            rates: dict[int, list[float]] = {0: [], 2: []}
            for r in range(repeats):
                for w in rates:
                    s, samples = _epoch(store_cls(str(root), rows, n, shape), w, r)
                    rates[w].append(samples / s)
            rec = {
                "format": name,
                "samples": n,
                "sample_shape": list(shape),
                "shard_rows": rows,
                "store_bytes": sum(p.stat().st_size for p in root.iterdir()),
                "write_mb_per_s": total_bytes / 2**20 / statistics.median(writes[name]),
                "write_mb_per_s_all": [total_bytes / 2**20 / w for w in writes[name]],
                "getitem_us_p50": _p(lat, 50) * 1e6,
                "getitem_us_p90": _p(lat, 90) * 1e6,
                "read_samples_per_s_w0": statistics.median(rates[0]),
                "read_samples_per_s_w2": statistics.median(rates[2]),
                "read_samples_per_s_w0_all": rates[0],
                "read_samples_per_s_w2_all": rates[2],
                "repeats": repeats,
                "env": {
                    "python": platform.python_version(),
                    "torch": torch.__version__,
                    "numpy": np.__version__,
                    "git_sha": git_sha(),
                    "cpu": platform.processor() or platform.machine(),
                    "usable_cpus": len(os.sched_getaffinity(0)),
                    "os": f"{platform.system()} {platform.release()}",
                    "command": "python benchmarks/store_format.py"
                    + (" " + " ".join(argv) if argv else ""),
                    "page_cache": "warm (files just written)",
                    "torch_threads": 1,
                },
            }
            records.append(rec)
            shutil.rmtree(root, ignore_errors=True)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print(
        f"{'format':<12} {'write MB/s':>10} {'getitem us p50':>15} {'p90':>8} "
        f"{'read/s w0':>10} {'read/s w2':>10}"
    )
    for r in records:
        print(
            f"{r['format']:<12} {r['write_mb_per_s']:>10.0f} {r['getitem_us_p50']:>15.1f} "
            f"{r['getitem_us_p90']:>8.1f} {r['read_samples_per_s_w0']:>10.0f} "
            f"{r['read_samples_per_s_w2']:>10.0f}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "a") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
