"""Static checks of the category 'cuda-in-worker'.

CUDA tensors, modules and devices reachable from workers (WF105), and transfers to CUDA
inside worker code (WF106): to a literal ``"cuda"``, or to a ``self.`` attribute whose live
value is a CUDA device (``x.to(self.device)`` with ``self.device == "cuda"``), reported at
the method that moves the data. A device string that worker code never reads is harmless
and not reported.
"""

from __future__ import annotations

from typing import Any

from wellfed.doctor._classify import (
    cuda_kind,
    inside,
    pretty_type,
    safe_getattr,
    source_file,
    user_classes,
)
from wellfed.doctor._context import SPAWNISH, Context
from wellfed.doctor._graph import Node
from wellfed.doctor._report import Finding
from wellfed.doctor._source import analyze_class, device_attr_transfers, is_user_code

__all__ = [
    "check_cuda",
]


def check_cuda(ctx: Context) -> list[Finding]:
    """WF105/WF106: CUDA tensors, modules and devices in the graph; CUDA transfers in code."""
    out: list[Finding] = []
    transfers = _attr_transfers(ctx)
    moved = {path for path, *_ in transfers.values()}
    reported: list[str] = []
    for node in ctx.worker_nodes():
        if any(inside(node.path, p) for p in reported):
            continue
        kind = cuda_kind(node)
        if kind is None:
            continue
        if node.path in moved:
            continue  # reported at the method that moves data to it (WF106 below)
        if kind == "CUDA device string" and _unread_by_owner(node):
            continue  # a string no worker code reads starts nothing on the GPU
        reported.append(node.path)
        methods_pickled = ("fork", "spawn", "forkserver") if node.pickled else ("fork",)
        fix = (
            "Keep the dataset on the CPU and move batches in the training loop: "
            "`for batch in loader: batch = batch.to('cuda', non_blocking=True)` with "
            "pin_memory=True. For a model that transforms samples, precompute its outputs once "
            "(wellfed precompute) or run it per batch on the GPU in the main process "
            "(`wellfed.to_device(loader, 'cuda', transform=model)`; docs/device.md)."
        )
        for severity, methods, why in (
            (
                "error",
                ("fork",),
                "a forked worker cannot re-initialise CUDA "
                "(RuntimeError: Cannot re-initialize CUDA in forked subprocess)",
            ),
            (
                "warning",
                SPAWNISH,
                "each spawn/forkserver worker opens its own CUDA context "
                "(hundreds of MB of GPU memory per worker) and shares tensors by CUDA IPC",
            ),
        ):
            f = ctx.finding(
                "WF105",
                severity,
                node.path,
                f"{node.path} is a {kind} reachable from the workers; {why}.",
                fix,
                f"static: {kind} ({pretty_type(node.obj)})",
                [m for m in methods if m in methods_pickled],
            )
            if f is not None:
                out.append(f)
    for node, cls in user_classes(ctx):
        ana = analyze_class(cls)
        found = [(m, line, snippet, "") for m, line, snippet in ana.cuda_transfers[:1]]
        if not found and cls in transfers:
            attr_path, method, line, snippet, value = transfers[cls]
            found = [(method, line, snippet, f"; {attr_path}={value!r}")]
        for method, line, snippet, target in found:
            path = f"type({node.path}).{method}"
            for severity, methods, why in (
                (
                    "error",
                    ("fork",),
                    "a forked worker cannot initialise CUDA once the main "
                    "process has (RuntimeError: Cannot re-initialize CUDA in forked subprocess)",
                ),
                (
                    "warning",
                    SPAWNISH,
                    "each worker opens its own CUDA context (hundreds of MB "
                    "of GPU memory each) and sends results back by CUDA IPC",
                ),
            ):
                f = ctx.finding(
                    "WF106",
                    severity,
                    path,
                    f"{cls.__qualname__}.{method} moves data to CUDA ({snippet}, line {line}"
                    f"{target}) inside a worker; {why}.",
                    "Return CPU tensors from the dataset and move the batch in the training "
                    "loop: `batch = batch.to('cuda', non_blocking=True)` with pin_memory=True "
                    f"(delete the {snippet} call in {method}).",
                    f"static: {snippet} at {source_file(cls)}:{line}" + target,
                    methods,
                )
                if f is not None:
                    out.append(f)
    return out


def _is_cuda_value(value: Any) -> bool:
    """A CUDA device as a string ("cuda", "cuda:1") or a torch.device of type cuda."""
    if isinstance(value, str):
        return value.startswith("cuda")
    return type(value).__name__ == "device" and getattr(value, "type", None) == "cuda"


def _attr_transfers(ctx: Context) -> dict[type, tuple[str, str, int, str, Any]]:
    """Per user class: (attribute path, method, line, snippet, value) of its worker code's
    first transfer to a ``self.`` attribute that holds a CUDA device here."""
    out: dict[type, tuple[str, str, int, str, Any]] = {}
    for node, cls in user_classes(ctx):
        for method, line, attr, snippet in device_attr_transfers(cls):
            value = safe_getattr(node.obj, attr)
            if _is_cuda_value(value):
                out[cls] = (f"{node.path}.{attr}", method, line, snippet, value)
                break
    return out


def _unread_by_owner(node: Node) -> bool:
    """True when the attribute's owner is a user class with worker code that never reads it
    (``self.device = "cuda"`` kept for the training loop, not for ``__getitem__``)."""
    owner = node.owner
    if owner is None or node.attr is None or not is_user_code(type(owner)):
        return False
    ana = analyze_class(type(owner))
    return bool(ana.readers) and node.attr not in ana.reads
