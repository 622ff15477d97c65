"""Issue 10, item 6: a request that would wait for its own caller raises, naming why.

Each refused call used to hang forever. Every test also checks that the
refusal leaves nothing queued, and that the block still works afterwards.
"""

from __future__ import annotations

import asyncio
import pickle
import threading
from typing import Any

import pytest
from zarr.abc.store import RangeByteRequest
from zarr.core.buffer import cpu, default_buffer_prototype
from zarr.storage import MemoryStore

from tests._shard_helpers import OURS, new_array
from tests._threads import wait_until
from zarr_rangelock import (
    LockTimeout,
    RangeLockedStore,
    RangeLockManager,
    SelfDeadlockError,
)

pytestmark = pytest.mark.timeout(30)

PROTO = default_buffer_prototype()


def buf(data: bytes) -> Any:
    return cpu.Buffer.from_bytes(data)


def new_store(value: bytes = b"0123456789") -> RangeLockedStore:
    store = RangeLockedStore(MemoryStore())
    store.set_sync("a", buf(value))
    return store


SYNC_CALLS = {
    "set_sync": lambda s: s.set_sync("a", buf(b"xxxxxxxxxx")),
    "set_range_sync": lambda s: s.set_range_sync("a", buf(b"xx"), 2),
    "get_sync": lambda s: s.get_sync("a", prototype=PROTO),
    "delete_sync": lambda s: s.delete_sync("a"),
    "nested locked_sync": lambda s: s.locked_sync("a", [(3, 5)]).__enter__(),
}


@pytest.mark.parametrize("call", list(SYNC_CALLS))
def test_a_sync_call_on_ranges_its_own_locked_sync_block_holds_raises(call: str) -> None:
    store = new_store()
    mgr = store.lock_manager
    with store.locked_sync("a", [(0, 8)]) as h:
        with pytest.raises(SelfDeadlockError) as info:
            SYNC_CALLS[call](store)
        e = info.value
        assert isinstance(e, RuntimeError)
        assert e.key == "a" and e.held == ((0, 8),) and not e.held_shared
        assert "this thread" in e.holder and threading.current_thread().name in e.holder
        assert "'a'" in str(e) and "[0, 8)" in str(e) and "self-deadlock" in str(e)
        assert mgr.stats().waiters == 0
        h.set_range(buf(b"ab"), 0)  # the block itself still works
    assert mgr.stats().holders == 0
    mgr._check(idle=True)
    assert store.get_sync("a", prototype=PROTO).to_bytes() == b"ab23456789"


def test_same_thread_patterns_that_cannot_deadlock_still_work() -> None:
    store = new_store()
    mgr = store.lock_manager
    with store.locked_sync("a", [(0, 4)]) as h:
        store.set_range_sync("a", buf(b"zz"), 6)  # disjoint range
        outside = store.get_sync("a", prototype=PROTO, byte_range=RangeByteRequest(6, 10))
        assert outside is not None and outside.to_bytes() == b"zz89"
        with store.locked_sync("a", [(4, 6)]) as h2:  # nested, disjoint
            h2.set_range(buf(b"yy"), 4)
        h.set_range(buf(b"ww"), 0)
        assert h.get(byte_range=RangeByteRequest(0, 4)).to_bytes() == b"ww23"
    with store.locked_sync("a", [(0, None)], shared=True):
        assert store.get_sync("a", prototype=PROTO).to_bytes() == b"ww23yyzz89"  # shared+shared
        with mgr.lock("a", 0, 4, shared=True):
            pass
    assert mgr.stats().holders == mgr.stats().waiters == 0


def test_a_self_wait_with_a_timeout_still_times_out() -> None:
    mgr = RangeLockManager()
    with mgr.lock("k", 0, 10), pytest.raises(LockTimeout), mgr.lock("k", 5, 6, timeout=0.01):
        pass
    assert mgr.stats().holders == mgr.stats().waiters == 0


def test_another_thread_still_waits_for_the_block_and_gets_its_turn() -> None:
    store = new_store()
    mgr = store.lock_manager
    done = threading.Event()

    def other() -> None:
        store.set_sync("a", buf(b"from other"))
        done.set()

    with store.locked_sync("a", [(0, None)]) as h:
        t = threading.Thread(target=other)
        t.start()
        while mgr.stats().waiters == 0:
            threading.Event().wait(0.001)  # poll: the other thread queues behind the block
        h.set_range(buf(b"AB"), 0)
    t.join(10)
    assert done.is_set()
    assert store.get_sync("a", prototype=PROTO).to_bytes() == b"from other"


