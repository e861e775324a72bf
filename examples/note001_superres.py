"""Note 001, option 2: precompute a super-resolution model's outputs, train from them with workers.

The user's note (``../shared/seeds/001_*.txt``) kept a CUDA super-resolution model inside the
Dataset, so ``__getitem__`` ran the model one sample at a time and the DataLoader had to use
``num_workers=0`` (about 2.2 it/s). Its option 2, "pre-compute the outputs to disk, then load
them with workers", was never built. Here it is, on real photos:

* the source: the hymenoptera photos (``../shared/data/hymenoptera_data``, train + val; the
  photos shipped with wellfed when absent), decoded and downscaled to 56x56 (a "very low
  resolution" input, as in the note);
* the model: an ESPCN-sized network (Shi et al. 2016: conv 5x5 -> 64, conv 3x3 -> 32,
  conv 3x3 -> 3 * r^2, pixel shuffle; r = 2, so 112x112 outputs like the note's) with random
  but fixed weights (seed 0): no download is possible here, and the cost, not the quality,
  is what matters;
* (a) the note's design: the model inside ``__getitem__``, ``num_workers=0``;
* (b) ``wellfed.precompute`` once, then ``wellfed.CachedDataset`` with worker processes;
* (c) the main-process form (issue 17): worker processes load the low-resolution photos,
  and the model runs once per batch in the main process, on ``--device``, as the transform of
  ``wellfed.to_device`` (``BatchTransform([model], key=0)``, under ``torch.no_grad()``),
  while the workers load the next batches. No store; the model's outputs are fresh each
  epoch (a model that changes during training, or random augmentation before it, stays
  possible).

Run:
    python examples/note001_superres.py                # ~1 minute on 2 CPUs
    python examples/note001_superres.py --device cuda  # where there is a GPU
The published comparison (tuned workers, break-even epochs) is
``benchmarks/precompute_superres.py``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

HYMENOPTERA = Path(__file__).resolve().parents[2] / "shared" / "data" / "hymenoptera_data"
LOW_RES = 56  # input side, pixels; the output is SCALE times larger (112, the note's size)
SCALE = 2


class ESPCN(nn.Module):
    """Efficient sub-pixel CNN (Shi et al., CVPR 2016), x2; random fixed weights (seed 0).

    Input float32 (B, 3, H, W) in [0, 1]; output float32 (B, 3, 2H, 2W).
    """

    def __init__(self, scale: int = SCALE, seed: int = 0) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 64, 5, padding=2),
            nn.Tanh(),
            nn.Conv2d(64, 32, 3, padding=1),
            nn.Tanh(),
            nn.Conv2d(32, 3 * scale * scale, 3, padding=1),
            nn.PixelShuffle(scale),
        )
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def photo_paths(root: Path | None = None) -> list[tuple[str, int]]:
    """(path, label) of every photo: hymenoptera train + val (label: ants 0, bees 1)."""
    if root is None:
        root = HYMENOPTERA
    if root.is_dir():
        out = []
        for split in ("train", "val"):
            for label, cls in enumerate(("ants", "bees")):
                out += [(str(p), label) for p in sorted((root / split / cls).glob("*.jpg"))]
        return out
    from wellfed.workloads import PHOTOS_DIR, ImageFolderDataset

    return list(ImageFolderDataset(PHOTOS_DIR, repeat=1).samples)


class LowResPhotos(Dataset):
    """The source: photo i downscaled to (3, 56, 56) float32 in [0, 1], with its label."""

    def __init__(self, root: Path | None = None) -> None:
        self.samples = photo_paths(root)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        path, label = self.samples[index]
        with Image.open(path) as im:
            im = im.convert("RGB")
            im.draft("RGB", (LOW_RES * 2, LOW_RES * 2))  # JPEG: decode at reduced size
            small = im.resize((LOW_RES, LOW_RES), Image.BILINEAR)
        x = torch.frombuffer(bytearray(small.tobytes()), dtype=torch.uint8)
        return x.view(LOW_RES, LOW_RES, 3).permute(2, 0, 1).float().div_(255), label


class NaiveSRDataset(Dataset):
    """Note 001's design: the dataset holds the model and runs it per sample (num_workers=0)."""

    def __init__(self, source: LowResPhotos, model: nn.Module, device: str = "cpu") -> None:
        self.source = source
        self.model = model.to(device).eval()
        self.device = device

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        x, label = self.source[index]
        with torch.inference_mode():
            y = self.model(x.unsqueeze(0).to(self.device))[0].cpu()
        return y, label


