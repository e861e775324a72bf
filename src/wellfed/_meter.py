"""The one accounting of data wait: how long a consumer is blocked in ``next()``, per step.

A *step* runs from one batch handed over to the next: the consumer's work on batch i-1 plus
its wait for batch i. The *data wait* of step i is the time from the consumer asking for batch
i (``begin``) to getting it (``end``). The *data-bound fraction* is the total data wait over
the total step time (0: the loader is always ahead; 1: the consumer does nothing but wait).

The first batch of every epoch (every ``iter()``) is a *warm-up step*: its wait holds worker
start-up and the first batch's loading, and there is no previous hand-over to measure a step
from. When an epoch starts workers (``num_workers`` of them, not yet running: the first
epoch, or every epoch without persistent workers), its first ``num_workers`` batches are
warm-up steps: worker k's first batch carries worker k's own start-up, and the workers start
one after the other (``warmup_for``). Warm-up steps are counted apart (``warmup_steps``,
``warmup_wait_s``) and left out of every other figure.

``wellfed.watch`` (any iterable, the ``wellfed watch`` command, the framework callbacks) keeps
its books here, and so do the measuring core's trials (``measure``: its waits and hand-over
times, with an idle consumer) and ``tune --step-ms`` (with a consumer that takes the step).

Clocks. On the host, ``time.perf_counter`` at the call and at the return. With a CUDA device
(``WaitMeter(device="cuda")``), the step's GPU work is asynchronous: the host returns from
launching kernels long before the GPU has run them, so host clocks would count as data wait
time in which the GPU was still busy with the previous step. The meter then records two CUDA
events on the device's current stream at every hand-over, one when ``next()`` is called and one
when it returns (``Event.record`` enqueues a timestamp; it does not synchronise). The GPU
reaches the first event when it has finished all work queued before the call, and the second
when the batch has been handed over; the time between them on the GPU's clock is the time the
GPU sat idle because the data was not there (0 when the GPU was still busy). The step is the
GPU time between consecutive hand-over events. Events are read once the GPU has passed them
(``Event.query``, non-blocking, at later hand-overs); only ``stats()`` waits for the last ones
(``Event.synchronize``), off the hot path. Host figures are kept beside them
(``host_data_wait_s``).
"""

from __future__ import annotations

import dataclasses
import math
import time
from array import array
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "LOGGED_FIELDS",
    "STALL_FACTOR",
    "WaitMeter",
    "WatchStats",
    "leading_dim",
    "percentile",
    "warmup_for",
]

#: A step is a stall when its data wait exceeds this many median steps (issue 13's rule,
#: after datapath-doctor's "training starved on input" signature).
STALL_FACTOR = 2.0

#: The ``WatchStats`` fields the framework callbacks log every epoch (``WatchStats.metrics``).
LOGGED_FIELDS = (
    "data_bound_fraction",
    "data_wait_s",
    "step_s",
    "samples_per_s",
    "wait_s_p50",
    "wait_s_p90",
    "step_s_p50",
    "stalls",
    "steps",
    "samples",
    "warmup_wait_s",
)

_perf_counter = time.perf_counter
_thread_time = time.thread_time


