"""All-fill shards and fill chunks: the same keys as stock zarr, and dense
shards only where they pay.

Issue 10, item 3: with ``write_empty_chunks=False`` (zarr's default) stock
zarr deletes a shard that becomes all fill and never creates one for fill
values; ours kept such shards (dense, fill chunks stored explicitly), so the
two pipelines disagreed on which keys exist. Each test applies the same writes
through our pipeline (on a ``RangeLockedStore``) and stock zarr (on a bare
``MemoryStore``) and requires the same values and the same set of keys.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from zarr.codecs.sharding import ShardingCodec
from zarr.core.sync import sync
from zarr.storage import LocalStore, MemoryStore

from tests._shard_helpers import OURS, STOCK, new_array
from zarr_rangelock import RangeLockedStore, ShardWriter
from zarr_rangelock.shards import _jobs as J
from zarr_rangelock.shards import _layout as L

pytestmark = pytest.mark.timeout(60)

SHAPE = (16, 16)
CHUNKS = (4, 4)
SHARDS = (8, 8)  # 4 shards of 2 x 2 inner chunks
COMPRESSORS = {"fixed": None, "zstd": [zarr.codecs.ZstdCodec(level=1)]}

Write = tuple[tuple[slice, ...], Any]


def _pair(
    tmp_path: Path, kind: str, compressor: str, *, empty: bool, fill: Any = 0, dtype: str = "i4"
) -> tuple[zarr.Array[Any], zarr.Array[Any]]:
    inner = LocalStore(tmp_path / "ours") if kind == "local" else MemoryStore()
    options: dict[str, Any] = {
        "shards": SHARDS,
        "compressors": COMPRESSORS[compressor],
        "fill_value": fill,
        "dtype": dtype,
        "config": {"write_empty_chunks": empty},
    }
    ours = new_array(RangeLockedStore(inner), shape=SHAPE, chunks=CHUNKS, pipeline=OURS, **options)
    stock = new_array(MemoryStore(), shape=SHAPE, chunks=CHUNKS, pipeline=STOCK, **options)
    return ours, stock


async def _keys(arr: zarr.Array[Any]) -> set[str]:
    return {k async for k in arr.store.list() if not k.endswith("zarr.json")}


def _assert_same(ours: zarr.Array[Any], stock: zarr.Array[Any]) -> None:
    np.testing.assert_array_equal(ours[...], stock[...])
    assert zarr.core.sync.sync(_keys(ours)) == zarr.core.sync.sync(_keys(stock))
    with zarr.config.set(STOCK):  # stock zarr reads our store the same
        np.testing.assert_array_equal(zarr.open_array(ours.store, mode="r")[...], stock[...])


def _both(ours: zarr.Array[Any], stock: zarr.Array[Any], writes: list[Write]) -> None:
    for sel, value in writes:
        ours[sel] = value
        stock[sel] = value
        _assert_same(ours, stock)


FILL_SCRIPTS: dict[str, list[Write]] = {
    "fill-into-a-missing-shard-creates-nothing": [
        ((slice(0, 8), slice(0, 8)), 0),
        ((slice(1, 3), slice(1, 7)), 0),
    ],
    "a-shard-emptied-chunk-by-chunk-is-deleted": [
        ((slice(0, 8), slice(0, 8)), 5),  # every chunk of shard (0, 0): dense
        ((slice(0, 4), slice(0, 4)), 0),
        ((slice(0, 4), slice(4, 8)), 0),
        ((slice(4, 8), slice(0, 4)), 0),
        ((slice(4, 8), slice(4, 8)), 0),  # the last one: the shard goes
    ],
    "a-shard-emptied-by-partial-chunk-writes-is-deleted": [
        ((slice(0, 8), slice(0, 8)), 5),
        ((slice(0, 8), slice(0, 5)), 0),
        ((slice(0, 8), slice(5, 8)), 0),
    ],
    "a-whole-shard-of-fill-deletes-the-shard": [
        ((slice(0, 16), slice(0, 16)), 3),
        ((slice(8, 16), slice(8, 16)), 0),
        ((slice(0, 16), slice(0, 16)), 0),
    ],
    "one-chunk-left-keeps-the-shard": [
        ((slice(0, 8), slice(0, 8)), 5),
        ((slice(0, 8), slice(0, 6)), 0),
        ((slice(0, 1), slice(0, 1)), 0),
    ],
    "fill-across-shards-deletes-each": [
        ((slice(2, 14), slice(2, 14)), 9),
        ((slice(0, 16), slice(0, 16)), 0),
        ((slice(6, 10), slice(6, 10)), 1),
    ],
}


@pytest.mark.parametrize("script", list(FILL_SCRIPTS), ids=list(FILL_SCRIPTS))
@pytest.mark.parametrize("compressor", list(COMPRESSORS))
@pytest.mark.parametrize("kind", ["memory", "local"])
@pytest.mark.parametrize("empty", [False, True], ids=["elide-empty", "write-empty"])
def test_fill_writes_leave_the_keys_stock_zarr_leaves(
    tmp_path: Path, kind: str, compressor: str, script: str, empty: bool
) -> None:
    ours, stock = _pair(tmp_path, kind, compressor, empty=empty)
    _both(ours, stock, FILL_SCRIPTS[script])


# Two handles of one array, ``write_empty_chunks`` True ("keep") and False
# ("drop"); steps: (handle, region of shard (0, 0) in inner chunks of 4 x 4,
# value). Stock zarr deletes a shard when no chunk is present in its index
# after a write, and a chunk of fill values stored by the "keep" handle is
# present: the hunt's repro_empty_chunks_mixed.py, t11_we_mix.py and
# t12_we_mix2.py, where ours deleted dense shards whose every chunk held
# fill, stored or not.
MIXED_SCRIPTS: dict[str, list[tuple[str, tuple[slice, ...], int]]] = {
    "a-stored-fill-chunk-keeps-its-shard-when-another-is-dropped": [
        ("keep", (slice(0, 4), slice(0, 4)), 0),
        ("drop", (slice(0, 4), slice(4, 8)), 0),
    ],
    "a-shard-stored-whole-of-fill-keeps-its-key-when-a-chunk-is-dropped": [
        ("keep", (slice(0, 8), slice(0, 8)), 0),
        ("drop", (slice(0, 4), slice(0, 4)), 0),
        ("drop", (slice(0, 8), slice(4, 8)), 0),
    ],
    "a-chunk-of-data-overwritten-with-fill-by-the-keeping-handle-stays": [
        ("drop", (slice(0, 4), slice(0, 4)), 1),
        ("keep", (slice(0, 4), slice(4, 8)), 0),
        ("drop", (slice(0, 4), slice(0, 4)), 0),
        ("drop", (slice(4, 8), slice(0, 8)), 0),
    ],
    "stored-fill-chunks-dropped-again-let-the-shard-go": [
        ("keep", (slice(0, 4), slice(0, 4)), 0),
        ("drop", (slice(0, 4), slice(4, 8)), 1),
        ("drop", (slice(0, 4), slice(4, 8)), 0),
        ("drop", (slice(0, 4), slice(0, 4)), 0),
    ],
    "a-shard-stored-whole-then-dropped-whole-goes": [
        ("keep", (slice(0, 8), slice(0, 8)), 0),
        ("drop", (slice(0, 8), slice(0, 8)), 0),
    ],
    "a-partial-write-of-fill-by-the-keeping-handle-stores-its-chunk": [
        ("drop", (slice(0, 4), slice(0, 4)), 1),
        ("keep", (slice(4, 5), slice(4, 6)), 0),
        ("drop", (slice(0, 4), slice(0, 4)), 0),
    ],
}


def _write_via(arr: zarr.Array[Any], via: str, region: tuple[slice, ...], value: int) -> None:
    """``arr[region] = value`` through the plain API or a ShardWriter
    (``write_chunk`` for one whole inner chunk)."""
    if via == "plain":
        arr[region] = value
        return
    rows, cols = region
    writer = ShardWriter(arr)
    if rows.stop - rows.start == cols.stop - cols.start == 4 and rows.start % 4 == 0:
        shape = (4, 4)
        writer.write_chunk((rows.start // 4, cols.start // 4), np.full(shape, value, "i4"))
    else:
        writer[region] = value


@pytest.mark.parametrize("script", list(MIXED_SCRIPTS), ids=list(MIXED_SCRIPTS))
@pytest.mark.parametrize("via", ["plain", "writer"])
@pytest.mark.parametrize("compressor", list(COMPRESSORS))
@pytest.mark.parametrize("kind", ["memory", "local"])
def test_handles_keeping_and_dropping_fill_chunks_leave_the_keys_stock_zarr_leaves(
    tmp_path: Path, kind: str, compressor: str, via: str, script: str
) -> None:
    ours, stock = _pair(tmp_path, kind, compressor, empty=True)
    handles = {}
    for name, arr in (("ours", ours), ("stock", stock)):
        with zarr.config.set(OURS if name == "ours" else STOCK):
            handles[name] = {
                "keep": arr,
                "drop": zarr.open_array(arr.store, config={"write_empty_chunks": False}),
            }
    for step, (handle, region, value) in enumerate(MIXED_SCRIPTS[script]):
        _write_via(handles["ours"][handle], via, region, value)
        handles["stock"][handle][region] = value
        assert sync(_keys(ours)) == sync(_keys(stock)), step
        _assert_same(ours, stock)


@pytest.mark.parametrize("whole", [True, False], ids=["whole-shard", "one-chunk"])
@pytest.mark.parametrize("via", ["plain", "writer"])
@pytest.mark.parametrize("kind", ["memory", "local"])
def test_a_shard_stock_zarr_stored_with_fill_chunks_keeps_its_key_when_ours_drops_one(
    tmp_path: Path, kind: str, via: str, whole: bool
) -> None:
    # Stock zarr writes the shard (with write_empty_chunks, every chunk
    # present, all of fill); then our handle without it drops one chunk:
    # stock zarr, doing the same, keeps the shard (its other chunks are
    # present). Ours keeps the key too, whether the shard is in-place
    # writable as stock left it (whole) or compact (one chunk).
    ours, stock = _pair(tmp_path, kind, "fixed", empty=True)
    with zarr.config.set(STOCK):
        first = zarr.open_array(ours.store._store, config={"write_empty_chunks": True})
    region = (slice(0, 8), slice(0, 8)) if whole else (slice(0, 4), slice(0, 4))
    first[region] = 0
    stock[region] = 0
    with zarr.config.set(OURS):
        drop = zarr.open_array(ours.store, config={"write_empty_chunks": False})
    with zarr.config.set(STOCK):
        stock_drop = zarr.open_array(stock.store, config={"write_empty_chunks": False})
    _write_via(drop, via, (slice(0, 4), slice(4, 8)), 0)
    stock_drop[0:4, 4:8] = 0
    _assert_same(ours, stock)
    assert sync(_keys(ours)) == {"c/0/0"}
    _write_via(drop, via, (slice(0, 8), slice(0, 8)), 0)  # every chunk dropped
    stock_drop[0:8, 0:8] = 0
    _assert_same(ours, stock)
    assert sync(_keys(ours)) == set()


@pytest.mark.parametrize("compressor", list(COMPRESSORS))
@pytest.mark.parametrize("kind", ["memory", "local"])
def test_a_stored_shard_of_no_chunk_is_deleted_by_a_fill_write_as_stock_deletes_it(
    tmp_path: Path, kind: str, compressor: str
) -> None:
    # A shard that is only an index with every chunk absent (neither our
    # writers nor stock zarr's leave one; another implementation may): a
    # write of fill into it leaves no shard, as stock zarr leaves none. (For
    # compressed chunks the append's own check: the write fits, nothing is
    # left live.)
    ours, stock = _pair(tmp_path, kind, compressor, empty=False)
    codec = ours.metadata.codecs[0]
    assert isinstance(codec, ShardingCodec)
    nothing = L.encode_index(codec, L.empty_index((2, 2)))
    for arr in (ours, stock):
        sync(arr.store.set("c/0/0", nothing))
    assert sync(_keys(ours)) == sync(_keys(stock)) == {"c/0/0"}
    _both(ours, stock, [((slice(0, 4), slice(0, 4)), 0)])
    assert sync(_keys(ours)) == set()


@pytest.mark.parametrize("kind", ["memory", "local"])
def test_a_nan_fill_value_empties_shards_as_stock_does(tmp_path: Path, kind: str) -> None:
    ours, stock = _pair(tmp_path, kind, "fixed", empty=False, fill=np.nan, dtype="f4")
    _both(
        ours,
        stock,
        [
            ((slice(0, 8), slice(0, 8)), 1.5),
            ((slice(0, 8), slice(0, 8)), np.nan),
            ((slice(0, 4), slice(0, 16)), 2.0),
            ((slice(0, 4), slice(0, 16)), np.nan),
        ],
    )


def test_a_sparse_shard_stays_compact_and_a_filled_one_becomes_dense(tmp_path: Path) -> None:
    """Dense only where it pays: one chunk of 64 written costs about a chunk
    on disk, as with stock zarr, not the whole dense shard; once
    DENSE_MIN_LIVE_RATIO of the chunks hold data the shard is laid out densely
    (and later chunk writes go in place)."""
    store = RangeLockedStore(LocalStore(tmp_path))
    arr = new_array(store, shape=(32, 32), chunks=(4, 4), shards=(32, 32), pipeline=OURS)
    path = tmp_path / "c" / "0" / "0"
    chunk = 4 * 4 * 4  # bytes of one inner chunk
    index = 64 * 16 + 4  # 64 (offset, length) pairs and a crc32c
    marks = 12 + 8 + 4  # the absent marks of its fill chunks: magic, a bit a chunk, crc32c
    dense = index + 64 * chunk + marks
    model = np.zeros((32, 32), "i4")
    needed = int(np.ceil(J.DENSE_MIN_LIVE_RATIO * 64))
    for i in range(needed):
        region = (slice(4 * (i // 8), 4 * (i // 8) + 4), slice(4 * (i % 8), 4 * (i % 8) + 4))
        arr[region] = i + 1
        model[region] = i + 1
        if i == 0:
            assert path.stat().st_size <= index + 5 * chunk  # the chunk and some slack
        if i < needed - 1:
            assert path.stat().st_size < dense, i
    assert path.stat().st_size == dense
    np.testing.assert_array_equal(arr[...], model)
    with zarr.config.set(STOCK):
        np.testing.assert_array_equal(zarr.open_array(LocalStore(tmp_path), mode="r")[...], model)


@pytest.mark.parametrize("fill", [0, 1])
def test_a_shard_laid_out_densely_leaves_fill_chunks_of_zero_bytes_as_holes(
    tmp_path: Path, fill: int
) -> None:
    """The dense layout lists every chunk in the index, but a fill chunk that
    encodes to zero bytes is not written: the new file starts as zeros, so a
    LocalStore keeps holes there (the README's cold-write paragraph). Any
    other fill is written. A quarter of a shard of 64 chunks of 16 KiB is
    written; what the shard file occupies on disk is compared with its size."""
    probe = tmp_path / "probe"
    with probe.open("wb") as f:
        f.truncate(1 << 20)
    if probe.stat().st_blocks != 0:
        pytest.skip("this file system does not keep holes")
    store = RangeLockedStore(LocalStore(tmp_path / "a"))
    arr = new_array(
        store, shape=(512, 512), chunks=(64, 64), shards=(512, 512), fill_value=fill, pipeline=OURS
    )
    needed = int(np.ceil(J.DENSE_MIN_LIVE_RATIO * 64))
    for i in range(needed):
        arr[64 * (i // 8) : 64 * (i // 8) + 64, 64 * (i % 8) : 64 * (i % 8) + 64] = i + 2
    st = (tmp_path / "a" / "c" / "0" / "0").stat()
    # 64 chunks, the index and its crc32c, the absent marks of its fill chunks
    dense = 64 * 64 * 64 * 4 + 64 * 16 + 4 + (12 + 8 + 4)
    assert st.st_size == dense  # laid out densely
    on_disk = st.st_blocks * 512
    if fill == 0:
        assert on_disk < dense // 2, (on_disk, dense)  # about the quarter written
    else:
        assert on_disk >= dense - 64 * 1024, (on_disk, dense)  # fill chunks written
    model = np.full((512, 512), fill, "i4")
    for i in range(needed):
        model[64 * (i // 8) : 64 * (i // 8) + 64, 64 * (i % 8) : 64 * (i % 8) + 64] = i + 2
    np.testing.assert_array_equal(arr[...], model)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind", ["memory", "local"])
def test_threads_emptying_and_filling_one_shard_end_with_the_keys_of_the_final_values(
    tmp_path: Path, kind: str
) -> None:
    """Writers clearing some chunks and writing others of the same shards at
    once: whatever the interleaving, the final keys are those of the final
    values (a shard exists exactly when some chunk of it holds data), and the
    values are the model's, since every writer owns its chunks."""
    ours, _ = _pair(tmp_path, kind, "fixed", empty=False)
    ours[...] = 1  # every shard dense
    regions = [(slice(r, r + 4), slice(c, c + 4)) for r in range(0, 16, 4) for c in range(0, 16, 4)]
    finals = {i: (0 if i % 3 else 7) for i in range(len(regions))}  # most chunks cleared
    barrier = threading.Barrier(4)

    def worker(w: int) -> None:
        barrier.wait(timeout=30)
        for i in range(w, len(regions), 4):
            ours[regions[i]] = 5
            ours[regions[i]] = finals[i]

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=100)
        assert not t.is_alive()
    model = np.zeros(SHAPE, "i4")
    for i, r in enumerate(regions):
        model[r] = finals[i]
    np.testing.assert_array_equal(ours[...], model)
    expected = {
        f"c/{sr}/{sc}"
        for sr in range(2)
        for sc in range(2)
        if model[sr * 8 : sr * 8 + 8, sc * 8 : sc * 8 + 8].any()
    }
    assert zarr.core.sync.sync(_keys(ours)) == expected


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["memory", "local"])
def test_a_write_landing_between_a_drop_and_its_marks_is_kept(tmp_path: Path, kind: str) -> None:
    # A dense shard without absent marks (every chunk data). Write A drops
    # chunk 0 (fill values) and writes chunk 1; write B, queued right behind
    # it on chunk 0, writes data into both. A settles its marks after its
    # chunk locks are gone: B's chunk 0 is in by then. Adding the marks once
    # rewrote the shard with fill in every chunk A dropped, losing B's chunk
    # 0 ([0, 0, 9, 9]: no serial order; found by a bug hunt). The order is
    # made: a third caller holds the chunks' bytes until A and B both wait.
    inner = MemoryStore() if kind == "memory" else LocalStore(tmp_path)
    store = RangeLockedStore(inner)
    got = _a_then_b_queued_behind_a_holder(
        store,
        held=32,  # the four chunks' bytes (index at end)
        a=(slice(0, 4), [0, 0, 1, 1]),
        b=(slice(0, 4), [7, 7, 9, 9]),
    )
    assert got == [7, 7, 9, 9, 5, 5, 5, 5]  # A, then B: the queue's order
    stats = store.lock_manager.stats()
    assert stats.holders == stats.waiters == 0
    with zarr.config.set(STOCK):  # and stock zarr reads the shard so
        assert zarr.open_array(inner, mode="r")[:].tolist() == got