def epoch_s(loader: Any) -> float:
    """Wall seconds to iterate one epoch of a loader (the consumer does nothing)."""
    t0 = time.perf_counter()
    for _ in loader:
        pass
    return time.perf_counter() - t0


def main_process_form(
    source: LowResPhotos, model: nn.Module, device: str, batch_size: int, num_workers: int
) -> tuple[float, float]:
    """(c): workers load, the model runs per batch in the main process. (first, steady) s/epoch.

    The model is on ``device`` in eval mode; ``wellfed.to_device`` copies each batch there
    (pinned, on a side stream, with a GPU) and runs the model on it, once per batch.
    """
    import wellfed
    from wellfed.device import BatchTransform

    model = model.to(device).eval()
    loader = DataLoader(
        source,
        batch_size=batch_size,
        shuffle=True,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        pin_memory=device.startswith("cuda"),
        timeout=120 if num_workers else 0,
    )
    batches = wellfed.to_device(loader, device, transform=BatchTransform([model], key=0))

    def one_epoch() -> float:
        t0 = time.perf_counter()
        for _images, _labels in batches:
            pass
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    return one_epoch(), one_epoch()


def main(argv: Sequence[str] | None = None) -> int:
    """Compare (a) the model in __getitem__, (b) precompute + CachedDataset and (c) the model
    per batch in the main process; print the three."""
    import wellfed

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument(
        "--out", type=Path, default=None, help="store directory (default: a temp dir)"
    )
    args = parser.parse_args(argv)
    source = LowResPhotos()
    model = ESPCN()
    naive = DataLoader(
        NaiveSRDataset(source, model, args.device), batch_size=args.batch_size, num_workers=0
    )
    a = epoch_s(naive)
    print(
        f"(a) model in __getitem__, num_workers=0: {a:.2f} s/epoch "
        f"({len(source) / a:.0f} samples/s)"
    )
    out = args.out or Path(tempfile.mkdtemp(prefix="note001-")) / "sr"
    t0 = time.perf_counter()
    cache = wellfed.precompute(source, model, out, batch_size=args.batch_size, device=args.device)
    pre = time.perf_counter() - t0
    print(f"precompute: {pre:.2f} s for {len(cache)} samples -> {cache}")
    loader = DataLoader(
        cache,
        batch_size=args.batch_size,
        shuffle=True,
        num_workers=args.num_workers,
        persistent_workers=args.num_workers > 0,
        timeout=120 if args.num_workers else 0,
    )
    first = epoch_s(loader)
    b = epoch_s(loader)
    print(
        f"(b) CachedDataset, {args.num_workers} workers: {b:.3f} s/epoch "
        f"(first epoch {first:.3f} s)"
    )
    print(
        f"speed-up per epoch: {a / b:.0f}x; precompute pays for itself after "
        f"{pre / (a - b):.2f} epochs"
    )
    first_c, c = main_process_form(source, model, args.device, args.batch_size, args.num_workers)
    print(
        f"(c) model per batch in the main process (wellfed.to_device), {args.num_workers} "
        f"workers: {c:.3f} s/epoch (first epoch {first_c:.3f} s); {a / c:.1f}x (a), "
        f"{c / b:.1f}x the time of (b), no store"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
