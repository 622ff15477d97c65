"""``ShardWriter``'s errors, event loops and store flags (issue 12).

A failing write raises exactly what the plain API (``arr[sel] = value`` with
``ShardWritePipeline``) raises for it, and leaves the same values and keys
behind; a writer refuses arrays it cannot write, refuses to block a running
event loop, closes the event loops of its threads, and honours the wrapper's
read-only and ``confine`` flags on every path.
"""

from __future__ import annotations

import asyncio
import gc
import os
import re
import sys
import threading
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from zarr.storage import LocalStore, MemoryStore

from tests._shard_helpers import OURS, STOCK, new_array, no_locks_left
from tests._threads import run_threads, wait_until
from tests._writer_helpers import (
    ALL_CHUNKS,
    CHUNKS,
    COMPRESSORS,
    GRID,
    SHAPE,
    SHARDS,
    STORES,
    array_keys,
    assert_same,
    assert_same_outcome,
    chunk_region,
    chunk_value,
    locked_array,
    make_dense,
    outcome,
    refusals_inside_a_loop,
    twins,
)
from zarr_rangelock import RangeLockedStore, ShardWriter

pytestmark = pytest.mark.timeout(120)


# ---------------------------------------------------------------------- errors


ERRORS: dict[str, tuple[Any, Any]] = {
    "row past the end": ((10,), 1),
    "row before the start": ((-11, 0), 1),
    "column past the end": ((slice(None), 7), 1),
    "too many indices": ((0, 0, 0), 1),
    "two ellipses": ((Ellipsis, Ellipsis), 1),
    "negative step": (slice(None, None, -1), 1),
    "a float index": ((1.5,), 1),
    "a new axis": ((None,), 1),
    "rows of the wrong length": (slice(0, 3), np.ones((2, 7), dtype="i4")),
    "a row of the wrong length": ((0,), np.ones(3, dtype="i4")),
    "a value with more dimensions": ((0, slice(0, 3)), np.ones((2, 3), dtype="i4")),
    "an empty value for a row": ((0,), np.ones(0, dtype="i4")),
    "rows broadcast from one": (slice(None), np.ones((1, 7), dtype="i4")),
    "columns broadcast from one": (slice(None), np.ones((10, 1), dtype="i4")),
    "leading dimensions dropped": (slice(None), np.arange(7, dtype="i4")),
    "a string for an integer": ((0,), "abc"),
    "strings for integers": ((0, slice(0, 2)), np.array(["1", "x"])),
    "an integer too large": ((0,), 2**40),
    "a complex number": ((0,), 1 + 2j),
    "None": ((0,), None),
    "a ragged list": ((slice(0, 2), slice(0, 2)), [[1, 2], [3]]),
    "a dict": ((0,), {"a": 1}),
}


@pytest.mark.filterwarnings("ignore::numpy.exceptions.ComplexWarning")
@pytest.mark.parametrize("compressor", list(COMPRESSORS))
@pytest.mark.parametrize("name", list(ERRORS))
def test_a_bad_write_raises_exactly_what_the_plain_api_raises(
    name: str, compressor: str, tmp_path: Path
) -> None:
    selection, value = ERRORS[name]
    written, plain = twins("memory", tmp_path, compressor)
    writer = ShardWriter(written)
    for arr in (writer, plain):  # some shards exist, some do not
        arr[0:8, 0:6] = 5
        arr[1, 1] = 6
    expected = outcome(lambda: plain.__setitem__(selection, value))
    assert expected is not None, "the plain API accepted it: not an error case"
    assert_same_outcome(outcome(lambda: writer.__setitem__(selection, value)), expected, compressor)
    assert_same(written, plain)  # what either left behind is alike
    no_locks_left(written)


def test_the_writer_takes_basic_selections_only_as_set_basic_selection_does(
    tmp_path: Path,
) -> None:
    # The plain API's ``arr[...] =`` also takes orthogonal and vectorized
    # selections; the writer refuses them with set_basic_selection's error.
    written, plain = twins("memory", tmp_path)
    writer = ShardWriter(written)
    for selection in [([0, 1],), (slice(0, 2), [1, 2]), (np.array([True] * 10),)]:
        expected = outcome(lambda s=selection: plain.set_basic_selection(s, 1))
        assert expected is not None and expected[0] is IndexError
        assert outcome(lambda s=selection: writer.__setitem__(s, 1)) == expected
    assert_same(written, plain)


