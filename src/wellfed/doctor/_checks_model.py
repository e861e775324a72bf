"""Static check of the category 'model-in-worker'.

A neural-network model reachable from worker code (WF126): every worker runs it per sample,
on the CPU unless it sits on CUDA (WF105 covers that case). Note 001's super-resolution
dataset, and issue 15's 5M-parameter ``nn.Module`` in ``__getitem__``, reported "clean" on a
CPU-only machine. The live probe adds the measured cost of one sample.
"""

from __future__ import annotations

from typing import Any

from wellfed.doctor._classify import inside, mb, pretty_type
from wellfed.doctor._context import Context
from wellfed.doctor._report import Finding

__all__ = ["MODEL_PARAMETERS", "check_model_in_worker"]

#: A Module with at least this many parameters is a model, not a transform. Heuristic: a
#: 10k-parameter layer costs microseconds per sample; torchvision's v2 transforms (Modules
#: with no parameters) and a normalisation layer stay below it.
MODEL_PARAMETERS = 10_000


def _parameters(module: Any) -> tuple[int, int, bool]:
    """(parameter count, bytes, any on CUDA) of an nn.Module."""
    count = size = 0
    cuda = False
    for p in module.parameters():
        count += p.numel()
        size += p.numel() * p.element_size()
        cuda = cuda or p.device.type == "cuda"
    return count, size, cuda


def check_model_in_worker(ctx: Context) -> list[Finding]:
    """WF126: an ``nn.Module`` with MODEL_PARAMETERS or more reachable from the workers."""
    import torch

    out: list[Finding] = []
    reported: list[str] = []
    for node in ctx.worker_nodes():
        if not isinstance(node.obj, torch.nn.Module):
            continue
        if any(inside(node.path, p) or node.path == p for p in reported):
            continue
        count, size, cuda = _parameters(node.obj)
        if count < MODEL_PARAMETERS or cuda:  # on CUDA: WF105 says more
            continue
        reported.append(node.path)
        params = f"{count / 1e6:.1f}M" if count >= 1_000_000 else f"{count:,}"
        workers = ctx.num_workers
        copies = f"{workers} copies of it" if workers else "a copy of it in every worker"
        f = ctx.finding(
            "WF126",
            "warning",
            node.path,
            f"{node.path} is a model ({pretty_type(node.obj)}, {params} parameters, "
            f"{mb(size)}) reachable from the workers: each worker runs it per sample on the CPU "
            f"({copies}, competing with the training step for the cores and memory), and the "
            "same outputs are computed again every epoch.",
            "Precompute its outputs once (`wellfed precompute SOURCE --fn MODEL`: workers then "
            "only read a memory-mapped store), or run it per batch in the main process (on "
            "the GPU when there is one) after the loader: `wellfed.to_device(loader, device, "
            "transform=BatchTransform([model], key=0))` (docs/device.md), and keep the dataset "
            "to decoding and cheap augmentation.",
            f"static: {count:,} parameters ({mb(size)}) at {node.path}",
        )
        if f is not None:
            out.append(f)
    return out
