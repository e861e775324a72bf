"""Zero-argument factories the CLI tests name as TARGETs (``tests.doctor_corpus.targets:...``)."""

from __future__ import annotations

from typing import Any

from torch.utils.data import DataLoader

from tests.doctor_corpus import datasets as d


def clean_loader() -> Any:
    """A clean DataLoader: module-level transforms, two workers."""
    t = d.Compose([d.ToFloat(), d.Normalize(0.5, 2.0)])
    return DataLoader(d.TransformDataset(transform=t), batch_size=2, num_workers=2)


def lambda_dataset() -> Any:
    """A dataset whose transform is a lambda (unpicklable under spawn/forkserver)."""
    return d.TransformDataset(transform=d.Compose([d.Lambda(lambda x: x + 1)]))
