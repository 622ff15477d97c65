"""``ShardWriter``'s gate: small uncompressed chunks, one thread at a time (issue 12).

Writes of small chunks are mostly Python around system calls that let the
GIL go, so threads writing them at once mostly hand the GIL back and forth;
``_fastpaths.GATE`` lets one thread at a time into the in-place fast path
(the speed is in ``benchmarks/throughput.py``, not asserted here). What is
tested: which writers take the gate, and that a write held up by a lock
(a reader, another process) waits outside it, so the process's other
writers go on. The control shows what the test catches: a write that waits
for its lock inside the gate holds up a write of another shard.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import sys
import threading
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from zarr.codecs import ZstdCodec
from zarr.storage import LocalStore, MemoryStore

from tests._processes import present_in_another_process, try_in_another_process
from tests._shard_helpers import OURS, new_array
from tests._threads import wait_until
from zarr_rangelock import RangeLockedStore, ShardWriter
from zarr_rangelock.shards import _fastpaths
from zarr_rangelock.shards._known import _VALID
from zarr_rangelock.shards._places import Places
from zarr_rangelock.store import _backends

pytestmark = pytest.mark.timeout(60)

CHUNKS = (64, 64)  # 16 KiB of int32: gated
SHARDS = (128, 64)  # two chunks a shard
SHAPE = (128, 128)  # two shards
IN_S, IN_T = (0, 0), (0, 1)  # a chunk of each shard

Write = Callable[[ShardWriter, tuple[int, int], np.ndarray[Any, Any]], None]
WRITES: dict[str, Write] = {
    "write_chunk": lambda w, c, v: w.write_chunk(c, v),
    "write_chunks": lambda w, c, v: w.write_chunks({c: v}),
    "setitem": lambda w, c, v: w.__setitem__(
        tuple(slice(i * n, (i + 1) * n) for i, n in zip(c, CHUNKS, strict=True)), v
    ),
}


def _writer(**kwargs: Any) -> tuple[RangeLockedStore, zarr.Array[Any], ShardWriter]:
    store = RangeLockedStore(MemoryStore())
    arr = new_array(store, shape=SHAPE, chunks=CHUNKS, shards=SHARDS, pipeline=OURS, **kwargs)
    return store, arr, ShardWriter(arr)


def test_small_uncompressed_chunks_take_the_gate_and_no_others(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert _fastpaths.GATE_MAX_CHUNK == 64 * 1024
    fast = _writer()[2]._fast
    assert fast is not None and fast.gated
    # 64 KiB exactly: gated; one row more: not
    for rows, gated in [(128, True), (129, False)]:
        one = ShardWriter(
            new_array(
                RangeLockedStore(MemoryStore()),
                shape=(2 * rows, 128),
                chunks=(rows, 128),
                shards=(2 * rows, 128),
                pipeline=OURS,
            )
        )
        assert one._fast is not None and one._fast.gated is gated
    # compressed chunks: encoded in parallel, never gated (no in-place path)
    assert _writer(compressors=[ZstdCodec(level=1)])[2]._fast is None
    # a free-threaded interpreter without the GIL: nothing to gain
    monkeypatch.setattr(sys, "_is_gil_enabled", lambda: False, raising=False)
    fast = _writer()[2]._fast
    assert fast is not None and not fast.gated


@pytest.fixture
def dense() -> Iterator[tuple[RangeLockedStore, zarr.Array[Any], ShardWriter]]:
    """Both shards written whole, so laid out densely and validated: every
    chunk write below takes the in-place path."""
    store, arr, writer = _writer()
    writer[...] = np.arange(np.prod(SHAPE), dtype="i4").reshape(SHAPE)
    yield store, arr, writer
    assert store._mgr.stats().holders == 0


def _held_up_and_other(
    store: RangeLockedStore, writer: ShardWriter, write: Write
) -> tuple[bool, threading.Thread]:
    """Hold shard S shared (as a reader does), start a write of S (it
    queues behind the reader), then write shard T from another thread:
    whether T's write ended while S's waited, and S's writer thread."""
    key_s = writer._where.place(IN_S).key
    v_s, v_t = np.full(CHUNKS, 7, dtype="i4"), np.full(CHUNKS, 9, dtype="i4")
    mgr = store._mgr
    reader = mgr.lock(key_s, shared=True)
    reader.__enter__()
    t_done = threading.Event()
    s_thread = threading.Thread(target=write, args=(writer, IN_S, v_s))
    t_thread = threading.Thread(target=lambda: (write(writer, IN_T, v_t), t_done.set()))
    try:
        s_thread.start()
        wait_until(lambda: mgr.stats().waiters == 1, "the write of S queued")
        t_thread.start()
        ended = t_done.wait(2.0)  # with the gate held by S's write: never
    finally:
        reader.__exit__(None, None, None)
    s_thread.join(10)
    t_thread.join(10)
    assert not s_thread.is_alive() and not t_thread.is_alive()
    return ended, s_thread


