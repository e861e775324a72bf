"""tune's recommendation rule on synthetic trials (no processes)."""

from __future__ import annotations

from tests.helpers import SquaresDataset
from wellfed.measure import LoaderConfig, Trial
from wellfed.platform import collect_platform_info
from wellfed.target import spec_from_object
from wellfed.tune._search import _recommend


def _trial(workers: int, windows: tuple[float, ...]) -> Trial:
    from wellfed.measure import summarize_windows

    median, spread = summarize_windows(windows)
    cfg = LoaderConfig(num_workers=workers, batch_size=8, persistent_workers=workers > 0)
    return Trial(
        config=cfg,
        status="ok",
        samples_per_s=median,
        samples_per_s_spread=spread,
        window_samples_per_s=windows,
        first_batch_s=0.1,
        peak_memory_bytes=100 + workers,
    )


def _choose(*trials: Trial) -> int:
    spec = spec_from_object(SquaresDataset(8))
    best = max(trials, key=lambda t: t.samples_per_s or 0.0)
    rec = _recommend(
        spec,
        list(trials),
        best,
        trials[0],
        collect_platform_info(include_gpus=False),
        False,
        "fork",
        "",
        (),
    )
    assert rec is not None
    return rec.config.num_workers


def test_within_three_percent_prefers_fewer_workers() -> None:
    quiet = (100.0, 100.0, 100.0, 100.0, 100.0, 100.0)
    assert (
        _choose(
            _trial(0, tuple(v * 0.5 for v in quiet)),
            _trial(2, tuple(v * 0.98 for v in quiet)),
            _trial(4, quiet),
        )
        == 2
    )


def test_clearly_slower_is_not_chosen() -> None:
    quiet = (100.0, 100.0, 100.0, 100.0, 100.0, 100.0)
    assert (
        _choose(
            _trial(0, tuple(v * 0.5 for v in quiet)),
            _trial(2, tuple(v * 0.9 for v in quiet)),
            _trial(4, quiet),
        )
        == 4
    )


def test_noise_makes_close_trials_equal_but_never_beyond_five_percent() -> None:
    noisy = (80.0, 90.0, 100.0, 110.0, 120.0, 100.0)
    four_pct_slower = tuple(v * 0.96 for v in noisy)
    eight_pct_slower = tuple(v * 0.92 for v in noisy)
    assert (
        _choose(
            _trial(0, tuple(v * 0.5 for v in noisy)), _trial(2, four_pct_slower), _trial(4, noisy)
        )
        == 2
    )
    assert (
        _choose(
            _trial(0, tuple(v * 0.5 for v in noisy)), _trial(2, eight_pct_slower), _trial(4, noisy)
        )
        == 4
    )


def test_the_stop_reason_states_the_rule_it_applied_in_its_own_figures() -> None:
    # Issue 15: "4 workers gained less than 5% over fewer workers (913 vs 858 samples/s)" is
    # +6.4%: the rule subtracts 2 standard errors first, and the text must say so, signed.
    from wellfed.tune._search import _gained, _not_gained_text

    noisy = _trial(4, (700.0, 913.0, 1100.0, 913.0, 913.0, 1000.0, 820.0))
    fewer = _trial(2, (858.0,) * 7)
    assert not _gained(noisy, fewer)
    text = _not_gained_text(noisy, fewer)
    assert text.startswith("913 vs 858 samples/s, +6.4%; needs +5% after subtracting 2 standard")
    slower = _trial(4, (300.0,) * 7)
    assert "-65.0%" in _not_gained_text(slower, fewer)


def test_a_note_says_why_its_figures_can_differ_from_the_pooled_table() -> None:
    import dataclasses

    from wellfed.tune._search import _figures_note

    once = _trial(2, (100.0,) * 5)
    assert _figures_note((once,)) is None
    pooled = dataclasses.replace(_trial(4, (120.0,) * 5), repeats=3)
    text = _figures_note((once, pooled))
    assert text is not None
    assert "table pools every measurement" in text
    assert "(1 re-measured, up to 3 times)" in text
