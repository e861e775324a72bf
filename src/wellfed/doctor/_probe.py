"""The live probe: run the target in real DataLoader workers and look at what comes back.

Each start method runs in its own isolated child process (``wellfed._isolate.run_isolated``:
fork of this process where possible, its own process group, the whole tree killed on
timeout), so a crash, a deadlock or a CUDA error in a worker never reaches the caller and
no process is left behind. When that child cannot start at all (spawn, because CUDA is
initialised here, and the dataset does not pickle), or there is nothing to fetch (an empty
dataset or sampler), the run is "not_probed" with the reason, and nothing is judged live.

What one run does, with 2 workers (the fewest that can disagree):

- map-style: take the first indices the loader itself would fetch (from the user's sampler
  or batch_sampler, else 0, 1, 2...), fetch the first one 2 x REPEATS times, then the others,
  one sample per batch with the user's collate_fn and worker_init_fn (``batch_size=None``
  when the loader has automatic batching off, so the collate_fn gets one sample, as it
  would). Even batches come from worker 0, odd ones from worker 1 (DataLoader hands out
  batches round-robin), so the k-th sample of worker 0 equals the k-th of worker 1 for
  every k, while main-process fetches of that sample vary enough that chance cannot explain
  it, means the workers share one RNG state: rng-duplication, confirmed. One differing pair
  refutes it.
- iterable: read up to ITERABLE_ITEMS items, each tagged with the worker that produced it,
  and count samples that more than one worker yields: iterable-sharding, confirmed.
- both: bytes and tensors per sample (for /dev/shm), private memory (USS) of each worker
  after the first and the last batch, and for spawn/forkserver the pickled size with the
  time to pickle and to unpickle it.

When it fails, it says where. An exception comes back as facts (``failure``: type, message,
frames, the worker; ``_attribution.exception_facts``), which ``_probe_findings`` maps to an
attribute path. A hang is dumped before anything is stopped: each worker registers
``faulthandler`` for SIGUSR1 (``ProbeWorkerInit``, around the user's worker_init_fn), and when
no batch has come for HANG_DUMP_SHARE of the loader's timeout, a watch thread of the probe
(``_HangWatch``) signals every worker and waits for its dump, before the loader's own timeout
stops them. The dumps are files in the run's own temporary folder, made and removed by
``probe_all`` (outside the isolated child, so a killed child leaves none behind), which reads
them into ``observations["hang_dumps"]``.
"""

from __future__ import annotations

import contextlib
import faulthandler
import itertools
import os
import re
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

from torch.utils.data import IterableDataset, get_worker_info

from wellfed import _isolate
from wellfed._digest import batch_digest
from wellfed._isolate import format_exception, run_isolated
from wellfed.doctor._attribution import exception_facts, parse_dump
from wellfed.doctor._report import ProbeRun
from wellfed.errors import WorkerCrashedError, WorkerStartError, WorkerTimeoutError
from wellfed.measure import open_batches

__all__ = [
    "ITERABLE_ITEMS",
    "PROBE_WORKERS",
    "ProbeWorkerInit",
    "probe_all",
    "probe_one",
    "read_dumps",
]

#: Workers per probe run: two is the fewest that can disagree, and it keeps spawn start-up
#: (~1-2 s per worker, each importing torch) inside the probe's budget.
PROBE_WORKERS = 2

#: Items read from an iterable dataset (per run, all workers together).
ITERABLE_ITEMS = 64

#: Times each of the two workers fetches the first index (and times the main process does). A
#: duplicated RNG shows as REPEATS identical pairs; with a coin-flip augmentation the chance of
#: that by luck is 0.5**8 = 0.4%.
REPEATS = 8

#: Identical pairs confirm rng-duplication only when chance explains them less often than this.
CHANCE_LEVEL = 1e-3

#: Extra map-style indices fetched after the repeats of the first one.
MAP_EXTRA = 8

#: How ``run_isolated``'s error starts when its child process could not start at all.
NOT_STARTED = "the isolated process could not start"

#: Whether this platform can dump a process's stacks on a signal (POSIX: SIGUSR1).
CAN_DUMP = hasattr(signal, "SIGUSR1") and hasattr(faulthandler, "register")

