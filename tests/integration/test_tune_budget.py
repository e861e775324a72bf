"""tune's budget is a bound: it ends within budget_s plus one trial's timeout, and says why.

Module-level slow datasets (tests/helpers_process_faults.py) whose samples sleep, so that the
budget runs out whatever this machine's speed. The bounds asserted are budget_bound_s (the
documented bound) plus STOP_S for stopping a cut trial's processes: bounds, not speeds.
"""

from __future__ import annotations

import time

import pytest

from tests.helpers_process_faults import slow_loader, slower_loader
from wellfed.tune import tune
from wellfed.tune._search import CUT_BY_BUDGET, budget_bound_s

#: Seconds that killing and reaping a cut trial's processes, and building the result, may add
#: to the bound (kill_tree waits at most 5 s for the killed processes to be reaped).
STOP_S = 5.0

pytestmark = pytest.mark.workers


@pytest.mark.timeout(120)
def test_a_spent_budget_skips_the_rest_of_the_search_and_says_so() -> None:
    budget = 3.0
    start = time.perf_counter()
    result = tune(slow_loader, budget_s=budget, max_threads=0, store=False)
    wall = time.perf_counter() - start
    assert wall <= budget_bound_s(budget) + STOP_S
    assert result.baseline is not None
    assert result.baseline.ok  # the main process was measured
    skipped = [n for n in result.notes if n.startswith("time budget:") and "skipped" in n]
    assert skipped, result.notes
    assert "time budget" in result.stopped_because
    assert result.to_dict()["notes"] == list(result.notes)  # --json carries the note


@pytest.mark.timeout(120)
def test_a_trial_running_past_the_bound_is_cut_short_and_says_so() -> None:
    budget = 1.0
    start = time.perf_counter()
    result = tune(slower_loader, budget_s=budget, max_threads=0, store=False)
    wall = time.perf_counter() - start
    assert wall <= budget_bound_s(budget) + STOP_S
    cut = [t for t in result.trials if (t.error or "").startswith(CUT_BY_BUDGET)]
    assert cut, [(t.config.label(), t.status, t.error) for t in result.trials]
    assert cut[0].status == "timeout"
    assert any(CUT_BY_BUDGET in n for n in result.notes), result.notes
    assert CUT_BY_BUDGET in result.stopped_because
    assert result.recommended is None  # nothing was measured to the end
