"""``watch(iterable)``: the same batches, with the data wait of every step on the books."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from wellfed._meter import WaitMeter, WatchStats, leading_dim, warmup_for
from wellfed.errors import ConfigError

__all__ = ["MeteredIterator", "Watched", "watch"]


class MeteredIterator:
    """An iterator handing over what ``inner`` yields, timing each ``next()`` on ``meter``.

    ``on_stop`` is called when ``inner`` is exhausted (the epoch's end), ``on_batch`` after
    each hand-over is on the books (outside the timed wait); the first ``warmup`` hand-overs
    are warm-up steps (``WaitMeter.new_epoch``).

    Attribute reads and writes it does not own go to ``inner`` (a DataLoader iterator's
    ``_shutdown_workers``, ``_workers``, ``_wf_progress``...), and ``len()`` is ``inner``'s.
    """

    __slots__ = ("_wf_inner", "_wf_meter", "_wf_on_batch", "_wf_on_stop")

    def __init__(
        self,
        inner: Iterator[Any],
        meter: WaitMeter,
        on_stop: Callable[[], None] | None = None,
        *,
        warmup: int = 1,
        on_batch: Callable[[], None] | None = None,
    ) -> None:
        object.__setattr__(self, "_wf_inner", inner)
        object.__setattr__(self, "_wf_meter", meter)
        object.__setattr__(self, "_wf_on_stop", on_stop)
        object.__setattr__(self, "_wf_on_batch", on_batch)
        meter.new_epoch(warmup)

    def __iter__(self) -> MeteredIterator:
        return self

    def __next__(self) -> Any:
        meter = self._wf_meter
        meter.begin()
        try:
            batch = next(self._wf_inner)
        except StopIteration:
            meter.abandon()
            if self._wf_on_stop is not None:
                self._wf_on_stop()
            raise
        except BaseException:
            meter.abandon()
            raise
        meter.end(leading_dim(batch))
        if self._wf_on_batch is not None:
            self._wf_on_batch()
        return batch

    def __len__(self) -> int:
        return len(self._wf_inner)

    def __getattr__(self, name: str) -> Any:
        if name in MeteredIterator.__slots__:  # not set yet (unpickling, __init__)
            raise AttributeError(name)
        return getattr(self._wf_inner, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._wf_inner, name, value)


class Watched:
    """An iterable that yields exactly what ``iterable`` yields and meters every step.

    Made by ``wellfed.watch``; ``len()``, ``set_epoch`` and every other attribute (``dataset``,
    ``batch_size``, ``sampler``...) are the wrapped object's.

    Attributes:
        iterable: The wrapped iterable.
        meter: The ``WaitMeter`` that keeps the books.
    """

    __slots__ = ("_wf_iterable", "_wf_meter")

    def __init__(self, iterable: Iterable[Any], meter: WaitMeter) -> None:
        object.__setattr__(self, "_wf_iterable", iterable)
        object.__setattr__(self, "_wf_meter", meter)

    @property
    def iterable(self) -> Iterable[Any]:
        """The wrapped iterable."""
        return self._wf_iterable  # type: ignore[no-any-return]

    @property
    def meter(self) -> WaitMeter:
        """The meter (``stats()`` reads it)."""
        return self._wf_meter  # type: ignore[no-any-return]

    def __iter__(self) -> MeteredIterator:
        warmup = warmup_for(self._wf_iterable)
        return MeteredIterator(iter(self._wf_iterable), self._wf_meter, warmup=warmup)

    def __len__(self) -> int:
        return len(self._wf_iterable)

    def __bool__(self) -> bool:
        return True

    def stats(self) -> WatchStats:
        """The figures so far: data wait, step time, data-bound fraction, percentiles, stalls.

        With a CUDA device this waits for the GPU to pass the last hand-over's events.
        """
        return self._wf_meter.stats()  # type: ignore[no-any-return]

    def __getattr__(self, name: str) -> Any:
        if name in Watched.__slots__:  # not set yet (unpickling, __init__)
            raise AttributeError(name)
        return getattr(self._wf_iterable, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._wf_iterable, name, value)

    def __repr__(self) -> str:
        return f"watch({self._wf_iterable!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (Watched, (self._wf_iterable, self._wf_meter))


def watch(iterable: Iterable[Any], *, device: Any = None, name: str | None = None) -> Watched:
    """Meter how much of each training step waits on data, with no change to the loop.

    ``for batch in wellfed.watch(loader): step(batch)`` yields the same objects in the same
    order, and keeps per step: the data wait (time blocked in ``next()``), the step time (from
    one batch handed over to the next: the work on the previous batch plus this wait) and the
    samples (the batch's leading dimension). ``.stats()`` returns them as a ``WatchStats``;
    the first batch of each epoch (its first ``num_workers`` batches when the epoch starts
    workers: their start-up) are warm-up steps, reported apart. The
    meter costs a few microseconds per step (``benchmarks/watch_overhead.py``).

    Args:
        iterable: Any iterable: a DataLoader (``len()``, ``set_epoch`` and its other attributes
            pass through), an Accelerate-prepared loader, a generator.
        device: None (host clocks), or the CUDA device the step runs on ("cuda", "cuda:0", a
            ``torch.device``): the wait is then the GPU's idle time before each batch, from
            CUDA events recorded at every hand-over, without synchronising (``wellfed._meter``).
        name: A label for the stats (``WatchStats.name``).

    Returns:
        A ``Watched`` iterable; ``.stats()`` gives the figures so far.

    Raises:
        ConfigError: ``iterable`` is not iterable, ``name`` is not a str, or ``device`` is a
            CUDA device without CUDA here (WF601).

    Example:
        >>> loader = wellfed.watch(range(4), name="demo")
        >>> [x for x in loader]
        [0, 1, 2, 3]
        >>> loader.stats().steps  # the first item is the warm-up
        3
    """
    if not hasattr(iterable, "__iter__") and not hasattr(iterable, "__getitem__"):
        raise ConfigError(
            f"Invalid option: iterable={type(iterable).__name__} is not iterable, so there is "
            "nothing to watch. Pass the DataLoader (or any iterable) the training loop "
            "iterates.",
            code="WF601",
            attribute="iterable",
            value=type(iterable).__name__,
        )
    if name is not None and not isinstance(name, str):
        raise ConfigError(
            f"Invalid option: name={name!r} is not a str. Pass a label such as 'train'.",
            code="WF601",
            attribute="name",
            value=name,
        )
    return Watched(iterable, WaitMeter(name, device=device))
