"""The ``wellfed`` command: argparse wiring and rendering only; each command is one library call.

Exit codes: 0 ok; 1 ran and found problems; 2 usage or configuration error; 3 runtime failure;
128 + the signal's number when interrupted: 130 Ctrl-C (SIGINT), 143 SIGTERM, 129 SIGHUP, each
after the child processes in flight (a trial, a probe, their workers) were stopped.
Results go to stdout, progress and diagnostics to stderr. torch is imported inside the
commands, so ``wellfed --help`` answers at once.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from wellfed._units import format_bytes

__all__ = ["main"]

EXIT_OK = 0
EXIT_FOUND = 1
EXIT_USAGE = 2
EXIT_RUNTIME = 3

Handler = Callable[[argparse.Namespace], int]

#: Signals handled like Ctrl-C: the command unwinds (each isolated child process tree in flight
#: is killed on the way, see wellfed._isolate) and exits 128 + the signal's number.
TERMINATING_SIGNALS = ("SIGTERM", "SIGHUP")


class _Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised in the main thread so that cleanup runs as for Ctrl-C."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


#: The process that installed ``_on_terminating_signal``. A process forked from it by the
#: user's code (a ``multiprocessing.Pool`` the dataset's ``__init__`` starts, as
#: milesial/Pytorch-UNet's BasicDataset does) inherits the handler; when the pool ends it with
#: SIGTERM, it must die as it would have without wellfed, not raise _Terminated and print a
#: traceback.
_handler_pid: int | None = None


def _on_terminating_signal(signum: int, frame: Any) -> None:
    if os.getpid() != _handler_pid:
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)  # the default action: terminate, as without wellfed
        return
    # A second signal must not interrupt the cleanup the first one starts.
    for name in (*TERMINATING_SIGNALS, "SIGINT"):
        with contextlib.suppress(AttributeError, ValueError, OSError):
            signal.signal(getattr(signal, name), signal.SIG_IGN)
    raise _Terminated(signum)


@contextlib.contextmanager
def _terminating_signals_raise() -> Any:
    """Within the block, SIGTERM and SIGHUP raise _Terminated; the old handlers come back after.

    Only a signal left at its default action is taken over: one ignored on purpose (``nohup``
    ignores SIGHUP) or handled by an embedding program stays as it is. Only from the main
    thread (elsewhere Python refuses signal handlers): ``main()`` called from another thread
    keeps the signals as they are.
    """
    global _handler_pid
    _handler_pid = os.getpid()
    old: dict[int, Any] = {}
    for name in (*TERMINATING_SIGNALS, "SIGINT"):
        sig = getattr(signal, name, None)
        if sig is None:
            continue
        try:
            current = signal.getsignal(sig)
            if current is None:
                continue  # a handler installed outside Python: it could not be put back
            old[sig] = current
            # SIGINT keeps Python's KeyboardInterrupt; it is only restored after the block
            if name != "SIGINT" and current == signal.SIG_DFL:
                signal.signal(sig, _on_terminating_signal)
        except ValueError:  # not the main thread
            old.pop(sig, None)
    try:
        yield
    finally:
        for sig, handler in old.items():
            with contextlib.suppress(ValueError, OSError, TypeError):
                signal.signal(sig, handler)


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors exit with EXIT_USAGE (argparse's own is 2 too)."""


def _console(stderr: bool = False, width: int = 120) -> Any:
    """A Rich console; ``width`` columns where the output is not a terminal (pipes, files)."""
    from rich.console import Console

    console = Console(stderr=stderr, highlight=False, soft_wrap=False)
    if not console.is_terminal:  # pipes and files: wide enough for the tables
        console = Console(stderr=stderr, highlight=False, soft_wrap=False, width=width)
    return console


def _print_table(out: Any, table: Any) -> None:
    """Print a Rich table; where ``out`` is no terminal, no row wraps inside a cell.

    Rich fits a table to the console's width by wrapping its widest cells, which splits a row
    (a configuration label, a number) over two lines. A pipe or a file has no width to fit, so
    there the console is widened to the table's natural width for this one table (issue 15:
    ``wellfed tune | cat`` printed the ceiling row on two lines). A terminal keeps its width.
    """
    if out.is_terminal:
        out.print(table)
        return
    from rich.measure import Measurement

    needed = Measurement.get(out, out.options.update(width=10_000), table).maximum
    width = out.width
    out.width = max(width, needed)
    try:
        out.print(table)
    finally:
        out.width = width


def _write_json(data: dict[str, Any], dest: str) -> None:
    text = json.dumps(data, indent=2, default=str)
    if dest == "-":
        sys.stdout.write(text + "\n")
    else:
        Path(dest).write_text(text + "\n")


def _spec_from_args(args: argparse.Namespace, *, purpose: str, batch_size: bool = True) -> Any:
    """The LoaderSpec a command works on: ``wellfed.workloads.resolve_spec`` of its arguments.

    Reads ``target`` and, where the command has them, ``data``, ``on_bad_file`` and (when
    ``batch_size``) ``batch_size``. ``purpose`` completes "both name what to ..." in the
    conflict error (WF011).
    """
    from wellfed.workloads import resolve_spec

    return resolve_spec(
        args.target,
        data=getattr(args, "data", None),
        on_bad_file=getattr(args, "on_bad_file", "fail"),
        batch_size=getattr(args, "batch_size", None) if batch_size else None,
        purpose=purpose,
    )


TARGET_HELP = "pkg.module:attr or path/to/file.py:attr (Dataset, DataLoader or factory)"


def _add_target(p: Any, *, data: bool) -> None:
    """TARGET (optional: the built-in workload), and --data/--on-bad-file, the same everywhere."""
    p.add_argument("target", nargs="?", help=TARGET_HELP)
    if data:
        p.add_argument(
            "--data",
            metavar="DIR",
            help="run the built-in pipeline over this ImageFolder directory",
        )
        p.add_argument(
            "--on-bad-file",
            choices=("fail", "skip"),
            default="fail",
            help="built-in pipeline: stop at an unreadable image (fail) or leave it out (skip)",
        )


