"""Note 000 reproduced: a continuous-deformation dataset whose ``theta`` is replaced per task.

Each task warps every image with a new affine matrix ``theta`` (2, 3). Note 000 kept ``theta``
in a plain attribute and, after a pickling test, let DataLoader workers load the dataset. But
``set_theta`` runs in the main process after the workers exist: a persistent worker keeps the
``theta`` it started with, and every later task trains on the first task's deformation.

This script trains a tiny classifier over several tasks with ONE DataLoader built once
(persistent workers) and compares, for every batch, the images the workers produced with the
images ``num_workers=0`` produces for the current task:

* ``--mode naive``: ``theta`` a plain attribute, replaced per task: stale batches.
* ``--mode shared``: ``theta`` in a ``wellfed.SharedState``; each sample also carries the
  state version it was made with, which the loop checks against the version ``update``
  returned. No stale batch, under fork, spawn or forkserver.

Usage::

    python examples/note000_continuous_deformation.py
    python examples/note000_continuous_deformation.py --mode shared --start-method forkserver

Exit status: 0 when the shared mode produced no stale batch (1 otherwise).
"""

from __future__ import annotations

import argparse
import math
import sys
import textwrap
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

import wellfed

N_SAMPLES = 256
SIZE = 12  # image height and width, pixels
N_CLASSES = 4


def make_images(n: int = N_SAMPLES, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 1, H, W) float32 images (a class prototype plus noise) and (N,) int64 labels."""
    g = torch.Generator().manual_seed(seed)
    prototypes = torch.rand(N_CLASSES, 1, SIZE, SIZE, generator=g)
    labels = torch.randint(0, N_CLASSES, (n,), generator=g)
    return prototypes[labels] + 0.1 * torch.randn(n, 1, SIZE, SIZE, generator=g), labels


def theta_for_task(task: int) -> torch.Tensor:
    """(2, 3) affine matrix of ``task``: rotation by 0.4 rad per task, slight zoom and shift."""
    a, s = 0.4 * task, 1.0 + 0.05 * task
    return torch.tensor(
        [
            [s * math.cos(a), -s * math.sin(a), 0.05 * task],
            [s * math.sin(a), s * math.cos(a), -0.05 * task],
        ],
        dtype=torch.float32,
    )


def deform(image: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Warp one (1, H, W) image with a (2, 3) affine matrix (bilinear, zero padding)."""
    grid = F.affine_grid(theta.unsqueeze(0), [1, *image.shape], align_corners=False)
    return F.grid_sample(image.unsqueeze(0), grid, align_corners=False)[0]


class ContinuousDeformationDataset(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """The note's dataset: ``theta`` is a plain attribute that ``set_theta`` replaces."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images, self.labels = images, labels
        self.theta = theta_for_task(0)

    def set_theta(self, theta: torch.Tensor) -> int:
        self.theta = theta
        return 0

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return deform(self.images[i], self.theta), self.labels[i]


class SharedContinuousDeformationDataset(Dataset[tuple[torch.Tensor, torch.Tensor, int]]):
    """The same dataset with ``theta`` in a SharedState; samples carry the version they used."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images, self.labels = images, labels
        self.state = wellfed.SharedState(theta=theta_for_task(0))

    def set_theta(self, theta: torch.Tensor) -> int:
        return self.state.update(theta=theta)  # the new version

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        snap = self.state.read()
        return deform(self.images[i], snap["theta"]), self.labels[i], snap.version


def train(
    dataset: ContinuousDeformationDataset | SharedContinuousDeformationDataset,
    *,
    tasks: int,
    workers: int,
    start_method: str,
) -> tuple[int, int, list[tuple[float, float]]]:
    """Train over ``tasks`` tasks with one loader.

    Returns:
        (stale batches, batches, per task (accuracy on the images trained on, accuracy on the
        task's real images)): the two differ where the workers served stale images.
    """
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(SIZE * SIZE, N_CLASSES))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loader = DataLoader(
        dataset,
        batch_size=32,
        num_workers=workers,
        persistent_workers=workers > 0,
        multiprocessing_context=start_method if workers > 0 else None,
        timeout=60 if workers > 0 else 0,
    )
    reference = DataLoader(dataset, batch_size=32, num_workers=0)
    stale = total = 0
    version = 1
    per_task: list[tuple[float, float]] = []
    for task in range(tasks):
        if task > 0:
            version = dataset.set_theta(theta_for_task(task))
        correct = seen = correct_real = 0
        for batch, ref in zip(loader, reference, strict=False):
            images, labels = batch[0], batch[1]
            total += 1
            bad = not torch.equal(images, ref[0])
            if len(batch) == 3:  # shared: the version each sample was made with
                bad = bad or bool((batch[2] != version).any())
            stale += int(bad)
            with torch.no_grad():  # the same model on this task's real images
                correct_real += int((model(ref[0]).argmax(1) == labels).sum())
            logits = model(images)
            loss = F.cross_entropy(logits, labels)
            opt.zero_grad()
            loss.backward()
            opt.step()
            correct += int((logits.argmax(1) == labels).sum())
            seen += len(labels)
        trained, real = correct / seen, correct_real / seen
        per_task.append((trained, real))
        on_real = f" (on task {task}'s real images: {real:.1%})" if correct != correct_real else ""
        print(f"  task {task}: accuracy {trained:6.1%}{on_real}, stale so far {stale}/{total}")
    return stale, total, per_task


def explain(naive: list[tuple[float, float]], shared: list[tuple[float, float]]) -> str:
    """Why the fixed (shared) run shows a lower accuracy, from both runs' own figures."""
    last = len(naive) - 1
    stale_acc, real_acc = naive[last]
    fixed_acc = shared[last][0]
    head = (
        "why the fixed run shows the lower accuracy"
        if fixed_acc < stale_acc
        else "the two runs' accuracies compared"
    )
    return textwrap.fill(
        f"{head}: the naive workers kept serving task 0's deformation, images the model had "
        f"already learned, so on task {last} it scored {stale_acc:.1%} on those stale images "
        f"but {real_acc:.1%} on the task's real ones. The shared run trained on the real "
        f"images ({fixed_acc:.1%}; each new deformation starts out unfamiliar). Compare "
        f"{real_acc:.1%} with {fixed_acc:.1%}, not {stale_acc:.1%}.",
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
    images, labels = make_images(args.samples or N_SAMPLES)
    shared_stale = 0
    figures: dict[str, list[tuple[float, float]]] = {}
    for mode in ("naive", "shared") if args.mode == "both" else (args.mode,):
        print(f"{mode}: {args.tasks} tasks, {args.workers} persistent {args.start_method} workers")
        if mode == "naive":
            stale, total, figures[mode] = train(
                ContinuousDeformationDataset(images, labels),
                tasks=args.tasks,
                workers=args.workers,
                start_method=args.start_method,
            )
        else:
            ds = SharedContinuousDeformationDataset(images, labels)
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
