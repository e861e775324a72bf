"""Other libraries' thread pipelines, as iterables that ``wellfed.measure.measure`` can time.

Each class here is a loader for ``measure(spec, config, make_loader=...)``: built from the
workload's spec and a LoaderConfig (``num_threads`` = the pipeline's thread count,
``batch_size``, ``pin_memory``), every ``iter()`` builds a fresh pipeline for one epoch and
returns an iterator that stops it for certain: when the epoch is exhausted, when it is closed
(``close()``, or ``_shutdown_workers()``, which wellfed's loader driver calls, as for torch's
worker processes), or when it is garbage collected. So they are measured exactly like a
DataLoader: same child process, same warm-up, same windows, each epoch's start-up counted.

- :class:`SpdlEpochs`: an SPDL pipeline (``spdl.pipeline.PipelineBuilder``): the sampler's
  indices as the source, ``dataset.__getitem__`` piped with ``concurrency=num_threads``,
  ``aggregate(batch_size)``, the collate function piped, a sink of 3 batches, built with a
  thread pool of ``num_threads``. That is the layout and the defaults of
  ``spdl.dataloader.DataLoader._get_pipeline`` (SPDL 0.8.0), spelled out with the builder.
- :class:`TorchdataNodesEpochs`: ``torchdata.nodes`` as its guide "Migrating to
  torchdata.nodes from torch.utils.data" (torchdata 0.11) writes a DataLoader:
  ``SamplerWrapper -> Batcher -> ParallelMapper(MapAndCollate, method="thread") ->
  [PinMemory] -> Prefetcher(prefetch_factor=2 * num_workers) -> Loader``. With
  ``per_sample=True``, the layout of its "Getting Started" page instead:
  ``SamplerWrapper -> ParallelMapper(dataset.__getitem__) -> Batcher -> Mapper(collate) ->
  Prefetcher -> Loader`` (one thread hand-off per sample rather than per batch).

Neither package is a dependency of wellfed or of its test extra: import them only through
these classes (``available()`` says whether one is importable).

Interpreter exit: a daemon thread still inside a torch operation when the interpreter
finalizes aborts the process ("terminate called without an active exception", exit status
134; see README, "Thread pipelines at interpreter exit"). torchdata.nodes' threads are daemons
with no public close; :class:`TorchdataNodesEpochs` therefore drops its nodes, collects them
(their ``__del__`` is torchdata's own shutdown) and joins the threads the epoch started.
SPDL's threads are not daemons and ``Pipeline.stop()`` joins them.

Run ``python -m benchmarks.pipelines --check-exit`` to check both: no thread left after an
epoch cut short or exhausted, and an interpreter that exits with a live, unclosed iterator
prints nothing and exits 0.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from wellfed.measure import LoaderConfig
from wellfed.target import LoaderSpec

__all__ = [
    "SPDL_SINK_BUFFER",
    "SPDL_THREADS",
    "THREAD_JOIN_TIMEOUT_S",
    "MapAndCollate",
    "SpdlEpochs",
    "TorchdataNodesEpochs",
    "available",
    "check_exit",
]

#: SPDL's thread count when its docs are followed: ``spdl.dataloader.DataLoader``'s default
#: ``num_threads=8`` (SPDL 0.8.0), used there both as each stage's concurrency and as the
#: size of the pipeline's thread pool (``PipelineBuilder.pipe`` defaults to concurrency 1 and
#: ``build(num_threads=...)`` has no default).
SPDL_THREADS = 8

#: Batches the SPDL sink buffers: ``add_sink``'s and ``spdl.dataloader.DataLoader``'s default.
SPDL_SINK_BUFFER = 3

#: Seconds closing an epoch waits, in all, for the threads it started. Generous: a fetch in
#: flight completes first (the slowest here, a 256-thread io-latency epoch, ends in < 1 s).
THREAD_JOIN_TIMEOUT_S = 30.0


def available(package: str) -> bool:
    """Whether ``package`` ("spdl" or "torchdata") can be imported here."""
    return importlib.util.find_spec(package) is not None


def _sampler(spec: LoaderSpec) -> Any:
    """The sampler a DataLoader built from ``spec`` would use (its own, random or sequential)."""
    from torch.utils.data import RandomSampler, SequentialSampler

    if spec.batch_sampler is not None:
        raise ValueError("a custom batch_sampler is not supported by the pipeline contenders")
    if spec.sampler is not None:
        return spec.sampler
    if spec.shuffle:
        return RandomSampler(spec.dataset, generator=spec.generator)
    return SequentialSampler(spec.dataset)


def _collate(spec: LoaderSpec) -> Callable[[Any], Any]:
    from torch.utils.data import default_collate

    return spec.collate_fn if spec.collate_fn is not None else default_collate


def _pin(batch: Any) -> Any:
    from torch.utils.data._utils.pin_memory import pin_memory

    return pin_memory(batch)


class MapAndCollate:
    """A batch of indices -> the collated batch (torchdata's migration guide's ``MapAndCollate``).

    Args:
        dataset: The map-style dataset.
        collate_fn: Turns the list of samples into the batch.
    """

    def __init__(self, dataset: Any, collate_fn: Callable[[Any], Any]) -> None:
        self.dataset = dataset
        self.collate_fn = collate_fn

    def __call__(self, indices: Sequence[int]) -> Any:
        """The collated batch of ``indices``."""
        return self.collate_fn([self.dataset[i] for i in indices])


class _Epoch:
    """One epoch's iterator: yields from ``items``; ``stop`` runs once, when it ends or closes.

    ``stop(exhausted)`` also runs when the iterator is garbage collected and, for one still
    alive then, at interpreter exit before daemon threads are abandoned (``weakref.finalize``
    runs at exit as an ``atexit`` hook), so its threads are joined in time.
    """

    def __init__(self, items: Iterator[Any], stop: Callable[[bool], None]) -> None:
        self._items = items
        self._stop = stop
        self._finalizer = weakref.finalize(self, stop, False)

    def __iter__(self) -> _Epoch:
        return self

    def __next__(self) -> Any:
        try:
            return next(self._items)
        except StopIteration:
            self._close(exhausted=True)
            raise

    def _close(self, *, exhausted: bool) -> None:
        if self._finalizer.detach() is not None:
            self._items = iter(())
            self._stop(exhausted)

    def close(self) -> None:
        """Stop the epoch's pipeline and its threads now."""
        self._close(exhausted=False)

    #: wellfed's loader driver (``wellfed.measure.close_iterator``) stops an iterator with it.
    _shutdown_workers = close


