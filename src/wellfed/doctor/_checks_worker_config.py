"""Static checks of the category 'worker-config'.

More workers than usable CPUs (WF119), a large or slow pickled dataset (WF120), and a
script without the ``__main__`` guard that spawn needs (WF121).
"""

from __future__ import annotations

import os
import sys
import types

from wellfed.doctor._classify import mb
from wellfed.doctor._context import SPAWNISH, Context
from wellfed.doctor._graph import Node
from wellfed.doctor._report import Finding
from wellfed.platform import local_world_size

__all__ = [
    "PICKLED_SLOW_BYTES",
    "UNPICKLE_SLOW_S",
    "check_main_guard",
    "check_pickled_size",
    "check_worker_count",
]


#: Pickled size above which start-up under spawn/forkserver is reported as slow. Every worker
#: unpickles its own copy: a list of (path, label) tuples unpickled at ~45 MiB/s on the
#: development machine (2-core x86_64, Python 3.11, shared), so 64 MiB costs ~1.4 s per
#: worker, more than the torch import each spawn worker already pays (~1.2 s), and
#: num_workers copies of the memory.
#: Source: measured with ``python -c "import pickle,time; x=[(f'/d/{i}.jpg', i) for i in
#: range(2_000_000)]; b=pickle.dumps(x); t=time.time(); pickle.loads(b);
#: print(len(b)/(time.time()-t))"``.
PICKLED_SLOW_BYTES = 64 * 1024**2

#: Measured time to unpickle the dataset above which start-up under spawn/forkserver is
#: reported as slow, whatever the size (objects with costly ``__setstate__``, many small
#: objects): each worker pays it at every start. 1 s is below the ~1.4 s that
#: PICKLED_SLOW_BYTES costs at ~45 MiB/s and about the torch import each spawn worker already
#: pays (~1.2 s), so above it the pickle at least doubles a worker's start-up.
#: Source: the unpickling rate measured as for PICKLED_SLOW_BYTES, and the torch import with
#: ``python -c "import time; t=time.perf_counter(); import torch;
#: print(time.perf_counter()-t)"`` (development machine: 2-core x86_64, Python 3.11, shared).
UNPICKLE_SLOW_S = 1.0


