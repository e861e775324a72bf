"""Run by tests/integration/test_world_size.py under torchrun: one rank of a gloo process group.

Usage: torchrun --standalone --nproc-per-node W world_batches.py OUT_DIR GLOBAL_BATCH WORKERS
    MODE [STATE_FILE]

Each rank builds ``wellfed.create_dataloader(Augmented(), batch_size=GLOBAL_BATCH // W,
shuffle=True, seed=7, num_workers=WORKERS)`` and writes what it loaded to
OUT_DIR/rank<R>.pt: a list of (epoch, batch number, indices, augmented values).
MODE "full": epochs 0 and 1. MODE "stop": 3 batches of epoch 0, then rank 0 saves
``loader.state_dict()`` to STATE_FILE. MODE "resume": loads STATE_FILE, then runs to the end of
epoch 1.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist

import wellfed

EPOCHS = 2


class Augmented(torch.utils.data.Dataset):
    """37 samples (not a multiple of any global batch): (index, a random augmentation)."""

    def __len__(self) -> int:
        return 37

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor]:
        return i, torch.rand(3, dtype=torch.float64) + i  # torch's global RNG, seeded per sample


def main() -> None:
    out, global_batch, workers, mode = (
        Path(sys.argv[1]),
        int(sys.argv[2]),
        int(sys.argv[3]),
        sys.argv[4],
    )
    state_file = Path(sys.argv[5]) if len(sys.argv) > 5 else None
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    loader = wellfed.create_dataloader(
        Augmented(),
        batch_size=global_batch // world,
        shuffle=True,
        seed=7,
        num_workers=workers,
        timeout=60 if workers else 0,
    )
    start_epoch = 0
    if mode == "resume":
        assert state_file is not None
        state = torch.load(state_file)
        loader.load_state_dict(state)
        start_epoch = state["epoch"]
    seen: list[tuple[int, int, list[int], torch.Tensor]] = []
    for epoch in range(start_epoch, EPOCHS):
        for number, (index, values) in enumerate(loader):
            seen.append((epoch, number, index.tolist(), values))
            if mode == "stop" and number == 2:
                break
        if mode == "stop":
            if rank == 0:
                assert state_file is not None
                torch.save(loader.state_dict(), state_file)
            break
    torch.save(seen, out / f"rank{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