def warmup_for(loader: Any) -> int:
    """Warm-up steps of ``loader``'s next epoch: its worker count when ``iter()`` will start
    workers (not persistent ones already running), else 1. Call it before ``iter(loader)``.

    An Accelerate ``DataLoaderShard`` is judged by the loader it iterates (``base_dataloader``).
    """
    loader = getattr(loader, "base_dataloader", None) or loader
    try:
        workers = int(getattr(loader, "num_workers", 0) or 0)
    except (TypeError, ValueError):
        return 1
    running = bool(getattr(loader, "persistent_workers", False)) and (
        getattr(loader, "_iterator", None) is not None
    )
    return 1 if running else max(1, workers)


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (0..100) of ``values`` by linear interpolation; None if empty."""
    if not values:
        return None
    ordered = sorted(values)
    k = (len(ordered) - 1) * q / 100.0
    lo = math.floor(k)
    hi = min(lo + 1, len(ordered) - 1)
    return float(ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo))


def leading_dim(batch: Any, _depth: int = 0) -> int:
    """Samples in ``batch``: the leading dimension of its first tensor or array.

    A tensor or array (anything with ``shape``) gives ``shape[0]`` (1 for a 0-d one); a
    mapping, its first value's; a tuple or list of tensors, mappings or sequences, its first
    item's; a tuple or list of plain items (strings, numbers), its length; a sequence whose class
    sets ``items_are_samples`` (``wellfed.device.EncodedImages``: one file's bytes per sample),
    its length. Anything else counts as one sample.
    """
    if getattr(type(batch), "items_are_samples", False):
        return len(batch)
    shape = getattr(batch, "shape", None)
    if shape is not None:
        try:
            return int(shape[0]) if len(shape) else 1
        except (TypeError, IndexError, ValueError):
            return 1
    if _depth > 4:
        return 1
    if isinstance(batch, (tuple, list)):
        if not batch:
            return 0
        first = batch[0]
        if hasattr(first, "shape") or isinstance(first, (Mapping, tuple, list)):
            return leading_dim(first, _depth + 1)
        return len(batch)
    if isinstance(batch, Mapping):
        for value in batch.values():
            return leading_dim(value, _depth + 1)
        return 0
    return 1


@dataclass(frozen=True)
class WatchStats:
    """How much of a loop's step time waited on data (``wellfed.watch(...).stats()``).

    Warm-up steps (the first batch of each epoch, or its first ``num_workers`` batches where
    the epoch starts workers: their start-up and first loads) are counted in the ``warmup_*``
    fields only; every other figure is over the steps after them.

    Attributes:
        name: The name given to ``watch`` (or the loader's, in ``wellfed watch``); None if none.
        clock: "host" (``time.perf_counter``) or "cuda" (CUDA events: GPU idle time; see
            ``wellfed._meter``).
        steps: Steps measured (batches handed over, warm-up batches left out).
        samples: Samples in those steps' batches (each batch's leading dimension).
        data_wait_s: Total time blocked in ``next()``, seconds.
        step_s: Total step time (hand-over to hand-over), seconds.
        data_bound_fraction: ``data_wait_s / step_s``, 0..1; None with no steps.
        samples_per_s: ``samples / step_s``, samples/s; None with no steps.
        wait_s_p50: Median data wait per step, seconds; None with no steps.
        wait_s_p90: 90th percentile of the data wait per step, seconds.
        step_s_p50: Median step time, seconds.
        stalls: Steps whose data wait exceeded 2x the median step (``STALL_FACTOR``).
        wait_s_max: The longest data wait of a step, seconds.
        epochs: Epochs begun (``iter()`` calls that handed over at least one batch).
        warmup_steps: Warm-up steps: the first batch of each epoch, or its first
            ``num_workers`` batches where the epoch starts workers.
        warmup_samples: Samples in the warm-up batches.
        warmup_wait_s: Total wait for the warm-up batches (worker start-up included), seconds.
        host_data_wait_s: Data wait by the host clock, seconds (equals ``data_wait_s`` when
            ``clock`` is "host").
        wait_cpu_s: CPU time the waiting thread itself spent inside ``next()`` over the
            measured steps, seconds: loading work done in the training process (all of it
            with ``num_workers=0``); near ``host_data_wait_s`` means CPU-bound loading there.
    """

    name: str | None
    clock: str
    steps: int
    samples: int
    data_wait_s: float
    step_s: float
    data_bound_fraction: float | None
    samples_per_s: float | None
    wait_s_p50: float | None
    wait_s_p90: float | None
    step_s_p50: float | None
    stalls: int
    wait_s_max: float | None
    epochs: int
    warmup_steps: int
    warmup_samples: int
    warmup_wait_s: float
    host_data_wait_s: float
    wait_cpu_s: float

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict of every field."""
        return dataclasses.asdict(self)

    def metrics(self, prefix: str = "") -> dict[str, float]:
        """LOGGED_FIELDS as ``{prefix + field: float}`` for a framework's logger; None left out."""
        values = self.to_dict()
        return {f"{prefix}{k}": float(values[k]) for k in LOGGED_FIELDS if values[k] is not None}


class _CudaClock:
    """CUDA events at every hand-over (see the module docstring); torch imported on creation."""

    def __init__(self, device: Any) -> None:
        import torch

        self._torch = torch
        self.device = torch.device(device)
        self._free: list[Any] = []
        # (call event, return event, step index or -1 for a hand-over that is not a step)
        self.pending: deque[tuple[Any, Any, int]] = deque()
        self.last_return: Any = None
        self.wait: dict[int, float] = {}
        self.step: dict[int, float] = {}

    def _event(self) -> Any:
        if self._free:
            return self._free.pop()
        return self._torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]

    def record_call(self) -> Any:
        event = self._event()
        event.record(self._torch.cuda.current_stream(self.device))
        return event

    def record_return(self, call: Any, index: int) -> None:
        event = self._event()
        event.record(self._torch.cuda.current_stream(self.device))
        self.pending.append((call, event, index))
        self.resolve(block=False)

    def resolve(self, *, block: bool) -> None:
        """Read the events the GPU has passed (all of them, waiting, when ``block``)."""
        while self.pending:
            call, ret, index = self.pending[0]
            if block:
                ret.synchronize()
            elif not ret.query():
                return
            self.pending.popleft()
            if index >= 0:
                self.wait[index] = call.elapsed_time(ret) / 1e3  # ms -> s
                if self.last_return is not None:
                    self.step[index] = self.last_return.elapsed_time(ret) / 1e3
            if self.last_return is not None:
                self._free.append(self.last_return)
            self._free.append(call)
            self.last_return = ret  # an epoch's first hand-over (index -1) restarts the chain


