"""Note 000 reproduced: a drifting-values dataset whose target ``values`` change per task.

Note 000 removed a ``num_workers=0`` restriction after checking that the dataset pickles. It
does, and workers start; but the training loop changes ``dataset.values`` after the workers
exist. With persistent workers (built once, reused every epoch), a worker keeps the copy it
started with: under fork every task after the first trains on the first task's targets.

This script trains a tiny regression model over several tasks with ONE DataLoader built once
(persistent workers) and, for every batch, compares what the workers produced with the batch
``num_workers=0`` produces for the current task:

* ``--mode naive``: the note's dataset, ``values`` a plain attribute: stale batches.
* ``--mode shared``: the same dataset with ``values`` in a ``wellfed.SharedState``: no stale
  batch, under fork, spawn or forkserver.

Usage::

    python examples/note000_drifting_values.py                 # both modes, fork, 2 workers
    python examples/note000_drifting_values.py --mode shared --start-method spawn --tasks 5

Exit status: 0 when the shared mode produced no stale batch (1 otherwise).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import torch
from torch.utils.data import DataLoader, Dataset

import wellfed

N_SAMPLES = 512
N_FEATURES = 16


def make_inputs(n: int = N_SAMPLES, d: int = N_FEATURES, seed: int = 0) -> torch.Tensor:
    """(N, D) float32 inputs: N samples of D features, fixed for all tasks."""
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


def values_for_task(x: torch.Tensor, task: int) -> torch.Tensor:
    """(N,) float32 targets of ``task``: a linear function of x whose weights drift per task."""
    g = torch.Generator().manual_seed(1000 + task)
    w = torch.randn(x.shape[1], generator=g)
    return x @ w + 0.5 * task


class DriftingValuesDataset(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """The note's dataset: ``values`` is a plain attribute that the training loop replaces."""

    def __init__(self, x: torch.Tensor) -> None:
        self.x = x
        self.values = values_for_task(x, 0)

    def set_task(self, task: int) -> None:
        self.values = values_for_task(self.x, task)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[i], self.values[i]


class SharedDriftingValuesDataset(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """The same dataset with ``values`` in a SharedState that every worker reads."""

    def __init__(self, x: torch.Tensor) -> None:
        self.x = x
        self.state = wellfed.SharedState(values=values_for_task(x, 0), task=0)

    def set_task(self, task: int) -> None:
        self.state.update(values=values_for_task(self.x, task), task=task)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        snap = self.state.read()  # one consistent version; zero-copy views
        return self.x[i], snap["values"][i]


def train(
    dataset: DriftingValuesDataset | SharedDriftingValuesDataset,
    *,
    tasks: int,
    workers: int,
    start_method: str,
    epochs_per_task: int = 1,
) -> tuple[int, int]:
    """Train over ``tasks`` tasks with one loader; return (stale batches, batches)."""
    torch.manual_seed(0)
    model = torch.nn.Linear(N_FEATURES, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    loader = DataLoader(
        dataset,
        batch_size=64,
        num_workers=workers,
        persistent_workers=workers > 0,
        multiprocessing_context=start_method if workers > 0 else None,
        timeout=60 if workers > 0 else 0,
    )
    reference = DataLoader(dataset, batch_size=64, num_workers=0)
    stale = total = 0
    for task in range(tasks):
        if task > 0:
            dataset.set_task(task)
        for _ in range(epochs_per_task):
            losses = []
            for (x, y), (_, y_ref) in zip(loader, reference, strict=False):
                total += 1
                stale += int(not torch.equal(y, y_ref))
                loss = torch.nn.functional.mse_loss(model(x).squeeze(1), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
                losses.append(loss.item())
        print(f"  task {task}: loss {sum(losses) / len(losses):8.3f}, stale so far {stale}/{total}")
    return stale, total


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=["naive", "shared", "both"], default="both")
    parser.add_argument("--tasks", type=int, default=4)
    parser.add_argument("--samples", type=int, default=None, help="dataset size")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--start-method", default="fork", choices=["fork", "spawn", "forkserver"])
    args = parser.parse_args(argv)
    x = make_inputs(args.samples or N_SAMPLES)
    shared_stale = 0
    for mode in ("naive", "shared") if args.mode == "both" else (args.mode,):
        print(f"{mode}: {args.tasks} tasks, {args.workers} persistent {args.start_method} workers")
        if mode == "naive":
            stale, total = train(
                DriftingValuesDataset(x),
                tasks=args.tasks,
                workers=args.workers,
                start_method=args.start_method,
            )
        else:
            ds = SharedDriftingValuesDataset(x)
            try:
                stale, total = train(
                    ds, tasks=args.tasks, workers=args.workers, start_method=args.start_method
                )
            finally:
                ds.state.close()
            shared_stale = stale
        print(f"{mode}: {stale} of {total} batches differ from the num_workers=0 batches\n")
    return 1 if shared_stale else 0


if __name__ == "__main__":
    sys.exit(main())
