"""A forked child and the OS locks its parent held at the fork (``_osfork``, *Forks*).

An OFD lock lasts until the last descriptor of its open file description
closes, and a forked child has a descriptor of each of its parent's. Found
by a bug hunt: a writer holding a lock forks an idle worker and is killed;
other processes then waited for the lock for as long as the worker lived.
And a child leaving a ``with`` block its parent's thread forked it in
unlocked the parent's lock. Each test runs the parent in a process of its
own (``os.fork`` inside it), orders events by lines on pipes, and fails
against the code before the fix.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from zarr.core.buffer import cpu
from zarr.storage import LocalStore

from zarr_rangelock import LockTimeout, RangeLockedStore

pytestmark = pytest.mark.timeout(60)

KEY = "c/0"

_PRELUDE = """
import os, sys, threading
from zarr.storage import LocalStore
from zarr_rangelock import RangeLockedStore
store = RangeLockedStore(LocalStore(sys.argv[1]))
def say(line):
    sys.stdout.write(line + "\\n"); sys.stdout.flush()
"""

# A thread holds the key; the main thread forks a child that idles (reading
# its stdin, the test's pipe) and says both pids; then the parent idles.
_HOLD_THEN_FORK = (
    _PRELUDE
    + """
held, stop = threading.Event(), threading.Event()
def hold():
    with store.locked_sync("c/0", [(0, None)]):
        held.set()
        stop.wait()
threading.Thread(target=hold, daemon=True).start()
held.wait()
pid = os.fork()
if pid == 0:
    sys.stdin.read()
    os._exit(0)
say(f"{os.getpid()} {pid}")
sys.stdin.read()
"""
)

# The main thread forks inside its own with block: the parent waits for the
# child, says how it ended and stays in the block until its stdin ends; the
# child leaves the block (releasing its copy of the hold), then locks and
# releases another key itself.
_FORK_INSIDE_A_BLOCK = (
    _PRELUDE
    + """
with store.locked_sync("c/0", [(0, None)]):
    pid = os.fork()
    if pid:
        _, status = os.waitpid(pid, 0)
        say(f"child exited {os.waitstatus_to_exitcode(status)}")
        sys.stdin.read()
if pid == 0:
    with store.locked_sync("c/1", [(0, None)], timeout=10):
        pass
    os._exit(0)
"""
)


def _busy(store: RangeLockedStore) -> bool:
    """Whether another process holds the key (a short try)."""
    try:
        with store.locked_sync(KEY, [(0, None)], timeout=0.2):
            return False
    except LockTimeout:
        return True


def _write_key(root: Path) -> RangeLockedStore:
    store = RangeLockedStore(LocalStore(root))
    store.set_sync(KEY, cpu.Buffer.from_bytes(bytes(64)))
    store.set_sync("c/1", cpu.Buffer.from_bytes(bytes(64)))
    return store


def _start(script: str, root: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script), str(root)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def test_a_lock_held_at_a_fork_ends_when_its_holder_is_killed_though_the_child_lives(
    tmp_path: Path,
) -> None:
    store = _write_key(tmp_path)
    parent = _start(_HOLD_THEN_FORK, tmp_path)
    assert parent.stdout is not None and parent.stdin is not None
    line = parent.stdout.readline()
    parent_pid, child_pid = map(int, line.split())
    try:
        assert _busy(store)  # the parent holds it
        os.kill(parent_pid, signal.SIGKILL)
        parent.wait(timeout=30)
        # The child lives (reading the pipe it shares with its dead parent).
        os.kill(child_pid, 0)
        with store.locked_sync(KEY, [(0, None)], timeout=20):  # before: until the child ended
            pass
    finally:
        parent.stdin.close()  # the child reads to the end and exits
        with contextlib.suppress(ProcessLookupError):
            os.kill(child_pid, signal.SIGKILL)
    stats = store.lock_manager.stats()
    assert stats.holders == stats.waiters == 0


def test_a_child_leaving_a_block_it_was_forked_in_leaves_its_parents_lock_held(
    tmp_path: Path,
) -> None:
    store = _write_key(tmp_path)
    parent = _start(_FORK_INSIDE_A_BLOCK, tmp_path)
    assert parent.stdout is not None and parent.stdin is not None
    try:
        assert parent.stdout.readline() == "child exited 0\n"
        # The child released its copy of the hold and took a lock of its
        # own: the parent's hold must still exclude this process.
        assert _busy(store)
    finally:
        parent.stdin.close()
        assert parent.wait(timeout=30) == 0
    with store.locked_sync(KEY, [(0, None)], timeout=20):  # released with the parent's block
        pass
