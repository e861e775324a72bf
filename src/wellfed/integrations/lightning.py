"""Lightning: ``WatchCallback`` logs how much of each training step waited on data, per epoch.

    trainer = lightning.Trainer(callbacks=[wellfed.integrations.lightning.WatchCallback()])
    trainer.fit(model, datamodule)   # logs wellfed/data_bound_fraction, ... every epoch

The callback needs no change to the module or the loaders. Lightning times every training
fetch itself (the ``[_TrainingEpochLoop].train_dataloader_next`` row of its profilers):
the callback taps those two points, start and stop, on the trainer's profiler (whatever
profiler is set: the tap forwards every call to it) and keeps the books in a
``wellfed._meter.WaitMeter``, the accounting ``wellfed.watch`` uses. Samples come from each
batch's leading dimension (``on_train_batch_start``). A validation run inside an epoch is
left out of the step it interrupts. With the module on a CUDA device the wait is the GPU's
idle time (CUDA events at every hand-over; see ``wellfed._meter``).

At every epoch's end the stats are logged through ``LightningModule.log_dict`` (so to every
logger of the trainer: CSV, TensorBoard, W&B) as ``wellfed/<field>`` and kept in
``WatchCallback.history`` (one ``WatchStats`` per epoch).

Imports lightning (or pytorch_lightning) on import.
"""

from __future__ import annotations

import sys
from typing import Any

from wellfed._meter import LOGGED_FIELDS, WaitMeter, WatchStats, leading_dim
from wellfed.errors import DependencyError

try:
    from lightning.pytorch.callbacks import Callback
except ImportError:  # the standalone package
    try:
        from pytorch_lightning.callbacks import Callback  # type: ignore[assignment]
    except ImportError as exc:
        raise DependencyError(
            f"Lightning is not installed: wellfed.integrations.lightning needs it ({exc}). "
            "Install it with `pip install lightning`.",
            attribute="lightning",
            value=None,
        ) from exc

__all__ = ["LOGGED_FIELDS", "WatchCallback"]

_FETCH = "train_dataloader_next"


class _ProfilerTap:
    """The trainer's profiler, with the training fetch's start and stop also on the meter."""

    __slots__ = ("_wf_callback", "_wf_inner")

    def __init__(self, inner: Any, callback: WatchCallback) -> None:
        object.__setattr__(self, "_wf_inner", inner)
        object.__setattr__(self, "_wf_callback", callback)

    def start(self, action_name: str) -> Any:
        meter = self._wf_callback.meter
        if meter is not None and action_name.endswith(_FETCH):
            meter.begin()
        return self._wf_inner.start(action_name)

    def stop(self, action_name: str) -> Any:
        result = self._wf_inner.stop(action_name)
        meter = self._wf_callback.meter
        if meter is not None and action_name.endswith(_FETCH):
            if sys.exc_info()[0] is not None:  # the fetch raised (StopIteration: epoch's end)
                meter.abandon()
            else:
                meter.end(0)  # samples: on_train_batch_start
        return result

    def __getattr__(self, name: str) -> Any:
        if name in _ProfilerTap.__slots__:
            raise AttributeError(name)
        return getattr(self._wf_inner, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._wf_inner, name, value)


def _device(pl_module: Any) -> Any:
    device = getattr(pl_module, "device", None)
    return device if getattr(device, "type", None) == "cuda" else None


def _warmup(trainer: Any) -> int:
    """Warm-up steps of this epoch: the training loader's workers where the epoch starts them.

    Lightning makes the first epoch's iterator before ``on_train_epoch_start`` (its workers
    are starting), the later ones after it; persistent workers start only once.
    """
    loaders = getattr(trainer, "train_dataloader", None)
    if isinstance(loaders, dict):
        loaders = list(loaders.values())
    if not isinstance(loaders, (list, tuple)):
        loaders = [loaders]
    counts = [1]
    for loader in loaders:
        loader = getattr(loader, "base_dataloader", None) or loader
        workers = getattr(loader, "num_workers", 0)
        persistent = getattr(loader, "persistent_workers", False)
        if isinstance(workers, int) and (trainer.current_epoch == 0 or not persistent):
            counts.append(workers)
    return max(counts)


class WatchCallback(Callback):
    """Log the data wait of every training epoch (see the module docstring).

    Args:
        prefix: Put before each logged field's name (default ``"wellfed/"``).
        cuda_clock: Time on the GPU's clock (CUDA events) when the module is on a CUDA device
            (default True); False: host clocks always.

    Attributes:
        history: One ``WatchStats`` per finished training epoch.
        meter: The current epoch's ``WaitMeter`` (None between epochs).
    """

    def __init__(self, *, prefix: str = "wellfed/", cuda_clock: bool = True) -> None:
        super().__init__()
        self.prefix = prefix
        self.cuda_clock = cuda_clock
        self.history: list[WatchStats] = []
        self.meter: WaitMeter | None = None
        self._tapped: Any = None

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        """Tap the trainer's profiler for the fit."""
        if stage == "fit" and not isinstance(trainer.profiler, _ProfilerTap):
            self._tapped = trainer.profiler
            trainer.profiler = _ProfilerTap(trainer.profiler, self)

    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        """Give the trainer its profiler back."""
        if isinstance(trainer.profiler, _ProfilerTap) and self._tapped is not None:
            trainer.profiler = self._tapped
        self._tapped = None
        self.meter = None

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        """A fresh meter for the epoch."""
        device = _device(pl_module) if self.cuda_clock else None
        self.meter = WaitMeter(f"epoch {trainer.current_epoch}", device=device)
        self.meter.new_epoch(_warmup(trainer))

    def on_train_batch_start(
        self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int
    ) -> None:
        """Count the batch's samples in the latest hand-over."""
        if self.meter is not None:
            self.meter.add_samples(leading_dim(batch))

    def on_validation_start(self, trainer: Any, pl_module: Any) -> None:
        """Leave the step a validation run interrupts out."""
        if self.meter is not None:
            self.meter.skip_step()

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        """Log the epoch's stats to the trainer's loggers and keep them in ``history``."""
        if self.meter is None:
            return
        stats = self.meter.stats()
        self.history.append(stats)
        metrics = stats.metrics(self.prefix)
        if metrics:
            pl_module.log_dict(metrics, on_step=False, on_epoch=True, logger=True)
        self.meter = None