@pytest.mark.parametrize(
    "coords",
    [(3, 0), (0, 3), (-1, 0), (0,), (0, 0, 0), (1.0, 0), ("0", 0), (True, 0), (0, np.True_), ()],
)
def test_write_chunk_outside_the_grid_raises_an_index_error_naming_coords_and_grid(
    coords: Any, tmp_path: Path
) -> None:
    written, _ = twins("memory", tmp_path)
    with pytest.raises(IndexError) as info:
        ShardWriter(written).write_chunk(coords, 1)
    message = str(info.value)
    assert repr(tuple(coords)) in message and repr(GRID) in message
    assert "group/array" in message
    assert array_keys(written) == []


@pytest.mark.filterwarnings("ignore::numpy.exceptions.ComplexWarning")
@pytest.mark.parametrize("compressor", list(COMPRESSORS))
@pytest.mark.parametrize("shard", ["missing", "dense"])
@pytest.mark.parametrize(
    "coords, value",
    [
        ((0, 0), np.ones((4, 2), dtype="i4")),
        ((0, 0), np.ones((1, 3), dtype="i4")),
        ((0, 0), np.ones((2, 4, 3), dtype="i4")),
        ((0, 0), np.ones(3, dtype="i4")),
        # larger than the region: zarr takes the leading part, without a word
        ((0, 0), np.arange(15, dtype="i4").reshape(5, 3)),
        ((2, 2), np.arange(12, dtype="i4").reshape(4, 3)),  # a full chunk for an edge chunk
        ((0, 0), "abc"),
        ((0, 0), np.full((4, 3), "x")),
        ((0, 0), 2**40),
        ((0, 0), None),
        ((0, 0), 1 + 2j),
        ((1, 1), [[1, 2, 3], [4, 5]]),
        # whole chunks the writer takes as they are, or converts first
        ((1, 1), np.asfortranarray(np.arange(12, dtype="i4").reshape(4, 3))),
        ((1, 1), np.arange(24, dtype="i4").reshape(4, 6)[:, ::2]),
        ((1, 1), np.arange(12, dtype=">i4").reshape(4, 3)),
        ((1, 1), np.arange(12, dtype="i8").reshape(4, 3)),
        ((1, 1), np.arange(12, dtype="f8").reshape(4, 3) + 0.5),
    ],
    ids=lambda v: type(v).__name__ if not isinstance(v, tuple) else str(v),
)
def test_write_chunk_with_an_odd_value_does_what_the_plain_api_does_with_its_region(
    coords: tuple[int, ...], value: Any, shard: str, compressor: str, tmp_path: Path
) -> None:
    # Raises the same error, or accepts it and writes the same values.
    written, plain = twins("memory", tmp_path, compressor)
    writer = ShardWriter(written)
    if shard == "dense":  # the fast path applies to these shards (uncompressed)
        make_dense(writer, plain, np.zeros(SHAPE, dtype="i4"))
        for arr in (writer, plain):
            arr[8:10, 0:7] = 1
            arr[8, 6] = 2
    region = chunk_region(coords, SHAPE, CHUNKS)
    expected = outcome(lambda: plain.__setitem__(region, value))
    assert_same_outcome(outcome(lambda: writer.write_chunk(coords, value)), expected, compressor)
    assert_same(written, plain)


def _masked(shape: tuple[int, ...]) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask.flat[0] = True
    return np.ma.masked_array(np.full(shape, 7, dtype="i4"), mask=mask)


def _matrix(shape: tuple[int, ...]) -> np.ndarray:
    return np.asmatrix(np.full(shape, 7, dtype="i4"))


_SUBCLASS_WRITES: dict[str, Callable[[Any, Callable[[tuple[int, ...]], Any]], None]] = {
    "write_chunk": lambda w, v: w.write_chunk((1, 1), v((4, 3))),
    "writer[chunk]": lambda w, v: w.__setitem__(chunk_region((1, 1), SHAPE, CHUNKS), v((4, 3))),
    "write_chunks dict": lambda w, v: w.write_chunks({(1, 1): v((4, 3))}),
    "write_chunks pairs": lambda w, v: w.write_chunks([((1, 1), v((4, 3)))]),
    "writer[two chunks]": lambda w, v: w.__setitem__((slice(4, 8), slice(0, 6)), v((4, 6))),
}


