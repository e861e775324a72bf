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
import textwrap
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
) -> tuple[int, int, list[tuple[float, float]]]:
    """Train over ``tasks`` tasks with one loader.

    Returns:
        (stale batches, batches, per task (loss on the batches trained on, loss on the task's
        real targets)): the two losses differ where the workers served stale targets.
    """
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
    per_task: list[tuple[float, float]] = []
    for task in range(tasks):
        if task > 0:
            dataset.set_task(task)
        for _ in range(epochs_per_task):
            losses, real = [], []
            for (x, y), (_, y_ref) in zip(loader, reference, strict=False):
                total += 1
                stale += int(not torch.equal(y, y_ref))
                pred = model(x).squeeze(1)
                loss = torch.nn.functional.mse_loss(pred, y)
                real.append(torch.nn.functional.mse_loss(pred.detach(), y_ref).item())
                opt.zero_grad()
                loss.backward()
                opt.step()
                losses.append(loss.item())
        trained, actual = sum(losses) / len(losses), sum(real) / len(real)
        per_task.append((trained, actual))
        on_real = f" (on task {task}'s real targets: {actual:.3f})" if trained != actual else ""
        print(f"  task {task}: loss {trained:8.3f}{on_real}, stale so far {stale}/{total}")
    return stale, total, per_task


def explain(naive: list[tuple[float, float]], shared: list[tuple[float, float]]) -> str:
    """Why the fixed (shared) run shows a higher loss, from both runs' own figures."""
    last = len(naive) - 1
    stale_loss, real_loss = naive[last]
    fixed_loss = shared[last][0]
    head = (
        "why the fixed run shows the higher loss"
        if fixed_loss > stale_loss
        else "the two runs' losses compared"
    )
    return textwrap.fill(
        f"{head}: the naive workers kept serving task 0's targets, data the model had "
        f"already fit, so on task {last} its loss was {stale_loss:.3f} on those stale targets "
        f"but {real_loss:.3f} on the task's real ones. The shared run trained on the real "
        f"targets ({fixed_loss:.3f}; each new task starts with a high loss). Compare "
        f"{real_loss:.3f} with {fixed_loss:.3f}, not {stale_loss:.3f}.",
        width=79,
    )


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
    figures: dict[str, list[tuple[float, float]]] = {}
    for mode in ("naive", "shared") if args.mode == "both" else (args.mode,):
        print(f"{mode}: {args.tasks} tasks, {args.workers} persistent {args.start_method} workers")
        if mode == "naive":
            stale, total, figures[mode] = train(
                DriftingValuesDataset(x),
                tasks=args.tasks,
                workers=args.workers,
                start_method=args.start_method,
            )
        else:
            ds = SharedDriftingValuesDataset(x)
            try:
                stale, total, figures[mode] = train(
                    ds, tasks=args.tasks, workers=args.workers, start_method=args.start_method
                )
            finally:
                ds.state.close()
            shared_stale = stale
        print(f"{mode}: {stale} of {total} batches differ from the num_workers=0 batches\n")
    if len(figures) == 2 and args.tasks > 1:
        print(explain(figures["naive"], figures["shared"]))
    return 1 if shared_stale else 0


if __name__ == "__main__":
    sys.exit(main())
