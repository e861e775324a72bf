"""TARGET resolution: every bad target is a TargetError with its code, never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from wellfed.errors import TargetError
from wellfed.target import resolve_target


def test_dataset_target() -> None:
    spec = resolve_target("tests.helpers:squares")
    assert spec.source == "dataset"
    assert spec.samples == 64
    assert spec.batch_size_given is False
    assert spec.user_config is None


def test_factory_target_is_called() -> None:
    spec = resolve_target("tests.helpers:make_squares")
    assert spec.source == "factory"
    assert spec.samples == 32


def test_factory_target_keeps_its_factory_but_does_not_pickle_it() -> None:
    import pickle

    from tests import helpers

    spec = resolve_target("tests.helpers:make_squares")
    assert spec.factory is helpers.make_squares  # the doctor calls it again (WF111)
    assert pickle.loads(pickle.dumps(spec)).factory is None
    assert resolve_target("tests.helpers:squares_loader").factory is None


def test_dataloader_target_keeps_its_settings() -> None:
    spec = resolve_target("tests.helpers:squares_loader")
    assert spec.source == "dataloader"
    assert spec.batch_size == 8
    assert spec.shuffle is True
    assert spec.drop_last is True
    assert spec.user_config is not None
    assert spec.user_config.num_workers == 2
    kwargs = spec.loader_kwargs()
    assert kwargs["shuffle"] is True
    assert kwargs["drop_last"] is True


def test_file_target(tmp_path: Path) -> None:
    script = tmp_path / "my_data_file.py"
    script.write_text("from tests.helpers import SquaresDataset\ntrain_set = SquaresDataset(10)\n")
    spec = resolve_target(f"{script}:train_set")
    assert spec.samples == 10


@pytest.mark.parametrize(
    ("target", "code"),
    [
        ("no_such_module_xyz:data", "WF001"),
        ("tests.helpers:no_such_attr", "WF002"),
        ("tests.helpers:broken_factory", "WF003"),
        ("tests.helpers:not_a_dataset", "WF004"),
        ("tests.helpers:empty", "WF005"),
        ("tests.helpers", "WF006"),
        ("missing/file.py:data", "WF007"),
    ],
)
def test_bad_targets(target: str, code: str) -> None:
    with pytest.raises(TargetError) as info:
        resolve_target(target)
    assert info.value.code == code
    assert info.value.target == target
    assert f"[{code}]" in str(info.value)


def test_factory_error_names_the_cause() -> None:
    with pytest.raises(TargetError, match="database unreachable"):
        resolve_target("tests.helpers:broken_factory")


def test_import_error_inside_module(tmp_path: Path) -> None:
    script = tmp_path / "broken_module_abc.py"
    script.write_text("import no_such_dependency_xyz\n")
    with pytest.raises(TargetError) as info:
        resolve_target(f"{script}:data")
    assert info.value.code == "WF008"
    assert "no_such_dependency_xyz" in str(info.value)