@pytest.mark.timeout(60)
def test_stock_zarr_sees_a_dense_shards_stand_ins_as_present_chunks() -> None:
    # Stock zarr does not read the absent marks (README): after our write of
    # 2 of a shard's 4 chunks lays it out densely, a stock write through the
    # bare store that clears those 2 keeps the shard (the stand-ins are
    # present chunks of fill values to it), where stock alone deletes it;
    # the values are the same either way.
    shape, chunks, shards = (4, 4), (2, 2), (4, 4)
    inner = MemoryStore()
    ours = new_array(
        RangeLockedStore(inner), shape=shape, chunks=chunks, shards=shards, pipeline=OURS
    )
    alone = new_array(MemoryStore(), shape=shape, chunks=chunks, shards=shards, pipeline=STOCK)
    for a in (ours, alone):
        a[0:2, :] = 7
    assert ours.store._store is inner  # type: ignore[attr-defined]  # the wrapper's inner store
    stock_on_ours = zarr.open_array(inner, mode="r+")
    for a in (stock_on_ours, alone):
        a[0:2, :] = 0
    np.testing.assert_array_equal(stock_on_ours[...], alone[...])
    assert sorted(inner._store_dict) == ["c/0/0", "zarr.json"]  # kept
    assert sorted(alone.store._store_dict) == ["zarr.json"]  # type: ignore[attr-defined]  # deleted


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["memory", "local"])
def test_a_drop_that_leaves_every_chunk_marked_absent_keeps_a_shard_written_before_its_sweep(
    tmp_path: Path, kind: str
) -> None:
    # A dense shard whose only chunk of data is chunk 0 (the others marked
    # absent). Write A drops chunk 0 (fill values), so its sweep finds every
    # chunk marked absent; write B, queued right behind it on chunk 0,
    # writes data there before A's sweep gets the whole-key lock (B's range
    # request is older). The sweep must see B's bytes and keep the shard:
    # deleting it on the marks alone lost B's write. The order is made: a
    # third caller holds chunk 0's bytes until A and B both wait.
    inner = MemoryStore() if kind == "memory" else LocalStore(tmp_path)
    store = RangeLockedStore(inner)
    got = _a_then_b_queued_behind_a_holder(
        store,
        held=8,  # chunk 0's bytes (index at end)
        a=(slice(0, 2), [0, 0]),
        b=(slice(0, 2), [7, 7]),
        absent=slice(2, 8),  # chunks 1-3 marked absent
    )
    assert got == [7, 7, 0, 0, 0, 0, 0, 0]  # A, then B: the queue's order
    assert zarr.core.sync.sync(_keys(zarr.open_array(store, mode="r"))) == {"c/0"}
    stats = store.lock_manager.stats()
    assert stats.holders == stats.waiters == 0
    with zarr.config.set(STOCK):  # and stock zarr reads the shard so
        assert zarr.open_array(inner, mode="r")[:].tolist() == got