def check_worker_count(ctx: Context) -> list[Finding]:
    """WF119: more workers than usable CPUs per local rank (affinity, cgroup quota, ranks).

    Every training process on this machine (``wellfed.platform.local_world_size()``) starts
    its own workers, so the budget is ``usable_cpus_per_rank()``.
    """
    nw = ctx.num_workers
    ranks = local_world_size()
    # platform.usable_cpus_per_rank(), computed from the judged platform (which a caller may
    # inject to judge another machine) rather than from this one.
    cpus = max(1, ctx.platform.usable_cpus // ranks)
    if nw is None or nw <= cpus:
        return []
    if ranks > 1:
        where = (
            f"the {cpus} usable CPU(s) per rank ({ctx.platform.usable_cpus} usable CPUs shared "
            f"by {ranks} training processes on this machine, each with its own workers)"
        )
    else:
        where = f"the {cpus} usable CPU(s) of this process (affinity mask and cgroup quota)"
    f = ctx.finding(
        "WF119",
        "warning",
        "loader.num_workers",
        f"num_workers={nw} exceeds {where}: workers time-share the cores, each adding memory "
        "and start-up time without adding throughput.",
        f"Use num_workers={max(1, cpus - 1)} (usable CPUs per rank minus one for the training "
        "loop), or measure: wellfed tune <target>.",
        f"static: usable CPUs = {ctx.platform.usable_cpus} (os.cpu_count() = "
        f"{ctx.platform.cpu_count}), local ranks = {ranks}",
    )
    return [f] if f is not None else []


def check_pickled_size(
    ctx: Context, measured: tuple[int, float, float] | None = None
) -> list[Finding]:
    """WF120: a dataset whose pickle is large or slow to load (each spawn worker unpickles
    its own copy at every start).

    Statically the size is estimated from the walk (sampled containers scaled up). The live
    probe measures (bytes, pickle seconds, unpickle seconds); then a measured unpickle time of
    UNPICKLE_SLOW_S or more is reported too, whatever the size.
    """
    if not any(m in ctx.start_methods for m in SPAWNISH):
        return []
    w = ctx.walks.get("dataset")
    if w is None:
        return []
    unpickle_s = 0.0
    if measured is not None:
        size, seconds, unpickle_s = measured
        evidence = (
            f"confirmed live: pickled in {seconds:.2f} s to {mb(size)}, unpickled in "
            f"{unpickle_s:.2f} s (tensors excluded)"
        )
    else:
        size = int(sum(_approx_bytes(n) for n in w.nodes if n.pickled))
        evidence = (
            "static: estimated from the object graph (tensors excluded: they travel "
            "through shared memory)"
        )
    big, slow = size >= PICKLED_SLOW_BYTES, unpickle_s >= UNPICKLE_SLOW_S
    if not big and not slow:
        return []
    nw = ctx.num_workers or 2
    cost = (
        f"unpickling it took {unpickle_s:.1f} s here, paid by each worker"
        if slow
        else "costing seconds"
    )
    f = ctx.finding(
        "WF120",
        "warning",
        "dataset",
        f"The dataset pickles to ~{mb(size)}: under spawn/forkserver each of the {nw} workers "
        "receives and unpickles its own copy at every start (every epoch unless "
        f"persistent_workers=True), {cost}, and num_workers copies of the memory.",
        "Keep bulk data out of the pickle: store file paths or an np.memmap path and open it "
        "in the worker, or keep data in torch tensors (they travel through shared memory); "
        "move costly rebuilding out of __setstate__ (do it lazily in the worker); use "
        "persistent_workers=True so workers start once.",
        evidence,
        SPAWNISH,
    )
    return [f] if f is not None else []


def _approx_bytes(node: Node) -> float:
    obj = node.obj
    np = sys.modules.get("numpy")
    if isinstance(obj, (str, bytes, bytearray)):
        return node.weight * (len(obj) + 8)
    if np is not None and isinstance(obj, np.ndarray):
        return node.weight * float(obj.nbytes)
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(obj, torch.Tensor):
        return 0.0
    return node.weight * 8


def _is_user_script(path: str) -> bool:
    """A file of the user's: not inside an installed package or the standard library."""
    parts = os.path.abspath(path).replace(os.sep, "/").split("/")
    if "site-packages" in parts or "dist-packages" in parts:
        return False
    stdlib = os.path.dirname(os.__file__)
    return not os.path.abspath(path).startswith(stdlib + os.sep)


def unguarded_main_script() -> str | None:
    """The path of ``__main__``'s file when it is a user script without a ``__main__`` guard.

    None for an interactive ``__main__`` (no file), an installed entry point, an unreadable
    file, or a script that mentions both ``__name__`` and ``"__main__"`` (the guard).
    """
    main_file = getattr(sys.modules.get("__main__"), "__file__", None)
    if not main_file or not _is_user_script(main_file):
        return None
    try:
        with open(main_file, encoding="utf-8") as fh:
            text = fh.read()
    except OSError:
        return None
    return None if "__name__" in text and "__main__" in text else main_file


def check_main_guard(ctx: Context) -> list[Finding]:
    """WF121: the main script has no ``if __name__ == "__main__":`` guard under spawn/forkserver.

    spawn and forkserver workers re-import the main script; without the guard each worker
    runs the training script again (RuntimeError: An attempt has been made to start a new
    process before the current process has finished its bootstrapping phase). That holds
    whether the dataset's classes live in the script or are imported into it (issue 15: a
    script importing its classes crashed with no finding), so any user script without the
    guard is reported; an interactive ``__main__`` (no file) and installed entry points
    (``wellfed``, ``pytest``) are not scripts of the user's.
    """
    if not any(m in ctx.start_methods for m in SPAWNISH):
        return []
    main_file = unguarded_main_script()
    if main_file is None:
        return []
    uses_main = any(
        getattr(
            n.obj if isinstance(n.obj, (type, types.FunctionType)) else type(n.obj),
            "__module__",
            None,
        )
        == "__main__"
        for n in ctx.worker_nodes()
    )
    what = (
        "defines classes the workers use"
        if uses_main
        else "runs its training code at top level (the workers import it, whatever defines the "
        "dataset)"
    )
    f = ctx.finding(
        "WF121",
        "error",
        "env.main_guard",
        f"The script {os.path.basename(main_file)} {what} but has no "
        '`if __name__ == "__main__":` guard: spawn/forkserver workers re-import it and re-run '
        "the training code, failing with 'An attempt has been made to start a new process "
        "before the current process has finished its bootstrapping phase'.",
        "Move the top-level training code into main() and end the script with:\n"
        'if __name__ == "__main__":\n    main()',
        f"static: no __main__ guard in {main_file}",
        SPAWNISH,
    )
    return [f] if f is not None else []