#: Seconds the probe waits for the signalled workers' dumps (each is written in well under a
#: millisecond by faulthandler's C signal handler; the wait covers a loaded machine).
DUMP_WAIT_S = 1.0

#: Share of the loader's timeout without a batch after which the workers' stacks are dumped:
#: late enough that a slow sample is not taken for a hang, early enough that the workers are
#: still where they hang when the loader's own timeout stops them.
HANG_DUMP_SHARE = 0.9

#: Largest dump read back, in bytes (a dump of a few threads is ~1 KB).
DUMP_MAX_BYTES = 64 * 1024

_DUMP_NAME = re.compile(r"^worker-(?P<wid>\d+)-(?P<pid>\d+)\.txt$")


def _arm_dump(final: str) -> Any:
    """Register faulthandler for SIGUSR1 in this process (every thread's stack), writing to
    ``final``; the file gets its name only once the handler is in place, so a process whose
    dump file exists never dies of SIGUSR1's default action. Returns the open file
    (faulthandler writes to its descriptor)."""
    tmp = final + ".arming"
    fh = open(tmp, "w")  # noqa: SIM115  # faulthandler keeps it open until unregistered
    faulthandler.register(signal.SIGUSR1, file=fh, all_threads=True, chain=False)
    os.replace(tmp, final)
    return fh


class ProbeWorkerInit:
    """The probe's worker_init_fn: arm a stack dump on SIGUSR1, then run the user's own.

    Picklable (a module-level class holding a folder and the user's function), so spawn and
    forkserver workers receive it as they would the user's function alone; the user's
    function's own frames stay the innermost of any failure in it.

    Args:
        dump_dir: Folder for ``worker-<id>-<pid>.txt``; None arms nothing.
        init: The user's worker_init_fn, or None.
    """

    def __init__(self, dump_dir: str | None, init: Callable[[int], Any] | None) -> None:
        self.dump_dir = dump_dir
        self.init = init

    def __call__(self, worker_id: int) -> None:
        """Arm the dump (where the platform can), then call the user's worker_init_fn."""
        if self.dump_dir is not None and CAN_DUMP:
            path = os.path.join(self.dump_dir, f"worker-{worker_id}-{os.getpid()}.txt")
            with contextlib.suppress(OSError, RuntimeError, ValueError):
                _WORKER_DUMP.append(_arm_dump(path))
        if self.init is not None:
            self.init(worker_id)


#: The open dump file of this worker (kept referenced for the worker's life).
_WORKER_DUMP: list[Any] = []


def _is_timeout(exc: BaseException) -> bool:
    """True for the loader's "no batch within timeout" (WF303, or torch's own words)."""
    return isinstance(exc, WorkerTimeoutError) or str(exc).startswith("DataLoader timed out")


class _HangWatch:
    """Dump the workers' stacks when no batch has come for HANG_DUMP_SHARE of the loader's
    timeout: just before the DataLoader gives up and stops its workers (which it does inside
    ``next()``, before the timeout reaches the probe), while they are still where they hang.

    A daemon thread of the probe's own process; ``beat()`` after every batch restarts the
    clock. It only reads the workers' pids (never ``is_alive``, which would reap a dead
    worker's exit status before torch and wellfed read it).
    """

    def __init__(self, it: Any, dump_dir: str | None, loader_timeout_s: float) -> None:
        self._it = it
        self._dump_dir = dump_dir
        self._after_s = loader_timeout_s * HANG_DUMP_SHARE
        self._last = time.monotonic()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> _HangWatch:
        if self._dump_dir is not None and CAN_DUMP:
            self._thread = threading.Thread(
                target=self._run, name="wellfed-probe-hang-watch", daemon=True
            )
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def beat(self) -> None:
        """A batch came: restart the clock."""
        self._last = time.monotonic()

    def _run(self) -> None:
        while not self._stop.wait(max(0.01, self._last + self._after_s - time.monotonic())):
            if time.monotonic() - self._last >= self._after_s:
                _dump_workers(self._it, self._dump_dir)
                return


