"""Unit tests for wellfed.loader (main process only: num_workers=0, or loaders never iterated)."""

from __future__ import annotations

import io
import logging
import random
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    DistributedSampler,
    IterableDataset,
    RandomSampler,
    Subset,
)

import wellfed
from tests.helpers_seeding import AugmentDataset, BatchedAugmentDataset, digest
from wellfed import loader as wf_loader


def _loader(ds: Any = None, **kw: Any) -> wellfed.SeededDataLoader:
    kw.setdefault("batch_size", 4)
    kw.setdefault("shuffle", True)
    kw.setdefault("seed", 3)
    kw.setdefault("num_workers", 0)
    return wellfed.create_dataloader(ds if ds is not None else AugmentDataset(20), **kw)


def _epochs(loader: DataLoader[Any], epochs: int = 2) -> list[str]:
    return [digest(b) for _ in range(epochs) for b in loader]


def test_is_a_dataloader_whose_dataset_is_the_users() -> None:
    ds = AugmentDataset(20)
    loader = _loader(ds)
    assert isinstance(loader, DataLoader)
    assert loader.dataset is ds
    assert loader.dataset.n == 20
    assert loader.batch_size == 4
    assert len(loader) == 5


def test_same_seed_same_batches_epochs_differ() -> None:
    a, b = _epochs(_loader()), _epochs(_loader())
    assert a == b
    assert a[:5] != a[5:]
    assert _epochs(_loader(seed=4)) != a


def test_shuffle_is_a_permutation_per_epoch() -> None:
    loader = _loader(AugmentDataset(20))
    orders = [[int(i) for b in loader for i in b["index"]] for _ in range(2)]
    assert sorted(orders[0]) == sorted(orders[1]) == list(range(20))
    assert orders[0] != orders[1]
    plain = _loader(AugmentDataset(20), shuffle=False)
    assert [int(i) for b in plain for i in b["index"]] == list(range(20))


def test_augmentations_depend_on_index_not_position() -> None:
    """A sample's randomness is a function of (seed, epoch, index): the order does not matter."""
    by_index: dict[int, float] = {}
    for b in _loader(shuffle=True):
        by_index.update(zip(b["index"].tolist(), b["np"].tolist(), strict=True))
    for b in _loader(shuffle=False):
        for i, x in zip(b["index"].tolist(), b["np"].tolist(), strict=True):
            assert by_index[i] == x


def test_set_epoch_replays_an_epoch() -> None:
    loader = _loader()
    ref = _epochs(loader, 2)
    loader.set_epoch(1)
    assert [digest(b) for b in loader] == ref[5:]
    assert loader.epoch == 1
    with pytest.raises(wellfed.ConfigError):
        loader.set_epoch(-1)


def test_loading_does_not_disturb_the_training_rngs() -> None:
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    expected = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    loader = _loader(shuffle=False)
    for _ in loader:
        pass
    # DataLoader itself draws one base seed per iterator from torch's RNG; nothing else moves.
    got_py, got_np = random.random(), float(np.random.rand())
    assert (got_py, got_np) == expected[:2]


def test_batched_fetch_is_used_and_deterministic() -> None:
    calls: list[list[int]] = []

    class Counting(BatchedAugmentDataset):
        def __getitems__(self, indices: list[int]) -> list[dict[str, Any]]:
            calls.append(list(indices))
            return super().__getitems__(indices)

    a = _epochs(_loader(Counting(12)))
    assert len(calls) == 6
    assert a == _epochs(_loader(Counting(12)))


def test_subset_keeps_per_sample_seeding() -> None:
    ds = AugmentDataset(20)
    sub = Subset(ds, list(range(0, 20, 2)))
    batches = list(_loader(sub, shuffle=False, batch_size=None))
    singles = list(_loader(sub, shuffle=False, batch_size=2))
    flat = [float(x) for b in singles for x in b["np"]]
    assert [float(b["np"]) for b in batches] == flat


def test_no_automatic_batching() -> None:
    loader = _loader(batch_size=None, shuffle=False)
    items = list(loader)
    assert len(items) == 20
    assert items[0]["index"] == 0
    assert [digest(x) for x in items] == [
        digest(x) for x in loader.__class__(loader.dataset, batch_size=None, seed=3)
    ]


