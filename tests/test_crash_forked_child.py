"""A child forked from a journal writer holds none of its parent's journal files.

A process writing with ``durability="journal"`` holds an ``flock`` on each of
its journal files while it lives, and recovery replays only the records of
files nobody holds (``store/_journal``'s design note). ``flock`` locks belong
to the open file description, which a forked child shares: a child that kept
its parent's journal files open (an idle ``multiprocessing`` worker, forked
by default on Linux) made a killed writer look alive, so ``recover()`` left
its write torn, and once the child had gone the next open replayed that stale
record over writes committed since. Found by a bug hunter's reproduction
(4 runs of 4).

Writers here are forked from the test (as in ``test_crash_fault_injection``)
and killed at ``mid-apply`` through the testing hook ``ZARR_RANGELOCK_FAULT``:
the record is complete, so recovery must make the write all new. Their
children are forked with ``multiprocessing``'s ``"fork"`` context. Events are
ordered by pipes: a child waits for a byte; a pipe whose write end only the
writer and its child hold reads EOF once both are gone.
"""

from __future__ import annotations

import ast
import collections
import contextlib
import fcntl
import json
import multiprocessing
import os
import select
import signal
import threading
import time
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from zarr.core.buffer import cpu
from zarr.storage import LocalStore

from tests._journal_records import journal_files
from tests._processes import python_output
from tests._threads import wait_until
from zarr_rangelock import RangeLockedStore
from zarr_rangelock.store import _io, _journal
from zarr_rangelock.store._faults import FAULT_ENV
from zarr_rangelock.store._journal import JOURNAL_DIR

SIZE = 256 * 1024
OLD, FIRST, NEW, LATER = 0, 1, 2, 3
WAIT_S = 30.0

B = cpu.Buffer.from_bytes


def fill(byte: int) -> cpu.Buffer:
    return B(bytes([byte]) * SIZE)


def open_journaled(root: Path, **kw: Any) -> RangeLockedStore:
    return RangeLockedStore(LocalStore(root), durability="journal", **kw)


def content(store: RangeLockedStore, key: str) -> dict[int, int]:
    """How many of each byte ``key`` holds (a torn value shows two)."""
    buf = store.get_sync(key)
    assert buf is not None, key
    return dict(collections.Counter(buf.to_bytes()))


def journal_files_open(root: Path) -> list[str]:
    """The names of the journal files of ``root`` this process has open."""
    names = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue  # the listing's own descriptor, closed by now
        if os.path.dirname(target) == os.path.realpath(root / JOURNAL_DIR):
            names.append(os.path.basename(target))
    return sorted(names)


def flock_free(path: Path) -> bool:
    """Can this process take the ``flock`` that a live journal writer holds on
    its journal file ``path`` (its writer gone)? Lets it go at once."""
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
    return True


def fork(fn: Callable[[], object]) -> int:
    """Run ``fn`` in a forked child, which exits 0 if it returns (3 if it raises)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with zarr's loop thread
        pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 0
        try:
            fn()
        except BaseException:
            traceback.print_exc()
            code = 3
        os._exit(code)
    return pid


def fork_worker(target: Callable[..., object], *args: object) -> None:
    """Start ``target(*args)`` in a ``multiprocessing`` process forked from this one."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with zarr's loop thread
        multiprocessing.get_context("fork").Process(target=target, args=args).start()


def ended(pid: int) -> int:
    """Wait (at most WAIT_S) for the child ``pid``: -signal or exit code."""
    pidfd = os.pidfd_open(pid)
    try:
        if not select.select([pidfd], [], [], WAIT_S)[0]:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail(f"process {pid} still running after {WAIT_S} s")
    finally:
        os.close(pidfd)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


class Reports:
    """Lines from a pipe, read with a deadline; EOF once every writer of it is gone."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buf = b""
        self.eof = False

    def _fill(self, timeout: float) -> bool:
        if self.eof or not select.select([self.fd], [], [], timeout)[0]:
            return False
        chunk = os.read(self.fd, 4096)
        self.eof = not chunk
        self.buf += chunk
        return bool(chunk)

    def line(self) -> str:
        deadline = time.monotonic() + WAIT_S
        while b"\n" not in self.buf:
            if not self._fill(max(0.0, deadline - time.monotonic())):
                pytest.fail(f"no report within {WAIT_S} s (eof: {self.eof}, got {self.buf!r})")
        line, self.buf = self.buf.split(b"\n", 1)
        return line.decode()

    def open_now(self) -> bool:
        """Whether a writer of the pipe still lives (nothing waits)."""
        while self._fill(0):
            pass
        return not self.eof

    def closed(self) -> bool:
        """Wait (at most WAIT_S) until every writer of the pipe is gone."""
        deadline = time.monotonic() + WAIT_S
        while not self.eof and time.monotonic() < deadline:
            self._fill(max(0.0, deadline - time.monotonic()))
        return self.eof


def fork_writer(target: Callable[[Path, int, int], object], root: Path) -> tuple[int, int, Reports]:
    """Fork a writer running ``target(root, control, out)``: ``control`` a
    pipe this process writes to (the writer, or its worker, reads it),
    ``out`` the pipe of its reports. Returns the writer's pid, the control
    pipe's write end and the reports."""
    control_r, control_w = os.pipe()
    out_r, out_w = os.pipe()

    def writer() -> None:
        os.close(control_w)
        os.close(out_r)
        target(root, control_r, out_w)

    pid = fork(writer)
    os.close(control_r)
    os.close(out_w)
    return pid, control_w, Reports(out_r)


