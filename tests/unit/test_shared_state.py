"""Unit tests of wellfed.SharedState: in one process, no workers (see tests/integration)."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import pickle
import threading
from multiprocessing.reduction import ForkingPickler
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import wellfed
from wellfed import ConfigError, StateError
from wellfed.shared_state import SharedState, StateSnapshot, _flock_holders


@pytest.fixture
def shm(tmp_path: Path) -> Path:
    """A private directory for the state's files, so tests never see each other's."""
    return tmp_path


def files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("wellfed_"))


def test_public_name_and_doctor_marker() -> None:
    assert wellfed.SharedState is SharedState
    assert SharedState.__wellfed_shared_state__ is True
    assert SharedState.__doc__


def test_round_trip_of_every_kind(shm: Path) -> None:
    theta = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    values = np.linspace(0, 1, 5)
    with SharedState(
        {"theta": theta},
        values=values,
        epoch=3,
        lr=0.1,
        flag=True,
        half=np.float16(2.5),
        bf=torch.ones(3, dtype=torch.bfloat16),
        directory=str(shm),
    ) as state:
        snap = state.read()
        assert isinstance(snap, StateSnapshot)
        assert snap.version == 1 == state.version
        assert list(snap) == ["theta", "values", "epoch", "lr", "flag", "half", "bf"]
        assert torch.equal(snap["theta"], theta)
        assert snap["theta"].dtype == torch.float32
        assert np.array_equal(snap["values"], values)
        assert snap["values"].dtype == np.float64
        assert not snap["values"].flags.writeable
        assert snap["epoch"] == 3
        assert type(snap["epoch"]) is int
        assert snap["lr"] == 0.1
        assert type(snap["lr"]) is float
        assert snap["flag"] is True
        assert snap["half"] == np.float16(2.5)
        assert snap["half"].dtype == np.float16
        assert snap["bf"].dtype == torch.bfloat16
        with pytest.raises(TypeError, match="read-only"):
            snap["epoch"] = 4
        assert pickle.loads(pickle.dumps(snap))["epoch"] == 3
        assert state["epoch"] == 3
        assert state.names == ("theta", "values", "epoch", "lr", "flag", "half", "bf")


def test_reads_are_zero_copy_and_cached(shm: Path) -> None:
    with SharedState(theta=torch.zeros(2, 3), values=np.zeros(4), directory=str(shm)) as state:
        first, second = state.read(), state.read()
        assert first is second  # fast path: nothing rebuilt while the version is unchanged
        # Views over the mapping, not copies: the same memory on every read.
        assert first["theta"].data_ptr() == state.read()["theta"].data_ptr()
        assert first["values"].base is not None


def test_update_replaces_named_fields_and_keeps_others(shm: Path) -> None:
    with SharedState(
        theta=torch.zeros(2, 3), values=np.zeros(4), task=0, directory=str(shm)
    ) as state:
        assert state.update(theta=torch.ones(2, 3), task=1) == 2
        snap = state.read()
        assert snap.version == 2
        assert torch.equal(snap["theta"], torch.ones(2, 3))
        assert np.array_equal(snap["values"], np.zeros(4))
        assert snap["task"] == 1
        assert state.update({"values": np.arange(4.0)}) == 3
        assert np.array_equal(state["values"], np.arange(4.0))


def test_snapshot_stays_intact_while_pinned(shm: Path) -> None:
    """A snapshot's views are never overwritten by updates until this thread reads again."""
    with SharedState(a=np.zeros(1000), b=torch.zeros(1000), directory=str(shm)) as state:
        held = state.read()
        for v in range(2, 12):
            state.update(a=np.full(1000, float(v)), b=torch.full((1000,), float(v)))
            assert held.version == 1
            assert not held["a"].any()
            assert not held["b"].any()
        latest = state.read()
        assert latest.version == 11
        assert latest["a"][0] == 11.0
        copy = latest.copy()
        state.update(a=np.zeros(1000))
        state.read()
        assert copy["a"][0] == 11.0
        assert copy["a"].flags.writeable


def test_moved_tensor_view_does_not_detach_later_reads(shm: Path) -> None:
    """torch moves a pickled tensor's storage (share_memory_); later reads still see the slot."""
    with SharedState(theta=torch.zeros(3), directory=str(shm)) as state:
        for v in range(2, 8):
            state.update(theta=torch.full((3,), float(v)))
            view = state.read()["theta"]
            assert view.tolist() == [float(v)] * 3
            view.share_memory_()  # what a DataLoader worker's queue does to a returned view


