"""Static checks of the category 'cuda-in-worker'.

CUDA tensors, modules and devices reachable from workers (WF105), and transfers to CUDA
inside worker code (WF106).
"""

from __future__ import annotations

import os

from wellfed.doctor._classify import cuda_kind, inside, pretty_type, user_classes
from wellfed.doctor._context import SPAWNISH, Context
from wellfed.doctor._report import Finding
from wellfed.doctor._source import analyze_class

__all__ = [
    "check_cuda",
]


def check_cuda(ctx: Context) -> list[Finding]:
    """WF105/WF106: CUDA tensors, modules and devices in the graph; CUDA transfers in code."""
    out: list[Finding] = []
    reported: list[str] = []
    for node in ctx.worker_nodes():
        if any(inside(node.path, p) for p in reported):
            continue
        kind = cuda_kind(node)
        if kind is None:
            continue
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
        for method, line, snippet in ana.cuda_transfers[:1]:
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
                    f"{cls.__qualname__}.{method} moves data to CUDA ({snippet}, line {line}) "
                    f"inside a worker; {why}.",
                    "Return CPU tensors from the dataset and move the batch in the training "
                    "loop: `batch = batch.to('cuda', non_blocking=True)` with pin_memory=True "
                    f"(delete the {snippet} call in {method}).",
                    f"static: {snippet} at {_source_file(cls)}:{line}",
                    methods,
                )
                if f is not None:
                    out.append(f)
    return out


def _source_file(cls: type) -> str:
    import inspect

    try:
        return os.path.basename(inspect.getsourcefile(cls) or "?")
    except TypeError:
        return "?"