def test_user_sampler_is_made_deterministic() -> None:
    ds = AugmentDataset(16)

    def make() -> wellfed.SeededDataLoader:
        return _loader(ds, shuffle=False, sampler=RandomSampler(ds))

    assert _epochs(make()) == _epochs(make())
    assert isinstance(make().sampler, RandomSampler)  # the user's sampler stays public


def test_user_batch_sampler() -> None:
    ds = AugmentDataset(16)

    def make() -> wellfed.SeededDataLoader:
        bs = BatchSampler(RandomSampler(ds), batch_size=3, drop_last=False)
        return wellfed.create_dataloader(ds, batch_size=1, batch_sampler=bs, seed=1, num_workers=0)

    with pytest.raises(wellfed.ConfigError):
        # batch_size=1 is DataLoader's default, so torch accepts it; a sampler on top is not
        wellfed.create_dataloader(ds, batch_sampler=[[0]], sampler=[0], seed=1, num_workers=0)
    loader = wellfed.SeededDataLoader(
        ds, batch_sampler=BatchSampler(RandomSampler(ds), 3, False), seed=1
    )
    a = _epochs(loader)
    assert len(a) == 12
    loader2 = wellfed.SeededDataLoader(
        ds, batch_sampler=BatchSampler(RandomSampler(ds), 3, False), seed=1
    )
    assert _epochs(loader2) == a
    del make


def test_distributed_sampler_is_rank_aware() -> None:
    ds = AugmentDataset(16)

    def make(rank: int) -> wellfed.SeededDataLoader:
        sampler = DistributedSampler(ds, num_replicas=2, rank=rank, shuffle=True, seed=5)
        return _loader(ds, shuffle=False, sampler=sampler)

    r0, r1 = make(0), make(1)
    idx0 = [int(i) for b in r0 for i in b["index"]]
    idx1 = [int(i) for b in r1 for i in b["index"]]
    assert sorted(idx0 + idx1) == list(range(16))
    assert r0.sampler.epoch == 0
    list(r0)
    assert r0.sampler.epoch == 1  # forwarded each epoch
    # a direct sampler.set_epoch by the user is followed
    fresh = make(0)
    fresh.sampler.set_epoch(1)
    assert [digest(b) for b in fresh] == _epochs(make(0))[2:]
    with pytest.raises(wellfed.StateError) as info:
        make(1).load_state_dict(r0.state_dict())
    assert info.value.attribute == "rank"


def test_resume_mid_epoch_gives_the_remaining_batches() -> None:
    ref = _epochs(_loader(), 3)
    loader = _loader()
    it = iter(loader)
    got = [digest(next(it)) for _ in range(2)]
    state = loader.state_dict()
    assert (state["epoch"], state["batches_done"]) == (0, 2)
    resumed = _loader()
    resumed.load_state_dict(state)
    got += _epochs(resumed, 2)
    assert got == ref[:10]  # 2 + the 3 left of epoch 0 + epoch 1
    # after a full epoch the state points at the next one
    done = _loader()
    list(done)
    assert (done.state_dict()["epoch"], done.state_dict()["batches_done"]) == (1, 0)
    # a fresh loader's state, and a loaded-but-not-iterated one
    assert _loader().state_dict()["epoch"] == 0
    assert resumed.state_dict()["epoch"] == 2


def test_resume_checks_that_the_loader_matches() -> None:
    state = _loader().state_dict()
    with pytest.raises(wellfed.StateError) as info:
        _loader(seed=4).load_state_dict(state)
    assert info.value.code == "WF209"
    assert info.value.attribute == "seed"
    with pytest.raises(wellfed.StateError) as info:
        _loader(batch_size=5).load_state_dict(state)
    assert info.value.attribute == "batch_size"
    with pytest.raises(wellfed.StateError):
        _loader().load_state_dict({"format": "other"})
    with pytest.raises(wellfed.StateError):
        _loader().load_state_dict({**state, "batches_done": 99})
    plain = _loader(seed=None)
    with pytest.raises(wellfed.StateError) as info:
        plain.state_dict()
    assert info.value.code == "WF208"


def test_unseeded_loader_is_plain() -> None:
    ds = AugmentDataset(8)
    loader = _loader(ds, seed=None)
    assert loader.seed is None
    assert len(list(loader)) == 2


class _Stream(IterableDataset[int]):
    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(range(4))


