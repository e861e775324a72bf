"""Hugging Face Accelerate and seeded loaders: ``prepare_data_loader(accelerator, loader)``.

``accelerator.prepare(loader)`` rebuilds a DataLoader from its attributes as a
``DataLoaderShard`` over a plain torch ``DataLoader`` with a ``BatchSamplerShard``: a
seeded wellfed loader would lose its per-sample seeds (augmentations unseeded, different
every run) and its world-size-invariant shards, silently. A seeded ``SeededDataLoader``
therefore refuses ``accelerator.prepare`` (``ConfigError`` WF213, raised from inside
``prepare``), and this module's ``prepare_data_loader`` is the way through:

    loader = wellfed.create_dataloader(ds, batch_size=32, shuffle=True, seed=42)
    loader = wellfed.integrations.accelerate.prepare_data_loader(accelerator, loader)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)  # loader kept

It returns a ``DataLoaderShard`` (Accelerate's own class, so device placement, ``non_blocking``,
``GradientState``'s end-of-dataloader and remainder, ``gather_for_metrics``'s de-duplication
and ``accelerator.accumulate`` work as with any prepared loader) whose inner loader is the
seeded loader itself: each rank iterates its own slice of every global batch
(``wellfed.samplers``), with the same batches for any ``num_workers``. ``state_dict`` /
``load_state_dict`` are the seeded loader's (resume at another world size with the same global
batch). ``accelerator.skip_first_batches`` rebuilds the loader again: resume with
``load_state_dict`` instead.
"""

from __future__ import annotations

import functools
from typing import Any

from wellfed.errors import ConfigError
from wellfed.samplers import WorldInvariantSampler
from wellfed.seeded_loader import SeededDataLoader

__all__ = ["prepare_data_loader"]


def prepare_data_loader(accelerator: Any, loader: SeededDataLoader) -> Any:
    """The seeded ``loader`` prepared for ``accelerator``, seeds and shards kept.

    Args:
        accelerator: An ``accelerate.Accelerator`` (its process group set up).
        loader: A ``SeededDataLoader`` (``wellfed.create_dataloader(..., seed=...)``) built with
            no sampler (it then shards itself by rank) or with a ``DistributedSampler``.

    Returns:
        An ``accelerate.data_loader.DataLoaderShard`` wrapping ``loader`` (``isinstance`` of
        ``SeededDataLoader``, as Accelerate's adapters report their inner class), marked
        prepared and registered with the accelerator, so a later ``accelerator.prepare``
        returns it as it is.

    Raises:
        ImportError: accelerate is not installed.
        ConfigError: ``loader`` is not a seeded wellfed loader; the accelerator splits or
            dispatches batches (``split_batches=True`` / ``dispatch_batches=True``: wellfed's
            batches are per rank); or the job has several processes and the loader's sampler
            does not shard by rank (every rank would train on all data) (WF213).
    """
    if not isinstance(loader, SeededDataLoader) or loader.seed is None:
        raise ConfigError(
            f"Cannot prepare: loader={type(loader).__name__} is not a seeded wellfed loader. "
            "Pass the loader of wellfed.create_dataloader(..., seed=<int>), or hand an unseeded "
            "loader to accelerator.prepare directly.",
            code="WF213",
            attribute="loader",
            value=type(loader).__name__,
        )
    config = getattr(accelerator, "dataloader_config", None)
    for option in ("split_batches", "dispatch_batches"):
        if getattr(config, option, False):
            raise ConfigError(
                f"Conflicting options: Accelerator(dataloader_config={option}=True) with a "
                "seeded wellfed loader, whose batches are already per rank (batch_size per "
                f"process; each rank loads its own slice of every global batch). Drop {option}.",
                code="WF213",
                attribute=option,
                value=True,
            )
    world = int(getattr(accelerator, "num_processes", 1))
    sampler = loader.sampler
    if isinstance(sampler, WorldInvariantSampler):
        rank_seen, world_seen = sampler.world()
        if (rank_seen, world_seen) != (int(accelerator.process_index), world):
            raise ConfigError(
                f"Conflicting ranks: the loader shards for rank {rank_seen} of {world_seen}, "
                f"the accelerator is process {accelerator.process_index} of {world}. Build the "
                "loader without num_replicas/rank (they are read from the process group).",
                code="WF213",
                attribute="num_replicas",
                value=world_seen,
            )
    elif world > 1 and getattr(sampler, "num_replicas", 1) != world:
        raise ConfigError(
            f"Unsharded loader: {world} processes, but the loader's sampler "
            f"({type(sampler).__name__}) does not shard by rank, so every rank would train on "
            "all data. Build the seeded loader without a sampler (wellfed then shards each "
            "global batch by rank), or pass a DistributedSampler.",
            code="WF213",
            attribute="sampler",
            value=type(sampler).__name__,
        )
    shard = _shard_class()(
        loader.dataset,
        device=accelerator.device if accelerator.device_placement else None,
        _drop_last=loader.drop_last,
        _non_blocking=bool(getattr(accelerator, "non_blocking", False)),
    )
    # Accelerate's adapter iterates the loader in ``base_dataloader`` (the one its __init__
    # built is plain, never iterated, and starts no workers): make it the seeded loader.
    shard.base_dataloader = loader
    shard.dl_state_dict = loader.state_dict()
    shard._is_accelerate_prepared = True
    if shard not in accelerator._dataloaders:
        accelerator._dataloaders.append(shard)
    return shard


@functools.cache
def _shard_class() -> type:
    """``DataLoaderShard`` with the seeded loader's epochs, resume state and global batch.

    ``DataLoaderShard`` counts epochs in ``iteration`` and pushes them to the sampler before
    every epoch (``set_epoch(self.iteration)``); the seeded loader counts its own (and resumes
    into a saved epoch), so only an epoch the user sets is forwarded. ``total_batch_size`` is
    the global batch, so ``GradientState.remainder`` (the real samples of a padded last batch,
    which ``gather_for_metrics`` keeps) is right.
    """
    from accelerate.data_loader import DataLoaderShard

    class SeededDataLoaderShard(DataLoaderShard):  # type: ignore[misc]
        def set_epoch(self, epoch: int) -> None:
            if epoch != self.iteration:  # type: ignore[has-type]
                self.base_dataloader.set_epoch(epoch)
            self.iteration = epoch

        def load_state_dict(self, state_dict: Any) -> None:
            self.base_dataloader.load_state_dict(state_dict)
            self.iteration = int(state_dict["epoch"])

        @property
        def total_batch_size(self) -> int:
            loader = self.base_dataloader
            sampler = loader.sampler
            if isinstance(sampler, WorldInvariantSampler):
                return sampler.global_batch_size
            return int(loader.batch_size or 1) * int(getattr(sampler, "num_replicas", 1))

        @property
        def total_dataset_length(self) -> int:
            return len(self.base_dataloader.dataset)

    return SeededDataLoaderShard
