"""``watch_script``: run a training program unchanged and meter every DataLoader it iterates."""

from __future__ import annotations

import os
import runpy
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from wellfed._watch import _proc, _stale
from wellfed._watch._report import LoaderReport, WatchReport
from wellfed._watch._session import LoaderRecord, LoaderSession
from wellfed._watch._verdict import judge, worker_evidence
from wellfed.errors import ConfigError

__all__ = ["build_report", "watch_script"]

#: The exit status of a program ended by Ctrl-C (128 + SIGINT), as shells report it.
EXIT_INTERRUPTED = 130


def _check_program(program: str, module: bool) -> Path | None:
    """The script's path (None for a module); ConfigError WF602 when it cannot be found."""
    if module:
        import importlib.util

        try:
            spec = importlib.util.find_spec(program)
        except (ImportError, ValueError) as exc:
            spec = None
            reason = f" ({exc})"
        else:
            reason = ""
        if spec is None:
            raise ConfigError(
                f"Module not found: -m {program} is not importable by this Python{reason}. "
                "Run from the folder that holds it, install its package, or pass the script's "
                "path instead.",
                code="WF602",
                attribute="module",
                value=program,
            )
        return None
    path = Path(program)
    if not path.is_file():
        raise ConfigError(
            f"Script not found: {program!r} is not a file"
            f"{' (it is a directory)' if path.is_dir() else ''} (relative to {os.getcwd()}). "
            "Pass the training script's path, or -m MODULE.",
            code="WF602",
            attribute="script",
            value=program,
        )
    return path


def _exit_code(code: Any) -> tuple[int, str | None]:
    """``SystemExit.code`` as the exit status Python gives it, and the message it prints."""
    if code is None:
        return 0, None
    if isinstance(code, int) and not isinstance(code, bool):
        return code, None
    return 1, str(code)


def _user_traceback(exc: BaseException, skip: Sequence[str]) -> str:
    """The traceback text from the program's own frames on (runpy's and ours left out)."""
    tb = exc.__traceback__
    while tb is not None and any(s in tb.tb_frame.f_code.co_filename for s in skip):
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(exc), exc, tb))


def watch_script(
    program: str,
    args: Sequence[str] = (),
    *,
    module: bool = False,
    progress: Callable[[str, LoaderRecord | None], None] | None = None,
    interval_s: float = 0.5,
) -> WatchReport:
    """Run a training script (or ``-m`` module) unchanged, metering every DataLoader it iterates.

    The program runs in this process as ``python SCRIPT ARGS`` would run it (``runpy``:
    ``__name__ == "__main__"``, ``sys.argv`` set, the script's folder first on ``sys.path``;
    spawn workers re-import it as usual). While it runs, ``DataLoader.__iter__`` (and
    ``SeededDataLoader.__iter__``) hand back metered iterators (``LoaderSession``); afterwards
    both are restored. A program that raises, exits or is interrupted (Ctrl-C) still gets its
    report, with its exit status.

    Args:
        program: The script's path, or the module's name when ``module``.
        args: Its arguments (``sys.argv[1:]``).
        module: Run ``program`` as ``python -m program``.
        progress: ``LoaderSession``'s callback (live display): ``progress(event, record)``.
        interval_s: Seconds between two samples of the workers.

    Returns:
        A ``WatchReport``: per loader its stats, ``/proc`` evidence and verdict; the exit code.

    Raises:
        ConfigError: the script is not a file, or the module cannot be found (WF602).
    """
    path = _check_program(program, module)
    saved_argv, saved_path = sys.argv[:], sys.path[:]
    name = program if module else str(path)
    sys.argv = [name, *args]
    if path is not None:
        sys.path.insert(0, str(path.resolve().parent))
    else:
        sys.path.insert(0, os.getcwd())

    def namespace() -> dict[str, Any] | None:
        main = sys.modules.get("__main__")
        return getattr(main, "__dict__", None)

    source: str | None = str(path) if path is not None else None
    if module:
        import importlib.util

        spec = importlib.util.find_spec(program)
        source = spec.origin if spec is not None else None
    exit_code, error, interrupted = 0, None, False
    started = time.perf_counter()
    session = LoaderSession(
        interval_s=interval_s,
        progress=progress,
        source=source,
        target_prefix=program,
        program_globals=namespace,
    )
    skip = (__file__, "runpy", f"{os.sep}wellfed{os.sep}_watch{os.sep}")
    try:
        with session:
            try:
                if module:
                    runpy.run_module(program, run_name="__main__", alter_sys=True)
                else:
                    runpy.run_path(str(path), run_name="__main__")
            except SystemExit as exc:
                exit_code, error = _exit_code(exc.code)
            except KeyboardInterrupt:
                exit_code, interrupted, error = EXIT_INTERRUPTED, True, "KeyboardInterrupt"
            except BaseException as exc:
                exit_code, error = 1, _user_traceback(exc, skip)
    finally:
        sys.argv[:] = saved_argv
        sys.path[:] = saved_path
    return build_report(
        session,
        program=program,
        argv=tuple(args),
        exit_code=exit_code,
        interrupted=interrupted,
        error=error,
        elapsed_s=time.perf_counter() - started,
    )