@pytest.mark.parametrize("how", list(WRITES))
def test_a_write_held_up_by_a_lock_waits_outside_the_gate(
    dense: tuple[RangeLockedStore, zarr.Array[Any], ShardWriter], how: str
) -> None:
    store, arr, writer = dense
    ended, _ = _held_up_and_other(store, writer, WRITES[how])
    assert ended, "the write of shard T waited for the write of shard S"
    got = arr[...]
    assert (got[:64, :64] == 7).all() and (got[:64, 64:] == 9).all()


def test_control_a_write_waiting_inside_the_gate_holds_up_the_others(
    dense: tuple[RangeLockedStore, zarr.Array[Any], ShardWriter],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The fast path made to wait for its lock inside the gate (as a plain
    lock around the whole write would): the other shard's write is held up
    until the reader lets go, so the test above would fail."""
    put = _fastpaths.put_in_place

    def waiting(store: Any, key: str, writes: Any, fast: Any, wait: bool = True) -> int:
        return put(store, key, writes, fast, True)

    monkeypatch.setattr("zarr_rangelock.shards._writer.put_in_place", waiting)
    store, arr, writer = dense
    ended, _ = _held_up_and_other(store, writer, WRITES["write_chunk"])
    assert not ended
    got = arr[...]
    assert (got[:64, :64] == 7).all() and (got[:64, 64:] == 9).all()  # later, both written


def test_an_edge_chunk_is_merged_under_its_lock_outside_the_gate(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The array's edge clips chunk (1, 0) of shard S to 56 rows; the writer
    # merges it into the stored chunk under the chunk's lock
    # (_fastpaths.put_edge_in_place), which waits for a reader of S, and
    # waits outside the gate: a write of shard T goes on meanwhile. While
    # held up it has written nothing; then it writes, with no pipeline run.
    inner = MemoryStore()
    store = RangeLockedStore(inner)
    shape = (120, 128)
    arr = new_array(store, shape=shape, chunks=CHUNKS, shards=SHARDS, pipeline=OURS)
    writer = ShardWriter(arr)
    before = np.arange(np.prod(shape), dtype="i4").reshape(shape)
    writer[...] = before  # both shards dense, validated
    runs: list[Any] = []
    monkeypatch.setattr(ShardWriter, "_run", lambda self, *a: runs.append(a))
    merges: list[str] = []
    real = _fastpaths.put_edge_in_place

    def counted(store: Any, key: str, *a: Any) -> int:
        merges.append(key)
        return real(store, key, *a)

    monkeypatch.setattr("zarr_rangelock.shards._writer.put_edge_in_place", counted)
    mgr = store._mgr
    key_s = writer._where.place((1, 0)).key
    edge = np.full((56, 64), 7, dtype="i4")
    t_done = threading.Event()
    s_thread = threading.Thread(target=writer.write_chunk, args=((1, 0), edge))
    t_thread = threading.Thread(
        target=lambda: (writer.write_chunk(IN_T, np.full(CHUNKS, 9, dtype="i4")), t_done.set())
    )
    with mgr.lock(key_s, shared=True):
        s_thread.start()
        wait_until(lambda: mgr.stats().waiters == 1, "the edge chunk's write queued")
        t_thread.start()
        assert t_done.wait(10), "the write of shard T waited for the edge chunk's"
        # Not yet written (read on the bare store: a read through the
        # wrapper would queue behind the waiting write, behind our reader).
        bare = zarr.open_array(inner, mode="r")[64:, :64]
        np.testing.assert_array_equal(bare, before[64:, :64])
    s_thread.join(10)
    t_thread.join(10)
    assert not s_thread.is_alive() and not t_thread.is_alive()
    got = arr[...]
    assert (got[64:, :64] == 7).all() and (got[:64, 64:] == 9).all()
    assert merges == [key_s] and runs == []
    assert store._mgr.stats().holders == 0


@pytest.mark.parametrize("form", ["dict", "pairs"])
def test_a_dict_of_arrays_is_looked_up_and_written_in_one_pass_through_the_gate(
    dense: tuple[RangeLockedStore, zarr.Array[Any], ShardWriter],
    monkeypatch: pytest.MonkeyPatch,
    form: str,
) -> None:
    """``write_chunks`` of a dict of numpy arrays finds its chunks inside the
    gate too (no other writer's Python runs meanwhile); the control, a list
    of pairs (which may be lazy), is looked up outside it. Both take the
    gate once."""
    gate = _fastpaths.GATE
    entries: list[bool] = []

    class Counting:
        def __enter__(self) -> None:
            gate.acquire()
            entries.append(True)

        def __exit__(self, *exc: object) -> None:
            gate.release()

    place = Places.place
    looked_up: list[bool] = []

    def spied(self: Places, coords: Any) -> Any:
        looked_up.append(gate.locked())
        return place(self, coords)

    counting = Counting()  # (the batch paths, and the writer's own)
    monkeypatch.setattr("zarr_rangelock.shards._batches.GATE", counting)
    monkeypatch.setattr("zarr_rangelock.shards._writer.GATE", counting)
    monkeypatch.setattr(Places, "place", spied)
    _, arr, writer = dense
    writer._where.memo.clear()  # looked up anew
    chunks = {IN_S: np.full(CHUNKS, 7, dtype="i4"), IN_T: np.full(CHUNKS, 9, dtype="i4")}
    writer.write_chunks(chunks if form == "dict" else list(chunks.items()))
    assert entries == [True]
    assert looked_up == [form == "dict"] * 2
    got = arr[...]
    assert (got[:64, :64] == 7).all() and (got[:64, 64:] == 9).all()


def test_a_forked_child_finds_the_gate_open() -> None:
    """The gate held by another thread when the process forks: that thread
    does not exist in the child, so the child must find the gate open (the
    hook registered with ``os.register_at_fork``); a real fork, the child
    reporting through its exit code."""
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with _fastpaths.GATE:
            held.set()
            release.wait(10)

    t = threading.Thread(target=hold)
    t.start()
    try:
        assert held.wait(10)
        assert _fastpaths.GATE.locked()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads
            pid = os.fork()
        if pid == 0:  # the child: only this thread exists; touch nothing else
            os._exit(1 if _fastpaths.GATE.locked() else 0)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0, "the child found the gate held"
        assert _fastpaths.GATE.locked()  # the parent's holder still has it
    finally:
        release.set()
        t.join(10)
    assert not t.is_alive()


class _Lazy:
    """A lazy chunk value (as a dask or xarray array is): converting it runs
    a "compute" that writes another chunk through the same writer from
    another thread and waits for that write."""

    def __init__(self, writer: ShardWriter, value: np.ndarray[Any, Any]) -> None:
        self.writer = writer
        self.value = value
        self.shape = value.shape

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray[Any, Any]:
        other = threading.Thread(
            target=self.writer.write_chunk, args=(IN_T, np.full(CHUNKS, 5, dtype="i4"))
        )
        other.start()
        other.join(5)  # never ends while this thread holds the gate
        assert not other.is_alive(), "the value was converted inside the gate"
        return np.asarray(self.value, dtype=dtype)


@pytest.mark.parametrize("how", list(WRITES))
def test_a_lazy_value_is_converted_before_the_gate(
    dense: tuple[RangeLockedStore, zarr.Array[Any], ShardWriter], how: str
) -> None:
    _, arr, writer = dense
    WRITES[how](writer, IN_S, _Lazy(writer, np.full(CHUNKS, 3, dtype="i4")))  # type: ignore[arg-type]
    got = arr[...]
    assert (got[:64, :64] == 3).all() and (got[:64, 64:] == 5).all()


def _hold_shared(root: str, key: str, held: Any, release: Any) -> None:
    """Child process: hold ``key`` shared through its own store (the OS
    lock), as a reader in another process does, until told to let go."""
    store = RangeLockedStore(LocalStore(root))
    with store._mgr.lock(key, shared=True):
        held.set()
        release.wait(30)


def test_a_write_held_up_by_another_process_waits_outside_the_gate(tmp_path: Path) -> None:
    """The configuration users run: a reader in another (spawned) process
    holds shard S; a write of S in this process waits for it, outside the
    gate, while a write of shard T goes through."""
    store = RangeLockedStore(LocalStore(tmp_path / "data"))
    arr = new_array(store, shape=SHAPE, chunks=CHUNKS, shards=SHARDS, pipeline=OURS)
    writer = ShardWriter(arr)
    assert writer._fast is not None and writer._fast.gated
    writer[...] = np.arange(np.prod(SHAPE), dtype="i4").reshape(SHAPE)
    key_s = writer._where.place(IN_S).key
    spawn = multiprocessing.get_context("spawn")
    held, release = spawn.Event(), spawn.Event()
    child = spawn.Process(target=_hold_shared, args=(str(tmp_path / "data"), key_s, held, release))
    child.start()
    try:
        assert held.wait(30), "the child did not take the lock"
        mgr = store._mgr
        t_done = threading.Event()
        s_thread = threading.Thread(
            target=writer.write_chunk, args=(IN_S, np.full(CHUNKS, 7, dtype="i4"))
        )
        s_thread.start()
        # S's write holds its in-process grant while it waits for the OS lock
        wait_until(lambda: mgr.stats().holders == 1, "the write of S waiting")
        t_thread = threading.Thread(
            target=lambda: (writer.write_chunk(IN_T, np.full(CHUNKS, 9, dtype="i4")), t_done.set())
        )
        t_thread.start()
        assert t_done.wait(10), "the write of shard T waited for the write of shard S"
        assert s_thread.is_alive()  # still held up by the other process
    finally:
        release.set()
        child.join(30)
    s_thread.join(10)
    t_thread.join(10)
    assert not s_thread.is_alive() and child.exitcode == 0
    got = arr[...]
    assert (got[:64, :64] == 7).all() and (got[:64, 64:] == 9).all()


@pytest.mark.parametrize("alone", [True, False], ids=["alone", "another process present"])
def test_write_chunk_holds_its_chunk_from_other_processes_while_it_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, alone: bool
) -> None:
    """One chunk written in place (held as a token, ``_tokens``) is locked
    against other processes for its write: the write paused halfway (its
    ``pwrite`` held back), another process finds the chunk's bytes busy,
    and the chunk free after. With another process present the OS lock is
    the chunk's alone (the shard's other chunk is free meanwhile); a
    process alone takes no OS lock, and one arriving waits for the write
    whatever it asks for (``locks/_oslock``: "Alone")."""
    root = tmp_path / "data"
    store = RangeLockedStore(LocalStore(root))
    arr = new_array(store, shape=SHAPE, chunks=CHUNKS, shards=SHARDS, pipeline=OURS)
    writer = ShardWriter(arr)
    writer[...] = np.arange(np.prod(SHAPE), dtype="i4").reshape(SHAPE)
    fast = writer._fast
    assert fast is not None and fast.gated
    place, other = writer._where.place(IN_S), writer._where.place((1, 0))
    assert other.key == place.key  # the shard's other chunk
    offsets = _VALID[(store._state.uid, place.key, fast.geometry)][1].offsets
    nbytes = CHUNKS[0] * CHUNKS[1] * 4
    mine = (offsets[place.inner], offsets[place.inner] + nbytes)
    theirs = (offsets[other.inner], offsets[other.inner] + nbytes)
    writing, go = threading.Event(), threading.Event()
    real = _backends._write_range

    def paused(target: Any, data: memoryview, start: int) -> None:
        writing.set()
        assert go.wait(30)
        real(target, data, start)

    monkeypatch.setattr(_backends, "_write_range", paused)
    with contextlib.ExitStack() as stack:
        if not alone:
            stack.enter_context(present_in_another_process(root))
        s_thread = threading.Thread(
            target=writer.write_chunk, args=(IN_S, np.full(CHUNKS, 7, dtype="i4"))
        )
        s_thread.start()
        try:
            assert writing.wait(30), "the write did not start"
            assert store._state.os_locks is not None
            assert store._state.os_locks.alone() is alone
            assert try_in_another_process(root, place.key, *mine) == "busy"
            expected = "busy" if alone else "granted"
            assert try_in_another_process(root, place.key, *theirs) == expected
        finally:
            go.set()
            s_thread.join(10)
        assert not s_thread.is_alive()
        assert try_in_another_process(root, place.key, *mine) == "granted"
    assert (arr[:64, :64] == 7).all()
    assert store._mgr.stats().holders == 0


def _write_and_set(writer: ShardWriter, done: threading.Event) -> None:
    writer.write_chunk(IN_S, np.full(CHUNKS, 7, dtype="i4"))
    done.set()


def test_a_reader_of_another_chunk_of_the_shard_does_not_hold_up_write_chunk(
    dense: tuple[RangeLockedStore, zarr.Array[Any], ShardWriter], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A shared lock on one chunk's bytes (a reader of that chunk) leaves the
    shard's key held by a Grant, so write_chunk's token hold is refused; the
    write of the shard's other chunk still goes in place at once, inside the
    gate, through a Grant taken without waiting. The control: a reader of
    the written chunk's own bytes makes it wait (outside the gate)."""
    store, arr, writer = dense
    fast = writer._fast
    assert fast is not None
    place, other = writer._where.place(IN_S), writer._where.place((1, 0))
    assert other.key == place.key
    offsets = _VALID[(store._state.uid, place.key, fast.geometry)][1].offsets
    nbytes = CHUNKS[0] * CHUNKS[1] * 4
    busy: list[int] = []
    put = _fastpaths.put_in_place

    def spied(store: Any, key: str, writes: Any, fast: Any, wait: bool = True) -> int:
        done = put(store, key, writes, fast, wait)
        if done == _fastpaths.BUSY:
            busy.append(done)
        return done

    monkeypatch.setattr("zarr_rangelock.shards._writer.put_in_place", spied)
    mgr = store._mgr
    tokens: list[bool] = []
    hold_if_free = mgr._hold_if_free

    def spied_hold(key: str, start: int, end: int) -> Any:
        hold = hold_if_free(key, start, end)
        tokens.append(hold is not None)
        return hold

    monkeypatch.setattr(mgr, "_hold_if_free", spied_hold)
    for reader_of, waits in [(other, False), (place, True)]:
        busy.clear()
        tokens.clear()
        start = offsets[reader_of.inner]
        done = threading.Event()
        with mgr.lock(place.key, start, start + nbytes, shared=True):
            t = threading.Thread(target=_write_and_set, args=(writer, done))
            t.start()
            if waits:
                wait_until(lambda: mgr.stats().waiters == 1, "the write queued behind the reader")
                assert not done.is_set()
            else:
                assert done.wait(10), "write_chunk waited for a reader of another chunk"
        t.join(10)
        assert not t.is_alive() and done.is_set()
        assert busy == ([_fastpaths.BUSY] if waits else [])
        assert not tokens[0]  # the reader's Grant on the key: no token hold
    assert (arr[:64, :64] == 7).all()
