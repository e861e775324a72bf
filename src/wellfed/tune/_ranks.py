"""Per-rank tuning: N loaders measured at once, as N local ranks of one node will run.

``tune(nproc_per_node=N)`` measures every configuration with N trial processes at once
(``measure(nproc=N)``) and recommends the per-rank configuration. What this module owns:

* the per-node caps turned into the per-rank search space (CPUs, RAM, worker and thread caps
  divided by N);
* the default time bound, scaled with N;
* the per-rank wording of the recommendation (its reason and its paste-able code);
* under a launcher (torchrun: ``LOCAL_RANK``), the hand-off from local rank 0, which measures
  for every local rank, to the other local ranks, which wait for its result instead of each
  starting N loaders of their own.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from wellfed import platform as _platform
from wellfed._text import wrap_code
from wellfed.platform import PlatformInfo
from wellfed.tune._result import Recommendation, TuneResult

logger = logging.getLogger(__name__)

__all__ = [
    "BUDGET_PER_EXTRA_RANK",
    "HANDOFF_POLL_S",
    "HANDOFF_SLACK_S",
    "budget_scale",
    "per_rank_cap",
    "per_rank_platform",
    "per_rank_recommendation",
    "resolve_nproc",
    "stored_note",
]

#: Each rank beyond the first adds this share of the single-rank bound to the default bound.
#: Source: measured here (issue 16): on 2 CPUs, 2 ranks sharing the cores halve each rank's
#: rate, so every trial needs longer for its minimum batches, and N trial processes start per
#: trial; within the single-rank 75 s bound the 2-rank search ended before it measured a
#: worker-process configuration.
BUDGET_PER_EXTRA_RANK = 0.5

#: Seconds between two looks for local rank 0's result (other local ranks under torchrun).
HANDOFF_POLL_S = 0.5

#: A hand-off file written up to this many seconds before a waiting rank started counts as
#: this job's (the local ranks start within seconds of each other; an older file is stale).
HANDOFF_SLACK_S = 120.0

#: Past the time bound, how long the other local ranks wait for local rank 0 (its last
#: trial, the repeats and the store may run past the bound).
HANDOFF_GRACE_S = 120.0


def resolve_nproc(nproc_per_node: int | None) -> tuple[int, str]:
    """(local ranks to measure at once, where the number came from).

    Args:
        nproc_per_node: As given; None: the local world size (``LOCAL_WORLD_SIZE`` under
            torchrun, or the Slurm / Open MPI variables: ``wellfed.platform.local_world_size``),
            else 1.

    Raises:
        ConfigError: nproc_per_node is not an int >= 1 (WF010).
    """
    from wellfed.errors import check_option, is_count

    if nproc_per_node is not None:
        check_option(
            "nproc_per_node",
            nproc_per_node,
            is_count(nproc_per_node, 1),
            "an int >= 1 (local ranks)",
            code="WF010",
        )
        return nproc_per_node, "given"
    n = _platform.local_world_size()
    source = _platform.local_world_size_source()
    return n, f"{source}={n}" if source else "default"


def budget_scale(nproc: int) -> float:
    """The factor the default time bound is multiplied by for ``nproc`` local ranks:
    1 + BUDGET_PER_EXTRA_RANK x (nproc - 1) (``tune.default_budget_s``)."""
    return 1.0 + BUDGET_PER_EXTRA_RANK * (max(1, nproc) - 1)


def per_rank_platform(platform: PlatformInfo, nproc: int) -> PlatformInfo:
    """The machine as one of ``nproc`` local ranks has it: usable CPUs and available RAM
    divided by nproc (at least 1 CPU), the rest unchanged (``ulimit -n`` is per process)."""
    if nproc <= 1:
        return platform
    return dataclasses.replace(
        platform,
        usable_cpus=max(1, platform.usable_cpus // nproc),
        ram_available_bytes=platform.ram_available_bytes // nproc,
    )


def per_rank_cap(per_node: int, nproc: int) -> int:
    """A per-node cap (worker processes, threads) as a per-rank cap: ``per_node // nproc``."""
    return per_node // max(1, nproc)


def stored_note(nproc: int) -> str:
    """The comment that ends tune's code: ``create_dataloader``'s "auto" builds the same loader
    (in each of ``nproc`` local ranks, when more than 1), from the stored result. One line:
    ``wellfed._text.wrap_code`` breaks it to the printed width."""
    where = (
        f" in each rank from the stored result (LOCAL_WORLD_SIZE={nproc})"
        if nproc > 1
        else " from the stored result"
    )
    return (
        "# or: wellfed.create_dataloader(dataset, batch_size=..., num_workers='auto') builds "
        f"this loader{where}"
    )


