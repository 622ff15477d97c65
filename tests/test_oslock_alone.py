"""A process alone in a root (``locks/_oslock``, "Alone"): token holds take no OS lock.

What is tested: alone, a ``set_range`` makes no ``fcntl`` lock call at all,
where with another process present it makes two (the control); a process
arriving, with or without a timeout, waits until the holds in flight are let
go and the one alone is alone no more; a process alone and idle stops being
alone and is alone again at its next write; a forked child of a process
alone gets its locks; a process that gave up waiting (a timeout) does not
keep another from being alone; the writes of a process alone find a knock
while its watcher sleeps long, the watcher wakes rarely while they look,
and a process arriving once they stopped waits at most one long sleep. The
deterministic interleavings of an elided write and another process (the
write paused halfway) are in ``test_oslock``
(``test_a_token_hold_takes_its_range_...[alone]``) and
``test_shard_writer_gate``; the random one in ``test_processes``.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import gc
import multiprocessing
import os
import select
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from zarr.core.buffer import cpu
from zarr.storage import LocalStore

from tests._processes import present_in_another_process, try_in_another_process
from tests._threads import wait_until
from zarr_rangelock import RangeLockedStore
from zarr_rangelock.locks import _ofd, _presence
from zarr_rangelock.locks._lockfile import LOCK_FILE_NAME
from zarr_rangelock.locks._oslock import ELIDED, OsLocks

pytestmark = pytest.mark.timeout(120)

KEY = "c/0"
SIZE = 1 << 16


def B(data: bytes) -> cpu.Buffer:
    return cpu.Buffer.from_bytes(data)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[RangeLockedStore]:
    s = RangeLockedStore(LocalStore(tmp_path / "root"))
    s.set_sync(KEY, B(bytes(SIZE)))
    yield s


def _os_locks(store: RangeLockedStore) -> OsLocks:
    os_locks = store._state.os_locks
    assert os_locks is not None
    return os_locks


def _root(store: RangeLockedStore) -> Path:
    return Path(_os_locks(store).root)


def _elided_hold(store: RangeLockedStore) -> Any:
    """A token hold of bytes 64-128 of KEY, taken alone (no OS lock)."""
    hold = store.lock_manager._hold_if_free(KEY, 64, 128)
    assert hold is not None and hold[1] == ELIDED
    return hold


def _child(script: str, store: RangeLockedStore) -> subprocess.Popen[str]:
    """``script`` in another process, given the store's root and KEY."""
    return subprocess.Popen(
        [sys.executable, "-c", script, str(_root(store)), KEY],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


@pytest.mark.parametrize("alone", [True, False], ids=["alone", "control: another process"])
def test_alone_a_set_range_makes_no_lock_call(
    store: RangeLockedStore, monkeypatch: pytest.MonkeyPatch, alone: bool
) -> None:
    calls: list[int] = []
    real = fcntl.fcntl
    me = threading.get_ident()

    def spy(fd: int, cmd: int, arg: Any = 0) -> Any:
        # (range locks and unlocks only: not a try at being alone, now and then)
        ours = threading.get_ident() == me and cmd in (_ofd._SETLK, _ofd._SETLKW)
        if ours and _ofd._FLOCK.unpack(arg)[2] < _presence.PRESENCE_BYTE:
            calls.append(cmd)
        return real(fd, cmd, arg)

    with contextlib.ExitStack() as stack:
        if not alone:
            stack.enter_context(present_in_another_process(_root(store)))
        store.set_range_sync(KEY, B(b"x" * 64), 0)  # (becomes alone, or tries)
        monkeypatch.setattr(fcntl, "fcntl", spy)
        for i in range(100):
            store.set_range_sync(KEY, B(b"y" * 64), 64 * i)
        assert _os_locks(store).alone() is alone
        assert len(calls) == (0 if alone else 200)  # else a lock and an unlock a write
        with store.locked_sync(KEY, [(0, 8)]):  # a Grant: an OS lock, alone or not
            pass
        monkeypatch.undo()
    assert len(calls) == (0 if alone else 200) + 2


_WAIT_CHILD = textwrap.dedent(
    """
    import sys
    from zarr.storage import LocalStore
    from zarr_rangelock import RangeLockedStore
    store = RangeLockedStore(LocalStore(sys.argv[1]))
    print("asking", flush=True)
    with store.locked_sync(sys.argv[2], [(0, 1)]):  # no timeout: waits in the kernel
        print("granted", flush=True)
    """
)


def test_a_process_arriving_waits_in_the_kernel_until_the_hold_in_flight_is_let_go(
    store: RangeLockedStore,
) -> None:
    # The child asks for bytes the parent's hold does not cover: alone, the
    # parent took no OS lock, so the child must wait to be present at all.
    mgr = store.lock_manager
    hold = _elided_hold(store)
    child = _child(_WAIT_CHILD, store)
    assert child.stdout is not None
    try:
        assert child.stdout.readline() == "asking\n"
        wait_until(lambda: _os_locks(store)._presence._knocked(), "a knock")
        ready, _, _ = select.select([child.stdout], [], [], 0.2)
        assert not ready, "the child got in while a hold was in flight"
    finally:
        mgr._let_go(KEY, hold)
    assert child.stdout.readline() == "granted\n"
    assert child.wait(30) == 0
    assert not _os_locks(store).alone()


def test_alone_and_idle_a_process_stops_being_alone_and_is_alone_again_at_its_next_write(
    store: RangeLockedStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_presence, "IDLE_S", 0.01)
    os_locks = _os_locks(store)
    store.set_range_sync(KEY, B(b"a"), 0)
    assert os_locks.alone()
    wait_until(lambda: not os_locks.alone(), "alone no more after an idle spell")
    # The presence is shared again: another process gets in without knocking.
    assert try_in_another_process(_root(store), KEY, 0, 1) == "granted"
    store.set_range_sync(KEY, B(b"b"), 0)
    assert os_locks.alone()
    assert store.get_sync(KEY).to_bytes()[:1] == b"b"  # type: ignore[union-attr]


def _child_writes(root: str, out: Any) -> None:
    store = RangeLockedStore(LocalStore(root))
    os_locks = store._state.os_locks
    assert os_locks is not None
    alone_at_start = os_locks.alone()
    with store.locked_sync(KEY, [(0, 1)], timeout=20):
        pass
    store.set_range_sync(KEY, B(b"c"), 1)
    out.put((alone_at_start, os_locks._presence.fd))


@pytest.mark.skipif(sys.platform != "linux", reason="fork")
# (the watcher of the process alone is a thread: Python 3.12 warns on any fork
# with threads, as it does for zarr's own event-loop thread)
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_a_forked_child_of_a_process_alone_gets_its_locks(store: RangeLockedStore) -> None:
    os_locks = _os_locks(store)
    store.set_range_sync(KEY, B(b"p"), 0)
    assert os_locks.alone()
    parent_fd = os_locks._presence.fd
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    child = ctx.Process(target=_child_writes, args=(str(_root(store)), out))
    child.start()
    alone_at_start, child_fd = out.get(timeout=30)
    child.join(30)
    assert child.exitcode == 0
    # The child did not inherit being alone (nor the parent's description:
    # its presence is a description of its own, even if the number is reused).
    assert alone_at_start is False and child_fd >= 0
    assert parent_fd >= 0
    assert store.get_sync(KEY).to_bytes()[:2] == b"pc"  # type: ignore[union-attr]


_GIVE_UP_CHILD = textwrap.dedent(
    """
    import sys
    from zarr.storage import LocalStore
    from zarr_rangelock import LockTimeout, RangeLockedStore
    store = RangeLockedStore(LocalStore(sys.argv[1]))
    try:
        with store.locked_sync(sys.argv[2], [(0, 1)], timeout=0.05):
            print("granted", flush=True)
    except LockTimeout:
        print("gave up", flush=True)
    sys.stdin.readline()  # alive, with its store, until told
    """
)


def test_a_process_that_gave_up_waiting_does_not_keep_another_from_being_alone(
    store: RangeLockedStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The child knocks while the parent's hold is in flight, times out and
    # stays (idle, its store open, never present). Its knock must go with its
    # wait: the parent is then alone again at a later write.
    monkeypatch.setattr(_presence, "RETRY_S", 0.01)
    os_locks = _os_locks(store)
    mgr = store.lock_manager
    hold = _elided_hold(store)
    child = _child(_GIVE_UP_CHILD, store)
    assert child.stdin is not None and child.stdout is not None
    try:
        try:
            assert child.stdout.readline() == "gave up\n"
        finally:
            mgr._let_go(KEY, hold)
        assert not os_locks._presence._knocked()

        def alone_again() -> bool:
            store.set_range_sync(KEY, B(b"z"), 0)
            return os_locks.alone()

        wait_until(alone_again, "alone again with the child still there")
    finally:
        child.stdin.write("\n")
        child.stdin.flush()
        assert child.wait(30) == 0


def test_a_process_knocks_while_any_of_its_requests_waits(store: RangeLockedStore) -> None:
    # Two requests of one process wait to be present (the second lock file
    # user stands for the other process: its own descriptions); the first
    # to give up must not take the knock from the one still waiting, which
    # may be waiting in the kernel and poll nothing.
    alone = _os_locks(store)
    hold = _elided_hold(store)
    other = OsLocks(alone.root, writable=True)
    try:
        assert other.ready() and not other._presence.become()  # knocks
        other._presence.begin_wait()
        other._presence.begin_wait()
        other._presence.end_wait()  # one gave up
        assert alone._presence._knocked(), "the knock went while a request still waits"
        other._presence.end_wait()  # the last one
        assert not alone._presence._knocked()
    finally:
        store.lock_manager._let_go(KEY, hold)
        other.close()


def test_a_process_that_cannot_stop_being_alone_at_once_keeps_trying(
    store: RangeLockedStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The conversion back to shared refused three times (as a kernel out of
    # lock records would): the watcher tries again until it goes, rather
    # than leave every arriving process waiting, and raises nothing.
    monkeypatch.setattr(_presence, "IDLE_S", 0.01)
    alone = _os_locks(store)
    refused: list[int] = []
    real = OsLocks._setlk

    def flaky(self: OsLocks, fd: int, kind: int, start: int, length: int) -> bool:
        converting = self is alone and start == _presence.PRESENCE_BYTE
        if converting and kind == fcntl.F_RDLCK and len(refused) < 3:
            refused.append(kind)
            raise OSError(errno.ENOLCK, "No locks available")
        return real(self, fd, kind, start, length)

    errors: list[BaseException] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: errors.append(args.exc_value))
    store.set_range_sync(KEY, B(b"a"), 0)
    assert alone.alone()
    monkeypatch.setattr(OsLocks, "_setlk", flaky)
    other = OsLocks(alone.root, writable=True)
    try:
        assert other.ready()
        wait_until(lambda: other._presence.become(), "present once the conversion went")
    finally:
        other.close()
    assert len(refused) == 3 and errors == []


class _WatchedSleeps(threading.Event):
    """The watcher's wake-up event, recording each sleep it is asked for;
    ``busy`` is set at its first sleep of ``WATCH_BUSY_S``."""

    def __init__(self) -> None:
        super().__init__()
        self.sleeps: list[float | None] = []
        self.busy = threading.Event()

    def wait(self, timeout: float | None = None) -> bool:
        self.sleeps.append(timeout)
        if timeout == _presence.WATCH_BUSY_S:
            self.busy.set()
        return super().wait(timeout)


@contextlib.contextmanager
def _writing(store: RangeLockedStore) -> Iterator[None]:
    """``set_range_sync`` after ``set_range_sync`` in a thread (token holds,
    elided while alone) until the block ends."""
    stop = threading.Event()
    errors: list[BaseException] = []

    def write() -> None:
        try:
            while not stop.is_set():
                store.set_range_sync(KEY, B(b"w" * 64), 0)
        except BaseException as e:
            errors.append(e)

    t = threading.Thread(target=write)
    t.start()
    try:
        yield
    finally:
        stop.set()
        t.join(30)
    assert not t.is_alive() and errors == []


_ON_CUE_CHILD = textwrap.dedent(
    """
    import sys
    from zarr.storage import LocalStore
    from zarr_rangelock import RangeLockedStore
    store = RangeLockedStore(LocalStore(sys.argv[1]))
    print("ready", flush=True)
    sys.stdin.readline()  # the cue
    with store.locked_sync(sys.argv[2], [(0, 1)]):  # no timeout: knocks, waits in the kernel
        print("granted", flush=True)
    """
)


def _granted_within(child: subprocess.Popen[str], seconds: float) -> bool:
    """Whether ``child`` printed "granted" within ``seconds``."""
    assert child.stdout is not None
    ready, _, _ = select.select([child.stdout], [], [], seconds)
    return bool(ready) and child.stdout.readline() == "granted\n"


def _cue(child: subprocess.Popen[str]) -> None:
    assert child.stdin is not None
    child.stdin.write("\n")
    child.stdin.flush()


@contextlib.contextmanager
def _on_cue(store: RangeLockedStore) -> Iterator[subprocess.Popen[str]]:
    """Another process, started and waiting for its cue (:func:`_cue`) to
    lock a byte of KEY; it must have exited cleanly when the block ends,
    and is killed if not (a failed test leaves no process waiting in the
    kernel)."""
    child = _child(_ON_CUE_CHILD, store)
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == "ready\n"
        yield child
        assert child.wait(30) == 0
    finally:
        child.kill()


@pytest.mark.parametrize("holds_look", [True, False], ids=["holds look", "control: they do not"])
def test_a_knock_is_found_by_the_writes_of_a_process_alone_while_its_watcher_sleeps(
    store: RangeLockedStore, monkeypatch: pytest.MonkeyPatch, holds_look: bool
) -> None:
    # The watcher sleeps a minute once the token holds look for the knock
    # themselves: another process that arrives gets in because a write
    # finds its knock. The control: writes that only pretend to look, and
    # it stays out.
    monkeypatch.setattr(_presence, "WATCH_BUSY_S", 60.0)
    if not holds_look:

        def pretend(self: _presence.Presence) -> None:
            self._look_at = _presence._monotonic() + _presence.WATCH_S

        monkeypatch.setattr(_presence.Presence, "_look", pretend)
    presence = _os_locks(store)._presence
    sleeps = presence._tick = _WatchedSleeps()
    with _on_cue(store) as child, _writing(store):
        assert sleeps.busy.wait(30), "the watcher never slept long"
        _cue(child)
        if holds_look:
            assert _granted_within(child, 30), "a write found no knock"
        else:
            assert not _granted_within(child, 1.0)
            presence._knock_seen = True  # (lets the sleeping watcher go)
            sleeps.set()
            assert _granted_within(child, 30)


def test_while_its_writes_look_for_a_knock_the_watcher_of_a_process_alone_rarely_wakes(
    store: RangeLockedStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A watcher waking every WATCH_S takes the GIL from the writers each
    # time (see _presence); while the writes look, it sleeps WATCH_BUSY_S.
    looks: list[str] = []
    real = _presence.Presence._knocked

    def spied(self: _presence.Presence) -> bool:
        looks.append(threading.current_thread().name)
        return real(self)

    monkeypatch.setattr(_presence.Presence, "_knocked", spied)
    presence = _os_locks(store)._presence
    sleeps = presence._tick = _WatchedSleeps()
    with _writing(store):
        assert sleeps.busy.wait(30)
        looks.clear()
        start = _presence._monotonic()
        wait_until(lambda: _presence._monotonic() - start > 0.2, "0.2 s of writes")
    by_watcher = looks.count("zarr-rangelock alone")
    by_writes = len(looks) - by_watcher
    # (every WATCH_S: about 200 looks by the watcher in 0.2 s)
    assert by_watcher <= 0.2 / _presence.WATCH_BUSY_S + 5
    assert by_writes > by_watcher


def test_a_process_arriving_after_the_writes_of_a_process_alone_stopped_waits_one_long_sleep(
    store: RangeLockedStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Once its writes stop, nobody looks for a knock until the watcher wakes
    # from its long sleep: it then looks itself, every WATCH_S. So at most
    # one long sleep starts after the last write (README: "up to 10 ms").
    # The other process, started meanwhile, knocks on cue once they stopped.
    monkeypatch.setattr(_presence, "WATCH_BUSY_S", 0.2)
    presence = _os_locks(store)._presence
    sleeps = presence._tick = _WatchedSleeps()
    with _on_cue(store) as child:
        with _writing(store):
            assert sleeps.busy.wait(30)
        stopped = len(sleeps.sleeps)
        assert _os_locks(store).alone()  # (the watcher sleeps long: no idle stop yet)
        _cue(child)
        assert _granted_within(child, 30)
        assert sleeps.sleeps[stopped:].count(_presence.WATCH_BUSY_S) <= 1


def _lock_file_descriptions(root: Path) -> int:
    """This process's descriptors of ``root``'s lock file."""
    lock_file = str(root / LOCK_FILE_NAME)
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # closed meanwhile (the listing's own)
            n += os.readlink(f"/proc/self/fd/{fd}") == lock_file
    return n


def test_a_process_alone_keeps_its_lock_file_open_past_its_store_until_its_watcher_ends(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # README: a process keeps a description of the lock file while its store
    # lives, "up to 50 ms longer after a write of a process alone, while its
    # watcher runs" (the watcher keeps the OsLocks alive until it stops, at
    # the latest IDLE_S after the last write). Here it stays until told.
    monkeypatch.setattr(_presence, "IDLE_S", 3600.0)
    root = tmp_path / "root"
    s = RangeLockedStore(LocalStore(root))
    s.set_sync(KEY, B(bytes(SIZE)))
    s.set_range_sync(KEY, B(b"a"), 0)
    assert _os_locks(s).alone()
    del s
    gc.collect()
    assert _lock_file_descriptions(root) >= 1  # the watcher runs: still open
    monkeypatch.setattr(_presence, "IDLE_S", 0.0)  # idle at its next look

    def all_closed() -> bool:
        gc.collect()
        return _lock_file_descriptions(root) == 0

    wait_until(all_closed, "the lock file closed once the watcher stopped")
