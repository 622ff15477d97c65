"""``ShardWriter`` from many threads: nothing lost (issue 12).

Eight threads share writers of one array and write chunks of shared shards
(every shard is written by several threads at once), through ``write_chunk``
(in place where the shard is dense and uncompressed, else the general path)
and ``writer[sel] = value`` (also regions that split inner chunks between
two threads), beside plain ``arr[...] = ...`` calls and a second writer on
another wrapper of the same store. The final array must equal a numpy model,
as stock zarr reads it from the bare store.

The control at the end shows the race these tests would catch: stock zarr's
plain API on a bare store, with the same kind of workload (threads writing
different inner chunks of one shard), loses all but one of the chunks.
"""

from __future__ import annotations

import itertools
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from zarr.codecs import ZstdCodec
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync
from zarr.storage import LocalStore, MemoryStore

from tests._shard_helpers import OURS, STOCK, new_array, no_locks_left
from tests._threads import run_together, wait_until
from tests._writer_helpers import ShardReadsMeet, stock_read
from zarr_rangelock import RangeLockedStore, ShardWriter
from zarr_rangelock.shards import _batches
from zarr_rangelock.shards._fastpaths import BUSY
from zarr_rangelock.store._durable import DurableLocalBackend

N = 8  # threads
SHAPE, CHUNKS, SHARDS = (23, 22), (3, 4), (12, 12)  # 8 x 6 chunks in 2 x 2 shards, edges
GRID = tuple(-(-s // c) for s, c in zip(SHAPE, CHUNKS, strict=True))
ALL_CHUNKS = list(itertools.product(*(range(g) for g in GRID)))
COMPRESSORS: dict[str, Any] = {"raw": None, "zstd": [ZstdCodec(level=1)]}

Inner = MemoryStore | LocalStore


def _inner(kind: str, tmp_path: Path) -> Inner:
    return MemoryStore() if kind == "memory" else LocalStore(tmp_path / "data")


def _create(inner: Inner, compressor: str, pipeline: dict[str, str] = OURS) -> zarr.Array[Any]:
    store = inner if pipeline is STOCK else RangeLockedStore(inner)
    return new_array(
        store,
        shape=SHAPE,
        chunks=CHUNKS,
        shards=SHARDS,
        pipeline=pipeline,
        compressors=COMPRESSORS[compressor],
    )


def _region(coords: tuple[int, ...]) -> tuple[slice, ...]:
    return tuple(
        slice(i * n, min((i + 1) * n, s)) for i, n, s in zip(coords, CHUNKS, SHAPE, strict=True)
    )


def _value(coords: tuple[int, ...], salt: int) -> Any:
    """Distinct numbers per chunk and round; a scalar for every third chunk."""
    k = ALL_CHUNKS.index(coords)
    if k % 3 == 0:
        return np.int32(1000 * salt + k + 1)
    shape = np.empty(SHAPE)[_region(coords)].shape
    return np.arange(int(np.prod(shape)), dtype="i4").reshape(shape) + 1000 * salt + 100 * k + 1


def _stock_read(inner: Inner) -> np.ndarray:
    with zarr.config.set(STOCK):
        return np.asarray(zarr.open_array(inner, mode="r")[...])


def _prefill(writer: ShardWriter, model: np.ndarray) -> None:
    """Shard (0, 0) dense and its index validated (the fast path applies
    there from the start); the other shards do not exist yet."""
    writer[0:12, 0:12] = 1
    writer[0, 0] = 2
    model[0:12, 0:12] = 1
    model[0, 0] = 2


@pytest.mark.timeout(120)
@pytest.mark.parametrize("how", ["write_chunk", "setitem", "mixed"])
@pytest.mark.parametrize("compressor", list(COMPRESSORS))
@pytest.mark.parametrize("kind", ["memory", "local"])
def test_threads_sharing_a_writer_writing_chunks_of_shared_shards_lose_nothing(
    kind: str, compressor: str, how: str, tmp_path: Path
) -> None:
    # Thread i writes chunks i, i + 8, i + 16, ... (row-major), so the eight
    # threads write into every shard at once; two rounds, so the second finds
    # every shard made (dense when uncompressed: in place).
    inner = _inner(kind, tmp_path)
    arr = _create(inner, compressor)
    writer = ShardWriter(arr)
    model = np.zeros(SHAPE, dtype="i4")
    _prefill(writer, model)
    mine = [ALL_CHUNKS[i::N] for i in range(N)]

    def work(i: int) -> None:
        for salt in (1, 2, 3):
            for j, coords in enumerate(mine[i]):
                chunk = how == "write_chunk" or (how == "mixed" and (i + j) % 2 == 0)
                if chunk:
                    writer.write_chunk(coords, _value(coords, salt))
                else:
                    writer[_region(coords)] = _value(coords, salt)

    run_together(N, work)
    for coords in ALL_CHUNKS:
        model[_region(coords)] = _value(coords, 3)
    np.testing.assert_array_equal(arr[...], model)
    np.testing.assert_array_equal(_stock_read(inner), model)
    no_locks_left(arr)


def _bands() -> list[tuple[Any, slice]]:
    """Eight disjoint row bands with edges off the chunk grid (3 rows per
    chunk): most inner chunks are split between two threads; a band of one
    row is an integer index."""
    edges = [0, 2, 5, 7, 11, 12, 16, 20, 23]
    return [
        (lo if hi - lo == 1 else slice(lo, hi), slice(1, 21))
        for lo, hi in itertools.pairwise(edges)
    ]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("compressor", list(COMPRESSORS))
@pytest.mark.parametrize("kind", ["memory", "local"])
def test_threads_writing_bands_that_split_inner_chunks_lose_nothing(
    kind: str, compressor: str, tmp_path: Path
) -> None:
    inner = _inner(kind, tmp_path)
    arr = _create(inner, compressor)
    writer = ShardWriter(arr)
    model = np.zeros(SHAPE, dtype="i4")
    _prefill(writer, model)
    bands = _bands()
    values = [
        np.arange(model[b].size, dtype="i4").reshape(model[b].shape) + 100 * (i + 1)
        for i, b in enumerate(bands)
    ]

    def work(i: int) -> None:
        writer[bands[i]] = values[i]

    run_together(N, work)
    for band, value in zip(bands, values, strict=True):
        model[band] = value
    np.testing.assert_array_equal(arr[...], model)
    np.testing.assert_array_equal(_stock_read(inner), model)
    no_locks_left(arr)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("compressor", list(COMPRESSORS))
def test_writers_on_two_wrappers_and_the_plain_api_writing_at_once_lose_nothing(
    compressor: str, tmp_path: Path
) -> None:
    # Three kinds of writer of one LocalStore root at once: a writer of the
    # array through one wrapper, a writer of the array opened through another
    # wrapper of the same root, and plain arr[...] = ... calls (which run on
    # zarr's event loop). They share the root's locks.
    inner = _inner("local", tmp_path)
    arr = _create(inner, compressor)
    first = ShardWriter(arr)
    with zarr.config.set(OURS):
        second = ShardWriter(zarr.open_array(RangeLockedStore(LocalStore(tmp_path / "data"))))
    model = np.zeros(SHAPE, dtype="i4")
    _prefill(first, model)
    mine = [ALL_CHUNKS[i::N] for i in range(N)]

    def work(i: int) -> None:
        for coords in mine[i]:
            value = _value(coords, 3)
            if i % 3 == 0:
                first.write_chunk(coords, value)
            elif i % 3 == 1:
                second.write_chunk(coords, value)
            else:
                arr[_region(coords)] = value

    run_together(N, work)
    for coords in ALL_CHUNKS:
        model[_region(coords)] = _value(coords, 3)
    np.testing.assert_array_equal(arr[...], model)
    np.testing.assert_array_equal(_stock_read(inner), model)
    no_locks_left(arr)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("compressor", list(COMPRESSORS))
def test_threads_overwriting_one_chunk_leave_one_of_the_values_whole(
    compressor: str, tmp_path: Path
) -> None:
    # Eight threads write the same chunk, each a value of its own, many times:
    # the chunk holds one writer's whole value at the end, never a mixture,
    # and the neighbours in its shard are untouched.
    arr = _create(MemoryStore(), compressor)
    writer = ShardWriter(arr)
    model = np.zeros(SHAPE, dtype="i4")
    _prefill(writer, model)
    coords = (1, 1)
    region = _region(coords)
    shape = model[region].shape
    values = [np.full(shape, 100 + i, dtype="i4") for i in range(N)]

    def work(i: int) -> None:
        for j in range(10):
            if j % 2:
                writer.write_chunk(coords, values[i])
            else:
                writer[region] = values[i]

    run_together(N, work)
    got = arr[...]
    assert any(np.array_equal(got[region], v) for v in values), got[region]
    model[region] = got[region]
    np.testing.assert_array_equal(got, model)
    no_locks_left(arr)


# ----------------------------------------------------------------- the control


@pytest.mark.timeout(60)
def test_control_stock_zarr_threads_writing_chunks_of_one_shard_lose_all_but_one() -> None:
    # The same kind of workload as above, one round: eight threads each write
    # one inner chunk of shard (0, 0), through stock zarr's plain API on a
    # bare store. Every thread's sync call runs on zarr's event loop, where
    # the store holds each shard read until all eight have read: each then
    # sets the whole shard holding its own chunk only, and the last one wins.
    # Through a ShardWriter (tests above; the wrapper takes only exact
    # MemoryStore and LocalStore types, so this store cannot be wrapped)
    # nothing is lost.
    inner = ShardReadsMeet()
    arr = _create(inner, "raw", pipeline=STOCK)
    inner.expected = N
    coords = [c for c in ALL_CHUNKS if c[0] < 4 and c[1] < 3][:N]  # all in shard (0, 0)
    model = np.zeros(SHAPE, dtype="i4")
    for c in coords:
        model[_region(c)] = _value(c, 1)

    def work(i: int) -> None:
        arr[_region(coords[i])] = _value(coords[i], 1)

    run_together(N, work)
    assert inner.reads == N
    inner.expected = 0
    got = _stock_read(inner)
    kept = [c for c in coords if np.array_equal(got[_region(c)], model[_region(c)])]
    assert len(kept) == 1, kept  # seven of the eight chunks are lost


@pytest.mark.timeout(60)
def test_the_control_workload_through_a_writer_loses_nothing() -> None:
    # The twin of the control: the same eight chunks of one shard from eight
    # threads released at once by a barrier, through one ShardWriter.
    arr = _create(MemoryStore(), "raw")
    writer = ShardWriter(arr)
    coords = [c for c in ALL_CHUNKS if c[0] < 4 and c[1] < 3][:N]
    model = np.zeros(SHAPE, dtype="i4")
    for c in coords:
        model[_region(c)] = _value(c, 1)

    def work(i: int) -> None:
        writer.write_chunk(coords[i], _value(coords[i], 1))

    run_together(N, work)
    np.testing.assert_array_equal(arr[...], model)
    no_locks_left(arr)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("n_shards", [1, 2], ids=["one-shard", "two-shards"])
def test_a_writer_write_of_several_chunks_is_as_atomic_as_the_plain_apis(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, n_shards: int
) -> None:
    """``writer[sel] = value`` of whole chunks of dense shards: another write
    of the same region that starts while it writes comes after it as a
    whole, in every shard.

    Deterministic interleaving: the other write (the plain API, from another
    thread) starts when the writer goes on to a second shard's fast path,
    else when the writer's first ``pwrite`` returns (under its locks); it
    must end up waiting for a lock (the table counts a waiter), or end; then
    the writer goes on. Both take the in-place fast path: one shard under
    one lock, two with both shards' locks held at once (``put_all_in_place``).
    Until 2026-12-05 the writer wrote a selection over two shards shard by
    shard, each under its own lock: the other write took both shards in
    between and ended, and the writer then wrote its second shard over it,
    leaving the first shard the other write's and the second the writer's,
    no serial order (the stress runner found it between processes,
    ``torn_write``, about one run in six with 64 shards and three
    processes)."""
    store = RangeLockedStore(LocalStore(tmp_path / "data"))
    arr = new_array(store, shape=(2, 8), chunks=(2, 2), shards=(2, 4), pipeline=OURS)
    arr[:] = 5  # both shards dense
    writer = ShardWriter(arr)
    region = np.s_[:, : 4 * n_shards]
    writer[region] = 6  # both shards validated by the writer
    writing = threading.get_ident()
    other_started, other_ended = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def other() -> None:
        try:
            arr[region] = 2
        except BaseException as e:
            errors.append(e)
        finally:
            other_ended.set()

    def start_other() -> None:
        if threading.get_ident() != writing or other_started.is_set():
            return
        other_started.set()
        threading.Thread(target=other, daemon=True).start()
        wait_until(
            lambda: other_ended.is_set() or store._mgr.stats().waiters > 0,
            "the other write waits for a lock or ends",
        )

    real_pwrite, real_put, puts = os.pwrite, ShardWriter._put, [0]
    real_all, alls = _batches.put_all_in_place, [0]

    def put_all(*args: Any) -> int:
        alls[0] += 1
        return real_all(*args)

    def pwrite(fd: int, data: Any, offset: int) -> int:
        n = real_pwrite(fd, data, offset)
        if n_shards == 1 or puts[0] == 0:
            start_other()
        return n

    def put(self: ShardWriter, *args: Any, **kwargs: Any) -> int:
        puts[0] += 1
        if puts[0] == 2:  # a second shard's fast path
            start_other()
        return real_put(self, *args, **kwargs)

    monkeypatch.setattr(os, "pwrite", pwrite)
    monkeypatch.setattr(ShardWriter, "_put", put)
    monkeypatch.setattr(_batches, "put_all_in_place", put_all)
    writer[region] = 1
    assert other_started.is_set(), "the writer wrote nothing"
    assert other_ended.wait(30) and not errors, errors
    got = arr[region]
    assert (got == 2).all(), f"the other write did not come after the writer's whole:\n{got}"
    assert (puts[0], alls[0]) == ((1, 0) if n_shards == 1 else (0, 1))  # the fast paths


def _counting_put_all(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """What each ``put_all_in_place`` call of the writers returns, in order."""
    real, results = _batches.put_all_in_place, []

    def put_all(*args: Any) -> int:
        results.append(real(*args))
        return results[-1]

    monkeypatch.setattr(_batches, "put_all_in_place", put_all)
    return results


def _two_dense_shards(root: Path) -> tuple[zarr.Array[Any], ShardWriter]:
    """An array of two dense shards of 2 x 2 chunks, all 6, and a writer that
    validated both (its next write over them takes ``put_all_in_place``)."""
    arr = new_array(
        RangeLockedStore(LocalStore(root)),
        shape=(2, 8),
        chunks=(2, 2),
        shards=(2, 4),
        pipeline=OURS,
    )
    arr[:] = 5
    writer = ShardWriter(arr)
    writer[:, :] = 6
    return arr, writer


@pytest.mark.timeout(60)
def test_a_writer_write_over_several_shards_meeting_a_busy_lock_leaves_it_to_the_pipeline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``put_all_in_place`` takes every shard's locks without waiting: where
    one is busy it writes nothing (not the shards whose locks were free),
    and the pipeline writes the selection, waiting for the lock as it does.
    Deterministic: a chunk of the second shard is held until the pipeline
    waits for it."""
    arr, writer = _two_dense_shards(tmp_path / "data")
    store = arr.store
    assert isinstance(store, RangeLockedStore)
    results = _counting_put_all(monkeypatch)
    done = threading.Event()
    errors: list[BaseException] = []

    def write() -> None:
        try:
            writer[:, :] = 1
        except BaseException as e:
            errors.append(e)
        finally:
            done.set()

    with store.locked_sync("c/0/1", [(0, 1)]):  # a byte of the second shard's first chunk
        threading.Thread(target=write, daemon=True).start()
        wait_until(
            lambda: done.is_set() or store.lock_manager.stats().waiters > 0,
            "the writer waits for the held lock",
        )
        assert not done.is_set() and results == [BUSY]
        # Nothing written meanwhile, in either shard (read past the locks).
        np.testing.assert_array_equal(stock_read(LocalStore(tmp_path / "data")), 6)
    assert done.wait(30) and not errors, errors
    assert results == [BUSY]  # (the pipeline wrote it)
    np.testing.assert_array_equal(arr[:], 1)
    np.testing.assert_array_equal(stock_read(LocalStore(tmp_path / "data")), 1)
    no_locks_left(arr)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("change", ["deleted", "rewritten"])
def test_a_writer_write_over_several_shards_changed_by_another_store_leaves_it_to_the_pipeline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, change: str
) -> None:
    """A shard the writer validated, deleted or rewritten whole since through
    another store of the root (as another process would: its change stamp
    moved): ``put_all_in_place`` checks the stamps under its locks, writes
    nothing and the pipeline writes the selection, recreating the deleted
    shard. Without the check the write goes in place from an index that
    need no longer be the shard's: into the deleted shard it raises
    ``KeyNotFoundError`` (``set_range`` refuses a missing key), into the
    rewritten one it writes at the old offsets."""
    arr, writer = _two_dense_shards(tmp_path / "data")
    other = RangeLockedStore(LocalStore(tmp_path / "data"))
    if change == "deleted":
        sync(other.delete("c/0/1"))
    else:  # the same bytes, written as one whole value (a new file renamed over it)
        value = sync(other.get("c/0/1", default_buffer_prototype()))
        assert value is not None
        sync(other.set("c/0/1", value))
    results = _counting_put_all(monkeypatch)
    writer[:, :] = 1
    assert results == [0]
    np.testing.assert_array_equal(arr[:], 1)
    np.testing.assert_array_equal(stock_read(LocalStore(tmp_path / "data")), 1)
    no_locks_left(arr)


@pytest.mark.timeout(60)
def test_a_writer_write_over_several_shards_of_a_journaled_store_is_one_transaction(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In a journaled store the plain API's write of several shards is one
    transaction (all or nothing after a crash); ``writer[sel] = value`` over
    several shards leaves such a store to the pipeline, which commits once,
    rather than writing each shard in place as a transaction of its own."""
    store = RangeLockedStore(LocalStore(tmp_path / "data"), durability="journal")
    arr = new_array(store, shape=(2, 8), chunks=(2, 2), shards=(2, 4), pipeline=OURS)
    arr[:] = 5  # both shards dense
    writer = ShardWriter(arr)
    writer[:, :8] = 6  # both shards validated by the writer
    commits: list[list[str]] = []  # the keys of each transaction committed
    real = DurableLocalBackend.commit  # (commit_async commits through it)

    def commit(self: DurableLocalBackend, txn: Any) -> None:
        commits.append(sorted(txn.ops))
        real(self, txn)

    monkeypatch.setattr(DurableLocalBackend, "commit", commit)
    writer[:, :8] = 1
    assert (arr[:] == 1).all()
    assert commits == [["c/0/0", "c/0/1"]], commits  # one transaction of both shards