@pytest.mark.filterwarnings("ignore:the matrix subclass:PendingDeprecationWarning")
@pytest.mark.parametrize("kind", STORES)
@pytest.mark.parametrize("compressor", list(COMPRESSORS))
@pytest.mark.parametrize("shard", ["missing", "dense"])
@pytest.mark.parametrize("make", [_masked, _matrix], ids=["masked array", "np.matrix"])
@pytest.mark.parametrize("how", list(_SUBCLASS_WRITES))
def test_a_masked_array_or_matrix_of_whole_chunks_raises_what_stock_zarr_raises_and_writes_nothing(
    how: str,
    make: Callable[[tuple[int, ...]], Any],
    shard: str,
    compressor: str,
    kind: str,
    tmp_path: Path,
) -> None:
    # Stock zarr keeps an ndarray subclass as it is and fails reshaping it;
    # the writer's np.asarray dropped the mask or the matrix and wrote the
    # data (hunt_a: repro_masked.py, repro_matrix.py).
    written, plain = twins(kind, tmp_path, compressor)
    stock = new_array(
        MemoryStore(),
        shape=SHAPE,
        chunks=CHUNKS,
        shards=SHARDS,
        pipeline=STOCK,
        compressors=COMPRESSORS[compressor],
    )
    writer = ShardWriter(written)
    if shard == "dense":  # the fast path applies to these shards (uncompressed)
        make_dense(writer, plain, np.zeros(SHAPE, dtype="i4"))
        stock[0:8, 0:6] = 5  # as make_dense writes the others
        stock[1, 1] = 6
    write = _SUBCLASS_WRITES[how]
    expected = outcome(lambda: write(Adapter(stock), make))
    assert expected is not None and expected[0] is ValueError, expected
    assert outcome(lambda: write(Adapter(plain), make)) == expected
    assert outcome(lambda: write(writer, make)) == expected
    assert_same(written, plain)
    np.testing.assert_array_equal(written[...], stock[...])
    no_locks_left(written)


@pytest.mark.parametrize("shard", ["missing", "dense"])
@pytest.mark.parametrize(
    "make",
    [
        lambda shape, tmp: np.ma.masked_array(np.full(shape, 7, dtype="i4")),  # no mask
        lambda shape, tmp: np.full(shape, 7, dtype="i4").view(_Plain),
        lambda shape, tmp: _memmap(tmp, shape),
    ],
    ids=["masked array without a mask", "a plain subclass", "np.memmap"],
)
@pytest.mark.parametrize("how", list(_SUBCLASS_WRITES))
def test_an_ndarray_subclass_that_stock_zarr_takes_is_written_as_stock_zarr_writes_it(
    how: str, make: Callable[[tuple[int, ...], Path], Any], shard: str, tmp_path: Path
) -> None:
    written, plain = twins("memory", tmp_path)
    stock = new_array(MemoryStore(), shape=SHAPE, chunks=CHUNKS, shards=SHARDS, pipeline=STOCK)
    writer = ShardWriter(written)
    if shard == "dense":
        make_dense(writer, plain, np.zeros(SHAPE, dtype="i4"))
        stock[0:8, 0:6] = 5  # as make_dense writes the others
        stock[1, 1] = 6
    write = _SUBCLASS_WRITES[how]
    for arr in (writer, Adapter(plain), Adapter(stock)):
        write(arr, lambda shape: make(shape, tmp_path))
    assert_same(written, plain)
    np.testing.assert_array_equal(written[...], stock[...])


class _Plain(np.ndarray):
    """An ndarray subclass that adds nothing."""


def _memmap(tmp: Path, shape: tuple[int, ...]) -> np.ndarray:
    out = np.memmap(tmp / f"memmap-{shape}", dtype="i4", mode="w+", shape=shape)
    out[...] = 7
    return out