@pytest.mark.parametrize(
    ("kwargs", "code", "attribute"),
    [
        ({"seed": -1}, "WF201", "seed"),
        ({"on_unsafe": "ignore"}, "WF202", "on_unsafe"),
        ({"num_workers": -1}, "WF202", "num_workers"),
        ({"pin_memory": "yes"}, "WF202", "pin_memory"),
        ({"prefetch_factor": 0}, "WF202", "prefetch_factor"),
        ({"generator": torch.Generator()}, "WF203", "generator"),
        ({"in_order": False}, "WF203", "in_order"),
        ({"sampler": [0, 1]}, "WF203", "shuffle"),
        ({"persistent_workers": True}, "WF203", "persistent_workers"),
        ({"prefetch_factor": 2}, "WF203", "prefetch_factor"),
        ({"multiprocessing_context": "spawn"}, "WF203", "multiprocessing_context"),
    ],
)
def test_config_errors(kwargs: dict[str, Any], code: str, attribute: str) -> None:
    with pytest.raises(wellfed.ConfigError) as info:
        _loader(**kwargs)
    assert info.value.code == code
    assert info.value.attribute == attribute
    assert f"[{code}]" in str(info.value)


def test_iterable_dataset_cannot_be_seeded() -> None:
    with pytest.raises(wellfed.ConfigError) as info:
        wellfed.create_dataloader(_Stream(), seed=0, num_workers=0)
    assert info.value.code == "WF204"
    assert len(list(wellfed.create_dataloader(_Stream(), num_workers=0))) == 4


# --- "auto" resolution --------------------------------------------------------------------


