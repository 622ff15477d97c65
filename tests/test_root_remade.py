"""A LocalStore root removed and made again while objects of its first directory live.

A notebook re-run, or any "start over", does ``shutil.rmtree(root)`` (or a
bare LocalStore's ``clear()``, which does the same) and makes the array again
at the same path, while the old array object is still bound to a variable.
A new ``RangeLockedStore`` of the path must then not join the state of the
removed directory (its lock file, its descriptors, the shard caches keyed by
it): before, the first write into the new array raised ``KeyNotFoundError``
(a shard's index cached under a stamp nothing had changed), and with another
process writing the new array, this process's writes corrupted shards and
its locks, taken on the removed lock file, excluded nobody
(``store/_state``'s *A root made again*).

Each test keeps the old array object alive to the end. Worker functions live
in this module, top level, so spawn can pickle them by reference (see
``tests/test_processes.py``). No test orders events by sleeping: processes
meet at a spawn-context barrier, and every wait has a deadline that only
catches hangs.
"""

from __future__ import annotations

import pickle
import shutil
import threading
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from zarr.codecs import ZstdCodec
from zarr.core.buffer import cpu
from zarr.core.sync import sync
from zarr.storage import LocalStore

from tests._processes import BARRIER_TIMEOUT, SPAWN, run_workers, try_in_another_process
from tests._shard_helpers import OURS, STOCK
from zarr_rangelock import RangeLockedStore, ShardWriter

SHAPE, SHARDS, CHUNKS = (64, 64), (32, 32), (4, 4)
CHUNKS_PER_SIDE = SHAPE[0] // CHUNKS[0]


def _create(store: RangeLockedStore, compressed: bool) -> zarr.Array[Any]:
    return zarr.create_array(
        store,
        shape=SHAPE,
        shards=SHARDS,
        chunks=CHUNKS,
        dtype="i4",
        compressors=ZstdCodec() if compressed else None,
    )


def _chunk(c: tuple[int, int]) -> tuple[slice, slice]:
    return slice(c[0] * 4, c[0] * 4 + 4), slice(c[1] * 4, c[1] * 4 + 4)


def _stock_read(root: Path) -> np.ndarray[Any, Any]:
    """The whole array as stock zarr reads it (no wrapper, its own pipeline)."""
    with zarr.config.set(STOCK):
        return zarr.open_array(LocalStore(root), mode="r")[:]  # type: ignore[return-value]  # an ndarray for [:]


def _old_array(root: Path, compressed: bool, cross_process: bool) -> zarr.Array[Any]:
    """The root's first array, filled and with one chunk written since (so this
    process has cached shard c/0/0's index and descriptors of its files)."""
    old = _create(RangeLockedStore(LocalStore(root), cross_process=cross_process), compressed)
    old[:] = np.arange(old.size, dtype="i4").reshape(SHAPE)
    old[_chunk((0, 0))] = -1
    return old


# ------------------------------------------------------------- one process

WRITES = [(0, 0), (0, 1), (5, 5), (9, 9), (0, 0), (15, 15)]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("cross_process", [True, False], ids=["cross_process", "in_process"])
@pytest.mark.parametrize("how", ["plain", "shard_writer"])
@pytest.mark.parametrize("compressed", [True, False], ids=["zstd", "uncompressed"])
def test_an_array_made_again_on_a_removed_root_is_written_right_while_the_old_one_lives(
    tmp_path: Path, compressed: bool, how: str, cross_process: bool
) -> None:
    """The root removed with rmtree and the array made again at its path by a
    new store, the old array object still alive: chunk writes into the new
    array, through ``arr[sel] = v`` and through a ``ShardWriter``, land as
    written, and stock zarr reads them back (before: ``KeyNotFoundError`` at
    the first write)."""
    root = tmp_path / "data.zarr"
    with zarr.config.set(OURS):
        old = _old_array(root, compressed, cross_process)
        shutil.rmtree(root)
        arr = _create(RangeLockedStore(LocalStore(root), cross_process=cross_process), compressed)
        writer = ShardWriter(arr)
        expect = np.zeros(SHAPE, "i4")
        for i, c in enumerate(WRITES):
            value = np.full(CHUNKS, 100 + i, "i4")
            if how == "plain":
                arr[_chunk(c)] = value
            else:
                writer.write_chunk(c, value)
            expect[_chunk(c)] = value
        np.testing.assert_array_equal(arr[:], expect)
    np.testing.assert_array_equal(_stock_read(root), expect)
    assert old.store._state is not arr.store._state  # type: ignore[attr-defined]  # a RangeLockedStore