class Adapter:
    """``write_chunk``, ``write_chunks`` and ``[sel] =`` of a zarr array as
    the plain API (or stock zarr) does them: the region of each chunk."""

    def __init__(self, arr: zarr.Array[Any]) -> None:
        self.arr = arr

    def __setitem__(self, selection: Any, value: Any) -> None:
        self.arr[selection] = value

    def write_chunk(self, coords: tuple[int, ...], value: Any) -> None:
        self.arr[chunk_region(coords, SHAPE, CHUNKS)] = value

    def write_chunks(self, chunks: Any) -> None:
        for coords, value in chunks.items() if isinstance(chunks, dict) else chunks:
            self.write_chunk(coords, value)


def test_coordinates_are_checked_on_every_call_whatever_was_written_before(
    tmp_path: Path,
) -> None:
    # The writer remembers where chunks it has written are; (1.0, 0), which
    # hashes as (1, 0), and (True, 0), equal to it, are refused all the same,
    # and numpy integers or a list name the chunk that (1, 0) names.
    written, plain = twins("memory", tmp_path)
    writer = ShardWriter(written)
    writer.write_chunk((1, 0), 1)
    with pytest.raises(IndexError, match=r"\(1\.0, 0\)"):
        writer.write_chunk((1.0, 0), 2)
    with pytest.raises(IndexError, match=r"\(1\.0, 0\)"):
        writer.write_chunks({(1, 1): 3, (1.0, 0): 2})
    block = np.full(written.chunks, 2, dtype=written.dtype)  # (looked up inside the gate)
    with pytest.raises(IndexError, match=r"\(1\.0, 0\)"):
        writer.write_chunks({(1, 1): block, (1.0, 0): block})
    # (True, 0) equals (1, 0) too; zarr's blocks[True, 0] refuses it
    for coords in [(True, 0), (1, np.False_)]:
        with pytest.raises(IndexError, match=r"hold np.False_|hold True, not an integer"):
            writer.write_chunk(coords, 2)
        with pytest.raises(IndexError, match=re.escape(repr(coords))):
            writer.write_chunks({(1, 1): block, coords: block})
    writer.write_chunk((np.int64(1), np.int32(1)), 4)
    writer.write_chunk([2, 1], 5)
    writer.write_chunks([((np.int8(0), 1), 6), ([0, 2], 7)])
    for c, v in [((1, 0), 1), ((1, 1), 4), ((2, 1), 5), ((0, 1), 6), ((0, 2), 7)]:
        plain[chunk_region(c, SHAPE, CHUNKS)] = v
    assert_same(written, plain)


def test_the_writers_memory_of_chunk_places_and_shard_keys_is_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import zarr_rangelock.shards._places as places_module

    monkeypatch.setattr(places_module, "PLACES_MAX", 4)
    monkeypatch.setattr(places_module, "KEYS_MAX", 2)
    written, plain = twins("memory", tmp_path)
    writer = ShardWriter(written)
    keys = set()
    for c in ALL_CHUNKS:
        writer.write_chunk(c, sum(c) + 1)
        plain[chunk_region(c, SHAPE, CHUNKS)] = sum(c) + 1
        keys.add(writer._where.place(c).key)
        assert len(writer._where.memo) <= 4
        assert len(writer._where._keys) <= 2
    assert len(keys) > 2  # more shards than the memory holds
    assert_same(written, plain)


def test_a_writer_needs_a_sharded_v3_zarr_array_on_a_range_locked_store() -> None:
    bare = new_array(MemoryStore(), shape=SHAPE, chunks=CHUNKS, shards=SHARDS)
    unsharded = new_array(RangeLockedStore(MemoryStore()), shape=SHAPE, chunks=CHUNKS)
    v2 = new_array(RangeLockedStore(MemoryStore()), shape=SHAPE, chunks=CHUNKS, zarr_format=2)
    cases = {
        "RangeLockedStore": bare,
        "sharded": unsharded,
        "sharded Zarr v3": v2,
        "zarr.Array": bare.async_array,
        "zarr.Array, got ndarray": np.zeros(SHAPE),
    }
    for needle, thing in cases.items():
        with pytest.raises(TypeError, match=needle):
            ShardWriter(thing)


