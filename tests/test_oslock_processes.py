"""Cross-process locks (``locks/_oslock``) between real processes: a child
Python holds locks through its own ``RangeLockedStore`` and reports over a
pipe, so every "it waits" below is ordered by the child's messages, never by
sleeping. Each exclusion test has a control in this module with
``cross_process=False`` on both sides, where the same request is granted at
once: the exclusion comes from the OS locks.

(Split from ``test_oslock.py``, which keeps the mapping, the descriptions of
one process, the lock file and the refusals.)
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import textwrap
import threading
import warnings
from pathlib import Path

import pytest
import zarr
from zarr.core.buffer import cpu
from zarr.storage import LocalStore

from tests._fds import files_opened
from tests._processes import (
    colliding_keys,
    present_in_another_process,
    try_in_another_process,
)
from tests._shard_helpers import OURS, STOCK
from tests._threads import run_within, wait_until
from zarr_rangelock import (
    CrossProcessWarning,
    LockTimeout,
    RangeLockedStore,
    WouldBlock,
)
from zarr_rangelock.locks._grant import AtOnce
from zarr_rangelock.locks._lockfile import key_slot
from zarr_rangelock.locks._oslock import ELIDED
from zarr_rangelock.locks._own import one_call
from zarr_rangelock.store import _backends

pytestmark = pytest.mark.timeout(60)

KEY = "c/0/0"
SIZE = 4096


def B(data: bytes) -> cpu.Buffer:
    return cpu.Buffer.from_bytes(data)


# ---------------------------------------------------------- other processes

_CHILD = textwrap.dedent(
    """
    import sys
    from zarr.storage import LocalStore
    from zarr_rangelock import RangeLockedStore
    root, key, start, end, shared, cross = sys.argv[1:7]
    store = RangeLockedStore(LocalStore(root), cross_process=cross == "1")
    with store.locked_sync(key, [(int(start), None if end == "-" else int(end))],
                           shared=shared == "1"):
        print("held", flush=True)
        sys.stdin.readline()
    print("released", flush=True)
    """
)


class Child:
    """A process holding ``[start, end)`` of a key until told to let go."""

    def __init__(
        self,
        root: Path,
        key: str,
        start: int,
        end: int | None,
        *,
        shared: bool = False,
        cross_process: bool = True,
    ) -> None:
        args = [str(root), key, str(start), "-" if end is None else str(end)]
        args += ["1" if shared else "0", "1" if cross_process else "0"]
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _CHILD, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line == "held\n", line

    def release(self) -> None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline() == "released\n"
        assert self.proc.wait(timeout=30) == 0


@pytest.fixture
def root(tmp_path: Path) -> Path:
    store = RangeLockedStore(LocalStore(tmp_path / "root"))
    store.set_sync(KEY, B(bytes(SIZE)))
    return tmp_path / "root"


def test_os_waits_counts_a_wait_for_a_shared_hold_of_the_process_itself(root: Path) -> None:
    # os_waits counts waits at the OS level, which are not only for other
    # processes: a shared hold let go in the table stays locked until its
    # call's last hold lets go (one description per call, _own), and an
    # exclusive request of the same process, granted by the table, waits
    # for it there as for another process's reader.
    store = RangeLockedStore(LocalStore(root))
    mgr = store.lock_manager
    with one_call():
        first = mgr.acquire(KEY, [(0, 64)], shared=True)
        last = mgr.acquire(KEY, [(128, 192)], shared=True)
    mgr.release(first)
    with pytest.raises(LockTimeout):
        store.locked_sync(KEY, [(0, 64)], timeout=0.05).__enter__()
    stats = mgr.stats()
    assert stats.os_waits == 1 and stats.os_wait_s >= 0.04
    assert stats.waits == 0  # the table granted it at once
    mgr.release(last)
    with store.locked_sync(KEY, [(0, 64)], timeout=5):  # the call's holds gone: granted
        pass
    assert mgr.stats().os_waits == 1


def test_a_range_held_in_another_process_excludes_overlapping_requests(root: Path) -> None:
    store = RangeLockedStore(LocalStore(root))
    child = Child(root, KEY, 0, 64)
    try:
        with pytest.raises(LockTimeout):
            store.locked_sync(KEY, [(32, 96)], timeout=0.05).__enter__()
        with pytest.raises(WouldBlock):
            store.lock_manager.acquire_nowait(KEY, [(0, 1)])
        with store.locked_sync(KEY, [(64, 128)], timeout=5):  # disjoint: granted
            pass
        stats = store.lock_manager.stats()
        assert stats.holders == 0  # the timed-out request left nothing
        assert stats.os_waits == 1 and stats.os_wait_s >= 0.04  # the one that waited
        assert stats.waits == 0  # nothing waited inside the process
        store.lock_manager._check()
    finally:
        child.release()
    with store.locked_sync(KEY, [(32, 96)], timeout=5):
        pass


def test_a_shard_writer_group_lock_covers_its_gaps_only_when_they_are_free(root: Path) -> None:
    # ShardWriter's group of chunks (``_lock_runs``) is one OS span while the
    # gaps are free: another process's request in a gap waits (here: is
    # refused at once). This process's own requests there rely on the span
    # (the lock table orders them), and keep it held while they run.
    store = RangeLockedStore(LocalStore(root))
    mgr = store.lock_manager
    runs = [(0, 64), (128, 192)]
    with mgr._lock_runs(KEY, runs):
        assert try_in_another_process(root, KEY, 96, 100) == "busy"
        mgr.release(mgr.acquire_nowait(KEY, [(96, 100)]))  # its own: at once
        mgr.release(mgr.acquire_nowait(KEY, [(192, 256)]))  # past the last run
    with mgr.lock_ranges(KEY, runs):  # the control: exact ranges leave the gap free
        assert try_in_another_process(root, KEY, 96, 100) == "granted"
    # A gap held by another process: the group takes its runs one by one,
    # at once (the covering span is never waited for).
    child = Child(root, KEY, 96, 100, shared=True)
    try:
        with AtOnce(mgr._lock_runs(KEY, runs)):
            pass
        with mgr._lock_runs(KEY, runs):
            pass
        assert mgr.stats().os_waits == 0
    finally:
        child.release()


def test_a_thread_holding_a_key_takes_a_colliding_key_without_a_timeout(root: Path) -> None:
    # Nested blocks of two colliding keys in one thread, the inner one
    # without a timeout: its wait would be in the kernel, for the outer
    # block's own lock, forever; it relies on it instead, and another
    # process stays out of both until the outer block ends.
    first, second = colliding_keys("k")
    store = RangeLockedStore(LocalStore(root))
    for key in (first, second):
        store.set_sync(key, cpu.Buffer.from_bytes(bytes(64)))

    def nested() -> None:
        with store.locked_sync(first, [(0, None)]):
            with store.locked_sync(second, [(0, 8)]):
                assert try_in_another_process(root, second, 0, 8) == "busy"
            assert try_in_another_process(root, second, 0, 8) == "busy"  # the outer block's

    run_within(nested, 30, "the nested blocks (the inner one waiting for the outer one?)")
    assert try_in_another_process(root, second, 0, 8) == "granted"


@pytest.mark.parametrize("durability", ["none", "journal-nosync"])
def test_a_write_over_shards_whose_keys_collide_in_the_lock_file_does_not_wait_for_itself(
    root: Path, durability: str
) -> None:
    # One array write holds all its shards at once (one lock each, whole
    # key here: a scalar over a fresh array). 1,024 shard keys c/i/j share
    # slots of the lock file (CRC-32 of structured names collides far more
    # often than chance); before a process relied on its own holds, the
    # write waited for itself at the OS level, gave up after HOLD_AND_WAIT_S,
    # started over and did so forever.
    keys = [f"c/{i}/{j}" for i in range(32) for j in range(32)]
    assert len({key_slot(k) for k in keys}) < len(keys)  # the premise: collisions
    store = RangeLockedStore(LocalStore(root), durability=durability)  # type: ignore[arg-type]
    with zarr.config.set(OURS):
        arr = zarr.create_array(
            store, shape=(2048, 2048), chunks=(32, 32), shards=(64, 64), dtype="f4",
            compressors=None, fill_value=0,
        )  # fmt: skip

    def write() -> None:
        arr[...] = 1.0

    run_within(write, 40, f"the write over {len(keys)} shards", store.lock_manager.stats)
    with zarr.config.set(STOCK):
        assert (zarr.open_array(LocalStore(root), mode="r")[::97, ::89] == 1.0).all()


def test_control_without_cross_process_locks_the_other_process_is_not_seen(root: Path) -> None:
    store = RangeLockedStore(LocalStore(root), cross_process=False)
    child = Child(root, KEY, 0, 64, cross_process=False)
    try:
        with store.locked_sync(KEY, [(32, 96)], timeout=0.05):
            pass  # granted at once: nothing excludes the other process
    finally:
        child.release()


@pytest.mark.parametrize("wrappers", ["off, then on", "on, then off", "control: off alone"])
def test_wrappers_of_one_root_share_one_cross_process_setting_on_if_any_asked_for_it(
    tmp_path: Path, wrappers: str
) -> None:
    """A ``cross_process=False`` wrapper of a root that another wrapper of
    the process locks across processes (made before it or after) holds OS
    locks too: its hold is busy for another process. The control: with no
    other wrapper of the root, it is not."""
    root = tmp_path / "root"
    on: list[RangeLockedStore] = []
    if wrappers == "on, then off":
        on.append(RangeLockedStore(LocalStore(root)))
    off = RangeLockedStore(LocalStore(root), cross_process=False)
    if wrappers == "off, then on":
        on.append(RangeLockedStore(LocalStore(root)))
    off.set_sync(KEY, B(bytes(SIZE)))
    with off.locked_sync(KEY, [(0, 64)]):
        seen = try_in_another_process(root, KEY, 0, 64)
    assert seen == ("granted" if wrappers.startswith("control") else "busy")
    assert try_in_another_process(root, KEY, 0, 64) == "granted"  # let go: free
    assert len(on) == (0 if wrappers.startswith("control") else 1)  # alive until here


def test_a_root_and_a_directory_under_it_are_two_roots_that_exclude_nothing(
    root: Path, tmp_path: Path
) -> None:
    # The README's "the same root, not a directory above or below it": a
    # group's root and its array's directory have a lock file (and, in a
    # process, a lock table) each, so writers through the two are not
    # excluded from each other (a bug hunt lost chunks this way). A store
    # whose root is below a locked one warns when it opens its lock file.
    (root / "v").mkdir(parents=True)
    outer = RangeLockedStore(LocalStore(root))
    inner = RangeLockedStore(LocalStore(root / "v"))
    outer.set_sync("v/c/0", cpu.Buffer.from_bytes(bytes(64)))
    child = Child(root / "v", "c/0", 0, 64)  # another process, through the inner root
    try:
        with outer.locked_sync("v/c/0", [(0, 64)], timeout=0.05):  # the same bytes: granted
            pass
    finally:
        child.release()
    # in one process, too; the inner root's lock file, opened here, warns
    with (
        pytest.warns(CrossProcessWarning, match=r"is inside .* a locked root too"),
        outer.locked_sync("v/c/0", [(0, 64)], timeout=0.05),
        inner.locked_sync("c/0", [(0, 64)], timeout=0.05),
    ):
        pass
    assert (root / ".zarr-rangelock").is_file() and (root / "v" / ".zarr-rangelock").is_file()
    # the other way round is not looked for: a root above one locked already
    first = RangeLockedStore(LocalStore(tmp_path / "w" / "x"))
    first.set_sync("k", cpu.Buffer.from_bytes(b"v"))
    with warnings.catch_warnings():
        warnings.simplefilter("error", CrossProcessWarning)
        RangeLockedStore(LocalStore(tmp_path / "w")).set_sync("k", cpu.Buffer.from_bytes(b"v"))


def test_a_whole_value_set_waits_for_a_reader_in_another_process(root: Path) -> None:
    store = RangeLockedStore(LocalStore(root))
    child = Child(root, KEY, 0, None, shared=True)
    try:
        with pytest.raises(LockTimeout):
            store.locked_sync(KEY, [(0, None)], timeout=0.05).__enter__()
        assert store.get_sync(KEY) is not None  # readers share
    finally:
        child.release()
    store.set_sync(KEY, B(b"\x01" * SIZE))


def test_a_prefix_lock_waits_for_any_key_held_in_another_process(root: Path) -> None:
    store = RangeLockedStore(LocalStore(root))
    child = Child(root, "other/key", 0, 1)
    try:
        with pytest.raises(LockTimeout):
            store.lock_manager.acquire_prefix("c/", timeout=0.05)
    finally:
        child.release()
    store.lock_manager.release(store.lock_manager.acquire_prefix("c/", timeout=5))


def test_requests_of_one_process_stay_fifo_while_another_process_holds_the_range(
    root: Path,
) -> None:
    # The first request is granted in the process and then waits for the OS
    # lock; the second queues behind it in the process, so it cannot overtake
    # it when the other process lets go.
    store = RangeLockedStore(LocalStore(root))
    mgr = store.lock_manager
    child = Child(root, KEY, 0, 64)
    order: list[str] = []

    def take(name: str) -> None:
        with store.locked_sync(KEY, [(0, 8)]):
            order.append(name)

    first = threading.Thread(target=take, args=("first",))
    second = threading.Thread(target=take, args=("second",))
    try:
        first.start()
        wait_until(lambda: mgr.stats().holders == 1, "the first request holds in the process")
        second.start()
        wait_until(lambda: mgr.stats().waiters == 1, "the second request queues behind it")
        assert order == []  # both wait for the other process
    finally:
        child.release()
        first.join(timeout=30)
        second.join(timeout=30)
    assert not first.is_alive() and not second.is_alive()
    assert order == ["first", "second"]
    mgr._check()


@pytest.mark.asyncio
async def test_an_async_request_waits_for_another_process_without_blocking_the_loop(
    root: Path,
) -> None:
    store = RangeLockedStore(LocalStore(root))
    child = Child(root, KEY, 0, 64)
    ticks = 0
    stop = asyncio.Event()

    async def tick() -> None:
        nonlocal ticks
        while not stop.is_set():
            ticks += 1
            await asyncio.sleep(0)

    ticker = asyncio.ensure_future(tick())
    try:
        with pytest.raises(LockTimeout):
            async with store.locked(KEY, [(0, 8)], timeout=0.05):
                pass
        assert ticks > 10  # the loop kept running while we waited
        assert store.lock_manager.stats().holders == 0
    finally:
        stop.set()
        await ticker
        child.release()


def _replace_in_another_process(root: Path) -> None:
    """Another process replaces ``KEY`` (all 0x55) through its own wrapper."""
    code = (
        "import sys; from zarr.storage import LocalStore; from zarr.core.buffer import cpu; "
        "from zarr_rangelock import RangeLockedStore; "
        f"RangeLockedStore(LocalStore(sys.argv[1])).set_sync({KEY!r}, "
        f"cpu.Buffer.from_bytes(b'\\x55' * {SIZE}))"
    )
    subprocess.run([sys.executable, "-c", code, str(root)], check=True, timeout=60)


def test_a_replace_by_another_process_is_seen_by_the_descriptor_cache_at_once(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Freeze the descriptor cache's clock: its 10 ms path re-check (FD_REVALIDATE_S) never runs,
    # so only the cross-process stamp can tell that the file was replaced.
    monkeypatch.setattr(_backends, "_monotonic", lambda: 0.0)
    store = RangeLockedStore(LocalStore(root))
    store.set_range_sync(KEY, B(b"\x11" * 4), 0)  # caches a descriptor of the file
    _replace_in_another_process(root)
    store.set_range_sync(KEY, B(b"\x22" * 4), 8)
    data = (root / KEY).read_bytes()
    assert data[:8] == b"\x55" * 8 and data[8:12] == b"\x22" * 4  # went into the new file


def test_an_in_place_bump_keeps_the_cached_descriptor_of_the_same_file(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``Backend.bump`` (an index re-pointed in place: a new stamp, the same
    file) moves the current descriptor to the new stamp, so the next write
    does not reopen the file (each append of a compressed chunk did)."""
    monkeypatch.setattr(_backends, "_monotonic", lambda: 0.0)
    store = RangeLockedStore(LocalStore(root))
    store.set_range_sync(KEY, B(b"\x11" * 4), 0)  # caches a descriptor of the file
    opened = files_opened(monkeypatch)
    for i in range(3):
        with store._mgr.lock(KEY):
            store._backend.set_range(KEY, memoryview(b"\x22" * 4), 4 * i)
            store._backend.bump(KEY)
    assert opened == []
    assert (root / KEY).read_bytes()[:12] == b"\x22" * 12


