"""engine="ray": the same precompute job on Ray Data, writing the same store.

Pipeline (one Ray Data row per batch, so batch boundaries are exactly the local engine's and
the stored bytes are identical)::

    from_items(batch numbers)
      -> map_batches(_read_batch)           Ray tasks on CPUs: read + collate the samples
      -> map_batches(_FnActor, concurrency=actors, num_gpus=1 per actor when CUDA is there)
      -> iter_rows() in order               the driver checks each batch and commits shards

The driver writes the shards (with the local engine's writer thread), so ``out_dir`` must be
on the driver's filesystem; reading and fn scale out across the cluster. Batches travel as
pickles inside the build only: the store's read path never unpickles.

Faults: a read task lost with its node is retried by Ray; the fn actors form a fixed-size
``ray.data.ActorPoolStrategy`` pool, which Ray Data restarts without limit
(``max_restarts=-1``) and whose lost calls it retries (``max_task_retries=-1``), so losing a
node mid-job costs the batches in flight, not the job, while a node with CPUs survives. If
the job fails anyway (the driver killed, no node left), the committed shards stay and the same
call resumes; the store is byte-for-byte the local engine's either way (tested on a 3-node
``ray.cluster_utils.Cluster``: ``tests/integration/test_precompute_ray_multinode.py``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import warnings
from collections.abc import Iterator
from typing import Any

from wellfed.errors import DependencyError

logger = logging.getLogger(__name__)

__all__ = ["resolve_address", "run_ray"]


def _import_ray() -> Any:
    try:
        import ray
        import ray.data
    except ImportError as exc:
        raise DependencyError(
            f"Ray is not installed: engine='ray' needs ray[data] ({exc}). Install it with "
            "`pip install \"wellfed[ray]\"`, or use engine='local'.",
            code="WF410",
            attribute="engine",
            value="ray",
        ) from exc
    return ray


class _ReadBatch:
    """Ray task body: read and collate batch j of the plan (holds the source, pickled once)."""

    def __init__(self, source: Any, collate_fn: Any, batches: list[list[int]]) -> None:
        self.source = source
        self.collate_fn = collate_fn
        self.batches = batches

    def __call__(self, rows: dict[str, Any]) -> dict[str, Any]:
        from torch.utils.data import default_collate

        collate = self.collate_fn or default_collate
        payloads = []
        for j in rows["b"]:
            indices = self.batches[int(j)]
            fetch = getattr(self.source, "__getitems__", None)
            samples = fetch(indices) if fetch is not None else [self.source[i] for i in indices]
            payloads.append(pickle.dumps(collate(samples), protocol=pickle.HIGHEST_PROTOCOL))
        return {"b": rows["b"], "batch": payloads}


class _FnActor:
    """Ray actor: holds fn (moved to its device once) and applies it to batches."""

    def __init__(self, processor: Any, batches: list[list[int]]) -> None:
        self.processor = processor
        self.batches = batches

    def __call__(self, rows: dict[str, Any]) -> dict[str, Any]:
        results = []
        for j, payload in zip(rows["b"], rows["batch"], strict=True):
            done = self.processor(pickle.loads(payload), self.batches[int(j)])
            results.append(
                pickle.dumps(
                    (done.fields, done.origins, done.layout), protocol=pickle.HIGHEST_PROTOCOL
                )
            )
        return {"b": rows["b"], "result": results}


def run_ray(
    job: Any,
    source: Any,
    collate_fn: Any,
    processor: Any,
    *,
    ray_address: str | None,
    actors: int | None,
) -> None:
    """Run the job's remaining batches on Ray Data; the driver commits the shards.

    Which Ray: the instance already initialised in this process (``ray.init`` by the caller),
    else ``ray_address`` (see ``resolve_address``: None means ``RAY_ADDRESS`` when set, else a
    new local instance, never a cluster found on this machine). A Ray connection made here is
    closed afterwards (a local instance is shut down). Ray Data's global ``DataContext``
    (``preserve_order``, progress bars), set for the job, is restored afterwards.

    Raises:
        DependencyError: ray[data] is not installed (WF410).
        PrecomputeError: as the local engine (fn raised, inconsistent outputs, disk full).
    """
    with warnings.catch_warnings():
        # Ray 2.60 warns about its own defaults (DataContext's use_push_based_shuffle) on
        # every DataContext; nothing a caller can change, so it is not passed on.
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"ray(\.|$)")
        _run_ray(job, source, collate_fn, processor, ray_address=ray_address, actors=actors)


def _run_ray(
    job: Any,
    source: Any,
    collate_fn: Any,
    processor: Any,
    *,
    ray_address: str | None,
    actors: int | None,
) -> None:
    ray = _import_ray()
    batches = job.plan()
    if not batches:
        return
    started_here = False
    if not ray.is_initialized():
        address, why = resolve_address(ray_address)
        logger.info("precompute on Ray: ray_address=%s -> %s (%s)", ray_address, address, why)
        ray.init(
            address=address,
            include_dashboard=False,
            log_to_driver=False,
            logging_level=logging.WARNING,
        )
        started_here = True
    try:
        with _job_data_context(ray):
            _compute(ray, job, source, collate_fn, processor, batches, actors)
    except Exception as exc:
        cause = _unwrap_ray_error(exc)
        if cause is not exc:
            raise cause from exc
        raise
    finally:
        if started_here:
            ray.shutdown()


def resolve_address(ray_address: str | None) -> tuple[str, str]:
    """The address ``ray.init`` gets when no Ray is initialised in this process, and why.

    A given address is used as it is (``"host:port"``; ``"ray://host:port"``: Ray Client;
    ``"auto"``: Ray's own search, ``RAY_ADDRESS`` else the cluster ``ray start`` started on
    this machine, ConnectionError if none). None means the environment
    variable ``RAY_ADDRESS`` when set (as ``ray job submit`` sets it for the job's driver),
    else ``"local"``: a new local instance, which the job shuts down afterwards. Ray's own
    ``ray.init()`` default would instead attach to the last cluster any ``ray start`` or test
    cluster on the machine recorded in ``/tmp/ray/ray_current_cluster``, which may be stale or
    another user's, so None never does that: pass ``"auto"`` for it.
    """
    if ray_address is not None:
        return ray_address, "given"
    env = os.environ.get("RAY_ADDRESS", "")
    if env:
        return env, "RAY_ADDRESS"
    return "local", "a new local Ray instance; RAY_ADDRESS is unset"


@contextlib.contextmanager
def _job_data_context(ray: Any) -> Iterator[None]:
    """Ray Data's process-wide DataContext set for the job (batches in order, no progress
    bars), then restored: the caller's own Ray Data pipelines are not changed."""
    ctx = ray.data.DataContext.get_current()
    saved = (ctx.execution_options.preserve_order, ctx.enable_progress_bars)
    ctx.execution_options.preserve_order = True
    ctx.enable_progress_bars = False
    try:
        yield
    finally:
        ctx.execution_options.preserve_order, ctx.enable_progress_bars = saved