def test_a_writer_refuses_an_array_with_a_rectilinear_grid_of_shards_with_a_type_error() -> None:
    # Found by a bug hunt: zarr's experimental rectilinear grids (shards of
    # several shapes) made the writer fail with an AttributeError.
    with zarr.config.set({"array.rectilinear_chunks": True}):
        arr = new_array(
            RangeLockedStore(MemoryStore()),
            shape=(10,),
            chunks=(2,),
            shards=[[4, 6]],
            pipeline=OURS,
        )
        with pytest.raises(TypeError, match="regular grid of shards"):
            ShardWriter(arr)
        arr[:] = np.arange(10, dtype="i4")  # the plain API writes it
        np.testing.assert_array_equal(arr[:], np.arange(10))


# ---------------------------------------------------------------- event loops


def test_a_writer_called_inside_a_running_event_loop_raises_runtime_error() -> None:
    # A writer blocks its thread; inside a coroutine it would block the event
    # loop (and could wait on a lock a task of that loop holds). It refuses,
    # before it changes anything, whichever path the write would take, and
    # leaves no coroutine behind un-awaited. Use AsyncArray there.
    written = locked_array(MemoryStore(), shape=SHAPE, chunks=CHUNKS, shards=SHARDS)
    writer = ShardWriter(written)
    writer[0:8, 0:6] = 5
    writer[1, 1] = 6  # shard (0, 0) is dense and validated: write_chunk's fast path
    before = written[...]

    errors = refusals_inside_a_loop(
        [
            lambda: writer.__setitem__((0, 0), 1),
            lambda: writer.write_chunk((0, 0), 1),  # fast path
            lambda: writer.write_chunk((2, 2), 1),  # general path
        ]
    )
    assert len(errors) == 3
    assert all("AsyncArray" in e and "event loop" in e for e in errors), errors
    np.testing.assert_array_equal(written[...], before)
    no_locks_left(written)


def test_a_writer_works_in_threads_started_after_asyncio_run_and_in_asyncio_to_thread() -> None:
    written = locked_array(MemoryStore(), shape=SHAPE, chunks=CHUNKS, shards=SHARDS)
    writer = ShardWriter(written)
    model = np.zeros(SHAPE, dtype="i4")

    async def use_to_thread() -> None:
        await asyncio.to_thread(writer.__setitem__, (slice(8, 10), slice(None)), 4)
        await asyncio.to_thread(writer.write_chunk, (2, 2), 5)

    asyncio.run(use_to_thread())  # a worker thread of a running loop has none running
    model[8:10, :] = 4
    model[8:10, 6:7] = 5
    writer[0:8, 0:6] = 1  # the main thread, after asyncio.run, has its own loop again
    model[0:8, 0:6] = 1
    asyncio.run(asyncio.sleep(0))

    def chunk(coords: tuple[int, ...]) -> Callable[[], None]:
        return lambda: writer.write_chunk(coords, chunk_value(coords, 7))

    run_threads(*(chunk(c) for c in ALL_CHUNKS if c != (2, 2)))
    for coords in ALL_CHUNKS:
        if coords != (2, 2):
            model[chunk_region(coords, SHAPE, CHUNKS)] = chunk_value(coords, 7)
    np.testing.assert_array_equal(written[...], model)
    no_locks_left(written)


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="counts /proc/self/fd")
def test_threads_that_used_a_writer_close_their_event_loops_when_they_end() -> None:
    # Each thread runs its writes on an event loop of its own. It must be
    # closed when the thread ends, not left to the garbage collector: a loop
    # holds three descriptors (a selector, a self-pipe of two sockets) and
    # warns "unclosed event loop" when collected. A pool that starts threads
    # anew would otherwise run out of descriptors between collections.
    written = locked_array(MemoryStore(), shape=SHAPE, chunks=CHUNKS, shards=SHARDS)
    writer = ShardWriter(written)
    writer[0:8, 0:6] = 5  # this thread's loop, made before counting
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gc.collect()
        gc.disable()
        try:
            before = _open_fds()
            for i in range(10):
                t = threading.Thread(target=writer.__setitem__, args=((i, 0), i + 1))
                t.start()
                t.join()
            after = _open_fds()
        finally:
            gc.enable()
        gc.collect()
    assert after - before < 3, (before, after)
    assert [str(w.message) for w in caught if w.category is ResourceWarning] == []
    assert written[0:10, 0].tolist() == list(range(1, 11))