def _add_batch_size(p: Any) -> None:
    """``--batch-size N`` for commands that load the TARGET's batches (tune, repro)."""
    p.add_argument(
        "--batch-size",
        type=int,
        metavar="N",
        help="samples per batch (default: the target's, else 32)",
    )


def _add_json(p: Any, what: str) -> None:
    """``--json [FILE]``, the same on every command."""
    p.add_argument(
        "--json",
        nargs="?",
        const="-",
        metavar="FILE",
        help=f"write {what} as JSON to FILE (or stdout with no FILE or '-')",
    )


# ----------------------------------------------------------------------------- info


def _add_info(sub: Any) -> None:
    p = sub.add_parser(
        "info", help="show the facts of this machine that decide DataLoader settings"
    )
    _add_json(p, "the facts")
    p.set_defaults(handler=_run_info)


def _run_info(args: argparse.Namespace) -> int:
    from wellfed.platform import collect_platform_info

    info = collect_platform_info(measure_transfer=True)
    if args.json:
        _write_json(info.to_dict(), args.json)
        if args.json == "-":
            return EXIT_OK
    from rich.table import Table

    table = Table(title="wellfed info", show_header=False, title_justify="left")
    table.add_column("fact", style="bold")
    table.add_column("value")
    quota = f" (cgroup quota {info.cpu_quota:g})" if info.cpu_quota is not None else ""
    rows = [
        ("OS", f"{info.os} {info.os_release} ({info.machine})"),
        ("Python", info.python_version),
        ("torch", info.torch_version or "not installed"),
        ("numpy", info.numpy_version or "not installed"),
        (
            "start methods",
            ", ".join(info.start_methods) + f" (default {info.default_start_method})",
        ),
        ("usable CPUs", f"{info.usable_cpus} of {info.cpu_count}{quota}"),
        (
            "RAM",
            f"{format_bytes(info.ram_available_bytes)} available of "
            f"{format_bytes(info.ram_total_bytes)}",
        ),
        (
            "/dev/shm",
            f"{format_bytes(info.shm_free_bytes)} free of {format_bytes(info.shm_total_bytes)}"
            if info.shm_total_bytes is not None
            else "none",
        ),
        ("open files (ulimit -n)", f"{info.open_files_limit} (hard {info.open_files_hard_limit})"),
        (
            "GPUs",
            ", ".join(f"{g.index}: {g.name} ({format_bytes(g.memory_bytes)})" for g in info.gpus)
            or "none (no CUDA device)",
        ),
        (
            "host-to-device copy",
            info.host_to_device.describe()
            if info.host_to_device is not None
            else "not measured: the test copy failed on the device (busy or out of memory)"
            if info.gpus
            else "no CUDA device: not measured",
        ),
    ]
    for key, value in rows:
        table.add_row(key, value)
    _print_table(_console(), table)
    return EXIT_OK


# ----------------------------------------------------------------------------- tune


def _add_tune(sub: Any) -> None:
    p = sub.add_parser(
        "tune",
        help="measure DataLoader configurations here and recommend the fastest",
        description=(
            "Measure loader configurations on this machine and data (the main process, thread "
            "workers and worker processes, batched fetch, prefetch depth), and recommend one "
            "with the evidence. With no TARGET, measures the built-in workload: "
            "ImageFolder JPEG decode + augment over real photos shipped with wellfed."
        ),
    )
    _add_target(p, data=True)
    _add_batch_size(p)
    p.add_argument(
        "--start-method", choices=("fork", "spawn", "forkserver"), help="worker start method"
    )
    p.add_argument(
        "--max-workers",
        type=int,
        metavar="N",
        help="most worker processes to try on the node (per rank: N // --nproc-per-node)",
    )
    p.add_argument(
        "--max-threads",
        type=int,
        metavar="N",
        help="most thread workers to try on the node (default 256; per rank: N // "
        "--nproc-per-node; 0: measure no threads)",
    )
    p.add_argument(
        "--nproc-per-node",
        type=int,
        metavar="N",
        help="measure N loaders at once, as N local ranks (e.g. torchrun --nproc-per-node N) "
        "will run, and recommend the per-rank configuration; CPU, memory and worker caps are "
        "per node (default: LOCAL_WORLD_SIZE when set, as under torchrun, else 1)",
    )
    p.add_argument(
        "--budget-s",
        type=float,
        metavar="S",
        help="bound on the whole run, seconds (default 75 for one rank, x (1 + (N-1)/2) for "
        "--nproc-per-node N: 112 for 2, 188 for 4): no trial starts once it is spent (a note "
        "says what was skipped), and a trial still running at the budget plus one "
        "main-process trial's timeout (20 s + 6 x the measuring time; 29 s at the default) is "
        "cut short there",
    )
    _add_json(p, "the result")
    p.add_argument(
        "--plot",
        metavar="FILE",
        help="also draw samples/s against workers, one line per backend, as a PNG in FILE "
        '(needs matplotlib: pip install "wellfed[plot]")',
    )
    p.add_argument(
        "--no-store", action="store_true", help="do not store the result for create_dataloader"
    )
    p.add_argument(
        "--step-ms",
        type=float,
        metavar="MS",
        help="tune against a training step of MS ms per batch: the cheapest configuration "
        "whose data wait is at most 5%% of the step (see docs/watch.md)",
    )
    p.set_defaults(handler=_run_tune)


def _check_plot_option(text: str) -> None:
    """Refuse a ``--plot FILE`` that cannot be written before the sweep runs, not after.

    Raises:
        ConfigError: FILE does not end in .png, or its folder does not exist (WF010).
        DependencyError: matplotlib is not installed.
    """
    from wellfed.errors import DependencyError, check_option

    path = Path(text)
    check_option(
        "--plot",
        text,
        path.suffix.lower() == ".png",
        "a file name ending in .png",
        code="WF010",
        fix=f"Name the file e.g. {(path.stem or 'sweep') + '.png'!r}.",
    )
    check_option(
        "--plot",
        text,
        path.parent.is_dir(),
        "a file in an existing folder",
        code="WF010",
        fix=f"Create {str(path.parent)!r} first, or write the plot elsewhere.",
    )
    try:
        import matplotlib  # noqa: F401
    except ImportError as exc:
        raise DependencyError(
            f"matplotlib is not installed: --plot needs it ({exc}). Install it with "
            '`pip install "wellfed[plot]"`, or leave out --plot.',
            attribute="plot",
            value=text,
        ) from exc


