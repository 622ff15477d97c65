"""LocalStore ``set_range`` through cached file descriptors: the file the path names.

The wrapper keeps a small per-root cache of open descriptors (see the design
note in ``_backends``). These tests pin down what makes that safe: a write
goes into the file the path names even after the file was replaced or deleted
behind the wrapper's back, once the descriptor's re-check is due (at most
``FD_REVALIDATE_S`` after the last one: the tests move a fake clock, and one
test shows the window itself); the cache is bounded,
``O_CLOEXEC``, emptied by the wrapper's own whole-key and prefix operations,
by ``close()`` and by the last wrapper going away; and a descriptor is never
closed under a write that is using it. Threads are ordered with events, never
with sleeps.
"""

from __future__ import annotations

import asyncio
import gc
import os
import random
import sys
import threading
from pathlib import Path

import pytest
from zarr.core.buffer import cpu
from zarr.storage import LocalStore

from tests._fds import FakeClock, cached, fake_clock, files_opened, open_fds
from tests._threads import run_together
from zarr_rangelock import RangeLockedStore, Span
from zarr_rangelock._errors import KeyNotFoundError, RangeOutOfBoundsError
from zarr_rangelock.locks import _fdbudget
from zarr_rangelock.locks._lockfile import LOCK_FILE_NAME
from zarr_rangelock.store import _backends
from zarr_rangelock.store._backends import FD_CACHE_SIZE, FD_REVALIDATE_S, unlocked_set_range_sync

pytestmark = [
    pytest.mark.skipif(
        not sys.platform.startswith("linux"), reason="counts descriptors in /proc/self/fd"
    ),
    pytest.mark.timeout(60),
]

B = cpu.Buffer.from_bytes
KEY = "arr/c/0"
SIZE = 64


@pytest.fixture(autouse=True)
def _collect_earlier_garbage() -> None:
    """Collect earlier tests' garbage first: event loops of ShardWriter
    threads hold descriptors until collected, and a collection during a
    test that counts descriptors would close them under its count (it
    failed once so, run after the ShardWriter batch tests)."""
    gc.collect()


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    return fake_clock(monkeypatch)


@pytest.fixture
def store(tmp_path: Path) -> RangeLockedStore:
    s = RangeLockedStore(LocalStore(tmp_path / "root"))
    s.set_sync(KEY, B(bytes(SIZE)))
    return s


def root(store: RangeLockedStore) -> Path:
    inner = store._store
    assert isinstance(inner, LocalStore)
    return inner.root


def on_disk(store: RangeLockedStore, key: str = KEY) -> bytes:
    return (root(store) / key).read_bytes()


def test_a_set_range_after_the_file_was_replaced_behind_our_back_writes_the_new_file(
    store: RangeLockedStore, clock: FakeClock
) -> None:
    store.set_range_sync(KEY, B(b"\x11" * 4), 0)  # caches a descriptor of the first file
    (old_entry,) = cached(store).values()
    # The bare store replaces the file by renaming a new one over it: the
    # cached descriptor now names a file no path leads to.
    store._store.set_sync(KEY, B(b"\x55" * SIZE))
    clock.advance_past_the_recheck()
    store.set_range_sync(KEY, B(b"\xee" * 4), 8)
    assert on_disk(store) == b"\x55" * 8 + b"\xee" * 4 + b"\x55" * (SIZE - 12)
    (new_entry,) = cached(store).values()
    assert new_entry is not old_entry
    assert new_entry.ino == (root(store) / KEY).stat().st_ino


@pytest.mark.asyncio
async def test_an_async_set_range_after_a_replace_behind_our_back_writes_the_new_file(
    store: RangeLockedStore, clock: FakeClock
) -> None:
    await store.set_range(KEY, B(b"\x11" * 4), 0)
    await store._store.set(KEY, B(b"\x55" * SIZE))
    clock.advance_past_the_recheck()
    await store.set_range(KEY, B(b"\xee" * 4), 8)
    assert on_disk(store) == b"\x55" * 8 + b"\xee" * 4 + b"\x55" * (SIZE - 12)


def test_the_size_check_uses_the_replacing_file(store: RangeLockedStore, clock: FakeClock) -> None:
    store.set_range_sync(KEY, B(b"\x11"), SIZE - 1)  # fits the first file
    store._store.set_sync(KEY, B(bytes(8)))  # a shorter file replaces it
    clock.advance_past_the_recheck()
    with pytest.raises(RangeOutOfBoundsError):
        store.set_range_sync(KEY, B(b"\x11"), SIZE - 1)
    assert on_disk(store) == bytes(8)


