"""Reads of a shard are isolated from rewrites that move its chunks.

zarr reads a shard with two dependent store calls: the index, then the
chunks at the offsets the index gave. The interleaving narrated here pauses
the reader right after its index read, then starts a write that moves chunks
(the one-time compact -> dense conversion of a stock shard, or the appends
and compaction of a compressed shard). The writer must queue behind the
reader, and the reader must see the values from before the write; without
``ShardWritePipeline.read_batch`` holding the shard, the reader used stale
offsets (wrong values, or a decompression error). Our own readers of dense
and compressed shards (``shards/_reads``) read the index and the chunks with
no ``await`` between them, under the same hold; these tests leave the
compressed shard to zarr's reader, whose store calls they pause.
"""

from __future__ import annotations

import asyncio
import contextvars
from typing import Any

import numpy as np
import pytest
import zarr
from zarr.codecs import BytesCodec, ShardingCodec, ZstdCodec
from zarr.storage import MemoryStore

from tests._shard_helpers import OURS, STOCK, new_array
from zarr_rangelock import RangeLockedStore
from zarr_rangelock.shards import _reads

IS_READER = contextvars.ContextVar("is_reader", default=False)  # zarr's sub-tasks inherit it


class PausingStore(RangeLockedStore):
    """Pauses the reader task once, right after its first read of a shard."""

    gate: asyncio.Event
    paused: asyncio.Event
    armed = False

    async def get(self, key: str, prototype: Any = None, byte_range: Any = None) -> Any:
        buf = await super().get(key, prototype, byte_range)
        if PausingStore.armed and IS_READER.get() and key.startswith("c/"):
            PausingStore.armed = False
            PausingStore.paused.set()
            await PausingStore.gate.wait()
        return buf


async def _to_zarr(*args: Any) -> None:
    """A reader of ours (dense or packed), declining every shard: zarr reads them."""


@pytest.mark.timeout(60)
@pytest.mark.parametrize("compressed", [False, True], ids=["fixed", "zstd"])
@pytest.mark.parametrize("index_location", ["end", "start"])
def test_a_read_paused_between_index_and_chunks_sees_one_state(
    compressed: bool, index_location: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_reads, "read_packed", _to_zarr)

    async def scenario() -> None:
        inner = MemoryStore()
        codecs = [BytesCodec(), *([ZstdCodec()] if compressed else [])]
        sharding = ShardingCodec(chunk_shape=(4, 4), codecs=codecs, index_location=index_location)
        with zarr.config.set(STOCK):
            stock = new_array(inner, shape=(8, 8), chunks=(8, 8), serializer=sharding)
            stock[0:4, 4:8] = 5  # compact layout: only chunks (0, 1) and (1, 1)
            stock[4:8, 4:8] = 7
        with zarr.config.set(OURS):
            arr = zarr.open_array(PausingStore(inner), mode="r+")
        a = arr.async_array
        mgr = RangeLockedStore(inner).lock_manager
        PausingStore.gate, PausingStore.paused = asyncio.Event(), asyncio.Event()
        PausingStore.armed = True

        async def read() -> Any:
            IS_READER.set(True)
            return await a.getitem((slice(0, 8), slice(4, 8)))  # two chunks, not the shard

        async def write() -> None:
            if compressed:
                rng = np.random.default_rng(0)
                for _ in range(12):  # incompressible rewrites: appends, gaps reused, compactions
                    await a.setitem((slice(0, 4), slice(0, 4)), rng.integers(1, 2**31, (4, 4)))
            else:
                await a.setitem((slice(0, 4), slice(0, 4)), 3)  # compact -> dense

        reader = asyncio.create_task(read())
        await asyncio.wait_for(PausingStore.paused.wait(), 10)  # the reader has the index
        writer = asyncio.create_task(write())
        while mgr.stats().waiters == 0 and not writer.done():
            await asyncio.sleep(0)
        assert not writer.done(), "the write did not wait for the paused read"
        PausingStore.gate.set()
        got = await asyncio.wait_for(reader, 10)
        await asyncio.wait_for(writer, 10)
        assert (got[0:4] == 5).all() and (got[4:8] == 7).all(), got
        with zarr.config.set(STOCK):
            back = zarr.open_array(inner, mode="r")[:]
        assert (back[0:4, 4:8] == 5).all() and (back[4:8, 4:8] == 7).all()
        assert mgr.stats().holders == mgr.stats().waiters == 0

    asyncio.run(scenario())


class StallingStore(RangeLockedStore):
    """Reads of ``stall_key`` wait (until cancelled, or ``released`` is set)."""

    stall_key = "c/1/0"
    released = False

    async def get(self, key: str, prototype: Any = None, byte_range: Any = None) -> Any:
        if key == StallingStore.stall_key:
            while not StallingStore.released:  # never forever: released in the test's finally
                await asyncio.sleep(0.001)
        return await super().get(key, prototype, byte_range)


@pytest.mark.timeout(30)
@pytest.mark.asyncio
@pytest.mark.parametrize("read", ["ours", "control: zarr's read"])
async def test_a_failed_read_of_several_shards_holds_no_lock_when_it_raises(
    read: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two shards read in one call: c/0/0 is corrupt and fails at once, while
    # the read of c/1/0 stalls. zarr's read (asyncio.gather) raises the first
    # failure and leaves the other read running, holding its shard; ours
    # cancels it and waits, so nothing is held once the call has raised.
    from zarr.core.buffer import cpu
    from zarr.core.codec_pipeline import BatchedCodecPipeline

    from zarr_rangelock import ShardWritePipeline

    if read.startswith("control"):
        monkeypatch.setattr(ShardWritePipeline, "read", BatchedCodecPipeline.read)
    # Keep the shards on zarr's read path, which goes through store.get
    # (where the stall is), not on our readers' raw reads.
    monkeypatch.setattr(_reads, "read_dense", _to_zarr)
    monkeypatch.setattr(_reads, "read_packed", _to_zarr)
    inner = MemoryStore()
    store = StallingStore(inner)
    arr = new_array(store, shape=(64, 32), chunks=(8, 8), shards=(32, 32), pipeline=OURS)
    with zarr.config.set(OURS):
        arr[:] = 1
        inner._store_dict["c/0/0"] = cpu.Buffer.from_bytes(b"\xff" * 64)  # a broken index
        StallingStore.released = False
        try:
            with pytest.raises(ValueError):
                await arr.async_array.getitem(slice(None))
            holders = store.lock_manager.stats().holders
        finally:
            StallingStore.released = True
    if read.startswith("control"):
        assert holders == 1  # the other shard's read still held it
    else:
        assert holders == 0
    store.lock_manager._check()
