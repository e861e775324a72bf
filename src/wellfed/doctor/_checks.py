"""The static checks: one function per hazard, each returning findings with path, why and fix.

The checks live in one module per report category (``_checks_unpicklable``,
``_checks_rng``, ... ``_checks_worker_config``); ``ALL_CHECKS`` lists them in the order
``run_checks`` runs them.

Every check reads a ``Context`` (the walked object graph, the loader settings, the platform)
and never runs user code beyond ``__getstate__`` and ``len()``. Together they finish in well
under 2 s for a dataset of a million items, because large containers are sampled (see
``_graph.SAMPLE_THRESHOLD``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

from wellfed.doctor._checks_cuda import check_cuda
from wellfed.doctor._checks_handles import check_fork_shared_handles
from wellfed.doctor._checks_memory import check_copy_on_read, check_worker_caches
from wellfed.doctor._checks_model import check_model_in_worker
from wellfed.doctor._checks_rng import check_rng, check_worker_init_seeds
from wellfed.doctor._checks_sharding import check_iterable_sharding
from wellfed.doctor._checks_shared_memory import check_shared_memory
from wellfed.doctor._checks_stale import check_stale_state
from wellfed.doctor._checks_threads import check_thread_hazards
from wellfed.doctor._checks_transfer import check_float_images_from_workers
from wellfed.doctor._checks_unpicklable import check_interactive_main, check_unpicklable
from wellfed.doctor._checks_worker_config import (
    check_main_guard,
    check_pickled_size,
    check_worker_count,
)
from wellfed.doctor._context import Context
from wellfed.doctor._report import Finding

__all__ = [
    "ALL_CHECKS",
    "run_checks",
]

logger = logging.getLogger(__name__)


ALL_CHECKS: tuple[Callable[[Context], list[Finding]], ...] = (
    check_unpicklable,
    check_interactive_main,
    check_fork_shared_handles,
    check_cuda,
    check_model_in_worker,
    check_rng,
    check_worker_init_seeds,
    check_copy_on_read,
    check_worker_caches,
    check_stale_state,
    check_shared_memory,
    check_thread_hazards,
    check_iterable_sharding,
    check_worker_count,
    check_pickled_size,
    check_main_guard,
    check_float_images_from_workers,
)


def run_checks(ctx: Context) -> list[Finding]:
    """Run every static check; a check that crashes is logged and skipped, never fatal."""
    out: list[Finding] = []
    for check in ALL_CHECKS:
        try:
            out.extend(check(ctx))
        except Exception as exc:  # a check must never take the diagnosis down
            if os.environ.get("WELLFED_DOCTOR_STRICT") == "1":
                raise
            logger.debug("doctor check %s failed: %r", check.__name__, exc, exc_info=True)
    return out
