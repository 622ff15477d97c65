"""Concurrent writes into sharded arrays through ``ShardWritePipeline``.

The array is 16 x 24 int32, shards of 8 x 12 (four shards), inner chunks of
2 x 3 (sixteen per shard). Every test compares what stock zarr (default
pipeline, bare store) reads back with a numpy model of the writes.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from zarr.codecs import (
    BytesCodec,
    Crc32cCodec,
    GzipCodec,
    ScaleOffset,
    ShardingCodec,
    ZstdCodec,
)
from zarr.core.buffer import cpu, default_buffer_prototype
from zarr.core.sync import sync
from zarr.storage import LocalStore, MemoryStore

from tests._processes import python_output
from tests._shard_helpers import OURS, STOCK, FirstSetWaits, new_array
from tests._threads import run_threads, run_together
from zarr_rangelock import RangeLockedStore, ShardWritePipeline
from zarr_rangelock.shards import _dense as D
from zarr_rangelock.shards import _jobs as J
from zarr_rangelock.shards import _layout as L
from zarr_rangelock.store._backends import Backend, LocalBackend
from zarr_rangelock.store._rewrite import assemble, check_pieces

pytestmark = pytest.mark.timeout(60)

SHAPE, SHARD, INNER = (16, 24), (8, 12), (2, 3)
ENCODINGS = ["fixed", "crc32c", "zstd"]
THREADS = [2, 4, 8, 16]

Region = tuple[Any, ...]


def _codecs(encoding: str) -> list[Any]:
    if encoding == "fixed":
        return [BytesCodec()]
    if encoding == "crc32c":
        return [BytesCodec(), Crc32cCodec()]
    return [BytesCodec(), ZstdCodec()]


def _inner_store(kind: str, tmp_path: Path) -> MemoryStore | LocalStore:
    return MemoryStore() if kind == "memory" else LocalStore(tmp_path / "data")


def _sharding(encoding: str, index_location: str, order: str = "morton") -> ShardingCodec:
    return ShardingCodec(
        chunk_shape=INNER,
        codecs=_codecs(encoding),
        index_location=index_location,  # type: ignore[arg-type]
        subchunk_write_order=order,  # type: ignore[arg-type]
    )


def _create(
    inner: MemoryStore | LocalStore,
    encoding: str = "fixed",
    index_location: str = "end",
    *,
    locked: bool = True,
    pipeline: dict[str, str] = OURS,
    serializer: Any = None,
    compressors: Any = None,
    filters: Any = None,
) -> zarr.Array[Any]:
    return new_array(
        RangeLockedStore(inner) if locked else inner,
        shape=SHAPE,
        chunks=SHARD,
        pipeline=pipeline,
        serializer=serializer or _sharding(encoding, index_location),
        compressors=compressors,
        **({} if filters is None else {"filters": filters}),
    )


def _stock_read(inner: MemoryStore | LocalStore) -> np.ndarray:
    """Read with stock zarr: default pipeline, the bare store."""
    with zarr.config.set(STOCK):
        arr = zarr.open_array(inner, mode="r")
        assert type(arr.async_array.codec_pipeline).__name__ == "BatchedCodecPipeline"
        return np.asarray(arr[:])


def _reopen(inner: MemoryStore | LocalStore) -> zarr.Array[Any]:
    """The array in ``inner`` again, through the wrapper and ``ShardWritePipeline``."""
    with zarr.config.set(OURS):
        return zarr.open_array(RangeLockedStore(inner))


def _assert_no_locks_left(arr: zarr.Array) -> None:
    store = arr.store
    assert isinstance(store, RangeLockedStore)
    store.lock_manager._check()
    stats = store.lock_manager.stats()
    assert stats.holders == 0 and stats.waiters == 0


def _aligned_regions(n: int) -> list[Region]:
    """``n`` distinct inner chunks of shard (1, 1), each exactly one chunk."""
    regions = []
    for i in range(n):
        r, c = divmod(i, 4)
        regions.append((slice(8 + 2 * r, 10 + 2 * r), slice(12 + 3 * c, 15 + 3 * c)))
    return regions


def _band_regions(n: int) -> list[Region]:
    """``n`` disjoint row bands with unaligned edges, each spanning columns 1..22,
    so every band crosses chunk edges and the shard edge at column 12, and most
    split inner chunks between two writers. Bands of one row use an integer index."""
    if n == 16:
        edges = list(range(17))
    else:
        edges = [0, *sorted({min(15, k * 16 // n + 1) for k in range(1, n)}), 16]
    assert len(edges) == n + 1
    return [
        (lo if hi - lo == 1 else slice(lo, hi), slice(1, 23))
        for lo, hi in itertools.pairwise(edges)
    ]


def _value(model: np.ndarray, region: Region, i: int) -> Any:
    """What writer ``i`` writes: a scalar for even ``i``, distinct numbers otherwise."""
    shape = model[region].shape
    if i % 2 == 0:
        return np.int32(i + 1)
    return np.arange(int(np.prod(shape)), dtype="i4").reshape(shape) + 1000 * (i + 1)


def _model_of(regions: list[Region]) -> tuple[np.ndarray, list[Any]]:
    model = np.zeros(SHAPE, dtype="i4")
    values = [_value(model, r, i) for i, r in enumerate(regions)]
    for r, v in zip(regions, values, strict=True):
        model[r] = v
    return model, values


@pytest.fixture(params=["memory", "local"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


# ---------------------------------------------------------------- no lost updates


@pytest.mark.parametrize("index_location", ["end", "start"])
@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize("layout", ["aligned", "bands"])
@pytest.mark.parametrize("n", THREADS)
def test_threads_writing_disjoint_regions_of_shards_lose_nothing(
    n: int, layout: str, encoding: str, index_location: str, kind: str, tmp_path: Path
) -> None:
    inner = _inner_store(kind, tmp_path)
    arr = _create(inner, encoding, index_location)
    regions = _aligned_regions(n) if layout == "aligned" else _band_regions(n)
    model, values = _model_of(regions)

    def write(i: int) -> None:
        arr[regions[i]] = values[i]

    run_together(n, write)
    np.testing.assert_array_equal(_stock_read(inner), model)
    np.testing.assert_array_equal(arr[:], model)
    _assert_no_locks_left(arr)


@pytest.mark.parametrize("index_location", ["end", "start"])
@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize("layout", ["aligned", "bands"])
@pytest.mark.parametrize("n", THREADS)
def test_asyncio_gather_of_async_array_writes_loses_nothing(
    n: int, layout: str, encoding: str, index_location: str, kind: str, tmp_path: Path
) -> None:
    inner = _inner_store(kind, tmp_path)
    arr = _create(inner, encoding, index_location).async_array
    regions = _aligned_regions(n) if layout == "aligned" else _band_regions(n)
    model, values = _model_of(regions)

    async def main() -> None:
        await asyncio.gather(*(arr.setitem(r, v) for r, v in zip(regions, values, strict=True)))

    asyncio.run(main())
    np.testing.assert_array_equal(_stock_read(inner), model)


async def _until_set_or_queued(event: asyncio.Event, mgr: Any) -> None:
    """Wait until ``event`` is set or a request queues in the lock table ``mgr``."""
    async with asyncio.timeout(10):  # the deadline only catches a hang
        while not (event.is_set() or mgr.stats().waiters > 0):
            await asyncio.sleep(0)


def _first_paused_until_the_second(original: Any, order: list[str], first: str) -> Any:
    """Wrap the backend write ``original`` (a ``Backend`` method taking the
    key first) for a race of two writers: its first call (a write of a
    ``zarr.json`` passes straight through) appends ``first`` to ``order``
    and waits, inside its writer's lock, until another call has written or
    a request queues in the lock table; then it writes and appends "first
    written". Every later call writes, appends "second written" and lets the
    first go on."""
    second_done: asyncio.Event | None = None

    async def paused(self: Backend, key: str, *args: Any, **kwargs: Any) -> None:
        nonlocal second_done
        if key.endswith("zarr.json"):
            await original(self, key, *args, **kwargs)
            return
        if second_done is None:
            second_done = asyncio.Event()
            order.append(first)
            await _until_set_or_queued(second_done, self.state.manager)
            await original(self, key, *args, **kwargs)
            order.append("first written")
        else:
            await original(self, key, *args, **kwargs)
            order.append("second written")
            second_done.set()

    return paused


@pytest.mark.parametrize("sharded", [True, False], ids=["shard", "chunk of an unsharded array"])
def test_stock_zarr_loses_an_update_when_two_writes_of_one_key_interleave(sharded: bool) -> None:
    """The control: two writers of different inner chunks of one shard (or
    of different parts of one chunk of an array that is not sharded) with
    zarr's default pipeline on a bare MemoryStore. Each reads the key,
    merges its part and sets the whole key; the first set is held until the
    second has landed (a deterministic interleaving), so the first writer's
    value, merged before the second part existed, replaces it: the second
    part is lost. The same workload through our pipeline loses nothing (the
    tests above and below, and the locked twins; the wrapper accepts only
    exact MemoryStore and LocalStore types, so this store cannot be
    wrapped)."""
    regions = _aligned_regions(2)  # both in shard (1, 1), and in chunk (1, 1) unsharded
    model, values = _model_of(regions)

    async def write_both(arr: zarr.AsyncArray[Any]) -> None:
        await asyncio.gather(*(arr.setitem(r, v) for r, v in zip(regions, values, strict=True)))

    inner = FirstSetWaits()
    make = _create if sharded else _unsharded
    asyncio.run(write_both(make(inner, locked=False, pipeline=STOCK).async_array))
    assert inner.held_sets == 2
    got = _stock_read(inner)
    assert not np.array_equal(got, model)
    lost = [i for i, r in enumerate(regions) if not np.array_equal(got[r], model[r])]
    assert len(lost) == 1  # exactly one writer's part is gone


def test_our_pipeline_keeps_both_chunks_under_the_interleaving_that_loses_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The locked twin of the control above: the same two writers, and the
    first one's shard write held until the second has finished or queued
    behind it (paused at the backend's write, an await point, inside the
    first writer's lock). Both chunks must be there."""

    regions = _aligned_regions(2)
    _, values = _model_of(regions)
    model = np.ones(SHAPE, dtype="i4")  # the prefill below, then both regions
    for r, v in zip(regions, values, strict=True):
        model[r] = v
    inner = MemoryStore()
    arr = _create(inner).async_array
    order: list[str] = []
    paused = _first_paused_until_the_second(
        Backend.set_range_async, order, "first paused, holding its chunk's range"
    )

    async def write_both() -> None:
        # not the fill value, so every shard is laid out densely
        await arr.setitem((slice(None), slice(None)), np.ones(SHAPE, dtype="i4"))
        monkeypatch.setattr(Backend, "set_range_async", paused)
        await asyncio.gather(*(arr.setitem(r, v) for r, v in zip(regions, values, strict=True)))

    asyncio.run(write_both())
    # The second writer's chunk went in while the first held its own (in
    # place, disjoint ranges), then the first's: nothing read-merged-written.
    assert order == ["first paused, holding its chunk's range", "second written", "first written"]
    np.testing.assert_array_equal(_stock_read(inner), model)


