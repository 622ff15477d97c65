"""RangeLockedStore under concurrency: threads and asyncio tasks on one key.

Each property is checked twice: through the locked store (it must hold) and
through a control without locks (it must break), so a checker that cannot see
the race would fail its control. Interleavings are forced deterministically by
patching ``_backends._write_range``, the one function every value write goes
through, to pause at a chosen point until the competing operation has either
finished (no locks) or is queued behind the writer's lock (locks). Nothing
here orders threads with ``time.sleep``.
"""

from __future__ import annotations

import asyncio
import os
import random
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from zarr.abc.store import RangeByteRequest
from zarr.core.buffer import cpu, default_buffer_prototype
from zarr.storage import LocalStore, MemoryStore

from tests._threads import run_threads, wait_until
from zarr_rangelock import RangeLockedStore
from zarr_rangelock.store import _backends
from zarr_rangelock.store._backends import unlocked_set_range_sync

pytestmark = pytest.mark.timeout(30)

B = cpu.Buffer.from_bytes
KEY = "arr/c/0"


@pytest.fixture(params=["memory", "local"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> RangeLockedStore:
    inner = MemoryStore() if request.param == "memory" else LocalStore(tmp_path)
    return RangeLockedStore(inner)


def read_all(store: RangeLockedStore) -> bytes:
    got = store.get_sync(KEY)
    assert got is not None
    return got.to_bytes()


class Rival:
    """The pause of a scenario's first operation: it signals that it has
    paused, then waits until its rival has finished (no locks) or is queued
    behind it (locks). The rival waits for ``paused``, sets ``done``."""

    def __init__(self, store: RangeLockedStore, what: str) -> None:
        self.paused = threading.Event()
        self.done = threading.Event()
        self._mgr = store.lock_manager
        self._what = what

    def pause(self) -> None:
        self.paused.set()
        wait_until(
            lambda: self.done.is_set() or self._mgr.stats().waiters > 0,
            f"{self._what} finished or queued",
        )


@contextmanager
def patched_writes(
    monkeypatch: pytest.MonkeyPatch, *, split: bool, pause: Callable[[], None]
) -> Iterator[None]:
    """Route every value write through ``pause`` (between halves if ``split``, else before)."""
    original = _backends._write_range

    def write(target: int | memoryview, data: memoryview, start: int) -> None:
        if split:
            half = len(data) // 2
            original(target, data[:half], start)
            pause()
            original(target, data[half:], start + half)
        else:
            pause()
            original(target, data, start)

    with monkeypatch.context() as m:
        m.setattr(_backends, "_write_range", write)
        yield


def first_caller_pauses(pause: Callable[[], None]) -> Callable[[], None]:
    """A pause that only the first write to reach it takes (later writes run through)."""
    taken = threading.Lock()

    def maybe_pause() -> None:
        if taken.acquire(blocking=False):
            pause()

    return maybe_pause


# ------------------------------------------------------------------ checkers


def missing_patches(final: bytes, patches: list[tuple[int, bytes]]) -> list[int]:
    """Starts of the patches that did not land whole."""
    return [s for s, data in patches if final[s : s + len(data)] != data]


def serializable(final: bytes, writes: list[tuple[int, int, int]]) -> bool:
    """Whether applying the ``(id, start, end)`` fills in some serial order gives ``final``.

    The initial value is all zeros and every write fills its range with its id.
    Greedy peeling: a write all of whose bytes show its id (or bytes already
    explained by writes peeled after it) can be the last one; peeling it never
    hurts. If every write peels, and unexplained bytes are zeros, an order exists.
    """
    values = np.frombuffer(final, dtype="B")
    explained = np.zeros(len(values), dtype=bool)
    left = list(writes)
    while left:
        for i, (wid, s, e) in enumerate(left):
            if np.all(explained[s:e] | (values[s:e] == wid)):
                explained[s:e] = True
                del left[i]
                break
        else:
            return False
    return bool(np.all(explained | (values == 0)))


def test_the_serializability_checker_tells_mixes_from_orders() -> None:
    writes = [(1, 0, 4), (2, 2, 6)]
    assert serializable(bytes([1, 1, 2, 2, 2, 2, 0]), writes)
    assert serializable(bytes([1, 1, 1, 1, 2, 2, 0]), writes)
    assert not serializable(bytes([1, 1, 2, 1, 2, 2, 0]), writes)  # 1 and 2 interleaved
    assert not serializable(bytes([2, 2, 1, 1, 2, 2, 0]), writes)


# --------------------------------------------------- disjoint writers all land

N_WRITERS = 16
SLOT = 4096


def slot_patch(i: int, size: int = SLOT) -> tuple[int, bytes]:
    return i * size, bytes([i + 1]) * size


def test_threads_writing_disjoint_ranges_of_one_key_all_land(store: RangeLockedStore) -> None:
    store.set_sync(KEY, B(bytes(N_WRITERS * SLOT)))
    patches = [slot_patch(i) for i in range(N_WRITERS)]
    start_line = threading.Barrier(N_WRITERS)

    def writer(i: int) -> Callable[[], None]:
        def run() -> None:
            start_line.wait()
            for _ in range(50):
                store.set_range_sync(KEY, B(patches[i][1]), patches[i][0])

        return run

    run_threads(*(writer(i) for i in range(N_WRITERS)))
    assert missing_patches(read_all(store), patches) == []
    assert store.lock_manager.stats().holders == 0


def test_control_whole_value_rewrites_lose_disjoint_writes(store: RangeLockedStore) -> None:
    # What stock zarr does for a partial write: read the value, patch, write it
    # all back. With every reader done before any writer (a barrier), each
    # rewrite erases the others' patches; the checker above must see it.
    inner = store._store
    inner.set_sync(KEY, B(bytes(N_WRITERS * SLOT)))
    patches = [slot_patch(i) for i in range(N_WRITERS)]
    all_read = threading.Barrier(N_WRITERS)

    def writer(i: int) -> Callable[[], None]:
        def run() -> None:
            old = bytearray(inner.get_sync(KEY).to_bytes())  # type: ignore[union-attr]
            all_read.wait()
            s, data = patches[i]
            old[s : s + len(data)] = data
            inner.set_sync(KEY, B(bytes(old)))

        return run

    run_threads(*(writer(i) for i in range(N_WRITERS)))
    assert len(missing_patches(read_all(store), patches)) == N_WRITERS - 1


@pytest.mark.asyncio
@pytest.mark.parametrize("size", [1024, 320 * 1024], ids=["inline", "worker-thread"])
async def test_asyncio_gather_writing_disjoint_ranges_of_one_key_all_land(
    store: RangeLockedStore, size: int
) -> None:
    n = 64 if size < 65536 else 8
    await store.set(KEY, B(bytes(n * size)))
    patches = [slot_patch(i, size) for i in range(n)]

    async def writer(i: int) -> None:
        await asyncio.sleep(0)
        await store.set_range(KEY, B(patches[i][1]), patches[i][0])

    await asyncio.gather(*(writer(i) for i in range(n)))
    final = await store.get(KEY)
    assert final is not None
    assert missing_patches(final.to_bytes(), patches) == []


@pytest.mark.asyncio
async def test_control_async_whole_value_rewrites_lose_disjoint_writes(
    store: RangeLockedStore,
) -> None:
    inner = store._store
    n = 64
    await inner.set(KEY, B(bytes(n * SLOT)))
    patches = [slot_patch(i) for i in range(n)]
    # A barrier, not a yield: a LocalStore read finishes in a worker thread, so
    # one asyncio.sleep(0) does not make every task read before any writes.
    all_read = asyncio.Barrier(n)

    async def writer(i: int) -> None:
        old = bytearray((await inner.get(KEY)).to_bytes())  # type: ignore[union-attr]
        await all_read.wait()
        s, data = patches[i]
        old[s : s + len(data)] = data
        await inner.set(KEY, B(bytes(old)))

    await asyncio.gather(*(writer(i) for i in range(n)))
    final = await store.get(KEY)
    assert final is not None
    assert len(missing_patches(final.to_bytes(), patches)) == n - 1


# ------------------------------------------ overlapping writers never mix


def overlapping_writers_scenario(
    store: RangeLockedStore, monkeypatch: pytest.MonkeyPatch, *, locked: bool
) -> bytes:
    """A and B write [0, 64) with 0xAA and 0xBB; A's write is split in two and
    pauses between the halves until B has finished (no locks) or is queued
    behind A (locks)."""
    store.set_sync(KEY, B(bytes(128)))
    rival = Rival(store, "B")
    write = (
        store.set_range_sync
        if locked
        else (lambda k, v, s: unlocked_set_range_sync(store._store, k, v, s))
    )

    def a() -> None:
        write(KEY, B(b"\xaa" * 64), 0)

    def b() -> None:
        rival.paused.wait()
        write(KEY, B(b"\xbb" * 64), 0)
        rival.done.set()

    with patched_writes(monkeypatch, split=True, pause=first_caller_pauses(rival.pause)):
        run_threads(a, b)
    return read_all(store)[:64]


def test_overlapping_writers_never_mix_within_one_write(
    store: RangeLockedStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    final = overlapping_writers_scenario(store, monkeypatch, locked=True)
    # B queued behind A, so it went last, whole.
    assert final == b"\xbb" * 64
    assert store.lock_manager.stats().waits == 1


def test_control_overlapping_writers_mix_without_locks(
    store: RangeLockedStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    final = overlapping_writers_scenario(store, monkeypatch, locked=False)
    assert final == b"\xbb" * 32 + b"\xaa" * 32  # B whole, then A's second half over it
    assert not serializable(bytes(1 if c == 0xAA else 2 for c in final), [(1, 0, 64), (2, 0, 64)])


@pytest.mark.timeout(60)
def test_random_overlapping_writers_from_threads_are_serializable(
    store: RangeLockedStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    seed = random.randrange(1 << 30)
    print(f"seed={seed}")
    rng = random.Random(seed)
    size, n_threads, per_thread = 512, 6, 30
    store.set_sync(KEY, B(bytes(size)))
    plan: list[list[tuple[int, int, int]]] = []
    wid = 0
    for _ in range(n_threads):
        ops = []
        for _ in range(per_thread):
            wid += 1
            s = rng.randrange(size - 1)
            ops.append((wid, s, rng.randrange(s + 1, min(size, s + 200) + 1)))
        plan.append(ops)
    start_line = threading.Barrier(n_threads)

    def writer(ops: list[tuple[int, int, int]]) -> Callable[[], None]:
        def run() -> None:
            start_line.wait()
            for w, s, e in ops:
                store.set_range_sync(KEY, B(bytes([w]) * (e - s)), s)

        return run

    # Split every write and yield the CPU between its halves, inviting interleaving.
    with patched_writes(monkeypatch, split=True, pause=os.sched_yield):
        run_threads(*(writer(ops) for ops in plan))
    all_writes = [w for ops in plan for w in ops]
    assert serializable(read_all(store), all_writes), f"seed={seed}"
    store.lock_manager._check()


@pytest.mark.asyncio
@pytest.mark.timeout(60)
async def test_random_overlapping_writers_from_asyncio_are_serializable(
    store: RangeLockedStore,
) -> None:
    seed = random.randrange(1 << 30)
    print(f"seed={seed}")
    rng = random.Random(seed)
    # Writes above INLINE_WRITE_MAX run in worker threads on a LocalStore and
    # really overlap in time; small ones interleave at the lock.
    size = 1 << 20
    await store.set(KEY, B(bytes(size)))
    writes = []
    for wid in range(1, 25):
        length = rng.choice([100, 4096, 300 * 1024])
        s = rng.randrange(size - length)
        writes.append((wid, s, s + length))

    async def writer(w: int, s: int, e: int) -> None:
        await asyncio.sleep(0)
        await store.set_range(KEY, B(bytes([w]) * (e - s)), s)

    await asyncio.gather(*(writer(*w) for w in writes))
    final = await store.get(KEY)
    assert final is not None
    assert serializable(final.to_bytes(), writes), f"seed={seed}"
    store.lock_manager._check()


# -------------------------------------------------------- set racing set_range

PATCH = (10, b"\xee" * 10)


def set_vs_set_range_scenario(
    store: RangeLockedStore, monkeypatch: pytest.MonkeyPatch, *, locked: bool
) -> tuple[bytes, bool]:
    """set_range of PATCH starts first and pauses just before its bytes go in,
    until ``set`` (a new value of 0x55) has finished (no locks) or is queued
    (locks). Returns the final value and whether set finished before the patch
    was written."""
    store.set_sync(KEY, B(bytes(64)))
    store.set_range_sync(KEY, B(b"\x00"), 0)  # MemoryStore: value already private
    rival = Rival(store, "set")
    set_done_first: list[bool] = []

    def pause() -> None:
        rival.pause()
        set_done_first.append(rival.done.is_set())

    def patcher() -> None:
        s, data = PATCH
        if locked:
            store.set_range_sync(KEY, B(data), s)
        else:
            unlocked_set_range_sync(store._store, KEY, B(data), s)

    def setter() -> None:
        rival.paused.wait()
        (store.set_sync if locked else store._store.set_sync)(KEY, B(b"\x55" * 64))
        rival.done.set()

    with patched_writes(monkeypatch, split=False, pause=pause):
        run_threads(patcher, setter)
    return read_all(store), set_done_first[0]


def set_race_outcome_is_legal(final: bytes, set_finished_before_patch: bool) -> bool:
    base = b"\x55" * 64
    s, data = PATCH
    with_patch = base[:s] + data + base[s + len(data) :]
    if set_finished_before_patch:
        # The set was over before the patch was applied: the patch must be on top.
        return final == with_patch
    return final in (base, with_patch)


def test_set_racing_set_range_never_loses_a_patch_into_a_replaced_value(
    store: RangeLockedStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    final, set_first = set_vs_set_range_scenario(store, monkeypatch, locked=True)
    assert not set_first  # set queued behind the patch's range lock
    assert set_race_outcome_is_legal(final, set_first)
    assert final == b"\x55" * 64  # the patch came first, then set replaced it whole


def test_control_set_racing_unlocked_set_range_loses_the_patch(
    store: RangeLockedStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    final, set_first = set_vs_set_range_scenario(store, monkeypatch, locked=False)
    # The patch went into the value set had replaced (the old file's inode, the
    # old MemoryStore buffer) and is gone, though set was over before it began.
    assert set_first
    assert not set_race_outcome_is_legal(final, set_first)


@pytest.mark.timeout(60)
def test_random_sets_and_set_ranges_leave_a_set_value_patched_by_whole_writes(
    store: RangeLockedStore,
) -> None:
    seed = random.randrange(1 << 30)
    print(f"seed={seed}")
    slots, slot = 8, 64
    store.set_sync(KEY, B(b"\x01" * (slots * slot + 1)))
    start_line = threading.Barrier(4)

    def setter(fill: int) -> Callable[[], None]:
        def run() -> None:
            start_line.wait()
            for _ in range(40):
                store.set_sync(KEY, B(bytes([fill]) * (slots * slot + 1)))

        return run

    def patcher(fill: int) -> Callable[[], None]:
        rng = random.Random(seed + fill)  # one per thread: the seed replays each one's slots

        def run() -> None:
            start_line.wait()
            for _ in range(200):
                i = rng.randrange(slots)
                store.set_range_sync(KEY, B(bytes([fill]) * slot), 1 + i * slot)

        return run

    run_threads(setter(0x10), setter(0x20), patcher(0xA0), patcher(0xB0))
    final = read_all(store)
    base = final[0]  # byte 0 is never patched: it names the last set
    assert base in (0x10, 0x20)
    for i in range(slots):
        chunk = final[1 + i * slot : 1 + (i + 1) * slot]
        assert len(set(chunk)) == 1 and chunk[0] in (base, 0xA0, 0xB0), (seed, i, chunk)


# ----------------------------------------------------- readers never see torn


def torn_read_scenario(
    store: RangeLockedStore, monkeypatch: pytest.MonkeyPatch, *, locked: bool
) -> bytes:
    """A writer thread replaces [0, 64) of 0x00 with 0xCC, split in two halves;
    between them it waits until an asyncio reader (its own event loop, in a
    second thread) has read (no locks) or is queued (locks)."""
    store.set_sync(KEY, B(bytes(128)))
    rival = Rival(store, "the reader")

    def writer() -> None:
        if locked:
            store.set_range_sync(KEY, B(b"\xcc" * 64), 0)
        else:
            unlocked_set_range_sync(store._store, KEY, B(b"\xcc" * 64), 0)

    async def reader() -> bytes:
        await asyncio.to_thread(rival.paused.wait)
        source = store if locked else store._store
        got = await source.get(KEY, byte_range=RangeByteRequest(0, 64))
        rival.done.set()
        assert got is not None
        return got.to_bytes()

    seen: list[bytes] = []
    with patched_writes(monkeypatch, split=True, pause=rival.pause):
        run_threads(writer, lambda: seen.append(asyncio.run(reader())))
    return seen[0]


def test_readers_never_see_a_torn_range(
    store: RangeLockedStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = torn_read_scenario(store, monkeypatch, locked=True)
    assert seen == b"\xcc" * 64  # queued behind the writer, then read it whole


def test_control_readers_see_torn_ranges_without_locks(
    store: RangeLockedStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = torn_read_scenario(store, monkeypatch, locked=False)
    assert seen == b"\xcc" * 32 + b"\x00" * 32


@pytest.mark.timeout(60)
def test_random_readers_and_writers_never_see_torn_slots(
    store: RangeLockedStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    seed = random.randrange(1 << 30)
    print(f"seed={seed}")
    slots, slot = 4, 256
    store.set_sync(KEY, B(bytes(slots * slot)))
    start_line = threading.Barrier(6)
    torn: list[bytes] = []

    def writer(fill: int, seed: int) -> Callable[[], None]:
        def run() -> None:
            rng = random.Random(seed)
            start_line.wait()
            for _ in range(150):
                i = rng.randrange(slots)
                store.set_range_sync(KEY, B(bytes([fill]) * slot), i * slot)

        return run

    def reader(seed: int) -> Callable[[], None]:
        def run() -> None:
            rng = random.Random(seed)
            start_line.wait()
            for _ in range(150):
                i = rng.randrange(slots)
                got = store.get_sync(KEY, byte_range=RangeByteRequest(i * slot, (i + 1) * slot))
                assert got is not None
                if len(set(got.to_bytes())) != 1:
                    torn.append(got.to_bytes())

        return run

    with patched_writes(monkeypatch, split=True, pause=os.sched_yield):
        run_threads(
            writer(1, seed),
            writer(2, seed + 1),
            writer(3, seed + 2),
            reader(seed + 3),
            reader(seed + 4),
            reader(seed + 5),
        )
    assert torn == [], f"seed={seed}"


# ------------------------------------------------------------------ cancellation


@pytest.mark.asyncio
async def test_cancelling_a_queued_set_range_writes_nothing_and_holds_nothing(
    store: RangeLockedStore,
) -> None:
    await store.set(KEY, B(bytes(64)))
    mgr = store.lock_manager
    async with store.locked(KEY, [(0, 32)]):
        task = asyncio.ensure_future(store.set_range(KEY, B(b"\x01" * 8), 28))
        while mgr.stats().waiters == 0:
            await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert mgr.stats().waiters == 0
    assert read_all(store) == bytes(64)
    assert (mgr.stats().holders, mgr.stats().waiters) == (0, 0)
    mgr._check()


@pytest.mark.asyncio
async def test_a_cancelled_worker_thread_write_keeps_its_lock_until_the_write_is_done(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Interleaving: the large write is running in a worker thread, parked
    # inside _write_range; the task awaiting it is cancelled. If the lock were
    # released at once, the thread's bytes would land unprotected. It must stay
    # held until the thread finishes, then the cancellation propagates.
    store = RangeLockedStore(LocalStore(tmp_path))
    size = 1 << 20
    await store.set(KEY, B(bytes(size)))
    in_write, may_finish = threading.Event(), threading.Event()

    def pause() -> None:
        in_write.set()
        may_finish.wait()

    data = b"\x07" * (600 * 1024)
    with patched_writes(monkeypatch, split=False, pause=pause):
        task = asyncio.ensure_future(store.set_range(KEY, B(data), 0))
        await asyncio.to_thread(in_write.wait)
        task.cancel()
        for _ in range(5):
            await asyncio.sleep(0)
        assert not task.done()
        assert store.lock_manager.stats().holders == 1  # still held for the thread
        may_finish.set()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert store.lock_manager.stats().holders == 0
    assert read_all(store)[: len(data)] == data  # the write finished whole


@pytest.mark.asyncio
async def test_set_if_not_exists_waits_for_a_block_of_reads_that_found_the_key_missing(
    store: RangeLockedStore,
) -> None:
    # A consistent_reads block sees one state of its keys: a key it found
    # missing stays missing until the block ends. set_if_not_exists takes
    # the whole key exclusive, so it waits for the block; taken shared, it
    # was granted beside the block's hold and made the key under it.
    mgr = store.lock_manager
    proto = default_buffer_prototype()
    async with store.consistent_reads([KEY]):
        assert await store.get(KEY, proto) is None
        task = asyncio.ensure_future(store.set_if_not_exists(KEY, B(b"new")))
        for _ in range(100):  # until it waits (or, wrongly, is done)
            if mgr.stats().waiters or task.done():
                break
            await asyncio.sleep(0)
        assert not task.done()
        assert mgr.stats().waiters == 1
        assert await store.get(KEY, proto) is None
        assert not await store.exists(KEY)
    await asyncio.wait_for(task, 10)  # the deadline only catches a hang
    assert read_all(store) == b"new"
    assert (mgr.stats().holders, mgr.stats().waiters) == (0, 0)
    mgr._check()


# -- listing a MemoryStore while its keys change ----------------------------------------


async def _list_while_a_key_changes(store: MemoryStore | RangeLockedStore) -> list[str]:
    """List, and between the first key and the next delete one."""
    names = store.list()
    seen = [await anext(names)]
    await store.delete("k1")
    seen += [name async for name in names]
    return seen


@pytest.mark.asyncio
async def test_listing_a_memory_store_while_a_key_changes_gives_the_keys_of_its_start() -> None:
    # Stock zarr's MemoryStore.list walks its dict while it yields: a key set
    # or deleted while the caller awaits between two keys (here: the caller
    # itself; as well another task or thread) raises RuntimeError. The
    # wrapper lists the keys of the moment iteration starts (zarr's
    # list_prefix(""), which takes them at once).
    def filled() -> MemoryStore:
        inner = MemoryStore()
        inner._store_dict.update({f"k{i}": B(b"v") for i in range(3)})
        return inner

    with pytest.raises(RuntimeError, match="changed size during iteration"):
        await _list_while_a_key_changes(filled())
    store = RangeLockedStore(filled())
    assert sorted(await _list_while_a_key_changes(store)) == ["k0", "k1", "k2"]
    assert sorted([k async for k in store.list()]) == ["k0", "k2"]