def _compute(
    ray: Any,
    job: Any,
    source: Any,
    collate_fn: Any,
    processor: Any,
    batches: list[list[int]],
    actors: int | None,
) -> None:
    """Build the Ray Data pipeline and commit its batches in order."""
    from wellfed.cache._build import ProcessedBatch

    gpus = float(ray.cluster_resources().get("GPU", 0))
    use_gpu = processor.device.startswith("cuda") and gpus >= 1
    n_actors = actors or (int(gpus) if use_gpu else 1)
    ds = ray.data.from_items(
        [{"b": j} for j in range(len(batches))], override_num_blocks=len(batches)
    )
    read = ds.map_batches(_ReadBatch(source, collate_fn, batches), batch_size=1)
    computed = read.map_batches(
        _FnActor,
        fn_constructor_args=(processor, batches),
        batch_size=1,
        # A fixed pool; Ray Data restarts a dead actor and retries its calls (module doc).
        compute=ray.data.ActorPoolStrategy(size=n_actors),
        num_gpus=1 if use_gpu else 0,
    )
    logger.info(
        "precompute on Ray: %d batches, %d fn actor(s), gpu=%s", len(batches), n_actors, use_gpu
    )
    expected = 0
    ok = False
    try:
        for row in computed.iter_rows():
            j = int(row["b"])
            if j != expected:
                raise RuntimeError(f"internal: Ray returned batch {j}, expected {expected}")
            expected += 1
            fields, origins, layout = pickle.loads(row["result"])
            job.accept(
                ProcessedBatch(indices=batches[j], fields=fields, origins=origins, layout=layout)
            )
        job.close()
        ok = True
    finally:
        if not ok:
            job.abort()


def _unwrap_ray_error(exc: BaseException) -> BaseException:
    """The user's own exception (e.g. PrecomputeError) inside a Ray task error, if any."""
    from wellfed.errors import WellfedError

    seen = 0
    current: BaseException | None = exc
    while current is not None and seen < 10:
        if isinstance(current, WellfedError):
            return current
        cause = getattr(current, "cause", None)
        if isinstance(cause, BaseException) and cause is not current:
            current = cause
        else:
            current = current.__cause__
        seen += 1
    return exc
