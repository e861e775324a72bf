"""Static checks of the category 'thread-hazard'.

Thread pools that break or oversubscribe forked workers (WF115), and threads running in
this process before fork (WF116).
"""

from __future__ import annotations

import os
import threading
from typing import Any

from wellfed.doctor._classify import inside, pretty_type, thread_kind
from wellfed.doctor._context import Context
from wellfed.doctor._report import Finding

__all__ = [
    "check_thread_hazards",
    "thread_worker_hazards",
]


_THREAD_WHY = {
    "opencv": (
        "OpenCV keeps its own thread pool; in forked workers it can deadlock, and in any "
        "worker it starts one thread per core, oversubscribing the CPUs num_workers times",
        "In worker_init_fn (or at import): cv2.setNumThreads(0); cv2.ocl.setUseOpenCL(False)",
    ),
    "tokenizers": (
        "Hugging Face tokenizers use a Rust thread pool; after the main process has used it, "
        "forked workers deadlock or fall back with 'The current process just got forked, after "
        "parallelism has already been used'",
        "Set os.environ['TOKENIZERS_PARALLELISM'] = 'false' before the tokenizer is first used "
        "(or tokenize in the workers only)",
    ),
    "thread pool": (
        "a thread pool's threads do not exist in a forked worker, so work submitted there waits "
        "forever; spawn cannot pickle it",
        "Create the pool inside the worker (lazily in __getitem__ or in worker_init_fn), or "
        "drop it: DataLoader workers already run in parallel",
    ),
    "running thread": (
        "a thread started in the main process does not run in forked workers (only the forking "
        "thread is copied), and any lock it held at fork time stays locked there",
        "Start the thread inside each worker (worker_init_fn) or keep it out of the dataset",
    ),
}


def check_thread_hazards(ctx: Context) -> list[Finding]:
    """WF115 (objects in the graph) and WF116 (threads running now, before fork)."""
    out: list[Finding] = []
    reported: list[str] = []
    for node in ctx.worker_nodes():
        kind = thread_kind(node.obj)
        if kind is None or any(inside(node.path, p) for p in reported):
            continue
        if kind == "tokenizers" and os.environ.get("TOKENIZERS_PARALLELISM", "").lower() in (
            "false",
            "0",
            "off",
        ):
            continue
        reported.append(node.path)
        why, fix = _THREAD_WHY[kind]
        f = ctx.finding(
            "WF115",
            "warning",
            node.path,
            f"{node.path} is {pretty_type(node.obj)}: {why}.",
            fix,
            f"static: {kind} object in the graph",
            ("fork",) if kind != "opencv" else ("fork", "spawn", "forkserver"),
        )
        if f is not None:
            out.append(f)
    if "fork" in ctx.start_methods:
        others = [
            t
            for t in threading.enumerate()
            if t is not threading.main_thread()
            and t.is_alive()
            and t is not threading.current_thread()
        ]
        if others:
            names = ", ".join(sorted(t.name for t in others)[:5])
            f = ctx.finding(
                "WF116",
                "info",
                "env.threads",
                f"{len(others)} thread(s) run in this process ({names}); forked workers get "
                "none of them, and a lock one of them holds at fork time stays locked in the "
                "worker.",
                "Create the DataLoader's iterator before starting background threads, or use "
                "multiprocessing_context='forkserver' or 'spawn'.",
                f"static: threading.enumerate() lists {len(others) + 1} threads",
                ("fork",),
            )
            if f is not None:
                out.append(f)
    return out


#: Objects that break when several thread workers (``num_threads``) share them, with why and
#: the fix. Source: huggingface/tokenizers#537 ("RuntimeError: Already borrowed" when one fast
#: tokenizer is called from several threads at once).
_THREAD_WORKER_WHY = {
    "tokenizers": (
        "a Hugging Face (Rust) tokenizer raises 'RuntimeError: Already borrowed' when several "
        "threads call it at once (huggingface/tokenizers#537)",
        "keep one tokenizer per thread (threading.local, created lazily in __getitem__), or "
        "load with worker processes (num_workers)",
    ),
}


def thread_worker_hazards(dataset: Any) -> list[dict[str, str]]:
    """Objects in ``dataset``'s graph that thread workers must not share, each once.

    Returns:
        ``[{"path", "kind", "why", "fix"}]`` (static: found by walking the object graph).
    """
    from wellfed.doctor._graph import walk

    found: list[dict[str, str]] = []
    reported: list[str] = []
    for node in walk(dataset, "dataset").nodes:
        kind = thread_kind(node.obj)
        if kind not in _THREAD_WORKER_WHY or any(inside(node.path, p) for p in reported):
            continue
        reported.append(node.path)
        why, fix = _THREAD_WORKER_WHY[kind]
        found.append(
            {"path": node.path, "kind": kind, "why": f"{pretty_type(node.obj)}: {why}", "fix": fix}
        )
    return found
