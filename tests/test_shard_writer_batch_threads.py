"""``ShardWriter.write_chunks`` from threads, and on durable stores (issue 12).

The batches of ``test_shard_writer_batches.py`` (its geometry, its twins
with the fast paths open and its spy, from ``tests/_batch_helpers.py``),
written:

- from threads: writers of disjoint chunks of shared shards lose nothing
  (the control in this module shows stock zarr losing the same pattern),
  writers of overlapping batches leave every chunk whole from one writer;
  and two deterministic interleavings show what the fast paths' locks
  prevent (with the lock taken out, a batch appended beside another loses
  the other's chunks, and a batch written in place beside a whole-shard
  write writes at stale offsets: both tests then fail);
- on durable stores: one ``fdatasync`` per shard of a batch with
  ``durability="fsync"``; the right values with the journal.

Processes writing batches into shared shards are in ``test_processes.py``.
"""

from __future__ import annotations

import itertools
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from zarr.storage import LocalStore, MemoryStore

from tests._batch_helpers import (
    T_ALL,
    T_CHUNKS,
    T_SHAPE,
    T_SHARD_KEYS,
    T_SHARDS,
    THREE_PER_SHARD,
    Spy,
    plain_writes,
    ready_twins,
    spy_on_writer,
    t_array,
    t_region,
    t_value,
)
from tests._shard_helpers import OURS, STOCK, new_array, no_locks_left
from tests._threads import run_together, wait_until
from tests._writer_helpers import (
    ALL_CHUNKS,
    CHUNKS,
    COMPRESSORS,
    SHAPE,
    STORES,
    ShardReadsMeet,
    assert_same,
    chunk_value,
    make_all_dense,
    stock_read,
    twins,
)
from zarr_rangelock import RangeLockedStore, ShardWriter
from zarr_rangelock.shards._known import _VALID

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> Spy:
    return spy_on_writer(monkeypatch)


# -------------------------------------------------------------------- threads


N = 8  # threads


def _batches(chunks: list[tuple[int, ...]], size: int) -> Iterator[list[tuple[int, ...]]]:
    for i in range(0, len(chunks), size):
        yield chunks[i : i + size]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("compressor", list(COMPRESSORS))
@pytest.mark.parametrize("kind", STORES)
def test_threads_writing_batches_of_their_own_chunks_of_shared_shards_lose_nothing(
    kind: str, compressor: str, tmp_path: Path
) -> None:
    # Thread i owns chunks i, i + 8, ... (row-major): every shard is written
    # by all eight at once. Batches of three chunks over two or three shards,
    # three rounds: the first makes the shards (but shard (0, 0), dense and
    # validated beforehand: in place from the start), the later ones find
    # them made. The control below shows stock zarr losing this pattern.
    inner: MemoryStore | LocalStore = (
        MemoryStore() if kind == "memory" else LocalStore(tmp_path / "data")
    )
    arr = t_array(inner, compressor)
    writer = ShardWriter(arr)
    model = np.zeros(T_SHAPE, dtype="i4")
    writer[0:12, 0:12] = 1
    writer[0, 0] = 2
    mine = [T_ALL[i::N] for i in range(N)]

    def work(i: int) -> None:
        for salt in (1, 2, 3):
            for j, batch in enumerate(_batches(mine[i], 3)):
                pairs = [(c, t_value(c, salt)) for c in batch]
                writer.write_chunks(dict(pairs) if j % 2 else pairs)

    run_together(N, work)
    for coords in T_ALL:
        model[t_region(coords)] = t_value(coords, 3)
    np.testing.assert_array_equal(arr[...], model)
    np.testing.assert_array_equal(stock_read(inner), model)
    no_locks_left(arr)


# The control: a batch of two chunks of one shard is, for stock zarr, one
# write of their region (one shard read-merge-write).
C_THREADS = 4
C_PAIRS = [((2 * i, j), (2 * i + 1, j)) for i, j in [(0, 0), (0, 1), (1, 0), (1, 2)]]
"""Each thread's two vertically adjacent chunks, all in shard (0, 0)."""


