"""Static checks of the category 'shared-memory'.

Batches in flight against free /dev/shm (WF113), and shared file descriptors against
``ulimit -n`` (WF114).
"""

from __future__ import annotations

import sys

from wellfed.doctor._classify import mb
from wellfed.doctor._context import Context
from wellfed.doctor._report import Finding

__all__ = [
    "FD_MARGIN",
    "SHM_WARN_FRACTION",
    "check_shared_memory",
    "sample_bytes_estimate",
]


#: Fraction of free /dev/shm that batches in flight may use before a warning (error above 1).
SHM_WARN_FRACTION = 0.5

#: Shared tensors per sample assumed when nothing better is known (file_descriptor strategy).
FD_MARGIN = 64


def sample_bytes_estimate(ctx: Context) -> tuple[int, int] | None:
    """(bytes per sample, tensors per sample) from arrays whose first dimension is len(dataset)."""
    if ctx.length is None or ctx.length <= 0:
        return None
    torch = sys.modules.get("torch")
    np = sys.modules.get("numpy")
    total = count = 0
    w = ctx.walks.get("dataset")
    for node in w.nodes if w else ():
        if node.depth > 3:
            continue
        obj = node.obj
        shape = None
        if torch is not None and isinstance(obj, torch.Tensor) and obj.dim() > 0:
            shape, nbytes = obj.shape, obj.element_size() * obj.nelement()
        elif np is not None and isinstance(obj, np.ndarray) and obj.ndim > 0:
            shape, nbytes = obj.shape, obj.nbytes
        if shape is not None and int(shape[0]) == ctx.length:
            total += nbytes // ctx.length
            count += 1
    return (total, count) if count else None


def check_shared_memory(
    ctx: Context, measured: tuple[int, int] | None = None, evidence: str | None = None
) -> list[Finding]:
    """WF113/WF114: bytes in flight against free /dev/shm; shared descriptors vs ``ulimit -n``.

    Args:
        ctx: The context.
        measured: (bytes, tensors) per sample measured by the live probe, if any.
        evidence: How ``measured`` was obtained.
    """
    nw = ctx.num_workers
    if not nw:
        return []
    estimate = measured or sample_bytes_estimate(ctx)
    if estimate is None:
        return []
    per_sample, tensors = estimate
    batch = int(ctx.settings.get("batch_size") or 1)
    prefetch = int(ctx.settings.get("prefetch_factor") or 2)
    in_flight = per_sample * batch * prefetch * nw
    source = evidence or "static: estimated from arrays of length len(dataset)"
    out: list[Finding] = []
    free = ctx.platform.shm_free_bytes
    if free is not None and in_flight > SHM_WARN_FRACTION * free:
        severity = "error" if in_flight > free else "warning"
        f = ctx.finding(
            "WF113",
            severity,
            "env.dev_shm",
            f"Batches in flight need ~{mb(in_flight)} of /dev/shm (batch {mb(per_sample * batch)}"
            f" x prefetch_factor={prefetch} x num_workers={nw}) but only {mb(free)} is free: "
            "workers die with 'Bus error' / 'No space left on device' when it runs out.",
            "Lower prefetch_factor, num_workers or batch_size until batch x prefetch x workers "
            "fits, "
            "or give the container more shared memory: docker run --shm-size=8g (Kubernetes: "
            "mount an emptyDir with medium: Memory at /dev/shm).",
            f"{source}; {mb(per_sample)}/sample; /dev/shm free {mb(free)}",
        )
        if f is not None:
            out.append(f)
    limit = ctx.platform.open_files_limit
    strategy = _sharing_strategy()
    if limit is not None and strategy == "file_descriptor":
        fds = tensors * prefetch * nw * (1 if ctx.settings.get("collate_fn") is None else batch)
        fds += FD_MARGIN
        if fds > limit // 2:
            f = ctx.finding(
                "WF114",
                "warning",
                "env.ulimit_nofile",
                f"Each tensor in flight holds a file descriptor under the 'file_descriptor' "
                f"sharing strategy: ~{fds} needed against ulimit -n = {limit}; beyond it workers "
                "fail with 'received 0 items of ancdata' / 'Too many open files'.",
                "Raise the limit (ulimit -n 65536, or resource.setrlimit(resource.RLIMIT_NOFILE, "
                "(hard, hard)) at start-up), or call "
                "torch.multiprocessing.set_sharing_strategy('file_system').",
                f"{source}; {tensors} tensor(s)/sample; ulimit -n {limit}",
            )
            if f is not None:
                out.append(f)
    return out


def _sharing_strategy() -> str | None:
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    try:
        return str(torch.multiprocessing.get_sharing_strategy())
    except Exception:
        return None