@pytest.mark.timeout(60)
@pytest.mark.parametrize("cross_process", [True, False], ids=["cross_process", "in_process"])
def test_a_root_cleared_by_a_bare_store_gets_a_fresh_state_for_new_stores_only(
    tmp_path: Path, cross_process: bool
) -> None:
    """A bare LocalStore's ``clear()`` (rmtree and mkdir) makes the root
    again too: a store made after it, its ``with_read_only()`` copy and its
    unpickled copy share a fresh state; the old store keeps the old one."""
    root = tmp_path / "data.zarr"
    old = RangeLockedStore(LocalStore(root), cross_process=cross_process)
    old.set_sync("k", cpu.Buffer.from_bytes(b"old value"))
    sync(LocalStore(root).clear())
    new = RangeLockedStore(LocalStore(root), cross_process=cross_process)
    assert new._state is not old._state
    assert new.with_read_only()._state is new._state
    assert pickle.loads(pickle.dumps(new))._state is new._state
    assert old._state.uid != new._state.uid  # the shard caches' key
    assert RangeLockedStore(LocalStore(root), cross_process=cross_process)._state is new._state


# ---------------------------------------------------- no state split apart


@pytest.mark.timeout(60)
@pytest.mark.parametrize("cross_process", [True, False], ids=["cross_process", "in_process"])
def test_a_root_cleared_through_a_store_keeps_its_state(
    tmp_path: Path, cross_process: bool
) -> None:
    """The wrapper's own ``clear()`` and ``delete_dir("")`` (what
    ``create_array(..., overwrite=True)`` uses) keep the root and its lock
    file: a store made afterwards shares the state of the live ones. (A
    guard: only a root made again behind the wrappers' back gets a fresh one.)"""
    root = tmp_path / "data.zarr"
    store = RangeLockedStore(LocalStore(root), cross_process=cross_process)
    store.set_sync("k", cpu.Buffer.from_bytes(b"value"))
    sync(store.clear())
    assert RangeLockedStore(LocalStore(root), cross_process=cross_process)._state is store._state
    store.set_sync("a/k", cpu.Buffer.from_bytes(b"value"))
    sync(store.delete_dir(""))
    assert RangeLockedStore(LocalStore(root), cross_process=cross_process)._state is store._state


@pytest.mark.timeout(60)
@pytest.mark.parametrize("cross_process", [True, False], ids=["cross_process", "in_process"])
def test_stores_of_a_root_made_by_the_first_ones_write_share_one_state(
    tmp_path: Path, cross_process: bool
) -> None:
    """A root that does not exist when its first store is made, and is made
    by that store's first write: stores made afterwards (a new one, a
    read-only copy, an unpickled one) still share the first one's state, so
    they exclude each other. (A guard: the check must not split them.)"""
    root = tmp_path / "not yet" / "data.zarr"
    first = RangeLockedStore(LocalStore(root), cross_process=cross_process)
    with zarr.config.set(OURS):
        arr = _create(first, compressed=True)
        arr[:] = 1
    for later in (
        RangeLockedStore(LocalStore(root), cross_process=cross_process),
        first.with_read_only(),
        pickle.loads(pickle.dumps(first)),
        RangeLockedStore(LocalStore(root, read_only=True), cross_process=cross_process),
    ):
        assert later._state is first._state


