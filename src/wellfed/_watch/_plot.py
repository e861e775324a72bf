"""The timeline of a watched run as a PNG: per loader, data wait and compute of every step.

matplotlib is optional (the ``plot`` extra), imported only when drawing, on an Agg
``Figure`` (pyplot's global state is left alone).
"""

from __future__ import annotations

from pathlib import Path

from wellfed._watch._report import WatchReport
from wellfed.errors import DependencyError, check_option

__all__ = ["plot_watch"]

#: Loaders drawn at most (the ones with the most steps); the rest are named in the title.
MAX_PANELS = 6


def plot_watch(report: WatchReport, path: str | Path) -> Path:
    """Draw each loader's steps as stacked data wait (red) and compute (grey), in ms over time.

    Args:
        report: A ``WatchReport`` (``watch_script``).
        path: The PNG file to write (its folder must exist).

    Returns:
        The path written.

    Raises:
        ConfigError: ``path`` does not end in .png (WF010).
        DependencyError: matplotlib is not installed (``pip install "wellfed[plot]"``).
    """
    path = Path(path)
    check_option("path", str(path), path.suffix.lower() == ".png", "a .png file", code="WF010")
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise DependencyError(
            f"matplotlib is not installed: drawing the timeline needs it ({exc}). Install it "
            'with `pip install "wellfed[plot]"`.',
            attribute="plot",
            value=str(path),
        ) from exc
    drawn = sorted((lr for lr in report.loaders if lr.timeline), key=lambda lr: -len(lr.timeline))[
        :MAX_PANELS
    ]
    drawn.sort(key=lambda lr: report.loaders.index(lr))
    rows = max(1, len(drawn))
    fig = Figure(figsize=(10, 2.6 * rows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, 1, squeeze=False)[:, 0]
    if not drawn:
        axes[0].text(
            0.5,
            0.5,
            "no loader handed over more than its warm-up batch",
            ha="center",
            va="center",
            transform=axes[0].transAxes,
        )
        axes[0].set_axis_off()
    for ax, lr in zip(axes, drawn, strict=False):
        # one bar per step, from the previous hand-over to this one: wait at the bottom,
        # compute above it; the gaps between epochs (warm-up, validation) stay empty
        start = [row[0] - row[2] for row in lr.timeline]
        width = [row[2] for row in lr.timeline]
        wait = [1e3 * row[1] for row in lr.timeline]
        work = [1e3 * (row[2] - row[1]) for row in lr.timeline]
        ax.bar(start, wait, width=width, align="edge", color="C3", linewidth=0, label="data wait")
        ax.bar(
            start,
            work,
            width=width,
            bottom=wait,
            align="edge",
            color="0.6",
            linewidth=0,
            label="compute",
        )
        fraction = lr.stats.data_bound_fraction
        workers = int(lr.settings.get("num_workers") or 0)
        ax.set_title(
            f"{lr.name}: {100 * (fraction or 0):.0f}% data-bound "
            f"({workers} worker{'s' if workers != 1 else ''})",
            fontsize=9,
            loc="left",
        )
        ax.set_ylabel("ms per step")
        ax.set_ylim(bottom=0)
        ax.legend(loc="upper right", fontsize=8)
    axes[-1].set_xlabel("seconds since the program started")
    left_out = len([lr for lr in report.loaders if lr.timeline]) - len(drawn)
    more = f" ({left_out} more loaders not drawn)" if left_out > 0 else ""
    fig.suptitle(f"wellfed watch {report.program}{more}", fontsize=10)
    fig.savefig(path, dpi=100)
    return path