def _run_tune(args: argparse.Namespace) -> int:
    from wellfed.platform import local_rank
    from wellfed.tune import DEFAULT_BUDGET_S, default_budget_s, tune
    from wellfed.tune._ranks import resolve_nproc

    if getattr(args, "step_ms", None) is not None:
        return _run_tune_step(args)
    err = _console(stderr=True)
    if args.plot is not None:
        _check_plot_option(args.plot)
    spec = _spec_from_args(args, purpose="measure")
    if not args.target:
        for path, reason in getattr(spec.dataset, "skipped", ()):
            err.print(f"[yellow]left out[/] {path}: {reason}")
    nproc, nproc_source = resolve_nproc(args.nproc_per_node)
    rank = local_rank()
    follower = nproc > 1 and rank is not None and rank > 0  # local rank 0 measures for all
    quiet = args.json == "-" or follower
    budget = args.budget_s if args.budget_s is not None else default_budget_s(nproc)
    if not quiet:
        err.print(f"[bold]workload[/]: {spec.description}")
        if nproc > 1:
            scaled = (
                f"; the default {DEFAULT_BUDGET_S:.0f}s scaled for {nproc} ranks"
                if args.budget_s is None
                else ""
            )
            err.print(
                f"[bold]per rank[/]: {nproc} loaders measured at once ({nproc_source}), "
                f"time bound {budget:.0f}s{scaled}",
                soft_wrap=True,
            )
    elif follower:
        err.print(
            f"local rank {rank} of {nproc}: local rank 0 measures all {nproc} loaders at once; "
            "waiting for its result",
            markup=False,
            soft_wrap=True,
        )
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TimeElapsedColumn(),
        TextColumn(f"of ~{budget:.0f}s budget"),
        console=err,
        transient=True,
        disable=quiet or not err.is_terminal,
    ) as bar:
        task = bar.add_task("starting", total=1.0)

        def progress(fraction: float, message: str) -> None:
            bar.update(task, completed=fraction, description=message)
            if not err.is_terminal and not quiet:
                err.print(f"  {message}")

        result = tune(
            spec,
            budget_s=budget,
            start_method=args.start_method,
            max_workers=args.max_workers,
            max_threads=args.max_threads,
            store=not args.no_store,
            progress=progress,
            nproc_per_node=args.nproc_per_node,
        )
    if args.json is not None and not follower:
        _write_json(result.to_dict(), args.json)
    if not quiet:
        _render_tune(result)
    if args.plot is not None and not follower:
        from wellfed.tune import plot_sweep

        written = plot_sweep(result, args.plot)
        err.print(f"plot written to {written}", markup=False, soft_wrap=True)
    if result.findings or _bad_file_trials(result):
        return EXIT_FOUND  # the README's 1: problems found (hazards, an unreadable image)
    if result.recommended is None:
        return EXIT_RUNTIME
    return EXIT_OK


def _run_tune_step(args: argparse.Namespace) -> int:
    """``wellfed tune --step-ms MS``: ``wellfed.tune.tune_for_step`` and its table."""
    from rich.table import Table

    from wellfed.errors import ConfigError
    from wellfed.tune import tune_for_step

    if args.plot is not None:
        raise ConfigError(
            "Conflicting options: --plot draws the throughput sweep, which --step-ms does not "
            "run. Leave out one of them.",
            code="WF011",
            attribute="plot",
            value=args.plot,
        )
    spec = _spec_from_args(args, purpose="measure")
    quiet = args.json == "-"
    err = _console(stderr=True)
    if not quiet:
        err.print(f"[bold]workload[/]: {spec.description}; step {args.step_ms:g} ms per batch")

    def progress(fraction: float, message: str) -> None:
        if not quiet:
            err.print(f"  {message}", markup=False, highlight=False)

    result = tune_for_step(
        spec,
        step_s=args.step_ms / 1e3,
        max_workers=args.max_workers,
        max_threads=args.max_threads,
        start_method=args.start_method,
        budget_s=args.budget_s if args.budget_s is not None else 120.0,
        progress=progress,
    )
    if args.json is not None:
        _write_json(result.to_dict(), args.json)
    if quiet:
        return EXIT_OK if result.recommended is not None else EXIT_RUNTIME
    out = _console(width=150)
    table = Table(
        title=f"wellfed tune --step-ms {args.step_ms:g}: {result.description}",
        title_justify="left",
    )
    for col in ("configuration", "data-bound", "samples/s", "wait p90 ms", "memory", ""):
        table.add_column(col, justify="left" if col in ("configuration", "") else "right")
    rec = result.recommended
    for t in result.trials:
        mark = "[bold green]<- recommended[/]" if rec is not None and t is rec else ""
        if t.ok:
            table.add_row(
                t.config.label(),
                f"{100 * (t.data_bound_fraction or 0):.1f}%",
                f"{t.samples_per_s or 0:.0f}",
                f"{1e3 * (t.wait_s_p90 or 0):.1f}",
                format_bytes(t.peak_memory_bytes),
                mark,
            )
        else:
            first = (t.error or "").strip().splitlines()[0][:60] if t.error else ""
            table.add_row(t.config.label(), f"[red]{t.status}[/]", "", "", "", first)
    _print_table(out, table)
    out.print(
        f"{'Recommended' if result.reached else 'Best found'}: {result.reason}.", markup=False
    )
    if not result.threads.get("safe"):
        out.print(
            f"Thread workers not measured: {result.threads.get('why') or 'not probed'}.",
            markup=False,
        )
    if rec is None:
        return EXIT_RUNTIME
    return EXIT_OK