@pytest.mark.timeout(60)
def test_a_read_only_store_of_a_missing_root_shares_its_state_with_the_writer_that_makes_it(
    tmp_path: Path,
) -> None:
    """A read-only in-process store made before its root exists, then a
    writable one, which makes the root (as zarr's ``LocalStore._open`` would):
    one state, bound from then on to that directory, so a store made after
    the root is removed gets a fresh one."""
    root = tmp_path / "data.zarr"
    reader = RangeLockedStore(LocalStore(root, read_only=True), cross_process=False)
    writer = RangeLockedStore(LocalStore(root), cross_process=False)
    assert writer._state is reader._state
    assert root.is_dir()
    assert RangeLockedStore(LocalStore(root), cross_process=False)._state is reader._state
    shutil.rmtree(root)
    assert RangeLockedStore(LocalStore(root), cross_process=False)._state is not reader._state


# -------------------------------------------------------- two processes


def _make_again(worker: int, root: str, compressed: bool, fill: bool) -> None:
    """Another process (a job, a dask worker) removes the root and makes the
    array again, filled with data that does not compress if ``fill``, else
    with no shard at all."""
    shutil.rmtree(root)
    with zarr.config.set(OURS):
        arr = _create(RangeLockedStore(LocalStore(root)), compressed)
        if fill:
            arr[:] = _incompressible()


def _incompressible() -> np.ndarray[Any, Any]:
    return np.random.default_rng(1).integers(0, 2**31, SHAPE, dtype="i4")


def _mine(worker: int) -> list[tuple[int, int]]:
    """Worker ``worker``'s chunks (of 2): every other chunk of every shard, so
    both write into every shard."""
    return [
        (i, j)
        for i in range(CHUNKS_PER_SIDE)
        for j in range(CHUNKS_PER_SIDE)
        if (i + j) % 2 == worker
    ]


def _value(worker: int, rnd: int, c: tuple[int, int]) -> np.ndarray[Any, Any]:
    # incompressible, so every round's chunk has another size: appends, moves
    seed = (worker * 1000 + rnd) * 1000 + c[0] * CHUNKS_PER_SIDE + c[1]
    return np.random.default_rng(seed).integers(0, 2**31, CHUNKS, dtype="i4")


ROUNDS = 3


def _write_mine(worker: int, root: str, barrier: Barrier) -> None:
    with zarr.config.set(OURS):
        arr = zarr.open_array(RangeLockedStore(LocalStore(root)), mode="r+")
        barrier.wait(BARRIER_TIMEOUT)
        for rnd in range(ROUNDS):
            for c in _mine(worker):
                arr[_chunk(c)] = _value(worker, rnd, c)


@pytest.mark.timeout(90)
@pytest.mark.parametrize("compressed", [True, False], ids=["zstd", "uncompressed"])
def test_an_array_another_process_made_again_is_written_right_while_the_old_one_lives(
    tmp_path: Path, compressed: bool
) -> None:
    """Another process removes the root and makes and fills the array again;
    this process, its old array object alive, opens the new one with a new
    store: it reads the other process's data, and its chunk writes land as
    written, readable by stock zarr (before: zstd shards stock zarr could not
    read, "Zstd decompression error")."""
    root = tmp_path / "data.zarr"
    with zarr.config.set(OURS):
        old = _old_array(root, compressed, cross_process=True)
        run_workers(_make_again, 1, str(root), compressed, True)
        arr = zarr.open_array(RangeLockedStore(LocalStore(root)), mode="r+")
        expect = _incompressible()
        np.testing.assert_array_equal(arr[:], expect)
        for i, c in enumerate([(0, 1), (3, 3), (7, 7), (0, 0)]):
            arr[_chunk(c)] = 5 + i
            expect[_chunk(c)] = 5 + i
    np.testing.assert_array_equal(_stock_read(root), expect)
    assert old.store._state is not arr.store._state  # type: ignore[attr-defined]  # a RangeLockedStore


