"""``WorldInvariantSampler``: each rank's slice of every global batch, whatever the world size.

A seeded loader that is given no sampler (``shuffle=True`` or ``False``) uses it. The epoch's
global sample sequence is a pure function of (seed, epoch): the dataset's indices in order, or
one ``torch.randperm`` drawn from a generator the loader reseeds from (seed, epoch), the very
permutation a one-process loader uses. Global batch ``g`` is positions
``[g * G, (g + 1) * G)`` of that sequence, with ``G = batch_size * world_size``; rank ``r``
takes positions ``[g * G + r * batch_size, g * G + (r + 1) * batch_size)``. The ranks' batches
concatenated in rank order are therefore the same global batches for world sizes 1, 2, 4, ...
at the same global batch size, and each sample keeps its per-sample seed (seed, epoch, index),
so its augmentation is the same on whichever rank and worker draws it.

Uneven tails (``N % G`` samples after the last full global batch):

* ``drop_last=True``: the partial global batch is dropped on every rank (so every rank has the
  same number of batches, as DDP needs).
* ``drop_last=False``: the tail is padded to a multiple of the world size with samples from the
  start of the epoch's sequence (what ``DistributedSampler`` does with ``drop_last=False``) and
  cut into equal contiguous slices, one per rank: every rank gets one last, smaller batch of
  ``ceil(tail / world_size)`` samples. The first ``tail`` samples of that global batch are the
  same for every world size; the padding depends on it.

Rank and world size are read when the sampler is iterated (``wellfed.platform.
rank_and_world_size``: the initialized process group, else torchrun's ``RANK`` and
``WORLD_SIZE``), so a loader built before ``init_process_group`` shards correctly once
training starts; pass ``num_replicas`` and ``rank`` to fix them.

The sampler is a ``DistributedSampler`` (Lightning does not replace it, ``set_epoch`` works as
frameworks expect) and, to keep ``isinstance`` checks truthful, a ``RandomSampler`` when it
shuffles and a ``SequentialSampler`` when it does not.
"""

from __future__ import annotations

from collections.abc import Iterator, Sized
from typing import Any

import torch
from torch.utils.data import DistributedSampler, RandomSampler, SequentialSampler

from wellfed.platform import rank_and_world_size

__all__ = ["WorldInvariantSampler", "world_invariant_sampler"]


