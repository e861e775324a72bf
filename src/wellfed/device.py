"""Feed the device: host-to-device copies ahead of the step, per-batch transforms on the device.

``to_device(loader, device)`` wraps any loader (a ``torch.utils.data.DataLoader``, a wellfed
``SeededDataLoader``, any iterable of batches). For a CUDA device it:

1. pins each host batch that the loader did not pin (``tensor.pin_memory()``, in the main
   process; a DataLoader with ``pin_memory=True`` pins in its own pin-memory thread instead,
   off the training loop, which is why that is the better setting);
2. copies it with ``non_blocking=True`` on a side CUDA stream, ``depth`` batches ahead of the
   batch the training loop is using, and records an event after the copy;
3. when the loop asks for the batch, makes the loop's current stream wait on that event (a
   device-side wait: the host does not block) and calls ``record_stream`` on every device
   tensor, so the caching allocator does not hand their memory to a later copy while kernels
   queued on the loop's stream still read it; the host batch is kept alive until its copy's
   event has completed (the pinned-memory allocator also records the copy);
4. applies ``transform`` to the whole batch on the device, on the loop's stream, under
   ``torch.no_grad()``.

On ``device="cpu"`` (and devices without streams) the same code path runs without pinning,
streams or events: the batch is moved with ``.to(device)`` (a no-op for CPU tensors) and the
transform applied. This is how the device side is tested on a machine without a GPU.

Device transforms (``BatchTransform`` with ``ToFloat``, ``Normalize``,
``RandomHorizontalFlip``, ``RandomResizedCrop``) work on a batch of images (B, C, H, W): B
samples, C channels, H x W pixels. The random ones draw each sample's parameters on the host,
in pure Python, from that sample's seed: a seeded loader built with ``sample_seeds=True``
yields ``wellfed.SeededBatch(batch, seeds)``, whose seeds are ``sample_seed(seed, epoch,
index)``, so the device transforms give the same result for the same (seed, epoch, index)
whatever the worker count, and the same result as applying them to each sample alone.

The decode form (issue 17 item 4): workers send each file's bytes (``collate_encoded`` keeps
a batch of them as ``EncodedImages``, which ``to_device`` leaves on the host), and
``DecodeImages`` decodes them on the device (nvJPEG through torchvision on a CUDA device
where available, Pillow otherwise) into a list of images of varying sizes; ``ToFloat``
converts such a list image by image and ``RandomResizedCrop`` turns it into one batch.

Why plain torch ops and not kornia or torchvision: torchvision's ``transforms.v2`` draws from
torch's global RNG and cannot be imported on a machine where its CUDA wheel sits beside a CPU
torch (issue 15); kornia is an extra dependency (kornia + kornia_rs), its augmentations draw
from the global RNG too (per-sample seeds would go through its params API anyway), and its
``crop_and_resize`` was the slowest of the batched crops measured (see RandomResizedCrop).
The ops used (``torch.flip``, ``torch.where``, ``F.interpolate``, ``F.grid_sample``) are
stable torch API.

See ``docs/device.md``.
"""

from __future__ import annotations

import collections
import copy
import dataclasses
import inspect
import io
import logging
import math
from collections.abc import Callable, Iterator, Mapping, MutableMapping, Sequence
from typing import Any

import torch

from wellfed.errors import BadFileError, ConfigError, DependencyError, StateError
from wellfed.seeding import _MASK64, _SALT_DEVICE, SeededBatch, _mix

__all__ = [
    "BatchTransform",
    "DecodeImages",
    "DeviceLoader",
    "EncodedImages",
    "Normalize",
    "RandomHorizontalFlip",
    "RandomResizedCrop",
    "ToFloat",
    "batch_nbytes",
    "collate_encoded",
    "gpu_decode_unavailable",
    "to_device",
    "uniform",
]

logger = logging.getLogger(__name__)

#: The wellfed loader state format whose batch count to_device corrects for batches in flight.
_WELLFED_STATE = "wellfed.loader/1"


# --- nested batches --------------------------------------------------------------------------


def _map_tensors(
    obj: Any, fn: Callable[[torch.Tensor], torch.Tensor], *, keep_encoded: bool = False
) -> Any:
    """Apply ``fn`` to every tensor inside a batch, keeping its structure.

    Tuples, lists, namedtuples (``SeededBatch`` included), mappings and dataclass instances are
    rebuilt with their items mapped; anything else (ints, strings, None, arrays) is passed
    through unchanged. With ``keep_encoded`` an ``EncodedImages`` is passed through too (to_device
    leaves encoded bytes on the host, where the decoders read them).
    """
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, (str, bytes)):
        return obj
    if keep_encoded and isinstance(obj, EncodedImages):
        return obj
    if isinstance(obj, tuple):
        items = [_map_tensors(x, fn, keep_encoded=keep_encoded) for x in obj]
        if hasattr(obj, "_fields"):  # namedtuple
            return type(obj)(*items)
        try:
            return type(obj)(items)
        except TypeError:
            return tuple(items)
    if isinstance(obj, list):
        return [_map_tensors(x, fn, keep_encoded=keep_encoded) for x in obj]
    if isinstance(obj, Mapping):
        mapped = {k: _map_tensors(v, fn, keep_encoded=keep_encoded) for k, v in obj.items()}
        try:
            if isinstance(obj, MutableMapping):
                clone = copy.copy(obj)
                clone.update(mapped)
                return clone
            return type(obj)(mapped)  # type: ignore[call-arg]
        except TypeError:
            return mapped
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        record = copy.copy(obj)
        for field in dataclasses.fields(obj):
            value = _map_tensors(getattr(obj, field.name), fn, keep_encoded=keep_encoded)
            object.__setattr__(record, field.name, value)
        return record
    return obj