def _bad_file_trials(result: Any) -> list[Any]:
    """Trials that failed on an unreadable data file (WF020): a problem in the data."""
    trials = [*result.trials, result.baseline]
    return [t for t in trials if t is not None and t.error_code == "WF020"]


def _render_tune(result: Any) -> None:
    from rich.markup import escape
    from rich.table import Table

    from wellfed.doctor import hanging_lines

    ranked = getattr(result, "nproc_per_node", 1) > 1
    # a label such as "4 workers, persistent, fork" on one line (two more columns per rank)
    out = _console(width=175 if ranked else 150)
    base = (
        result.baseline.samples_per_s
        if result.baseline is not None and result.baseline.ok
        else None
    )
    rec = result.recommended
    nproc = getattr(result, "nproc_per_node", 1)
    title = f"wellfed tune: {result.workload['description']}"
    if ranked:
        title += (
            f"; {nproc} ranks at once: samples/s and memory per rank (the slowest rank's), "
            f"node = {nproc} x that"
        )
    table = Table(title=title, title_justify="left")
    table.add_column("configuration")
    table.add_column("backend")
    table.add_column("samples/s", justify="right")  # with ranks: the slowest rank's
    table.add_column("± (IQR)", justify="right")
    if ranked:
        table.add_column("ranks" if nproc <= 4 else "ranks (min-max)", justify="right")
        table.add_column("node", justify="right")
    table.add_column("vs main process", justify="right")
    table.add_column("first batch s", justify="right")
    kind = result.trials[0].memory_kind or "rss" if result.trials else None
    memory = f"memory ({kind})" if kind else "memory"
    table.add_column(memory, justify="right")
    table.add_column("")

    def rank_cells(t: Any) -> list[str]:
        if not ranked:
            return []
        if not t.ok:
            return ["", ""]
        rates = [r.samples_per_s for r in t.ranks]
        if nproc <= 4:
            each = " / ".join(f"{rate:.0f}" for rate in rates)
        else:
            each = f"{min(rates):.0f}-{max(rates):.0f}"
        return [each, f"{t.aggregate_samples_per_s:.0f}"]

    for t in result.trials:
        mark = ""
        if rec is not None and t.config == rec.config:
            mark = "[bold green]<- recommended[/]"
        elif result.best is not None and t.config == result.best.config:
            mark = "fastest"
        if t.ok:
            table.add_row(
                t.config.label(),
                t.config.backend,
                f"{t.samples_per_s:.0f}",
                f"{t.samples_per_s_spread:.0f}",
                *rank_cells(t),
                f"{t.samples_per_s / base:.2f}x" if base else "-",
                f"{t.first_batch_s:.2f}",
                format_bytes(t.peak_memory_bytes),
                mark,
            )
        else:
            first_line = (t.error or "").strip().splitlines()[0] if t.error else ""
            table.add_row(
                t.config.label(),
                t.config.backend,
                f"[red]{t.status}[/]",
                "",
                *rank_cells(t),
                "",
                "",
                format_bytes(t.peak_memory_bytes),
                first_line[:60],
            )
    if result.ceiling_samples_per_s is not None:
        per = f" / {nproc} ranks" if ranked else ""
        table.add_row(
            f"[dim]ceiling: 1 process x {result.platform.usable_cpus} "
            f"{'CPUs' if ranked else 'usable CPUs'}{per}[/]",
            "",
            f"[dim]{result.ceiling_samples_per_s:.0f}[/]",
            "",
            *(["", f"[dim]{nproc * result.ceiling_samples_per_s:.0f}[/]"] if ranked else []),
            f"[dim]{result.ceiling_samples_per_s / base:.2f}x[/]" if base else "",
            "",
            "",
            "",
        )
    copy_ceiling = getattr(result, "copy_ceiling_samples_per_s", None)
    h2d = getattr(result.platform, "host_to_device", None)
    if copy_ceiling is not None and h2d is not None and result.bytes_per_sample:
        table.add_row(
            f"[dim]ceiling: pinned copy to cuda:{h2d.device}, {h2d.pinned_gb_s:.1f} GB/s / "
            f"{format_bytes(result.bytes_per_sample)} per sample[/]",
            "",
            f"[dim]{copy_ceiling:.0f}[/]",
            "",
            *(["", f"[dim]{nproc * copy_ceiling:.0f}[/]"] if ranked else []),
            f"[dim]{copy_ceiling / base:.2f}x[/]" if base else "",
            "",
            "",
            "",
        )
    _print_table(out, table)
    split = getattr(result, "split", None)
    if split is not None:
        out.print(_split_line(split), markup=False, highlight=False, soft_wrap=True)
    decode = getattr(result, "decode", None)
    if decode is not None:
        out.print(f"decode form: {decode.reason}", markup=False, highlight=False, soft_wrap=True)
    for t in result.trials:
        if not t.ok and t.error:
            out.print(f"[red]{escape(t.config.label())} {t.status}[/]:")
            out.print(f"{t.error.strip()}\n", markup=False, highlight=False, soft_wrap=True)
    for f in result.findings:
        out.print(
            f"[red]error[/] {escape(str(f.get('code', '')))} {escape(str(f.get('path')))}: "
            f"{escape(str(f.get('message')))}"
        )
        # the fix's own lines (code, often) indented beneath "fix:", never wrapped
        for line in hanging_lines(str(f.get("fix") or ""), "  fix: "):
            out.print(line, markup=False, highlight=False, soft_wrap=True)
    probes = getattr(result, "probes", None) or {}
    for name, key, label in (
        ("batched_fetch", "eligible", "batched fetch"),
        ("threads", "safe", "thread workers"),
    ):
        probe = probes.get(name)
        if probe and probe.get("why"):
            verdict = "[green]yes[/]" if probe.get(key) else "[yellow]no[/]"
            out.print(f"probe: {label}? {verdict}: {escape(str(probe['why']))}", highlight=False)
    for note in getattr(result, "notes", ()) or ():
        out.print(f"search: {note}", markup=False, highlight=False)
    out.print(
        f"[dim]search ended: {result.stopped_because}; {result.tuning_time_s:.0f}s in all "
        f"(time bound {result.budget_s:.0f}s)[/]"
    )
    if rec is None:
        out.print("[red]No configuration could be measured[/]; see the errors above.")
        return
    per_rank = " per rank" if ranked else ""
    out.print(f"\n[bold]Recommended{per_rank}[/] ({rec.reason})\n")
    out.print(rec.code, markup=False, soft_wrap=True)  # never wrap: it must paste as Python
    if result.stored_path:
        where = f" in each of {nproc} local ranks (LOCAL_WORLD_SIZE={nproc})" if ranked else ""
        out.print(
            f"\n[dim]stored for create_dataloader(num_workers='auto'){where}: "
            f"{result.stored_path}[/]"
        )


