"""Loading backends beside torch's own iterators: thread workers and batched fetch.

* ``ThreadWorkersIter``: the iterator of a loader with ``num_threads > 0``. A pool of daemon
  threads inside the main process fetches whole batches (index sampling stays in the main
  thread, in order), with ``num_threads * prefetch_factor`` batches in flight. No pickling,
  no inter-process copies, no worker start-up: it wins where the fetch releases the GIL
  (Pillow decode, file and socket reads, numpy and torch ops) and loses where it holds it
  (pure-Python transforms), which ``wellfed tune`` measures.
* ``IndexBatchFetch``: batched fetch for a dataset without ``__getitems__`` whose list
  indexing returns the collated batch (``TensorDataset``, numpy- or Arrow-backed datasets):
  one ``dataset[list_of_indices]`` call per batch.

Both are used by ``wellfed.seeded_loader.SeededDataLoader`` (``num_threads=``,
``batched_fetch=``), so every loader wellfed builds stays a ``torch.utils.data.DataLoader``.
"""

from __future__ import annotations

from wellfed.backends._batched import IndexBatchFetch, batched_fetch_matches
from wellfed.backends._threads import (
    JOIN_TIMEOUT_S,
    ThreadWorkersIter,
    current_index,
    live_threads,
    set_current_index,
)

__all__ = [
    "JOIN_TIMEOUT_S",
    "IndexBatchFetch",
    "ThreadWorkersIter",
    "batched_fetch_matches",
    "current_index",
    "live_threads",
    "set_current_index",
]