def per_rank_recommendation(rec: Recommendation, nproc: int, source: str) -> Recommendation:
    """The recommendation reworded for ``nproc`` local ranks (unchanged for 1).

    The reason says the figures are per rank (the slowest rank's samples/s, with N loading
    at once) and gives the node's aggregate; the code says that each rank builds it.
    """
    if nproc <= 1:
        return rec
    aggregate = nproc * rec.samples_per_s
    where = "given" if source == "given" else f"detected: {source}"
    reasons = {
        "nproc_per_node": (
            f"{nproc} ({where}): {nproc} loaders measured at once on this node, one per rank; "
            f"samples/s are per rank (the slowest rank's), {aggregate:.0f} samples/s for "
            "the node"
        ),
        **rec.reasons,
    }
    head = (
        f"# per rank: each of the {nproc} local ranks builds this loader (measured with "
        f"{nproc} at once: {rec.samples_per_s:.0f} samples/s per rank, {aggregate:.0f} for "
        "the node)"
    )
    # the call itself, up to its closing ")", then the note on "auto" for N ranks
    lines = rec.code.split("\n")
    end = max((i for i, line in enumerate(lines) if line == ")"), default=len(lines) - 1)
    body = "\n".join(lines[: end + 1])
    code = wrap_code(f"{head}\n{body}\n{stored_note(nproc)}")
    return dataclasses.replace(
        rec,
        reason=f"{nproc} ranks measured at once, figures per rank; node aggregate "
        f"{aggregate:.0f} samples/s. {rec.reason}",
        reasons=reasons,
        code=code,
    )


# --- under a launcher: local rank 0 measures, the others wait for it --------------------------


def waits_for_local_rank_zero(nproc: int) -> bool:
    """True in a non-zero local rank of a launcher (LOCAL_RANK > 0) tuning for nproc > 1."""
    rank = _platform.local_rank()
    return nproc > 1 and rank is not None and rank > 0


def hands_off(nproc: int) -> bool:
    """True in local rank 0 of a launcher tuning for nproc > 1: it writes the hand-off."""
    return nproc > 1 and _platform.local_rank() == 0


def handoff_path(dataset: Any, batch_size: int | None, nproc: int) -> Path:
    """Where local rank 0 leaves its result for the other local ranks (in the store folder)."""
    from wellfed.tune._store import _key, dataset_fingerprint, result_file_name, store_dir

    name = result_file_name(_key(dataset_fingerprint(dataset), batch_size), nproc)
    return store_dir() / name.replace(".json", ".rank0.json")


def write_handoff(dataset: Any, result: TuneResult) -> None:
    """Leave ``result`` for the other local ranks (also when it is not stored for "auto")."""
    path = handoff_path(dataset, result.workload.get("batch_size"), result.nproc_per_node)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(result.to_dict()))
        os.replace(tmp, path)
    except OSError as exc:
        logger.warning("could not leave the tune result for the other local ranks: %s", exc)


def wait_for_local_rank_zero(
    dataset: Any, batch_size: int | None, nproc: int, budget_s: float
) -> TuneResult:
    """The result local rank 0 measured for all ``nproc`` local ranks, once it is there.

    Raises:
        WellfedError: No result within budget_s + HANDOFF_GRACE_S seconds (WF012).
    """
    from wellfed.errors import WellfedError

    path = handoff_path(dataset, batch_size, nproc)
    started = time.time()
    limit = budget_s + HANDOFF_GRACE_S
    rank = _platform.local_rank()
    logger.debug(  # only rank 0 speaks at INFO (STYLE 5); the CLI says it once on stderr
        "local rank %s of %d: local rank 0 measures all %d loaders at once; waiting for its "
        "result (%s)",
        rank,
        nproc,
        nproc,
        path,
    )
    while time.time() - started < limit:
        try:
            fresh = path.stat().st_mtime >= started - HANDOFF_SLACK_S
        except OSError:
            fresh = False
        if fresh:
            try:
                return TuneResult.from_dict(json.loads(path.read_text()))
            except (OSError, ValueError, KeyError, TypeError):
                pass  # being replaced: look again
        time.sleep(HANDOFF_POLL_S)  # polling a file another process writes
    raise WellfedError(
        f"No per-rank tune result from local rank 0 after {limit:.0f}s: this process is local "
        f"rank {rank} of {nproc}, and only local rank 0 measures (all {nproc} loaders at "
        f"once); it leaves its result in {path}. See local rank 0's output for why it did not "
        f"finish, or run `wellfed tune TARGET --nproc-per-node {nproc}` outside the launcher.",
        code="WF012",
        attribute="nproc_per_node",
        value=nproc,
        path=str(path),
    )
