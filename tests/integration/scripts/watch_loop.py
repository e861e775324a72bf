"""A training loop for the ``wellfed watch`` tests: a sleeping loader, a sleeping step.

    python watch_loop.py [--workers N] [--epochs E] [--step-ms S] [--raise-at K] [--exit C]
                         [--forever] [--tag TAG]

--raise-at K raises ValueError at the K-th batch; --exit C ends with sys.exit(C); --forever
loops until interrupted, printing READY once some batches went through.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))  # the repo root: tests.helpers_watch

from tests.helpers_watch import SleepyDataset
from torch.utils.data import DataLoader

DATA = SleepyDataset(n=48, ms_per_sample=1.0)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--step-ms", type=float, default=5.0)
    parser.add_argument("--raise-at", type=int, default=None)
    parser.add_argument("--exit", type=int, default=None)
    parser.add_argument("--forever", action="store_true")
    parser.add_argument("--tag", default="")
    args = parser.parse_args()
    loader = DataLoader(
        DATA, batch_size=8, num_workers=args.workers, timeout=60 if args.workers else 0
    )
    seen = 0
    epoch = 0
    while args.forever or epoch < args.epochs:
        for _x, _y in loader:
            seen += 1
            if args.raise_at is not None and seen >= args.raise_at:
                raise ValueError(f"boom at batch {seen} (test)")
            if args.forever and seen == 8:
                print("READY", flush=True)
            time.sleep(args.step_ms / 1e3)
        epoch += 1
    print(f"done: {seen} batches", flush=True)
    if args.exit is not None:
        sys.exit(args.exit)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