def test_an_in_place_bump_does_not_revive_a_descriptor_of_a_replaced_file(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A descriptor whose stamp is not the key's current one may name a file
    another process replaced: a bump leaves it stale, and the next write goes
    into the file the path names."""
    monkeypatch.setattr(_backends, "_monotonic", lambda: 0.0)
    store = RangeLockedStore(LocalStore(root))
    store.set_range_sync(KEY, B(b"\x11" * 4), 0)  # cached under the current stamp
    _replace_in_another_process(root)
    with store._mgr.lock(KEY):
        store._backend.bump(KEY)  # no write in between: the entry is still stale
    store.set_range_sync(KEY, B(b"\x22" * 4), 8)
    data = (root / KEY).read_bytes()
    assert data[:8] == b"\x55" * 8 and data[8:12] == b"\x22" * 4  # went into the new file


def test_control_without_stamps_a_cached_descriptor_writes_into_the_replaced_file(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_backends, "_monotonic", lambda: 0.0)
    store = RangeLockedStore(LocalStore(root), cross_process=False)
    store.set_range_sync(KEY, B(b"\x11" * 4), 0)
    LocalStore(root).set_sync(KEY, B(b"\x55" * SIZE))  # replaced behind the cache's back
    store.set_range_sync(KEY, B(b"\x22" * 4), 8)
    assert (root / KEY).read_bytes()[8:12] == b"\x55" * 4  # the write went to the old file


def _try_in_another_process(root: Path, start: int, end: int) -> str:
    """Whether another process gets ``[start, end)`` of the key within 50 ms."""
    return try_in_another_process(root, KEY, start, end)


def test_another_process_waits_for_a_shard_writer_groups_gap(root: Path) -> None:
    # The README's exception to "the OS lock only waits for other
    # processes' ranges": a chunk between a ShardWriter group's chunks,
    # asked for by another process, waits for the group. The control: the
    # same ranges taken exactly leave the gap to the other process.
    store = RangeLockedStore(LocalStore(root))
    mgr = store.lock_manager
    runs = [(0, 64), (128, 192)]
    with mgr._lock_runs(KEY, runs):
        assert _try_in_another_process(root, 96, 100) == "busy"
        assert _try_in_another_process(root, 192, 256) == "granted"  # past the last run
    with mgr.lock_ranges(KEY, runs):
        assert _try_in_another_process(root, 96, 100) == "granted"


@pytest.mark.parametrize("alone", [True, False], ids=["alone", "another process present"])
def test_a_token_hold_takes_its_range_from_other_processes_and_gives_it_back(
    root: Path, alone: bool
) -> None:
    # The token fast path (the store's set_range, a ShardWriter's write of
    # one chunk in place) holds its range from other processes too: with
    # another process present, as an OS lock of the range (a range next to
    # it stays free); alone, with no OS lock, and a process arriving waits
    # (for any range) until the hold is let go. Either way the range is
    # busy for another process until then and free after.
    store = RangeLockedStore(LocalStore(root))
    mgr = store.lock_manager
    os_locks = store._state.os_locks
    assert os_locks is not None
    with contextlib.ExitStack() as stack:
        if not alone:
            stack.enter_context(present_in_another_process(root))
        hold = mgr._hold_if_free(KEY, 64, 128)
        assert hold is not None and (hold[1] == ELIDED) is alone
        try:
            assert _try_in_another_process(root, 100, 110) == "busy"
            assert _try_in_another_process(root, 0, 64) == ("busy" if alone else "granted")
        finally:
            mgr._let_go(KEY, hold)
        assert _try_in_another_process(root, 100, 110) == "granted"
        assert not os_locks.alone()  # another process came: no longer alone
        # A range another process holds is refused at once, nothing left held;
        # a disjoint one is taken.
        child = Child(root, KEY, 96, 100)
        try:
            assert mgr._hold_if_free(KEY, 64, 128) is None
            assert mgr.stats().holders == 0
            hold = mgr._hold_if_free(KEY, 0, 64)
            assert hold is not None and hold[1] != ELIDED
            mgr._let_go(KEY, hold)
        finally:
            child.release()
    assert mgr.stats().holders == 0
    mgr._check()
