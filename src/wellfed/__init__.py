"""wellfed keeps an accelerator fed: it measures and fixes PyTorch input pipelines.

``import wellfed`` is cheap: it imports neither torch nor the command line, and it changes no
global torch state. Every public name is loaded on first use from the module that owns it.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# Public name -> module that defines it. Only names listed here are stable API.
_EXPORTS: dict[str, str] = {
    # errors
    "BadFileError": "wellfed.errors",
    "ConfigError": "wellfed.errors",
    "DependencyError": "wellfed.errors",
    "PerformanceWarning": "wellfed.errors",
    "PrecomputeError": "wellfed.errors",
    "StateError": "wellfed.errors",
    "TargetError": "wellfed.errors",
    "WellfedError": "wellfed.errors",
    "WellfedWarning": "wellfed.errors",
    "WorkerCrashedError": "wellfed.errors",
    "WorkerError": "wellfed.errors",
    "WorkerSafetyError": "wellfed.errors",
    "WorkerSafetyWarning": "wellfed.errors",
    "WorkerStartError": "wellfed.errors",
    "WorkerTimeoutError": "wellfed.errors",
    # platform
    "PlatformInfo": "wellfed.platform",
    "collect_platform_info": "wellfed.platform",
    # target
    "LoaderSpec": "wellfed.target",
    "resolve_target": "wellfed.target",
    # measure
    "LoaderConfig": "wellfed.target",
    "Trial": "wellfed.measure",
    "measure": "wellfed.measure",
    # tune
    "TuneResult": "wellfed.tune",
    "tune": "wellfed.tune",
    # doctor (issue 3)
    "DoctorReport": "wellfed.doctor",
    "Finding": "wellfed.doctor",
    "diagnose": "wellfed.doctor",
    # seeding and loader (issue 4)
    "LoaderPlan": "wellfed.loader",
    "ReproReport": "wellfed.repro",
    "ResolvedSetting": "wellfed.loader",
    "SeedInfo": "wellfed.seeding",
    "SeededDataLoader": "wellfed.seeded_loader",
    "WorldInvariantSampler": "wellfed.samplers",
    "create_dataloader": "wellfed.loader",
    "format_dataloader_config": "wellfed.loader",
    "get_recommended_num_workers": "wellfed.loader",
    "is_windows": "wellfed.platform",
    "print_dataloader_config": "wellfed.loader",
    "sample_generator": "wellfed.seeding",
    "sample_rng": "wellfed.seeding",
    "sample_seed": "wellfed.seeding",
    "set_seed": "wellfed.seeding",
    "verify_reproducibility": "wellfed.repro",
    # precompute and the cached store (issue 6)
    "CachedDataset": "wellfed.cache",
    "precompute": "wellfed.cache",
    # shared state (issue 7)
    "SharedState": "wellfed.shared_state",
    # watch (issue 13)
    "WatchReport": "wellfed._watch",
    "WatchStats": "wellfed._meter",
    "watch": "wellfed._watch",
    "watch_script": "wellfed._watch",
    # the device side (issue 17)
    "BatchTransform": "wellfed.device",
    "DeviceLoader": "wellfed.device",
    "SeededBatch": "wellfed.seeding",
    "to_device": "wellfed.device",
}

__all__ = sorted(["__version__", *_EXPORTS])


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'wellfed' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