def _whole(coords: tuple[int, ...], tag: int) -> np.ndarray:
    value = t_value(coords, tag)
    return np.broadcast_to(value, np.empty(T_SHAPE)[t_region(coords)].shape)


def _c_region(pair: tuple[tuple[int, int], tuple[int, int]]) -> Any:
    (top, col), _ = pair
    return slice(top * 3, top * 3 + 6), slice(col * 4, col * 4 + 4)


@pytest.mark.timeout(60)
def test_control_stock_zarr_threads_writing_two_chunks_of_one_shard_each_keep_one_pair() -> None:
    # Four threads each write two chunks of shard (0, 0) in one call of stock
    # zarr's plain API on a bare store, which holds every shard read until all
    # four have read: each then sets the whole shard with its own two chunks
    # only, and the last one wins. The same workload through write_chunks
    # (next test) loses nothing.
    inner = ShardReadsMeet()
    arr = new_array(inner, shape=T_SHAPE, chunks=T_CHUNKS, shards=T_SHARDS, pipeline=STOCK)
    inner.expected = C_THREADS

    def work(i: int) -> None:
        arr[_c_region(C_PAIRS[i])] = np.vstack([_whole(c, i + 1) for c in C_PAIRS[i]])

    run_together(C_THREADS, work)
    assert inner.reads == C_THREADS
    inner.expected = 0
    got = stock_read(inner)
    kept = [
        i
        for i, pair in enumerate(C_PAIRS)
        if all(np.array_equal(got[t_region(c)], _whole(c, i + 1)) for c in pair)
    ]
    assert len(kept) == 1, kept  # three of the four batches are lost


@pytest.mark.timeout(60)
@pytest.mark.parametrize("compressor", list(COMPRESSORS))
def test_the_control_workload_through_write_chunks_loses_nothing(compressor: str) -> None:
    inner = MemoryStore()
    arr = t_array(inner, compressor)
    writer = ShardWriter(arr)

    def work(i: int) -> None:
        writer.write_chunks({c: t_value(c, i + 1) for c in C_PAIRS[i]})

    run_together(C_THREADS, work)
    got = stock_read(inner)
    for i, pair in enumerate(C_PAIRS):
        for c in pair:
            np.testing.assert_array_equal(got[t_region(c)], t_value(c, i + 1))
    no_locks_left(arr)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("compressor", list(COMPRESSORS))