# ------------------------------------------- arrays that are not sharded
#
# Their chunks are written by zarr's own read-merge-write of each chunk, under
# the chunk key's whole-key lock (one lock request per chunk, in key order):
# stock zarr loses a write into part of a chunk when another lands between
# its read and its write, as it loses a shard's chunks.


def _unsharded(inner: MemoryStore | LocalStore, compressors: Any = None, **kw: Any) -> Any:
    """An array of SHAPE that is not sharded, in chunks of SHARD's shape."""
    return _create(inner, serializer=BytesCodec(), compressors=compressors, **kw)


@pytest.mark.parametrize("compressors", [None, ZstdCodec()], ids=["raw", "zstd"])
@pytest.mark.parametrize("layout", ["one chunk", "bands"])
@pytest.mark.parametrize("n", [2, 8])
def test_threads_writing_disjoint_parts_of_chunks_of_an_array_that_is_not_sharded_lose_nothing(
    n: int, layout: str, compressors: Any, kind: str, tmp_path: Path
) -> None:
    inner = _inner_store(kind, tmp_path)
    arr = _unsharded(inner, compressors)
    assert not isinstance(arr.async_array.codec_pipeline.array_bytes_codec, ShardingCodec)
    # "one chunk": every region in chunk (1, 1); "bands": most chunks split
    # between two writers
    regions = _aligned_regions(n) if layout == "one chunk" else _band_regions(n)
    model, values = _model_of(regions)

    def write(i: int) -> None:
        arr[regions[i]] = values[i]

    run_together(n, write)
    np.testing.assert_array_equal(_stock_read(inner), model)
    _assert_no_locks_left(arr)