def _a_then_b_queued_behind_a_holder(
    store: RangeLockedStore,
    held: int,
    a: tuple[slice, list[int]],
    b: tuple[slice, list[int]],
    absent: slice | None = None,
) -> list[int]:
    """In ``store``, an uncompressed array of one dense shard "c/0" of 4
    chunks of 2 (every chunk 5s, then ``absent`` written with fill values);
    a third caller holds bytes ``0-held`` of the shard while write A and then
    write B queue behind it (the order made by the lock table's waiter
    count, not by time); returns the array's values once both are done."""

    async def scenario() -> list[int]:
        with zarr.config.set(OURS):
            arr = await zarr.api.asynchronous.create_array(
                store, shape=(8,), chunks=(2,), shards=(8,), dtype="i4", fill_value=0,
                compressors=None,
            )  # fmt: skip
        await arr.setitem(slice(None), np.full(8, 5, "i4"))  # dense, every chunk present
        if absent is not None:
            await arr.setitem(absent, np.zeros(absent.stop - absent.start, "i4"))
        mgr = store.lock_manager
        async with store.locked("c/0", [(0, held)]):
            ta = asyncio.create_task(arr.setitem(a[0], np.array(a[1], "i4")))
            while mgr.stats().waiters < 1:
                await asyncio.sleep(0)
            tb = asyncio.create_task(arr.setitem(b[0], np.array(b[1], "i4")))
            while mgr.stats().waiters < 2:
                await asyncio.sleep(0)
        await asyncio.wait_for(asyncio.gather(ta, tb), 30)
        return [int(v) for v in (await arr.getitem(slice(None)))]

    return asyncio.run(scenario())