def test_threads_writing_overlapping_batches_leave_every_chunk_whole_from_one_writer(
    compressor: str, spy: Spy
) -> None:
    # Eight threads write every chunk of two shards, each its own values (a
    # tag per thread and round), in batches of whole shards, in orders of
    # their own. Each chunk must end as one write's whole value, never mixed.
    # Uncompressed, every shard dense and validated beforehand: every batch
    # goes in place, one lock per shard, so a shard also holds one batch's
    # chunks only (the lock makes the shard's group one write).
    arr = t_array(MemoryStore(), compressor)
    writer = ShardWriter(arr)
    make_all_dense([writer], np.zeros(T_SHAPE, dtype="i4"), T_SHARDS)
    shard_of = {c: (c[0] // 4, c[1] // 3) for c in T_ALL}
    shards = [s for s in [(0, 0), (1, 1)]]
    groups = {s: [c for c in T_ALL if shard_of[c] == s] for s in shards}
    rounds = 4
    spy.clear()

    def work(i: int) -> None:
        rng = np.random.default_rng(i)
        for r in range(rounds):
            tag = 1 + i * rounds + r
            batch = []
            for s in rng.permutation(len(shards)):
                chunks = groups[shards[s]]
                batch += [chunks[k] for k in rng.permutation(len(chunks))]
            writer.write_chunks([(c, t_value(c, tag)) for c in batch])

    run_together(N, work)
    got = arr[...]
    tags = {}
    for c in itertools.chain.from_iterable(groups.values()):
        found = got[t_region(c)]
        tag = int(found.flat[0]) // 1000
        assert 1 <= tag <= N * rounds, (c, tag)
        np.testing.assert_array_equal(found, np.broadcast_to(t_value(c, tag), found.shape))
        tags[c] = tag
    if compressor == "raw":
        assert spy.slow == []
        for s, chunks in groups.items():
            assert len({tags[c] for c in chunks}) == 1, (s, {c: tags[c] for c in chunks})
    no_locks_left(arr)


# The two races the fast paths' locks prevent, as deterministic
# interleavings: a batch is paused in the middle of writing its shard (in the
# backend's write, after it looked at the index); the other writer must wait
# until it is done. Without the lock the other writer gets in, and the end
# state shows it (a lost batch, or a batch written at stale offsets).


class _Pause:
    """Pause the first call of ``Backend.<method>`` made by thread "A" until
    :attr:`go` is set; :attr:`paused` is set when it got there."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, store: Any, method: str) -> None:
        self.paused = threading.Event()
        self.go = threading.Event()
        backend = type(store._backend)
        original = getattr(backend, method)

        def paused(self_: Any, *args: Any, **kw: Any) -> None:
            if threading.current_thread().name == "A" and not self.paused.is_set():
                self.paused.set()
                self.go.wait(10)  # the deadline only catches a hang
            original(self_, *args, **kw)

        monkeypatch.setattr(backend, method, paused)


def _interleave(
    monkeypatch: pytest.MonkeyPatch,
    arr: zarr.Array[Any],
    method: str,
    first: Callable[[], None],
    second: Callable[[], None],
) -> bool:
    """``first`` in thread "A" until it pauses in its first call of
    ``Backend.<method>`` of ``arr``'s store, then ``second`` in another
    thread; whether ``second`` waited (a waiter queued on the store's lock
    table) rather than finished while ``first`` was paused. Both finish."""
    store = arr.store
    assert isinstance(store, RangeLockedStore)
    pause = _Pause(monkeypatch, store, method)
    mgr = store.lock_manager
    done = threading.Event()
    errors: list[BaseException] = []

    def run(fn: Callable[[], None]) -> Callable[[], None]:
        def target() -> None:
            try:
                fn()
            except BaseException as e:  # surfaced below
                errors.append(e)
            finally:
                if fn is second:
                    done.set()

        return target

    a = threading.Thread(target=run(first), name="A")
    a.start()
    wait_until(pause.paused.is_set, "the first writer is paused in its write")
    b = threading.Thread(target=run(second), name="B")
    b.start()
    wait_until(lambda: done.is_set() or mgr.stats().waiters > 0, "the second writer waits or ends")
    waited = not done.is_set()
    pause.go.set()
    a.join(10)
    b.join(10)
    assert not a.is_alive() and not b.is_alive()
    if errors:
        raise errors[0]
    return waited


@pytest.mark.timeout(60)
def test_a_batch_being_appended_holds_off_another_batch_into_its_shard(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, spy: Spy
) -> None:
    # Compressed: A appends its chunks at the end of the shard's live data
    # and re-points the index, from the index it knows. B, appending into
    # the same shard meanwhile from the same index, would write at the same
    # place; whichever index is written last drops the other's chunks.
    written, plain, writer, model = ready_twins("memory", tmp_path, "zstd")
    a_pairs = [(c, t_value(c, 2)) for c in [(1, 0), (1, 1)]]
    b_pairs = [(c, t_value(c, 3)) for c in [(1, 2), (2, 0)]]
    waited = _interleave(
        monkeypatch,
        written,
        "set_range",
        lambda: writer.write_chunks(a_pairs),
        lambda: writer.write_chunks(b_pairs),
    )
    plain_writes(plain, model, a_pairs + b_pairs)
    assert_same(written, plain, model)
    assert waited, "a second batch appended into a shard while another was appending"
    assert [t for *_, t in spy.appended] == [True, True]  # both appended, no pipeline
    no_locks_left(written)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("chunks", [3, 1])
def test_a_whole_shard_write_waits_for_a_batch_being_written_in_place(
    chunks: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, spy: Spy
) -> None:
    # Uncompressed: A writes its chunks at the offsets of the shard's
    # validated index. B rewrites the shard whole meanwhile, all but one
    # chunk fill, so zarr lays it out compact: A's writes, let go after,
    # would land at offsets that now hold B's data (or past the end).
    # (One chunk: write_chunk, whose lock is a single range.)
    written, plain, writer, model = ready_twins("memory", tmp_path, "raw")
    a_pairs = [(c, t_value(c, 2)) for c in [(0, 0), (1, 1), (3, 2)][:chunks]]
    whole = np.zeros((12, 12), dtype="i4")
    whole[6:9, 4:8] = t_value((2, 1), 3)
    waited = _interleave(
        monkeypatch,
        written,
        "set_ranges",
        lambda: writer.write_chunks(a_pairs) if chunks > 1 else writer.write_chunk(*a_pairs[0]),
        lambda: written.__setitem__((slice(0, 12), slice(0, 12)), whole),
    )
    assert waited, "a whole-shard write got in while a batch was written in place"
    assert spy.in_place == [("c/0/0", chunks, True)]
    plain_writes(plain, model, a_pairs)
    plain[0:12, 0:12] = whole
    model[0:12, 0:12] = whole
    assert_same(written, plain, model)
    no_locks_left(written)


def _compact_shard_of_16(kind: str, tmp_path: Path) -> zarr.Array[Any]:
    """One shard of 4 x 4 chunks of 4 x 4, uncompressed, one chunk of it
    holding data (1): compact (under a quarter of its chunks live)."""
    inner: Any = MemoryStore() if kind == "memory" else LocalStore(tmp_path / "race")
    with zarr.config.set(OURS):
        arr = zarr.create_array(
            RangeLockedStore(inner),
            shape=(16, 16),
            shards=(16, 16),
            chunks=(4, 4),
            dtype="i4",
            compressors=None,
            fill_value=0,
        )
    arr[0:4, 0:4] = 1
    return arr


@pytest.mark.timeout(60)
@pytest.mark.parametrize("race", ["laid out densely", "rewritten whole"])
@pytest.mark.parametrize("kind", STORES)
def test_a_batch_into_a_shard_that_loses_a_race_to_a_whole_shard_write_is_seen_all_or_nothing(
    race: str, kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The writer looks at the shard, then takes its lock; another writer's
    # whole-key write lands in between: it lays out densely the shard the
    # writer found compact (put_cold then declines), or rewrites whole (its
    # absent marks) the dense shard the writer had just validated (the
    # in-place write then finds the stamp moved). The batch's two chunks of
    # the shard must still be written as one: a reader after any step of
    # the call sees both old or both new. (It used to send the first chunk
    # through the pipeline alone and the other through the fast path after
    # it: a reader in between saw one new, one old. Found by a bug hunt.)
    arr = _compact_shard_of_16(kind, tmp_path)
    writer = ShardWriter(arr)
    if race == "rewritten whole":
        arr[:, :] = 2  # dense
        _VALID.clear()  # not validated yet, as in a process that never wrote it
    seen: list[tuple[int, int]] = []

    def look() -> None:
        a = arr[0:4, 0:8]
        seen.append((int(a[0, 0]), int(a[0, 4])))

    cls = ShardWriter
    raced = []

    def after_look(real: Callable[..., Any]) -> Callable[..., Any]:
        def hooked(self: ShardWriter, key: str, *rest: Any) -> Any:
            if race == "laid out densely" and real is real_cold and not raced:
                raced.append(key)
                arr[:, :] = 2  # every chunk live: laid out densely
            got = real(self, key, *rest)
            if race == "rewritten whole" and real is real_validate and got and not raced:
                raced.append(key)
                arr[12:16, 12:16] = 0  # a chunk cleared: the shard's marks, rewritten whole
            return got

        return hooked

    def after_step(real: Callable[..., Any]) -> Callable[..., Any]:
        def hooked(self: ShardWriter, *args: Any) -> Any:
            got = real(self, *args)
            look()
            return got

        return hooked

    real_cold, real_validate = cls._put_cold, cls._validate
    monkeypatch.setattr(cls, "_put_cold", after_step(after_look(real_cold)))
    monkeypatch.setattr(cls, "_validate", after_look(real_validate))
    monkeypatch.setattr(cls, "_put_in_place", after_step(cls._put_in_place))
    monkeypatch.setattr(cls, "_write_slow", after_step(cls._write_slow))
    value = np.full((4, 4), 3, dtype="i4")
    writer.write_chunks({(0, 0): value, (0, 1): value})
    monkeypatch.undo()
    assert raced == ["c/0/0"]
    assert seen and all((a == 3) == (b == 3) for a, b in seen), seen  # (3: the batch's)
    expected = np.full((16, 16), 2, dtype="i4")
    expected[0:4, 0:8] = 3
    if race == "rewritten whole":
        expected[12:16, 12:16] = 0
    np.testing.assert_array_equal(arr[...], expected)
    no_locks_left(arr)


# ------------------------------------------------------------ durable stores


@pytest.mark.parametrize("compressor", list(COMPRESSORS))
def test_a_batch_on_an_fsync_store_syncs_each_shard_once(
    compressor: str, tmp_path: Path, spy: Spy, monkeypatch: pytest.MonkeyPatch
) -> None:
    # durability="fsync": range writes are fdatasync-ed before they return.
    # In place, a batch's chunks of one shard are one write under one lock
    # (Backend.set_ranges): one fdatasync for all of them, not one per chunk.
    # Appended (compressed): the chunks, then the index, each synced, in
    # that order (the index must not reach the disk pointing at chunks that
    # did not): two per shard, whatever the number of chunks.
    written, plain, writer, model = ready_twins("local", tmp_path, compressor, durability="fsync")
    syncs: list[int] = []
    real = os.fdatasync

    def fdatasync(fd: int) -> None:
        syncs.append(fd)
        real(fd)

    monkeypatch.setattr(os, "fdatasync", fdatasync)
    chunks = T_ALL if compressor == "raw" else THREE_PER_SHARD
    pairs = [(c, t_value(c, 2)) for c in chunks]
    spy.clear()
    writer.write_chunks(pairs)
    assert spy.slow == []
    per_shard = 1 if compressor == "raw" else 2
    assert len(syncs) == per_shard * len(T_SHARD_KEYS), syncs
    monkeypatch.undo()
    plain_writes(plain, model, pairs)
    assert_same(written, plain, model)


@pytest.mark.parametrize("compressor", list(COMPRESSORS))
@pytest.mark.parametrize("durability", ["journal", "journal-nosync"])
def test_batches_on_a_journaled_store_write_the_plain_apis_values(
    durability: str, compressor: str, tmp_path: Path, spy: Spy
) -> None:
    # Compressed chunks and their index must be one transaction: no append
    # fast path there, the pipeline's. Uncompressed dense shards: in place,
    # each chunk journaled.
    written, plain = twins("local", tmp_path, compressor, durability=durability)
    writer = ShardWriter(written)
    model = np.zeros(SHAPE, dtype="i4")
    for salt in range(3):
        pairs = [
            (c, chunk_value(c, salt) if (salt + k) % 4 else 0) for k, c in enumerate(ALL_CHUNKS)
        ]
        writer.write_chunks(pairs)
        plain_writes(plain, model, pairs, SHAPE, CHUNKS)
        assert_same(written, plain, model)
        writer[1, 1] = salt  # partial writes: validates dense shards
        plain[1, 1] = salt
        model[1, 1] = salt
    assert spy.appended == []
    if compressor == "raw":
        assert any(taken for *_, taken in spy.in_place)
    np.testing.assert_array_equal(stock_read(LocalStore(tmp_path / "writer"), "group/array"), model)
    store = written.store
    assert isinstance(store, RangeLockedStore)
    assert store.recover() == 0  # nothing left to replay
