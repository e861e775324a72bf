"""Thread workers (``num_threads``) and batched fetch: same batches, clean shutdown, named failures.

Every loader here is a real SeededDataLoader iterated by real threads; the conftest fixture
fails any test whose thread workers outlive it.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import wellfed
from wellfed.backends import live_threads
from wellfed.errors import ConfigError, SampleError, WorkerTimeoutError
from wellfed.measure import iterate
from wellfed.seeded_loader import SeededDataLoader

pytestmark = pytest.mark.timeout(60)


class SampleGenDataset:
    """Randomness from wellfed.sample_generator() only: reproducible under threads."""

    def __len__(self) -> int:
        return 96

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        time.sleep(0.0005)  # releases the GIL, so threads interleave for real
        return torch.rand(4, generator=wellfed.sample_generator()), index


class RaisesAt(SampleGenDataset):
    def __init__(self, bad: int) -> None:
        self.bad = bad

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if index == self.bad:
            raise ValueError(f"corrupt record {index}")
        return super().__getitem__(index)


class Hangs(SampleGenDataset):
    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if index == 5:
            time.sleep(2.0)
        return super().__getitem__(index)


def _digests(loader: DataLoader) -> list[bytes]:
    from wellfed._digest import batch_digest

    return [batch_digest(b) for b in loader]


def test_a_thread_loader_is_a_dataloader_and_leaves_no_thread() -> None:
    loader = wellfed.create_dataloader(
        SampleGenDataset(), batch_size=8, num_workers=0, num_threads=4
    )
    assert isinstance(loader, DataLoader)
    assert loader.num_threads == 4
    assert loader.num_workers == 0
    assert len(list(loader)) == 12
    assert live_threads() == []


@pytest.mark.parametrize("threads", [1, 3, 8])
def test_seeded_batches_under_threads_equal_the_main_process(threads: int) -> None:
    def build(n: int) -> SeededDataLoader:
        return wellfed.create_dataloader(
            SampleGenDataset(), batch_size=8, shuffle=True, seed=11, num_workers=0, num_threads=n
        )

    serial, threaded = build(0), build(threads)
    for _epoch in range(2):  # epoch 0 and epoch 1 each match
        assert _digests(threaded) == _digests(serial)


def test_resume_under_threads_gives_the_remaining_batches() -> None:
    def build() -> SeededDataLoader:
        return wellfed.create_dataloader(
            SampleGenDataset(), batch_size=8, shuffle=True, seed=3, num_workers=0, num_threads=4
        )

    full = _digests(build())
    loader = build()
    it = iter(loader)
    head = [next(it) for _ in range(5)]
    state = loader.state_dict()
    del it, head
    resumed = build()
    resumed.load_state_dict(state)
    assert _digests(resumed) == full[5:]


def test_stopping_early_stops_the_threads() -> None:
    loader = SeededDataLoader(SampleGenDataset(), batch_size=4, num_threads=6)
    for count, _batch in enumerate(iterate(loader)):
        if count == 2:
            break
    assert live_threads() == []
    it = iter(loader)
    next(it)
    assert len(live_threads()) == 6
    del it  # garbage collection stops them too
    assert live_threads() == []


def test_a_sample_that_raises_is_named_by_index() -> None:
    loader = SeededDataLoader(RaisesAt(37), batch_size=8, num_threads=4, seed=0)
    with pytest.raises(SampleError) as info:
        list(loader)
    err = info.value
    assert err.index == 37
    assert 37 in err.indices
    assert err.code == "WF304"
    assert "sample 37 of RaisesAt" in str(err)
    assert "dataset[37]" in str(err)
    assert isinstance(err.__cause__, ValueError)
    assert live_threads() == []


def test_a_hung_sample_times_out_and_the_threads_end() -> None:
    loader = SeededDataLoader(Hangs(), batch_size=4, num_threads=2, timeout=0.5)
    started = time.monotonic()
    with pytest.raises(WorkerTimeoutError, match="WF303"):
        list(loader)
    assert time.monotonic() - started < 5.0
    assert live_threads() == []


def test_threads_refuse_worker_processes_and_iterable_datasets() -> None:
    with pytest.raises(ConfigError, match="num_threads=2 with num_workers=2"):
        SeededDataLoader(SampleGenDataset(), num_threads=2, num_workers=2)

    class Stream(torch.utils.data.IterableDataset):
        def __iter__(self):  # type: ignore[no-untyped-def]
            return iter(range(4))

    with pytest.raises(ConfigError, match="map-style"):
        list(SeededDataLoader(Stream(), num_threads=2))


def test_batched_fetch_gives_the_per_index_batches() -> None:
    data = TensorDataset(torch.arange(600.0).reshape(300, 2), torch.arange(300))
    for seed in (None, 7):
        per_index = SeededDataLoader(data, batch_size=64, shuffle=seed is not None, seed=seed)
        batched = SeededDataLoader(
            data, batch_size=64, shuffle=seed is not None, seed=seed, batched_fetch=True
        )
        threaded = SeededDataLoader(
            data,
            batch_size=64,
            shuffle=seed is not None,
            seed=seed,
            batched_fetch=True,
            num_threads=3,
        )
        if seed is None:
            assert _digests(batched) == _digests(per_index) == _digests(threaded)
        else:
            assert _digests(batched) == _digests(threaded)
            assert sorted(torch.cat([b[1] for b in batched]).tolist()) == list(range(300))


def test_batched_fetch_refuses_a_custom_collate() -> None:
    data = TensorDataset(torch.zeros(10, 2))
    with pytest.raises(ConfigError, match="batched_fetch"):
        SeededDataLoader(data, batch_size=4, batched_fetch=True, collate_fn=lambda b: b)


def test_batched_fetch_probe() -> None:
    from wellfed.backends import batched_fetch_matches

    data = TensorDataset(torch.arange(20.0).reshape(10, 2), torch.arange(10))
    ok, why = batched_fetch_matches(data, range(4))
    assert ok
    assert "checked live" in why
    ok, why = batched_fetch_matches(SampleGenDataset(), range(4))
    assert not ok


def test_threads_run_concurrently() -> None:
    """Several fetches are in flight at once (a barrier only opens with 4 waiting)."""
    barrier = threading.Barrier(4, timeout=10)

    class Meets(SampleGenDataset):
        def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
            if index < 4:
                barrier.wait()
            return super().__getitem__(index)

    loader = SeededDataLoader(Meets(), batch_size=1, num_threads=4)
    assert len(list(loader)) == 96


@pytest.mark.workers
def test_auto_after_tune_builds_the_measured_backend() -> None:
    """tune (real trials) stores its pick; create_dataloader(num_workers='auto') builds it."""
    from wellfed.target import spec_from_object
    from wellfed.tune import tune

    dataset = SampleGenDataset()
    spec = spec_from_object(dataset).with_batch_size(8)
    result = tune(spec, budget_s=40, max_workers=1, max_threads=4, measure_s=0.3)
    assert result.stored_path is not None
    assert result.probes["threads"]["safe"] is True
    rec = result.recommended
    assert rec is not None
    loader = wellfed.create_dataloader(dataset, batch_size=8, seed=5)
    assert (loader.num_workers, loader.num_threads, loader.batched_fetch) == (
        rec.config.num_workers,
        rec.config.num_threads,
        rec.config.batched_fetch,
    )
    main = wellfed.create_dataloader(dataset, batch_size=8, seed=5, num_workers=0, num_threads=0)
    assert _digests(loader) == _digests(main)


def test_auto_builds_a_stored_thread_and_batched_fetch_pick() -> None:
    """A stored result that chose 3 threads with batched fetch is what 'auto' builds."""
    import dataclasses

    from tests.helpers import tune_result
    from wellfed.measure import LoaderConfig, Trial
    from wellfed.tune import Recommendation
    from wellfed.tune._store import save_result

    data = TensorDataset(torch.arange(400.0).reshape(200, 2), torch.arange(200))
    config = LoaderConfig(num_threads=3, batch_size=16, prefetch_factor=4, batched_fetch=True)
    trial = Trial(config=config, status="ok", samples_per_s=1000.0)
    result = tune_result(
        workload={"batch_size": 16},
        trials=(trial,),
        recommended=Recommendation(config=config, samples_per_s=1000.0, speedup=None, reason=""),
        best=trial,
        budget_s=1.0,
    )
    assert save_result(data, dataclasses.replace(result)) is not None
    loader = wellfed.create_dataloader(data, batch_size=16, shuffle=True, seed=1)
    assert loader.num_workers == 0
    assert loader.num_threads == 3
    assert loader.thread_prefetch_factor == 4
    assert loader.batched_fetch is True
    assert "stored" in loader.plan.setting("num_threads").reason
    reference = wellfed.create_dataloader(
        data, batch_size=16, shuffle=True, seed=1, num_workers=0, num_threads=0, batched_fetch=True
    )
    assert _digests(loader) == _digests(reference)
    # a custom collate cannot be skipped: 'auto' then leaves batched fetch off, and says why
    custom = wellfed.create_dataloader(data, batch_size=16, seed=1, collate_fn=_stack)
    assert custom.batched_fetch is False
    assert "collate_fn given" in custom.plan.setting("batched_fetch").reason


def _stack(samples: list[tuple[torch.Tensor, torch.Tensor]]) -> Any:
    return torch.utils.data.default_collate(samples)


class GlobalRngDataset:
    """Draws from torch's process-wide RNG (as torchvision's transforms do); waits 2 ms."""

    def __len__(self) -> int:
        return 64

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        time.sleep(0.002)
        return torch.rand(4), index


@pytest.mark.workers
def test_tune_refuses_threads_for_a_dataset_drawing_from_the_global_rng() -> None:
    from wellfed.target import spec_from_object
    from wellfed.tune import NEAR_BEST, tune

    spec = spec_from_object(GlobalRngDataset()).with_batch_size(4)
    result = tune(spec, budget_s=30, max_workers=0, max_threads=4, measure_s=0.3, store=False)
    threads = result.probes["threads"]
    assert threads["safe"] is False
    assert "process-wide RNG" in threads["why"]
    assert "sample_generator" in threads["fix"]
    assert result.recommended is not None
    assert result.recommended.config.backend != "thread"
    measured = [t for t in result.trials if t.config.backend == "thread"]
    assert len(measured) == 1  # measured once, to report the gap, not climbed
    fastest = result.best
    assert fastest is not None
    if fastest.config.backend == "thread" and fastest.samples_per_s > (1 + NEAR_BEST) * (
        result.recommended.samples_per_s
    ):
        assert any("would be fastest" in n and "sample_generator" in n for n in result.notes)


class TokenizedDataset(SampleGenDataset):
    """Holds one real Hugging Face fast tokenizer, shared by whoever loads."""

    def __init__(self) -> None:
        import tokenizers

        self.tokenizer = tokenizers.Tokenizer(
            tokenizers.models.WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]")
        )


def test_the_probe_flags_a_shared_fast_tokenizer() -> None:
    pytest.importorskip("tokenizers")
    from wellfed.target import spec_from_object
    from wellfed.tune._probe import probe_dataset

    probes = probe_dataset(spec_from_object(TokenizedDataset()))
    assert probes["threads"]["safe"] is False
    assert "dataset.tokenizer" in probes["threads"]["why"]
    assert "Already borrowed" in probes["threads"]["why"]


def test_auto_above_the_cpus_gives_the_figures_and_keeps_torch_quiet() -> None:
    """Issue 15: a measured pick above the usable CPUs made torch warn at every epoch."""
    import dataclasses
    import warnings

    from tests.helpers import tune_result
    from wellfed.measure import LoaderConfig, Trial
    from wellfed.platform import usable_cpu_count
    from wellfed.tune import Recommendation
    from wellfed.tune._store import save_result

    cpus = usable_cpu_count()
    data = TensorDataset(torch.arange(96.0).reshape(48, 2), torch.arange(48))
    within = Trial(
        config=LoaderConfig(num_workers=cpus, batch_size=8), status="ok", samples_per_s=500.0
    )
    above_config = LoaderConfig(num_workers=cpus + 2, batch_size=8, persistent_workers=True)
    above = Trial(config=above_config, status="ok", samples_per_s=900.0)
    result = tune_result(
        workload={"batch_size": 8},
        trials=(within, above),
        recommended=Recommendation(
            config=above_config, samples_per_s=900.0, speedup=None, reason=""
        ),
        best=above,
        budget_s=1.0,
    )
    assert save_result(data, dataclasses.replace(result)) is not None
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch's "suggested max" warning would raise here
        loader = wellfed.create_dataloader(data, batch_size=8, seed=3, timeout=60)
        assert loader.num_workers == cpus + 2
        reason = loader.plan.setting("num_workers").reason
        assert f"more workers than the {cpus} usable CPUs" in reason
        assert f"900 vs 500 samples/s at {cpus}" in reason
        assert sum(len(b[0]) for b in loader) == 48
    # the user's own count above the CPUs keeps torch's warning: only a measurement silences it
    with pytest.warns(UserWarning, match="worker processes in total"):
        wellfed.create_dataloader(data, batch_size=8, seed=3, num_workers=cpus + 2)
