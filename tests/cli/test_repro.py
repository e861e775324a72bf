"""wellfed repro, in-process: exit codes, --json, the plain-loader check."""

from __future__ import annotations

import json

import pytest

from wellfed.cli import main

SEEDED = "tests/helpers_seeding.py:AugmentDataset"
RNG_OBJECT = "tests/helpers_seeding.py:RngObjectDataset"
GLOBAL = "tests/helpers_seeding.py:GlobalAugmentDataset"


def test_seeded_target_is_reproducible(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["repro", SEEDED, "--batch-size", "4", "--num-workers", "0", "--json"])
    data = json.loads(capsys.readouterr().out)
    assert code == 0
    assert data["reproducible"] is True
    assert [r["num_workers"] for r in data["runs"]] == [0, 0]  # one configuration runs twice


@pytest.mark.workers
@pytest.mark.timeout(60)
def test_rng_object_is_named(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        ["repro", RNG_OBJECT, "--batch-size", "4", "--start-method", "fork", "--epochs", "1"]
    )
    out = capsys.readouterr().out
    assert code == 1
    assert "Not reproducible" in out
    assert "dataset.rng" in out


@pytest.mark.workers
@pytest.mark.timeout(60)
def test_plain_loader_is_checked_too(capsys: pytest.CaptureFixture[str]) -> None:
    # --plain: the target's torch DataLoader after set_seed; same with 0 workers twice ...
    assert main(["repro", GLOBAL, "--plain", "--num-workers", "0", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["reproducible"] is True
    # ... but not with workers, and the report says what to do
    argv = ["repro", GLOBAL, "--plain", "--start-method", "fork", "--epochs", "1", "--json"]
    assert main(argv) == 1
    assert "create_dataloader" in json.loads(capsys.readouterr().out)["likely_cause"]


def test_bad_worker_list_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["repro", SEEDED, "--num-workers", "zero"]) == 2
    assert "WF211" in capsys.readouterr().err


def test_iterable_target_is_a_usage_error_suggesting_plain(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["repro", "tests/helpers_seeding.py:StreamDataset", "--num-workers", "0"]) == 2
    err = capsys.readouterr().err
    assert "--plain" in err
    assert "WF204" in err


def test_the_cli_calls_the_library_factory() -> None:
    import wellfed.cli
    import wellfed.repro

    assert not hasattr(wellfed.cli, "_repro_factory")
    assert callable(wellfed.repro.loader_factory)


@pytest.mark.workers
@pytest.mark.timeout(60)
def test_a_target_with_a_seeded_generator_is_reproducible(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # the target's own generator=torch.Generator().manual_seed(0), shared by every build
    argv = ["repro", "tests/helpers_seeding.py:seeded_shuffle_loader", "--plain"]
    assert main([*argv, "--start-method", "fork", "--json"]) == 0, capsys.readouterr().out
    assert json.loads(capsys.readouterr().out)["reproducible"] is True


@pytest.mark.workers
@pytest.mark.timeout(60)
def test_a_closure_worker_init_fn_under_spawn_is_wf214(
    capsys: pytest.CaptureFixture[str],
) -> None:
    target = "tests/helpers_seeding.py:closure_worker_init_loader"
    assert main(["repro", target, "--start-method", "spawn", "--epochs", "1"]) == 1
    out = " ".join(capsys.readouterr().out.split())
    assert "loader.worker_init_fn cannot reach spawn workers" in out
    assert "is not needed with wellfed's seeding" in out
    assert "[WF214]" in out