def _dump_workers(it: Any, dump_dir: str | None) -> None:
    """SIGUSR1 every worker of ``it`` that armed its dump, and wait for the dumps."""
    if dump_dir is None or not CAN_DUMP:
        return
    try:
        names = os.listdir(dump_dir)
    except OSError:
        return
    files: dict[int, str] = {}
    for name in names:
        match = _DUMP_NAME.match(name)
        if match is not None:
            files[int(match["pid"])] = os.path.join(dump_dir, name)
    signalled: list[str] = []
    for w in list(getattr(it, "_workers", None) or ()):
        pid = getattr(w, "pid", None)
        if pid in files:
            with contextlib.suppress(OSError):  # gone already
                os.kill(pid, signal.SIGUSR1)
                signalled.append(files[pid])
    deadline = time.monotonic() + DUMP_WAIT_S
    last: list[int] = []
    while signalled and time.monotonic() < deadline:
        sizes = [os.path.getsize(f) if os.path.exists(f) else 0 for f in signalled]
        if all(sizes) and sizes == last:
            return  # every dump written, and none still growing
        last = sizes
        time.sleep(0.02)  # polling the files the signal handlers write


def read_dumps(dump_dir: str) -> list[dict[str, Any]]:
    """The stack dumps in ``dump_dir``, JSON-ready: one dict per process that wrote one.

    Returns:
        Dicts with ``worker_id``, ``pid`` and ``threads``: ``[{"current": bool, "frames":
        [[file, line, name], ...]}]``, frames outermost first; by worker id.
    """
    out: list[dict[str, Any]] = []
    try:
        names = sorted(os.listdir(dump_dir))
    except OSError:
        return out
    for name in names:
        match = _DUMP_NAME.match(name)
        if match is None:
            continue
        try:
            with open(os.path.join(dump_dir, name), errors="replace") as fh:
                text = fh.read(DUMP_MAX_BYTES)
        except OSError:
            continue
        threads = [
            {"current": current, "frames": [f.to_json() for f in frames]}
            for current, frames in parse_dump(text)
            if frames
        ]
        if not threads:
            continue
        out.append({"worker_id": int(match["wid"]), "pid": int(match["pid"]), "threads": threads})
    out.sort(key=lambda d: int(d["worker_id"]))
    return out


