"""The exception and warning hierarchy of wellfed.

Every exception also subclasses the builtin that users already catch (``ValueError``,
``ImportError``, ``RuntimeError``, ``TimeoutError``), so ``except ValueError`` keeps working.
Each carries the facts of its message as attributes (``code``, ``attribute``, ``value``, ...);
tests and tools read those, never the text. Codes are listed in ``docs/errors.md``.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "BadFileError",
    "ConfigError",
    "DependencyError",
    "PerformanceWarning",
    "PrecomputeError",
    "SampleError",
    "StateError",
    "TargetError",
    "WellfedError",
    "WellfedWarning",
    "WorkerCrashedError",
    "WorkerError",
    "WorkerSafetyError",
    "WorkerSafetyWarning",
    "WorkerStartError",
    "WorkerTimeoutError",
]


class WellfedError(Exception):
    """Base class of every error wellfed raises.

    Args:
        message: The full four-part message (what, attribute and value, why, fix).
        code: Stable error code such as ``"WF001"``, documented in ``docs/errors.md``; or None.
        **facts: Facts of the message kept as attributes (``attribute``, ``value``, ``path``...).
    """

    def __init__(self, message: str, *, code: str | None = None, **facts: Any) -> None:
        if code and not message.rstrip().endswith(f"[{code}]"):
            message = f"{message.rstrip()} [{code}]"
        super().__init__(message)
        self.code = code
        self.facts = dict(facts)
        for key, value in facts.items():
            setattr(self, key, value)


class ConfigError(WellfedError, ValueError):
    """A bad or contradictory option (exit code 2 on the command line)."""


class TargetError(ConfigError):
    """A TARGET that cannot be turned into a dataset: missing module, attribute, empty dataset.

    Attributes:
        target: The TARGET string as given.
    """


class DependencyError(WellfedError, ImportError):
    """An optional package is missing; the message names the extra to install."""


class StateError(WellfedError, ValueError):
    """Resume state, or a stored artefact, does not match this loader or job."""


class BadFileError(WellfedError, ValueError):
    """A data file cannot be decoded (exit code 1 on the command line: a problem found).

    Its code defaults to WF020, also when PyTorch rebuilds it from the message alone in the
    main process after a DataLoader worker raised it.

    Attributes:
        path: The file's path, when known.
        index: The sample index that reads it, when known.
    """

    path: str | None = None
    index: int | None = None

    def __init__(self, message: str, *, code: str | None = "WF020", **facts: Any) -> None:
        super().__init__(message, code=code, **facts)


class PrecomputeError(WellfedError, RuntimeError):
    """precompute failed: fn raised or returned inconsistent outputs, or the disk is full.

    Attributes:
        indices: The sample indices concerned (a list of ints), when known.
        code: WF403 (fn raised), WF404 (inconsistent outputs), WF405 (disk full).
    """


class WorkerError(WellfedError, RuntimeError):
    """A DataLoader worker failed."""


class WorkerStartError(WorkerError):
    """A worker died before delivering its first batch."""


class WorkerCrashedError(WorkerError):
    """A worker exited; carries ``pid`` and ``exitcode`` (negative: the signal number)."""


class WorkerTimeoutError(WorkerError, TimeoutError):
    """No batch arrived within ``timeout_s`` seconds."""


class SampleError(WorkerError):
    """A sample raised inside a thread worker (WF304); the sample's own exception is chained.

    Attributes:
        index: The sample index that raised, or None when only the batch is known
            (a dataset's ``__getitems__`` or batched fetch raised).
        indices: The indices of the batch being loaded (a list).
        dataset: The dataset's class name.
        thread: The thread worker's name.
    """


class WorkerSafetyError(WellfedError, RuntimeError):
    """The doctor found hazards that would break or corrupt data in workers.

    Attributes:
        findings: The error-severity findings (``wellfed.Finding``), each with path and fix.
    """


class WellfedWarning(UserWarning):
    """Base class of wellfed's warnings; filter on it to silence them all."""


class PerformanceWarning(WellfedWarning):
    """Legal but probably slow, and the user can change it."""


class WorkerSafetyWarning(WellfedWarning):
    """``create_dataloader`` found hazards for workers and went on (``on_unsafe="warn"``), fell
    back to ``num_workers=0`` (``on_unsafe="fallback"``), or kept an explicit risky choice."""


# --- option validation: the one helper ---------------------------------------------------------


def is_count(value: Any, minimum: int = 0) -> bool:
    """True for an int (not a bool) >= ``minimum``."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def is_auto_or_count(value: Any, minimum: int = 0) -> bool:
    """True for "auto" or an int (not a bool) >= ``minimum``."""
    return value == "auto" or is_count(value, minimum)


def check_option(
    name: str, value: Any, ok: bool, expected: str, *, code: str, fix: str | None = None
) -> None:
    """Raise the ConfigError for an invalid option value unless ``ok``.

    The message is "Invalid option: NAME=VALUE is not EXPECTED. FIX" (FIX defaults to "Pass
    EXPECTED."), with ``attribute`` and ``value`` as facts. Every room validates its options
    through this one helper; the code names the room's option family (docs/errors.md: WF010
    for the measuring core and precompute, WF202 for create_dataloader, WF211 for repro).

    Raises:
        ConfigError: ``ok`` is False.
    """
    if not ok:
        raise ConfigError(
            f"Invalid option: {name}={value!r} is not {expected}. {fix or f'Pass {expected}.'}",
            code=code,
            attribute=name,
            value=value,
        )
