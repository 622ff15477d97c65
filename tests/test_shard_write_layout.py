"""What a write into a sharded array puts in the store (only the chunk's
bytes, in place at the offsets the shard's own index gives, appends and
re-pointed indexes for compressed chunks, dense layouts), and races narrated
step by step: a shard rewritten between the guess and the lock, a write
cancelled while queued. The array is ``tests/_shard_grid.py``'s.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from zarr.codecs import BytesCodec, ShardingCodec
from zarr.core.buffer import cpu, default_buffer_prototype
from zarr.storage import LocalStore

from tests._shard_grid import (
    ENCODINGS,
    SHAPE,
    SHARD,
    aligned_regions,
    create,
    inner_store,
    reopen,
    sharding,
    stock_read,
)
from tests._shard_helpers import STOCK, no_locks_left
from zarr_rangelock import RangeLockedStore
from zarr_rangelock.shards import _dense as D
from zarr_rangelock.shards import _jobs as J
from zarr_rangelock.shards import _layout as L
from zarr_rangelock.store._backends import LocalBackend
from zarr_rangelock.store._rewrite import assemble, check_pieces

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(params=["memory", "local"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


# ------------------------------------------------------------- what gets written


def _shard_path(inner: LocalStore) -> Path:
    """The file of shard (1, 1)."""
    return inner.root / "c/1/1"


def _geometry_and_index(arr: zarr.Array[Any], blob: bytes) -> tuple[L.ShardGeometry, np.ndarray]:
    codec = arr.async_array.codec_pipeline.array_bytes_codec
    assert isinstance(codec, ShardingCodec)
    from zarr.core.array_spec import ArrayConfig, ArraySpec

    spec = ArraySpec(
        shape=SHARD,
        dtype=arr.metadata.data_type,
        fill_value=0,
        config=ArrayConfig.from_dict({}),
        prototype=default_buffer_prototype(),
    )
    g = L.shard_geometry(codec, spec)
    start, end = g.index_range(len(blob))
    buf = default_buffer_prototype().buffer.from_bytes(blob[start:end])
    return g, L.decode_index(codec, buf, g.chunks_per_shard)


class _WriteSpy:
    """Counts whole-value writes (sets and rewrites) and ranged writes reaching
    the LocalStore."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.sets: list[str] = []
        self.ranges: list[tuple[str, int, int]] = []
        real_set = LocalStore.set
        real_set_sync = LocalStore.set_sync  # (the library's async sets run it in its workers)
        real_set_ranges = LocalBackend.set_ranges  # (set_range writes through it)
        real_rewrite = LocalBackend._rewrite_file

        async def spy_set(store: LocalStore, key: str, value: Any) -> None:
            self.sets.append(key)
            await real_set(store, key, value)

        def spy_set_sync(store: LocalStore, key: str, value: Any) -> None:
            self.sets.append(key)
            real_set_sync(store, key, value)

        def spy_rewrite(backend: LocalBackend, key: str, *args: Any) -> None:
            self.sets.append(key)  # a whole value built from pieces (store/_rewrite)
            real_rewrite(backend, key, *args)

        def spy_set_ranges(backend: LocalBackend, key: str, writes: Any, **kw: Any) -> None:
            self.ranges.extend((key, start, len(data)) for start, data in writes)
            real_set_ranges(backend, key, writes, **kw)

        monkeypatch.setattr(LocalStore, "set", spy_set)
        monkeypatch.setattr(LocalStore, "set_sync", spy_set_sync)
        monkeypatch.setattr(LocalBackend, "_rewrite_file", spy_rewrite)
        monkeypatch.setattr(LocalBackend, "set_ranges", spy_set_ranges)

    def clear(self) -> None:
        self.sets.clear()
        self.ranges.clear()


