"""A shard of fixed-size inner chunks filling up, one chunk a write (an
acquisition into a new array, on a store without ``dense_shards``): how
often it is rewritten whole on its way to the dense layout, and how large it
is meanwhile (``_placement.compacted``'s ``most``, ``_jobs.compact_most``).

A compact shard is made, appended to in its free space, compacted when that
runs out (rewritten whole: a new file on a LocalStore), and laid out densely
once a quarter of its chunks hold data. A compaction of such a shard leaves
room for up to four times its live chunks, never past the most it holds
while compact: for 256 chunks of a shard, whole writes at the 1st, 6th,
31st and 64th chunk (by the free-space ratio alone it was eight: at 1, 6,
11, 17, 26, 40, 61 and 64). The tests pin that sequence through every API
and both stores, and show that the new file's free space is holes on a
LocalStore. Values are checked against stock zarr's read.
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync
from zarr.storage import LocalStore, MemoryStore

from tests._fds import has_holes
from tests._writer_helpers import chunk_region, locked_array, stock_read
from zarr_rangelock import ShardWriter
from zarr_rangelock.shards import _jobs as J
from zarr_rangelock.shards import _placement as P

pytestmark = pytest.mark.timeout(120)

# 4 KiB inner chunks, 256 to the one shard (1 MiB dense, and the index).
SHAPE = CHUNKS_PER_SHARD = (16, 16)
CHUNKS = (32, 32)
ARRAY = (SHAPE[0] * CHUNKS[0], SHAPE[1] * CHUNKS[1])
CHUNK_BYTES = 32 * 32 * 4
INDEX_BYTES = 256 * 16 + 4
MOST = 63  # a quarter of 256, less one: the 64th live chunk lays it out densely

#: Chunks a compact shard has room for after each whole write, by the live
#: chunks that write left: made with one (room for 5), compacted at 6 (30)
#: and 31 (63), dense at 64 (every chunk).
ROOM = {1: 5, 6: 30, 31: 63, 64: 256}


def _size(live: int) -> int:
    """The shard's size once ``live`` chunks hold data (written in any order)."""
    room = ROOM[max(k for k in ROOM if k <= live)]
    return INDEX_BYTES + room * CHUNK_BYTES


def _write(arr: zarr.Array[Any], api: str, coords: tuple[int, int], value: np.ndarray) -> None:
    region = chunk_region(coords, ARRAY, CHUNKS)
    if api == "write_chunk":
        ShardWriter(arr).write_chunk(coords, value)
    elif api == "async":
        asyncio.run(arr._async_array.setitem(region, value))
    else:
        arr[region] = value


def test_a_compaction_leaves_room_for_four_times_the_live_chunks_up_to_the_most() -> None:
    # compacted() alone, for 1 to 63 live chunks: the free space is what the
    # ratio's rule gives (half the live bytes, at least four chunks), or room
    # for four times the live chunks where that is more, but not past the
    # most; so the shard is never more than five times its live chunks. For
    # chunks of variable size (most None), the ratio's rule alone.
    g = P.L.ShardGeometry(SHAPE, "end", INDEX_BYTES, CHUNK_BYTES)
    assert J.compact_most(_Store(dense_shards=False), g) == MOST
    assert J.compact_most(_Store(dense_shards=True), g) is None
    assert (
        J.compact_most(
            _Store(dense_shards=False), P.L.ShardGeometry(SHAPE, "end", INDEX_BYTES, None)
        )
        is None
    )
    order = list(np.ndindex(SHAPE))
    for live in range(1, MOST + 1):
        new = {c: b"x" * CHUNK_BYTES for c in order[:live]}
        ratio = max(live * CHUNK_BYTES // 2, 4 * CHUNK_BYTES)
        layout = P.compacted(g, None, new, order, MOST)
        assert layout is not None
        free = layout[0] - INDEX_BYTES - live * CHUNK_BYTES
        assert free == max(ratio, min(4 * live, MOST - live) * CHUNK_BYTES), live
        assert live * CHUNK_BYTES + free <= 5 * live * CHUNK_BYTES
        alone = P.compacted(g, None, new, order)
        assert alone is not None
        assert alone[0] == INDEX_BYTES + live * CHUNK_BYTES + ratio


class _Store:
    def __init__(self, *, dense_shards: bool) -> None:
        self.dense_shards = dense_shards


@pytest.mark.parametrize("api", ["write_chunk", "plain", "async"])
@pytest.mark.parametrize("kind", ["local", "memory"])
def test_a_filling_shard_is_rewritten_whole_four_times_on_its_way_to_dense(
    api: str, kind: str, tmp_path: Path
) -> None:
    inner = LocalStore(tmp_path) if kind == "local" else MemoryStore()
    arr = locked_array(inner, shape=ARRAY, chunks=CHUNKS, shards=ARRAY, dtype="i4")
    order = list(np.ndindex(SHAPE))
    seed = random.randrange(1 << 32)
    print(f"seed {seed}")
    random.Random(seed).shuffle(order)
    model = np.zeros(ARRAY, dtype="i4")
    path = tmp_path / "c" / "0" / "0"
    inodes: list[int] = []
    sizes: list[int] = []
    for live, coords in enumerate(order, 1):
        value = np.full(CHUNKS, live, dtype="i4")
        _write(arr, api, coords, value)
        model[chunk_region(coords, ARRAY, CHUNKS)] = value
        buf = sync(arr.store.get("c/0/0", default_buffer_prototype()))
        assert buf is not None
        sizes.append(len(buf))
        assert len(buf) == _size(live), f"after {live} chunks"
        if kind == "local":
            stat = path.stat()
            if not inodes or inodes[-1] != stat.st_ino:
                inodes.append(stat.st_ino)
            if live == 6 and has_holes(path):  # (a file system that keeps holes)
                # Room for 30 chunks, 6 written: the rest was never written.
                assert stat.st_blocks * 512 < 12 * CHUNK_BYTES + 2 * INDEX_BYTES
    if kind == "local":
        assert len(inodes) == len(ROOM)  # made, compacted twice, laid out densely
    assert sorted(set(sizes)) == [_size(k) for k in ROOM]
    np.testing.assert_array_equal(stock_read(inner), model)
