"""Cross-process locks (``locks/_oslock``): the mapping into the lock file,
the open file descriptions of one process, the lock file itself, refusals
(no OFD locks, no locks at all, forks, too few descriptors). Holds between
processes are in ``test_oslock_processes.py``.

Other processes, where they take part, are real (a child Python reporting
over a pipe), so every "it waits" below is ordered by messages, never by
sleeping. Each exclusion test has its control in this module: the same
request without the mechanism under test is granted at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import pickle
import subprocess
import sys
import textwrap
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from zarr.core.buffer import cpu
from zarr.storage import LocalStore

from tests._processes import python_output
from tests._shard_helpers import OURS, STOCK
from tests._threads import run_within
from zarr_rangelock import (
    CrossProcessLockError,
    CrossProcessWarning,
    InvalidKeyError,
    LockTimeout,
    RangeLockedStore,
)
from zarr_rangelock.locks import _ofd, _osfile, _osfork, _oslock
from zarr_rangelock.locks._lockfile import (
    LOCK_FILE_NAME,
    SLOT_BYTES,
    SLOTS,
    key_slot,
    range_span,
    spans_for,
)
from zarr_rangelock.locks._mounts import filesystem_type
from zarr_rangelock.locks._oslock import OsLocks
from zarr_rangelock.locks._own import one_call
from zarr_rangelock.store import _backends

pytestmark = pytest.mark.timeout(60)

KEY = "c/0/0"
SIZE = 4096


def B(data: bytes) -> cpu.Buffer:
    return cpu.Buffer.from_bytes(data)


# ------------------------------------------------------------- the mapping


def test_a_key_maps_to_the_same_slot_in_every_process() -> None:
    # CRC-32, not Python's per-process randomized hash().
    code = "from zarr_rangelock.locks._lockfile import key_slot; print(key_slot('c/0/0'))"
    assert int(python_output(code)) == key_slot("c/0/0")
    assert 0 <= key_slot("c/0/0") < SLOTS


def test_ranges_map_into_the_keys_slot_and_clamp_past_one_tebibyte() -> None:
    base = key_slot(KEY) * SLOT_BYTES
    assert spans_for(KEY, ((0, 10), (20, 1 << 64)), False) == [
        (base, 10),
        (base + 20, SLOT_BYTES - 20),
    ]
    # A range starting past the slot is clamped to its last byte: still locked.
    assert spans_for(KEY, ((SLOT_BYTES + 5, SLOT_BYTES + 9),), False) == [
        (base + SLOT_BYTES - 1, 1)
    ]
    assert spans_for("any", ((0, 1),), True) == [(0, SLOTS * SLOT_BYTES)]


# ------------------------------------------------- descriptions in one process


@pytest.fixture
def locks(tmp_path: Path) -> Iterator[OsLocks]:
    os_locks = OsLocks(str(tmp_path), writable=True)
    assert os_locks.ready()
    yield os_locks
    os_locks.close()


@pytest.fixture
def other(tmp_path: Path) -> Iterator[OsLocks]:
    """The same lock file through another OsLocks: descriptions and own
    holds of its own, as another process has (the tests below hold through
    ``locks`` and contend through ``other``)."""
    os_locks = OsLocks(str(tmp_path), writable=True)
    assert os_locks.ready()
    yield os_locks
    os_locks.close()


def test_holds_through_different_descriptions_exclude_each_other(
    locks: OsLocks, other: OsLocks
) -> None:
    a = locks.try_hold([(100, 10)], shared=False)
    assert a is not None
    assert other.try_hold([(105, 10)], shared=False) is None  # overlaps
    b = other.try_hold([(110, 10)], shared=False)  # disjoint
    assert b is not None
    locks.release(a)
    c = other.try_hold([(105, 5)], shared=False)
    assert c is not None
    for held in (b, c):
        other.release(held)


def test_a_request_overlapping_an_exclusive_hold_of_its_own_process_relies_on_it(
    locks: OsLocks, other: OsLocks
) -> None:
    # Two keys whose slots collide, held at once by one process (one call
    # writing both, or two threads): the second must not wait for the
    # first, which would be a wait for itself. It relies on the first's
    # span, which stays locked until both have let go.
    base = 7 * SLOT_BYTES
    first = locks.try_hold([(base, SLOT_BYTES)], shared=False)  # a whole key
    assert first is not None
    second = locks.try_hold([(base + 100, 10), (base + 200, 10)], shared=False)
    reader = locks.try_hold([(base + 300, 1)], shared=True)
    assert second is not None and reader is not None
    locks.release(first)  # kept for the other two
    assert other.try_hold([(base + 105, 1)], shared=True) is None
    assert other.try_hold([(base + 300, 1)], shared=False) is None
    locks.release(second)
    assert other.try_hold([(base + 105, 1)], shared=True) is None  # the reader still relies
    locks.release(reader)
    after = other.try_hold([(base, SLOT_BYTES)], shared=False)  # all let go now
    assert after is not None
    other.release(after)
    # A shared hold covers nothing: an exclusive request overlapping it waits.
    shared = locks.try_hold([(base, 10)], shared=True)
    assert shared is not None
    assert locks.try_hold([(base + 5, 1)], shared=False) is None
    locks.release(shared)


def test_shared_holds_coexist_and_exclude_an_exclusive_one(locks: OsLocks) -> None:
    r1 = locks.try_hold([(0, 64)], shared=True)
    r2 = locks.try_hold([(32, 64)], shared=True)
    assert r1 is not None and r2 is not None
    assert locks.try_hold([(40, 1)], shared=False) is None
    locks.release(r1)
    # Releasing one reader must not drop the other's overlapping range
    # (they are on different descriptions, so they never merged).
    assert locks.try_hold([(40, 1)], shared=False) is None
    locks.release(r2)
    w = locks.try_hold([(40, 1)], shared=False)
    assert w is not None
    locks.release(w)


def test_a_multi_range_hold_takes_all_or_nothing(locks: OsLocks, other: OsLocks) -> None:
    blocker = other.try_hold([(50, 1)], shared=False)
    assert blocker is not None
    assert locks.try_hold([(0, 10), (50, 10)], shared=False) is None
    # The first range was let go when the second was busy.
    first = other.try_hold([(0, 10)], shared=False)
    assert first is not None
    for held in (blocker, first):
        other.release(held)


def test_a_covering_hold_takes_one_span_over_the_gaps(locks: OsLocks, other: OsLocks) -> None:
    held = locks.try_hold([(0, 10), (50, 10)], shared=False, cover=True)
    assert held is not None
    assert other.try_hold([(20, 1)], shared=False) is None  # in the gap: covered
    past = other.try_hold([(60, 1)], shared=False)  # past the last range
    assert past is not None
    locks.release(held)
    other.release(past)
    # The control: without cover the gap is free.
    held = locks.try_hold([(0, 10), (50, 10)], shared=False)
    assert held is not None
    gap = other.try_hold([(20, 1)], shared=False)
    assert gap is not None
    locks.release(held)
    other.release(gap)


def test_a_covering_hold_whose_gap_is_busy_takes_its_ranges_one_by_one(
    locks: OsLocks, other: OsLocks
) -> None:
    gap = other.try_hold([(20, 1)], shared=True)
    assert gap is not None
    held = locks.try_hold([(0, 10), (50, 10)], shared=False, cover=True)
    assert held is not None  # granted at once: the cover is only tried
    assert other.try_hold([(5, 1)], shared=False) is None
    assert other.try_hold([(55, 1)], shared=False) is None
    # A blocking hold never waits for the gap either.
    locks.release(held)
    held = locks.hold([(0, 10), (50, 10)], False, None, cover=True)
    assert held is not None
    locks.release(held)
    other.release(gap)


# ----------------------------------------------- one description per call


def _free(other: OsLocks, span: tuple[int, int], shared: bool = False) -> bool:
    """Whether another process could take ``span`` now (taken and let go)."""
    got = other.try_hold([span], shared)
    if got is not None:
        other.release(got)
    return got is not None


def test_the_holds_of_one_call_share_one_description_until_the_last_lets_go(
    locks: OsLocks, other: OsLocks
) -> None:
    # An array write holds every shard it writes at once: 200 holds through
    # one description, not 200 (the process may open only so many files).
    spans = [(k * SLOT_BYTES + 64, 16) for k in range(1, 201)]
    warm = locks.try_hold([(0, 1)], shared=False)  # (the presence's description, opened once)
    assert warm is not None
    locks.release(warm)
    before = locks.held()
    with one_call():
        handles = [locks.try_hold([span], shared=False) for span in spans]
    assert None not in handles and len(set(handles)) == 1
    assert locks.held() <= before + 1
    assert not any(_free(other, span, shared=True) for span in spans)
    # A hold let go before the call's last keeps its span locked (more
    # exclusion, never less) ...
    for handle in handles[:-1]:
        locks.release(handle)
    assert not _free(other, spans[0]) and not _free(other, spans[-1])
    # ... until the last lets go: then nothing is left.
    locks.release(handles[-1])
    assert all(_free(other, span) for span in spans)
    assert locks._own.empty()
    # The control: outside a call, each hold takes a description of its own.
    handles = [locks.try_hold([span], shared=False) for span in spans[:3]]
    assert None not in handles and len(set(handles)) == 3
    for handle in handles:
        locks.release(handle)


def test_a_call_shares_one_description_per_mode(locks: OsLocks, other: OsLocks) -> None:
    base = 9 * SLOT_BYTES
    with one_call():
        r1 = locks.try_hold([(base, 10)], shared=True)
        r2 = locks.try_hold([(base + 20, 10)], shared=True)
        w = locks.try_hold([(base + 40, 10)], shared=False)
    assert r1 is not None and r1 == r2 and w is not None and w != r1
    assert _free(other, (base + 5, 1), shared=True)  # read locks: other readers come in
    assert not _free(other, (base + 5, 1))
    assert not _free(other, (base + 45, 1), shared=True)  # the write lock: not even they
    for handle in (r1, r2, w):
        locks.release(handle)
    assert _free(other, (base, 64))


def test_a_call_request_meeting_a_busy_span_keeps_the_calls_holds(
    locks: OsLocks, other: OsLocks
) -> None:
    # The call's second request finds its second span busy in another
    # process. Undoing it must not drop what the call's description holds
    # for the first request (an unlock of the whole description would).
    base = 11 * SLOT_BYTES
    blocker = other.try_hold([(base + 50, 1)], shared=False)
    assert blocker is not None
    with one_call():
        first = locks.try_hold([(base, 10)], shared=False)
        assert first is not None
        assert locks.try_hold([(base + 20, 10), (base + 50, 10)], shared=False) is None
        assert not _free(other, (base + 5, 1), shared=True)
        # Its span taken before the busy one stays locked until the call's
        # last hold lets go.
        assert not _free(other, (base + 25, 1), shared=True)
        other.release(blocker)
        # Made again, it is granted (through the call's description).
        second = locks.try_hold([(base + 20, 10), (base + 50, 10)], shared=False)
    assert second == first
    locks.release(first)
    assert not _free(other, (base + 5, 1))
    locks.release(second)
    assert _free(other, (base, 64))
    assert locks._own.empty()


def test_another_thread_relies_on_a_calls_description_for_a_span_let_go_early(
    locks: OsLocks, other: OsLocks
) -> None:
    # The lock table lets another thread at a range of the call's that was
    # let go while the call holds others; the call's description still
    # locks it. The thread must not wait for its own process: it relies on
    # the description, which stays locked until the thread lets go.
    base = 13 * SLOT_BYTES
    with one_call():
        early = locks.try_hold([(base, 10)], shared=False)
        late = locks.try_hold([(base + 100, 10)], shared=False)
    assert early is not None and late is not None
    locks.release(early)
    got: list[int | None] = []
    run_within(lambda: got.append(locks.try_hold([(base, 10)], shared=False)), 10, "a hold")
    assert got[0] is not None and got[0] != late
    locks.release(late)  # the call's last: kept for the thread's hold
    assert not _free(other, (base + 5, 1), shared=True)
    locks.release(got[0])
    assert _free(other, (base, 200))
    assert locks._own.empty()


def test_a_timed_hold_gives_up_at_its_deadline(locks: OsLocks, other: OsLocks) -> None:
    import time

    blocker = other.try_hold([(0, 1)], shared=False)
    assert blocker is not None
    assert locks.hold([(0, 1)], False, time.monotonic() + 0.02) is None
    other.release(blocker)
    held = locks.hold([(0, 1)], False, time.monotonic() + 1)
    assert held is not None
    locks.release(held)


@pytest.mark.asyncio
async def test_an_async_wait_does_not_block_the_loop_and_cancels_cleanly(
    locks: OsLocks, other: OsLocks
) -> None:
    blocker = other.try_hold([(0, 1)], shared=False)
    assert blocker is not None
    waiter = asyncio.ensure_future(locks.hold_async([(0, 1)], False, None))
    ticks = 0
    while ticks < 20:  # the loop runs while the waiter polls
        await asyncio.sleep(0)
        ticks += 1
    assert not waiter.done()
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    other.release(blocker)
    again = locks.try_hold([(0, 1)], shared=False)  # the cancelled waiter left nothing held
    assert again is not None
    locks.release(again)


# --------------------------------------------------------------- the lock file


@pytest.fixture
def root(tmp_path: Path) -> Path:
    store = RangeLockedStore(LocalStore(tmp_path / "root"))
    store.set_sync(KEY, B(bytes(SIZE)))
    return tmp_path / "root"


@pytest.mark.asyncio
async def test_the_lock_file_is_not_a_key(root: Path) -> None:
    store = RangeLockedStore(LocalStore(root))
    assert (root / LOCK_FILE_NAME).is_file()
    assert [k async for k in store.list()] == [KEY]
    assert [k async for k in store.list_prefix("")] == [KEY]
    assert [k async for k in store.list_dir("")] == ["c"]
    with pytest.raises(InvalidKeyError, match="reserved"):
        store.set_sync(LOCK_FILE_NAME, B(b"x"))
    with pytest.raises(InvalidKeyError, match="reserved"):
        store.get_sync(LOCK_FILE_NAME)
    await store.delete(KEY)
    assert await store.is_empty("")


@pytest.mark.asyncio
@pytest.mark.parametrize("how", ["clear", "delete_dir"])
async def test_clearing_the_root_keeps_the_lock_file(root: Path, how: str) -> None:
    store = RangeLockedStore(LocalStore(root))
    inode = (root / LOCK_FILE_NAME).stat().st_ino
    if how == "clear":
        await store.clear()
    else:
        await store.delete_dir("")
    assert os.listdir(root) == [LOCK_FILE_NAME]
    assert (root / LOCK_FILE_NAME).stat().st_ino == inode  # the same file, never replaced
    assert await store.is_empty("")


def test_stock_zarr_reads_an_array_and_lists_a_group_beside_the_lock_file(tmp_path: Path) -> None:
    store = RangeLockedStore(LocalStore(tmp_path))
    with zarr.config.set(OURS):
        group = zarr.open_group(store, mode="w")
        arr = group.create_array("a", shape=(64, 64), chunks=(16, 16), shards=(32, 32), dtype="i4")
        arr[:20, :20] = np.arange(400, dtype="i4").reshape(20, 20)
    assert (tmp_path / LOCK_FILE_NAME).is_file()
    with zarr.config.set(STOCK):
        bare = zarr.open_group(LocalStore(tmp_path), mode="r")
        # Stock zarr lists the root group's directory and, finding a file that
        # is no node, says so once and skips it (README: many processes).
        with pytest.warns(UserWarning, match=LOCK_FILE_NAME):
            assert [name for name, _ in bare.members()] == ["a"]
        got = bare["a"][:20, :20]
    np.testing.assert_array_equal(got, np.arange(400, dtype="i4").reshape(20, 20))


def test_a_read_only_store_reads_and_creates_the_lock_file_only_where_it_may(
    tmp_path: Path,
) -> None:
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro" / "k").write_bytes(b"abc")
    (tmp_path / "ro").chmod(0o555)
    try:
        store = RangeLockedStore(LocalStore(tmp_path / "ro", read_only=True))
        got = store.get_sync("k")
        assert got is not None and got.to_bytes() == b"abc"
        if os.geteuid() != 0:  # root may write anywhere
            assert not (tmp_path / "ro" / LOCK_FILE_NAME).exists()
    finally:
        (tmp_path / "ro").chmod(0o755)


# --------------------------------------------------------------- refusals


def test_a_filesystem_that_refuses_locks_raises_and_writes_nothing(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = RangeLockedStore(LocalStore(root))
    real = _oslock.fcntl.fcntl

    def refuse(fd: int, cmd: int, arg: object = 0) -> object:
        if cmd in (_ofd._SETLK, _ofd._SETLKW) and arg != _ofd._UNLOCK_ALL:
            raise OSError(errno.ENOLCK, "No locks available")
        return real(fd, cmd, arg)  # type: ignore[arg-type]  # the real signature

    monkeypatch.setattr(_oslock.fcntl, "fcntl", refuse)
    with pytest.raises(CrossProcessLockError, match="refuses byte-range locks") as info:
        store.set_range_sync(KEY, B(b"\x77" * 4), 0)
    assert info.value.errno == errno.ENOLCK
    assert pickle.loads(pickle.dumps(info.value)).filename == info.value.filename
    with pytest.raises(CrossProcessLockError):
        store.set_sync(KEY, B(b"\x77" * SIZE))
    assert (root / KEY).read_bytes() == bytes(SIZE)
    assert store.lock_manager.stats().holders == 0
    store.lock_manager._check()


def test_without_ofd_locks_a_process_flocks_the_whole_file_while_it_holds_anything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_ofd, "_probe_result", False)
    ours = OsLocks(str(tmp_path), writable=True)
    other = OsLocks(str(tmp_path), writable=True)  # stands in for another process
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert ours.ready() and other.ready()
    assert any(issubclass(w.category, CrossProcessWarning) for w in caught)
    a = ours.try_hold([(0, 1)], shared=False)
    b = ours.try_hold([(0, 1)], shared=True)  # the table orders requests inside a process
    c = ours.try_hold([range_span("k", 0, 8)], shared=False)  # the store's write path
    assert a is not None and b is not None and c is not None
    # Coarse but safe: the other process waits for anything, even a disjoint read.
    assert other.try_hold([(100, 1)], shared=True) is None
    assert other.try_hold([range_span("elsewhere", 0, 1)], shared=False) is None
    ours.release(a)
    ours.release(b)
    assert other.try_hold([(100, 1)], shared=True) is None  # c still holds
    ours.release(c)
    d = other.try_hold([(100, 1)], shared=True)
    assert d is not None
    assert ours.try_hold([(0, 1)], shared=False) is None
    other.release(d)
    for locks in (ours, other):
        locks.close()


def test_without_ofd_locks_nested_requests_of_one_thread_do_not_wait_on_each_other(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_ofd, "_probe_result", False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CrossProcessWarning)
        store = RangeLockedStore(LocalStore(tmp_path))
        store.set_sync("a", B(bytes(8)))
    store.set_sync("b", B(bytes(8)))
    with store.locked_sync("a", [(0, None)], timeout=5) as h:
        store.set_range_sync("b", B(b"\x01" * 8), 0)  # another key, inside the block
        h.set_range(B(b"\x02" * 8), 0)
    assert store.get_sync("a").to_bytes() == b"\x02" * 8  # type: ignore[union-attr]
    assert store.get_sync("b").to_bytes() == b"\x01" * 8  # type: ignore[union-attr]
    assert store.lock_manager.stats().holders == 0


def _lock_file_descriptors(root: Path) -> int:
    """Descriptors (and mappings' duplicates) open on ``root``'s lock file."""
    target = str(root / LOCK_FILE_NAME)
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            count += os.readlink(f"/proc/self/fd/{fd}") == target
    return count


def test_lock_file_descriptors_are_closed_on_close_and_when_the_last_wrapper_goes(
    tmp_path: Path,
) -> None:
    import gc

    def use_and_close() -> None:
        store = RangeLockedStore(LocalStore(tmp_path))
        store.set_sync(KEY, B(bytes(SIZE)))
        with store.locked_sync(KEY, [(0, 1)]), store.locked_sync(KEY, [(1, 2)]):
            # the mapping, the presence, one per held request
            assert _lock_file_descriptors(tmp_path) == 4
        assert _lock_file_descriptors(tmp_path) == 4  # idle descriptions are kept for reuse
        store.close()
        # the mapping and the presence stay while the wrapper lives
        assert _lock_file_descriptors(tmp_path) == 2

    use_and_close()
    gc.collect()
    assert _lock_file_descriptors(tmp_path) == 0


def test_a_pickled_store_keeps_its_cross_process_setting(tmp_path: Path) -> None:
    off = RangeLockedStore(LocalStore(tmp_path / "off"), cross_process=False)
    on = RangeLockedStore(LocalStore(tmp_path / "on"))
    assert pickle.loads(pickle.dumps(off))._cross_process is False
    assert pickle.loads(pickle.dumps(on))._cross_process is True
    assert on.with_read_only(True)._cross_process is True
    assert off.with_read_only(True)._cross_process is False


def test_a_network_filesystem_is_named_in_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_osfile, "filesystem_type", lambda path: "nfs4")
    os_locks = OsLocks(str(tmp_path), writable=True)
    with pytest.warns(CrossProcessWarning, match="nfs4 filesystem.*other machines are not covered"):
        assert os_locks.ready()
    os_locks.close()


def test_the_filesystem_type_comes_from_the_longest_mount_point(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    info = tmp_path / "mountinfo"
    info.write_text(
        "22 27 0:21 / / rw - ext4 /dev/vda rw\n"
        "30 22 0:40 / /mnt/shared\\040data rw,relatime shared:5 - nfs4 srv:/x rw\n"
    )
    real_open = open

    def fake_open(path: str, *args: object, **kwargs: object) -> object:
        return real_open(info if path == "/proc/self/mountinfo" else path, *args, **kwargs)  # type: ignore[call-overload]  # passes through

    monkeypatch.setattr("builtins.open", fake_open)
    assert filesystem_type("/mnt/shared data/a.zarr") == "nfs4"
    assert filesystem_type("/mnt/shared") == "ext4"
    assert filesystem_type("/home/a.zarr") == "ext4"


def _hold_in_forked_child(root: str, held: Any, done: Any) -> None:
    store = RangeLockedStore(LocalStore(root))
    with store.locked_sync(KEY, [(0, 64)]):
        held.set()
        done.wait(30)


@pytest.mark.parametrize("hook", ["at-fork hook", "control: no at-fork hook"])
def test_a_forked_child_never_locks_through_the_parents_descriptions(
    root: Path, hook: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The parent's pool keeps the description of a released lock for reuse. A
    # forked child that took its locks through that same description would
    # share them with the parent: neither would exclude the other (the
    # control shows it, with the hooks that empty the child's pool and put
    # /dev/null under its other descriptions of the lock file disabled).
    import multiprocessing

    if hook.startswith("control"):
        monkeypatch.setattr(OsLocks, "_forget_inherited", lambda self: None)
        monkeypatch.setattr(_osfork, "_deaden_held", lambda lives: None)
    store = RangeLockedStore(LocalStore(root))
    with store.locked_sync(KEY, [(0, 64)]):
        pass  # leaves an idle description in the pool
    assert store._state.os_locks is not None and store._state.os_locks._idle
    ctx = multiprocessing.get_context("fork")
    held, done = ctx.Event(), ctx.Event()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads: none lock here
        child = ctx.Process(target=_hold_in_forked_child, args=(str(root), held, done))
        child.start()
    try:
        assert held.wait(30)
        if hook.startswith("control"):
            with store.locked_sync(KEY, [(0, 64)], timeout=0.05):
                pass  # granted: parent and child lock through one description
        else:
            with pytest.raises(LockTimeout):
                store.locked_sync(KEY, [(0, 64)], timeout=0.05).__enter__()
    finally:
        done.set()
        child.join(30)
    assert child.exitcode == 0


def test_without_ofd_locks_a_forked_child_does_not_share_the_parents_flock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The parent holds the process's flock (its count is 1). A forked child
    # that kept the count and the description would think it held the flock
    # too; it must take its own and find the parent holding it.
    monkeypatch.setattr(_ofd, "_probe_result", False)
    locks = OsLocks(str(tmp_path), writable=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CrossProcessWarning)
        assert locks.ready()
    held = locks.try_hold([(0, 1)], shared=False)
    assert held is not None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads: none lock here
        pid = os.fork()
    if pid == 0:  # the child: exit 0 if the parent's flock excludes it
        os._exit(0 if locks.try_hold([(100, 1)], shared=False) is None else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    locks.release(held)
    locks.close()


_EMFILE_CHILD = textwrap.dedent(
    """
    import contextlib, resource, sys
    from zarr.storage import LocalStore
    from zarr_rangelock import DescriptorLimitError, RangeLockedStore
    store = RangeLockedStore(LocalStore(sys.argv[1]))
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
    with contextlib.ExitStack() as stack:
        try:
            for i in range(200):  # each held request holds a description of the lock file
                stack.enter_context(store.locked_sync("k", [(i, i + 1)]))
        except DescriptorLimitError as e:  # nothing idle to drop: all are held
            print("refused", i, e.errno, store.lock_manager.stats().holders, e.held, flush=True)
    store.lock_manager._check()
    print("left", store.lock_manager.stats().holders)
    """
)


def test_running_out_of_descriptors_refuses_the_next_lock_cleanly(tmp_path: Path) -> None:
    # Every held request holds a description of the lock file, so a process
    # holding more locks at once than it may open files gets a clear error for
    # the next one, which then holds nothing (README: many processes).
    done = subprocess.run(
        [sys.executable, "-c", _EMFILE_CHILD, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    refused, left = done.stdout.splitlines()
    _, i, err, holders, held = refused.split()
    assert int(err) == errno.EMFILE and 0 < int(i) < 64 and int(holders) == int(i)
    # the error counts the descriptions the held locks use, the presence and
    # (Python 3.12) the stamps' mapping's duplicate
    assert int(held) == int(i) + 1 + (sys.version_info < (3, 13))
    assert left == "left 0"


_DELETE_CHILD = textwrap.dedent(
    """
    import sys
    from zarr.storage import LocalStore
    from zarr_rangelock import RangeLockedStore
    RangeLockedStore(LocalStore(sys.argv[1]), cross_process=sys.argv[3] == "1").delete_sync(
        sys.argv[2]
    )
    """
)


@pytest.mark.parametrize("cross_process", [True, False], ids=["stamps", "control: no stamps"])
def test_a_shard_deleted_by_another_process_is_not_written_through_a_cached_index(
    tmp_path: Path, cross_process: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The pipeline remembers a dense shard's validated index while the
    # shard's change token stays the same (README: "Caches"). Another process
    # deletes the shard; the next chunk write must see the change and lay the
    # shard out again. Without the shared stamps (the control) it trusts the
    # cached index and the write is lost or fails.
    monkeypatch.setattr(_backends, "_monotonic", lambda: 0.0)  # no 10 ms path re-check
    store = RangeLockedStore(LocalStore(tmp_path), cross_process=cross_process)
    with zarr.config.set(OURS):
        arr = zarr.create_array(
            store, shape=(32, 32), chunks=(8, 8), shards=(32, 32), dtype="i4", compressors=None
        )
        arr[:8, :] = 1  # 4 of 16 chunks hold data: the shard is laid out densely
        arr[8:16, 8:16] = 2  # an in-place write: the index is now cached as valid
        subprocess.run(
            [sys.executable, "-c", _DELETE_CHILD, str(tmp_path), "c/0/0", str(int(cross_process))],
            check=True,
            timeout=60,
        )
        try:
            arr[8:16, :8] = 3
            lost = False
        except KeyError:  # the cached index pointed into a file that is gone
            lost = True
    with zarr.config.set(STOCK):
        got = zarr.open_array(LocalStore(tmp_path), mode="r")[:16, :16]
    lost = lost or not (got[8:16, :8] == 3).all()
    if cross_process:
        assert not lost
        assert (got[:8, :16] == 0).all()  # the delete took the earlier chunks with it
        assert (got[8:16, 8:16] == 0).all()
    else:
        assert lost


@pytest.mark.timeout(60)
def test_a_store_alive_at_interpreter_shutdown_closes_without_an_ignored_exception(
    tmp_path: Path,
) -> None:
    # json's module dict is cleared after _oslock's, so the store (kept on
    # json) is finalised when _oslock's globals are already None; the
    # finaliser used contextlib then and printed "Exception ignored in".
    script = (
        "import json\n"
        "from zarr.storage import LocalStore\n"
        "from zarr_rangelock import RangeLockedStore\n"
        f"json.keep = RangeLockedStore(LocalStore({str(tmp_path)!r}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=50, check=True
    )
    assert "Exception ignored" not in done.stderr, done.stderr
