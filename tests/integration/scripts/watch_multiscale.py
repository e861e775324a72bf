"""Multi-scale training as PyTorch-YOLOv3's users write it: the loop sets ``dataset.img_size``
every 5 batches while 2 workers hold copies of the dataset (for the ``wellfed watch`` tests)."""

from __future__ import annotations

import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))  # the repo root: tests.helpers_watch

from tests.helpers_watch import MultiScaleDataset
from torch.utils.data import DataLoader

if __name__ == "__main__":
    dataset = MultiScaleDataset(n=96)
    loader = DataLoader(dataset, batch_size=4, num_workers=2, timeout=60)
    # seeded (512, 512, 320, 448): unseeded, all 4 draws were 416, the workers' size, 1 in 10^4
    rng = random.Random(0)
    for i, _batch in enumerate(loader):
        if i and i % 5 == 0:
            dataset.img_size = rng.choice(range(320, 609, 32))
        time.sleep(0.005)  # the step
