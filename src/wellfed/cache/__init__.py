"""Precompute an expensive transform once; train from a memory-mapped store with workers.

``precompute(dataset, fn, out_dir)`` runs ``fn`` (often a GPU model) over a dataset once and
writes the outputs into a sharded store of ``.npy`` files; ``CachedDataset(out_dir)`` reads it
back zero-copy, in any number of DataLoader workers. The store format is documented in
``wellfed.cache._store`` and ``docs/precompute.md``.
"""

from __future__ import annotations

from wellfed.cache._build import PrecomputeError
from wellfed.cache._dataset import CachedDataset
from wellfed.cache._precompute import ProgressFn, precompute

__all__ = ["CachedDataset", "PrecomputeError", "ProgressFn", "precompute"]
