"""precompute(): run an expensive transform once and store its outputs memory-mapped."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from wellfed.cache._build import (
    DEFAULT_SHARD_BYTES,
    BatchProcessor,
    ShardWriter,
    batches_for,
    ceil_div,
    check_batch,
    fingerprint_diff,
    fn_fingerprint,
    infer_specs,
    rows_per_shard,
    sample_bytes,
    source_fingerprint,
)
from wellfed.cache._dataset import CachedDataset
from wellfed.cache._store import (
    FORMAT,
    FORMAT_VERSION,
    LOCK_NAME,
    FieldSpec,
    acquire_store_lock,
    damaged_files,
    is_store,
    read_manifest,
    read_shard_record,
    release_store_lock,
    remove_store,
    remove_temporaries,
    try_store_lock,
    write_manifest,
)
from wellfed.errors import ConfigError, StateError, check_option, is_count
from wellfed.measure import open_batches

logger = logging.getLogger(__name__)

__all__ = ["ProgressFn", "precompute"]

#: ``progress(samples_done, samples_total)``: samples computed or found committed so far.
ProgressFn = Callable[[int, int], None]

ENGINES = ("local", "ray")


def _parse_bytes(value: int | str, name: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        n = value
    else:
        text = str(value).strip().upper().replace("IB", "B")
        units = {"KB": 2**10, "MB": 2**20, "GB": 2**30, "TB": 2**40, "B": 1}
        n = -1
        for unit, size in units.items():
            if text.endswith(unit):
                try:
                    n = int(float(text[: -len(unit)]) * size)
                except ValueError:
                    n = -1
                break
        else:
            n = int(text) if text.isdigit() else -1
    if n < 1:
        raise ConfigError(
            f"Invalid option: {name}={value!r} is not a positive size. Give bytes or a string "
            "like '64MB' (powers of 1024).",
            code="WF010",
            attribute=name,
            value=value,
        )
    return n


def _resolve_device(device: str | Any) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    text = str(device)
    if text.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"Invalid option: device={text!r} but torch sees no CUDA device here. Use "
            "device='cpu', or 'auto' to take a GPU only when there is one.",
            code="WF010",
            attribute="device",
            value=text,
        )
    return text


def _resolve_workers(num_workers: int | str, dataset: Any, batch_size: int) -> tuple[int, str]:
    if num_workers == "auto":
        from wellfed.platform import usable_cpu_count
        from wellfed.tune import auto_workers

        auto = auto_workers(dataset, batch_size)
        n, reason = auto.num_workers, auto.reason
        if n == 0 and usable_cpu_count() >= 2:
            # Reading alone may be fastest in the main process, but here the main process
            # runs fn: one worker lets reading overlap it.
            return 1, reason + "; at least 1 so that reading overlaps fn"
        return n, reason
    check_option(
        "num_workers",
        num_workers,
        is_count(num_workers),
        "'auto' or an int >= 0",
        code="WF010",
        fix="Use 'auto' (a stored tune result, else the CPU rule) or a count.",
    )
    assert isinstance(num_workers, int)
    return num_workers, "given"


def resolve_fn_concurrency(
    fn_concurrency: int | str, fn: Any, device: str, workers: int
) -> tuple[int, int | None, str]:
    """How fn runs in the local engine: (batches at once, torch intra-op threads, reason).

    On a GPU one batch at a time, at torch's default threads (None): the device is the
    stage, and its kernels queue behind each other anyway. On the CPU, fn shares the cores
    with the source workers. A torch.nn.Module then runs on up to ``usable_cpu_count()``
    batches at once, each in its own thread with one torch thread (inter-op rather than
    intra-op parallelism): a thread that loses its core to a worker delays only its own
    batch, where intra-op threads wait for each other at every operator and, when workers
    hold the cores, spin. Any other callable runs one batch at a time (it may keep state)
    with one torch thread per core the workers leave.

    Source: benchmarks/results/published/precompute_superres.md, 2 CPUs, 2 source workers,
    396 photos: one batch at a time on torch's 2 threads used 10.8 CPU ms/sample for 7.8 of
    stage work; on one thread it kept only 1.47 CPUs busy (67% of the CPU bound); two
    batches at once on one thread each keep 1.95 busy (94% of the bound, median of 9 runs).

    Raises:
        ConfigError: fn_concurrency is not "auto" or an int >= 1 (WF010).
    """
    import torch

    from wellfed.platform import usable_cpu_count

    cpus = usable_cpu_count()
    on_cpu = device.split(":")[0] == "cpu"
    if fn_concurrency == "auto":
        if not on_cpu:
            return 1, None, f"device {device}: one batch at a time"
        if isinstance(fn, torch.nn.Module):
            if cpus == 1:
                return 1, 1, "1 usable CPU"
            return cpus, 1, f"a Module on {cpus} CPUs: one batch per CPU, one torch thread each"
        concurrency = 1
        why = "a plain callable may keep state: one batch at a time"
    else:
        check_option(
            "fn_concurrency",
            fn_concurrency,
            is_count(fn_concurrency, 1),
            "'auto' or an int >= 1",
            code="WF010",
            fix="Use 'auto', 1 (fn called from one thread), or the batches to run at once.",
        )
        assert isinstance(fn_concurrency, int)
        concurrency, why = fn_concurrency, "given"
    if not on_cpu:
        return concurrency, None, why
    if concurrency > 1:
        return concurrency, max(1, cpus // concurrency), why
    return 1, max(1, cpus - workers) if workers else None, why


def _unwrap_source(dataset: Any) -> tuple[Any, Any, str | None]:
    """(dataset, collate_fn, start method) of a Dataset, DataLoader or LoaderSpec.

    A DataLoader is read through ``wellfed.target.spec_from_object``, the one way wellfed turns
    a loader into (dataset, settings).
    """
    from torch.utils.data import DataLoader

    from wellfed.target import LoaderSpec, spec_from_object

    if isinstance(dataset, DataLoader):
        dataset = spec_from_object(dataset)
    if isinstance(dataset, LoaderSpec):
        ctx = dataset.user_config.multiprocessing_context if dataset.user_config else None
        return dataset.dataset, dataset.collate_fn, ctx
    return dataset, None, None


def precompute(
    dataset: Any,
    fn: Callable[[Any], Any],
    out_dir: str | os.PathLike[str],
    *,
    batch_size: int = 64,
    device: str = "auto",
    num_workers: int | str = "auto",
    engine: str = "local",
    overwrite: bool = False,
    input: int | str | None = "auto",
    keep_source: bool = True,
    fn_version: str | None = None,
    shard_bytes: int | str = DEFAULT_SHARD_BYTES,
    multiprocessing_context: str | None = None,
    fn_concurrency: int | str = "auto",
    timeout_s: float = 300.0,
    wait_s: float = 0.0,
    ray_address: str | None = None,
    ray_actors: int | None = None,
    progress: ProgressFn | None = None,
) -> CachedDataset:
    """Run fn over a dataset once and store the outputs as a memory-mapped CachedDataset.

    What is computed: the source's samples are read in index order by a DataLoader with
    workers, collated into batches of ``batch_size``, and ``fn`` runs on each batch in this
    process on ``device`` (a Module never enters a worker). Outputs are checked against the
    first batch's dtypes and shapes and written to shards by a background thread, so writing
    overlaps computing. With ``engine="ray"`` the same job runs on Ray Data (see
    ``wellfed.cache._ray``) and writes the same store.

    Safety: ``out_dir`` records fingerprints of the source (type, length, a hash of 8 items),
    of fn (qualified name, a Module's parameters, ``fn_version``) and of the options. The
    same call on the same directory resumes from the committed shards (after a crash or
    ``kill -9``) or, when complete, returns the store at once (recomputing any shard whose
    files went missing or were cut short); the result is identical to an uninterrupted run's.
    One process writes a store at a time: the call holds a lock on ``out_dir`` for its whole
    life, and a second writer is refused (or waits, ``wait_s``); a complete store of the same
    fingerprint is returned even while another process holds the lock.

    Args:
        dataset: Map-style source: a Dataset (``len`` and ``__getitem__``), a DataLoader
            (its dataset, collate_fn and start method are used; its sampler is not: the
            store follows index order) or a LoaderSpec. Must be deterministic (WF402).
        fn: Maps a collated batch to a batch of outputs: a tensor (B, ...) (B: samples in
            the batch), a tuple or dict of them, or a list of B per-sample tensors (a
            variable-shape field). A torch.nn.Module is moved to ``device``, put in eval
            mode and called under ``torch.inference_mode()``; so is any callable.
        out_dir: Store directory; created if missing. Must be empty or hold a store.
        batch_size: Samples per fn call. Part of the fingerprint (results may depend on it).
        device: "auto" (CUDA when available, else CPU), "cpu", "cuda", "cuda:N".
        num_workers: Source-reading workers, or "auto": a stored ``wellfed tune`` result
            for this dataset, else the CPU rule of ``wellfed.recommend_num_workers``.
        engine: "local" (this process) or "ray" (Ray Data; ``pip install "wellfed[ray]"``).
        overwrite: When out_dir holds a store with another fingerprint, delete it and
            rebuild (default: raise WF401). A store with the same fingerprint is resumed or
            reused, never rebuilt.
        input: Which part of each batch fn gets: "auto" (position 0 of tuple samples such
            as ``(image, label)``; all of it otherwise), an int position, a dict key, or
            None (the whole batch).
        keep_source: Store the batch's other fields (labels) beside fn's outputs, so
            CachedDataset returns ``(output, label)`` where the source gave ``(image, label)``.
        fn_version: Your version of fn, recorded in the fingerprint: change it when fn's
            code changes in a way its name and parameters do not show.
        shard_bytes: Target shard size, bytes or a string like "64MB" (powers of 1024).
        multiprocessing_context: Start method of the source workers; None: the source
            DataLoader's, else the platform default.
        fn_concurrency: Batches fn works on at once, each in its own thread of this
            process, or "auto": on a CPU device with a torch.nn.Module fn, one per usable
            CPU, each on one torch thread (see ``resolve_fn_concurrency``); else 1. More
            than 1 requires fn to be safe to call from several threads at once, as a Module
            in eval mode is; pass 1 for a fn that keeps state between calls.
        timeout_s: Seconds to wait for one source batch from the workers (0: forever).
        wait_s: Seconds to wait when another process is writing out_dir (holds its lock):
            0 (default) refuses at once (WF413); ``math.inf`` waits for as long as it takes.
            After the wait the call resumes the store, or returns it when complete (the
            way for several ranks of one job to share one store).
        ray_address: engine="ray", when Ray is not initialised in this process: an
            existing cluster ("host:port", "ray://host:port", or "auto" for the cluster
            ``ray start`` started on this machine); None: ``RAY_ADDRESS`` when set, else a
            new local instance, shut down afterwards.
        ray_actors: engine="ray": fn actors (default: 1 per GPU, else 1).
        progress: Called as ``progress(samples_done, samples_total)`` after each batch.

    Returns:
        The CachedDataset over out_dir.

    Raises:
        ConfigError: invalid option (WF010), random source (WF402), out_dir holds other
            files (WF402), unstorable output or bad ``input`` (WF409).
        StateError: out_dir holds a store with another fingerprint (WF401), its manifest is
            truncated, replaced or of the wrong shape (WF412: overwrite=True rebuilds it),
            or another process is writing it (WF413, naming its pid and command line).
        PrecomputeError: fn raised (WF403) or returned inconsistent dtypes or shapes (WF404),
            naming the sample indices; the disk filled up (WF405). The store stays
            resumable in every case.
        DependencyError: engine="ray" without Ray installed (WF410).

    Example:
        >>> cache = wellfed.precompute(train_set, sr_model, "cache/sr")   # doctest: +SKIP
        >>> loader = DataLoader(cache, batch_size=64, num_workers=2)      # doctest: +SKIP

    Source:
        Shard size: DEFAULT_SHARD_BYTES. Store format: benchmarks/results/published/store_format.md.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(
            f"Invalid option: batch_size={batch_size!r} is not an int >= 1. Use 1 or more.",
            code="WF010",
            attribute="batch_size",
            value=batch_size,
        )
    if engine not in ENGINES:
        raise ConfigError(
            f"Invalid option: engine={engine!r} is not one of {ENGINES}. Use 'local', or "
            "'ray' to run on Ray Data.",
            code="WF010",
            attribute="engine",
            value=engine,
        )
    if not callable(fn):
        raise ConfigError(
            f"Invalid option: fn={fn!r} is not callable. Pass a function or a torch.nn.Module "
            "that maps a batch to a batch of outputs.",
            code="WF010",
            attribute="fn",
            value=repr(fn)[:100],
        )
    shard_size = _parse_bytes(shard_bytes, "shard_bytes")
    check_option(
        "wait_s",
        wait_s,
        isinstance(wait_s, (int, float)) and not isinstance(wait_s, bool) and wait_s >= 0,
        "a number of seconds >= 0",
        code="WF010",
        fix="Use 0 to refuse at once when another process writes out_dir, or the seconds to "
        "wait (math.inf: as long as it takes).",
    )
    source, collate_fn, source_ctx = _unwrap_source(dataset)
    try:
        n = len(source)
    except TypeError:
        n = -1
    if n < 0 or not hasattr(source, "__getitem__"):
        raise ConfigError(
            f"Unsupported source: {type(source).__name__} is not a map-style dataset (no "
            "len() or __getitem__), so samples have no stable index to resume from. Wrap it "
            "in a map-style Dataset.",
            code="WF010",
            attribute="dataset",
            value=type(source).__name__,
        )
    dev = _resolve_device(device)
    workers, why = _resolve_workers(num_workers, source, batch_size)
    concurrency, threads, why_c = resolve_fn_concurrency(fn_concurrency, fn, dev, workers)
    logger.info(
        "precompute: num_workers=%s -> %d (%s); device=%s; fn_concurrency=%s -> %d batches "
        "at once, %s torch threads (%s)",
        num_workers,
        workers,
        why,
        dev,
        fn_concurrency,
        concurrency,
        threads or "default",
        why_c,
    )

    root = Path(out_dir).resolve()
    if root.exists() and not root.is_dir():
        raise ConfigError(
            f"Bad out_dir: {str(root)!r} is a file. Give a directory (created if missing).",
            code="WF402",
            attribute="out_dir",
            value=str(root),
        )
    if (
        root.is_dir()
        and not is_store(root)
        and any(not p.name.startswith(".tmp-") and p.name != LOCK_NAME for p in root.iterdir())
    ):
        raise ConfigError(
            f"Bad out_dir: {str(root)!r} is not empty and holds no wellfed store, and wellfed "
            "never deletes files it did not write. Give an empty or new directory.",
            code="WF402",
            attribute="out_dir",
            value=str(root),
        )

    def take_fingerprint() -> dict[str, Any]:
        return {
            "source": source_fingerprint(source, n),
            "fn": fn_fingerprint(fn, fn_version),
            "options": {
                "batch_size": batch_size,
                "input": input,
                "keep_source": keep_source,
                "shard_bytes": shard_size,
                "device_type": dev.split(":")[0],
            },
        }

    root.mkdir(parents=True, exist_ok=True)
    # One writer at a time (WF413): the lock is held until this call returns or raises, and
    # the kernel drops it if this process dies. Another writer's store may still be read
    # when it is complete and is this very job's (ranks of one job calling precompute).
    fingerprint: dict[str, Any] | None = None
    lock = try_store_lock(root)
    if lock is None:
        fingerprint = take_fingerprint()
        if _intact_complete_store(root, fingerprint):
            logger.info("precompute: %s is complete (another process holds its lock)", root)
            if progress is not None:
                progress(n, n)
            return CachedDataset(root)
        lock = acquire_store_lock(root, wait_s)
    try:
        return _build_locked(
            root,
            fingerprint,
            take_fingerprint,
            source=source,
            collate_fn=collate_fn,
            context=multiprocessing_context or source_ctx,
            n=n,
            fn=fn,
            dev=dev,
            workers=workers,
            concurrency=concurrency,
            threads=threads,
            batch_size=batch_size,
            shard_size=shard_size,
            engine=engine,
            overwrite=overwrite,
            input=input,
            keep_source=keep_source,
            timeout_s=timeout_s,
            ray_address=ray_address,
            ray_actors=ray_actors,
            progress=progress,
        )
    finally:
        release_store_lock(lock)


def _intact_complete_store(root: Path, fingerprint: dict[str, Any]) -> bool:
    """True when root holds a complete store of this fingerprint with no file missing or cut."""
    try:
        manifest = read_manifest(root)
    except (OSError, StateError):
        return False
    return (
        manifest.get("format_version") == FORMAT_VERSION
        and manifest.get("status") == "complete"
        and manifest.get("fingerprint") == fingerprint
        and not any(damaged_files(root, record) for record in manifest["shards"])
    )


def _build_locked(
    root: Path,
    fingerprint: dict[str, Any] | None,
    take_fingerprint: Callable[[], dict[str, Any]],
    *,
    source: Any,
    collate_fn: Any,
    context: str | None,
    n: int,
    fn: Any,
    dev: str,
    workers: int,
    concurrency: int,
    threads: int | None,
    batch_size: int,
    shard_size: int,
    engine: str,
    overwrite: bool,
    input: int | str | None,
    keep_source: bool,
    timeout_s: float,
    ray_address: str | None,
    ray_actors: int | None,
    progress: ProgressFn | None,
) -> CachedDataset:
    """precompute's job once the writers' lock is held: check, resume, rebuild or reuse."""
    reader: _SourceBatches | None = None
    if engine == "local" and not is_store(root):
        # A new store computes every batch: start the source workers now, so that they read
        # while the fingerprint is taken (a few __getitem__ calls in this process).
        # Source: benchmarks/results/published/precompute_superres.md: on the 396-photo job
        # the fingerprint took ~50 ms of one core and starting the workers ~30 ms, ~5% of
        # the 1.5 s run, with the other core idle.
        reader = _SourceBatches(
            source, collate_fn, _all_batches(n, batch_size), workers, context, timeout_s
        )
    try:
        if fingerprint is None:
            fingerprint = take_fingerprint()
        manifest: dict[str, Any] | None = None
        old: dict[str, Any] | None = None
        if is_store(root):
            try:
                old = read_manifest(root)
            except StateError as exc:  # corrupt (WF412): overwrite rebuilds, else it names it
                if not overwrite:
                    raise
                logger.warning(
                    "precompute: %s has a corrupt manifest (%s); overwrite=True: rebuilding",
                    root,
                    exc.facts.get("problem"),
                )
                remove_store(root)
        if old is not None:
            same = old.get("fingerprint") == fingerprint
            if not same or old.get("format_version") != FORMAT_VERSION:
                diff = fingerprint_diff(old.get("fingerprint") or {}, fingerprint)
                if not overwrite:
                    raise StateError(
                        f"Store mismatch: out_dir={str(root)!r} holds a store built with another "
                        f"fingerprint (differs in: {', '.join(diff) or 'format version'}), so its "
                        "rows are not this call's. Pass overwrite=True (--overwrite) to rebuild "
                        "it, or choose another out_dir.",
                        code="WF401",
                        attribute="fingerprint",
                        value=diff,
                    )
                logger.info("precompute: rebuilding %s (fingerprint differs in %s)", root, diff)
                remove_store(root)
            else:
                manifest = old
                if old.get("status") == "complete":
                    damaged = [f for r in old["shards"] for f in damaged_files(root, r)]
                    if not damaged:
                        logger.info("precompute: %s is complete; nothing to do", root)
                        if progress is not None:
                            progress(n, n)
                        return CachedDataset(root)
                    # Missing or cut-short shard files: recompute those shards, as a resume.
                    logger.warning(
                        "precompute: %s is complete but %d file(s) are missing or cut short "
                        "(%s); recomputing their shards",
                        root,
                        len(damaged),
                        ", ".join(damaged[:5]),
                    )
                    manifest["status"] = "building"
                    write_manifest(root, manifest)
        remove_temporaries(root)
        if manifest is None:
            manifest = {
                "format": FORMAT,
                "format_version": FORMAT_VERSION,
                "status": "building",
                "fingerprint": fingerprint,
                "num_samples": n,
                "batch_size": batch_size,
                "rows_per_shard": None,
                "fields": None,
                "layout": None,
                "shards": [],
            }
            write_manifest(root, manifest)

        job = _Job(root, manifest, n, batch_size, shard_size, progress)
        processor = BatchProcessor(fn, dev, input, keep_source)
        if engine == "ray":
            from wellfed.cache._ray import run_ray

            run_ray(job, source, collate_fn, processor, ray_address=ray_address, actors=ray_actors)
        else:
            if reader is None:
                reader = _SourceBatches(source, collate_fn, job.plan(), workers, context, timeout_s)
            _run_local(job, reader, processor, concurrency, threads)
        return job.finish()
    finally:
        if reader is not None:
            reader.close()


class _Job:
    """The state of one build, shared by the engines: schema, shards done, the writer."""

    def __init__(
        self,
        root: Path,
        manifest: dict[str, Any],
        n: int,
        batch_size: int,
        shard_bytes: int,
        progress: ProgressFn | None,
    ) -> None:
        self.root = root
        self.manifest = manifest
        self.n = n
        self.batch_size = batch_size
        self.shard_bytes = shard_bytes
        self.progress = progress
        self.specs: tuple[FieldSpec, ...] | None = (
            tuple(FieldSpec.from_dict(f) for f in manifest["fields"])
            if manifest.get("fields")
            else None
        )
        self.rows: int | None = manifest.get("rows_per_shard")
        self.layout: dict[str, Any] | None = manifest.get("layout")
        self.writer: ShardWriter | None = None
        self.done = 0

    def missing_shards(self) -> list[int] | None:
        """Shards not committed yet; None while rows_per_shard is unknown (a fresh store)."""
        if self.rows is None:
            return None
        shards = ceil_div(self.n, self.rows)
        missing = []
        for k in range(shards):
            record = read_shard_record(self.root, k)
            if record is None or not self._looks_whole(record):
                missing.append(k)
        self.done = self.n - sum(min(self.rows, self.n - k * self.rows) for k in missing)
        return missing

    def _looks_whole(self, record: dict[str, Any]) -> bool:
        folder = self.root / str(record["dir"])
        try:
            return all(
                (folder / name).stat().st_size == info["bytes"]
                for name, info in record["files"].items()
            )
        except OSError:
            return False

    def plan(self) -> list[list[int]]:
        """Index batches still to compute, in order."""
        missing = self.missing_shards()
        if missing is None:
            return _all_batches(self.n, self.batch_size)
        if self.progress is not None and self.done:
            self.progress(self.done, self.n)
        assert self.rows is not None
        return batches_for(missing, self.rows, self.n, self.batch_size)

    def accept(self, batch: Any) -> None:
        """Check a processed batch and hand it to the writer (the first one fixes the schema)."""
        if self.specs is None or self.rows is None or self.layout is None:
            self.specs = infer_specs(batch)
            self.layout = dict(batch.layout)
            if self.rows is None:
                self.rows = rows_per_shard(self.batch_size, sample_bytes(batch), self.shard_bytes)
            self.manifest.update(
                rows_per_shard=self.rows,
                fields=[s.to_dict() for s in self.specs],
                layout=self.layout,
            )
            write_manifest(self.root, self.manifest)
        check_batch(batch, self.specs, self.layout)
        if self.writer is None:
            self.writer = ShardWriter(self.root, self.specs, self.n, self.rows)
        self.writer.put(batch)
        self.done += len(batch.indices)
        if self.progress is not None:
            self.progress(self.done, self.n)

    def close(self) -> None:
        """Wait for the writer to commit everything."""
        if self.writer is not None:
            self.writer.close()

    def abort(self) -> None:
        """After a failure: commit the complete shards already queued, drop the partial one."""
        if self.writer is not None:
            try:
                self.writer.close()
            except Exception as exc:  # the producer's error is the one to raise
                logger.debug("shard writer after failure: %s", exc)

    def finish(self) -> CachedDataset:
        """Write the complete manifest and open the store."""
        assert self.rows is not None
        missing = self.missing_shards()
        if missing:
            raise StateError(
                f"Incomplete store: shards {missing[:10]} of {self.root} are missing after the "
                "run finished, which should not happen. Run the same call again to complete "
                "them, and report this.",
                code="WF406",
                attribute="shards",
                value=missing,
            )
        records = [read_shard_record(self.root, k) for k in range(ceil_div(self.n, self.rows))]
        self.manifest.update(status="complete", shards=records)
        write_manifest(self.root, self.manifest)
        return CachedDataset(self.root)


def _all_batches(n: int, batch_size: int) -> list[list[int]]:
    """Index batches of a whole store, in order."""
    return [list(range(lo, min(lo + batch_size, n))) for lo in range(0, n, batch_size)]


class _SourceBatches:
    """The planned index batches of the source, read by a DataLoader in order.

    The workers start (and begin reading ahead) when this is constructed; ``close`` shuts
    them down, also when the batches were never consumed.
    """

    def __init__(
        self,
        source: Any,
        collate_fn: Any,
        batches: list[list[int]],
        workers: int,
        context: str | None,
        timeout_s: float,
    ) -> None:
        from torch.utils.data import DataLoader

        self.batches = batches
        self._it: Any = None
        self._stack = contextlib.ExitStack()
        if not batches:
            return
        kwargs: dict[str, Any] = {"batch_sampler": batches, "num_workers": workers}
        if collate_fn is not None:
            kwargs["collate_fn"] = collate_fn
        if workers > 0:
            kwargs["timeout"] = timeout_s
            kwargs["prefetch_factor"] = 2
            if context is not None:
                kwargs["multiprocessing_context"] = context
        # Entered now, so that the workers start reading ahead at once; close() exits it.
        self._it = self._stack.enter_context(open_batches(DataLoader(source, **kwargs)))

    def __iter__(self) -> Iterator[tuple[list[int], Any]]:
        if self._it is None:
            return iter(())
        return zip(self.batches, self._it, strict=True)

    def close(self) -> None:
        """Stop the workers (the loader driver's shutdown: the same as the iterator's end)."""
        self._it = None
        self._stack.close()


def _run_local(
    job: _Job,
    reader: _SourceBatches,
    processor: BatchProcessor,
    concurrency: int = 1,
    torch_threads: int | None = None,
) -> None:
    """Run fn on the reader's batches in ``concurrency`` threads and hand them to the writer.

    Outputs reach the writer in index order whatever order the threads finish in; at most
    ``concurrency`` batches are being computed at once.
    """
    if not reader.batches:
        return
    import torch

    threads = torch.get_num_threads()
    if torch_threads is not None:
        torch.set_num_threads(torch_threads)
    ok = False
    try:
        if concurrency <= 1:
            for indices, batch in reader:
                job.accept(processor(batch, indices))
        else:
            _run_concurrent(job, reader, processor, concurrency)
        job.close()
        ok = True
    finally:
        torch.set_num_threads(threads)
        if not ok:
            job.abort()


def _run_concurrent(job: _Job, batches: Any, processor: BatchProcessor, concurrency: int) -> None:
    """Run fn on up to ``concurrency`` batches at once; accept the results in order."""
    from collections import deque
    from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait

    processor.prepare()  # move a Module to the device once, before the threads share it
    pending: deque[Future[Any]] = deque()
    pool = ThreadPoolExecutor(concurrency, thread_name_prefix="wellfed-fn")
    try:
        for indices, batch in batches:
            # Hand finished batches to the writer in order, then wait while every thread is
            # busy or finished batches queue behind a slow first one (at most 2 x
            # concurrency held, which bounds memory).
            while True:
                while pending and pending[0].done():
                    job.accept(pending.popleft().result())
                running = [f for f in pending if not f.done()]
                if len(running) < concurrency and len(pending) < 2 * concurrency:
                    break
                wait(running, return_when=FIRST_COMPLETED)
            pending.append(pool.submit(processor, batch, indices))
        while pending:
            job.accept(pending.popleft().result())
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
