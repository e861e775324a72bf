"""Hugging Face Transformers: ``WatchCallback`` logs the data wait of every training epoch.

    trainer = transformers.Trainer(model=model, args=args, train_dataset=train_set)
    trainer.add_callback(wellfed.integrations.transformers.WatchCallback(trainer))
    trainer.train()   # logs wellfed/data_bound_fraction, ... at every epoch's end

``Trainer`` builds its training DataLoader itself (through Accelerate) and iterates it right
after ``on_epoch_begin``. At that moment the callback meters that loader for one ``iter()``:
its class's ``__iter__`` (``type(train_dataloader)``, the loader every callback event
receives) is replaced, for that one call, by one that hands back a metered iterator for that
loader only and puts the original back; nothing else changes, no other loader is metered.
The books are a ``wellfed._meter.WaitMeter``, the accounting ``wellfed.watch`` uses; with the
model on a CUDA device the wait is the GPU's idle time (CUDA events; see ``wellfed._meter``). Each
``next()`` of the epoch counts, also the batches ``Trainer`` fetches ahead for gradient
accumulation.

At ``on_epoch_end`` the stats are logged as ``wellfed/<field>``: with the trainer given,
through ``Trainer.log`` (``state.log_history`` and every reporting integration: TensorBoard,
W&B...); without it, appended to ``state.log_history`` only. ``WatchCallback.history`` keeps
one ``WatchStats`` per epoch. An epoch resumed mid-way from a checkpoint
(``skip_first_batches`` builds another loader) is not metered.

Imports transformers on import.
"""

from __future__ import annotations

from typing import Any

from wellfed._meter import LOGGED_FIELDS, WaitMeter, WatchStats, warmup_for
from wellfed._watch._wrap import MeteredIterator
from wellfed.errors import DependencyError

try:
    from transformers import TrainerCallback
except ImportError as exc:
    raise DependencyError(
        f"transformers is not installed: wellfed.integrations.transformers needs it ({exc}). "
        "Install it with `pip install transformers`.",
        attribute="transformers",
        value=None,
    ) from exc

__all__ = ["LOGGED_FIELDS", "WatchCallback"]

_MISSING = object()


def _meter_next_iter(loader: Any, meter: WaitMeter, warmup: int) -> Any:
    """Meter ``loader``'s next ``iter()`` (once); returns a function that undoes it.

    ``type(loader).__iter__`` is replaced, for that one call, by one that hands back a
    ``MeteredIterator`` for this loader (any other instance of the class is served by the
    original) and puts the original back. ``type()``, not ``__class__``: Accelerate's
    ``DataLoaderShard`` reports its inner loader's class as ``__class__``.
    """
    cls = type(loader)
    own = cls.__dict__.get("__iter__", _MISSING)
    original = cls.__iter__

    def restore() -> None:
        if cls.__dict__.get("__iter__") is __iter__:
            if own is _MISSING:
                delattr(cls, "__iter__")
            else:
                setattr(cls, "__iter__", own)  # noqa: B010

    def __iter__(self: Any) -> Any:
        if self is not loader:
            return original(self)
        restore()
        return MeteredIterator(iter(original(self)), meter, warmup=warmup)

    setattr(cls, "__iter__", __iter__)  # noqa: B010
    return restore


def _device(model: Any) -> Any:
    try:
        device = next(model.parameters()).device
    except (AttributeError, StopIteration, TypeError):
        return None
    return device if getattr(device, "type", None) == "cuda" else None


class WatchCallback(TrainerCallback):
    """Log the data wait of every training epoch (see the module docstring).

    Args:
        trainer: The ``Trainer`` to log through (``Trainer.log``); None: the stats go to
            ``state.log_history`` only.
        prefix: Put before each logged field's name (default ``"wellfed/"``).
        cuda_clock: Time on the GPU's clock when the model is on a CUDA device (default True).

    Attributes:
        history: One ``WatchStats`` per finished epoch.
        meter: The current epoch's ``WaitMeter`` (None between epochs).
    """

    def __init__(
        self, trainer: Any = None, *, prefix: str = "wellfed/", cuda_clock: bool = True
    ) -> None:
        self.trainer = trainer
        self.prefix = prefix
        self.cuda_clock = cuda_clock
        self.history: list[WatchStats] = []
        self.meter: WaitMeter | None = None
        self._restore: Any = None

    def on_epoch_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Meter the training loader's next ``iter()`` (the one this epoch makes)."""
        loader = kwargs.get("train_dataloader")
        if loader is None:
            return
        device = _device(kwargs.get("model")) if self.cuda_clock else None
        self._undo()
        self.meter = WaitMeter(f"epoch {int(state.epoch or 0)}", device=device)
        self._restore = _meter_next_iter(loader, self.meter, warmup_for(loader))

    def on_epoch_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Log the epoch's stats and keep them in ``history``."""
        self._undo()  # never iterated this epoch (a resumed epoch builds another loader)
        meter, self.meter = self.meter, None
        if meter is None:
            return
        stats = meter.stats()
        self.history.append(stats)
        logs = stats.metrics(self.prefix)
        if not logs:
            return
        if self.trainer is not None:
            self.trainer.log(logs)
        else:
            state.log_history.append({**logs, "epoch": state.epoch, "step": state.global_step})

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Undo the metering of a loader no epoch iterated."""
        self._undo()

    def _undo(self) -> None:
        restore, self._restore = self._restore, None
        if restore is not None:
            restore()