def _split_line(split: Any) -> str:
    """The built-in workload's two forms at the recommended configuration, in two lines."""
    return (
        f"split (measured at {split.config.label()}, device half on {split.device}): bytes per "
        f"sample from the workers float32 {split.float_bytes_per_sample:,.0f} B, uint8 "
        f"{split.uint8_bytes_per_sample:,.0f} B; samples/s float {split.float_samples_per_s:.0f}, "
        f"uint8 {split.uint8_samples_per_s:.0f} (noise ±{split.noise_samples_per_s:.0f})\n"
        f"  -> {split.recommendation}"
    )


# ----------------------------------------------------------------------------- doctor


def _add_doctor(sub: Any) -> None:
    p = sub.add_parser(
        "doctor",
        help="find every worker hazard in a dataset: attribute path, why, and the fix",
        description=(
            "Check a Dataset or DataLoader for what breaks, corrupts or slows it in DataLoader "
            "workers (unpicklable state, shared handles, CUDA, duplicated RNGs, copy-on-read "
            "memory, stale state, /dev/shm, thread pools, unsharded iterables, worker settings), "
            "then confirm in real workers under each start method. With no TARGET, checks the "
            "built-in workload. Exit 0: no errors; 1: errors found; 2: usage; 3: runtime failure."
        ),
    )
    _add_target(p, data=False)
    _add_json(p, "the report")
    p.add_argument(
        "--static-only", action="store_true", help="skip the live probe (static checks only, < 2 s)"
    )
    p.add_argument(
        "--start-method",
        action="append",
        choices=("fork", "spawn", "forkserver"),
        metavar="NAME",
        help="judge this start method (fork, spawn, forkserver; repeatable); "
        "default: all available",
    )
    p.add_argument(
        "--timeout-s",
        type=float,
        default=60.0,
        metavar="S",
        help="live-probe budget, seconds (default 60)",
    )
    p.set_defaults(handler=_run_doctor)


def _run_doctor(args: argparse.Namespace) -> int:
    from wellfed.doctor import diagnose, render_text

    spec = _spec_from_args(args, purpose="check")
    live = not args.static_only
    methods = ", ".join(args.start_method) if args.start_method else "every start method"
    what = (
        f"live probe: real workers under {methods} (up to {args.timeout_s:.0f} s)"
        if live
        else "static checks"
    )
    quiet = args.json == "-"
    err = _console(stderr=True)
    if live and not quiet and not err.is_terminal:
        err.print(f"{what}...")
    with (
        err.status(what, spinner="dots")
        if live and not quiet and err.is_terminal
        else contextlib.nullcontext()
    ):
        report = diagnose(
            spec, live=live, start_methods=args.start_method, timeout_s=args.timeout_s
        )
    if args.json:
        _write_json(report.to_dict(), args.json)
    if args.json != "-":
        sys.stdout.write(render_text(report) + "\n")
    return EXIT_FOUND if report.has_errors else EXIT_OK


# ----------------------------------------------------------------------------- repro (issue 4)


def _add_repro(sub: Any) -> None:
    p = sub.add_parser(
        "repro",
        help="check that a loader gives the same batches for every worker count and start method",
        description=(
            "Build the loader for each worker count and start method, hash every batch over "
            "a few epochs, and report the first batch and sample that differ, with the likely "
            "cause. By default the loader is wellfed.create_dataloader(..., seed=SEED); with "
            "--plain it is the target's own torch DataLoader after wellfed.set_seed(SEED). "
            "With no TARGET, checks the built-in workload."
        ),
    )
    _add_target(p, data=True)
    p.add_argument("--seed", type=int, default=0, metavar="N", help="seed (default 0)")
    p.add_argument(
        "--plain", action="store_true", help="check a plain torch DataLoader seeded with set_seed"
    )
    p.add_argument(
        "--epochs", type=int, default=2, metavar="N", help="epochs per configuration (default 2)"
    )
    p.add_argument(
        "--num-workers",
        default="0,2",
        metavar="N,N",
        help="worker counts to compare, comma-separated (default 0,2)",
    )
    p.add_argument(
        "--start-method",
        action="append",
        choices=("fork", "spawn", "forkserver"),
        help="start method for counts above 0 (repeat for several; default: the platform's)",
    )
    _add_batch_size(p)
    p.add_argument(
        "--max-batches",
        type=int,
        default=10,
        metavar="N",
        help="batches compared per epoch (default 10; 0: all)",
    )
    _add_json(p, "the report")
    p.set_defaults(handler=_run_repro)


def _run_repro(args: argparse.Namespace) -> int:
    from wellfed.errors import ConfigError

    try:
        counts = tuple(int(x) for x in args.num_workers.split(",") if x.strip())
    except ValueError:
        raise ConfigError(
            f"Invalid option: --num-workers={args.num_workers!r} is not a comma-separated list "
            "of ints. Pass e.g. --num-workers 0,2.",
            code="WF211",
            attribute="num_workers",
            value=args.num_workers,
        ) from None
    spec = _spec_from_args(args, purpose="check")
    from wellfed.repro import loader_factory, verify_reproducibility

    make_loader = loader_factory(spec, seed=args.seed, plain=args.plain)

    report = verify_reproducibility(
        make_loader,
        epochs=args.epochs,
        num_workers=counts,
        start_methods=args.start_method,
        max_batches=args.max_batches or None,
    )
    if args.json is not None:
        _write_json(report.to_dict(), args.json)
    if args.json != "-":
        _render_repro(report, spec.description)
    return EXIT_OK if report.reproducible else EXIT_FOUND