def test_storage_stays_bounded(shm: Path) -> None:
    with SharedState(a=np.zeros(10), directory=str(shm)) as state:
        for v in range(50):
            state.update(a=np.full(10, float(v)))
            state.read()
        # control file + current slot + the slot this thread pins/the one spare
        assert len(files(shm)) <= 4
        assert len(state.segment_paths()) == len(files(shm))


def test_new_shape_dtype_kind_and_new_field(shm: Path) -> None:
    with SharedState(theta=torch.zeros(2, 3), values=np.zeros(4), directory=str(shm)) as state:
        old = state.read()
        state.update(theta=torch.ones(3, 3, dtype=torch.float64))
        snap = state.read()
        assert snap["theta"].shape == (3, 3)
        assert snap["theta"].dtype == torch.float64
        assert np.array_equal(snap["values"], np.zeros(4))
        state.update(values=torch.arange(7), level=2)
        snap = state.read()
        assert torch.equal(snap["values"], torch.arange(7))
        assert snap["level"] == 2
        assert snap.version == 3
        assert list(snap) == ["theta", "values", "level"]
        assert old.version == 1
        # retired layouts are unlinked once no reader pins them
        state.update(level=3)
        state.read()
        assert len(files(shm)) <= 4


def test_handle_reads_like_a_worker(shm: Path) -> None:
    """Unpickling elsewhere gives a lazy reader handle that maps the files at first read."""
    with SharedState(theta=torch.zeros(2, 3), directory=str(shm)) as state:
        handle = SharedState._handle(state._directory, state._prefix, state._owner_pid)
        assert handle._ctl is None  # nothing opened yet
        assert handle.read().version == 1
        state.update(theta=torch.ones(2, 3))
        snap = handle.read()
        assert snap.version == 2
        assert torch.equal(snap["theta"], torch.ones(2, 3))
        with pytest.raises(StateError) as info:
            handle.update(theta=torch.zeros(2, 3))
        assert info.value.code == "WF509"
        assert "handle" in repr(handle)
        handle.close()


def test_pickle_is_tiny_and_owner_unpickles_to_itself(shm: Path) -> None:
    with SharedState(big=np.zeros(1_000_000), directory=str(shm)) as state:
        data = bytes(ForkingPickler.dumps(state))
        assert len(data) < 300
        assert pickle.loads(data) is state
        assert pickle.loads(pickle.dumps(state)) is state


def test_close_removes_files_and_later_reads_fail(shm: Path) -> None:
    state = SharedState(a=np.zeros(3), directory=str(shm))
    handle = SharedState._handle(state._directory, state._prefix, state._owner_pid)
    handle.read()
    state.update(a=np.ones(3))
    assert files(shm)
    state.close()
    state.close()  # idempotent
    assert files(shm) == []
    assert state.closed
    assert handle.closed
    for reader in (state, handle):
        with pytest.raises(StateError) as info:
            reader.read()
        assert info.value.code == "WF503"
    with pytest.raises(StateError) as info:
        state.update(a=np.zeros(3))
    assert info.value.code == "WF503"
    late = SharedState._handle(state._directory, state._prefix, state._owner_pid)
    with pytest.raises(StateError) as info:
        late.read()
    assert info.value.code == "WF504"


def test_garbage_collected_owner_removes_files(shm: Path) -> None:
    state = SharedState(a=np.zeros(3), directory=str(shm))
    assert files(shm)
    del state
    import gc

    gc.collect()
    assert files(shm) == []


@pytest.mark.parametrize(
    ("value", "code"),
    [
        ("text", "WF501"),
        (np.array([object()]), "WF501"),
        (2**70, "WF501"),
        ([1.0, 2.0], "WF501"),
        (torch.zeros(2).to_sparse(), "WF501"),
    ],
)
def test_unsupported_values_fail_with_a_code(shm: Path, value: Any, code: str) -> None:
    with pytest.raises(ConfigError) as info:
        SharedState(x=value, directory=str(shm))
    assert info.value.code == code
    assert info.value.attribute == "x"
    assert files(shm) == []


def test_bad_name_and_duplicate(shm: Path) -> None:
    with pytest.raises(ConfigError) as info:
        SharedState({"not a name": 1}, directory=str(shm))
    assert info.value.code == "WF505"
    with pytest.raises(ConfigError) as info:
        SharedState({"a": 1}, a=2, directory=str(shm))
    assert info.value.code == "WF505"
    with SharedState(a=1, directory=str(shm)) as state:
        with pytest.raises(ConfigError):
            state.update(b="text")
        assert state.version == 1  # a failed update publishes nothing
        with pytest.raises(KeyError, match="no field 'b'"):
            state["b"]