def test_a_file_deleted_behind_our_back_is_missing_and_its_descriptor_is_closed(
    store: RangeLockedStore, clock: FakeClock
) -> None:
    gc.collect()  # earlier tests' stores closing their files meanwhile
    before = open_fds()
    store.set_range_sync(KEY, B(b"\x11"), 0)
    assert open_fds() == before + 1
    (root(store) / KEY).unlink()
    clock.advance_past_the_recheck()
    with pytest.raises(KeyNotFoundError):
        store.set_range_sync(KEY, B(b"\x11"), 0)
    assert not (root(store) / KEY).exists()  # nothing was created
    assert cached(store) == {}
    assert open_fds() == before


def test_within_the_recheck_window_a_write_may_still_go_to_the_replaced_file(
    store: RangeLockedStore, clock: FakeClock
) -> None:
    # The price of one syscall per write, pinned down: a write that starts
    # less than FD_REVALIDATE_S after the last check trusts it, so right
    # after an outside replace it can land in the old file, as it could had
    # it started a moment earlier. The first write after the window goes into
    # the new file. The wrapper's own set has no window at all.
    store.set_range_sync(KEY, B(b"\x11"), 0)
    store._store.set_sync(KEY, B(b"\x55" * SIZE))
    clock.now += FD_REVALIDATE_S / 2
    store.set_range_sync(KEY, B(b"\xee"), 1)
    assert on_disk(store) == b"\x55" * SIZE  # into the old, unlinked file
    clock.advance_past_the_recheck()
    store.set_range_sync(KEY, B(b"\xee"), 2)
    assert on_disk(store)[:4] == b"\x55\x55\xee\x55"
    store.set_sync(KEY, B(bytes(SIZE)))
    store.set_range_sync(KEY, B(b"\xee"), 3)  # same instant: no window after our own set
    assert on_disk(store)[:4] == b"\x00\x00\x00\xee"


def test_cached_descriptors_are_close_on_exec(store: RangeLockedStore) -> None:
    store.set_range_sync(KEY, B(b"\x11"), 0)
    (entry,) = cached(store).values()
    assert not os.get_inheritable(entry.fd)


def _bound() -> int:
    """How many descriptors one root may keep here: its own cap, or the
    process's budget (an eighth of the soft limit) if that is lower."""
    return min(FD_CACHE_SIZE, _fdbudget.cache_budget())


def test_the_cache_is_bounded_and_close_empties_it(store: RangeLockedStore) -> None:
    bound = _bound()
    keys = [f"arr/c/{i}" for i in range(2 * bound + 3)]
    for key in keys:
        store.set_sync(key, B(bytes(SIZE)))
    store.set_range_sync(KEY, B(b"\x00"), 0)
    store._state.fds.close()
    gc.collect()  # earlier tests' stores closing their files meanwhile
    before = open_fds()
    for key in keys:
        store.set_range_sync(key, B(b"\x42"), 1)
    assert len(cached(store)) == bound
    assert open_fds() == before + bound
    assert all(on_disk(store, key)[1] == 0x42 for key in keys)  # evicted ones were written too
    store.close()
    assert cached(store) == {}
    assert open_fds() == before


def test_leaving_a_with_block_closes_the_cached_descriptors(tmp_path: Path) -> None:
    gc.collect()  # earlier tests' stores closing their files meanwhile
    before = open_fds()
    with RangeLockedStore(LocalStore(tmp_path / "root")) as s:
        s.set_sync(KEY, B(bytes(SIZE)))
        s.set_range_sync(KEY, B(b"\x11"), 0)
        assert open_fds() == before + 1
    assert open_fds() == before


def test_descriptors_are_closed_when_the_last_wrapper_goes_away(tmp_path: Path) -> None:
    # Counted by name: a thread left by an earlier test may open and close
    # descriptors of its own meanwhile (seen once: two, gone a moment later).
    root = tmp_path / "root"

    def values_open() -> int:
        return sum(1 for fd in os.listdir("/proc/self/fd") if _names_value_in(fd, root))

    def write_through_a_temporary_wrapper() -> None:
        s = RangeLockedStore(LocalStore(root))
        for i in range(5):
            s.set_sync(f"k{i}", B(bytes(SIZE)))
            s.set_range_sync(f"k{i}", B(b"\x11"), 0)
        assert values_open() == 5

    write_through_a_temporary_wrapper()
    gc.collect()
    assert values_open() == 0