@pytest.mark.parametrize("index_location", ["end", "start"])
@pytest.mark.parametrize("encoding", ["fixed", "crc32c"])
def test_a_chunk_aligned_write_into_a_dense_local_shard_writes_only_that_chunks_bytes(
    encoding: str, index_location: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    inner = LocalStore(tmp_path / "data")
    arr = create(inner, encoding, index_location)
    model = np.arange(np.prod(SHAPE), dtype="i4").reshape(SHAPE)
    arr[:] = model  # creates every shard, dense
    path = _shard_path(inner)
    before = path.read_bytes()
    inode = os.stat(path).st_ino
    g, index = _geometry_and_index(arr, before)
    assert len(before) == g.dense_nbytes
    spy = _WriteSpy(monkeypatch)

    arr[10:12, 18:21] = -7  # inner chunk (1, 2) of shard (1, 1)
    model[10:12, 18:21] = -7

    rng = L.chunk_byte_range(index, (1, 2))
    assert rng is not None
    assert spy.sets == []
    assert spy.ranges == [("c/1/1", rng[0], rng[1] - rng[0])]
    after = path.read_bytes()
    assert os.stat(path).st_ino == inode
    assert after[: rng[0]] == before[: rng[0]] and after[rng[1] :] == before[rng[1] :]
    assert after[rng[0] : rng[1]] != before[rng[0] : rng[1]]
    np.testing.assert_array_equal(stock_read(inner), model)


@pytest.mark.parametrize("index_location", ["end", "start"])
@pytest.mark.parametrize("order", ["morton", "lexicographic", "colexicographic", "unordered"])
def test_a_full_stock_shard_is_written_in_place_at_the_offsets_its_own_index_gives(
    order: str, index_location: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stock zarr lays chunks out in ``subchunk_write_order``; with every chunk
    present such a shard is written in place, wherever its index puts each chunk."""
    inner = LocalStore(tmp_path / "data")
    model = np.arange(np.prod(SHAPE), dtype="i4").reshape(SHAPE) + 1
    stock = create(
        inner, locked=False, pipeline=STOCK, serializer=sharding("fixed", index_location, order)
    )
    stock[:] = model
    path = _shard_path(inner)
    inode = os.stat(path).st_ino
    arr = reopen(inner)
    spy = _WriteSpy(monkeypatch)
    for i, region in enumerate(aligned_regions(16)):
        arr[region] = np.int32(-i - 1)
        model[region] = -i - 1
    arr[8:16:3, 13] = 5  # a partial-chunk write
    model[8:16:3, 13] = 5
    assert spy.sets == []
    assert os.stat(path).st_ino == inode
    np.testing.assert_array_equal(stock_read(inner), model)


@pytest.mark.parametrize("index_location", ["end", "start"])
def test_a_compact_stock_shard_is_converted_once_then_written_in_place(
    index_location: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    inner = LocalStore(tmp_path / "data")
    stock = create(inner, "fixed", index_location, locked=False, pipeline=STOCK)
    model = np.zeros(SHAPE, dtype="i4")
    model[9:11, 14:20] = 3  # two inner chunks; stock leaves the other fourteen out
    stock[:] = model
    path = _shard_path(inner)
    arr = reopen(inner)
    g, index = _geometry_and_index(arr, path.read_bytes())
    assert not L.in_place_writable(index, g, path.stat().st_size)

    spy = _WriteSpy(monkeypatch)
    arr[8:10, 12:15] = 4
    model[8:10, 12:15] = 4
    assert spy.sets == ["c/1/1"]  # converted once, whole, under the whole-key lock
    assert path.stat().st_size == g.dense_nbytes + g.marks_nbytes  # (fill stand-ins: marks)
    inode = os.stat(path).st_ino
    spy.clear()
    arr[14:16, 21:24] = 6
    model[14:16, 21:24] = 6
    assert spy.sets == [] and len(spy.ranges) == 1
    assert os.stat(path).st_ino == inode
    np.testing.assert_array_equal(stock_read(inner), model)


@pytest.mark.parametrize("index_location", ["end", "start"])
def test_compressed_writes_append_and_repoint_the_index_then_reuse_dead_gaps(
    index_location: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    inner = LocalStore(tmp_path / "data")
    arr = create(inner, "zstd", index_location)
    rng = np.random.default_rng(7)
    model = rng.integers(0, 2**31, size=SHAPE, dtype="i4")  # incompressible
    arr[:] = model
    path = _shard_path(inner)
    spy = _WriteSpy(monkeypatch)

    value = rng.integers(0, 2**31, size=(2, 3), dtype="i4")
    arr[8:10, 12:15] = value
    model[8:10, 12:15] = value  # from the value written, not read back
    # one chunk appended into the reserved space, one index rewritten in place
    assert spy.sets == []
    assert [r[0] for r in spy.ranges] == ["c/1/1", "c/1/1"]
    np.testing.assert_array_equal(stock_read(inner), model)

    # Rewritten over and over, one chunk moves between dead gaps of its own
    # size (never onto the bytes the stored index points at): nothing grows,
    # nothing is compacted.
    spy.clear()
    size = path.stat().st_size
    index = _geometry_and_index(arr, path.read_bytes())[1]
    places = set()
    for _ in range(20):
        stored = L.chunk_byte_range(index, (1, 1))
        value = rng.integers(0, 2**31, size=(2, 3), dtype="i4")
        arr[10:12, 15:18] = value
        model[10:12, 15:18] = value
        index = _geometry_and_index(arr, path.read_bytes())[1]
        moved = L.chunk_byte_range(index, (1, 1))
        assert stored is not None and moved is not None
        assert moved[1] <= stored[0] or moved[0] >= stored[1]  # the old bytes stay
        places.add(moved)
    assert spy.sets == [] and path.stat().st_size == size
    assert len(places) == 2  # back and forth between two slots
    np.testing.assert_array_equal(stock_read(inner), model)


@pytest.mark.parametrize("index_location", ["end", "start"])
def test_compressed_chunks_that_outgrow_the_dead_gaps_compact_the_shard(
    index_location: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Chunks that grow (compressible values, then random ones) do not fit
    the gaps their smaller versions leave: they are appended until the free
    space or the dead-space bound runs out, then the shard is compacted."""
    inner = LocalStore(tmp_path / "data")
    arr = create(inner, "zstd", index_location)
    rng = np.random.default_rng(8)
    model = np.ones(SHAPE, dtype="i4")  # compresses: every chunk small
    arr[:] = model
    path = _shard_path(inner)
    spy = _WriteSpy(monkeypatch)
    sizes = []
    for r in range(0, 8, 2):  # shard (1, 1): chunk by chunk, random values
        for c in range(12, 24, 3):
            value = rng.integers(0, 2**31, size=(2, 3), dtype="i4")
            arr[8 + r : 10 + r, c : c + 3] = value
            model[8 + r : 10 + r, c : c + 3] = value
            sizes.append(path.stat().st_size)
    assert "c/1/1" in spy.sets  # compacted at least once
    g, index = _geometry_and_index(arr, path.read_bytes())
    end, live = L.dead_space(index, g)[:2]
    assert end - g.data_start - live <= J.COMPACT_DEAD_RATIO * live
    assert max(sizes) <= 3 * min(sizes)
    np.testing.assert_array_equal(stock_read(inner), model)


def test_a_compressed_shard_that_becomes_all_fill_is_deleted(tmp_path: Path) -> None:
    inner = LocalStore(tmp_path / "data")
    arr = create(inner, "zstd")
    arr[9, 13] = 5
    assert _shard_path(inner).exists()
    arr[9, 13] = 0
    assert not _shard_path(inner).exists()
    np.testing.assert_array_equal(stock_read(inner), np.zeros(SHAPE, dtype="i4"))


# ------------------------------------------------------------ races, narrated


def _relayout(blob: bytes, arr: zarr.Array, how: str) -> tuple[bytes, tuple[int, int] | None]:
    """A different but equally valid shard: chunks in reversed order, or (``drop``)
    with chunk (3, 3) left out. Returns the blob and the dropped chunk, if any."""
    g, index = _geometry_and_index(arr, blob)
    codec = arr.async_array.codec_pipeline.array_bytes_codec
    assert isinstance(codec, ShardingCodec)
    coords = list(np.ndindex(g.chunks_per_shard))
    new = L.dense_index(g, list(reversed(coords)))
    dropped = None
    if how == "drop":
        dropped = (3, 3)
        new[dropped] = L.EMPTY
    parts = []
    for c in coords:
        src, dst = L.chunk_byte_range(index, c), L.chunk_byte_range(new, c)
        if src is not None and dst is not None:
            parts.append((dst[0], blob[src[0] : src[1]]))
    out = L.assemble_shard(g, L.encode_index(codec, new), parts, g.dense_nbytes)
    return out.to_bytes(), dropped


@pytest.mark.parametrize("how", ["reorder", "drop"])
def test_a_shard_rewritten_between_guess_and_lock_is_read_again(
    how: str, kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """1. The shard is dense; the test takes the whole-key lock.
    2. A writer reads the index without a lock (its guess) and queues for the
       byte range of chunk (1, 2) that the guess gives.
    3. Holding the whole key, the test rewrites the shard with every chunk moved
       (``reorder``) or with one chunk left out (``drop``), then lets go.
    4. The writer gets its range, finds the index changed and looks again: it
       writes chunk (1, 2) where the new index says (``reorder``) or converts the
       shard under the whole-key lock (``drop``). Nothing lands where the old
       index pointed."""
    inner = inner_store(kind, tmp_path)
    arr = create(inner)
    model = np.arange(np.prod(SHAPE), dtype="i4").reshape(SHAPE) + 1
    arr[:] = model
    store = arr.store
    assert isinstance(store, RangeLockedStore)
    mgr = store.lock_manager
    region = (slice(10, 12), slice(18, 21))  # chunk (1, 2) of shard c/1/1
    checks: list[bool] = []
    real_unchanged = D._DenseJob._unchanged

    async def spy(job: D._DenseJob, handle: Any, peek: Any) -> bool:
        checks.append(await real_unchanged(job, handle, peek))
        return checks[-1]

    monkeypatch.setattr(D._DenseJob, "_unchanged", spy)

    async def main() -> None:
        async with store.locked("c/1/1", [(0, None)]) as h:
            writer = asyncio.create_task(arr.async_array.setitem(region, -5))
            while mgr.stats().waiters == 0:
                await asyncio.sleep(0)
            blob = await h.get()
            assert blob is not None
            new, dropped = _relayout(blob.to_bytes(), arr, how)
            await h.set(default_buffer_prototype().buffer.from_bytes(new))
            if dropped is not None:
                r, c = dropped
                model[8 + 2 * r : 10 + 2 * r, 12 + 3 * c : 15 + 3 * c] = 0
        await writer

    asyncio.run(main())
    # the stale guess was caught; "reorder" then guessed right, "drop" needs the
    # whole key (the shard is no longer in-place writable) and makes no guess
    assert checks == ([False, True] if how == "reorder" else [False])
    model[region] = -5
    np.testing.assert_array_equal(stock_read(inner), model)
    no_locks_left(arr)


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_a_write_cancelled_while_queued_leaves_nothing_written_or_held(
    encoding: str, kind: str, tmp_path: Path
) -> None:
    inner = inner_store(kind, tmp_path)
    arr = create(inner, encoding)
    model = np.arange(np.prod(SHAPE), dtype="i4").reshape(SHAPE)
    arr[:] = model
    store = arr.store
    assert isinstance(store, RangeLockedStore)
    mgr = store.lock_manager

    async def main() -> None:
        async with store.locked("c/1/1", [(0, None)]):
            writer = asyncio.create_task(arr.async_array.setitem((slice(9, 13), slice(5, 20)), 0))
            while mgr.stats().waiters == 0:
                await asyncio.sleep(0)
            writer.cancel()
            with pytest.raises(asyncio.CancelledError):
                await writer

    asyncio.run(main())
    # A write runs only once it holds all its shards (c/1/0, then c/1/1): the
    # lock already granted on c/1/0 is released and nothing at all was written.
    np.testing.assert_array_equal(stock_read(inner), model)
    no_locks_left(arr)


@pytest.mark.parametrize("fill", [0, 7])
def test_a_dense_layout_leaves_the_slots_of_a_zero_fill_chunk_unwritten(fill: int) -> None:
    # A rewrite starts from zeros (a LocalStore's new file: holes), so a fill
    # chunk of zero bytes is not written; any other fill is. The value is the
    # same either way: every absent chunk reads as fill.
    codec = ShardingCodec(chunk_shape=(2,), codecs=[BytesCodec()])
    g = L.ShardGeometry((4,), "end", codec._shard_index_size((4,)), 8)  # i4 pairs
    fill_chunk = cpu.Buffer.from_bytes(np.full(2, fill, "<i4").tobytes())
    data = cpu.Buffer.from_bytes(np.array([5, 6], "<i4").tobytes())
    parts, peek = D.densified(codec, g, "k", None, None, {(1,): data}, fill_chunk)
    # the last two parts are the absent marks of the fill chunks and the index
    written = {offset for offset, _ in parts[:-2]}
    assert len(written) == (1 if fill == 0 else 4)
    assert peek.size == g.dense_nbytes + g.marks_nbytes
    value = assemble(None, peek.size, check_pieces("k", peek.size, parts, None))
    chunks = np.frombuffer(value[: g.n_chunks * 8].tobytes(), "<i4").reshape(4, 2)
    slot = {c: int(peek.index[c][0]) // 8 for c in np.ndindex(4)}
    for c in np.ndindex(4):
        want = [5, 6] if c == (1,) else [fill, fill]
        assert chunks[slot[c]].tolist() == want