def test_our_pipeline_keeps_both_parts_of_a_chunk_under_the_interleaving_that_loses_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The locked twin of the control above for a chunk of an array that is
    not sharded: the same two writers through our pipeline and a
    RangeLockedStore, the first chunk ``set`` held (inside its writer's
    lock, at the backend's write) until the second writer has finished or
    waits for a lock. The second waits for the chunk's lock, then reads the
    first's chunk and merges into it: both parts are there."""
    regions = _aligned_regions(2)
    model, values = _model_of(regions)
    inner = MemoryStore()
    arr = _unsharded(inner).async_array
    order: list[str] = []
    paused = _first_paused_until_the_second(Backend.set_value, order, "first paused")

    monkeypatch.setattr(Backend, "set_value", paused)

    async def write_both() -> None:
        await asyncio.gather(*(arr.setitem(r, v) for r, v in zip(regions, values, strict=True)))

    asyncio.run(write_both())
    assert order == ["first paused", "first written", "second written"]
    np.testing.assert_array_equal(_stock_read(inner), model)


def test_a_write_into_chunks_of_an_array_that_is_not_sharded_locks_each_chunk_it_writes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One lock request per chunk key, whole-key, in key order."""
    arr = _unsharded(MemoryStore())
    requests: list[tuple[str, list[Any]]] = []
    store = arr.store
    assert isinstance(store, RangeLockedStore)
    original = RangeLockedStore.locked

    def spy(self: RangeLockedStore, key: str, ranges: Any, **kw: Any) -> Any:
        requests.append((key, list(ranges)))
        return original(self, key, ranges, **kw)

    monkeypatch.setattr(RangeLockedStore, "locked", spy)
    arr[6:10, 10:14] = 5  # chunks (0, 0), (0, 1), (1, 0), (1, 1) of 8 x 12
    assert requests == [(f"c/{r}/{c}", [(0, None)]) for r in (0, 1) for c in (0, 1)]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("encoding", [*ENCODINGS, "not sharded"])
def test_overlapping_writes_behave_as_if_applied_one_after_the_other(
    encoding: str, kind: str, tmp_path: Path
) -> None:
    """Three writers of overlapping regions that each span all four shards
    (or, not sharded, all four chunks): the result must be one of the 3!
    serial orders, never a mix."""
    regions: list[Region] = [
        (slice(3, 13), slice(5, 20)),
        (slice(1, 11), slice(2, 17)),
        (slice(6, 15), slice(9, 23)),
    ]
    serial = []
    for perm in itertools.permutations(range(3)):
        m = np.zeros(SHAPE, dtype="i4")
        for i in perm:
            m[regions[i]] = i + 1
        serial.append(m)
    for trial in range(8):
        inner = _inner_store(kind, tmp_path / str(trial))
        arr = _unsharded(inner) if encoding == "not sharded" else _create(inner, encoding)

        def write(i: int, arr: zarr.Array[Any] = arr) -> None:
            arr[regions[i]] = np.int32(i + 1)

        run_together(3, write)
        got = _stock_read(inner)
        assert any(np.array_equal(got, m) for m in serial), got


# Codecs around the sharding codec (a filter before it, a compressor after it):
# the pipeline leaves the shard to zarr's own whole-shard write, under the
# shard's whole-key lock. (Not a transpose filter: zarr 3.4.2 itself writes
# wrong values for partial writes through transpose + sharding, even from one
# thread.)
AROUND_SHARDING: dict[str, dict[str, Any]] = {
    "outer compressor": {"compressors": [GzipCodec()]},
    "scale_offset filter": {"filters": [ScaleOffset(offset=5, scale=2)]},
}


@pytest.mark.filterwarnings("ignore:Combining a `sharding_indexed`")
@pytest.mark.parametrize("around", list(AROUND_SHARDING))
def test_a_compressor_after_the_sharding_codec_falls_back_to_zarrs_write_safely(
    kind: str, around: str, tmp_path: Path
) -> None:
    """Codecs around the sharding codec, from 8 threads: zarr's own
    whole-shard write, under the whole-key lock (the deterministic control
    and twin are below)."""
    inner = _inner_store(kind, tmp_path)
    arr = _create(inner, **AROUND_SHARDING[around])
    regions = _band_regions(8)
    model, values = _model_of(regions)

    def write(i: int) -> None:
        arr[regions[i]] = values[i]

    run_together(8, write)
    np.testing.assert_array_equal(_stock_read(inner), model)
    _assert_no_locks_left(arr)


@pytest.mark.filterwarnings("ignore:Combining a `sharding_indexed`")
@pytest.mark.parametrize("around", list(AROUND_SHARDING))
def test_stock_zarr_loses_a_chunk_of_a_shard_with_codecs_around_its_sharding_codec(
    around: str,
) -> None:
    """The control for codecs around the sharding codec: two writers of
    different inner chunks of one shard, zarr's default pipeline, the first
    shard set held until the second has landed: one chunk is lost."""
    regions = _aligned_regions(2)
    model, values = _model_of(regions)
    inner = FirstSetWaits()
    arr = _create(inner, locked=False, pipeline=STOCK, **AROUND_SHARDING[around]).async_array

    async def write_both() -> None:
        await asyncio.gather(*(arr.setitem(r, v) for r, v in zip(regions, values, strict=True)))

    asyncio.run(write_both())
    assert inner.held_sets == 2
    got = _stock_read(inner)
    lost = [i for i, r in enumerate(regions) if not np.array_equal(got[r], model[r])]
    assert len(lost) == 1  # exactly one writer's chunk is gone


@pytest.mark.filterwarnings("ignore:Combining a `sharding_indexed`")
@pytest.mark.parametrize("around", list(AROUND_SHARDING))
def test_codecs_around_the_sharding_codec_keep_both_chunks_under_the_interleaving_that_loses_one(
    around: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The locked twin of the control above: the first writer's whole-shard
    set is paused (inside its whole-key lock) until the second writer has
    queued behind it; the second then reads the shard the first wrote and
    merges its chunk into it. Both chunks must be there."""
    regions = _aligned_regions(2)
    model, values = _model_of(regions)
    inner = MemoryStore()
    arr = _create(inner, **AROUND_SHARDING[around]).async_array
    order: list[str] = []
    paused = _first_paused_until_the_second(
        Backend.set_value, order, "first paused, holding its shard"
    )

    async def write_both() -> None:
        monkeypatch.setattr(Backend, "set_value", paused)
        await asyncio.gather(*(arr.setitem(r, v) for r, v in zip(regions, values, strict=True)))

    asyncio.run(write_both())
    # The second writer waited for the first's whole-key lock: no interleaving.
    assert order == ["first paused, holding its shard", "first written", "second written"]
    np.testing.assert_array_equal(_stock_read(inner), model)
    _assert_no_locks_left(arr)  # type: ignore[arg-type]


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
    arr = _create(inner, encoding, index_location)
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
    np.testing.assert_array_equal(_stock_read(inner), model)


@pytest.mark.parametrize("index_location", ["end", "start"])
@pytest.mark.parametrize("order", ["morton", "lexicographic", "colexicographic", "unordered"])
def test_a_full_stock_shard_is_written_in_place_at_the_offsets_its_own_index_gives(
    order: str, index_location: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stock zarr lays chunks out in ``subchunk_write_order``; with every chunk
    present such a shard is written in place, wherever its index puts each chunk."""
    inner = LocalStore(tmp_path / "data")
    model = np.arange(np.prod(SHAPE), dtype="i4").reshape(SHAPE) + 1
    stock = _create(
        inner, locked=False, pipeline=STOCK, serializer=_sharding("fixed", index_location, order)
    )
    stock[:] = model
    path = _shard_path(inner)
    inode = os.stat(path).st_ino
    arr = _reopen(inner)
    spy = _WriteSpy(monkeypatch)
    for i, region in enumerate(_aligned_regions(16)):
        arr[region] = np.int32(-i - 1)
        model[region] = -i - 1
    arr[8:16:3, 13] = 5  # a partial-chunk write
    model[8:16:3, 13] = 5
    assert spy.sets == []
    assert os.stat(path).st_ino == inode
    np.testing.assert_array_equal(_stock_read(inner), model)


@pytest.mark.parametrize("index_location", ["end", "start"])
def test_a_compact_stock_shard_is_converted_once_then_written_in_place(
    index_location: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    inner = LocalStore(tmp_path / "data")
    stock = _create(inner, "fixed", index_location, locked=False, pipeline=STOCK)
    model = np.zeros(SHAPE, dtype="i4")
    model[9:11, 14:20] = 3  # two inner chunks; stock leaves the other fourteen out
    stock[:] = model
    path = _shard_path(inner)
    arr = _reopen(inner)
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
    np.testing.assert_array_equal(_stock_read(inner), model)


@pytest.mark.parametrize("index_location", ["end", "start"])
def test_compressed_writes_append_and_repoint_the_index_then_reuse_dead_gaps(
    index_location: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    inner = LocalStore(tmp_path / "data")
    arr = _create(inner, "zstd", index_location)
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
    np.testing.assert_array_equal(_stock_read(inner), model)

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
    np.testing.assert_array_equal(_stock_read(inner), model)


@pytest.mark.parametrize("index_location", ["end", "start"])
def test_compressed_chunks_that_outgrow_the_dead_gaps_compact_the_shard(
    index_location: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Chunks that grow (compressible values, then random ones) do not fit
    the gaps their smaller versions leave: they are appended until the free
    space or the dead-space bound runs out, then the shard is compacted."""
    inner = LocalStore(tmp_path / "data")
    arr = _create(inner, "zstd", index_location)
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
    np.testing.assert_array_equal(_stock_read(inner), model)


def test_a_compressed_shard_that_becomes_all_fill_is_deleted(tmp_path: Path) -> None:
    inner = LocalStore(tmp_path / "data")
    arr = _create(inner, "zstd")
    arr[9, 13] = 5
    assert _shard_path(inner).exists()
    arr[9, 13] = 0
    assert not _shard_path(inner).exists()
    np.testing.assert_array_equal(_stock_read(inner), np.zeros(SHAPE, dtype="i4"))


# ------------------------------------------------------------ default behaviour


@pytest.fixture
def no_shard_jobs(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    async def refuse(*args: Any) -> Any:
        raise AssertionError("the shard-writing path was taken")

    monkeypatch.setattr(J._Job, "acquire", refuse)
    yield


@pytest.mark.usefixtures("no_shard_jobs")
def test_plain_stores_get_zarrs_default_write() -> None:
    inner = MemoryStore()
    sharded = _create(inner, locked=False)
    sharded[1:5, 2:9] = 8
    model = np.zeros(SHAPE, dtype="i4")
    model[1:5, 2:9] = 8
    np.testing.assert_array_equal(_stock_read(inner), model)


def test_the_pipeline_name_resolves_in_a_fresh_process_through_the_entry_point() -> None:
    code = (
        "import sys, zarr\n"
        "from zarr.storage import MemoryStore\n"
        "assert 'zarr_rangelock' not in sys.modules\n"
        "with zarr.config.set({'codec_pipeline.path': 'zarr_rangelock.ShardWritePipeline'}):\n"
        "    a = zarr.create_array(MemoryStore(), shape=(4,), chunks=(2,), dtype='i4')\n"
        "print(type(a.async_array.codec_pipeline).__module__,\n"
        "      type(a.async_array.codec_pipeline).__qualname__)\n"
    )
    out = python_output(code, timeout=60)
    assert out.split() == ["zarr_rangelock", "ShardWritePipeline"]


def test_zarr_builds_inner_and_index_pipelines_from_the_same_class_harmlessly() -> None:
    inner = MemoryStore()
    arr = _create(inner)
    codec = arr.async_array.codec_pipeline.array_bytes_codec
    assert isinstance(codec, ShardingCodec)
    with zarr.config.set(OURS):
        assert isinstance(codec.codec_pipeline, ShardWritePipeline)
        arr[0:3, 0:4] = 2
    blob = sync(inner.get("c/0/0", default_buffer_prototype()))
    assert blob is not None
    model = np.zeros(SHAPE, dtype="i4")
    model[0:3, 0:4] = 2
    np.testing.assert_array_equal(_stock_read(inner), model)


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
    inner = _inner_store(kind, tmp_path)
    arr = _create(inner)
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
    np.testing.assert_array_equal(_stock_read(inner), model)
    _assert_no_locks_left(arr)


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_a_write_cancelled_while_queued_leaves_nothing_written_or_held(
    encoding: str, kind: str, tmp_path: Path
) -> None:
    inner = _inner_store(kind, tmp_path)
    arr = _create(inner, encoding)
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
    np.testing.assert_array_equal(_stock_read(inner), model)
    _assert_no_locks_left(arr)


# ------------------------------------------------------- random writes, one at a time

RANDOM_CASES: dict[str, tuple[Any, tuple[int, ...], tuple[int, ...], str]] = {
    "nested-sharding": (
        ShardingCodec(
            chunk_shape=(4, 6), codecs=[ShardingCodec(chunk_shape=(2, 3), codecs=[BytesCodec()])]
        ),
        (16, 24),
        (8, 12),
        "i4",
    ),
    "1d-index-start-ragged-edge": (
        ShardingCodec(chunk_shape=(5,), codecs=[BytesCodec()], index_location="start"),
        (97,),
        (20,),
        "u1",
    ),
    "3d-zstd": (
        ShardingCodec(chunk_shape=(2, 2, 2), codecs=[BytesCodec(), ZstdCodec()]),
        (7, 9, 5),
        (4, 4, 4),
        "i4",
    ),
    "3d-big-endian-crc32c": (
        ShardingCodec(chunk_shape=(2, 2, 2), codecs=[BytesCodec(endian="big"), Crc32cCodec()]),
        (7, 9, 5),
        (4, 4, 4),
        "f8",
    ),
}


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("case", list(RANDOM_CASES))
def test_random_region_writes_match_a_numpy_model(case: str, seed: int) -> None:
    serializer, shape, chunks, dtype = RANDOM_CASES[case]
    print(f"case={case} seed={seed}")
    rng = np.random.default_rng(seed)
    inner = MemoryStore()
    arr = new_array(
        RangeLockedStore(inner),
        shape=shape,
        chunks=chunks,
        pipeline=OURS,
        dtype=dtype,
        serializer=serializer,
    )
    model = np.zeros(shape, dtype=dtype)
    for _ in range(40):
        starts = [int(rng.integers(0, s)) for s in shape]
        sel = tuple(
            slice(lo, lo + int(rng.integers(1, s - lo + 1)))
            for lo, s in zip(starts, shape, strict=True)
        )
        value: Any = rng.integers(0, 100, size=model[sel].shape).astype(dtype)
        if rng.random() < 0.3:
            value = np.array(rng.integers(0, 100)).astype(dtype)[()]
        if rng.random() < 0.2:
            value = np.zeros(model[sel].shape, dtype=dtype)  # back to the fill value
        arr[sel] = value
        model[sel] = value
        point = tuple(int(rng.integers(0, s)) for s in shape)
        arr[point] = 7
        model[point] = 7
    np.testing.assert_array_equal(_stock_read(inner), model)


def test_a_multi_shard_write_and_a_delete_dir_do_not_deadlock(kind: str, tmp_path: Path) -> None:
    """1. The test holds shard c/1/0.
    2. A write of a region spanning c/1/0 and c/1/1 queues for c/1/0.
    3. ``delete_dir("c")`` queues a prefix lock: behind the test and the writer.
    4. The test lets go of c/1/0: the writer gets it and now wants c/1/1, where
       the earlier delete_dir is queued, which itself waits for the writer's
       c/1/0. Holding c/1/0 while waiting would deadlock; the writer instead
       gives up its held shards after a short wait, lets the delete through,
       and starts over. The write lands after the delete."""
    inner = _inner_store(kind, tmp_path)
    arr = _create(inner)
    arr[:] = np.arange(np.prod(SHAPE), dtype="i4").reshape(SHAPE)
    store = arr.store
    assert isinstance(store, RangeLockedStore)
    mgr = store.lock_manager
    region = (slice(9, 13), slice(5, 20))

    async def main() -> None:
        async with store.locked("c/1/0", [(0, None)]):
            writer = asyncio.create_task(arr.async_array.setitem(region, 1))
            while mgr.stats().waiters < 1:
                await asyncio.sleep(0)
            deleter = asyncio.create_task(store.delete_dir("c"))
            while mgr.stats().waiters < 2:
                await asyncio.sleep(0)
        await asyncio.wait_for(asyncio.gather(writer, deleter), 10)

    asyncio.run(main())
    model = np.zeros(SHAPE, dtype="i4")
    model[region] = 1
    np.testing.assert_array_equal(_stock_read(inner), model)
    _assert_no_locks_left(arr)


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_threads_and_tasks_of_another_event_loop_writing_at_once_lose_nothing(
    encoding: str, kind: str, tmp_path: Path
) -> None:
    """Eight threads use the sync API (their writes run on zarr's own event loop)
    while eight tasks of a second loop write through ``AsyncArray``; one lock
    table serves both loops."""
    inner = _inner_store(kind, tmp_path)
    arr = _create(inner, encoding)
    regions = _band_regions(16)
    model, values = _model_of(regions)
    barrier = threading.Barrier(9)

    def thread_write(i: int) -> None:
        barrier.wait()
        arr[regions[i]] = values[i]

    async def tasks() -> None:
        await asyncio.to_thread(barrier.wait)
        await asyncio.gather(
            *(arr.async_array.setitem(regions[i], values[i]) for i in range(8, 16))
        )

    run_threads(
        *(functools.partial(thread_write, i) for i in range(8)), lambda: asyncio.run(tasks())
    )
    np.testing.assert_array_equal(_stock_read(inner), model)
    _assert_no_locks_left(arr)


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
