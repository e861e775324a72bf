"""Live probes tune runs before its search: may batches be fetched in one call, are threads safe?

Both run in one isolated child process (``run_isolated``), so a dataset that crashes or hangs
in them ends the probe, not tune.

* Batched fetch: ``wellfed.backends.batched_fetch_matches`` on the first indices.
* Thread workers: the static hazard (a Hugging Face tokenizer in the dataset: its Rust
  tokenizer raises "Already borrowed" when threads share it, huggingface/tokenizers#537), then
  a live check. A few samples are loaded serially, each under its per-sample seed, then again
  from 4 threads at once, each sample twice; every threaded output must equal its serial one.
  A dataset that draws from a process-wide RNG (``random``, ``numpy.random``, torch's global
  generator: threads share them) or mutates shared state fails it; one that draws from
  ``wellfed.sample_rng()`` / ``sample_generator()`` (per thread, per sample) passes.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any

from wellfed.measure import run_isolated
from wellfed.target import LoaderSpec

__all__ = ["PROBE_SAMPLES", "PROBE_THREADS", "probe_dataset"]

#: Samples the thread check loads (each once serially, twice under threads): enough for
#: several concurrent fetches per thread, few enough to cost well under a second for a
#: 10 ms sample.
PROBE_SAMPLES = 16

#: Threads of the live check: more than one per core on the 2-core machine, so fetches
#: really overlap.
PROBE_THREADS = 4

_FIX_RNG = (
    "draw the sample's randomness from wellfed.sample_generator() (torch) or "
    "wellfed.sample_rng() (numpy) instead of the process-wide RNGs, and keep __getitem__ free "
    "of shared mutable state"
)


def probe_dataset(spec: LoaderSpec, *, timeout_s: float = 60.0) -> dict[str, Any]:
    """Probe batched fetch and thread safety for ``spec`` in an isolated child.

    Returns:
        ``{"batched_fetch": {"eligible": bool, "why": str},
        "threads": {"safe": bool, "why": str, "fix": str | None}}``; every ``why`` is a
        detected fact, in words.
    """
    if spec.is_iterable:
        why = "the dataset is iterable-style (no indices to fetch by, one iterator to share)"
        return {
            "batched_fetch": {"eligible": False, "why": why},
            "threads": {"safe": False, "why": why, "fix": None},
        }
    hazard = _static_thread_hazard(spec.dataset)
    result = run_isolated(_probe_child, spec, hazard is None, timeout_s=timeout_s)
    if result.status != "ok":
        first = (result.error or result.status).strip().splitlines()
        why = f"the live probe {result.status}: {first[-1] if first else ''}"[:300]
        return {
            "batched_fetch": {"eligible": False, "why": why},
            "threads": {"safe": False, "why": why, "fix": None},
        }
    out: dict[str, Any] = result.value
    if hazard is not None:
        out["threads"] = hazard
    return out


def _static_thread_hazard(dataset: Any) -> dict[str, Any] | None:
    from wellfed.doctor import thread_worker_hazards

    found = thread_worker_hazards(dataset)
    if not found:
        return None
    first = found[0]
    return {"safe": False, "why": f"{first['path']}: {first['why']}", "fix": first["fix"]}


def _probe_child(spec: LoaderSpec, check_threads: bool) -> dict[str, Any]:
    from wellfed.backends import batched_fetch_matches

    dataset = spec.dataset
    n = len(dataset)
    out: dict[str, Any] = {}
    first = list(range(min(n, max(2, min(spec.batch_size, 8)))))
    if spec.batch_sampler is not None:
        out["batched_fetch"] = {
            "eligible": False,
            "why": "the loader has its own batch_sampler (kept as given)",
        }
    else:
        ok, why = batched_fetch_matches(dataset, first, spec.collate_fn)
        out["batched_fetch"] = {"eligible": ok, "why": why}
    out["threads"] = (
        _thread_check(dataset, n) if check_threads else {"safe": False, "why": "", "fix": None}
    )
    return out


def _load(dataset: Any, index: int, seed: int) -> str:
    from wellfed._digest import batch_digest
    from wellfed.seeding import _enter_sample, _leave_sample

    _enter_sample(seed, seed_globals=False)
    try:
        return batch_digest(dataset[index])
    finally:
        _leave_sample()


def _thread_check(dataset: Any, n: int) -> dict[str, Any]:
    from wellfed.seeding import sample_seed

    k = min(n, PROBE_SAMPLES)
    indices = sorted({i * n // k for i in range(k)})
    seeds = {i: sample_seed(0, 0, i) for i in indices}
    name = type(dataset).__name__
    try:
        serial = {i: _load(dataset, i, seeds[i]) for i in indices}
    except Exception as exc:
        return {
            "safe": False,
            "why": f"{name}[i] raised {type(exc).__name__} in the main process: {exc}"[:300],
            "fix": None,
        }
    work = [i for _ in range(2) for i in indices]
    results: dict[int, list[str]] = {i: [] for i in indices}
    errors: list[tuple[int, BaseException]] = []
    lock = threading.Lock()
    start = threading.Barrier(PROBE_THREADS)

    def run(part: list[int]) -> None:
        with contextlib.suppress(threading.BrokenBarrierError):
            start.wait(10)
        for i in part:
            try:
                digest = _load(dataset, i, seeds[i])
            except Exception as exc:
                with lock:
                    errors.append((i, exc))
                continue
            with lock:
                results[i].append(digest)

    threads = [
        threading.Thread(target=run, args=(work[t::PROBE_THREADS],), daemon=True)
        for t in range(PROBE_THREADS)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    if errors:
        i, error = errors[0]
        return {
            "safe": False,
            "why": (
                f"{name}[{i}] raised {type(error).__name__} when {PROBE_THREADS} threads "
                f"loaded samples at once, not when loaded alone: {error}"
            )[:300],
            "fix": "keep one instance of the failing object per thread (threading.local), or "
            "use worker processes",
        }
    differ = [i for i in indices if any(d != serial[i] for d in results[i])]
    if differ:
        return {
            "safe": False,
            "why": (
                f"{name}[i] under {PROBE_THREADS} concurrent threads differed from the serial "
                f"result for the same per-sample seed at {len(differ)} of {len(indices)} "
                f"samples (e.g. index {differ[0]}), checked live: it draws from a process-wide "
                "RNG, which threads share, or changes shared state"
            ),
            "fix": _FIX_RNG,
        }
    return {
        "safe": True,
        "why": (
            f"{len(indices)} samples loaded by {PROBE_THREADS} concurrent threads equal the "
            "serial results for the same per-sample seeds (checked live)"
        ),
        "fix": None,
    }