def batch_nbytes(batch: Any) -> int:
    """Bytes of the tensors in a batch: the sum of their ``nbytes``, any nesting to_device moves.

    What one batch costs to send from a worker to the main process (through shared memory)
    and to copy to the device. Tensors inside tuples, lists, namedtuples, mappings and
    dataclasses count, and the byte tensors of an ``EncodedImages`` (the encoded form: the
    files' bytes); other values (ints, strings, a ``SeededBatch``'s seeds) count 0.
    Example: the built-in workload's float form, a batch of 32 float32 (3, 224, 224) images
    and 32 int64 labels: 32 x 602,112 + 32 x 8 = 19,267,840 B.
    """
    total = 0

    def add(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    _map_tensors(batch, add)
    return total


# --- the loader wrapper ----------------------------------------------------------------------


class _InFlight:
    """One batch between the loader and the training loop: its host copy, its device copy
    (being made on the side stream) and the event recorded after the copy."""

    __slots__ = ("device_batch", "event", "host", "tensors")

    def __init__(self, host: Any, device_batch: Any, tensors: list[torch.Tensor], event: Any):
        self.host = host
        self.device_batch = device_batch
        self.tensors = tensors  # the device tensors made on the side stream
        self.event = event


class DeviceLoader:
    """Iterates a loader with each batch on ``device``, copied ahead and transformed there.

    Made by ``wellfed.to_device`` (see there for the method). ``len()``, ``set_epoch``,
    ``state_dict`` and ``load_state_dict`` are the wrapped loader's; any other attribute
    (``dataset``, ``batch_size``, ``sampler``) is read from it too.

    Attributes:
        loader: The wrapped loader.
        device: The ``torch.device`` batches are moved to.
        transform: The per-batch callable applied on the device, or None.
        depth: Batches copied ahead of the one the training loop holds.
    """

    def __init__(
        self,
        loader: Any,
        device: torch.device,
        transform: Callable[[Any], Any] | None,
        depth: int,
    ) -> None:
        self.loader = loader
        self.device = device
        self.transform = transform
        self.depth = depth
        self._pinned_note = False
        self._stream: Any = None
        self._base_state: dict[str, Any] | None = None  # loader state as the iteration began
        self._pulled = 0  # batches taken from the loader in the current iteration
        self._delivered = 0  # batches handed to the training loop in it
        self._retired: collections.deque[_InFlight] = collections.deque()

    # -- what the wrapped loader has ------------------------------------------------------

    def __len__(self) -> int:
        """Batches per epoch: ``len(loader)``.

        Raises:
            TypeError: The wrapped loader has no length (an iterable-style dataset).
        """
        return len(self.loader)

    def set_epoch(self, epoch: int) -> None:
        """Forward to ``loader.set_epoch(epoch)`` (``SeededDataLoader``, Lightning, ...).

        Raises:
            AttributeError: The wrapped loader has no ``set_epoch``.
        """
        self._require("set_epoch")(epoch)

    def state_dict(self) -> dict[str, Any]:
        """The wrapped loader's state, counting only the batches the training loop received.

        to_device takes up to ``depth + 1`` batches from the loader before the training loop
        has them; the loader counts them as delivered. For a wellfed loader's state
        (``SeededDataLoader``) the count is corrected: ``batches_done`` is the batches this
        wrapper handed out, so a resume repeats none and skips none.

        Raises:
            AttributeError: The wrapped loader has no ``state_dict``.
            StateError: Batches are in flight and the loader's state is not a wellfed state,
                so it would count batches the training loop never received (WF702).
            StateError: Whatever the wrapped loader's ``state_dict`` raises (WF208: seed=None).
        """
        state = dict(self._require("state_dict")())
        in_flight = self._pulled - self._delivered
        if in_flight <= 0:
            return state
        base = self._base_state
        if base is None or base.get("format") != _WELLFED_STATE:
            raise StateError(
                f"Cannot save a resume state now: {in_flight} batch(es) taken from "
                f"loader={type(self.loader).__name__} by to_device are not yet delivered, and "
                "this loader's state would count them as done, so a resume would skip them. "
                "Save the state at the end of an epoch, wrap a wellfed loader "
                "(create_dataloader(..., seed=...)), or use depth=0. [WF702]",
                code="WF702",
                attribute="state_dict",
                value=in_flight,
            )
        state.update(epoch=base["epoch"], batches_done=base["batches_done"] + self._delivered)
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Forward to ``loader.load_state_dict(state)``; the next iteration resumes there.

        Raises:
            AttributeError: The wrapped loader has no ``load_state_dict``.
        """
        self._require("load_state_dict")(state)
        self._pulled = self._delivered = 0
        self._base_state = None

    def _require(self, name: str) -> Callable[..., Any]:
        method = getattr(self.loader, name, None)
        if not callable(method):
            raise AttributeError(
                f"to_device cannot forward {name}(): loader={type(self.loader).__name__} has "
                f"no {name} method. Call it on a loader that has one (a wellfed "
                "SeededDataLoader has set_epoch, state_dict and load_state_dict)."
            )
        return method  # type: ignore[no-any-return]

    @property
    def _iterator(self) -> Any:
        """The wrapped loader's persistent iterator (``DataLoader._iterator``), or None.

        Forwarded (read and write) so that wellfed's loader driver (``measure.close_loader``,
        the close path of every trial) stops a wrapped loader's persistent workers as it
        stops a DataLoader's.
        """
        return getattr(self.loader, "_iterator", None)

    @_iterator.setter
    def _iterator(self, value: Any) -> None:
        if hasattr(self.loader, "_iterator"):
            self.loader._iterator = value

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_") or name in ("loader", "device", "transform", "depth"):
            raise AttributeError(name)
        return getattr(self.loader, name)

    def __repr__(self) -> str:
        return (
            f"DeviceLoader(loader={type(self.loader).__name__}, device={str(self.device)!r}, "
            f"depth={self.depth}, transform={self.transform!r})"
        )

    # -- iteration ------------------------------------------------------------------------

    def __iter__(self) -> Iterator[Any]:
        it = iter(self.loader)
        self._base_state = self._read_state()
        self._pulled = self._delivered = 0
        cuda = self.device.type == "cuda"
        if cuda and self._stream is None:
            self._stream = torch.cuda.Stream(self.device)  # type: ignore[no-untyped-call]
        return _DeviceIterator(self._run(it, self._stream if cuda else None), it, self.loader)

    def _read_state(self) -> dict[str, Any] | None:
        method = getattr(self.loader, "state_dict", None)
        if not callable(method):
            return None
        try:
            return dict(method())
        except Exception:  # seed=None, or a loader whose state is not ready: nothing to fix
            return None

    def _run(self, it: Iterator[Any], stream: Any) -> Iterator[Any]:
        pending: collections.deque[_InFlight] = collections.deque()
        exhausted = False

        def pull() -> bool:
            nonlocal exhausted
            if exhausted:
                return False
            try:
                host = next(it)
            except StopIteration:
                exhausted = True
                return False
            self._pulled += 1
            pending.append(self._start(host, stream))
            return True

        try:
            while pending or pull():
                head = pending.popleft()
                while len(pending) < self.depth and pull():
                    pass
                batch = self._finish(head, stream)
                self._delivered += 1
                yield batch
        finally:
            # the frame ends here, dropping the loader's iterator: a DataLoader iterator stops
            # its (non-persistent) workers when collected, also when the loop broke early
            pending.clear()
            self._retired.clear()

    def _start(self, host: Any, stream: Any) -> _InFlight:
        """Begin moving one host batch: pin it, copy it on the side stream, record an event."""
        if stream is None:
            moved = _map_tensors(host, lambda t: t.to(self.device), keep_encoded=True)
            return _InFlight(host, moved, [], None)
        tensors: list[torch.Tensor] = []
        unpinned: list[int] = []

        def copy_one(t: torch.Tensor) -> torch.Tensor:
            if t.device.type != "cpu":
                return t  # already on a device: moved on the loop's stream in _finish
            if not t.is_pinned():
                unpinned.append(t.numel() * t.element_size())
                t = t.pin_memory()
            out = t.to(self.device, non_blocking=True)
            tensors.append(out)
            return out

        with torch.cuda.stream(stream):
            moved = _map_tensors(host, copy_one, keep_encoded=True)
            event = torch.cuda.Event()  # type: ignore[no-untyped-call]
            event.record(stream)
        if unpinned and not self._pinned_note:
            self._pinned_note = True
            logger.info(
                "to_device: the loader's batches are not in pinned memory; pinning each in "
                "the main process (%.1f MB per batch). Pass pin_memory=True to the "
                "DataLoader to pin in its pin-memory thread instead.",
                sum(unpinned) / 1e6,
            )
        return _InFlight(host, moved, tensors, event)

    def _finish(self, item: _InFlight, stream: Any) -> Any:
        """Hand one batch to the training loop: wait on its copy, then transform it."""
        batch = item.device_batch
        if stream is not None:
            current = torch.cuda.current_stream(self.device)
            current.wait_event(item.event)
            for t in item.tensors:
                t.record_stream(current)  # its memory is not reused before `current` is past
            # tensors not copied ahead; encoded bytes stay on the host for the decode step
            batch = _map_tensors(batch, lambda t: t.to(self.device), keep_encoded=True)
            item.device_batch = item.tensors = None  # type: ignore[assignment]
            self._retired.append(item)  # keeps the host batch until its copy has completed
            while self._retired and self._retired[0].event.query():
                self._retired.popleft()
        if self.transform is not None:
            with torch.no_grad():
                batch = self.transform(batch)
        return batch


class _DeviceIterator:
    """The iterator of one pass over a DeviceLoader.

    Has ``_shutdown_workers`` like a DataLoader iterator, so wellfed's loader driver
    (``measure.iterate``, ``open_batches``) stops the wrapped loader's workers at once when a
    pass ends early; otherwise they stop when the iterator is collected. A persistent-workers
    loader whose iterator is stopped so forgets it (``loader._iterator = None``), as the driver
    does for a DataLoader: its next pass starts new workers instead of reusing dead ones.
    """

    def __init__(self, gen: Iterator[Any], inner: Any, loader: Any) -> None:
        self._gen = gen
        self._inner = inner
        self._loader = loader

    def __iter__(self) -> _DeviceIterator:
        return self

    def __next__(self) -> Any:
        return next(self._gen)

    def close(self) -> None:
        """End the pass: drop the batches in flight."""
        self._gen.close()  # type: ignore[attr-defined]

    def _shutdown_workers(self) -> None:
        self.close()
        shutdown = getattr(self._inner, "_shutdown_workers", None)
        if callable(shutdown):
            shutdown()
        if self._inner is not None and getattr(self._loader, "_iterator", None) is self._inner:
            self._loader._iterator = None
        self._inner = self._loader = None


def to_device(
    loader: Any,
    device: str | int | torch.device,
    *,
    transform: Callable[[Any], Any] | None = None,
    depth: int = 2,
) -> DeviceLoader:
    """Iterate ``loader`` with each batch on ``device``, copied ahead, transformed there.

    For a CUDA device each host batch is pinned (unless the loader pinned it:
    ``pin_memory=True`` does that in the DataLoader's pin-memory thread, off the training
    loop), copied with ``non_blocking=True`` on a side CUDA stream ``depth`` batches ahead of
    the batch in use, and handed over only after the training loop's current stream has been
    made to wait on the copy's event; ``record_stream`` on each device tensor keeps its memory
    from being reused while the loop's kernels still read it. Then ``transform`` runs on the
    device, on the loop's stream, on the whole batch, under ``torch.no_grad()``: input
    preparation needs no gradients. (Not ``torch.inference_mode()``: its outputs are
    inference tensors, and a training model that saves them for backward raises "Inference
    tensors cannot be saved for backward".) On the CPU and devices without streams the same
    path runs without pinning, streams or events.

    Batches may be tensors or any nesting of tuples, lists, namedtuples, dicts and dataclasses
    of tensors; other values (ints, strings) pass through unchanged. A seeded loader's
    ``SeededBatch`` keeps its ``seeds`` (Python ints) on the host, and an ``EncodedImages``
    (encoded file bytes, from ``collate_encoded``) stays on the host for ``DecodeImages``.

    The main-process fix for a model in ``__getitem__`` (note 001): load the model's inputs
    with worker processes, and give the model (a ``torch.nn.Module`` on ``device``, in eval
    mode) as the transform, or as a step of ``BatchTransform`` to apply it to one field of the
    batch; it then runs once per batch on the device, while workers load the next ones.

    Device memory: up to ``depth + 1`` batches at once (the one in use and ``depth`` copied
    ahead), plus what the transform allocates.

    Args:
        loader: Any iterable of batches; ``len``, ``set_epoch``, ``state_dict`` and
            ``load_state_dict`` are forwarded to it (see ``DeviceLoader``).
        device: Where batches go: "cuda", "cuda:1", "cpu", an int (a CUDA index) or a
            ``torch.device``.
        transform: Callable applied to each batch on the device (``BatchTransform``, a
            ``torch.nn.Module``, any function of the batch); None moves batches only.
        depth: Batches copied ahead of the one in use, >= 0; 0 copies each batch when it is
            asked for (no overlap). 2 (the default) keeps one copy in flight while the next
            waits behind it, as timm's ``PrefetchLoader`` (1 ahead) plus one for a step that
            varies in length.

    Returns:
        A ``DeviceLoader``: iterate it like the loader.

    Raises:
        ConfigError: ``device`` does not parse or is a CUDA device and CUDA is not available,
            ``depth`` is not an int >= 0, ``transform`` is not callable, or ``loader`` is not
            iterable (WF701).

    Example:
        >>> loader = wellfed.create_dataloader(ds, batch_size=64, seed=0, num_workers=4,
        ...                                    pin_memory=True, sample_seeds=True)
        >>> augment = wellfed.BatchTransform([ToFloat(), RandomHorizontalFlip(),
        ...                                   Normalize(IMAGENET_MEAN, IMAGENET_STD)])
        >>> for images, labels in wellfed.to_device(loader, "cuda", transform=augment):
        ...     loss = model(images)...

    Source:
        The side-stream copy, stream wait and ``record_stream`` follow timm's
        ``timm.data.loader.PrefetchLoader`` and the PyTorch CUDA semantics notes
        (https://pytorch.org/docs/stable/notes/cuda.html#cuda-streams).
    """
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(
            f"Invalid option: device={device!r} is not a device torch knows ({exc}). Pass "
            "'cuda', 'cuda:0', 'cpu' or a torch.device. [WF701]",
            code="WF701",
            attribute="device",
            value=device,
        ) from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"Invalid option: device={device!r}, but torch.cuda.is_available() is False "
            f"(torch {torch.__version__}), so batches cannot be copied there. Pass "
            "device='cpu', or install a CUDA build of torch on a machine with a GPU. [WF701]",
            code="WF701",
            attribute="device",
            value=device,
        )
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 0:
        raise ConfigError(
            f"Invalid option: depth={depth!r} is not an int >= 0 (batches copied ahead). "
            "Pass depth=2, or 0 to copy each batch when it is asked for. [WF701]",
            code="WF701",
            attribute="depth",
            value=depth,
        )
    if transform is not None and not callable(transform):
        raise ConfigError(
            f"Invalid option: transform={transform!r} is not callable. Pass a function of "
            "the batch, a torch.nn.Module or a wellfed.BatchTransform. [WF701]",
            code="WF701",
            attribute="transform",
            value=type(transform).__name__,
        )
    if not hasattr(loader, "__iter__"):
        raise ConfigError(
            f"Invalid option: loader={type(loader).__name__} is not iterable. Pass a "
            "DataLoader (or any iterable of batches). [WF701]",
            code="WF701",
            attribute="loader",
            value=type(loader).__name__,
        )
    return DeviceLoader(loader, dev, transform, depth)


# --- per-sample randomness -------------------------------------------------------------------


def uniform(seed: int, j: int) -> float:
    """The ``j``-th uniform draw in [0, 1) of a transform step's per-sample seed.

    A counter-based stream: splitmix64 of ``seed + j``, top 53 bits. Pure Python, so the same
    on every host and device, and free of any RNG state.

    Args:
        seed: A step seed (``BatchTransform.step_seeds``), in [0, 2**64).
        j: The draw's number, >= 0.
    """
    return (_mix((seed + j) & _MASK64) >> 11) * (1.0 / (1 << 53))


def _host_tensor(values: Any, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A small host tensor (per-sample parameters) on ``device``, copied without a host wait."""
    t = torch.tensor(values, dtype=dtype)
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def _describe(images: Any) -> str:
    if isinstance(images, torch.Tensor):
        return f"a tensor of shape {tuple(images.shape)}"
    if isinstance(images, (list, tuple)):
        return f"a {type(images).__name__} of {len(images)} image(s)"
    return type(images).__name__


def _check_images(images: Any, step: str) -> torch.Tensor:
    """The images as one batch tensor (B, C, H, W), or WF703 naming what came instead."""
    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        got = _describe(images)
        hint = (
            " A list of images of varying sizes (decoded by DecodeImages) becomes one batch in "
            "RandomResizedCrop: put it before this step."
            if isinstance(images, (list, tuple))
            else ""
        )
        raise ConfigError(
            f"Cannot apply {step}: it takes images as one tensor (B, C, H, W), got {got}.{hint} "
            "Point BatchTransform's key at the image field of the batch (key=0 for "
            "(images, labels), key='image' for a dict). [WF703]",
            code="WF703",
            attribute="images",
            value=got,
        )
    return images


def _check_image_list(images: Any, step: str) -> list[torch.Tensor] | None:
    """The images as a list of (C, H, W) tensors when they come as a list or tuple, else None
    (a batch tensor: checked by ``_check_images``); WF703 for an item that is not (C, H, W)."""
    if isinstance(images, torch.Tensor) or not isinstance(images, (list, tuple)):
        return None
    items = list(images)
    for i, im in enumerate(items):
        if not isinstance(im, torch.Tensor) or im.dim() != 3:
            got = _describe(im)
            raise ConfigError(
                f"Cannot apply {step}: image {i} of the list is {got}, not one image (C, H, W). "
                "Put DecodeImages first for encoded bytes (EncodedImages), or pass a batch "
                "tensor (B, C, H, W). [WF703]",
                code="WF703",
                attribute="images",
                value=got,
            )
    return items


def _check_batch(images: Any, step: str) -> torch.Tensor | list[torch.Tensor]:
    """A batch tensor (B, C, H, W) or a list of (C, H, W) images; WF703 otherwise."""
    items = _check_image_list(images, step)
    return items if items is not None else _check_images(images, step)


# --- encoded images: bytes off the workers, decode on the device ---------------------------

#: The first bytes of a JPEG file (SOI marker, then the first segment's marker).
#: Source: ITU-T T.81 (JPEG), B.1.1.3 markers: SOI = FFD8, every marker starts with FF.
JPEG_MAGIC = b"\xff\xd8\xff"


class EncodedImages(tuple):  # type: ignore[type-arg]
    """A batch of encoded images: one 1-D uint8 tensor per sample, the file's bytes.

    What ``collate_encoded`` makes of samples ``(bytes tensor, label)`` (the built-in workload's
    ``output="encoded"``): the samples' lengths differ, so they stay separate tensors. A tuple:
    index, iterate and ``len()`` it as one. ``to_device`` leaves it on the host (decoders read
    host memory; nvJPEG copies only the compressed bytes it needs); ``DecodeImages`` decodes
    it on its device; ``batch_nbytes`` counts its bytes; the loader driver counts one sample per
    item. Picklable, and kept (pinned item by item) by a DataLoader's ``pin_memory=True``.
    """

    __slots__ = ()

    #: The loader driver's sample count (``wellfed._meter.leading_dim``) is ``len()``.
    items_are_samples = True

    def __repr__(self) -> str:
        total = sum(int(t.numel()) for t in self if isinstance(t, torch.Tensor))
        return f"EncodedImages({len(self)} images, {total:,} B)"


def collate_encoded(samples: Sequence[Sequence[Any]]) -> tuple[Any, ...]:
    """Collate samples ``(encoded bytes, label, ...)``: the bytes into ``EncodedImages``.

    The collate function of the encoded form (``builtin_dataset(output="encoded")``): give it
    as ``create_dataloader(..., collate_fn=collate_encoded)`` or to a DataLoader. Module-level,
    so it pickles into spawned workers.

    Args:
        samples: B samples, each a tuple or list whose first item is a 1-D uint8 tensor (the
            file's bytes, ``torch.frombuffer``); the other items (a label) of any type.

    Returns:
        ``(EncodedImages of B tensors, *others)``: each other field collated with torch's
        ``default_collate`` (int labels -> int64 (B,)).

    Raises:
        ConfigError: ``samples`` is empty, or a sample's first item is not a 1-D uint8
            tensor (WF703).
    """
    from torch.utils.data import default_collate

    first = [s[0] for s in samples]
    for i, t in enumerate(first):
        if not isinstance(t, torch.Tensor) or t.dim() != 1 or t.dtype != torch.uint8:
            got = _describe(t) + (f" of {t.dtype}" if isinstance(t, torch.Tensor) else "")
            raise ConfigError(
                f"Cannot collate encoded images: sample {i} of the batch starts with {got}, "
                "not a 1-D uint8 tensor of the file's bytes. Return "
                "(torch.frombuffer(bytearray(data), dtype=torch.uint8), label) from "
                "__getitem__ (builtin_dataset(output='encoded') does). [WF703]",
                code="WF703",
                attribute="samples",
                value=got,
            )
    if not first:
        raise ConfigError(
            "Cannot collate encoded images: the batch holds no sample. Pass one or more. [WF703]",
            code="WF703",
            attribute="samples",
            value=0,
        )
    width = len(samples[0])
    rest = [default_collate([s[k] for s in samples]) for k in range(1, width)]
    return (EncodedImages(first), *rest)


def _torchvision_decoder() -> tuple[Any, Any] | str:
    """(``torchvision.io.decode_jpeg``, ``ImageReadMode``), or why GPU decode is unavailable.

    torchvision is imported here only (never at wellfed's import): its wheels are CUDA builds
    that can fail to import beside a CPU torch (issue 15).
    """
    try:
        from torchvision.io import ImageReadMode, decode_jpeg
    except Exception as exc:  # a broken install raises anything at import
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        return f"torchvision not importable ({type(exc).__name__}: {first})"
    try:
        takes_device = "device" in inspect.signature(decode_jpeg).parameters
    except (TypeError, ValueError):
        takes_device = False
    if not takes_device:
        import torchvision

        version = getattr(torchvision, "__version__", "?")
        return (
            f"torchvision {version}'s decode_jpeg takes no device argument (GPU decode of a "
            "list needs torchvision >= 0.19)"
        )
    return decode_jpeg, ImageReadMode


def gpu_decode_unavailable(device: str | torch.device = "cuda") -> str | None:
    """Why GPU JPEG decode (nvJPEG through torchvision) cannot run on ``device``, or None.

    One short sentence: "no CUDA device", "torchvision not importable (ImportError: ...)",
    or that torchvision's ``decode_jpeg`` takes no ``device``. Checks with
    ``torch.cuda.device_count()`` (NVML), which does not initialise CUDA in this process.
    Imports torchvision only when a CUDA device is present.

    Args:
        device: The decode step's device: "cuda", "cuda:1", a ``torch.device``.
    """
    dev = torch.device(device)
    if dev.type != "cuda":
        return f"device {str(dev)!r} is not a CUDA device"
    if torch.cuda.device_count() == 0:
        return "no CUDA device"
    found = _torchvision_decoder()
    return found if isinstance(found, str) else None


def _pillow_decode(data: torch.Tensor) -> torch.Tensor:
    """One file's bytes -> uint8 (3, H, W) on the CPU: Pillow (libjpeg-turbo for JPEG), RGB."""
    import numpy as np
    from PIL import Image

    with Image.open(io.BytesIO(data.numpy().tobytes())) as image:
        rgb = image.convert("RGB")
    return torch.from_numpy(np.array(rgb, dtype=np.uint8)).permute(2, 0, 1).contiguous()


class DecodeImages:
    """Decode a batch of encoded images to a list of uint8 RGB images (3, H, W) on ``device``.

    The first step of the decode form (``BatchTransform([DecodeImages("cuda"), ToFloat(),
    RandomResizedCrop(224), ...])``): workers send the files' bytes (``EncodedImages``, from
    ``collate_encoded``), the main process decodes them on the device. The images keep their
    own sizes, so the result is a list; ``ToFloat`` converts it image by image and
    ``RandomResizedCrop`` turns it into one batch (B, 3, size_h, size_w).

    Decoders:

    * on a CUDA device, with torchvision importable and its ``decode_jpeg`` taking
      ``device=`` (``backend="auto"`` or ``"nvjpeg"``): the JPEGs of the batch (first bytes
      FF D8 FF) in one batched nvJPEG call, ``decode_jpeg(list, device=device,
      mode=ImageReadMode.RGB)``; a JPEG that nvJPEG refuses (a CMYK JPEG, say) is decoded by
      Pillow instead, logged once at INFO;
    * everything else (other formats, the CPU, ``backend="pillow"``, no torchvision): Pillow,
      ``PIL.Image.open(io.BytesIO(bytes)).convert("RGB")``, then ``.to(device)``: the same
      decoder and conversion as the built-in workload's float and uint8 forms.

    Not bit-identical across decoders: nvJPEG's pixels may differ from Pillow's
    (libjpeg-turbo's) by small amounts (IDCT and chroma upsampling differ); bit-identical for
    the same decoder, the same bytes and the same seeds. The step draws nothing.

    Args:
        device: Where the decoded images go: "cpu", "cuda", "cuda:1" or a ``torch.device``.
        backend: "auto" (nvJPEG on a CUDA device when available, else Pillow), "nvjpeg" (a
            DependencyError when unavailable), or "pillow".

    Raises:
        ConfigError: ``device`` does not parse or ``backend`` is not one of the three (WF701);
            at call time, images that are not a list of 1-D uint8 tensors (WF703).
        DependencyError: ``backend="nvjpeg"`` and GPU decode is unavailable: the reason from
            ``gpu_decode_unavailable`` (WF705).
        BadFileError: at call time, a sample's bytes decode with no decoder: names its index
            in the batch (WF704).

    Source:
        Batched GPU decode: torchvision.io.decode_jpeg (lists and ``device=`` since
        torchvision 0.19), on NVIDIA nvJPEG.
    """

    random = False
    BACKENDS = ("auto", "nvjpeg", "pillow")

    def __init__(self, device: str | int | torch.device = "cpu", *, backend: str = "auto") -> None:
        try:
            self.device = torch.device(device)
        except (RuntimeError, TypeError) as exc:
            raise ConfigError(
                f"Invalid option: DecodeImages(device={device!r}) is not a device torch knows "
                f"({exc}). Pass 'cuda', 'cuda:0' or 'cpu'. [WF701]",
                code="WF701",
                attribute="device",
                value=device,
            ) from exc
        if backend not in self.BACKENDS:
            raise ConfigError(
                f"Invalid option: DecodeImages(backend={backend!r}) is not one of 'auto', "
                "'nvjpeg', 'pillow'. Pass 'auto' (nvJPEG on a CUDA device when available). "
                "[WF701]",
                code="WF701",
                attribute="backend",
                value=backend,
            )
        self.backend = backend
        self._refused_note = False
        self._nvjpeg_ok: bool | None = None  # checked on first use, in the process that decodes
        if backend == "nvjpeg":
            why = gpu_decode_unavailable(self.device)
            if why is not None:
                raise DependencyError(
                    f"GPU decode is unavailable: DecodeImages(backend='nvjpeg', "
                    f"device={str(self.device)!r}): {why}. Install the torchvision build "
                    f"that matches torch {torch.__version__} (a CUDA build) on a machine "
                    "with a GPU, or pass backend='auto' to decode with Pillow here. [WF705]",
                    code="WF705",
                    attribute="backend",
                    value=why,
                )

    @property
    def uses_nvjpeg(self) -> bool:
        """True when this step decodes JPEGs with nvJPEG (a CUDA device, torchvision usable)."""
        if self._nvjpeg_ok is None:
            self._nvjpeg_ok = (
                self.backend != "pillow" and gpu_decode_unavailable(self.device) is None
            )
        return self._nvjpeg_ok

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_nvjpeg_ok": None, "_refused_note": False}

    def __call__(self, images: Any, seeds: Sequence[int] | None = None) -> list[torch.Tensor]:
        """Decode; ``seeds`` is unused. Returns B uint8 tensors (3, H_i, W_i) on ``device``."""
        items = _check_encoded(images, "DecodeImages")
        out: list[torch.Tensor | None] = [None] * len(items)
        jpegs = [i for i, t in enumerate(items) if _head(t, 3) == JPEG_MAGIC]
        if jpegs and self.uses_nvjpeg:
            for i, image in zip(jpegs, self._nvjpeg(items, jpegs), strict=True):
                out[i] = image
        for i, t in enumerate(items):
            if out[i] is None:
                out[i] = self._pillow(t, i).to(self.device)
        return [t for t in out if t is not None]

    def _nvjpeg(self, items: list[torch.Tensor], jpegs: list[int]) -> list[torch.Tensor]:
        """The JPEGs at ``jpegs`` decoded by nvJPEG in one call; one by one if the call fails,
        with Pillow for any that nvJPEG refuses."""
        found = _torchvision_decoder()
        assert not isinstance(found, str)  # uses_nvjpeg checked it
        decode_jpeg, mode = found
        try:
            return list(decode_jpeg([items[i] for i in jpegs], device=self.device, mode=mode.RGB))
        except Exception:  # one bad file fails the batch: find it
            logger.debug("batched nvJPEG decode failed; decoding one by one", exc_info=True)
        out = []
        for i in jpegs:
            try:
                out.append(decode_jpeg(items[i], device=self.device, mode=mode.RGB))
            except Exception as exc:
                if not self._refused_note:
                    self._refused_note = True
                    logger.info(
                        "DecodeImages: nvJPEG refused image %d of the batch (%s: %s); decoding "
                        "it (and any other it refuses) with Pillow",
                        i,
                        type(exc).__name__,
                        str(exc).strip().splitlines()[0][:200] if str(exc).strip() else "",
                    )
                out.append(self._pillow(items[i], i).to(self.device))
        return out

    def _pillow(self, data: torch.Tensor, index: int) -> torch.Tensor:
        try:
            return _pillow_decode(data)
        except Exception as exc:
            head = _head(data, 8).hex(" ")
            raise BadFileError(
                f"Cannot decode image {index} of the batch ({int(data.numel()):,} B, first "
                f"bytes {head or 'none'}): Pillow raised {type(exc).__name__}: {exc}. Its file "
                "is not a readable image (no decoder reads it). Remove or replace the file; "
                "to find its path, read the same files decoded in the workers "
                "(builtin_dataset(DIR, output='uint8') names the file and sample, WF020). "
                "[WF704]",
                code="WF704",
                attribute="images",
                value=index,
                index=None,
                path=None,
            ) from exc

    def __repr__(self) -> str:
        return f"DecodeImages(device={str(self.device)!r}, backend={self.backend!r})"


def _head(t: torch.Tensor, n: int) -> bytes:
    return bytes(t[:n].tolist())


def _is_encoded(images: Any) -> bool:
    """An ``EncodedImages``, or a list/tuple of 1-D uint8 tensors (one file's bytes each)."""
    if isinstance(images, EncodedImages):
        return True
    return (
        isinstance(images, (list, tuple))
        and bool(images)
        and all(
            isinstance(t, torch.Tensor) and t.dim() == 1 and t.dtype == torch.uint8 for t in images
        )
    )


def _check_encoded(images: Any, step: str) -> list[torch.Tensor]:
    """The batch's encoded images as a list of 1-D uint8 CPU tensors, or WF703."""
    if not _is_encoded(images):
        got = _describe(images)
        raise ConfigError(
            f"Cannot apply {step}: it takes encoded images (a list of 1-D uint8 tensors, the "
            f"files' bytes: EncodedImages from collate_encoded), got {got}. Load with "
            "builtin_dataset(output='encoded') and collate_fn=collate_encoded, or leave "
            f"{step} out for decoded images. [WF703]",
            code="WF703",
            attribute="images",
            value=got,
        )
    items = list(images)
    for i, t in enumerate(items):
        if not isinstance(t, torch.Tensor) or t.dim() != 1 or t.dtype != torch.uint8:
            got = _describe(t)
            raise ConfigError(
                f"Cannot apply {step}: item {i} of the encoded images is {got}, not a 1-D "
                "uint8 tensor of a file's bytes. Collate with collate_encoded. [WF703]",
                code="WF703",
                attribute="images",
                value=got,
            )
    return [t if t.device.type == "cpu" else t.cpu() for t in items]


class ToFloat:
    """uint8 images (B, C, H, W) in [0, 255] -> float32 in [0, 1]: ``x.float() / 255``.

    Floating-point images pass through unchanged. The same arithmetic as
    ``PillowTrainTransform`` and torchvision's ``ToTensor`` (a float32 division by 255), so
    results are bit-identical to them. A list of images (C, H, W) of varying sizes (what
    ``DecodeImages`` returns) is converted image by image, the same arithmetic, and comes back
    as a list.
    """

    random = False

    def __call__(
        self, images: torch.Tensor | list[torch.Tensor], seeds: Sequence[int] | None = None
    ) -> torch.Tensor | list[torch.Tensor]:
        """Convert; ``seeds`` is unused."""
        items = _check_image_list(images, "ToFloat")
        if items is not None:
            return [
                im if im.is_floating_point() else im.to(torch.float32).div_(255.0) for im in items
            ]
        images = _check_images(images, "ToFloat")
        if images.is_floating_point():
            return images
        return images.to(torch.float32).div_(255.0)

    def __repr__(self) -> str:
        return "ToFloat()"


class Normalize:
    """Subtract a per-channel mean, divide by a per-channel std: float images (B, C, H, W).

    Args:
        mean: Per-channel mean, C values, in the images' units (e.g. ImageNet's
            ``wellfed.workloads.IMAGENET_MEAN`` for images in [0, 1]).
        std: Per-channel standard deviation, C values, > 0.

    Raises:
        ConfigError: ``mean`` and ``std`` differ in length or a std is not > 0 (WF701); at
            call time, the images are not floating point or have another channel count
            (WF703).
    """

    random = False

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        if len(self.mean) != len(self.std) or not self.mean or min(self.std) <= 0:
            raise ConfigError(
                f"Invalid option: Normalize(mean={self.mean}, std={self.std}) needs one mean "
                "and one std > 0 per channel. Pass e.g. IMAGENET_MEAN, IMAGENET_STD. [WF701]",
                code="WF701",
                attribute="std",
                value=self.std,
            )
        self._cache: dict[tuple[torch.device, torch.dtype], tuple[torch.Tensor, torch.Tensor]] = {}

    def __call__(self, images: torch.Tensor, seeds: Sequence[int] | None = None) -> torch.Tensor:
        """Normalise (a new tensor; the input is left as it was); ``seeds`` is unused."""
        images = _check_images(images, "Normalize")
        if not images.is_floating_point() or images.shape[1] != len(self.mean):
            raise ConfigError(
                f"Cannot apply Normalize: images of dtype {images.dtype} with "
                f"{images.shape[1]} channel(s), but it normalises float images with "
                f"{len(self.mean)} channel(s). Put ToFloat() before it, or give one mean and "
                "std per channel. [WF703]",
                code="WF703",
                attribute="images",
                value=str(images.dtype),
            )
        key = (images.device, images.dtype)
        if key not in self._cache:
            c = len(self.mean)
            mean = torch.tensor(self.mean, dtype=torch.float32).view(1, c, 1, 1)
            std = torch.tensor(self.std, dtype=torch.float32).view(1, c, 1, 1)
            self._cache[key] = (
                mean.to(device=images.device, dtype=images.dtype),
                std.to(device=images.device, dtype=images.dtype),
            )
        mean_t, std_t = self._cache[key]
        return images.sub(mean_t).div_(std_t)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_cache": {}}

    def __repr__(self) -> str:
        return f"Normalize(mean={self.mean}, std={self.std})"


class RandomHorizontalFlip:
    """Flip each image left-right with probability ``p``, decided per sample from its seed.

    Works on any dtype (flip uint8 images before ToFloat: a quarter of the bytes). The whole
    batch is flipped once and the flipped samples selected with ``torch.where`` (two kernels,
    whatever B).

    Args:
        p: Probability of a flip, in [0, 1].

    Raises:
        ConfigError: ``p`` is outside [0, 1] (WF701).
    """

    random = True
    salt = 0x464C4950  # "FLIP"

    def __init__(self, p: float = 0.5) -> None:
        if not 0.0 <= p <= 1.0:
            raise ConfigError(
                f"Invalid option: RandomHorizontalFlip(p={p!r}) is not a probability in "
                "[0, 1]. Pass e.g. p=0.5. [WF701]",
                code="WF701",
                attribute="p",
                value=p,
            )
        self.p = float(p)

    def params(self, seed: int) -> bool:
        """Whether the sample with this step seed is flipped: ``uniform(seed, 0) < p``."""
        return uniform(seed, 0) < self.p

    def __call__(self, images: torch.Tensor, seeds: Sequence[int]) -> torch.Tensor:
        """Flip the samples whose step seed says so; ``seeds`` has one per sample."""
        images = _check_images(images, "RandomHorizontalFlip")
        flips = [self.params(s) for s in seeds]
        if not any(flips):
            return images
        if all(flips):
            return images.flip(-1)
        mask = _host_tensor(flips, torch.bool, images.device).view(-1, 1, 1, 1)
        return torch.where(mask, images.flip(-1), images)

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"


class RandomResizedCrop:
    """Crop a random area and aspect ratio of each image, resize it to ``size``: per sample.

    Each sample's crop (top, left, height, width) is drawn on the host from its step seed with
    torchvision's algorithm (``params``). Input: float images (B, C, H, W), or a list of B
    float images (C, H, W) of varying sizes (``DecodeImages`` then ``ToFloat``), each cropped
    from its own size (put ToFloat first); output float (B, C, size_h, size_w).

    Two resampling methods:

    * ``antialias=True`` (default): per sample, ``F.interpolate(crop, size, mode="bilinear",
      align_corners=False, antialias=True)``, the op torchvision's ``v2.functional.
      resized_crop`` runs on float tensors: the same pixels as torchvision. One kernel per
      sample (B launches per batch).
    * ``antialias=False``: one batched ``F.grid_sample`` (bilinear, border padding) over a
      per-sample sampling grid: one kernel per batch; the sampling points are those of
      ``F.interpolate`` without antialias (``(j + 0.5) * w / size - 0.5`` from the crop's left
      edge), so shrinking a large crop aliases, and at the crop's edge it reads the pixels
      beyond it (border-clamped) where ``interpolate`` clamps to the crop.

    Measured on this project's 2-CPU machine (torch 2.13 CPU, 1 thread; shared with other
    jobs, so read the order, not the values), a batch of 32 (3, 256, 256) float images to
    224, median of 3: batched grid_sample 54 ms, per-sample interpolate 85 ms (127 ms with
    antialias), kornia 0.9 ``crop_and_resize`` 161 ms; an earlier run, median of 9: 25, 33,
    50 and 60 ms, the same order. On a GPU the batched grid_sample is one launch against B;
    the GPU figures are open (no GPU was lent for issue 17).

    Args:
        size: Output side, pixels: an int (square) or (height, width).
        scale: Range of the crop's area, as a fraction of the image's area.
        ratio: Range of the crop's aspect ratio (width / height).
        antialias: Resampling method (above).

    Raises:
        ConfigError: ``size`` not positive, or a range whose low end exceeds its high end
            (WF701); at call time, images that are not floating point (WF703).

    Source:
        Crop parameters: torchvision.transforms.RandomResizedCrop.get_params (10 attempts,
        then a central crop), defaults scale=(0.08, 1.0), ratio=(3/4, 4/3). Timing:
        ``python benchmarks/device_split.py --smoke --crop`` (kornia 0.9.0 installed beside).
    """

    random = True
    salt = 0x52524352  # "RRCR"

    def __init__(
        self,
        size: int | tuple[int, int],
        scale: tuple[float, float] = (0.08, 1.0),
        ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0),
        *,
        antialias: bool = True,
    ) -> None:
        out = (size, size) if isinstance(size, int) else tuple(size)
        if len(out) != 2 or any(not isinstance(s, int) or s < 1 for s in out):
            raise ConfigError(
                f"Invalid option: RandomResizedCrop(size={size!r}) is not a positive int or "
                "(height, width). Pass e.g. size=224. [WF701]",
                code="WF701",
                attribute="size",
                value=size,
            )
        for name, rng in (("scale", scale), ("ratio", ratio)):
            if rng[0] > rng[1] or rng[0] <= 0:
                raise ConfigError(
                    f"Invalid option: RandomResizedCrop({name}={rng!r}) is not a range "
                    "(low, high) with 0 < low <= high. Pass e.g. scale=(0.08, 1.0), "
                    "ratio=(3/4, 4/3). [WF701]",
                    code="WF701",
                    attribute=name,
                    value=rng,
                )
        self.size: tuple[int, int] = (int(out[0]), int(out[1]))
        self.scale = (float(scale[0]), float(scale[1]))
        self.ratio = (float(ratio[0]), float(ratio[1]))
        self.antialias = bool(antialias)

    def params(self, seed: int, height: int, width: int) -> tuple[int, int, int, int]:
        """The crop of the sample with this step seed: (top, left, height, width), pixels.

        Args:
            seed: The sample's step seed.
            height: Image height in pixels.
            width: Image width in pixels.
        """
        area = height * width
        log_lo, log_hi = math.log(self.ratio[0]), math.log(self.ratio[1])
        for attempt in range(10):
            j = 4 * attempt
            target_area = area * (
                self.scale[0] + (self.scale[1] - self.scale[0]) * uniform(seed, j)
            )
            aspect = math.exp(log_lo + (log_hi - log_lo) * uniform(seed, j + 1))
            w = round(math.sqrt(target_area * aspect))
            h = round(math.sqrt(target_area / aspect))
            if 0 < w <= width and 0 < h <= height:
                top = int(uniform(seed, j + 2) * (height - h + 1))
                left = int(uniform(seed, j + 3) * (width - w + 1))
                return top, left, h, w
        in_ratio = width / height
        if in_ratio < min(self.ratio):
            w, h = width, round(width / min(self.ratio))
        elif in_ratio > max(self.ratio):
            w, h = round(height * max(self.ratio)), height
        else:
            w, h = width, height
        return (height - h) // 2, (width - w) // 2, h, w

    def __call__(
        self, images: torch.Tensor | list[torch.Tensor], seeds: Sequence[int]
    ) -> torch.Tensor:
        """Crop and resize each sample; ``seeds`` has one step seed per sample.

        ``images`` is a batch (B, C, H, W) or a list of B images (C, H, W) whose sizes may
        differ (``DecodeImages``' output, after ``ToFloat``); either way the result is one
        float batch (B, C, size_h, size_w).
        """
        import torch.nn.functional as F

        items = _check_image_list(images, "RandomResizedCrop")
        if items is not None:
            return self._crop_list(items, seeds)
        images = _check_images(images, "RandomResizedCrop")
        if not images.is_floating_point():
            raise ConfigError(
                f"Cannot apply RandomResizedCrop: images of dtype {images.dtype}, but it "
                "resamples float images. Put ToFloat() before it. [WF703]",
                code="WF703",
                attribute="images",
                value=str(images.dtype),
            )
        b, c, height, width = images.shape
        boxes = [self.params(s, height, width) for s in seeds]
        out_h, out_w = self.size
        if self.antialias:
            out = images.new_empty((b, c, out_h, out_w))
            for i, (top, left, h, w) in enumerate(boxes):
                crop = images[i : i + 1, :, top : top + h, left : left + w]
                out[i] = F.interpolate(
                    crop, size=(out_h, out_w), mode="bilinear", align_corners=False, antialias=True
                )[0]
            return out
        grid = self.grid(boxes, height, width, images.device, images.dtype)
        return F.grid_sample(
            images, grid, mode="bilinear", padding_mode="border", align_corners=False
        )

    def _crop_list(self, items: list[torch.Tensor], seeds: Sequence[int]) -> torch.Tensor:
        """Each (C, H, W) image of the list cropped from its own size, stacked into a batch."""
        import torch.nn.functional as F

        if not items:
            raise ConfigError(
                "Cannot apply RandomResizedCrop: the list of images is empty. Pass a batch of "
                "one or more images. [WF703]",
                code="WF703",
                attribute="images",
                value=0,
            )
        first = items[0]
        for i, im in enumerate(items):
            if not im.is_floating_point() or im.shape[0] != first.shape[0]:
                raise ConfigError(
                    f"Cannot apply RandomResizedCrop: image {i} of the list has dtype "
                    f"{im.dtype} and {im.shape[0]} channel(s), but it resamples float images "
                    f"with one channel count ({first.shape[0]}, image 0's). Put ToFloat() "
                    "before it (DecodeImages gives uint8 RGB). [WF703]",
                    code="WF703",
                    attribute="images",
                    value=str(im.dtype),
                )
        out_h, out_w = self.size
        out = first.new_empty((len(items), first.shape[0], out_h, out_w))
        for i, (im, s) in enumerate(zip(items, seeds, strict=True)):
            height, width = int(im.shape[-2]), int(im.shape[-1])
            top, left, h, w = box = self.params(s, height, width)
            if self.antialias:
                crop = im[None, :, top : top + h, left : left + w]
                out[i] = F.interpolate(
                    crop, size=(out_h, out_w), mode="bilinear", align_corners=False, antialias=True
                )[0]
            else:
                grid = self.grid([box], height, width, im.device, im.dtype)
                out[i] = F.grid_sample(
                    im[None], grid, mode="bilinear", padding_mode="border", align_corners=False
                )[0]
        return out

    def grid(
        self,
        boxes: Sequence[tuple[int, int, int, int]],
        height: int,
        width: int,
        device: torch.device,
        dtype: torch.dtype,
    ) -> torch.Tensor:
        """The sampling grid of ``antialias=False``: (B, size_h, size_w, 2), in [-1, 1].

        Args:
            boxes: (top, left, height, width) per sample, from ``params``.
            height: Image height in pixels.
            width: Image width in pixels.
            device: Where the grid is built.
            dtype: The images' floating dtype.
        """
        box = _host_tensor(boxes, torch.float32, device).to(dtype)
        top, left, h, w = box.unbind(1)
        out_h, out_w = self.size
        ys = (torch.arange(out_h, device=device, dtype=dtype) + 0.5) / out_h
        xs = (torch.arange(out_w, device=device, dtype=dtype) + 0.5) / out_w
        x = left[:, None] + xs[None, :] * w[:, None] - 0.5  # pixel coordinates (B, out_w)
        y = top[:, None] + ys[None, :] * h[:, None] - 0.5  # (B, out_h)
        xn = (2 * x + 1) / width - 1  # grid_sample's align_corners=False units
        yn = (2 * y + 1) / height - 1
        b = len(boxes)
        return torch.stack(
            (xn[:, None, :].expand(b, out_h, out_w), yn[:, :, None].expand(b, out_h, out_w)), -1
        )

    def __repr__(self) -> str:
        return (
            f"RandomResizedCrop(size={self.size}, scale={self.scale}, "
            f"ratio=({self.ratio[0]:.3f}, {self.ratio[1]:.3f}), antialias={self.antialias})"
        )


# --- the per-batch transform -----------------------------------------------------------------


class BatchTransform:
    """Device transforms applied to the images of a whole batch, each sample from its seed.

    Give it as ``to_device(..., transform=BatchTransform([...]))``. Steps run in order on the
    image tensor (B, C, H, W) found at ``key`` in the batch; the batch comes back with that
    field replaced (a ``SeededBatch`` is unwrapped: the training loop gets the bare batch).
    The field may also hold encoded images (``EncodedImages``: ``DecodeImages`` first) or a
    list of B images (C, H, W) of varying sizes, which ``RandomResizedCrop`` makes one batch.

    Steps are wellfed's device steps (``ToFloat``, ``Normalize``, ``RandomHorizontalFlip``,
    ``RandomResizedCrop``), called as ``step(images, step_seeds)``, or any other callable
    taking and returning the image tensor (a ``torch.nn.Module`` such as note 001's
    super-resolution model), called as ``step(images)``. The whole call runs under
    ``torch.no_grad()``.

    Per-sample randomness: each random step of each sample gets its own seed,
    ``splitmix64(splitmix64(sample_seed ^ DEV) ^ salt ^ (n << 32))`` (``salt``: the step's
    kind, ``n``: how many steps of that kind come before it), so adding a deterministic step
    (ToFloat) never changes the draws of the others. With a ``SeededBatch`` the sample seeds
    are the loader's (``create_dataloader(seed=..., sample_seeds=True)``): the same numbers
    for the same (seed, epoch, index) under any worker count, and the batch equals the steps
    applied to each sample alone. Given a bare batch, B sample seeds are drawn from torch's
    global CPU generator in the main process (reproducible under ``torch.manual_seed``, not
    across worker-count changes of an unseeded loader's order).

    Args:
        steps: The steps, in order (one step alone is accepted too).
        key: Where the images are: an int for a tuple or list batch (0 for ``(images,
            labels)``), a str for a dict (or a dataclass or namedtuple field), None when the
            batch is the image tensor itself.

    Raises:
        ConfigError: ``steps`` is empty or holds a non-callable (WF701); at call time, no
            images at ``key``, images that are not (B, C, H, W), or a ``SeededBatch`` whose
            seed count is not B (WF703).

    Example:
        >>> augment = BatchTransform([RandomHorizontalFlip(), ToFloat(),
        ...                           Normalize(IMAGENET_MEAN, IMAGENET_STD)], key=0)
        >>> images, labels = augment(SeededBatch((uint8_images, labels), seeds))
    """

    def __init__(self, steps: Sequence[Any] | Any, *, key: int | str | None = 0) -> None:
        if callable(steps) and not isinstance(steps, Sequence):
            steps = [steps]
        self.steps: tuple[Any, ...] = tuple(steps)
        bad = [s for s in self.steps if not callable(s)]
        if not self.steps or bad:
            raise ConfigError(
                f"Invalid option: BatchTransform(steps={list(self.steps)!r}) needs one or more "
                "callables. Pass e.g. [ToFloat(), Normalize(IMAGENET_MEAN, IMAGENET_STD)]. "
                "[WF701]",
                code="WF701",
                attribute="steps",
                value=[type(s).__name__ for s in bad],
            )
        self.key = key
        salts: list[int | None] = []
        seen: collections.Counter[int] = collections.Counter()
        for step in self.steps:
            if _is_random_step(step):
                salt = int(step.salt)
                salts.append((salt ^ (seen[salt] << 32)) & _MASK64)
                seen[salt] += 1
            else:
                salts.append(None)
        self._salts = tuple(salts)

    @property
    def random(self) -> bool:
        """True when a step draws per-sample parameters."""
        return any(s is not None for s in self._salts)

    def step_seeds(self, seed: int) -> tuple[int | None, ...]:
        """Each step's seed for the sample with this sample seed (None: a step without draws).

        Args:
            seed: The sample's seed (``SeededBatch.seeds``, ``wellfed.sample_seed``).
        """
        base = _mix(seed ^ _SALT_DEVICE)
        return tuple(None if s is None else _mix(base ^ s) for s in self._salts)

    def __call__(self, batch: Any) -> Any:
        """Transform the images of ``batch`` (a ``SeededBatch`` or a bare batch)."""
        seeds: Sequence[int] | None = None
        if isinstance(batch, SeededBatch):
            batch, seeds = batch.batch, batch.seeds
        images: Any = _get(batch, self.key)
        if not _is_encoded(images):
            images = _check_batch(images, "BatchTransform")
        b = len(images) if isinstance(images, (list, tuple)) else images.shape[0]
        if seeds is None:
            seeds = (
                [s & _MASK64 for s in torch.randint(-(2**63), 2**63 - 1, (b,)).tolist()]
                if self.random
                else [0] * b
            )
        elif len(seeds) != b:
            raise ConfigError(
                f"Cannot apply BatchTransform: the batch has {len(seeds)} sample seed(s) for "
                f"{b} image(s) at key={self.key!r}. Point key at the image field of the batch "
                "(its first dimension is the batch size). [WF703]",
                code="WF703",
                attribute="seeds",
                value=len(seeds),
            )
        per_sample = [self.step_seeds(s) for s in seeds]
        with torch.no_grad():
            for k, step in enumerate(self.steps):
                if self._salts[k] is None and not _is_device_step(step):
                    images = step(images)
                elif self._salts[k] is None:
                    images = step(images, None)
                else:
                    images = step(images, [p[k] for p in per_sample])
        return _put(batch, self.key, images)

    def __repr__(self) -> str:
        return f"BatchTransform({list(self.steps)!r}, key={self.key!r})"


_DEVICE_STEPS = (DecodeImages, ToFloat, Normalize, RandomHorizontalFlip, RandomResizedCrop)


def _is_device_step(step: Any) -> bool:
    return isinstance(step, _DEVICE_STEPS)


def _is_random_step(step: Any) -> bool:
    return _is_device_step(step) and bool(step.random)


def _get(batch: Any, key: int | str | None) -> Any:
    if key is None:
        return batch
    try:
        if isinstance(key, str) and not isinstance(batch, Mapping):
            return getattr(batch, key)
        return batch[key]
    except (KeyError, IndexError, TypeError, AttributeError):
        raise ConfigError(
            f"Cannot apply BatchTransform: the batch ({type(batch).__name__}) has no images at "
            f"key={key!r}. Pass the key of the image field: 0 for (images, labels), "
            "'image' for a dict, None when the batch is the image tensor. [WF703]",
            code="WF703",
            attribute="key",
            value=key,
        ) from None


def _put(batch: Any, key: int | str | None, images: Any) -> Any:
    if key is None:
        return images
    if isinstance(batch, Mapping):
        out = dict(batch)
        out[key] = images
        try:
            return type(batch)(out)  # type: ignore[call-arg]
        except TypeError:
            return out
    if isinstance(key, str):
        if hasattr(batch, "_replace"):
            return batch._replace(**{key: images})
        clone = copy.copy(batch)
        object.__setattr__(clone, key, images)
        return clone
    items = list(batch)
    items[key] = images
    if isinstance(batch, tuple):
        return type(batch)(*items) if hasattr(batch, "_fields") else tuple(items)
    return items