def _join_started(before: set[threading.Thread], timeout_s: float) -> list[str]:
    """Join the threads started since ``before`` was taken; return the names still alive."""
    deadline = time.monotonic() + timeout_s
    for t in set(threading.enumerate()) - before:
        if t is not threading.current_thread():
            t.join(max(0.0, deadline - time.monotonic()))
    return sorted(t.name for t in set(threading.enumerate()) - before if t.is_alive())


class SpdlEpochs:
    """An SPDL thread pipeline over a map-style dataset; each ``iter()`` runs one epoch.

    ``add_source(sampler) -> pipe(dataset.__getitem__, concurrency=T) -> aggregate(batch_size,
    drop_last) -> pipe(collate, concurrency=T) [-> pipe(pin_memory)] -> add_sink(3) ->
    build(num_threads=T)``, with T = ``config.num_threads``: the stages and defaults of
    ``spdl.dataloader.DataLoader`` (SPDL 0.8.0). Items leave each stage in completion order
    (SPDL's default), so a batch's samples are not the sampler's consecutive indices: same
    samples per epoch, same batch size.

    Args:
        spec: The workload (dataset, shuffle or sampler, collate_fn, drop_last).
        config: ``num_threads`` (>= 1), ``batch_size``, ``pin_memory``.
    """

    def __init__(self, spec: LoaderSpec, config: LoaderConfig) -> None:
        if config.num_threads < 1:
            raise ValueError("SpdlEpochs needs config.num_threads >= 1")
        self.spec = spec
        self.config = config

    def __iter__(self) -> _Epoch:
        from spdl.pipeline import PipelineBuilder

        threads = self.config.num_threads
        builder = (
            PipelineBuilder()
            .add_source(_sampler(self.spec))
            .pipe(self.spec.dataset.__getitem__, concurrency=threads)
            .aggregate(self.config.batch_size, drop_last=self.spec.drop_last)
            .pipe(_collate(self.spec), concurrency=threads)
        )
        if self.config.pin_memory:
            builder = builder.pipe(_pin)
        pipeline = builder.add_sink(SPDL_SINK_BUFFER).build(num_threads=threads)
        pipeline.start()

        def stop(exhausted: bool) -> None:
            pipeline.stop()

        return _Epoch(pipeline.get_iterator(), stop)