# ------------------------------------------------------------------ the killed writer


def idle_worker(stop: int) -> None:
    os.read(stop, 1)  # an idle pool worker: it lives until told (or the test is gone)


def writer_that_forks_a_worker(root: Path, stop: int, out: int) -> None:
    store = open_journaled(root)
    store.set_range_sync("v", fill(FIRST), 0)  # its journal file exists now, pooled
    fork_worker(idle_worker, stop)
    os.write(out, b"forked\n")
    os.environ[FAULT_ENV] = "mid-apply"
    store.set_range_sync("v", fill(NEW), 0)  # killed half way, its record complete
    raise AssertionError("the mid-apply hook did not kill the writer")


_FRESH_OPEN = """
import collections
from zarr.storage import LocalStore
from zarr_rangelock import RangeLockedStore
store = RangeLockedStore(LocalStore({root!r}), durability="journal")
print(dict(collections.Counter(store.get_sync("v").to_bytes())))
"""


@pytest.mark.timeout(90)
def test_a_killed_writers_record_is_recovered_while_a_child_it_forked_lives(
    tmp_path: Path, no_journal_warning: None
) -> None:
    # The writer journals a write, forks an idle worker (which lives on), and
    # is killed half way through its next write. recover() here, while the
    # worker lives, must make that write all new; without the fork rule the
    # worker held the writer's flock, recovery skipped the record and the
    # value stayed torn. Then this process commits a later write, the worker
    # exits, and a fresh process opening the root must replay nothing over
    # it (the writer's record was replayed and removed, not left behind).
    root = tmp_path
    (root / "v").write_bytes(bytes([OLD]) * SIZE)
    store = open_journaled(root)  # a long-running process beside the writer
    pid, stop_w, reports = fork_writer(writer_that_forks_a_worker, root)
    try:
        assert reports.line() == "forked"
        assert ended(pid) == -signal.SIGKILL
        assert reports.open_now(), "the worker must still live"
        assert store.recover() == 1
        assert content(store, "v") == {NEW: SIZE}
        assert reports.open_now(), "the worker must still live"

        store.set_range_sync("v", fill(LATER), 0)  # committed
        os.write(stop_w, b"x")
        assert reports.closed(), "the worker did not exit"
        assert store.recover() == 0
        fresh = python_output(_FRESH_OPEN.format(root=str(root)), timeout=60)
        assert ast.literal_eval(fresh) == {LATER: SIZE}  # it replayed nothing over the write
        assert content(store, "v") == {LATER: SIZE}
        assert all(name.startswith(f"{os.getpid()}-") for name in journal_files(root))
    finally:
        os.close(stop_w)  # the worker, if still there, reads EOF and exits
        os.close(reports.fd)


# ------------------------------------------------------------------ the writing child


def writing_worker(root: Path, store: RangeLockedStore, go: int, out: int) -> None:
    inherited = journal_files_open(root)
    store.set_range_sync("b", fill(FIRST), 0)  # through the store it inherited
    own = journal_files_open(root)
    os.write(out, json.dumps(["child", os.getpid(), inherited, own]).encode() + b"\n")
    os.read(go, 1)
    os.environ[FAULT_ENV] = "mid-apply"
    store.set_range_sync("b", fill(NEW), 0)  # killed half way, its record complete


def writer_with_a_writing_worker(root: Path, go: int, out: int) -> None:
    store = open_journaled(root)
    store.set_range_sync("a", fill(FIRST), 0)
    os.write(out, json.dumps(["writer", os.getpid(), journal_files_open(root)]).encode() + b"\n")
    fork_worker(writing_worker, root, store, go, out)
    os.environ[FAULT_ENV] = "mid-apply"
    store.set_range_sync("a", fill(NEW), 0)  # killed half way, its record complete
    raise AssertionError("the mid-apply hook did not kill the writer")


