"""What every check reads: the ``Context`` (walked object graph, loader settings, platform).

``Context.finding`` builds a Finding for the start methods it affects; ``SPAWNISH`` are the
start methods that pickle the dataset into each worker.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from wellfed.doctor._graph import Node, Walk
from wellfed.doctor._report import CODES, Finding
from wellfed.platform import PlatformInfo

__all__ = [
    "SPAWNISH",
    "Context",
]


#: The start methods that pickle the dataset into each worker.
SPAWNISH = ("spawn", "forkserver")


@dataclass
class Context:
    """Everything the checks read.

    Attributes:
        dataset: The dataset.
        from_loader: True when a DataLoader was given (paths say ``loader.``).
        settings: DataLoader settings: num_workers, batch_size, prefetch_factor,
            persistent_workers, collate_fn, worker_init_fn, sampler, batch_sampler,
            multiprocessing_context; absent keys are unknown.
        start_methods: The start methods judged.
        platform: Facts about this machine.
        walks: Root path -> its Walk ("dataset", "loader.collate_fn", ...).
        length: len(dataset), or None.
    """

    dataset: Any
    from_loader: bool
    settings: dict[str, Any]
    start_methods: tuple[str, ...]
    platform: PlatformInfo
    walks: dict[str, Walk] = field(default_factory=dict)
    length: int | None = None

    @property
    def num_workers(self) -> int | None:
        """num_workers as given, or None when no loader settings were given."""
        nw = self.settings.get("num_workers")
        return int(nw) if isinstance(nw, int) else None

    def worker_nodes(self) -> Iterable[Node]:
        """Nodes that reach workers: dataset, collate_fn, worker_init_fn (not the sampler)."""
        for root, w in self.walks.items():
            if root != "loader.sampler" and root != "loader.batch_sampler":
                yield from w.nodes

    def worker_hooks(self, obj: Any) -> tuple[str, ...]:
        """Names of ``obj``'s methods the loader runs in its workers as ``collate_fn``
        (``collate_fn=dataset.collate_fn``): worker code beside ``__getitem__``.

        ``worker_init_fn`` is left out: what it assigns is per-worker setup, not a mutation.
        """
        hook = self.settings.get("collate_fn")
        if hook is not None and getattr(hook, "__self__", None) is obj:
            name = getattr(hook, "__name__", None)
            if isinstance(name, str):
                return (name,)
        return ()

    def finding(
        self,
        code: str,
        severity: str,
        path: str,
        message: str,
        fix: str,
        evidence: str,
        methods: Iterable[str] | None = None,
    ) -> Finding | None:
        """Build a finding for the judged start methods it affects; None if it affects none."""
        wanted = tuple(self.start_methods if methods is None else methods)
        affected = tuple(m for m in self.start_methods if m in wanted)
        if not affected:
            return None
        category = CODES[code][0]
        if not message.rstrip().endswith(f"[{code}]"):
            message = f"{message.rstrip()} [{code}]"
        return Finding(code, category, severity, path, affected, message, fix, evidence)