class TorchdataNodesEpochs:
    """A torchdata.nodes thread pipeline over a map-style dataset; each ``iter()`` is an epoch.

    Default (``per_sample=False``), the migration guide's DataLoader (torchdata 0.11,
    "Migrating to torchdata.nodes from torch.utils.data"): ``SamplerWrapper(sampler) ->
    Batcher(batch_size, drop_last) -> ParallelMapper(MapAndCollate, num_workers=T,
    method="thread", in_order=True) -> [PinMemory] -> Prefetcher(prefetch_factor=2 * T) ->
    Loader``, T = ``config.num_threads``. With ``per_sample``: ``SamplerWrapper ->
    ParallelMapper(dataset.__getitem__, num_workers=T, method="thread") -> Batcher ->
    Mapper(collate) -> [PinMemory] -> Prefetcher(2 * T) -> Loader`` ("Getting Started").

    An epoch cut short is stopped by dropping its nodes and collecting them (torchdata's own
    shutdown runs in their ``__del__``; it has no public close), then joining the threads it
    started (at most THREAD_JOIN_TIMEOUT_S); an exhausted epoch's threads end by themselves
    (within torchdata's 0.1 s queue poll).

    Args:
        spec: The workload (dataset, shuffle or sampler, collate_fn, drop_last).
        config: ``num_threads`` (>= 1), ``batch_size``, ``pin_memory``.
        per_sample: The per-sample layout instead of the per-batch one.
    """

    def __init__(self, spec: LoaderSpec, config: LoaderConfig, per_sample: bool = False) -> None:
        if config.num_threads < 1:
            raise ValueError("TorchdataNodesEpochs needs config.num_threads >= 1")
        self.spec = spec
        self.config = config
        self.per_sample = per_sample
        #: Names of threads an epoch could not join when it closed (for the exit check).
        self.left_threads: list[str] = []

    def _root(self) -> Any:
        import torchdata.nodes as tn

        threads = self.config.num_threads
        node: Any = tn.SamplerWrapper(_sampler(self.spec))
        if self.per_sample:
            node = tn.ParallelMapper(
                node, map_fn=self.spec.dataset.__getitem__, num_workers=threads, method="thread"
            )
            node = tn.Batcher(
                node, batch_size=self.config.batch_size, drop_last=self.spec.drop_last
            )
            node = tn.Mapper(node, _collate(self.spec))
        else:
            node = tn.Batcher(
                node, batch_size=self.config.batch_size, drop_last=self.spec.drop_last
            )
            node = tn.ParallelMapper(
                node,
                map_fn=MapAndCollate(self.spec.dataset, _collate(self.spec)),
                num_workers=threads,
                method="thread",
                in_order=True,
            )
        if self.config.pin_memory:
            node = tn.PinMemory(node)
        return tn.Prefetcher(node, prefetch_factor=2 * threads)

    def _loader(self) -> Any:
        """The pipeline's ``torchdata.nodes.Loader``, as the docs use it (no shutdown of ours)."""
        import torchdata.nodes as tn

        return tn.Loader(self._root())

    def __iter__(self) -> _Epoch:
        before = set(threading.enumerate())
        held: list[Any] = [self._loader()]
        held.append(iter(held[0]))

        def items() -> Iterator[Any]:
            yield from held[1]

        def stop(exhausted: bool) -> None:
            held.clear()
            if not exhausted:
                gc.collect()
                self.left_threads = _join_started(before, THREAD_JOIN_TIMEOUT_S)

        return _Epoch(items(), stop)