def _names_value_in(fd: str, root: Path) -> bool:
    try:
        target = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return False  # closed meanwhile (the listing's own descriptor)
    return target.startswith(f"{root}/") and not target.endswith("/" + LOCK_FILE_NAME)


@pytest.mark.asyncio
async def test_whole_key_and_prefix_operations_drop_the_descriptors_they_make_stale(
    store: RangeLockedStore,
) -> None:
    gc.collect()  # earlier tests' stores closing their files meanwhile
    before = open_fds()
    path = f"{root(store)}/{KEY}"

    async def write() -> None:
        await store.set_range(KEY, B(b"\x11"), 0)
        assert path in cached(store)

    def dropped() -> bool:
        return path not in cached(store) and open_fds() == before

    await write()
    await store.set(KEY, B(bytes(SIZE)))
    assert dropped()
    await write()
    store.set_sync(KEY, B(bytes(SIZE)))
    assert dropped()
    await write()
    await store.set_if_not_exists(KEY, B(bytes(SIZE)))
    assert dropped()
    await write()
    await store.delete(KEY)
    assert dropped()
    store.set_sync(KEY, B(bytes(SIZE)))
    await write()
    store.delete_sync(KEY)
    assert dropped()
    store.set_sync(KEY, B(bytes(SIZE)))
    await write()
    await store.delete("arr/c")  # a directory: deletes everything under it
    assert dropped()
    assert not await store.exists(KEY)
    store.set_sync(KEY, B(bytes(SIZE)))
    await write()
    store.delete_sync("arr/c")  # the same through the sync API
    assert dropped()
    assert not await store.exists(KEY)
    store.set_sync(KEY, B(bytes(SIZE)))
    await write()
    await store.delete_dir("arr")
    assert dropped()
    store.set_sync(KEY, B(bytes(SIZE)))
    await write()
    await store.clear()
    assert dropped()
    store.set_sync(KEY, B(bytes(SIZE)))
    await write()
    async with store.locked(KEY, [(0, None)]) as h:
        await h.set(B(bytes(SIZE)))
    assert dropped()
    await write()
    with store.locked_sync(KEY, [(0, None)]) as hs:
        hs.delete()
    assert dropped()


