"""Static checks of the category 'iterable-sharding'.

An IterableDataset that does not split its stream per worker (WF117: worker identity never
read, or read only to tag samples), and fewer shards than workers (WF118).
"""

from __future__ import annotations

import sys

from wellfed.doctor._classify import safe_getattr, source_text
from wellfed.doctor._context import Context
from wellfed.doctor._report import Finding
from wellfed.doctor._source import analyze_class, is_user_code, worker_info_use

__all__ = [
    "check_iterable_sharding",
]


_SHARD_ATTRS = (
    "files",
    "shards",
    "urls",
    "paths",
    "file_list",
    "filenames",
    "shard_paths",
    "shard_files",
    "tar_files",
    "parquet_files",
)


def check_iterable_sharding(ctx: Context) -> list[Finding]:
    """WF117/WF118: an IterableDataset whose ``__iter__`` ignores worker info; too few shards."""
    ds = ctx.dataset
    torch = sys.modules.get("torch")
    if torch is None or not isinstance(ds, torch.utils.data.IterableDataset):
        return []
    nw = ctx.num_workers
    if nw is not None and nw < 2:
        return []
    cls = type(ds)
    if not is_user_code(cls):
        return []
    ana = analyze_class(cls)
    wif_text = source_text(ctx.settings.get("worker_init_fn"))
    # Worker identity must split the stream (islice by id, files[id::n], i % n == id), not
    # only be mentioned: allenai/ir_datasets#25 read get_worker_info() to tag its samples.
    use, _how = worker_info_use(cls)
    sharded = use == "splits" or any(s in wif_text for s in ("get_worker_info", "worker_info"))
    out: list[Finding] = []
    if not sharded and "__iter__" in ana.readers:
        if use == "tags":
            what = (
                f"{cls.__qualname__}.__iter__ reads which worker it runs in "
                "(get_worker_info()) but never uses it to split the stream, only to tag or "
                "pass along its samples"
            )
            evidence = (
                "static: worker info in __iter__ reaches no split (no islice/range/slice/"
                "comparison by worker id, no shard list indexed by it), nor in worker_init_fn"
            )
        else:
            what = (
                f"{cls.__qualname__}.__iter__ never asks which worker it runs in "
                "(torch.utils.data.get_worker_info())"
            )
            evidence = (
                "static: no get_worker_info/worker_info in __iter__, its helpers or worker_init_fn"
            )
        f = ctx.finding(
            "WF117",
            "error",
            "type(dataset).__iter__",
            f"{what}, so every worker yields the whole stream: "
            f"each sample arrives num_workers={nw or 'N'} times per epoch.",
            "Split the stream per worker in __iter__:\n"
            "info = torch.utils.data.get_worker_info()\n"
            "wid, n = (info.id, info.num_workers) if info else (0, 1)\n"
            "for i, item in enumerate(self.source):\n"
            "    if i % n == wid: yield item  # or give each worker its own files: "
            "self.files[wid::n]",
            evidence,
        )
        if f is not None:
            out.append(f)
    if sharded and nw:
        for attr in _SHARD_ATTRS:
            value = safe_getattr(ds, attr)
            if isinstance(value, (list, tuple)) and 0 < len(value) < nw:
                f = ctx.finding(
                    "WF118",
                    "warning",
                    f"dataset.{attr}",
                    f"dataset.{attr} has {len(value)} shard(s) for num_workers={nw}: "
                    f"{nw - len(value)} worker(s) get no shard and idle (or, if shards are "
                    "split by index, get nothing to read).",
                    f"Use num_workers <= {len(value)}, or split the data into at least {nw} "
                    "shards (more shards than workers balances better).",
                    f"static: len(dataset.{attr}) = {len(value)} < num_workers = {nw}",
                )
                if f is not None:
                    out.append(f)
                break
    return out