class WaitMeter:
    """Per-step books of data wait: ``begin()`` when the consumer asks, ``end()`` on hand-over.

    One consumer thread writes; ``stats()`` and ``live()`` may be read from another thread.
    Per step it keeps three floats and an int (32 bytes).

    Args:
        name: A label carried into ``WatchStats.name``.
        device: None or a CPU device for host clocks; a CUDA device ("cuda", "cuda:1", a
            ``torch.device``) for CUDA events (see the module docstring).

    Raises:
        ConfigError: ``device`` is a CUDA device and CUDA is not available (WF601).
    """

    def __init__(self, name: str | None = None, *, device: Any = None) -> None:
        self.name = name
        self._cuda: _CudaClock | None = None
        if device is not None:
            self.use_device(device)
        self._t0 = _perf_counter()
        self.handover = array("d")  # hand-over time of each step, s since the meter began
        self.wait = array("d")
        self.step = array("d")
        self.samples = array("q")
        self.wait_cpu_s = 0.0
        self.wait_total = 0.0
        self.step_total = 0.0
        self.sample_total = 0
        self.epochs = 0
        self.warmup_steps = 0
        self.warmup_samples = 0
        self.warmup_wait_s = 0.0
        self.warmup_waits: list[float] = []  # each epoch's warm-up wait, s
        self._last: float | None = None  # the previous hand-over; None at an epoch's start
        self._call = 0.0
        self._cpu = 0.0
        self._event: Any = None
        self._skip = False
        self._warmup_left = 1
        self._kind = ""  # the latest hand-over: "step", "warmup" or "skipped"

    @property
    def clock(self) -> str:
        """ "cuda" when CUDA events keep the books, else "host"."""
        return "cuda" if self._cuda is not None else "host"

    @property
    def started(self) -> float:
        """``time.perf_counter()`` when the meter was made (``handover`` counts from it)."""
        return self._t0

    def use_device(self, device: Any) -> None:
        """Keep the books on ``device``'s clock: CUDA events for a CUDA device, else the host.

        Raises:
            ConfigError: a CUDA device without CUDA here (WF601).
        """
        import torch

        dev = torch.device(device)
        if dev.type != "cuda":
            self._cuda = None
            return
        if not torch.cuda.is_available():
            from wellfed.errors import ConfigError

            raise ConfigError(
                f"Invalid option: device={str(device)!r} names a CUDA device, but CUDA is not "
                "available here. Pass device=None (host clocks), or run where CUDA is.",
                code="WF601",
                attribute="device",
                value=str(device),
            )
        self._cuda = _CudaClock(dev)

    # -- the hot path ---------------------------------------------------------------------

    def begin(self) -> None:
        """The consumer asks for the next batch."""
        if self._cuda is not None:
            self._event = self._cuda.record_call()
        self._cpu = _thread_time()
        self._call = _perf_counter()

    def end(self, samples: int) -> None:
        """The batch asked for at ``begin`` is handed over; it holds ``samples`` samples."""
        now = _perf_counter()
        cpu = _thread_time() - self._cpu
        wait = now - self._call
        last = self._last
        self._last = now
        if self._warmup_left or self._skip:
            self._kind = "skipped"
            if self._warmup_left:
                self._kind = "warmup"
                if last is None:
                    self.epochs += 1
                    self.warmup_waits.append(wait)
                else:
                    self.warmup_waits[-1] += wait
                self._warmup_left -= 1
                self.warmup_steps += 1
                self.warmup_samples += samples
                self.warmup_wait_s += wait
            else:
                self._skip = False
            if self._cuda is not None:
                self._cuda.record_return(self._event, -1)
            return
        if self._cuda is not None:
            self._cuda.record_return(self._event, len(self.wait))
        step = now - (last if last is not None else self._call)  # last: set after warm-up
        self._kind = "step"
        self.wait_cpu_s += cpu
        self.handover.append(now - self._t0)
        self.wait.append(wait)
        self.step.append(step)
        self.samples.append(samples)
        self.wait_total += wait
        self.step_total += step
        self.sample_total += samples

    def abandon(self) -> None:
        """The ``next()`` asked for at ``begin`` raised (StopIteration too): no hand-over."""
        self._event = None

    def add_samples(self, samples: int) -> None:
        """Count ``samples`` more in the latest hand-over (when known only after it)."""
        if self._kind == "step":
            self.samples[-1] += samples
            self.sample_total += samples
        elif self._kind == "warmup":
            self.warmup_samples += samples

    def new_epoch(self, warmup: int = 1) -> None:
        """An epoch begins (a new iterator): its first ``warmup`` hand-overs are warm-up steps.

        Args:
            warmup: Warm-up steps (at least 1): the number of workers starting, since each
                one's first batch carries its own start-up (``warmup_for``).
        """
        self._last = None
        self._skip = False
        self._warmup_left = max(1, int(warmup))

    def resume(self) -> float:
        """The consumer resumes after a pause the books leave out (a warm-up kept elsewhere, a
        barrier): no warm-up steps follow, and the next hand-over ends a step that starts now.

        Returns:
            The ``time.perf_counter()`` reading the next step starts from.
        """
        self._skip = False
        self._warmup_left = 0
        self._last = _perf_counter()
        return self._last

    def skip_step(self) -> None:
        """Leave the step in progress out (the loop did other work: validation, checkpoints)."""
        self._skip = True

    # -- reading ----------------------------------------------------------------------------

    def _gpu_keys(self) -> list[int]:
        """Steps whose GPU figures are known (all: waits for the GPU to pass the events)."""
        cuda = self._cuda
        if cuda is None:
            return []
        cuda.resolve(block=True)
        return [i for i in sorted(cuda.step) if i in cuda.wait]

    def stats(self) -> WatchStats:
        """The figures so far (with CUDA events: waits for the GPU to pass the last ones)."""
        host_wait = list(self.wait)
        waits, steps = host_wait, list(self.step)
        n = min(len(waits), len(steps))
        waits, steps = waits[:n], steps[:n]
        samples = int(sum(self.samples[:n]))
        clock = "host"
        keys = self._gpu_keys()
        if keys and self._cuda is not None:
            waits = [self._cuda.wait[i] for i in keys]
            steps = [self._cuda.step[i] for i in keys]
            samples = int(sum(self.samples[i] for i in keys))
            n, clock = len(keys), "cuda"
        wait_s, step_s = float(sum(waits)), float(sum(steps))
        median_step = percentile(steps, 50)
        stalls = (
            sum(1 for w in waits if w > STALL_FACTOR * median_step)
            if median_step is not None
            else 0
        )
        return WatchStats(
            name=self.name,
            clock=clock,
            steps=n,
            samples=samples,
            data_wait_s=wait_s,
            step_s=step_s,
            data_bound_fraction=min(1.0, max(0.0, wait_s / step_s)) if step_s > 0 else None,
            samples_per_s=samples / step_s if step_s > 0 else None,
            wait_s_p50=percentile(waits, 50),
            wait_s_p90=percentile(waits, 90),
            step_s_p50=median_step,
            stalls=stalls,
            wait_s_max=max(waits) if waits else None,
            epochs=self.epochs,
            warmup_steps=self.warmup_steps,
            warmup_samples=self.warmup_samples,
            warmup_wait_s=self.warmup_wait_s,
            host_data_wait_s=float(sum(host_wait[:n])) if clock == "host" else sum(host_wait),
            wait_cpu_s=self.wait_cpu_s,
        )

    def live(self, window: int = 256) -> dict[str, Any]:
        """Cheap running figures for a live display (host clock; never waits for the GPU).

        Returns:
            ``steps``, ``samples``, ``epochs``, ``data_bound_fraction`` and ``samples_per_s``
            over all steps (None before the first), and ``wait_s_p90`` over the last
            ``window`` steps (None before the first).
        """
        step_total, wait_total, samples = self.step_total, self.wait_total, self.sample_total
        recent = list(self.wait[-window:])
        return {
            "steps": len(self.step),
            "samples": samples,
            "epochs": self.epochs,
            "data_bound_fraction": wait_total / step_total if step_total > 0 else None,
            "samples_per_s": samples / step_total if step_total > 0 else None,
            "wait_s_p90": percentile(recent, 90),
        }
