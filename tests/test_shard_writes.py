"""Concurrent writes into sharded arrays through ``ShardWritePipeline``.

The array (``tests/_shard_grid.py``) is 16 x 24 int32, shards of 8 x 12
(four shards), inner chunks of 2 x 3 (sixteen per shard). Every test
compares what stock zarr (default pipeline, bare store) reads back with a
numpy model of the writes. What the writes put in the store, and races
narrated step by step, are in ``test_shard_write_layout.py``.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from zarr.codecs import BytesCodec, Crc32cCodec, GzipCodec, ScaleOffset, ShardingCodec, ZstdCodec
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync
from zarr.storage import LocalStore, MemoryStore

from tests._processes import python_output
from tests._shard_grid import (
    ENCODINGS,
    SHAPE,
    THREADS,
    Region,
    aligned_regions,
    band_regions,
    create,
    inner_store,
    model_of,
    stock_read,
)
from tests._shard_helpers import OURS, STOCK, FirstSetWaits, new_array, no_locks_left
from tests._threads import run_threads, run_together
from zarr_rangelock import RangeLockedStore, ShardWritePipeline
from zarr_rangelock.shards import _jobs as J
from zarr_rangelock.store._backends import Backend

pytestmark = pytest.mark.timeout(60)


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
    inner = inner_store(kind, tmp_path)
    arr = create(inner, encoding, index_location)
    regions = aligned_regions(n) if layout == "aligned" else band_regions(n)
    model, values = model_of(regions)

    def write(i: int) -> None:
        arr[regions[i]] = values[i]

    run_together(n, write)
    np.testing.assert_array_equal(stock_read(inner), model)
    np.testing.assert_array_equal(arr[:], model)
    no_locks_left(arr)


@pytest.mark.parametrize("index_location", ["end", "start"])
@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize("layout", ["aligned", "bands"])
@pytest.mark.parametrize("n", THREADS)
def test_asyncio_gather_of_async_array_writes_loses_nothing(
    n: int, layout: str, encoding: str, index_location: str, kind: str, tmp_path: Path
) -> None:
    inner = inner_store(kind, tmp_path)
    arr = create(inner, encoding, index_location).async_array
    regions = aligned_regions(n) if layout == "aligned" else band_regions(n)
    model, values = model_of(regions)

    async def main() -> None:
        await asyncio.gather(*(arr.setitem(r, v) for r, v in zip(regions, values, strict=True)))

    asyncio.run(main())
    np.testing.assert_array_equal(stock_read(inner), model)


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
    regions = aligned_regions(2)  # both in shard (1, 1), and in chunk (1, 1) unsharded
    model, values = model_of(regions)

    async def write_both(arr: zarr.AsyncArray[Any]) -> None:
        await asyncio.gather(*(arr.setitem(r, v) for r, v in zip(regions, values, strict=True)))

    inner = FirstSetWaits()
    make = create if sharded else _unsharded
    asyncio.run(write_both(make(inner, locked=False, pipeline=STOCK).async_array))
    assert inner.held_sets == 2
    got = stock_read(inner)
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

    regions = aligned_regions(2)
    _, values = model_of(regions)
    model = np.ones(SHAPE, dtype="i4")  # the prefill below, then both regions
    for r, v in zip(regions, values, strict=True):
        model[r] = v
    inner = MemoryStore()
    arr = create(inner).async_array
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
    np.testing.assert_array_equal(stock_read(inner), model)


# ------------------------------------------- arrays that are not sharded
#
# Their chunks are written by zarr's own read-merge-write of each chunk, under
# the chunk key's whole-key lock (one lock request per chunk, in key order):
# stock zarr loses a write into part of a chunk when another lands between
# its read and its write, as it loses a shard's chunks.


def _unsharded(inner: MemoryStore | LocalStore, compressors: Any = None, **kw: Any) -> Any:
    """An array of SHAPE that is not sharded, in chunks of SHARD's shape."""
    return create(inner, serializer=BytesCodec(), compressors=compressors, **kw)


@pytest.mark.parametrize("compressors", [None, ZstdCodec()], ids=["raw", "zstd"])
@pytest.mark.parametrize("layout", ["one chunk", "bands"])
@pytest.mark.parametrize("n", [2, 8])
def test_threads_writing_disjoint_parts_of_chunks_of_an_array_that_is_not_sharded_lose_nothing(
    n: int, layout: str, compressors: Any, kind: str, tmp_path: Path
) -> None:
    inner = inner_store(kind, tmp_path)
    arr = _unsharded(inner, compressors)
    assert not isinstance(arr.async_array.codec_pipeline.array_bytes_codec, ShardingCodec)
    # "one chunk": every region in chunk (1, 1); "bands": most chunks split
    # between two writers
    regions = aligned_regions(n) if layout == "one chunk" else band_regions(n)
    model, values = model_of(regions)

    def write(i: int) -> None:
        arr[regions[i]] = values[i]

    run_together(n, write)
    np.testing.assert_array_equal(stock_read(inner), model)
    no_locks_left(arr)


