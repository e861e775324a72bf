"""Static checks of the category 'stale-worker-state'.

State that workers hold a stale copy of (WF111), and worker code that mutates the dataset
(WF112).
"""

from __future__ import annotations

from wellfed.doctor._classify import safe_getattr, source_text, user_classes
from wellfed.doctor._context import Context
from wellfed.doctor._graph import is_shared_state
from wellfed.doctor._report import Finding
from wellfed.doctor._source import analyze_class

__all__ = [
    "check_stale_state",
]


_SHARED_STATE_FIX = (
    "Put the changing values in a wellfed.SharedState, which workers read live:\n"
    "self.state = wellfed.SharedState(theta=theta)  # in __init__\n"
    "theta = self.state['theta']  # in __getitem__\n"
    "dataset.state.update(theta=new_theta)  # in the training loop\n"
    "(or recreate the DataLoader / use persistent_workers=False after each change)"
)


def check_stale_state(ctx: Context) -> list[Finding]:
    """WF111/WF112: state worker code reads that something else changes, and worker code
    that mutates the dataset (the change stays in one worker's copy).
    """
    out: list[Finding] = []
    persistent = bool(ctx.settings.get("persistent_workers"))
    wif_text = source_text(ctx.settings.get("worker_init_fn"))
    for node, cls in user_classes(ctx):
        ana = analyze_class(cls)
        obj = node.obj
        for attr, (method, line) in sorted(ana.changers.items()):
            value = safe_getattr(obj, attr)
            if is_shared_state(value):
                continue
            if wif_text and f".{method}(" in wif_text:
                continue  # worker_init_fn calls it: per-worker setup
            path = f"{node.path}.{attr}"
            severity = "error" if persistent else "warning"
            when = (
                "with persistent_workers=True the workers keep the copy they received at the "
                "first epoch, forever"
                if persistent
                else "workers keep the copy they received when the epoch started, so a change "
                "during an epoch is never seen (and with persistent_workers=True, never at all)"
            )
            f = ctx.finding(
                "WF111",
                severity,
                path,
                f"{cls.__qualname__}.{method} (line {line}) changes self.{attr}, which worker "
                f"code reads; each worker holds its own copy of the dataset, so {when}: "
                "silently stale data (a pickling test cannot catch it).",
                _SHARED_STATE_FIX,
                f"static: {method} assigns self.{attr}; "
                f"{'/'.join(ana.readers) or 'worker code'} reads it",
            )
            if f is not None:
                out.append(f)
        for attr, (method, line) in sorted(ana.mutations.items()):
            if attr in ana.cache_fills:
                continue
            path = f"{node.path}.{attr}"
            f = ctx.finding(
                "WF112",
                "warning",
                path,
                f"{cls.__qualname__}.{method} assigns self.{attr} (line {line}) in the worker: "
                "the change stays in that worker's copy; the main process and the other "
                "workers never see it, so results depend on which worker served the sample.",
                "Keep worker code free of state changes: compute from the index "
                "(e.g. rng = np.random.default_rng((seed, epoch, index))), or, for state that "
                "must be shared, use wellfed.SharedState: self.state.update(...) / "
                "self.state['key']. Lazy per-worker handles are fine when guarded: "
                f"if self.{attr} is None: self.{attr} = ...",
                f"static: unguarded assignment to self.{attr} in {method}",
            )
            if f is not None:
                out.append(f)
    return out
