"""Issue 10, item 2: a read skips locking only while a running block holds its key.

``consistent_reads`` tells reads that they are inside the block through a
context variable, which every task created in the block inherits, so such a
task can read after the block has ended. These tests pin what such reads do.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
from zarr.core.buffer import cpu, default_buffer_prototype
from zarr.storage import MemoryStore

from zarr_rangelock import RangeLockedStore

pytestmark = pytest.mark.timeout(30)


def buf(data: bytes) -> Any:
    return cpu.Buffer.from_bytes(data)


PROTO = default_buffer_prototype()


def test_a_task_started_in_the_block_locks_its_reads_after_the_block_has_ended() -> None:
    # Interleaving: a task is created inside the block and parked; the block
    # ends; a locked_sync writer in another thread writes the first half of
    # the value and pauses; the task now reads. It must queue behind the
    # writer and see the whole write, not the half (it did, through the
    # context it inherited from the ended block).
    async def scenario() -> None:
        store = RangeLockedStore(MemoryStore())
        await store.set("a", buf(b"old-old-"))
        mgr = store.lock_manager
        go = asyncio.Event()

        async def late_reader() -> Any:
            await go.wait()
            return await store.get("a", PROTO)

        async with store.consistent_reads(["a"]):
            reader = asyncio.create_task(late_reader())
        half, finish = threading.Event(), threading.Event()

        def writer() -> None:
            with store.locked_sync("a", [(0, None)]) as h:
                h.set_range(buf(b"new-"), 0)
                half.set()
                finish.wait(10)
                h.set_range(buf(b"new-"), 4)

        t = threading.Thread(target=writer)
        t.start()
        await asyncio.to_thread(half.wait, 10)
        go.set()
        while not reader.done() and mgr.stats().waiters == 0:
            await asyncio.sleep(0)  # the reader either returned or queued behind the writer
        finish.set()
        got = await asyncio.wait_for(reader, 10)
        await asyncio.to_thread(t.join, 10)
        assert got is not None and got.to_bytes() == b"new-new-"
        assert mgr.stats().holders == mgr.stats().waiters == 0
        mgr._check(idle=True)

    asyncio.run(scenario())


def test_a_read_that_started_in_the_block_keeps_its_locks_until_it_is_done(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Interleaving: a task started in the block begins a read (the backend's
    # get pauses midway); the block ends; a writer of the key must wait for
    # that read to finish, which then sees the old value.
    async def scenario() -> None:
        store = RangeLockedStore(MemoryStore())
        await store.set("a", buf(b"old!"))
        mgr = store.lock_manager
        backend_type = type(store._backend)
        orig = backend_type.get
        entered, resume = asyncio.Event(), asyncio.Event()

        async def paused_get(self: Any, *args: Any, **kwargs: Any) -> Any:
            entered.set()
            await resume.wait()
            return await orig(self, *args, **kwargs)

        monkeypatch.setattr(backend_type, "get", paused_get)
        async with store.consistent_reads(["a"]):
            reader = asyncio.create_task(store.get("a", PROTO))
            await entered.wait()
        monkeypatch.setattr(backend_type, "get", orig)
        writer = asyncio.create_task(store.set("a", buf(b"new!")))
        while mgr.stats().waiters == 0 and not writer.done():
            await asyncio.sleep(0)
        assert not writer.done(), "the writer overtook a read the block had started"
        resume.set()
        got = await asyncio.wait_for(reader, 10)
        await asyncio.wait_for(writer, 10)
        assert got is not None and got.to_bytes() == b"old!"
        after = await store.get("a", PROTO)
        assert after is not None and after.to_bytes() == b"new!"
        assert mgr.stats().holders == mgr.stats().waiters == 0
        mgr._check(idle=True)

    asyncio.run(scenario())


def test_a_block_nested_in_a_task_that_outlives_the_outer_block_keeps_its_keys() -> None:
    # Interleaving: inside the outer block a task enters its own block on the
    # same key (re-entrant: it takes no lock of its own); the outer block
    # ends; a writer of the key must still wait for the inner block, whose
    # two reads then see one state.
    async def scenario() -> None:
        store = RangeLockedStore(MemoryStore())
        await store.set("a", buf(b"one"))
        mgr = store.lock_manager
        inside, go = asyncio.Event(), asyncio.Event()

        async def inner() -> list[bytes]:
            async with store.consistent_reads(["a"]):
                inside.set()
                first = await store.get("a", PROTO)
                await go.wait()
                second = await store.get("a", PROTO)
            assert first is not None and second is not None
            return [first.to_bytes(), second.to_bytes()]

        async with store.consistent_reads(["a"]):
            task = asyncio.create_task(inner())
            await inside.wait()
        writer = asyncio.create_task(store.set("a", buf(b"two")))
        while mgr.stats().waiters == 0 and not writer.done():
            await asyncio.sleep(0)
        assert not writer.done(), "the writer overtook the inner block"
        go.set()
        assert await asyncio.wait_for(task, 10) == [b"one", b"one"]
        await asyncio.wait_for(writer, 10)
        assert mgr.stats().holders == mgr.stats().waiters == 0
        mgr._check(idle=True)

    asyncio.run(scenario())


def test_tasks_running_while_the_block_runs_still_read_without_locks() -> None:
    # A task started in the block that reads while the block still holds the
    # key skips its lock (it would otherwise queue behind the waiting writer,
    # which waits for the block, which waits for the task).
    async def scenario() -> None:
        store = RangeLockedStore(MemoryStore())
        await store.set("a", buf(b"old!"))
        mgr = store.lock_manager
        async with store.consistent_reads(["a"]):
            writer = asyncio.create_task(store.set("a", buf(b"new!")))
            while mgr.stats().waiters == 0:
                await asyncio.sleep(0)
            grants = mgr.stats().grants
            got = await asyncio.wait_for(
                asyncio.gather(
                    asyncio.create_task(store.get("a", PROTO)),
                    asyncio.to_thread(lambda: store.get_sync("a", prototype=PROTO)),
                    store.getsize("a"),
                ),
                10,
            )
            assert [g.to_bytes() for g in got[:2]] == [b"old!", b"old!"] and got[2] == 4
            assert mgr.stats().grants == grants and not writer.done()
        await asyncio.wait_for(writer, 10)
        assert mgr.stats().holders == mgr.stats().waiters == 0

    asyncio.run(scenario())