def test_a_grant_from_acquire_may_be_released_by_another_thread_while_its_taker_waits() -> None:
    # acquire() hands the grant to a caller that may pass it on: waiting for
    # it on the same thread is a hand-off, not a self-deadlock.
    mgr = RangeLockManager()
    g = mgr.acquire("k", [(0, 10)])

    def release_when_queued() -> None:
        while mgr.stats().waiters == 0:
            threading.Event().wait(0.001)
        mgr.release(g)

    t = threading.Thread(target=release_when_queued)
    t.start()
    with mgr.lock("k", 0, 10):
        pass
    t.join(10)
    assert mgr.stats().holders == mgr.stats().waiters == 0


def test_an_awaiting_request_on_ranges_its_own_task_holds_raises() -> None:
    async def scenario() -> None:
        store = new_store()
        mgr = store.lock_manager
        async with store.locked("a", [(0, None)], shared=True):
            with pytest.raises(SelfDeadlockError) as info:
                await store.set("a", buf(b"x"))
            assert info.value.held_shared and "this task" in info.value.holder
            assert mgr.stats().waiters == 0
        async with mgr.lock_async("k", 0, 10):
            with pytest.raises(SelfDeadlockError):
                async with mgr.lock_async("k", 9, 11):
                    pass
        assert mgr.stats().holders == mgr.stats().waiters == 0

    asyncio.run(scenario())


def test_a_write_inside_consistent_reads_of_the_same_key_raises() -> None:
    async def scenario() -> None:
        store = new_store()
        mgr = store.lock_manager
        async with store.consistent_reads(["a"]):
            with pytest.raises(SelfDeadlockError) as info:
                await store.set_range("a", buf(b"x"), 0)
            assert info.value.held == ((0, None),) and info.value.held_shared
            with pytest.raises(SelfDeadlockError):
                store.set_sync("a", buf(b"x"))  # from the loop's thread, too
            assert (await store.get("a", PROTO)).to_bytes() == b"0123456789"
            assert mgr.stats().waiters == 0
        await store.set_range("a", buf(b"x"), 0)
        assert mgr.stats().holders == mgr.stats().waiters == 0

    asyncio.run(scenario())


def test_a_sync_call_on_the_loop_thread_while_another_task_of_the_loop_holds_raises() -> None:
    # The holder is another task; the sync call would block the loop's thread,
    # so that task could never run to release.
    async def scenario() -> None:
        store = new_store()
        mgr = store.lock_manager
        holding, leave = asyncio.Event(), asyncio.Event()

        async def holder() -> None:
            async with store.locked("a", [(0, 4)]):
                holding.set()
                await leave.wait()

        task = asyncio.create_task(holder(), name="the-holder")
        await holding.wait()
        with pytest.raises(SelfDeadlockError) as info:
            store.get_sync("a", prototype=PROTO)
        assert "the-holder" in info.value.holder and "event loop" in info.value.holder
        assert "holder" in info.value.holder  # where it is suspended: the coroutine's name
        # an awaiting request from this other task just waits its turn
        reader = asyncio.create_task(store.get("a", PROTO))
        while mgr.stats().waiters == 0:
            await asyncio.sleep(0)
        leave.set()
        await task
        assert (await asyncio.wait_for(reader, 10)).to_bytes() == b"0123456789"
        assert mgr.stats().holders == mgr.stats().waiters == 0

    asyncio.run(scenario())


def test_a_prefix_lock_inside_a_block_of_a_key_under_it_raises() -> None:
    mgr = RangeLockManager()
    with mgr.lock("p/a", 0, 4):
        with pytest.raises(SelfDeadlockError) as info, mgr.lock_prefix("p/"):
            pass
        assert info.value.key == "p/" and info.value.held_key == "p/a"
        assert "of 'p/a'" in str(info.value)
    assert mgr.stats().holders == mgr.stats().waiters == 0


def test_self_deadlock_error_pickles_with_its_fields() -> None:
    e = SelfDeadlockError("a", [(0, 4)], False, "a", [(0, None)], True, "this thread ('T')")
    back = pickle.loads(pickle.dumps(e))
    assert type(back) is SelfDeadlockError and str(back) == str(e)
    assert (back.key, back.ranges, back.held, back.holder) == (
        "a",
        ((0, 4),),
        ((0, None),),
        "this thread ('T')",
    )
    with_behind = SelfDeadlockError(
        "a", [(9, 10)], True, "a", [(0, 4)], False, "this task ('t')", [(0, None)]
    )
    back = pickle.loads(pickle.dumps(with_behind))
    assert back.behind == ((0, None),) and str(back) == str(with_behind)
    assert "behind an exclusive lock on ranges [0, end)" in str(back)