def test_threads_read_consistent_versions(shm: Path) -> None:
    with SharedState(a=np.zeros(4096), b=np.zeros(4096), directory=str(shm)) as state:
        errors: list[str] = []
        stop = threading.Event()

        def reader() -> None:
            while not stop.is_set():
                snap = state.read()
                v = float(snap.version)
                if not (snap["a"] == v - 1).all() or not (snap["b"] == -(v - 1)).all():
                    errors.append(f"torn at {snap.version}")

        threads = [threading.Thread(target=reader) for _ in range(2)]
        for t in threads:
            t.start()
        for v in range(2, 200):  # version v holds v - 1
            state.update(a=np.full(4096, v - 1.0), b=np.full(4096, -(v - 1.0)))
        stop.set()
        for t in threads:
            t.join()
        assert errors == []


def _pins(state: SharedState) -> dict[int, int]:
    """pid -> slots of ``state`` it holds a shared flock on (from /proc/locks)."""
    return _flock_holders(p for p in state.segment_paths() if not p.endswith("_ctl"))


def _fds_into(directory: Path) -> list[str]:
    """Descriptors of this process that point into ``directory``."""
    out = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/self/fd/{fd}")
            if target.startswith(str(directory)):
                out.append(target)
    return out


def test_writer_never_takes_a_pinned_slot(shm: Path) -> None:
    """The pin is a shared flock: the slot a live snapshot uses is never locked for writing."""
    with SharedState(a=np.zeros(8), directory=str(shm)) as state:
        held = state.read()
        path = state._mapped[state._local.r.slot].path
        fd = os.open(path, os.O_RDWR)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            state.update(a=np.ones(8))
            state.read()  # this thread moves on to version 2; `held` still pins version 1
            with pytest.raises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            assert held.version == 1
            assert not held["a"].any()
            del held  # the last reference: the pin goes with it
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)


def test_issue_14_view_keeps_version_1(shm: Path) -> None:
    """Issue 14's reproduction: a view of version 1 survives a later read and two updates."""
    s = SharedState(t=torch.ones(4), v=1, directory=str(shm))
    a = s.read()
    view = a["t"]
    s.update(t=torch.full((4,), 2.0), v=2)
    s.read()
    s.update(t=torch.full((4,), 3.0), v=3)
    assert a["v"] == 1
    assert view.tolist() == [1.0] * 4
    assert s.read()["t"].tolist() == [3.0] * 4
    s.close()


def test_views_outlive_their_snapshot_and_later_reads(shm: Path) -> None:
    """Slices, 0-d elements, .numpy() and numpy slices pin their version by themselves."""
    with SharedState(t=torch.zeros(64), n=np.zeros(64), directory=str(shm)) as state:
        snap = state.read()
        kept = [snap["t"][3], snap["t"][8:16], snap["t"].numpy()[:4], snap["n"][2:5]]
        del snap
        for v in range(1, 9):  # every update and read would reuse version 1's slot if free
            state.update(t=torch.full((64,), float(v)), n=np.full(64, float(v)))
            assert state.read().version == v + 1
        assert kept[0].item() == 0.0
        assert not kept[1].any()
        assert not kept[2].any()
        assert not kept[3].any()
        assert _pins(state)[os.getpid()] == 2  # version 1's slot (kept) and the current one
        del kept
        assert _pins(state) == {os.getpid(): 1}  # only this thread's latest snapshot
        assert len(files(shm)) <= 4  # control + current + spare (+ one being retired)


def test_scalar_only_state_pins_nothing(shm: Path) -> None:
    with SharedState(epoch=3, lr=0.5, directory=str(shm)) as state:
        assert state.read()["epoch"] == 3
        assert _pins(state) == {}  # scalars are copies: the pin is released at once
        state.update(epoch=4)
        assert state["epoch"] == 4


def test_update_without_a_free_slot_names_the_pinning_process(shm: Path) -> None:
    """max_slots=2 with version 1 kept alive: no slot to write, WF510, nothing published."""
    state = SharedState(a=torch.zeros(4), max_slots=2, update_timeout_s=0, directory=str(shm))
    try:
        kept = state.read()["a"]
        assert state.update(a=torch.ones(4)) == 2  # the second slot
        with pytest.raises(StateError) as info:
            state.update(a=torch.full((4,), 2.0))
        err = info.value
        assert err.code == "WF510"
        assert err.attribute == "max_slots"
        assert err.value == 2
        assert err.pids == (os.getpid(),)
        assert f"pid {os.getpid()} (this process): 1 slot(s)" in str(err)
        assert "snap.copy()" in str(err)
        assert state.version == 2
        assert state.read()["a"].tolist() == [1.0] * 4
        assert kept.tolist() == [0.0] * 4
        del kept
        assert state.update(a=torch.full((4,), 2.0)) == 3
        assert state.read()["a"].tolist() == [2.0] * 4
    finally:
        state.close()