def _system(session: LoaderSession, elapsed_s: float) -> dict[str, Any]:
    from wellfed.platform import usable_cpu_count

    out: dict[str, Any] = {
        "usable_cpus": usable_cpu_count(),
        "io_pressure_share": None,
        "disk_busy_share": None,
        "main_process_cores": None,
    }
    span = max(1e-9, (session.ended or time.perf_counter()) - session.started)
    if session.psi_start is not None and session.psi_end is not None:
        out["io_pressure_share"] = min(1.0, (session.psi_end - session.psi_start) / 1e6 / span)
    if session.disk_start is not None and session.disk_end is not None:
        out["disk_busy_share"] = {
            dev: min(1.0, (end - session.disk_start.get(dev, end)) / 1e3 / span)
            for dev, end in session.disk_end.items()
            if end > session.disk_start.get(dev, end)
        }
    if session.main_ticks_start is not None and session.main_ticks_end is not None:
        ticks = session.main_ticks_end - session.main_ticks_start
        out["main_process_cores"] = ticks / _proc.CLOCK_TICKS_PER_S / span
    return out


def build_report(
    session: LoaderSession,
    *,
    program: str,
    argv: tuple[str, ...],
    exit_code: int,
    interrupted: bool,
    error: str | None,
    elapsed_s: float,
) -> WatchReport:
    """The ``WatchReport`` of a closed session: stats, evidence and a verdict per loader."""
    system = _system(session, elapsed_s)
    loaders = []
    for record in session.records:
        meter = record.meter
        stats = meter.stats()
        waits, steps = list(meter.wait), list(meter.step)
        workers = worker_evidence(record, waits, stats.step_s_p50)
        model = f"{record.model[0]} ({record.model[1]})" if record.model else None
        verdict = judge(
            stats,
            record.settings,
            workers,
            system,
            target=record.target,
            model=model,
            program=program,
            waits=waits,
            steps=steps,
        )
        offset = meter.started - session.started
        timeline = tuple(
            (offset + t, w, s)
            for t, w, s in zip(meter.handover, meter.wait, meter.step, strict=False)
        )
        loaders.append(
            LoaderReport(
                name=record.name,
                settings=dict(record.settings),
                stats=stats,
                workers=workers,
                target=record.target,
                model=model,
                verdict=verdict,
                stale=tuple(_stale.describe(e, record.settings) for e in record.stale),
                timeline=timeline,
            )
        )
    return WatchReport(
        program=program,
        argv=argv,
        exit_code=exit_code,
        interrupted=interrupted,
        error=error,
        elapsed_s=elapsed_s,
        loaders=tuple(loaders),
        system=system,
    )