# -------------------------------------------------------------------------------------
# Behind a whole-key write queued while the block holds part of the key: the
# call waits for the write, which waits for the block, whether the call's
# ranges overlap the block's or not. Used to hang forever (found by hand: a
# read of [100, 200) inside a block holding [0, 16), with another thread's
# set() of the key queued meanwhile). The set is queued deterministically:
# the test waits until the table counts it as a waiter.


def _queue_a_set_from_another_thread(store: RangeLockedStore, key: str) -> threading.Thread:
    """Start a thread whose ``set`` of ``key`` queues behind the caller's block;
    return once it waits (or fail after 10 s)."""
    t = threading.Thread(target=store.set_sync, args=(key, buf(b"S" * 10)), daemon=True)
    t.start()
    wait_until(lambda: store.lock_manager.stats().waiters == 1, "the set queues")
    return t


def test_a_read_of_other_ranges_inside_an_async_block_behind_a_queued_set_raises() -> None:
    store = new_store()

    async def scenario() -> None:
        async with store.locked("a", [(0, 4)]):
            # no writer queued: a read of other bytes of the key is granted at once
            got = await store.get("a", PROTO, byte_range=RangeByteRequest(6, 9))
            assert got is not None and got.to_bytes() == b"678"
            t = await asyncio.to_thread(_queue_a_set_from_another_thread, store, "a")
            with pytest.raises(SelfDeadlockError) as info:
                await store.get("a", PROTO, byte_range=RangeByteRequest(6, 9))
            e = info.value
            assert (e.key, e.ranges, e.shared) == ("a", ((6, 9),), True)
            assert (e.held, e.held_shared, e.behind) == (((0, 4),), False, ((0, None),))
            assert "this task" in e.holder and "behind an exclusive lock" in str(e)
            assert store.lock_manager.stats().waiters == 1  # only the set: nothing queued
        await asyncio.to_thread(t.join, 10)
        assert not t.is_alive()  # the set got its turn once the block ended
        assert store.get_sync("a").to_bytes() == b"S" * 10
        stats = store.lock_manager.stats()
        assert stats.holders == stats.waiters == 0

    asyncio.run(scenario())


def test_a_read_inside_a_shared_sync_block_behind_a_queued_set_raises() -> None:
    # Shared, then a whole-key writer queues, then shared again: the second
    # shared request would queue behind the writer.
    store = new_store()
    with store.locked_sync("a", [(0, None)], shared=True):
        assert store.get_sync("a").to_bytes() == b"0123456789"  # nobody queued: fine
        t = _queue_a_set_from_another_thread(store, "a")
        with pytest.raises(SelfDeadlockError, match=r"behind an exclusive lock .* this thread"):
            store.get_sync("a")
    t.join(10)
    assert not t.is_alive() and store.get_sync("a").to_bytes() == b"S" * 10
    stats = store.lock_manager.stats()
    assert stats.holders == stats.waiters == 0


def test_without_the_check_such_a_read_waits_until_its_timeout() -> None:
    # The control: a request with a timeout is not checked, and shows the
    # wait is real (behind the set, which waits for the block).
    store = new_store()
    mgr = store.lock_manager
    with mgr.lock("a", 0, 4):
        t = _queue_a_set_from_another_thread(store, "a")
        with pytest.raises(LockTimeout):
            mgr.acquire("a", [(6, 9)], shared=True, timeout=0.05)
        assert mgr.stats().waiters == 1
    t.join(10)
    assert not t.is_alive()


# -------------------------------------------------------------------------------------
# The plain array API inside a block: zarr runs the write on its own event-loop
# thread, on behalf of the blocked caller, and nothing links the two, so the
# write is not refused: it waits for the block (the README says so). Shown
# with a grant any thread may release, so the test can end the wait.


def test_a_plain_array_write_inside_a_block_of_its_shard_waits_for_the_block() -> None:
    store = RangeLockedStore(MemoryStore())
    arr = new_array(store, shape=(8,), chunks=(2,), shards=(8,), pipeline=OURS)
    arr[:] = 1
    mgr = store.lock_manager
    grant = mgr.acquire("c/0", [(0, 8)])  # the first chunk's bytes, as a block would
    done = threading.Event()

    def write() -> None:
        arr[0:2] = 7  # runs on zarr's loop thread, for this one
        done.set()

    t = threading.Thread(target=write, daemon=True)
    t.start()
    wait_until(lambda: mgr.stats().waiters == 1, "the write waits for the block")
    assert not done.is_set()
    mgr.release(grant)  # what the block's end would do
    assert done.wait(20)
    t.join(20)
    assert arr[:].tolist() == [7, 7, 1, 1, 1, 1, 1, 1]
    assert mgr.stats().holders == mgr.stats().waiters == 0
