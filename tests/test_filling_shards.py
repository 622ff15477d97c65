"""A shard filling up, one chunk a write (an acquisition into a new array):
how often it is rewritten whole, and how large it is meanwhile
(``_placement.compacted``'s ``most``, ``_jobs.compact_most``).

A compact shard is made, appended to in its free space, and compacted when
that runs out (rewritten whole: a new file on a LocalStore); a shard of
fixed-size (uncompressed) chunks is laid out densely once a quarter of its
chunks hold data. A compaction leaves room for up to four times its live
chunks, never past the most it holds while compact: for 256 chunks of a
shard, whole writes at the 1st, 6th, 31st and 64th chunk uncompressed
(made, compacted twice, laid out densely), and at the 1st, 6th, 31st and
156th compressed, chunks of one size (by the free-space ratio alone: 1, 6,
11, 17, 26, 40, 61 and 64; compressed 1, 6, 11, 17, 26, 40, 61, 92, 139 and
209). The tests pin those sequences through ``write_chunk``, the plain and
the async API, on both stores, and show that the new file's free space is
holes on a LocalStore. Values are checked against stock zarr's read.
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
from zarr_rangelock import RangeLockedStore, ShardWriter
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
DENSE = P.L.ShardGeometry(SHAPE, "end", INDEX_BYTES, CHUNK_BYTES)

#: Chunks a shard has room for after each whole write, by the live chunks
#: that write left. Uncompressed: made with one (room for 5), compacted at 6
#: (30) and 31 (63), dense at 64 (every chunk). Compressed (chunks of one
#: size): made, compacted at 6 (30), 31 (155) and 156 (every chunk).
ROOM = {
    "raw": {1: 5, 6: 30, 31: 63, 64: 256},
    "zstd": {1: 5, 6: 30, 31: 155, 156: 256},
}


def _write(arr: zarr.Array[Any], api: str, coords: tuple[int, int], value: np.ndarray) -> None:
    region = chunk_region(coords, ARRAY, CHUNKS)
    if api == "write_chunk":
        ShardWriter(arr).write_chunk(coords, value)
    elif api == "async":
        asyncio.run(arr._async_array.setitem(region, value))
    else:
        arr[region] = value


def test_a_compaction_leaves_room_for_four_times_the_live_chunks_up_to_the_most() -> None:
    # compacted() alone, for 1 to 255 live chunks of fixed and of varied
    # sizes: the free space is what the ratio's rule gives (half the live
    # bytes, at least four of the largest chunk), or room for four times the
    # live chunks at their mean size where that is more, but not past the
    # most; so the free space is never more than four times the live bytes.
    # Without most, the ratio's rule alone.
    fixed = P.L.ShardGeometry(SHAPE, "end", INDEX_BYTES, CHUNK_BYTES)
    varied = P.L.ShardGeometry(SHAPE, "end", INDEX_BYTES, None)
    assert J.compact_most(RangeLockedStore(MemoryStore()), fixed) == MOST
    assert J.compact_most(RangeLockedStore(MemoryStore(), dense_shards=True), fixed) is None
    for dense_shards in (False, True):  # (compressed shards are never dense)
        assert (
            J.compact_most(RangeLockedStore(MemoryStore(), dense_shards=dense_shards), varied)
            == 256
        )
    order = list(np.ndindex(SHAPE))
    sizes = random.Random(0).choices(range(1, 3 * CHUNK_BYTES), k=256)
    for g, most in ((fixed, MOST), (varied, 256)):
        for live in range(1, most):
            n = [CHUNK_BYTES] * live if g is fixed else sizes[:live]
            new = {c: b"x" * k for c, k in zip(order, n, strict=False)}
            ratio = max(sum(n) // 2, 4 * max(n))
            layout = P.compacted(g, None, new, order, most)
            assert layout is not None
            free = layout[0] - INDEX_BYTES - sum(n)
            mean = sum(n) // live
            assert free == max(ratio, min(4 * live, most - live) * mean), (g, live)
            assert free <= 4 * sum(n)
            alone = P.compacted(g, None, new, order)
            assert alone is not None
            assert alone[0] == INDEX_BYTES + sum(n) + ratio


@pytest.mark.parametrize("api", ["write_chunk", "plain", "async"])
@pytest.mark.parametrize("kind", ["local", "memory"])
@pytest.mark.parametrize("compressor", ["raw", "zstd"])
def test_a_filling_shard_is_rewritten_whole_four_times(
    compressor: str, api: str, kind: str, tmp_path: Path
) -> None:
    inner = LocalStore(tmp_path) if kind == "local" else MemoryStore()
    arr = locked_array(
        inner, shape=ARRAY, chunks=CHUNKS, shards=ARRAY, dtype="i4", compressor=compressor
    )
    room = ROOM[compressor]
    order = list(np.ndindex(SHAPE))
    seed = random.randrange(1 << 32)
    print(f"seed {seed}")
    random.Random(seed).shuffle(order)
    values = np.random.default_rng(seed)  # (random: zstd keeps every chunk one size)
    model = np.zeros(ARRAY, dtype="i4")
    path = tmp_path / "c" / "0" / "0"
    inodes: list[int] = []
    sizes: list[int] = []
    chunk = CHUNK_BYTES
    for live, coords in enumerate(order, 1):
        value = values.integers(-(2**31), 2**31, CHUNKS, dtype="i4")
        _write(arr, api, coords, value)
        model[chunk_region(coords, ARRAY, CHUNKS)] = value
        buf = sync(arr.store.get("c/0/0", default_buffer_prototype()))
        assert buf is not None
        if live == 1:  # the first chunk's size, by the index (compressed: not known before)
            rows = np.frombuffer(buf.to_bytes()[-INDEX_BYTES:-4], dtype="<u8").reshape(-1, 2)
            (chunk,) = [int(n) for _, n in rows.tolist() if n != P.L.EMPTY]
            assert compressor == "zstd" or chunk == CHUNK_BYTES
        sizes.append(len(buf))
        want = room[max(k for k in room if k <= live)]
        # laid out densely (uncompressed, at 64): the absent marks after the
        # chunks (_layout), set when the shard had stand-ins, kept since
        marks = DENSE.marks_nbytes if compressor == "raw" and want == 256 else 0
        assert len(buf) == INDEX_BYTES + want * chunk + marks, f"after {live} chunks"
        if kind == "local":
            stat = path.stat()
            if not inodes or inodes[-1] != stat.st_ino:
                inodes.append(stat.st_ino)
            if live == 6 and has_holes(path):  # (a file system that keeps holes)
                # Room for 30 chunks, 6 written: the rest was never written.
                assert stat.st_blocks * 512 < 12 * chunk + 2 * INDEX_BYTES
    if kind == "local":
        assert len(inodes) == len(room)  # made, then rewritten whole three times
    dense = DENSE.marks_nbytes if compressor == "raw" else 0  # (as above)
    assert sorted(set(sizes)) == [
        INDEX_BYTES + r * chunk + (dense if r == 256 else 0) for r in room.values()
    ]
    np.testing.assert_array_equal(stock_read(inner), model)


@pytest.mark.parametrize("index_location", ["end", "start"])
@pytest.mark.parametrize("compressor", ["raw", "zstd"])
def test_the_writers_fast_path_and_the_pipeline_fill_a_shard_byte_for_byte_alike(
    compressor: str, index_location: str, tmp_path: Path
) -> None:
    # The same chunks in the same order through write_chunk (the fast path,
    # _fastpaths._compact) and the plain API (the pipeline's job): the same
    # shard bytes after every write, through every compaction and the dense
    # layout. Chunk values of varied compressibility, so compressed chunks
    # differ in size and the room is counted at their mean size. With the
    # index at the start too, where the chunks (and the free space) follow
    # it.
    fast, plain = (
        locked_array(
            LocalStore(tmp_path / name),
            shape=ARRAY,
            chunks=CHUNKS,
            shards={"shape": ARRAY, "index_location": index_location},
            dtype="i4",
            compressor=compressor,
        )
        for name in ("fast", "plain")
    )
    writer = ShardWriter(fast)
    order = list(np.ndindex(SHAPE))
    seed = random.randrange(1 << 32)
    print(f"seed {seed}")
    random.Random(seed).shuffle(order)
    rng = np.random.default_rng(seed)
    sizes = set()
    for live, coords in enumerate(order, 1):
        spread = int(rng.integers(1, 2**31))  # (small: compresses well)
        value = rng.integers(-spread, spread, CHUNKS, dtype="i4")
        writer.write_chunk(coords, value)
        plain[chunk_region(coords, ARRAY, CHUNKS)] = value
        got = (tmp_path / "fast" / "c" / "0" / "0").read_bytes()
        assert got == (tmp_path / "plain" / "c" / "0" / "0").read_bytes(), f"after {live}"
        sizes.add(len(got))
    assert len(sizes) >= 4  # (made, compacted at least twice, ...)
    np.testing.assert_array_equal(stock_read(LocalStore(tmp_path / "fast")), plain[:])
