"""A training loop over the built-in workload, for ``wellfed watch`` (docs/watch.md).

The data is wellfed's built-in pipeline (JPEG decode, RandomResizedCrop(224), flip,
normalise over the shipped photos: 320 samples); the step stands for a GPU step of
``--step-ms`` milliseconds (the host waits for the GPU, as at a ``loss.item()``).

Run:
    python examples/watch_builtin.py --num-workers 2 --step-ms 40
    wellfed watch examples/watch_builtin.py --num-workers 0 --step-ms 40
"""

from __future__ import annotations

import argparse
import time

import wellfed
from wellfed.workloads import builtin_dataset

train_set = builtin_dataset()  # module level: `wellfed tune examples/watch_builtin.py:train_set`


def main() -> int:
    """Train (stand-in step) for ``--epochs`` epochs."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--step-ms", type=float, default=40.0)
    args = parser.parse_args()
    loader = wellfed.create_dataloader(
        train_set,
        batch_size=args.batch_size,
        shuffle=True,
        num_workers=args.num_workers,
        seed=0,
        timeout=120 if args.num_workers else 0,
    )
    for epoch in range(args.epochs):
        images = 0
        for batch, _labels in loader:
            images += batch.shape[0]
            time.sleep(args.step_ms / 1e3)  # the GPU step the host waits for
        print(f"epoch {epoch}: {images} images")
    return 0


if __name__ == "__main__":  # spawn workers import this file
    raise SystemExit(main())