def test_update_waits_for_a_pin_to_go(shm: Path) -> None:
    """All slots pinned: update() waits and writes as soon as another thread drops its view."""
    state = SharedState(a=torch.zeros(4), max_slots=2, update_timeout_s=60, directory=str(shm))
    kept = [state.read()["a"]]
    state.update(a=torch.ones(4))
    state.read()  # this thread's cache moves to version 2: only `kept` pins version 1
    waiting = threading.Event()

    class OnWait(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "update() waits" in record.getMessage():
                waiting.set()

    handler = OnWait(logging.DEBUG)
    log = logging.getLogger("wellfed.shared_state")
    old_level = log.level
    log.addHandler(handler)
    log.setLevel(logging.DEBUG)

    def holder() -> None:
        waiting.wait(60)
        kept.clear()  # the view of version 1 dies in this thread; its pin with it

    t = threading.Thread(target=holder)
    t.start()
    try:
        assert state.update(a=torch.full((4,), 2.0)) == 3
        assert waiting.is_set()
    finally:
        t.join(60)
        log.removeHandler(handler)
        log.setLevel(old_level)
        state.close()


def test_a_thread_that_ends_releases_its_pin(shm: Path) -> None:
    """A reader thread's cached snapshot goes with the thread (thread pools come and go)."""
    state = SharedState(a=torch.zeros(4), max_slots=2, update_timeout_s=0, directory=str(shm))
    try:
        for v in range(2, 6):
            t = threading.Thread(target=state.read)  # caches (pins) the current version
            t.start()
            t.join()
            assert state.update(a=torch.full((4,), float(v))) == v
        assert _pins(state) == {}
    finally:
        state.close()


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("max_slots", 1),
        ("max_slots", 0),
        ("max_slots", True),
        ("max_slots", 2.5),
        ("max_slots", "8"),
        ("max_slots", 2**21),
        ("update_timeout_s", -1.0),
        ("update_timeout_s", float("nan")),
        ("update_timeout_s", float("inf")),
        ("update_timeout_s", "60"),
        ("update_timeout_s", True),
    ],
)
def test_bad_options_fail_with_wf511(shm: Path, option: str, value: Any) -> None:
    with pytest.raises(ConfigError) as info:
        SharedState(a=1, directory=str(shm), **{option: value})
    assert info.value.code == "WF511"
    assert info.value.attribute == option
    assert f"{option}={value!r}" in str(info.value)
    assert files(shm) == []


def test_nothing_left_open_after_close(shm: Path) -> None:
    """After close, no file in the directory and no descriptor pointing into it."""
    assert _fds_into(shm) == []
    state = SharedState(theta=torch.zeros(2, 3), values=np.zeros(4), epoch=0, directory=str(shm))
    handle = SharedState._handle(state._directory, state._prefix, state._owner_pid)
    views = [state.read()["theta"], handle.read()["values"]]
    for v in range(5):
        state.update(theta=torch.full((2, 3), float(v)), epoch=v)
        handle.read()
    state.update(theta=torch.zeros(3, 3))  # a new layout: new slots, the old ones retired
    state.read()
    handle.read()
    assert _fds_into(shm)
    handle.close()
    state.close()
    assert files(shm) == []
    views.clear()  # views that outlive close() keep only their own mapping until collected
    assert _fds_into(shm) == []


def test_cleanup_orphans_removes_only_dead_owners(shm: Path) -> None:
    dead_pid = 2**22 + 12345  # above Linux's pid_max: no such process
    orphan = [shm / f"wellfed_{dead_pid}_abcd_ctl", shm / f"wellfed_{dead_pid}_abcd_s0"]
    for p in orphan:
        p.write_bytes(b"x")
    unrelated = shm / "not_wellfed_file"
    unrelated.write_bytes(b"x")
    with SharedState(a=1, directory=str(shm)) as state:
        mine = set(state.segment_paths())
        removed = SharedState.cleanup_orphans(str(shm))
        assert sorted(removed) == sorted(str(p) for p in orphan)
        assert mine <= {str(p) for p in shm.iterdir()}
        assert unrelated.exists()
        assert state.read()["a"] == 1


def test_repr_names_fields(shm: Path) -> None:
    with SharedState(theta=torch.zeros(2, 3), epoch=0, directory=str(shm)) as state:
        text = repr(state)
        assert "theta: torch.float32(2, 3)" in text
        assert "epoch: int" in text
        assert "version=1" in text


def test_docstring_examples_run() -> None:
    import doctest

    import wellfed.shared_state as module

    result = doctest.testmod(module)
    assert result.attempted > 0
    assert result.failed == 0
