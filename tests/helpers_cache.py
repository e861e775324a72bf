"""Module-level datasets and fns for the precompute tests (so spawn workers can import them)."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset


class RampDataset(Dataset):
    """n samples; sample i is (float32 (3, side, side) filled with i, label i)."""

    def __init__(self, n: int = 40, side: int = 4) -> None:
        self.n = n
        self.side = side

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return torch.full((3, self.side, self.side), float(index)), index


class DictDataset(RampDataset):
    """Samples as dicts: {"image": ..., "label": ...}."""

    def __getitem__(self, index: int) -> dict[str, Any]:  # type: ignore[override]
        image, label = super().__getitem__(index)
        return {"image": image, "label": label}


class RandomDataset(RampDataset):
    """A random transform: two reads of one index differ."""

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return torch.rand(3, self.side, self.side), index


def double(x: torch.Tensor) -> torch.Tensor:
    """2x + 1, elementwise."""
    return x * 2 + 1


def ragged(x: torch.Tensor) -> list[torch.Tensor]:
    """Per-sample outputs of varying length: sample with value v gets int(v) % 5 + 1 values."""
    return [torch.arange(int(v[0, 0, 0]) % 5 + 1, dtype=torch.float32) * v[0, 0, 0] for v in x]


def shape_changes_at_20(x: torch.Tensor) -> torch.Tensor:
    """Returns (B, 3) until a batch holds sample 20, then (B, 4)."""
    width = 4 if bool((x[:, 0, 0, 0] >= 20).any()) else 3
    return x[:, 0, 0, :1].repeat(1, width)


def raises_on_13(x: torch.Tensor) -> torch.Tensor:
    """Raises ValueError when a batch holds sample 13."""
    if bool((x[:, 0, 0, 0] == 13).any()):
        raise ValueError("bad pixel (test)")
    return x * 2


def gated_double(x: torch.Tensor) -> torch.Tensor:
    """double(), but a batch holding a sample >= 12 waits until the file named by the
    environment variable WELLFED_TEST_GATE exists (the test opens the gate). With batches
    of 4 and 8 rows per shard, shard 0 is committed and shard 1 half-written (its temporary
    directory holds samples 8-11) while the run is held."""
    if bool((x[:, 0, 0, 0] >= 12).any()):
        gate = Path(os.environ["WELLFED_TEST_GATE"])
        while not gate.exists():  # the child waits on the test, never the test on a sleep
            time.sleep(0.01)
    return double(x)


class SlowDouble:
    """double(), sleeping delay_s per batch (so a test can kill the run mid-way)."""

    def __init__(self, delay_s: float = 0.05) -> None:
        self.delay_s = delay_s

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(self.delay_s)
        return double(x)


class WhereDouble:
    """double(), sleeping delay_s per batch, that tells where it runs: with ``record_dir``, each
    process calling it writes ``record_dir/<pid>.node`` holding its Ray node id (so a test can
    kill the node and the process that host the fn actor). Neither argument is part of the
    store's fingerprint (its qualified name is)."""

    def __init__(self, delay_s: float = 0.0, record_dir: str | None = None) -> None:
        self.delay_s = delay_s
        self.record_dir = record_dir

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.record_dir is not None:
            path = Path(self.record_dir) / f"{os.getpid()}.node"
            if not path.exists():
                import ray

                tmp = path.with_suffix(".tmp")
                tmp.write_text(ray.get_runtime_context().get_node_id())
                tmp.replace(path)  # readers never see a partial id
        time.sleep(self.delay_s)
        return double(x)


class TinyNet(torch.nn.Module):
    """A 3->3 conv with fixed weights (seed 0)."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 3, 3, padding=1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=g))
            self.conv.bias.copy_(torch.randn(self.conv.bias.shape, generator=g))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class UnevenNet(TinyNet):
    """TinyNet that sleeps 30 ms on a batch starting at a multiple of 8 (0, 8, ...), so that
    batches run at once finish out of order."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if int(x[0, 0, 0, 0]) % 8 == 0:
            time.sleep(0.03)
        return self.conv(x)


class RaisingNet(TinyNet):
    """TinyNet that raises ValueError on a batch holding sample 13."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(raises_on_13(x))


def store_arrays(path: str | Path) -> dict[str, np.ndarray]:
    """Every .npy file of a store, concatenated per file name across shards (for equality)."""
    root = Path(path)
    out: dict[str, list[np.ndarray]] = {}
    for shard in sorted(root.glob("shard-*")):
        for f in sorted(shard.glob("*.npy")):
            out.setdefault(f.name, []).append(np.load(f, allow_pickle=False))
    return {k: np.concatenate(v) if v[0].ndim else np.stack(v) for k, v in out.items()}


def store_digest(path: str | Path) -> dict[str, str]:
    """sha256 of every file of a store, by relative path (byte-for-byte comparison)."""
    root = Path(path)
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def run_slow_precompute(
    out_dir: str,
    n: int = 48,
    delay_s: float = 0.05,
    batches_per_shard: int = 1,
    fn_concurrency: int = 1,
) -> None:
    """The job the kill -9 test interrupts and reruns: batches of 4, ``batches_per_shard``
    of them per shard, fn on ``fn_concurrency`` batches at once."""
    from wellfed.cache import precompute

    precompute(
        RampDataset(n),
        SlowDouble(delay_s),
        out_dir,
        batch_size=4,
        num_workers=0,
        device="cpu",
        shard_bytes=batches_per_shard * 4 * (3 * 4 * 4 * 4 + 8),
        fn_concurrency=fn_concurrency,
    )


class BatchNormNet(TinyNet):
    """TinyNet plus BatchNorm2d in eval mode: its ``num_batches_tracked`` buffer is 0-dim."""

    def __init__(self) -> None:
        super().__init__()
        self.bn = torch.nn.BatchNorm2d(3).eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


class ToSmallTensor:
    """PIL image -> float32 (3, 16, 16): a deterministic transform for an image source."""

    def __call__(self, image: Any) -> torch.Tensor:
        small = image.convert("RGB").resize((16, 16))
        return torch.from_numpy(np.array(small, dtype=np.uint8)).permute(2, 0, 1).float()


def image_folder_source(root: str) -> Any:
    """A deterministic ImageFolder source for precompute (no random augmentation)."""
    from wellfed.workloads import ImageFolderDataset

    return ImageFolderDataset(root, ToSmallTensor())


#: ``--fn tests.helpers_cache:slow_where_double``: WhereDouble at 0.5 s per batch (the CLI
#: kill test's fn; its store equals one built with ``WhereDouble()``).
slow_where_double = WhereDouble(delay_s=0.5)