class WorldInvariantSampler(DistributedSampler[int]):
    """This rank's slice of every global batch of an epoch (see the module docstring).

    Args:
        dataset: A sized dataset (``len(dataset)`` samples, indices ``0 .. len - 1``).
        batch_size: Samples per batch per rank (the loader's ``batch_size``; 1 without
            automatic batching). The global batch is ``batch_size * num_replicas``.
        shuffle: Draw the global sequence from ``generator`` (one ``torch.randperm`` per epoch)
            instead of index order.
        drop_last: Drop the last, partial global batch instead of padding it.
        generator: The generator a shuffling sampler draws from; the seeded loader reseeds it
            from (seed, epoch) before each epoch.
        num_replicas: World size, or None to read it at each iteration.
        rank: This process's global rank, or None to read it at each iteration.

    Raises:
        ValueError: ``batch_size`` < 1, or ``rank`` outside ``[0, num_replicas)``.
    """

    def __init__(
        self,
        dataset: Sized,
        batch_size: int,
        *,
        shuffle: bool,
        drop_last: bool,
        generator: torch.Generator | None = None,
        num_replicas: int | None = None,
        rank: int | None = None,
    ) -> None:
        # DistributedSampler.__init__ is not called: it reads the world size once, and needs an
        # initialized process group when num_replicas is None.
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if num_replicas is not None and rank is not None and not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is outside [0, num_replicas={num_replicas})")
        self.dataset = dataset  # type: ignore[assignment]
        self.data_source = dataset  # RandomSampler's and SequentialSampler's name for it
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.generator = generator
        self.replacement = False
        self._num_samples: int | None = None  # RandomSampler's
        self.seed = 0  # DistributedSampler's; the order comes from ``generator``
        self.epoch = 0
        self._num_replicas = num_replicas
        self._rank = rank

    # -- the world, read when it is needed ---------------------------------------------------

    def world(self) -> tuple[int, int]:
        """(rank, world size) this sampler slices for now."""
        rank, world = rank_and_world_size()
        if self._num_replicas is not None:
            world = self._num_replicas
        if self._rank is not None:
            rank = self._rank
        if not 0 <= rank < world:
            raise ValueError(
                f"rank {rank} is outside [0, num_replicas={world}): pass both num_replicas and "
                "rank, or neither (they are then read from torch.distributed or RANK/WORLD_SIZE)"
            )
        return rank, world

    @property
    def num_replicas(self) -> int:  # type: ignore[override]
        return self.world()[1]

    @property
    def rank(self) -> int:  # type: ignore[override]
        return self.world()[0]

    @property
    def global_batch_size(self) -> int:
        """``batch_size * world size``: the batch the ranks' slices make up together."""
        return self.batch_size * self.world()[1]

    @property
    def num_samples(self) -> int:  # type: ignore[override]
        """Samples this rank draws in an epoch."""
        _, world, full, tail = self._layout()
        if tail and not self.drop_last:
            return full * self.batch_size + -(-tail // world)
        return full * self.batch_size

    @property
    def total_size(self) -> int:  # type: ignore[override]
        """Samples all ranks draw in an epoch (padding included)."""
        return self.num_samples * self.world()[1]

    def _layout(self) -> tuple[int, int, int, int]:
        """(samples, world size, full global batches, samples in the partial one)."""
        n = len(self.data_source)
        world = self.world()[1]
        full, tail = divmod(n, self.batch_size * world)
        return n, world, full, tail

    # -- the sequence ------------------------------------------------------------------------

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[int]:
        rank, world = self.world()
        n = len(self.data_source)
        b = self.batch_size
        g = b * world
        if self.shuffle:
            order: list[int] = torch.randperm(n, generator=self.generator).tolist()
        else:
            order = list(range(n))
        full, tail = divmod(n, g)
        for start in range(0, full * g, g):
            yield from order[start + rank * b : start + (rank + 1) * b]
        if tail and not self.drop_last:
            share = -(-tail // world)
            last = order[full * g :]
            while len(last) < share * world:  # pad from the epoch's start (n may be tiny)
                last += order[: share * world - len(last)]
            yield from last[rank * share : (rank + 1) * share]

    def set_epoch(self, epoch: int) -> None:
        """Record the epoch (the seeded loader reseeds ``generator`` from (seed, epoch))."""
        self.epoch = epoch

    def __repr__(self) -> str:
        rank, world = self.world()
        return (
            f"{type(self).__name__}(batch_size={self.batch_size}, shuffle={self.shuffle}, "
            f"drop_last={self.drop_last}, rank={rank}, num_replicas={world})"
        )


class _ShufflingWorldInvariantSampler(WorldInvariantSampler, RandomSampler):
    """A shuffling WorldInvariantSampler: ``isinstance(s, RandomSampler)`` holds."""


class _OrderedWorldInvariantSampler(WorldInvariantSampler, SequentialSampler):
    """A WorldInvariantSampler in index order: ``isinstance(s, SequentialSampler)`` holds."""


def world_invariant_sampler(
    dataset: Sized, batch_size: int, **kwargs: Any
) -> WorldInvariantSampler:
    """A ``WorldInvariantSampler`` that is also a ``RandomSampler`` (``shuffle=True``) or a
    ``SequentialSampler`` (``shuffle=False``); the arguments are ``WorldInvariantSampler``'s.
    """
    cls = (
        _ShufflingWorldInvariantSampler if kwargs.get("shuffle") else _OrderedWorldInvariantSampler
    )
    return cls(dataset, batch_size, **kwargs)
