"""Group members for run_isolated_group tests: stdlib only, so spawn children start fast."""

from __future__ import annotations

import os
import time
from typing import Any


def member(fail_rank: int, group: Any) -> tuple[int, str, float]:
    """Fail at ``fail_rank``; else meet the others at the barrier and say when (Unix time)."""
    if group.rank == fail_rank:
        raise ValueError(f"member {group.rank} fails (test)")
    group.wait_for_all(30)
    met = time.time()
    group.finish()
    while not group.all_finished():
        time.sleep(0.01)  # the members' own handshake: polling a shared counter
    return group.rank, os.environ["LOCAL_RANK"], met