class TagWorkerIterable(IterableDataset):  # type: ignore[type-arg]
    """Yields (worker id, item) for every item of the wrapped iterable dataset."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __iter__(self) -> Any:
        info = get_worker_info()
        wid = info.id if info is not None else -1
        for item in self.dataset:
            yield wid, item


def _digest(obj: Any) -> str:
    """A content hash of a sample or batch: ``wellfed._digest.batch_digest`` (one implementation).

    Objects exposing the array interface (PIL images) are hashed as arrays: their ``repr``
    names a memory address, which differs between two equal images.
    """
    return batch_digest(_as_content(obj))


def _as_content(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _as_content(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_as_content(x) for x in obj]  # batch_digest hashes lists and tuples alike
    if hasattr(obj, "__array_interface__") and not hasattr(obj, "dtype"):
        try:
            import numpy as np

            return np.asarray(obj)
        except Exception:
            return obj
    return obj


def _field_digests(item: Any) -> tuple[tuple[str, str], ...]:
    """(field, digest) of each top-level field of a sample (dict key or tuple position); one
    field named "" for a sample that is not a dict, tuple or list of two or more."""
    if isinstance(item, dict):
        return tuple((repr(k), _digest(v)) for k, v in item.items())
    if isinstance(item, (tuple, list)) and len(item) >= 2:
        return tuple((str(i), _digest(v)) for i, v in enumerate(item))
    return (("", _digest(item)),)


def _worker_tag_fields(by_worker: dict[int, list[tuple[tuple[str, str], ...]]]) -> set[str]:
    """Fields that only name the worker: the same in every sample of a worker, different
    between workers (``yield doc_id, get_worker_info().id``: allenai/ir_datasets#25).

    Duplicates are counted without them, or a stream every worker yields whole would look
    split only because each worker tags its copy. Needs two workers with two samples each,
    and leaves at least one field to compare.
    """
    if len(by_worker) < 2 or any(len(items) < 2 for items in by_worker.values()):
        return set()
    shapes = {tuple(k for k, _ in fields) for items in by_worker.values() for fields in items}
    if len(shapes) != 1:
        return set()
    keys = next(iter(shapes))
    tags = set()
    for i, key in enumerate(keys):
        per_worker = [{fields[i][1] for fields in items} for items in by_worker.values()]
        if all(len(v) == 1 for v in per_worker) and len(set().union(*per_worker)) == len(
            per_worker
        ):
            tags.add(key)
    return tags if len(tags) < len(keys) else set()


def _payload(obj: Any) -> tuple[int, int]:
    """(bytes, tensors) of the tensors and arrays in a sample or batch."""
    try:
        import torch
    except ImportError:  # pragma: no cover
        torch = None  # type: ignore[assignment]
    if torch is not None and isinstance(obj, torch.Tensor):
        return obj.element_size() * obj.nelement(), 1
    if hasattr(obj, "nbytes") and isinstance(getattr(obj, "nbytes", None), int):
        return int(obj.nbytes), 1
    if isinstance(obj, dict):
        obj = list(obj.values())
    if isinstance(obj, (list, tuple)):
        total = count = 0
        for x in obj:
            b, c = _payload(x)
            total += b
            count += c
        return total, count
    return 0, 0


#: A float tensor whose last three dimensions are (C, H, W) with C in this set and H, W at least
#: MIN_IMAGE_SIDE is taken for an image (WF125 live) where its place names one (IMAGE_KEY):
#: 3 (RGB), 4 (RGBA); 1 is left out, since a one-channel float tensor is as often a
#: spectrogram or a depth map, which has no uint8 form.
IMAGE_CHANNELS = (3, 4)
MIN_IMAGE_SIDE = 16

#: A mapping key naming an image (case-insensitive, anywhere in the key): "image",
#: "img_lr", "pixel_values", "rgb", "photo", "frames".
IMAGE_KEY = re.compile(r"image|img|pixel|rgb|photo|frame", re.IGNORECASE)

#: A mapping key naming what is never an image, even in a 3- or 4-channel float tensor (a
#: soft mask of 3 classes, surface normals, a label or depth map, a target): one of these
#: words, plural or "...map" allowed, as a word of the key ("seg_mask", "surfaceNormals",
#: "depth_map"; not "normalized_image").
NOT_IMAGE_KEY = re.compile(
    r"(?:^|[^a-z])(?:mask|normal|label|depth|target)s?(?:maps?)?(?:$|[^a-z])"
)


def _key_role(key: Any, parent: str | None) -> str | None:
    """The role of a mapping's value: "never" when the key names a non-image, "named" when
    it names an image, else the parent's named/never role (a dict under "image" holds
    images), else None (not an image by its place)."""
    text = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", str(key)).lower()
    if NOT_IMAGE_KEY.search(text):
        return "never"
    if IMAGE_KEY.search(text):
        return "named"
    return parent if parent in ("named", "never") else None


def float_images(
    obj: Any,
    path: str = "batch",
    depth: int = 0,
    *,
    batched: bool = True,
    role: str | None = "position",
) -> list[dict[str, Any]]:
    """The float image tensors in a batch (at most 4): ``{"path", "dtype", "shape",
    "sample_values"}`` each.

    An image: a floating-point tensor or array of 3 or more dimensions whose last three are
    (C, H, W), C in IMAGE_CHANNELS and H, W >= MIN_IMAGE_SIDE (the layout torch's transforms
    and most datasets send), whose place names an image: the batch itself, the first item
    of a tuple or list batch (``(img, label)``), or a value under a mapping key matching
    IMAGE_KEY; never one under a key matching NOT_IMAGE_KEY (a 3-class soft mask, surface
    normals). Mappings, lists and tuples are entered, four levels deep.

    Args:
        batched: The batch has a leading batch dimension of one sample (the probe's
            ``batch_size=1``): ``sample_values`` is the product of ``shape[1:]``; False
            (``batch_size=None``, an iterable's items): the product of ``shape``. A video
            ``(B, T, C, H, W)`` counts all T frames of its sample.
        role: How the place of obj names it ("position", "named", "never" or None); set by
            the recursion.
    """
    shape = getattr(obj, "shape", None)
    dtype = getattr(obj, "dtype", None)
    if shape is not None and dtype is not None:
        kind = str(dtype).replace("torch.", "")
        dims = tuple(int(d) for d in shape)
        if (
            role in ("position", "named")
            and kind in ("float16", "bfloat16", "float32", "float64")
            and len(dims) >= 3
            and dims[-3] in IMAGE_CHANNELS
            and min(dims[-2:]) >= MIN_IMAGE_SIDE
        ):
            values = 1
            for d in dims[1:] if batched else dims:
                values *= d
            return [{"path": path, "dtype": kind, "shape": list(dims), "sample_values": values}]
        return []
    if depth >= 4:
        return []
    items: list[tuple[str, Any, str | None]]
    if isinstance(obj, dict):
        items = [(f"{path}[{k!r}]", v, _key_role(k, role)) for k, v in list(obj.items())[:16]]
    elif isinstance(obj, (list, tuple)):
        if depth == 0:  # the batch: its first item is the input, the rest labels/targets
            roles = [role if i == 0 else None for i in range(len(obj[:16]))]
        else:
            roles = [role] * len(obj[:16])
        items = [(f"{path}[{i}]", v, roles[i]) for i, v in enumerate(obj[:16])]
    else:
        return []
    out: list[dict[str, Any]] = []
    for sub, value, sub_role in items:
        out.extend(float_images(value, sub, depth + 1, batched=batched, role=sub_role))
    return out[:4]


def _worker_uss(iterator: Any) -> list[int]:
    """Private memory (USS) of each live worker of a DataLoader iterator, in bytes."""
    out = []
    for w in getattr(iterator, "_workers", []) or []:
        pid = getattr(w, "pid", None)
        uss = _isolate.private_memory_bytes(pid) if pid is not None else None
        if uss is not None:
            out.append(uss)
    return out


def auto_batching(settings: dict[str, Any]) -> bool:
    """Whether DataLoader batches samples: False for ``batch_size=None`` without batch_sampler."""
    if settings.get("batch_sampler") is not None:
        return True
    return not ("batch_size" in settings and settings["batch_size"] is None)


def probe_indices(dataset: Any, settings: dict[str, Any]) -> list[Any]:
    """The first 1 + MAP_EXTRA indices the loader would fetch, in its own order.

    From the user's batch_sampler (its first batches, flattened) or sampler when given, so
    keys that are not integers, and index ranges that do not start at 0, stay valid; else
    ``range(len(dataset))``. Empty when there is nothing to fetch.
    """
    want = 1 + MAP_EXTRA
    batch_sampler = settings.get("batch_sampler")
    sampler = settings.get("sampler")
    if batch_sampler is not None:
        batches = itertools.islice(iter(batch_sampler), want)
        return list(itertools.islice(itertools.chain.from_iterable(batches), want))
    if sampler is not None:
        return list(itertools.islice(iter(sampler), want))
    try:
        n = len(dataset)
    except TypeError:
        n = want
    return list(range(min(n, want)))


def probe_one(
    dataset: Any,
    settings: dict[str, Any],
    method: str,
    loader_timeout_s: float,
    measure_pickle: bool,
    dump_dir: str | None = None,
) -> dict[str, Any]:
    """Run the dataset in PROBE_WORKERS real workers under one start method (in the child).

    Args:
        dataset: The dataset (inherited by fork, so it need not pickle to get here).
        settings: collate_fn, worker_init_fn, prefetch_factor, batch_size from the loader.
        method: The workers' start method.
        loader_timeout_s: DataLoader ``timeout``: seconds to wait for any one batch.
        measure_pickle: Also measure the dataset's pickled size and time.
        dump_dir: Folder for the stack dumps of hung workers (see the module docstring);
            None dumps nothing.

    Returns:
        A dict: batches, observations (see ProbeRun.observations); ``worker_death`` (a
        worker died) or ``failure`` with ``error`` (an exception: its facts and its text)
        when the run failed.
    """
    import warnings

    import torch

    # This child is a fork of the caller. If the caller already ran OpenMP parallel regions
    # (any large tensor op), GNU OpenMP deadlocks on the next one here, so the main-process
    # half of the probe runs single-threaded, as DataLoader workers do.
    torch.set_num_threads(1)
    with warnings.catch_warnings():
        # DataLoader's own hints (e.g. "Got pickle error when attempting to start a worker")
        # must not print from the library; the error itself is what the probe reports.
        warnings.simplefilter("ignore")
        try:
            return _probe_one(dataset, settings, method, loader_timeout_s, measure_pickle, dump_dir)
        except (WorkerStartError, WorkerCrashedError) as exc:
            # A worker died (a signal, or an exit): what the loader named, as plain facts.
            return {
                "batches": exc.facts.get("batches_delivered") or 0,
                "observations": {},
                "worker_death": _death_facts(exc),
            }
        except Exception as exc:
            # An exception (a worker's, re-raised here by torch, or this process's own): its
            # text as before, and where it happened, as facts _probe_findings can attribute.
            if MAIN_TOO in str(exc) and exc.__cause__ is not None and exc.__context__ is not None:
                # _raise_if_main_fails_too: the workers' exception is the cause, the main
                # process's the one being handled when it raised.
                facts = exception_facts(exc.__cause__)
                facts["main"] = exception_facts(exc.__context__)
            else:
                facts = exception_facts(exc)
            return {
                "batches": 0,
                "observations": {},
                "failure": facts,
                "error": format_exception(exc),
            }


#: Marks a failure the main process reproduces: ``_probe_findings`` never takes it as live
#: evidence of a worker hazard (issue 15: "Torch not compiled with CUDA enabled", raised by
#: ``ds[0]`` in the main process too, was called live confirmation of WF105).
MAIN_TOO = "fails in the main process too"


def _raise_if_main_fails_too(exc: BaseException, main_fetch: Callable[[], Any]) -> None:
    """Raise a RuntimeError naming both when the first sample fails without workers too
    (``from exc``; the main process's exception is its ``__context__``)."""
    try:
        main_fetch()
    except Exception as main_exc:
        raise RuntimeError(
            f"the first sample {MAIN_TOO} (num_workers=0): {type(main_exc).__name__}: "
            f"{main_exc}; in the workers: {type(exc).__name__}: {exc}"
        ) from exc


def _death_facts(exc: Any) -> dict[str, Any]:
    """The facts of a WorkerStartError/WorkerCrashedError, picklable and JSON-ready."""
    facts = dict(exc.facts)

    def plain(items: list[Any]) -> list[Any]:
        return [i if isinstance(i, (int, str)) else repr(i) for i in items]

    if facts.get("indices") is not None:
        facts["indices"] = plain(facts["indices"])
    if facts.get("undelivered") is not None:
        facts["undelivered"] = [plain(t) for t in facts["undelivered"]]
    keep = (
        "worker_id",
        "pid",
        "exitcode",
        "signal",
        "indices",
        "undelivered",
        "batches_delivered",
        "cause",
        "fix",
        "memory",
    )
    out = {k: facts.get(k) for k in keep}
    out["code"] = exc.code
    out["message"] = str(exc)
    return out


def _probe_one(
    dataset: Any,
    settings: dict[str, Any],
    method: str,
    loader_timeout_s: float,
    measure_pickle: bool,
    dump_dir: str | None,
) -> dict[str, Any]:
    from torch.utils.data import IterableDataset, default_collate, default_convert

    # The class create_dataloader builds and tune measures (seed=None: it loads as a plain
    # DataLoader), so that a worker's death is named as users see it: worker, signal, samples.
    from wellfed.seeded_loader import SeededDataLoader as DataLoader

    obs: dict[str, Any] = {}
    if measure_pickle:
        from wellfed.doctor._pickling import pickled_size

        measured = pickled_size(dataset)
        if measured is not None:
            obs["pickled_bytes"], obs["pickle_s"], obs["unpickle_s"] = measured
    common: dict[str, Any] = {
        "num_workers": PROBE_WORKERS,
        "worker_init_fn": ProbeWorkerInit(dump_dir, settings.get("worker_init_fn")),
        "multiprocessing_context": method,
        "timeout": loader_timeout_s,
        "prefetch_factor": 2,
    }
    batches = 0
    if isinstance(dataset, IterableDataset) or not hasattr(dataset, "__getitem__"):
        tagged = TagWorkerIterable(dataset)
        by_worker: dict[int, list[tuple[tuple[str, str], ...]]] = {}
        with (
            open_batches(DataLoader(tagged, batch_size=None, **common)) as it,
            _HangWatch(it, dump_dir, loader_timeout_s) as watch,
        ):
            for wid, item in it:
                watch.beat()
                if batches == 0:
                    obs["sample_bytes"], obs["tensors_per_sample"] = _payload(item)
                    obs["worker_uss_first_bytes"] = _worker_uss(it)
                    obs["float_images"] = float_images(item, "sample", batched=False)
                by_worker.setdefault(int(wid), []).append(_field_digests(item))
                batches += 1
                if batches >= ITERABLE_ITEMS:
                    break
            obs["worker_uss_last_bytes"] = _worker_uss(it)
        tags = _worker_tag_fields(by_worker)
        if tags:
            obs["worker_tag_fields"] = sorted(tags)
        owners: dict[str, set[int]] = {}
        for wid, items in by_worker.items():
            for fields in items:
                d = "|".join(f"{k}={v}" for k, v in fields if k not in tags)
                owners.setdefault(d, set()).add(wid)
        obs["kind"] = "iterable"
        obs["items_per_worker"] = {str(k): len(v) for k, v in sorted(by_worker.items())}
        obs["duplicate_samples"] = sum(1 for ws in owners.values() if len(ws) > 1)
        obs["distinct_samples"] = len(owners)
        return {"batches": batches, "observations": obs}
    keys = probe_indices(dataset, settings)
    if not keys:
        return {"batches": 0, "observations": obs, "not_probed": "the sampler yields no index"}
    first = keys[0]
    indices = [first] * (2 * REPEATS) + keys[1:]
    fetch = getattr(dataset, "__getitems__", None)
    if auto_batching(settings):
        # One sample per batch, through the user's collate_fn (as DataLoader would fetch it).
        collate = settings.get("collate_fn") or default_collate

        def main_fetch() -> Any:
            return collate(fetch([first]) if callable(fetch) else [dataset[first]])

        loader = DataLoader(dataset, batch_size=1, sampler=indices, collate_fn=collate, **common)
    else:
        # batch_size=None: the collate_fn receives one sample, not a list.
        collate = settings.get("collate_fn") or default_convert

        def main_fetch() -> Any:
            return collate(dataset[first])

        loader = DataLoader(dataset, batch_size=None, sampler=indices, collate_fn=collate, **common)
    batch_digests: list[str] = []
    try:
        with open_batches(loader) as it, _HangWatch(it, dump_dir, loader_timeout_s) as watch:
            for batch in it:
                watch.beat()
                if batches == 0:
                    obs["sample_bytes"], obs["tensors_per_sample"] = _payload(batch)
                    obs["worker_uss_first_bytes"] = _worker_uss(it)
                    obs["float_images"] = float_images(batch, batched=auto_batching(settings))
                batch_digests.append(_digest(batch))
                batches += 1
            obs["worker_uss_last_bytes"] = _worker_uss(it)
    except (WorkerStartError, WorkerCrashedError):
        raise  # a worker died: nothing to retry in this process
    except Exception as exc:
        _raise_if_main_fails_too(exc, main_fetch)
        raise
    obs["kind"] = "map"
    # Main process, after the workers: is the first sample random at all, and how random?
    t0 = time.perf_counter()
    main = [_digest(main_fetch()) for _ in range(REPEATS)]
    obs["main_sample_s"] = (time.perf_counter() - t0) / REPEATS  # WF126's measured cost
    obs["main_random"] = len(set(main)) > 1
    if len(batch_digests) >= 2 * REPEATS and obs["main_random"]:
        b = batch_digests
        same = [b[2 * k] == b[2 * k + 1] for k in range(REPEATS)]
        # Chance that two independent draws collide, estimated from the main-process draws
        # (unbiased estimate of sum p_v**2); identical pairs only count as evidence when
        # REPEATS collisions by chance would be rarer than CHANCE_LEVEL.
        counts = [main.count(v) for v in set(main)]
        collide = sum(c * (c - 1) for c in counts) / (REPEATS * (REPEATS - 1))
        obs["collision_chance"] = collide
        obs["workers_identical"] = all(same) and collide**REPEATS < CHANCE_LEVEL
        obs["workers_differ"] = not all(same)
    return {"batches": batches, "observations": obs}


def probe_all(
    dataset: Any, settings: dict[str, Any], methods: tuple[str, ...], timeout_s: float
) -> list[ProbeRun]:
    """Probe each start method in its own isolated child; never raises for worker failures.

    Args:
        dataset: The dataset.
        settings: Loader settings (collate_fn, worker_init_fn...).
        methods: Start methods to run, in order.
        timeout_s: Total budget in seconds, split evenly between the methods; each run is
            killed (with its workers) when its share is spent.

    Returns:
        One ProbeRun per method.
    """
    runs: list[ProbeRun] = []
    if not methods:
        return runs
    empty = _empty_reason(dataset, settings)
    if empty is not None:
        return [ProbeRun(m, "not_probed", 0.0, 0, empty, {}) for m in methods]
    share = max(1.0, timeout_s / len(methods))
    measured_pickle = False
    for method in methods:
        measure_pickle = method in ("spawn", "forkserver") and not measured_pickle
        measured_pickle = measured_pickle or measure_pickle
        start = time.perf_counter()
        # The run's own folder for stack dumps, made and removed here, outside the isolated
        # child: a child killed at the deadline leaves nothing behind.
        dump_dir = tempfile.mkdtemp(prefix=f"wellfed-probe-{method}-")
        try:
            result = run_isolated(
                probe_one,
                dataset,
                settings,
                method,
                max(0.5, share * 0.8),
                measure_pickle,
                dump_dir,
                timeout_s=share,
            )
            dumps = read_dumps(dump_dir) if result.status != "ok" or _failed(result.value) else []
        finally:
            shutil.rmtree(dump_dir, ignore_errors=True)
        elapsed = time.perf_counter() - start
        hang = {"hang_dumps": dumps} if dumps else {}
        if (
            result.status == "ok"
            and isinstance(result.value, dict)
            and result.value.get("not_probed")
        ):
            reason = str(result.value["not_probed"])
            runs.append(ProbeRun(method, "not_probed", elapsed, 0, reason, {}))
        elif (
            result.status == "ok"
            and isinstance(result.value, dict)
            and result.value.get("worker_death")
        ):
            death = dict(result.value["worker_death"])
            runs.append(
                ProbeRun(
                    method,
                    "failed",
                    elapsed,
                    int(result.value.get("batches", 0)),
                    _trim(str(death.get("message", ""))),
                    {"worker_death": death},
                )
            )
        elif (
            result.status == "ok" and isinstance(result.value, dict) and result.value.get("failure")
        ):
            runs.append(
                ProbeRun(
                    method,
                    "failed",
                    elapsed,
                    int(result.value.get("batches", 0)),
                    _trim(str(result.value.get("error") or "no error text")),
                    {"failure": dict(result.value["failure"]), **hang},
                )
            )
        elif result.status == "ok" and isinstance(result.value, dict):
            runs.append(
                ProbeRun(
                    method,
                    "ok",
                    elapsed,
                    int(result.value.get("batches", 0)),
                    None,
                    dict(result.value.get("observations", {})),
                )
            )
        elif result.status == "failed" and (result.error or "").startswith(NOT_STARTED):
            # The isolated child never ran (e.g. spawn, because CUDA is initialised here, and
            # the dataset does not pickle): nothing was seen in workers, so nothing is judged.
            runs.append(ProbeRun(method, "not_probed", elapsed, 0, _trim(result.error or ""), {}))
        else:
            obs: dict[str, Any] = dict(hang)
            if result.status == "failed" and result.exitcode is not None and result.exitcode < 0:
                # the probe's own process died (the dataset crashed it in the main process)
                obs["process_death"] = {"exitcode": result.exitcode}
            runs.append(
                ProbeRun(method, result.status, elapsed, 0, _trim(result.error or "no result"), obs)
            )
    return runs


def _failed(value: Any) -> bool:
    """True for a probe_one result that reports a failure (an exception or a dead worker)."""
    return isinstance(value, dict) and bool(value.get("failure") or value.get("worker_death"))


def _empty_reason(dataset: Any, settings: dict[str, Any]) -> str | None:
    """Why a map-style dataset has nothing to probe (len 0, no sampler of its own), or None."""
    if isinstance(dataset, IterableDataset) or not hasattr(dataset, "__getitem__"):
        return None
    if settings.get("sampler") is not None or settings.get("batch_sampler") is not None:
        return None
    try:
        n = len(dataset)
    except Exception:
        return None
    return "the dataset is empty (len(dataset) == 0)" if n == 0 else None


def _trim(text: str, max_chars: int = 4000) -> str:
    return text if len(text) <= max_chars else text[:max_chars] + " ..."