def test_a_descriptor_in_use_is_closed_only_after_its_write(
    store: RangeLockedStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The writer caches a descriptor, then pauses inside its second write
    # while another thread flushes the cache (as close() or an eviction
    # would). The descriptor must survive until the write is done: the write
    # lands, and only then is the descriptor closed.
    store.set_range_sync(KEY, B(b"\x00"), 0)
    (entry,) = cached(store).values()
    gc.collect()  # earlier tests' stores closing their files meanwhile
    before = open_fds()
    writing = threading.Event()
    flushed = threading.Event()
    original = _backends._write_range

    def paused_write(target: int | memoryview, data: memoryview, start: int) -> None:
        writing.set()
        assert flushed.wait(10)
        os.fstat(target)  # type: ignore[arg-type]  # still open
        original(target, data, start)

    def writer() -> None:
        store.set_range_sync(KEY, B(b"\x77" * 4), 4)

    with monkeypatch.context() as m:
        m.setattr(_backends, "_write_range", paused_write)
        t = threading.Thread(target=writer)
        t.start()
        assert writing.wait(10)
        store._state.fds.close()
        assert cached(store) == {} and entry.dead
        assert open_fds() == before  # not closed yet: the write is using it
        flushed.set()
        t.join(10)
        assert not t.is_alive()
    assert on_disk(store)[4:8] == b"\x77" * 4
    assert open_fds() == before - 1


def test_one_root_keeps_as_many_descriptors_as_the_process_budget_allows(
    store: RangeLockedStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A root is capped by the process's budget, not by a smaller cap of its
    own: with a budget of 1,024, writes into 600 keys, then into each
    again, open each file once. (With 64 a root, as until 2026-12-05, a
    writer over more shards than that opened a file for most writes.)"""
    monkeypatch.setattr(_fdbudget, "cache_budget", lambda soft=None: 1024)
    keys = [f"arr/c/{i}" for i in range(600)]
    for key in keys:
        store.set_sync(key, B(bytes(SIZE)))
    opened = files_opened(monkeypatch)
    for value in (b"\x01", b"\x02"):
        for key in keys:
            store.set_range_sync(key, B(value), 3)
    assert len(opened) == len(keys) == len(set(opened))
    assert len(cached(store)) == len(keys)
    assert all(on_disk(store, key)[3] == 2 for key in keys)
    store.close()


def test_many_threads_on_more_keys_than_the_cache_holds_lose_nothing_and_leak_nothing(
    tmp_path: Path,
) -> None:
    seed = random.randrange(1 << 30)
    print(f"seed={seed}")
    bound = _bound()
    nkeys, nthreads, per_thread = bound + 8, 4, 300
    store = RangeLockedStore(LocalStore(tmp_path / "root"))
    keys = [f"k/{i}" for i in range(nkeys)]
    for key in keys:
        store.set_sync(key, B(bytes(nthreads)))
    gc.collect()  # earlier tests' stores closing their files meanwhile
    before = open_fds()

    def worker(t: int) -> None:
        rng = random.Random(seed + t)
        for i in range(per_thread):
            key = rng.choice(keys)
            # Each thread owns byte t of every key; some writes go unlocked,
            # through the same cache.
            value = B(bytes([i % 250 + 1]))
            if i % 7 == 0:
                unlocked_set_range_sync(store._store, key, value, t)
            else:
                store.set_range_sync(key, value, t)
            if i % 50 == 0:
                store._state.fds.close()

    run_together(nthreads, worker)  # re-raises a worker's error (the seed is printed above)
    assert len(cached(store)) <= bound
    assert all(not e.dead and e.users == 0 for e in cached(store).values())
    assert open_fds() <= before + bound
    # Every thread's last value to each key is there.
    expected = {key: bytearray(nthreads) for key in keys}
    for t in range(nthreads):
        rng = random.Random(seed + t)
        for i in range(per_thread):
            expected[rng.choice(keys)][t] = i % 250 + 1
    for key in keys:
        assert on_disk(store, key) == bytes(expected[key]), f"seed={seed} key={key}"
    store.close()
    assert open_fds() == before


def test_the_event_loop_thread_and_other_threads_share_the_cache(
    store: RangeLockedStore,
) -> None:
    def second_half() -> None:
        for i in range(SIZE // 2, SIZE):
            store.set_range_sync(KEY, B(bytes([i + 1])), i)

    async def main() -> None:
        await asyncio.gather(
            *(store.set_range(KEY, B(bytes([i + 1])), i) for i in range(SIZE // 2)),
            asyncio.to_thread(second_half),
        )

    asyncio.run(main())
    assert on_disk(store) == bytes(range(1, SIZE + 1))
    assert len(cached(store)) == 1


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_rewrite_closes_the_cached_descriptor_while_the_old_file_is_still_linked(
    store: RangeLockedStore, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    # Closing the old file's last descriptor after the rename frees its
    # blocks (100-200 us on ext4 with discard), and an async caller's
    # forget() would do that on the event loop's thread: the rewrite drops
    # the cached descriptor before it renames, in its own thread.
    store.set_range_sync(KEY, B(b"x" * 8), 0)  # a cached descriptor of the file
    path = str(root(store) / KEY)
    assert path in cached(store)
    old = cached(store)[path].fd
    seen: list[tuple[bool, bool]] = []
    real = _backends.publish

    def spy(tmp: str, target: str, sync: bool) -> None:
        # (the number may be reused by then, so compare the file it names)
        still_open = _fd_names(old, target)
        seen.append((target in cached(store), still_open))
        real(tmp, target, sync)

    monkeypatch.setattr(_backends, "publish", spy)
    pieces = [(0, Span(0, 8)), (8, B(b"y" * 8))]
    if mode == "sync":
        with store.locked_sync(KEY, [(0, None)]) as h:
            h.rewrite(16, pieces)
    else:

        async def rewrite() -> None:
            async with store.locked(KEY, [(0, None)]) as h:
                await h.rewrite(16, pieces)

        asyncio.run(rewrite())
    assert seen == [(False, False)]
    assert on_disk(store) == b"x" * 8 + b"y" * 8
    store.set_range_sync(KEY, B(b"z"), 15)  # a new descriptor, of the new file
    assert on_disk(store) == b"x" * 8 + b"y" * 7 + b"z"


def _fd_names(fd: int, path: str) -> bool:
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except OSError:
        return False
