"""wellfed tune --plot and wellfed.tune.plot_sweep: the sweep as a PNG, one line per backend."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.cli.helpers_tune import sweep_result
from wellfed.cli import main
from wellfed.errors import ConfigError, DependencyError
from wellfed.tune import TuneResult, plot_sweep
from wellfed.tune._plot import _sweep_figure

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _assert_png(path: Path) -> None:
    """path holds a PNG that matplotlib reads back as a non-empty image."""
    from matplotlib.image import imread

    assert path.read_bytes()[:8] == PNG_SIGNATURE
    pixels = imread(path)
    assert pixels.shape[0] > 0
    assert pixels.shape[1] > 0


def _legend(result: TuneResult) -> list[str]:
    """The legend's labels, in order."""
    legend = _sweep_figure(result).axes[0].get_legend()
    return [text.get_text() for text in legend.get_texts()]


def test_plot_sweep_writes_a_png(tmp_path: Path) -> None:
    out = plot_sweep(sweep_result(), tmp_path / "sweep.png")
    assert out == tmp_path / "sweep.png"
    _assert_png(out)


def test_one_line_per_backend_and_batched_fetch() -> None:
    ax = _sweep_figure(sweep_result()).axes[0]
    lines = [c.get_label() for c in ax.containers if not c.get_label().startswith("_")]
    assert lines == ["main", "main, batched fetch", "thread", "thread, batched fetch", "process"]
    assert _legend(sweep_result()) == [
        *lines,
        "other settings at that count (prefetch, persistence...)",
        "recommended",
        "fastest",
        "failed or timed out",
        "ceiling: 1 process x 4 usable CPUs",
    ]


def test_lines_run_through_the_fastest_trial_at_each_count() -> None:
    ax = _sweep_figure(sweep_result()).axes[0]
    lines = {c.get_label(): c.lines[0] for c in ax.containers}
    thread = lines["thread"]
    assert list(thread.get_xdata()) == [1, 2, 4]
    assert list(thread.get_ydata()) == [130.0, 160.0, 220.0]  # not 4 threads at prefetch 4
    assert list(lines["main"].get_xdata()) == [0]
    assert list(lines["thread, batched fetch"].get_xdata()) == [4]
    assert list(lines["process"].get_ydata()) == [170.0, 250.0, 410.0]  # not the failed one
    assert "bars: IQR" in ax.get_ylabel()
    assert "0 = main process" in ax.get_xlabel()


def test_recommended_and_fastest_are_annotated() -> None:
    ax = _sweep_figure(sweep_result()).axes[0]
    notes = [t.get_text() for t in ax.texts]
    assert any(n.startswith("recommended: 2 workers, persistent, fork\n250") for n in notes)
    assert any(n.startswith("fastest: 4 workers, persistent, fork\n410") for n in notes)
    title = ax.get_title(loc="left")
    assert "squares x 32 (test)" in title
    assert "4 usable CPUs of 8" in title


def test_fastest_is_not_marked_twice_when_recommended() -> None:
    ax = _sweep_figure(sweep_result(recommend_fastest=True)).axes[0]
    notes = [t.get_text() for t in ax.texts]
    assert [n.split(":")[0] for n in notes] == ["recommended"]
    assert "fastest" not in _legend(sweep_result(recommend_fastest=True))


def test_x_axis_is_linear_to_16_workers_then_log2() -> None:
    assert _sweep_figure(sweep_result(16)).axes[0].get_xscale() == "linear"
    ax = _sweep_figure(sweep_result(32)).axes[0]
    assert ax.get_xscale() == "symlog"
    assert list(ax.get_xticks()) == [0, 1, 2, 4, 8, 16, 32]


def test_a_result_with_no_trial_still_plots(tmp_path: Path) -> None:
    data = sweep_result().to_dict()
    data.update(trials=[], baseline=None, recommended=None, best=None)
    data["ceiling_samples_per_s"] = None
    _assert_png(plot_sweep(TuneResult.from_dict(data), tmp_path / "empty.png"))


def test_plot_sweep_refuses_another_format(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"sweep\.png") as info:
        plot_sweep(sweep_result(), tmp_path / "sweep.svg")
    assert info.value.code == "WF010"
    assert not (tmp_path / "sweep.svg").exists()


def test_missing_matplotlib_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises
    with pytest.raises(DependencyError, match=r'pip install "wellfed\[plot\]"'):
        plot_sweep(sweep_result(), tmp_path / "sweep.png")
    # The command refuses before measuring anything.
    assert main(["tune", "tests.helpers:squares", "--plot", str(tmp_path / "x.png")]) == 3
    assert 'pip install "wellfed[plot]"' in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize(
    ("name", "expected"), [("sweep.svg", "ending in .png"), ("no/such/dir/x.png", "existing")]
)
def test_cli_refuses_an_unwritable_plot_before_measuring(
    name: str, expected: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["tune", "tests.helpers:squares", "--plot", str(tmp_path / name)]) == 2
    err = capsys.readouterr().err
    assert expected in err
    assert "[WF010]" in err


@pytest.mark.workers
def test_tune_plot_with_json_to_stdout(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out.png"
    code = main(
        [
            "tune",
            "tests.helpers:squares",
            "--batch-size",
            "8",
            "--max-workers",
            "1",
            "--budget-s",
            "20",
            "--no-store",
            "--json",
            "--plot",
            str(out),
        ]
    )
    assert code == 0
    captured = capsys.readouterr()
    data = json.loads(captured.out)  # stdout is the JSON alone
    assert max(t["config"]["num_workers"] for t in data["trials"]) == 1
    assert f"plot written to {out}" in captured.err
    _assert_png(out)
    legend = _legend(TuneResult.from_dict(data))
    assert {"main", "thread", "process"} <= set(legend)  # one line per measured backend
    assert "recommended" in legend
