"""watch: how much of each training step waits on data, in any loop, with no change to it.

``wellfed.watch(iterable)`` meters one loop (the books are kept by ``wellfed._meter``, the
accounting the measuring core shares); ``wellfed.watch_script`` runs a whole program and
meters every DataLoader it iterates (``LoaderSession``), with ``/proc`` evidence and a verdict
per loader (``_verdict``); ``plot_watch`` draws the timeline. Framework callbacks live in
``wellfed.integrations`` (``lightning``, ``transformers``).

The room is ``_watch`` (not ``watch``) so that importing it never shadows the function
``wellfed.watch`` on the package.
"""

from __future__ import annotations

from wellfed._meter import WaitMeter, WatchStats
from wellfed._watch._plot import plot_watch
from wellfed._watch._report import Cause, LoaderReport, Verdict, WatchReport
from wellfed._watch._script import watch_script
from wellfed._watch._session import LoaderRecord, LoaderSession
from wellfed._watch._wrap import MeteredIterator, Watched, watch

__all__ = [
    "Cause",
    "LoaderRecord",
    "LoaderReport",
    "LoaderSession",
    "MeteredIterator",
    "Verdict",
    "WaitMeter",
    "WatchReport",
    "WatchStats",
    "Watched",
    "plot_watch",
    "watch",
    "watch_script",
]