# --- the exit check ----------------------------------------------------------------------------

_EXIT_SCRIPT = """
import sys, threading
from benchmarks.pipelines import SpdlEpochs, TorchdataNodesEpochs
from wellfed.measure import LoaderConfig
from wellfed.workloads import PHOTOS_DIR, builtin_spec
spec = builtin_spec(PHOTOS_DIR, batch_size=4)
kind, mode = sys.argv[1], sys.argv[2]
base = threading.active_count()
if kind == "torchdata-unwrapped":
    # The control: the migration guide's Loader used directly, as its docs do.
    it = iter(TorchdataNodesEpochs(spec, LoaderConfig(num_threads=4, batch_size=4))._loader())
else:
    cls = SpdlEpochs if kind == "spdl" else TorchdataNodesEpochs
    it = iter(cls(spec, LoaderConfig(num_threads=4, batch_size=4)))
next(it)
if mode == "close":
    it.close()
    print("threads left", threading.active_count() - base)
elif mode == "exhaust":
    for _ in it:
        pass
    import time; time.sleep(0.5)
    print("threads left", threading.active_count() - base)
else:
    print("threads left", "not closed")
"""


def check_exit(
    repeats: int = 3, timeout_s: float = 120.0, *, control: bool = False
) -> dict[str, Any]:
    """Run each pipeline in fresh interpreters: close early, exhaust, or exit with it running.

    Each run loads the built-in JPEG workload's shipped photos with 4 threads (JPEG decode and
    torch transforms running in the threads when the interpreter exits, which is what aborts
    a process whose daemon threads are left running). Returns, per pipeline and mode, the exit
    statuses, the stderr lines seen and the threads left; ``ok`` when every run exited 0,
    printed nothing on stderr and left no thread. With ``control``, also the migration guide's
    ``Loader`` used directly and left running at exit (not counted in ``ok``): it shows the
    check can see the abort that the wrapper prevents.
    """
    import os
    from pathlib import Path

    root = str(Path(__file__).resolve().parents[1])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [root, str(Path(root) / "src"), *filter(None, [env.get("PYTHONPATH")])]
    )
    results: dict[str, Any] = {}
    ok = True
    runs = [(k, m) for k in ("spdl", "torchdata") for m in ("close", "exhaust", "exit-running")]
    if control:
        runs.append(("torchdata-unwrapped", "exit-running"))
    for kind, mode in runs:
        package = kind.split("-")[0]
        if not available(package):
            results[f"{kind} {mode}"] = {"skipped": f"{package} is not installed"}
            continue
        statuses, stderr, left = [], [], []
        for _ in range(repeats):
            out = subprocess.run(
                [sys.executable, "-c", _EXIT_SCRIPT, kind, mode],
                capture_output=True,
                text=True,
                timeout=timeout_s,
                env=env,
                cwd=root,
                check=False,
            )
            statuses.append(out.returncode)
            stderr += [line for line in out.stderr.splitlines() if line.strip()]
            left += [line for line in out.stdout.splitlines() if line.startswith("threads")]
        good = all(s == 0 for s in statuses) and not stderr
        good = good and all(line in ("threads left 0", "threads left not closed") for line in left)
        if kind != "torchdata-unwrapped":
            ok = ok and good
        results[f"{kind} {mode}"] = {
            "ok": good,
            "exit_statuses": statuses,
            "stderr": sorted(set(stderr))[:10],
            "threads": left,
        }
    return {"ok": ok, "runs": results}


def main(argv: Sequence[str] | None = None) -> int:
    """``--check-exit``: run :func:`check_exit` and print its result as JSON."""
    import json

    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.pipelines", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--check-exit", action="store_true", help="run the exit check")
    parser.add_argument("--repeats", type=int, default=3, help="runs per pipeline and mode")
    parser.add_argument(
        "--control", action="store_true", help="also run torchdata's Loader unwrapped (may abort)"
    )
    args = parser.parse_args(argv)
    if not args.check_exit:
        parser.print_help()
        return 2
    result = check_exit(repeats=args.repeats, control=args.control)
    print(json.dumps(result, indent=2))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