@pytest.mark.timeout(90)
def test_a_store_of_a_root_another_process_made_again_excludes_that_process(
    tmp_path: Path,
) -> None:
    """After another process made the root again, a lock this process takes
    through a new store excludes other processes (before: it was taken on the
    removed lock file, and another process was granted the same bytes)."""
    root = tmp_path / "data.zarr"
    with zarr.config.set(OURS):
        old = _old_array(root, compressed=True, cross_process=True)
        run_workers(_make_again, 1, str(root), True, True)
        store = RangeLockedStore(LocalStore(root))
        with store.locked_sync("c/0/0", [(0, 16)]):
            assert try_in_another_process(root, "c/0/0", 0, 16) == "busy"
        assert try_in_another_process(root, "c/0/0", 0, 16) == "granted"  # the control
    del old


@pytest.mark.timeout(120)
@pytest.mark.parametrize("compressed", [True, False], ids=["zstd", "uncompressed"])
def test_this_process_and_one_that_made_the_root_again_write_shared_shards_losing_nothing(
    tmp_path: Path, compressed: bool
) -> None:
    """Another process makes the root again, with no shard; then it and this
    process (its old array object alive) write different chunks of the same
    shards at once, several rounds (the first makes every shard, whichever
    process comes first; zstd chunks change size every round): no chunk is
    lost or moved, and stock zarr reads every shard, so the two processes
    excluded each other (before: ``KeyNotFoundError`` in this process)."""
    root = tmp_path / "data.zarr"
    with zarr.config.set(OURS):
        old = _old_array(root, compressed, cross_process=True)
        run_workers(_make_again, 1, str(root), compressed, False)
        barrier = SPAWN.Barrier(2)
        errors: list[BaseException] = []

        def here() -> None:
            try:
                _write_mine(0, str(root), barrier)
            except BaseException as e:
                barrier.abort()
                errors.append(e)

        thread = threading.Thread(target=here, name="this-process-writer")
        thread.start()
        try:
            run_workers(_other_process_writes, 1, str(root), barrier)
        finally:
            thread.join(60)
        assert not thread.is_alive()
        if errors:
            raise errors[0]
    expect = np.empty(SHAPE, "i4")
    for worker in (0, 1):
        for c in _mine(worker):
            expect[_chunk(c)] = _value(worker, ROUNDS - 1, c)
    np.testing.assert_array_equal(_stock_read(root), expect)
    del old


def _other_process_writes(worker: int, root: str, barrier: Barrier) -> None:
    """The other process's writer: worker 1's chunks (run_workers numbers it 0)."""
    _write_mine(1, root, barrier)


# ------------------------------------------------- a relative root, then chdir


@pytest.mark.timeout(60)
def test_a_relative_root_stays_the_directory_it_named_when_the_program_changes_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A notebook wraps LocalStore("data.zarr") and later runs %cd. The bare
    # LocalStore then follows the working directory; the wrapper kept the lock
    # table (keyed by the directory it resolved when made) and the lock file
    # of the first directory, and wrote into the second: its with_read_only()
    # copy, and a wrapper of the second directory, got lock tables of their
    # own, and nothing excluded them. The wrapper keeps its directory.
    for d in ("one", "two"):
        (tmp_path / d / "data.zarr").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "one")
    store = RangeLockedStore(LocalStore("data.zarr"))
    store.set_sync("k", cpu.Buffer.from_bytes(b"0" * 8))
    monkeypatch.chdir(tmp_path / "two")
    store.set_range_sync("k", cpu.Buffer.from_bytes(b"X"), 0)
    assert (tmp_path / "one" / "data.zarr" / "k").read_bytes() == b"X" + b"0" * 7
    assert not (tmp_path / "two" / "data.zarr" / "k").exists()
    copies = [store.with_read_only(), pickle.loads(pickle.dumps(store))]
    for copy in copies:
        assert copy.lock_manager is store.lock_manager
        assert copy.get_sync("k").to_bytes() == b"X" + b"0" * 7
    other = RangeLockedStore(LocalStore(tmp_path / "one" / "data.zarr"))
    assert other.lock_manager is store.lock_manager