def _render_repro(report: Any, description: str) -> None:
    from rich.table import Table

    out = _console()
    table = Table(title=f"wellfed repro: {description}", title_justify="left")
    table.add_column("configuration")
    table.add_column("batches", justify="right")
    table.add_column("seconds", justify="right")
    table.add_column("same batches as the first")
    for i, run in enumerate(report.runs):
        if run.error:
            verdict = f"[red]failed[/]: {run.error.splitlines()[0][:70]}"
        elif i == 0:
            verdict = "(reference)"
        else:
            verdict = "[green]yes[/]" if run.matches_reference else "[red]no[/]"
        table.add_row(run.label, str(run.batches), f"{run.seconds:.2f}", verdict)
    _print_table(out, table)
    if report.reproducible:
        out.print(
            "[bold green]Reproducible[/]: identical batches in every configuration over "
            f"{report.epochs} epoch(s)."
        )
        return
    m = report.mismatch
    if m is not None:
        sample = f", sample {m.sample}" if m.sample is not None else ""
        out.print(
            f"[bold red]Not reproducible[/]: {m.run} differs first at epoch {m.epoch}, "
            f"batch {m.batch}{sample}."
        )
    else:
        out.print("[bold red]Not reproducible[/]: a configuration failed.")
    if report.likely_cause:
        out.print(f"likely cause: {report.likely_cause}", markup=False)
    for f in report.findings:
        out.print(
            f"  [{getattr(f, 'code', '')}] {getattr(f, 'path', '')}: fix: {getattr(f, 'fix', '')}",
            markup=False,
        )


# ----------------------------------------------------------------------------- precompute (issue 6)


def _add_precompute(sub: Any) -> None:
    p = sub.add_parser(
        "precompute",
        help="run an expensive transform (a GPU model) once and store its outputs memory-mapped",
        description=(
            "Run FN over every batch of TARGET once (source read by workers, FN in this process "
            "on the device) and write the outputs to a sharded, memory-mapped store in OUT; "
            "train from it with wellfed.CachedDataset(OUT) and any number of workers. The same "
            "command resumes an interrupted run. Exit 0: done; 1: an unreadable image; 2: usage; "
            "3: runtime failure (a store of another fingerprint, a corrupt store, another "
            "precompute writing OUT)."
        ),
    )
    _add_target(p, data=True)
    p.add_argument(
        "--fn",
        required=True,
        metavar="MODULE:ATTR",
        help="the transform: a callable, a torch.nn.Module, or a Module class "
        "(built with no arguments)",
    )
    p.add_argument(
        "--out",
        required=True,
        metavar="DIR",
        help="store directory (new, empty, or a store to resume)",
    )
    p.add_argument(
        "--batch-size", type=int, default=64, metavar="N", help="samples per FN call (default 64)"
    )
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:N")
    p.add_argument(
        "--num-workers",
        default="auto",
        metavar="N",
        help="source-reading workers, or auto (default)",
    )
    p.add_argument(
        "--fn-concurrency",
        default="auto",
        metavar="N",
        help="batches FN works on at once, in threads "
        "(auto: one per CPU for a Module on the CPU, else 1)",
    )
    p.add_argument(
        "--engine",
        choices=("local", "ray"),
        default="local",
        help="local (default) or ray (Ray Data)",
    )
    p.add_argument(
        "--ray-address",
        default=None,
        metavar="ADDR",
        help="engine ray: an existing cluster, host:port or auto (the one `ray start` "
        "started here); default: RAY_ADDRESS, else a new local Ray",
    )
    p.add_argument(
        "--input",
        default="auto",
        metavar="SEL",
        help="the part of each batch FN gets: auto, an int position, a dict key, or none",
    )
    p.add_argument(
        "--no-keep-source",
        action="store_true",
        help="do not store the source's other fields (labels)",
    )
    p.add_argument(
        "--fn-version",
        default=None,
        metavar="V",
        help="your version of FN, recorded in the fingerprint",
    )
    p.add_argument(
        "--shard-bytes", default="64MB", metavar="SIZE", help="target shard size (default 64MB)"
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="rebuild OUT when it holds a store with another fingerprint or a corrupt manifest",
    )
    p.add_argument(
        "--wait",
        type=float,
        default=0.0,
        metavar="S",
        help="when another precompute is writing OUT, wait up to S seconds for it "
        "(default 0: refuse at once; inf: as long as it takes)",
    )
    _add_json(p, "the store's summary")
    p.set_defaults(handler=_run_precompute)


def _auto_or_int(text: str, name: str, example: str) -> int | str:
    """An option that takes 'auto' or an int, as the API gets it."""
    from wellfed.errors import ConfigError

    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        flag = "--" + name.replace("_", "-")
        raise ConfigError(
            f"Invalid option: {flag}={text!r} is not 'auto' or an int. "
            f"Use auto or a count such as {example}.",
            code="WF010",
            attribute=name,
            value=text,
        ) from None


