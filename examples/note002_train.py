"""Note 002's training-script setup, done with wellfed: seeded, workers kept, spawn-safe.

Note 002 forced ``num_workers=0`` on Windows and passed a closure as ``worker_init_fn``, which
cannot be pickled under spawn (Windows, macOS) or forkserver (Linux, Python 3.14+). Here the
loaders keep their workers under spawn, the batches are the same as with ``num_workers=0``,
and the check at the end proves it.

Run:
    python examples/note002_train.py
"""

from __future__ import annotations

import random

import numpy as np
import torch
from torch.utils.data import Dataset, random_split

import wellfed


class NoisyTiles(Dataset[tuple[torch.Tensor, int]]):
    """A stand-in for note 002's tile dataset: random crops and noise from all three RNGs."""

    def __init__(self, n: int = 64) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        tile = torch.full((3, 8, 8), float(index))
        top, left = random.randint(0, 4), int(np.random.randint(0, 4))
        tile = tile[:, top : top + 4, left : left + 4]
        tile = tile + 0.1 * torch.randn(tile.shape)  # torch's global RNG
        if wellfed.sample_rng().random() < 0.5:  # a per-sample numpy Generator
            tile = tile.flip(-1)
        return tile, index % 2


def worker_init_fn(worker_id: int) -> None:
    """Module level, so spawn can pickle it (note 002's closure could not be).

    Seeding here is no longer needed: wellfed seeds every sample. Keep such a function only
    for per-worker setup (opening files, limiting threads).
    """
    torch.set_num_threads(1)


def main() -> int:
    """Build note 002's train/val loaders and check that they are reproducible."""
    wellfed.set_seed(42)  # for the model and the training loop; loaders have their own seed
    full = NoisyTiles(64)
    train_set, val_set = random_split(
        full, [0.75, 0.25], generator=torch.Generator().manual_seed(42)
    )

    def make_train(**overrides: object) -> torch.utils.data.DataLoader:
        kwargs: dict[str, object] = {
            "batch_size": 8,
            "shuffle": True,
            "num_workers": 2,  # kept on Windows too
            "multiprocessing_context": "spawn",  # what Windows and macOS use
            "worker_init_fn": worker_init_fn,
            "seed": 42,
            "timeout": 120,
        }
        kwargs.update(overrides)
        if kwargs["num_workers"] == 0:
            kwargs.pop("multiprocessing_context", None)
        return wellfed.create_dataloader(train_set, **kwargs)  # type: ignore[arg-type]

    train_loader = make_train()
    val_loader = wellfed.create_dataloader(
        val_set,
        batch_size=8,
        num_workers=1,
        multiprocessing_context="spawn",
        seed=42,
        worker_init_fn=worker_init_fn,
        timeout=120,
    )
    wellfed.print_dataloader_config(train_loader)
    for epoch in range(2):
        seen = sum(len(labels) for _, labels in train_loader)  # epoch 0, then epoch 1
        val = sum(len(labels) for _, labels in val_loader)
        print(f"epoch {epoch}: {seen} training samples, {val} validation samples")
    del train_loader, val_loader

    report = wellfed.verify_reproducibility(
        lambda **kw: make_train(**kw), epochs=2, num_workers=(0, 2), start_methods=["spawn"]
    )
    print("reproducible:", report.reproducible)
    return 0 if report.reproducible else 1


if __name__ == "__main__":  # spawn needs this guard: workers import this file
    raise SystemExit(main())