@pytest.fixture
def no_stored_results(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    monkeypatch.setenv("WELLFED_CACHE_DIR", str(tmp_path))


@pytest.mark.usefixtures("no_stored_results")
def test_auto_values_are_resolved_and_logged_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr("wellfed.platform.usable_cpu_count", lambda: 6)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with caplog.at_level(logging.INFO, logger="wellfed.loader"):
        loader = wellfed.create_dataloader(AugmentDataset(8), batch_size=2, seed=0)
    assert loader.num_workers == 2  # 6 CPUs / 2 ranks - 1 (<= this machine's 2 CPUs)
    assert loader.persistent_workers is True
    assert loader.prefetch_factor == 2
    assert loader.pin_memory is False
    lines = [r.getMessage() for r in caplog.records]
    assert sum(line.startswith("num_workers=auto -> 2") for line in lines) == 1
    assert "LOCAL_WORLD_SIZE=2" in loader.plan.setting("num_workers").reason
    assert all(
        any(line.startswith(f"{name}=auto") for line in lines)
        for name in (
            "num_workers",
            "pin_memory",
            "persistent_workers",
            "prefetch_factor",
            "multiprocessing_context",
        )
    )
    assert loader.plan.to_dict()["settings"][0]["value"] == 2


@pytest.mark.usefixtures("no_stored_results")
def test_no_info_logs_on_other_ranks(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("RANK", "1")
    with caplog.at_level(logging.INFO, logger="wellfed.loader"):
        wellfed.create_dataloader(AugmentDataset(8), seed=0, num_workers=0)
    assert not caplog.records


def test_auto_uses_a_stored_tune_result(monkeypatch: pytest.MonkeyPatch) -> None:
    import wellfed.tune._auto

    config = SimpleNamespace(num_workers=1, prefetch_factor=6)
    stored = SimpleNamespace(recommended=SimpleNamespace(config=config), stored_path="/x.json")
    seen: list[Any] = []

    def fake(dataset: Any, *, batch_size: int | None = None, nproc_per_node: int = 1) -> Any:
        assert nproc_per_node == 1  # one local rank: a single-rank result
        seen.append(batch_size)
        return stored if batch_size is None else None

    # The auto rule's one lookup (wellfed.tune._auto), which loader and precompute share.
    monkeypatch.setattr(wellfed.tune._auto, "load_stored_result", fake)
    loader = wellfed.create_dataloader(AugmentDataset(8), batch_size=2, seed=0)
    assert loader.num_workers == 1
    assert loader.prefetch_factor == 6
    assert seen == [2, None]  # this batch size first, then any
    assert "/x.json" in loader.plan.setting("num_workers").reason
    assert wellfed.get_recommended_num_workers(AugmentDataset(8)) == 1


def test_never_forks_after_cuda_was_initialised(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr("wellfed.platform.default_start_method", lambda: "fork")
    loader = wellfed.create_dataloader(AugmentDataset(8), seed=0, num_workers=2)
    assert loader.multiprocessing_context.get_start_method() in ("forkserver", "spawn")
    assert "CUDA" in loader.plan.setting("multiprocessing_context").reason
    # an explicit fork is kept, with a warning
    with pytest.warns(wellfed.WorkerSafetyWarning, match="WF210"):
        kept = wellfed.create_dataloader(
            AugmentDataset(8), seed=0, num_workers=2, multiprocessing_context="fork"
        )
    assert kept.multiprocessing_context.get_start_method() == "fork"


def test_recommended_workers_ignore_windows(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("wellfed.platform.usable_cpu_count", lambda: 4)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.setattr("sys.platform", "win32")
    assert wellfed.is_windows() is True
    assert wellfed.get_recommended_num_workers() == 3


# --- unsafe datasets (the doctor replaced by a stub here; the real one in integration) -------


def _finding() -> Any:
    return SimpleNamespace(
        code="WF101",
        severity="error",
        path="dataset.transform",
        message="a lambda cannot be pickled.",
        fix="Use a module-level function.",
    )


@pytest.fixture
def unsafe(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    calls: list[Any] = []

    def check(dataset: Any, kwargs: dict[str, Any], method: str) -> tuple[bool, tuple[Any, ...]]:
        calls.append((kwargs, method))
        return True, (_finding(),)

    monkeypatch.setattr(wf_loader, "_safety_check", check)
    return calls


def test_unsafe_raise(unsafe: list[Any]) -> None:
    with pytest.raises(wellfed.WorkerSafetyError) as info:
        wellfed.create_dataloader(
            AugmentDataset(8), seed=0, num_workers=2, multiprocessing_context="spawn"
        )
    assert info.value.code == "WF205"
    assert info.value.findings[0].path == "dataset.transform"
    assert "dataset.transform" in str(info.value)
    assert "module-level function" in str(info.value)
    assert unsafe[0][1] == "spawn"


def test_unsafe_warn_keeps_workers(unsafe: list[Any]) -> None:
    with pytest.warns(wellfed.WorkerSafetyWarning, match="dataset.transform"):
        loader = wellfed.create_dataloader(
            AugmentDataset(8), seed=0, num_workers=2, on_unsafe="warn"
        )
    assert loader.num_workers == 2
    assert loader.plan.action == "warned"


def test_unsafe_fallback_uses_the_main_process(unsafe: list[Any]) -> None:
    with pytest.warns(wellfed.WorkerSafetyWarning, match="WF207"):
        loader = wellfed.create_dataloader(
            AugmentDataset(8),
            seed=0,
            num_workers=2,
            persistent_workers=True,
            prefetch_factor=4,
            on_unsafe="fallback",
            timeout=5,
        )
    assert loader.num_workers == 0
    assert loader.plan.action == "fell_back"
    assert len(list(loader)) == 8


def test_no_safety_check_without_workers(unsafe: list[Any]) -> None:
    wellfed.create_dataloader(AugmentDataset(8), seed=0, num_workers=0)
    assert unsafe == []


def test_print_dataloader_config(capsys: pytest.CaptureFixture[str]) -> None:
    loader = _loader()
    buf = io.StringIO()
    assert wellfed.print_dataloader_config(loader, file=buf) is None  # a REPL echoes no copy
    text = buf.getvalue().rstrip("\n")
    assert text == wellfed.format_dataloader_config(loader)
    assert "num_workers" in text
    assert "seed" in text
    assert "(auto: no CUDA device)" in text
    wellfed.print_dataloader_config(num_workers=0, batch_size=32, seed=42, shuffle=True)
    text2 = wellfed.format_dataloader_config(num_workers=0, batch_size=32, seed=42, shuffle=True)
    assert "batch_size" in text2
    assert "42" in text2
    assert capsys.readouterr().out.strip() == text2.strip()


def test_dataloader_config_breaks_long_reasons_between_words() -> None:
    reason = (
        "a stored tune result measured 4 workers fastest on this machine (913 samples/s vs 858 "
        "with 2, more than the 2 usable CPUs: loading waits on storage)"
    )
    text = wellfed.format_dataloader_config(num_workers=4, why=reason)
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 79  # whole in an 80-column terminal
    start = next(i for i, line in enumerate(lines) if line.startswith("  why"))
    value_column = lines[start].index("'a stored")
    block = [lines[start][value_column:]]
    for line in lines[start + 1 :]:
        if line[:value_column].strip():
            break
        block.append(line[value_column:])
    assert len(block) > 1
    assert " ".join(block) == repr(reason)  # broken at spaces only, beneath the value
