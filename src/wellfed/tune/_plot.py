"""The sweep plot of a tune run: samples/s against workers, one line per backend.

matplotlib is optional (the ``plot`` extra) and imported only when a plot is drawn. The
figure is built on ``matplotlib.figure.Figure`` with the Agg canvas, so pyplot's global state
(its current figure, its backend) is left alone.
"""

from __future__ import annotations

import textwrap
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wellfed.errors import DependencyError, check_option
from wellfed.measure import Trial
from wellfed.tune._result import TuneResult

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["plot_sweep"]

#: Above this many workers the x-axis is log2 (symlog, so the main process at 0 shows).
LOG_X_ABOVE = 16

#: Line colour per backend (matplotlib's default cycle); batched fetch is the same colour,
#: dashed, with diamonds.
_COLORS = {"process": "C0", "thread": "C1", "main": "C2"}
_ORDER = ("main", "thread", "process")


def _require_matplotlib() -> None:
    """Raise DependencyError, naming the extra that installs it, unless matplotlib imports."""
    try:
        import matplotlib.backends.backend_agg
        import matplotlib.figure  # noqa: F401
    except ImportError as exc:
        raise DependencyError(
            f"matplotlib is not installed: plotting the sweep needs it ({exc}). Install it "
            'with `pip install "wellfed[plot]"`.',
            attribute="plot",
            value=None,
        ) from exc


def _series_label(backend: str, batched_fetch: bool) -> str:
    """The legend label of a backend's line: ``"thread"``, ``"thread, batched fetch"``..."""
    return f"{backend}, batched fetch" if batched_fetch else backend


def _series(trials: tuple[Trial, ...]) -> dict[tuple[str, bool], list[Trial]]:
    """The measured trials grouped by (backend, batched_fetch), in plotting order."""
    groups: dict[tuple[str, bool], list[Trial]] = defaultdict(list)
    for t in trials:
        if t.ok:
            groups[(t.config.backend, t.config.batched_fetch)].append(t)
    return {key: groups[key] for key in sorted(groups, key=lambda k: (_ORDER.index(k[0]), k[1]))}


def _rate(t: Trial) -> float:
    return float(t.samples_per_s or 0.0)


def _half_spread(t: Trial) -> float:
    return float(t.samples_per_s_spread or 0.0) / 2


def _x_ticks(counts: list[int], log: bool) -> list[int]:
    """The measured counts (linear axis), or 0 and the powers of two up to the top (log2)."""
    if not log:
        return sorted(set(counts))
    top = max(counts)
    ticks = [0, 1]
    while ticks[-1] < top:
        ticks.append(ticks[-1] * 2)
    return ticks


def _title(result: TuneResult) -> str:
    p = result.platform
    quota = f", cgroup quota {p.cpu_quota:g}" if p.cpu_quota is not None else ""
    description = str(result.workload.get("description", "")) or "(no description)"
    lines = textwrap.wrap(f"wellfed tune: {description}", width=90) or ["wellfed tune"]
    lines.append(
        f"{p.usable_cpus} usable CPUs of {p.cpu_count}{quota}; {p.os} {p.machine}, "
        f"torch {p.torch_version or '?'}"
    )
    nproc = getattr(result, "nproc_per_node", 1)
    if nproc > 1:
        lines[-1] += f"; {nproc} ranks measured at once, samples/s per rank (the slowest)"
    return "\n".join(lines)


def _draw_series(ax: Any, series: dict[tuple[str, bool], list[Trial]]) -> list[Any]:
    """Draw each series' line (the fastest trial per count) and its other trials; return the
    legend entries as (handle, label) pairs.
    """
    entries: list[Any] = []
    others = False
    for (backend, batched), trials in series.items():
        color = _COLORS.get(backend, "C7")
        marker = "D" if batched else "s" if backend == "main" else "o"
        best_at: dict[int, Trial] = {}
        for t in trials:
            x = t.config.workers
            if x not in best_at or _rate(t) > _rate(best_at[x]):
                best_at[x] = t
        line = sorted(best_at.values(), key=lambda t: t.config.workers)
        label = _series_label(backend, batched)
        drawn = ax.errorbar(
            [t.config.workers for t in line],
            [_rate(t) for t in line],
            yerr=[_half_spread(t) for t in line],
            color=color,
            linestyle="--" if batched else "-",
            marker=marker,
            capsize=3,
            label=label,
        )
        entries.append((drawn, label))
        rest = [t for t in trials if best_at[t.config.workers] is not t]
        if rest:
            others = True
            ax.errorbar(
                [t.config.workers for t in rest],
                [_rate(t) for t in rest],
                yerr=[_half_spread(t) for t in rest],
                color=color,
                linestyle="none",
                marker=marker,
                markerfacecolor="none",
                capsize=2,
                alpha=0.7,
                label="_nolegend_",
            )
    if others:
        from matplotlib.lines import Line2D

        hollow = Line2D([], [], linestyle="none", marker="o", color="grey", markerfacecolor="none")
        entries.append((hollow, "other settings at that count (prefetch, persistence...)"))
    return entries


def _mark(ax: Any, t: Trial, text: str, style: dict[str, Any], dy: float, left: bool) -> Any:
    """Mark trial t with a big marker and a two-line annotation; return the marker's Line2D."""
    x, y = t.config.workers, _rate(t)
    (drawn,) = ax.plot(
        [x], [y], linestyle="none", markeredgecolor="black", zorder=5, label=text, **style
    )
    ax.annotate(
        f"{text}: {t.config.label()}\n{y:.0f} samples/s",
        xy=(x, y),
        xytext=(-14 if left else 14, dy),
        textcoords="offset points",
        ha="right" if left else "left",
        va="center",
        fontsize=8,
        arrowprops={"arrowstyle": "-", "color": "grey", "lw": 0.8},
        annotation_clip=False,
    )
    return drawn


