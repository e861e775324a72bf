"""The watch integrations inside real frameworks: Lightning, Transformers, Accelerate.

Each fit runs 2 epochs of 6 batches (48 samples, batch 8) of a dataset that sleeps 1 ms per
sample, so every epoch has 1 warm-up step and 5 measured steps of 8 samples.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

import wellfed
from tests.helpers_watch import DictRegressor, SleepyDataset, SleepyDicts

pytestmark = [pytest.mark.timeout(180)]

EPOCH_STEPS, BATCH = 5, 8


def _check(stats: wellfed.WatchStats) -> None:
    assert stats.steps == EPOCH_STEPS
    assert stats.samples == EPOCH_STEPS * BATCH
    assert stats.warmup_steps == 1
    assert stats.warmup_samples == BATCH
    assert stats.data_bound_fraction is not None
    assert 0.0 <= stats.data_bound_fraction <= 1.0
    assert 0.0 < stats.data_wait_s <= stats.step_s


@pytest.mark.filterwarnings(
    # Lightning's advice for a CPU-only toy fit (few workers, no GPU used, the log interval
    # longer than the epoch): not what the test is about
    "ignore::lightning.fabric.utilities.warnings.PossibleUserWarning",
    "ignore:.*GPU available but not used.*:UserWarning",
    "ignore:.*does not have many workers.*",
    "ignore:.*smaller than the logging interval.*",
    # Lightning 2.6 on torch 2.13 calls a deprecated torch.utils._pytree API
    "ignore:.*LeafSpec.*:FutureWarning",
)
def test_lightning_fit_logs_the_stats_every_epoch(tmp_path: Path) -> None:
    lightning = pytest.importorskip("lightning")
    from wellfed.integrations.lightning import WatchCallback, _ProfilerTap

    class Tiny(lightning.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.linear = torch.nn.Linear(4, 1)

        def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], _: int) -> torch.Tensor:
            x, y = batch
            return torch.nn.functional.mse_loss(self.linear(x).squeeze(1), y.float())

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=1e-4)

        def train_dataloader(self) -> DataLoader:
            return DataLoader(SleepyDataset(48, ms_per_sample=1.0), batch_size=BATCH)

    callback = WatchCallback()
    trainer = lightning.Trainer(
        max_epochs=2,
        accelerator="cpu",
        devices=1,
        logger=lightning.pytorch.loggers.CSVLogger(tmp_path, name="run"),
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        callbacks=[callback],
    )
    trainer.fit(Tiny())
    assert len(callback.history) == 2
    for stats in callback.history:
        _check(stats)
    assert not isinstance(trainer.profiler, _ProfilerTap)  # given back
    rows = list(csv.DictReader(next(tmp_path.rglob("metrics.csv")).read_text().splitlines()))
    logged = [r for r in rows if r.get("wellfed/data_bound_fraction")]
    assert [int(r["epoch"]) for r in logged] == [0, 1]
    for row, stats in zip(logged, callback.history, strict=True):
        assert float(row["wellfed/data_bound_fraction"]) == pytest.approx(
            stats.data_bound_fraction, rel=1e-5
        )
        assert float(row["wellfed/steps"]) == EPOCH_STEPS


def _hf_trainer(tmp_path: Path, **kwargs: object) -> object:
    transformers = pytest.importorskip("transformers")
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path),
        num_train_epochs=2,
        per_device_train_batch_size=BATCH,
        report_to="none",
        use_cpu=True,
        save_strategy="no",
        logging_strategy="no",
        disable_tqdm=True,
        dataloader_num_workers=0,
        learning_rate=1e-4,
    )
    return transformers.Trainer(
        model=DictRegressor(), args=args, train_dataset=SleepyDicts(48, 1.0), **kwargs
    )


def test_transformers_trainer_logs_the_stats_every_epoch(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    from wellfed.integrations.transformers import WatchCallback

    trainer = _hf_trainer(tmp_path)
    callback = WatchCallback(trainer)
    trainer.add_callback(callback)  # type: ignore[attr-defined]
    trainer.train()  # type: ignore[attr-defined]
    assert len(callback.history) == 2
    for stats in callback.history:
        _check(stats)
    history = trainer.state.log_history  # type: ignore[attr-defined]
    logged = [e for e in history if "wellfed/data_bound_fraction" in e]
    assert [round(e["epoch"]) for e in logged] == [1, 2]
    for entry, stats in zip(logged, callback.history, strict=True):
        assert entry["wellfed/data_bound_fraction"] == pytest.approx(stats.data_bound_fraction)
        assert entry["wellfed/samples"] == EPOCH_STEPS * BATCH
    # the loader's class has its own __iter__ back
    assert callback._restore is None
    from accelerate.data_loader import DataLoaderShard

    assert DataLoaderShard.__dict__["__iter__"].__qualname__ == "DataLoaderShard.__iter__"


def test_transformers_callback_without_the_trainer_fills_log_history(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    from wellfed.integrations.transformers import WatchCallback

    callback = WatchCallback()
    trainer = _hf_trainer(tmp_path, callbacks=[callback])
    trainer.train()  # type: ignore[attr-defined]
    logged = [
        e
        for e in trainer.state.log_history  # type: ignore[attr-defined]
        if "wellfed/steps" in e
    ]
    assert [e["wellfed/steps"] for e in logged] == [EPOCH_STEPS, EPOCH_STEPS]


def test_accelerate_prepared_loader_watched() -> None:
    accelerate = pytest.importorskip("accelerate")
    accelerator = accelerate.Accelerator(cpu=True)
    model = torch.nn.Linear(4, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4)
    loader = DataLoader(SleepyDataset(48, ms_per_sample=1.0), batch_size=BATCH)
    model, optimizer, prepared = accelerator.prepare(model, optimizer, loader)
    watched = wellfed.watch(prepared, name="train")
    assert len(watched) == 6
    seen, ends = [], []
    for epoch in range(2):
        watched.set_epoch(epoch)
        for x, y in watched:
            loss = torch.nn.functional.mse_loss(model(x).squeeze(1), y.float())
            accelerator.backward(loss)
            optimizer.step()
            optimizer.zero_grad()
            seen.append(y.tolist())
            ends.append(accelerator.gradient_state.end_of_dataloader)
    assert ends == ([False] * 5 + [True]) * 2  # Accelerate's GradientState still sees the end
    assert seen == [list(range(i, i + BATCH)) for i in range(0, 48, BATCH)] * 2
    stats = watched.stats()
    assert stats.name == "train"
    assert stats.steps == 2 * EPOCH_STEPS
    assert stats.epochs == 2
    assert stats.samples == 2 * EPOCH_STEPS * BATCH
