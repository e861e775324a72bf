"""wellfed.__all__ is right, every public name resolves and has a docstring; import is cheap."""

from __future__ import annotations

import inspect
import subprocess
import sys

import wellfed

#: wellfed.__all__ before issue 11's refactoring: no public name may disappear.
PUBLIC_BEFORE_ISSUE_11 = (
    "BadFileError",
    "CachedDataset",
    "ConfigError",
    "DependencyError",
    "DoctorReport",
    "Finding",
    "LoaderConfig",
    "LoaderPlan",
    "LoaderSpec",
    "PerformanceWarning",
    "PlatformInfo",
    "PrecomputeError",
    "ReproReport",
    "ResolvedSetting",
    "SeedInfo",
    "SeededDataLoader",
    "SharedState",
    "StateError",
    "TargetError",
    "Trial",
    "TuneResult",
    "WellfedError",
    "WellfedWarning",
    "WorkerCrashedError",
    "WorkerError",
    "WorkerSafetyError",
    "WorkerSafetyWarning",
    "WorkerStartError",
    "WorkerTimeoutError",
    "__version__",
    "collect_platform_info",
    "create_dataloader",
    "diagnose",
    "format_dataloader_config",
    "get_recommended_num_workers",
    "is_windows",
    "measure",
    "precompute",
    "print_dataloader_config",
    "resolve_target",
    "sample_generator",
    "sample_rng",
    "sample_seed",
    "set_seed",
    "tune",
    "verify_reproducibility",
)


def test_all_is_sorted_and_complete() -> None:
    assert wellfed.__all__ == sorted(wellfed.__all__)
    assert set(wellfed.__all__) == {"__version__", *wellfed._EXPORTS}


def test_every_public_name_has_a_docstring() -> None:
    for name in wellfed.__all__:
        if name == "__version__":
            continue
        obj = getattr(wellfed, name)
        assert inspect.getdoc(obj), f"wellfed.{name} has no docstring"


def test_import_is_cheap_and_leaves_torch_alone() -> None:
    code = "import sys, wellfed; print('torch' in sys.modules, 'wellfed.cli' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.split() == ["False", "False"]


def test_no_public_name_disappears() -> None:
    missing = set(PUBLIC_BEFORE_ISSUE_11) - set(wellfed.__all__)
    assert not missing
    for name in PUBLIC_BEFORE_ISSUE_11:
        assert getattr(wellfed, name) is not None