def _run_precompute(args: argparse.Namespace) -> int:
    import time

    from wellfed.cache import precompute
    from wellfed.target import resolve_fn

    workers = _auto_or_int(args.num_workers, "num_workers", "2")
    concurrency = _auto_or_int(args.fn_concurrency, "fn_concurrency", "1")
    selection: int | str | None = args.input
    if selection == "none":
        selection = None
    elif isinstance(selection, str) and selection.lstrip("-").isdigit():
        selection = int(selection)
    spec = _spec_from_args(args, purpose="precompute", batch_size=False)
    fn = resolve_fn(args.fn)
    err = _console(stderr=True)
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    started = time.perf_counter()
    with Progress(
        TextColumn("precompute"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("samples"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=False,
        disable=args.json or not err.is_terminal,
    ) as bar:
        task = bar.add_task("precompute", total=None)

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        cache = precompute(
            spec,
            fn,
            args.out,
            batch_size=args.batch_size,
            device=args.device,
            num_workers=workers,
            fn_concurrency=concurrency,
            engine=args.engine,
            overwrite=args.overwrite,
            input=selection,
            keep_source=not args.no_keep_source,
            fn_version=args.fn_version,
            shard_bytes=args.shard_bytes,
            wait_s=args.wait,
            ray_address=args.ray_address,
            progress=progress,
        )
    elapsed = time.perf_counter() - started
    summary = {**cache.summary(), "elapsed_s": elapsed}
    if args.json:
        _write_json(summary, args.json)
        if args.json == "-":
            return EXIT_OK
    fields = ", ".join(
        f"{f.name} {f.dtype}{list(f.shape) if f.shape is not None else ' (variable shape)'}"
        for f in cache.fields
    )
    sys.stdout.write(
        f"stored {len(cache)} samples in {summary['shards']} shards "
        f"({format_bytes(summary['bytes'])}) at {cache.path} in {elapsed:.1f} s\n"
        f"fields: {fields}\n"
        f"train from it: wellfed.CachedDataset({cache.path!r})\n"
    )
    return EXIT_OK


# ----------------------------------------------------------------------------- watch (issue 13)


def _add_watch(sub: Any) -> None:
    p = sub.add_parser(
        "watch",
        help="run a training script unchanged and show how much of each step waits on data",
        description=(
            "Run SCRIPT (or -m MODULE) with its arguments, unchanged, in this process, and meter "
            "every DataLoader it iterates: a live line per loader on stderr (data-bound %%, "
            "samples/s, wait p90), then per loader a verdict with its evidence (the workers' "
            "CPU and waits from /proc, storage pressure, the prefetch queue, restarts, stalls) "
            "and the next step. Options go before SCRIPT; everything after it is the script's. "
            "The script's exit code is passed on (130 after Ctrl-C)."
        ),
    )
    _add_json(p, "the stats, evidence and verdict per loader")
    p.add_argument(
        "--plot",
        metavar="FILE",
        help="also draw each loader's data wait and compute per step as a PNG in FILE "
        '(needs matplotlib: pip install "wellfed[plot]")',
    )
    p.add_argument(
        "--interval-s",
        type=float,
        default=0.5,
        metavar="S",
        help="seconds between two samples of the workers and live updates (default 0.5)",
    )
    p.add_argument(
        "-m",
        dest="module",
        nargs=argparse.REMAINDER,
        metavar="MODULE [ARGS]",
        help="run a module as python -m does; everything after it is its arguments",
    )
    p.add_argument("script", nargs="?", help="the training script (python SCRIPT ARGS...)")
    p.add_argument("args", nargs=argparse.REMAINDER, help="the script's arguments")
    p.set_defaults(handler=_run_watch)


def _live_line(record: Any) -> str:
    live = record.meter.live()
    s = record.settings
    count, unit = (
        (s["num_threads"], "thread") if s.get("num_threads") else (s["num_workers"], "worker")
    )
    workers = f"{count} {unit}{'s' if count != 1 else ''}"
    if live["data_bound_fraction"] is None or live["wait_s_p90"] is None:
        figures = "warming up"
    else:
        figures = (
            f"data-bound {100 * live['data_bound_fraction']:.0f}% · "
            f"{live['samples_per_s']:,.0f} samples/s · "
            f"wait p90 {1e3 * live['wait_s_p90']:.1f} ms"
        )
    return f"{record.name} · {workers} · {figures} · {live['steps']} steps, epoch {live['epochs']}"


def _run_watch(args: argparse.Namespace) -> int:
    import threading
    import time

    from wellfed._watch import plot_watch, watch_script
    from wellfed.errors import ConfigError

    if args.module is not None:
        if not args.module:
            raise ConfigError(
                "Invalid option: -m needs a module name (python -m style). "
                "Pass e.g. -m mypkg.train --epochs 1.",
                code="WF602",
                attribute="module",
                value=None,
            )
        if args.script is not None:
            raise ConfigError(
                f"Conflicting options: both a script ({args.script!r}) and -m "
                f"{args.module[0]} name the program. Give one of them.",
                code="WF602",
                attribute="module",
                value=args.module[0],
            )
        program, program_args, module = args.module[0], list(args.module[1:]), True
    elif args.script is None:
        raise ConfigError(
            "Invalid option: no SCRIPT given. Pass the training script and its arguments "
            "(wellfed watch train.py --epochs 1), or -m MODULE.",
            code="WF602",
            attribute="script",
            value=None,
        )
    else:
        program, program_args, module = args.script, list(args.args), False
    if args.plot is not None:
        _check_plot_option(args.plot)
    err = _console(stderr=True, width=160)
    lock = threading.Lock()
    records: list[Any] = []
    last_print = [time.monotonic()]
    from rich.live import Live
    from rich.text import Text

    live = (
        Live(
            Text(""),
            console=err,
            refresh_per_second=4,
            transient=False,
            redirect_stdout=sys.stdout.isatty(),
            redirect_stderr=True,
        )
        if err.is_terminal
        else None
    )

    def lines() -> Text:
        with lock:
            return Text("\n".join(_live_line(r) for r in records))

    def progress(event: str, record: Any) -> None:
        if event == "new":
            with lock:
                records.append(record)
        if live is not None:
            live.update(lines())
            return
        now = time.monotonic()
        if event == "epoch" or (event == "tick" and now - last_print[0] >= 10.0):
            last_print[0] = now
            targets = [record] if event == "epoch" else list(records)
            for r in targets:
                err.print(f"[watch] {_live_line(r)}", markup=False, highlight=False, soft_wrap=True)

    err.print(
        f"wellfed watch: running {'-m ' if module else ''}{program} "
        f"{' '.join(program_args)}".rstrip(),
        markup=False,
        highlight=False,
    )
    with live if live is not None else contextlib.nullcontext():
        report = watch_script(
            program,
            program_args,
            module=module,
            progress=progress,
            interval_s=args.interval_s,
        )
    if report.error and not report.interrupted:
        sys.stderr.write(report.error if report.error.endswith("\n") else report.error + "\n")
    _render_watch(report, err)
    if args.json is not None:
        _write_json(report.to_dict(), args.json)
    if args.plot is not None:
        written = plot_watch(report, args.plot)
        err.print(f"plot written to {written}", markup=False, soft_wrap=True)
    return int(report.exit_code)


def _render_watch(report: Any, out: Any) -> None:
    from rich.markup import escape
    from rich.table import Table

    how = "was interrupted (Ctrl-C)" if report.interrupted else f"exited with {report.exit_code}"
    out.print(
        f"\n[bold]wellfed watch[/]: {escape(report.program)} {how} after "
        f"{report.elapsed_s:.1f} s; {len(report.loaders)} DataLoader"
        f"{'s' if len(report.loaders) != 1 else ''} iterated"
    )
    if not report.loaders:
        out.print("No DataLoader was iterated: nothing to judge.")
        return
    table = Table(title_justify="left", show_edge=False)
    for col, justify in (
        ("loader", "left"),
        ("workers", "right"),
        ("steps", "right"),
        ("data-bound", "right"),
        ("samples/s", "right"),
        ("wait p90 ms", "right"),
        ("step p50 ms", "right"),
        ("stalls", "right"),
        ("warm-up s", "right"),
    ):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for lr in report.loaders:
        st, s = lr.stats, lr.settings
        table.add_row(
            escape(lr.name),
            f"{s['num_threads']}t" if s.get("num_threads") else str(s["num_workers"]),
            str(st.steps),
            "-" if st.data_bound_fraction is None else f"{100 * st.data_bound_fraction:.0f}%",
            "-" if st.samples_per_s is None else f"{st.samples_per_s:,.0f}",
            "-" if st.wait_s_p90 is None else f"{1e3 * st.wait_s_p90:.1f}",
            "-" if st.step_s_p50 is None else f"{1e3 * st.step_s_p50:.1f}",
            str(st.stalls),
            f"{st.warmup_wait_s:.2f}",
        )
    _print_table(out, table)
    short = [lr for lr in report.loaders if lr.verdict.kind == "too-short"]
    for lr in report.loaders:
        if lr.verdict.kind == "too-short":
            continue
        v = lr.verdict
        colour = "red" if v.kind == "data-bound" else "green"
        out.print(f"\n[bold]{escape(lr.name)}[/]")
        out.print(f"  [{colour}]{escape(v.headline)}[/]", soft_wrap=True)
        for cause in v.causes:
            out.print(f"  - {escape(cause.code)}: {escape(cause.summary)}", soft_wrap=True)
            for line in cause.evidence:
                out.print(f"      {escape(line)}", soft_wrap=True)
        out.print(f"  [bold]next[/]: {escape(v.next_step)}", soft_wrap=True)
    for lr in report.loaders:
        for entry in lr.stale:
            out.print(f"\n[bold red]stale dataset state[/] in {escape(lr.name)}")
            out.print(f"  {escape(entry['message'])}", soft_wrap=True)
            out.print(f"  [bold]fix[/]: {escape(entry['fix'])}", soft_wrap=True)
    if short:
        names = ", ".join(lr.name.split(" ", 1)[0] for lr in short)
        out.print(
            f"\n[dim]{names}: too few steps to judge (fewer than 5 after the first batch).[/]"
        )


# ----------------------------------------------------------------------------- main

#: One entry per subcommand: adds its parser (and sets ``handler``).
COMMANDS: list[Callable[[Any], None]] = [
    _add_info,
    _add_tune,
    _add_doctor,
    _add_repro,
    _add_precompute,
    _add_watch,
]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``wellfed`` command."""
    from wellfed import __version__

    parser = _Parser(
        prog="wellfed",
        description="Keep an accelerator fed: measure and fix PyTorch DataLoader pipelines.",
    )
    parser.add_argument("--version", action="version", version=f"wellfed {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    parser.add_argument("-v", "--verbose", action="store_true", help="show INFO logs")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    return parser


def _error_text(exc: BaseException) -> str:
    """A wellfed error's message; for one PyTorch re-raised from a DataLoader worker (its text
    "Caught X in DataLoader worker process N. Original Traceback ..."), the worker's own
    message and where it was raised, without the traceback (``--debug`` shows it)."""
    text = str(exc)
    name = type(exc).__name__
    head, _, rest = text.partition("\n")
    if not (head.startswith(f"Caught {name} ") and rest.startswith("Original Traceback")):
        return text
    qualified = f"{type(exc).__module__}.{name}: "
    lines = rest.splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith(qualified)]
    if not starts:
        return text
    message = "\n".join(lines[starts[-1] :])[len(qualified) :].strip()
    where = head[len(f"Caught {name} ") :].rstrip(".")
    return f"{where}: {message}"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``wellfed`` command; return its exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
        return int(exc.code or 0)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    level = logging.DEBUG if args.debug else logging.INFO if args.verbose else logging.WARNING
    logging.basicConfig(
        level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    from wellfed.errors import BadFileError, ConfigError, WellfedError

    handler: Handler = args.handler
    try:
        with _terminating_signals_raise():
            return handler(args)
    except _Terminated as exc:
        name = signal.Signals(exc.signum).name
        print(
            f"terminated by {name}; the processes wellfed had started were stopped",
            file=sys.stderr,
        )
        return 128 + exc.signum
    except ConfigError as exc:
        if args.debug:
            raise
        print(f"error: {_error_text(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except BadFileError as exc:
        if args.debug:
            raise
        print(f"error: {_error_text(exc)}", file=sys.stderr)
        return EXIT_FOUND
    except WellfedError as exc:
        if args.debug:
            raise
        print(f"error: {_error_text(exc)}", file=sys.stderr)
        return EXIT_RUNTIME
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if args.debug:
            raise
        print(
            f"error: unexpected {type(exc).__name__}: {exc}. Run again with --debug for the "
            "traceback, and report it if it is wellfed's fault.",
            file=sys.stderr,
        )
        return EXIT_RUNTIME
