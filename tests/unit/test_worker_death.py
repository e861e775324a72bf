"""How a dead worker is put into words: signals, causes, fixes, evidence (no processes)."""

from __future__ import annotations

import signal

from wellfed._worker_death import (
    describe_death,
    format_indices,
    loading_text,
    oom_counters,
    signal_from_exitcode,
    signal_from_text,
)


def test_signal_names_from_exit_codes_and_torch_words() -> None:
    assert signal_from_exitcode(-signal.SIGKILL) == "SIGKILL"
    assert signal_from_exitcode(-signal.SIGSEGV) == "SIGSEGV"
    assert signal_from_exitcode(3) is None
    assert signal_from_exitcode(None) is None
    assert (
        signal_from_text("DataLoader worker (pid 7) is killed by signal: Bus error. ") == "SIGBUS"
    )
    assert signal_from_text("... is killed by signal: Killed.") == "SIGKILL"
    assert signal_from_text("DataLoader worker (pid(s) 7) exited unexpectedly") is None


def test_sigkill_is_likely_the_oom_killer_with_memory_at_death() -> None:
    report = describe_death(
        exitcode=-9, rss=(3 * 2**30, 0.4), oom_before=oom_counters(), num_workers=8
    )
    assert report.signal == "SIGKILL"
    assert report.cause.startswith(("likely the OOM killer; memory at death: ", "the kernel's"))
    assert "the worker's RSS was 3.0 GiB when last sampled, 0.4 s before" in report.cause
    assert report.memory["worker_rss_bytes"] == 3 * 2**30
    assert "lower num_workers (now 8)" in report.fix
    assert "dmesg" in report.fix


def test_an_unchanged_oom_count_says_it_was_not_the_kernel() -> None:
    before = oom_counters()
    if "system" not in before:  # no /proc/vmstat here: nothing to compare
        return
    report = describe_death(exitcode=-9, oom_before=before)
    assert "the kernel's oom_kill count did not change" in report.cause
    risen = describe_death(exitcode=-9, oom_before={"system": before["system"] - 1})
    assert risen.cause.startswith("the kernel's OOM killer; memory at death: ")
    assert "/proc/vmstat oom_kill" in risen.cause


def test_sigsegv_names_native_code_and_the_fork_hint_only_under_fork() -> None:
    fork = describe_death(exitcode=-11, start_method="fork")
    assert "a crash in native code" in fork.cause
    assert "CUDA, OpenMP" in fork.cause
    assert "num_workers=0" in fork.fix
    assert "faulthandler" in fork.fix
    assert "multiprocessing_context='spawn' or 'forkserver' (now 'fork')" in fork.fix
    spawn = describe_death(exitcode=-11, start_method="spawn")
    assert "fork" not in spawn.cause
    assert "spawn" not in spawn.fix


def test_sigbus_names_dev_shm_and_an_exit_code_names_the_code() -> None:
    bus = describe_death(exitcode=-7)
    assert bus.cause.startswith("likely shared memory exhausted")
    assert "--shm-size" in bus.fix
    exited = describe_death(exitcode=3)
    assert exited.signal is None
    assert "exit code 3" in exited.cause


def test_indices_and_undelivered_batches_read_as_lists() -> None:
    assert format_indices(list(range(20))) == "[0, 1, 2, 3, 4, 5, 6, 7, ... (20 in all)]"
    assert loading_text(None) == ""
    assert loading_text([[4, 5]]) == ", loading samples [4, 5]"
    assert loading_text([[0, 1], [4, 5]]) == (
        ", loading one of the batches it had not delivered: samples [0, 1] then [4, 5]"
    )
