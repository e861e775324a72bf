"""Run by tests/integration/test_lightning.py in a fresh interpreter: a real Lightning fit.

Usage: python lightning_fit.py OUT_DIR MODE NUM_WORKERS
MODE "ddp": Trainer(devices=2, strategy="ddp", accelerator="cpu"), 1 epoch; each rank writes
the sample indices it trained on to OUT_DIR/seen_<rank>.json. MODE "reload": one device,
3 epochs, reload_dataloaders_every_n_epochs=1; writes OUT_DIR/epochs.json. Lightning's ddp
strategy starts the other rank by running this file again, so it must be a script.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import lightning as L
import torch

import wellfed


class Indexed(torch.utils.data.Dataset):
    """64 samples: (a float tensor drawn from the per-sample generator, the index)."""

    def __len__(self) -> int:
        return 64

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return torch.rand(1, generator=wellfed.sample_generator()), i


class Recorder(L.LightningModule):
    def __init__(self, out: Path, workers: int) -> None:
        super().__init__()
        self.out, self.workers = out, workers
        self.lin = torch.nn.Linear(1, 1)
        self.seen: dict[int, list[list[float]]] = {}

    def train_dataloader(self) -> torch.utils.data.DataLoader:
        return wellfed.create_dataloader(
            Indexed(), batch_size=4, shuffle=True, seed=42, num_workers=self.workers
        )

    def training_step(self, batch: list[torch.Tensor], _: int) -> torch.Tensor:
        x, i = batch
        rows = [[float(a), float(b)] for a, b in zip(i.tolist(), x[:, 0].tolist(), strict=False)]
        self.seen.setdefault(self.current_epoch, []).extend(rows)
        return self.lin(x).sum() * 0.0

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.0)

    def on_train_end(self) -> None:
        name = f"seen_{self.global_rank}.json" if self.trainer.world_size > 1 else "epochs.json"
        (self.out / name).write_text(json.dumps(self.seen))


def main() -> None:
    out, mode, workers = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    common = dict(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    if mode == "ddp":
        trainer = L.Trainer(devices=2, strategy="ddp", max_epochs=1, **common)
    else:
        trainer = L.Trainer(devices=1, max_epochs=3, reload_dataloaders_every_n_epochs=1, **common)
    trainer.fit(Recorder(out, workers))


if __name__ == "__main__":
    main()
