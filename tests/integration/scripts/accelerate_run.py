"""Run by tests/integration/test_accelerate.py under torchrun: one process of an Accelerate job.

Usage: torchrun --standalone --nproc-per-node N accelerate_run.py OUT_DIR NUM_WORKERS

Each process builds ``wellfed.create_dataloader(Indexed(), batch_size=4, shuffle=True,
seed=42, num_workers=NUM_WORKERS)``, checks that a bare ``accelerator.prepare(loader)`` refuses
it (WF213), prepares it with ``wellfed.integrations.accelerate.prepare_data_loader`` and then
``accelerator.prepare`` together with a model and optimizer, trains 2 epochs and writes
OUT_DIR/rank<R>.json: {"refused": message, "epochs": [[[index, value], ...] per batch] per
epoch], "last": [end_of_dataloader of the last batch, remainder], "gathered": the number of
rows ``gather_for_metrics`` kept in the last epoch}.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from accelerate import Accelerator

import wellfed
import wellfed.integrations.accelerate as wf_accelerate


class Indexed(torch.utils.data.Dataset):
    """30 samples (not a multiple of the global batch): (a per-sample random value, index)."""

    def __len__(self) -> int:
        return 30

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return torch.rand(1, generator=wellfed.sample_generator()), i


def main() -> None:
    out, workers = Path(sys.argv[1]), int(sys.argv[2])
    accelerator = Accelerator(cpu=True)
    loader = wellfed.create_dataloader(
        Indexed(), batch_size=4, shuffle=True, seed=42, num_workers=workers
    )
    try:
        accelerator.prepare(loader)
        refused = ""
    except wellfed.ConfigError as exc:
        refused = str(exc)
    loader = wf_accelerate.prepare_data_loader(accelerator, loader)
    model = torch.nn.Linear(1, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    model, optimizer, prepared = accelerator.prepare(model, optimizer, loader)
    assert prepared is loader
    epochs = []
    gathered = 0
    last: list[object] = []
    for _ in range(2):
        batches = []
        gathered = 0
        for x, i in prepared:
            loss = model(x).sum() * 0.0
            accelerator.backward(loss)
            optimizer.step()
            batches.append(
                [[int(a), float(b)] for a, b in zip(i.tolist(), x[:, 0].tolist(), strict=True)]
            )
            gathered += len(accelerator.gather_for_metrics(i))
            last = [prepared.end_of_dataloader, prepared.remainder]
        epochs.append(batches)
    result = {"refused": refused, "epochs": epochs, "last": last, "gathered": gathered}
    (out / f"rank{accelerator.process_index}.json").write_text(json.dumps(result))
    accelerator.wait_for_everyone()
    accelerator.end_training()


if __name__ == "__main__":
    main()