def test_a_thread_whose_event_loop_cannot_be_made_gets_that_error_and_nothing_is_printed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Out of descriptors, the thread's loop cannot be made: the write raises
    # that OSError, writes nothing, and the loop's half-made holder leaves
    # no "Exception ignored in _ThreadLoop.__del__" (AttributeError: no
    # loop) for the collector to print, as it did until 2026-12-07. Once
    # descriptors are back, the thread's next write makes its loop.
    written = locked_array(MemoryStore(), shape=SHAPE, chunks=CHUNKS, shards=SHARDS)
    writer = ShardWriter(written)

    def out_of_descriptors() -> asyncio.AbstractEventLoop:
        raise OSError(24, "Too many open files")

    printed: list[str] = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: printed.append(repr(u.exc_value)))
    with monkeypatch.context() as m:
        m.setattr(asyncio, "new_event_loop", out_of_descriptors)
        with pytest.raises(OSError, match="Too many open files"):
            writer[0:2, 0:2] = 5  # part of a chunk: through the pipeline, on the loop
        gc.collect()
    assert printed == []
    assert not written[...].any()
    writer[0:2, 0:2] = 5
    assert written[0:2, 0:2].tolist() == [[5, 5], [5, 5]]
    no_locks_left(written)


# ------------------------------------------------- what the store's wrapper says


@pytest.mark.parametrize("shard", ["dense", "missing"])
@pytest.mark.parametrize("kind", STORES)
def test_write_chunk_through_a_read_only_wrapper_raises_as_the_plain_api_and_writes_nothing(
    kind: str, shard: str, tmp_path: Path
) -> None:
    # The fast path writes through the wrapper's backend: it must honour the
    # wrapper's read-only flag as the wrapper's own set_range does, even
    # where a writable wrapper of the same store validated the shard's index.
    written, _ = twins(kind, tmp_path)
    writer = ShardWriter(written)
    if shard == "dense":
        make_dense(writer, written, np.zeros(SHAPE, dtype="i4"))
    before = written[...]
    store = written.store
    assert isinstance(store, RangeLockedStore)
    with zarr.config.set(OURS):
        read_only = zarr.open_array(store.with_read_only(True), path="group/array", mode="r")
    expected = outcome(lambda: read_only.__setitem__(chunk_region((0, 0), SHAPE, CHUNKS), 9))
    assert expected is not None and "read-only" in expected[1]
    for attempt in [
        lambda: ShardWriter(read_only).write_chunk((0, 0), 9),
        lambda: ShardWriter(read_only).write_chunk((0, 0), chunk_value((0, 0), 1)),
        lambda: ShardWriter(read_only).__setitem__((0, 0), 9),
    ]:
        assert outcome(attempt) == expected
    np.testing.assert_array_equal(written[...], before)


@pytest.mark.timeout(30)
def test_write_chunk_on_a_confined_store_locks_the_canonical_key_of_an_aliased_shard(
    tmp_path: Path,
) -> None:
    # With confine=True two keys reaching one file through a link lock as one
    # (its canonical key). The array is reached through a link "alias" to
    # its directory "real"; a block holding the shard through the other
    # spelling must hold the writer off, whichever path the write takes.
    root = tmp_path / "root"
    inner = LocalStore(root)
    new_array(RangeLockedStore(inner), shape=SHAPE, chunks=CHUNKS, shards=SHARDS, name="real")
    (root / "alias").symlink_to("real", target_is_directory=True)
    store = RangeLockedStore(LocalStore(root), confine=True)
    with zarr.config.set(OURS):
        arr = zarr.open_array(store, path="alias")
    writer = ShardWriter(arr)
    make_dense(writer, arr, np.zeros(SHAPE, dtype="i4"))
    writer.write_chunk((0, 1), 3)  # fast path, if it applies, from here on
    done = threading.Event()

    def write() -> None:
        writer.write_chunk((0, 0), 7)
        done.set()

    with store.locked_sync("real/c/0/0", [(0, None)]):
        t = threading.Thread(target=write)
        t.start()
        mgr = store.lock_manager
        wait_until(lambda: done.is_set() or mgr.stats().waiters > 0, "the write ends or waits")
        assert not done.is_set(), "the writer wrote the shard while another spelling held it"
    t.join(10)
    assert done.is_set()
    assert arr[0, 0] == 7 and arr[0, 3] == 3
