"""RangeLockedStore.consistent_reads: a block of reads that sees one state."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from zarr.core.buffer import cpu, default_buffer_prototype
from zarr.storage import MemoryStore

from zarr_rangelock import RangeLockedStore

pytestmark = pytest.mark.timeout(30)


def buf(data: bytes) -> Any:
    return cpu.Buffer.from_bytes(data)


def test_reads_inside_the_block_take_no_locks_and_writers_wait_for_it() -> None:
    async def scenario() -> None:
        store = RangeLockedStore(MemoryStore())
        await store.set("a", buf(b"old!"))
        mgr = store.lock_manager
        async with store.consistent_reads(["a"]):
            grants = mgr.stats().grants
            writer = asyncio.create_task(store.set("a", buf(b"new!")))
            while mgr.stats().waiters == 0:
                await asyncio.sleep(0)
            # the queued writer would block any locking read: these take none
            first = await store.get("a", default_buffer_prototype())
            assert await store.getsize("a") == 4 and await store.exists("a")
            got = await asyncio.gather(store.get("a", default_buffer_prototype()))  # sub-task
            assert first is not None and first.to_bytes() == b"old!"
            assert got[0] is not None and got[0].to_bytes() == b"old!"
            assert mgr.stats().grants == grants and not writer.done()
        await asyncio.wait_for(writer, 5)
        after = await store.get("a", default_buffer_prototype())
        assert after is not None and after.to_bytes() == b"new!"
        assert mgr.stats().holders == mgr.stats().waiters == 0

    asyncio.run(scenario())


def test_other_tasks_and_other_keys_still_lock() -> None:
    async def scenario() -> None:
        store = RangeLockedStore(MemoryStore())
        await store.set("a", buf(b"1"))
        await store.set("b", buf(b"2"))
        mgr = store.lock_manager
        inside = asyncio.Event()
        leave = asyncio.Event()

        async def block() -> None:
            async with store.consistent_reads(["a"]):
                inside.set()
                await leave.wait()

        t = asyncio.create_task(block())
        await inside.wait()
        grants = mgr.stats().grants
        await store.get("a", default_buffer_prototype())  # not in the block: locks (shared)
        await store.get("b", default_buffer_prototype())
        assert mgr.stats().grants == grants + 2
        leave.set()
        await t

    asyncio.run(scenario())


def test_a_block_over_several_keys_does_not_deadlock_against_a_prefix_lock() -> None:
    # Interleaving: the block takes "p/a"; before it asks for "p/b", delete_dir("p")
    # queues behind "p/a". The block's request for "p/b" is then behind the
    # prefix lock, which waits for the block: a deadlock, unless the block
    # gives up what it holds after HOLD_AND_WAIT_S and starts over.
    async def scenario() -> None:
        store = RangeLockedStore(MemoryStore())
        await store.set("p/a", buf(b"a"))
        await store.set("p/b", buf(b"b"))
        mgr = store.lock_manager
        orig = mgr.acquire_async
        first = asyncio.Event()
        go_on = asyncio.Event()

        async def pausing(*args: Any, **kwargs: Any) -> Any:
            g = await orig(*args, **kwargs)
            if not first.is_set():
                first.set()
                await go_on.wait()
            return g

        mgr.acquire_async = pausing  # type: ignore[method-assign]

        async def reader() -> list[Any]:
            async with store.consistent_reads(["p/b", "p/a"]):
                return [await store.get(k, default_buffer_prototype()) for k in ("p/a", "p/b")]

        r = asyncio.create_task(reader())
        await first.wait()  # the block holds "p/a"
        d = asyncio.create_task(store.delete_dir("p"))
        while mgr.stats().waiters == 0:
            await asyncio.sleep(0)
        go_on.set()
        got, _ = await asyncio.wait_for(asyncio.gather(r, d), 10)
        # the block started over after the delete: it sees one state, all gone
        assert got == [None, None]
        assert mgr.stats().holders == mgr.stats().waiters == 0

    asyncio.run(scenario())