def test_our_pipeline_keeps_both_parts_of_a_chunk_under_the_interleaving_that_loses_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The locked twin of the control above for a chunk of an array that is
    not sharded: the same two writers through our pipeline and a
    RangeLockedStore, the first chunk ``set`` held (inside its writer's
    lock, at the backend's write) until the second writer has finished or
    waits for a lock. The second waits for the chunk's lock, then reads the
    first's chunk and merges into it: both parts are there."""
    regions = aligned_regions(2)
    model, values = model_of(regions)
    inner = MemoryStore()
    arr = _unsharded(inner).async_array
    order: list[str] = []
    paused = _first_paused_until_the_second(Backend.set_value, order, "first paused")

    monkeypatch.setattr(Backend, "set_value", paused)

    async def write_both() -> None:
        await asyncio.gather(*(arr.setitem(r, v) for r, v in zip(regions, values, strict=True)))

    asyncio.run(write_both())
    assert order == ["first paused", "first written", "second written"]
    np.testing.assert_array_equal(stock_read(inner), model)


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
        inner = inner_store(kind, tmp_path / str(trial))
        arr = _unsharded(inner) if encoding == "not sharded" else create(inner, encoding)

        def write(i: int, arr: zarr.Array[Any] = arr) -> None:
            arr[regions[i]] = np.int32(i + 1)

        run_together(3, write)
        got = stock_read(inner)
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
    inner = inner_store(kind, tmp_path)
    arr = create(inner, **AROUND_SHARDING[around])
    regions = band_regions(8)
    model, values = model_of(regions)

    def write(i: int) -> None:
        arr[regions[i]] = values[i]

    run_together(8, write)
    np.testing.assert_array_equal(stock_read(inner), model)
    no_locks_left(arr)


@pytest.mark.filterwarnings("ignore:Combining a `sharding_indexed`")
@pytest.mark.parametrize("around", list(AROUND_SHARDING))
def test_stock_zarr_loses_a_chunk_of_a_shard_with_codecs_around_its_sharding_codec(
    around: str,
) -> None:
    """The control for codecs around the sharding codec: two writers of
    different inner chunks of one shard, zarr's default pipeline, the first
    shard set held until the second has landed: one chunk is lost."""
    regions = aligned_regions(2)
    model, values = model_of(regions)
    inner = FirstSetWaits()
    arr = create(inner, locked=False, pipeline=STOCK, **AROUND_SHARDING[around]).async_array

    async def write_both() -> None:
        await asyncio.gather(*(arr.setitem(r, v) for r, v in zip(regions, values, strict=True)))

    asyncio.run(write_both())
    assert inner.held_sets == 2
    got = stock_read(inner)
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
    regions = aligned_regions(2)
    model, values = model_of(regions)
    inner = MemoryStore()
    arr = create(inner, **AROUND_SHARDING[around]).async_array
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
    np.testing.assert_array_equal(stock_read(inner), model)
    no_locks_left(arr)  # type: ignore[arg-type]


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
    sharded = create(inner, locked=False)
    sharded[1:5, 2:9] = 8
    model = np.zeros(SHAPE, dtype="i4")
    model[1:5, 2:9] = 8
    np.testing.assert_array_equal(stock_read(inner), model)


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
    arr = create(inner)
    codec = arr.async_array.codec_pipeline.array_bytes_codec
    assert isinstance(codec, ShardingCodec)
    with zarr.config.set(OURS):
        assert isinstance(codec.codec_pipeline, ShardWritePipeline)
        arr[0:3, 0:4] = 2
    blob = sync(inner.get("c/0/0", default_buffer_prototype()))
    assert blob is not None
    model = np.zeros(SHAPE, dtype="i4")
    model[0:3, 0:4] = 2
    np.testing.assert_array_equal(stock_read(inner), model)


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
    np.testing.assert_array_equal(stock_read(inner), model)


def test_a_multi_shard_write_and_a_delete_dir_do_not_deadlock(kind: str, tmp_path: Path) -> None:
    """1. The test holds shard c/1/0.
    2. A write of a region spanning c/1/0 and c/1/1 queues for c/1/0.
    3. ``delete_dir("c")`` queues a prefix lock: behind the test and the writer.
    4. The test lets go of c/1/0: the writer gets it and now wants c/1/1, where
       the earlier delete_dir is queued, which itself waits for the writer's
       c/1/0. Holding c/1/0 while waiting would deadlock; the writer instead
       gives up its held shards after a short wait, lets the delete through,
       and starts over. The write lands after the delete."""
    inner = inner_store(kind, tmp_path)
    arr = create(inner)
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
    np.testing.assert_array_equal(stock_read(inner), model)
    no_locks_left(arr)


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_threads_and_tasks_of_another_event_loop_writing_at_once_lose_nothing(
    encoding: str, kind: str, tmp_path: Path
) -> None:
    """Eight threads use the sync API (their writes run on zarr's own event loop)
    while eight tasks of a second loop write through ``AsyncArray``; one lock
    table serves both loops."""
    inner = inner_store(kind, tmp_path)
    arr = create(inner, encoding)
    regions = band_regions(16)
    model, values = model_of(regions)
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
    np.testing.assert_array_equal(stock_read(inner), model)
    no_locks_left(arr)