@pytest.mark.timeout(60)
def test_a_child_forked_from_a_journal_writer_journals_its_own_writes_in_its_own_file(
    tmp_path: Path, no_journal_warning: None
) -> None:
    # A writer journals a write of "a", forks a worker that writes "b" through
    # the store it inherited, and is killed half way through its next write
    # of "a". The worker holds no journal file of its parent, only the one it
    # made (named by its own pid); recovery while it lives replays the
    # writer's record and leaves the worker's file alone; once the worker is
    # killed half way through a write of "b" too, recovery replays its record.
    root = tmp_path
    for key in "ab":
        (root / key).write_bytes(bytes([OLD]) * SIZE)
    store = open_journaled(root)
    pid, go_w, reports = fork_writer(writer_with_a_writing_worker, root)
    try:
        who, wpid, [writers_file] = json.loads(reports.line())
        assert (who, wpid) == ("writer", pid)
        assert writers_file.startswith(f"{pid}-")
        who, cpid, inherited, own = json.loads(reports.line())
        assert who == "child"
        assert inherited == [], "the worker kept its parent's journal file open"
        [childs_file] = own  # made by the worker for its write
        assert childs_file.startswith(f"{cpid}-")

        assert ended(pid) == -signal.SIGKILL
        assert reports.open_now(), "the worker must still live"
        assert store.recover() == 1  # the writer's record, not the live worker's
        assert content(store, "a") == {NEW: SIZE}
        assert content(store, "b") == {FIRST: SIZE}
        assert journal_files(root) == [childs_file]

        os.write(go_w, b"x")  # the worker writes "b" again, and is killed half way
        assert reports.closed(), "the worker did not end"
        # Its report pipe closes as it exits, maybe before its journal file
        # (and the flock that says it lives): the worker is no child of
        # ours to wait for, so wait for the flock to go.
        wait_until(lambda: flock_free(root / JOURNAL_DIR / childs_file), "the worker's flock gone")
        assert store.recover() == 1
        assert content(store, "b") == {NEW: SIZE}
        assert content(store, "a") == {NEW: SIZE}
        assert journal_files(root) == []
    finally:
        os.close(go_w)
        os.close(reports.fd)


# ------------------------------------------------------------------ threads at fork time


@pytest.mark.timeout(60)
def test_a_child_forked_while_threads_are_in_the_journal_holds_none_of_its_files_and_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # At the fork one thread is mid-transaction (its record written, its
    # journal file checked out) and another holds the journal's mutex. In
    # the child those threads do not exist: it must hold none of the
    # parent's journal files (the checked-out one included), and its own
    # write must neither wait for the mutex forever nor use a parent's file.
    root = tmp_path
    for key in ("v", "w"):
        (root / key).write_bytes(bytes([OLD]) * SIZE)
    # In-process locks only: the child's write must not wait for the parent's
    # lock-file presence, which the stopped thread keeps until it goes on.
    store = open_journaled(root, cross_process=False)
    journal = store._backend.journal  # type: ignore[attr-defined]  # a journal-mode backend's
    assert isinstance(journal, _journal.Journal)
    parent = os.getpid()
    in_apply, go_on = threading.Event(), threading.Event()
    real_write = _io.write_keyed

    def stopping_write(*args: Any) -> None:
        if os.getpid() == parent:
            in_apply.set()
            go_on.wait(WAIT_S)
        real_write(*args)

    monkeypatch.setattr(_journal, "write_keyed", stopping_write)
    mutex_held = threading.Event()

    def hold_the_mutex() -> None:
        with journal._mutex:
            mutex_held.set()
            go_on.wait(WAIT_S)

    committer = threading.Thread(target=store.set_range_sync, args=("v", fill(NEW), 0))
    holder = threading.Thread(target=hold_the_mutex)
    out_r, out_w = os.pipe()
    pid = 0
    try:
        committer.start()
        assert in_apply.wait(WAIT_S)
        holder.start()
        assert mutex_held.wait(WAIT_S)
        parents_files = journal_files_open(root)
        assert len(parents_files) == 1  # checked out by the committer

        def child() -> None:
            os.close(out_r)
            os.write(out_w, json.dumps(journal_files_open(root)).encode() + b"\n")
            store.set_range_sync("w", fill(LATER), 0)
            os.write(out_w, json.dumps(journal_files_open(root)).encode() + b"\n")

        pid = fork(child)
        os.close(out_w)
        out_w = -1
        reports = Reports(out_r)
        go_on.set()  # the parent's threads go on (the child's descriptors are its own now)
        inherited = json.loads(reports.line())
        assert inherited == [], "the child kept its parent's journal files open"
        [childs_file] = json.loads(reports.line())  # made for its write
        assert ended(pid) == 0
        assert childs_file.startswith(f"{pid}-") and childs_file not in parents_files
    finally:
        go_on.set()
        committer.join(WAIT_S)
        holder.join(WAIT_S)
        os.close(out_r)
        if out_w >= 0:
            os.close(out_w)
        if pid:  # a child stuck in its write (the parent's mutex) is not left behind
            with contextlib.suppress(ChildProcessError):
                if os.waitpid(pid, os.WNOHANG) == (0, 0):
                    os.kill(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
    assert not committer.is_alive() and not holder.is_alive()
    assert content(store, "v") == {NEW: SIZE}
    assert content(store, "w") == {LATER: SIZE}
    assert journal_files_open(root) == parents_files  # the parent's files are its own still