def _sweep_figure(result: TuneResult) -> Figure:
    """Draw the sweep on a new Figure (Agg canvas attached) and return it, unsaved.

    One line per (backend, batched fetch) through the fastest trial at each worker count
    (an ``ErrorbarContainer`` in ``ax.containers``, labelled ``"process"``, ``"thread"``,
    ``"main"``, with ``", batched fetch"`` appended for batched fetch); other measured
    settings at the same count (prefetch factor, persistence, start method) are hollow
    markers of that colour; batched fetch is dashed, with diamonds. Error bars span
    ``samples_per_s_spread`` (the interquartile range of the window rates; their range under
    4 windows) centred on the median. Failed and timed-out trials are red crosses on the
    x-axis. The recommended configuration is a gold star with an annotation, the fastest a
    black triangle when it differs; the ceiling, when known, a dotted horizontal line. The
    legend sits right of the axes.

    Raises:
        DependencyError: matplotlib is not installed.
    """
    _require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FixedLocator, NullLocator, ScalarFormatter

    fig = Figure(figsize=(11.0, 5.5), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.set_title(_title(result), fontsize=10, loc="left")
    ax.set_xlabel("workers (processes or threads; 0 = main process)")
    ax.set_ylabel("samples/s (median of windows; bars: IQR)")
    ax.grid(True, alpha=0.3)

    series = _series(result.trials)
    entries = _draw_series(ax, series)
    top = max(
        (_rate(t) + _half_spread(t) for trials in series.values() for t in trials), default=0.0
    )

    counts = [t.config.workers for t in result.trials]
    xs = sorted(set(counts)) or [0]
    middle = xs[len(xs) // 2]

    def on_left(t: Trial) -> bool:  # annotate right-hand points to their left
        x = t.config.workers
        return x > middle or (x == middle and len(xs) > 1)

    rec = result.recommended
    rec_trial = None
    if rec is not None:
        rec_trial = next((t for t in result.trials if t.ok and t.config == rec.config), None)
        if rec_trial is None:  # a recommendation without its trial: its recorded rate
            rec_trial = Trial(config=rec.config, status="ok", samples_per_s=rec.samples_per_s)
        star = {"marker": "*", "color": "gold", "markersize": 18}
        drawn = _mark(ax, rec_trial, "recommended", star, 22, on_left(rec_trial))
        entries.append((drawn, "recommended"))
    best = result.best
    if best is not None and best.ok and (rec is None or best.config != rec.config):
        triangle = {"marker": "^", "color": "black", "markersize": 10}
        entries.append((_mark(ax, best, "fastest", triangle, -22, on_left(best)), "fastest"))

    failed = [t for t in result.trials if not t.ok]
    if failed:
        (crosses,) = ax.plot(
            [t.config.workers for t in failed],
            [0.0] * len(failed),
            linestyle="none",
            marker="x",
            color="red",
            markersize=9,
            label="failed or timed out",
            clip_on=False,
        )
        entries.append((crosses, "failed or timed out"))
    if result.ceiling_samples_per_s is not None:
        label = f"ceiling: 1 process x {result.platform.usable_cpus} usable CPUs"
        if getattr(result, "nproc_per_node", 1) > 1:
            label += f" / {result.nproc_per_node} ranks"
        line = ax.axhline(result.ceiling_samples_per_s, color="grey", linestyle=":", label=label)
        entries.append((line, label))
        top = max(top, result.ceiling_samples_per_s)
    if not series and not failed:
        ax.text(0.5, 0.5, "no configuration was measured", transform=ax.transAxes, ha="center")
    if entries:
        ax.legend(
            [h for h, _ in entries],
            [label for _, label in entries],
            fontsize=8,
            loc="upper left",
            bbox_to_anchor=(1.01, 1.0),
        )

    log = max(counts, default=0) > LOG_X_ABOVE
    if log:
        ax.set_xscale("symlog", base=2, linthresh=1, linscale=0.5)
    ticks = _x_ticks(counts or [0], log)
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_major_formatter(ScalarFormatter())
    if log:
        ax.set_xlim(-0.3, max(ticks) * 1.3)
    else:
        pad = max(0.5, (max(ticks) - min(ticks)) * 0.05)
        ax.set_xlim(min(ticks) - pad, max(ticks) + pad)
    ax.set_ylim(0.0, top * 1.2 if top > 0 else 1.0)
    return fig


def plot_sweep(result: TuneResult, path: str | Path) -> Path:
    """Write the sweep of ``result`` as a PNG: samples/s (y) against workers (x).

    One line per backend (``process``, ``thread``, ``main``; batched fetch a dashed line of
    its own), with error bars spanning each trial's interquartile range
    (``samples_per_s_spread``, samples/s) around its median; the recommended configuration is
    starred and annotated, the fastest marked when it differs. The x-axis counts workers of
    either kind (the main process alone is 0) and turns log2 (symlog) past 16 workers. The
    title names the workload and the machine's usable CPUs.

    Args:
        result: What ``tune`` returned (or ``TuneResult.from_dict`` of a stored result).
        path: The PNG to write (suffix ``.png``); its folder must exist. Overwritten.

    Returns:
        The path written.

    Raises:
        DependencyError: matplotlib is not installed (``pip install "wellfed[plot]"``).
        ConfigError: ``path`` does not end in ``.png`` (WF010).
    """
    out = Path(path)
    check_option(
        "path",
        str(path),
        out.suffix.lower() == ".png",
        "a file name ending in .png",
        code="WF010",
        fix=f"Name the file e.g. {(out.stem or 'sweep') + '.png'!r}.",
    )
    fig = _sweep_figure(result)
    fig.savefig(out, format="png")
    return out
