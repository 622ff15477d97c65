"""Cancelling a whole array write or read at each of its await points.

``AsyncArray.setitem`` and ``getitem`` through ``ShardWritePipeline`` on a
``RangeLockedStore`` run as a task that is cancelled after exactly ``n``
turns of the event loop, for n = 0, 1, 2, ... until the call ends before its
cancellation, so that the cancellation lands once on every await point of
the call. The loop's default executor runs its work at once in the loop's
thread (the future it returns is done; the caller wakes one turn later), and
so do the library's own workers (``store._io.workers``), so the points are
the same on every run, and the knobs that keep cheap work on
the loop (``INLINE_WRITE_MAX``, ``INLINE_MAX_S``, ``RUN_INLINE_MAX_BYTES``)
are set so that every write, encode, decode and long read hops to the
executor: each hop is one more point.

What is checked after each cancellation is what the library promises, no
more: ``ShardWritePipeline``'s "Concurrency" paragraph (a cancelled write
releases every lock it holds or awaits, and may leave some of its chunks
written and others not), a ``set_range`` that has started finishes (the
store's), and with ``durability="journal"`` a call's writes are one
transaction (the pipeline's design note). So:

* no lock is left: the table holds nothing, and another thread gets every
  shard whole at once;
* every inner chunk reads all old or all new (journaled: the whole array),
  and all new once the call ended uncancelled;
* stock zarr (the bare store, zarr's default pipeline) reads what ours does;
* no temporary file is left beside a shard and no journal record complete;
* the call raised ``CancelledError`` and nothing else, and no warning, no
  unretrieved task exception was reported.

The controls break the release of a lock, the atomicity of a chunk write and
the removal of a prepared file, and show that the checks see each. Two tests
cancel from another thread while a real worker thread writes (a chunk; a
journal commit): the shard stays held until the worker is done.

Not checked (a cancelled write may leave it, and the values are stock
zarr's either way): which shard keys exist. A fill write cancelled after its
in-place writes and before it settles the shard's absent marks (``sweep``,
which runs once its locks are gone) keeps a shard of fill values that stock
zarr would delete.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import gc
import itertools
import re
import threading
import warnings
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from zarr.codecs import BytesCodec, ShardingCodec, ZstdCodec
from zarr.storage import LocalStore, MemoryStore

from tests._shard_helpers import OURS, STOCK
from zarr_rangelock import LockTimeout, RangeLockedStore
from zarr_rangelock.shards import _reads
from zarr_rangelock.store import _backends, _durable, _handles, _io, _transaction

pytestmark = pytest.mark.timeout(60)

SHAPE, SHARD, INNER = (16, 24), (8, 12), (2, 3)
SHARDS = ["c/0/0", "c/0/1", "c/1/0", "c/1/1"]
MAX_STEPS = 300
"""More turns than any call here takes; reaching it fails the test."""


@dataclass(frozen=True)
class Layout:
    """A store and an array in it, and what the array holds before the call."""

    local: bool
    zstd: bool
    prefill: str
    """``"full"``: every element (uncompressed: dense shards, written in
    place); ``"sparse"``: two chunks (compact shards, laid out densely by the
    call); ``"none"``."""
    options: dict[str, Any] = field(default_factory=dict)
    """More ``RangeLockedStore`` arguments."""

    @property
    def journaled(self) -> bool:
        return str(self.options.get("durability", "none")).startswith("journal")


LAYOUTS = {
    "memory-zstd": Layout(local=False, zstd=True, prefill="full"),
    "memory-dense": Layout(local=False, zstd=False, prefill="full"),
    "local-zstd": Layout(local=True, zstd=True, prefill="full"),
    "local-dense": Layout(local=True, zstd=False, prefill="full"),
    "local-compact": Layout(local=True, zstd=False, prefill="sparse"),
    "local-dense_shards": Layout(
        local=True, zstd=False, prefill="none", options={"dense_shards": True}
    ),
    "local-map_writes": Layout(
        local=True, zstd=False, prefill="full", options={"map_writes": True}
    ),
    "local-journal-zstd": Layout(
        local=True, zstd=True, prefill="full", options={"durability": "journal"}
    ),
    "local-journal-dense": Layout(
        local=True, zstd=False, prefill="full", options={"durability": "journal"}
    ),
}

WRITES: dict[str, tuple[slice, slice]] = {
    # all four shards, whole chunks and parts of chunks
    "across-shards": (slice(1, 15), slice(2, 22)),
    # fill values: shard c/0/0 whole (deleted), part of c/0/1 (its chunks
    # dropped: appended without them, or stored in place and swept)
    "fill": (slice(0, 8), slice(0, 15)),
    # shard c/0/0 written whole (rewritten: a prepared file when journaled)
    "whole-shard": (slice(0, 8), slice(0, 12)),
}

CASES = [
    *((name, "across-shards") for name in LAYOUTS),
    # (fill values into an array of fill values would write nothing)
    *((name, "fill") for name, layout in LAYOUTS.items() if layout.prefill != "none"),
    *((name, "whole-shard") for name in LAYOUTS if name.endswith(("-zstd", "journal-dense"))),
]


class _AtOnce(concurrent.futures.ThreadPoolExecutor):
    """An executor that runs each function at once in the submitting thread
    (the event loop's), so that a hop to a worker is one turn of the loop,
    the same on every run (the loop's default executor, and the library's
    workers: ``_io.workers``)."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        done: concurrent.futures.Future[Any] = concurrent.futures.Future()
        try:
            done.set_result(fn(*args, **kwargs))
        except BaseException as e:  # (the caller's future raises it)
            done.set_exception(e)
        return done


_AT_ONCE = _AtOnce()


@pytest.fixture
def hops(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every write, encode, decode and read goes through the executor."""
    monkeypatch.setattr(_io, "workers", lambda: _AT_ONCE)
    monkeypatch.setattr(_backends, "INLINE_WRITE_MAX", -1)
    monkeypatch.setattr(_durable, "INLINE_WRITE_MAX", -1)
    monkeypatch.setattr(_io, "INLINE_MAX_S", 0)
    monkeypatch.setattr(_reads, "RUN_INLINE_MAX_BYTES", -1)


@dataclass
class _Array:
    inner: MemoryStore | LocalStore
    arr: zarr.Array[Any]
    old: np.ndarray[Any, Any]
    root: Path | None

    @property
    def store(self) -> RangeLockedStore:
        store = self.arr.store
        assert isinstance(store, RangeLockedStore)
        return store


def _array(layout: Layout, root: Path) -> _Array:
    inner = LocalStore(root) if layout.local else MemoryStore()
    codecs: list[Any] = [BytesCodec(), ZstdCodec()] if layout.zstd else [BytesCodec()]
    with zarr.config.set(OURS):
        arr = zarr.create_array(
            RangeLockedStore(inner, **layout.options),
            shape=SHAPE,
            chunks=SHARD,
            dtype="i4",
            fill_value=0,
            compressors=None,
            serializer=ShardingCodec(chunk_shape=INNER, codecs=codecs),
        )
        old = np.zeros(SHAPE, "i4")
        if layout.prefill == "full":
            old[...] = np.arange(1, old.size + 1).reshape(SHAPE)
            arr[...] = old
        elif layout.prefill == "sparse":
            for sel in [np.s_[0:2, 0:3], np.s_[8:10, 12:15]]:
                old[sel] = 7
                arr[sel] = 7
    return _Array(inner, arr, old, root if layout.local else None)


def _new_values(old: np.ndarray[Any, Any], write: str) -> np.ndarray[Any, Any]:
    new = old.copy()
    sel = WRITES[write]
    if write == "fill":
        new[sel] = 0
    else:
        new[sel] = -np.arange(1, new[sel].size + 1, dtype="i4").reshape(new[sel].shape)
    return new


def _stock_read(inner: MemoryStore | LocalStore) -> np.ndarray[Any, Any]:
    with zarr.config.set(STOCK):
        return np.asarray(zarr.open_array(inner, mode="r")[...])


def _chunks(a: np.ndarray[Any, Any]) -> Iterator[tuple[tuple[int, int], np.ndarray[Any, Any]]]:
    for r, c in itertools.product(range(0, SHAPE[0], INNER[0]), range(0, SHAPE[1], INNER[1])):
        yield (r, c), a[r : r + INNER[0], c : c + INNER[1]]


async def _cancelled_after(call: Coroutine[Any, Any, Any], n: int) -> str:
    """Run ``call`` as a task, cancel it after ``n`` turns of the loop:
    ``"done"`` if it ended first, else ``"cancelled"``, or ``"swallowed"``
    if it returned after its cancellation was delivered (anything else it
    raises comes out)."""
    task = asyncio.ensure_future(call)
    for _ in range(n):
        await asyncio.sleep(0)
    if task.done():
        task.result()
        return "done"
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        return "cancelled"
    return "swallowed"


def _locks_left(store: RangeLockedStore) -> list[str]:
    """What is held or queued in the table, and the shards another thread
    cannot get whole at once (an OS lock left would show there too)."""
    mgr = store.lock_manager
    try:
        mgr._check(idle=True)
    except AssertionError as e:
        return [f"the table breaks an invariant: {e}"]
    stats = mgr.stats()
    if stats.holders or stats.waiters:
        return [f"locks left in the table: {mgr._dump()}"]
    busy: list[str] = []

    def take_each() -> None:
        for key in SHARDS:
            try:
                with store.locked_sync(key, [(0, None)], timeout=1.0):
                    pass
            except LockTimeout:
                busy.append(f"{key} still held")

    t = threading.Thread(target=take_each)
    t.start()
    t.join()
    return busy


def _litter(root: Path) -> list[str]:
    """Files under the root that are not a shard, metadata, the lock file or
    a journal file; journal records left complete (not retired)."""
    found = []
    for path in root.rglob("*"):
        name = path.relative_to(root).as_posix()
        if path.is_dir():
            continue
        if name.startswith(".zarr-rangelock-journal/") and name.endswith(".jnl"):
            head = path.read_bytes()[:8]
            if head and head != bytes(8):
                found.append(f"a complete journal record in {name}")
        elif name not in ("zarr.json", ".zarr-rangelock") and not re.fullmatch(r"c/\d+/\d+", name):
            found.append(f"stray file {name}")
    return found


def _torn(got: np.ndarray[Any, Any], old: np.ndarray[Any, Any], new: np.ndarray[Any, Any]) -> str:
    """``"old"``, ``"new"`` or ``"mixed"`` (chunks of each) for what ``got``
    holds (``"new"`` too where no chunk changes), or what is wrong with it (a
    chunk neither all old nor all new)."""
    seen = set()
    for (r, c), chunk in _chunks(got):
        sel = np.s_[r : r + INNER[0], c : c + INNER[1]]
        if np.array_equal(chunk, new[sel]) and np.array_equal(chunk, old[sel]):
            continue
        if np.array_equal(chunk, new[sel]):
            seen.add("new")
        elif np.array_equal(chunk, old[sel]):
            seen.add("old")
        else:
            return f"torn chunk at {(r, c)}: {chunk.tolist()}"
    return "mixed" if len(seen) == 2 else seen.pop() if seen else "new"


@dataclass
class _Step:
    outcome: str
    """``"done"`` or ``"cancelled"``."""
    state: str
    """What the array holds after it: ``"old"``, ``"new"``, ``"mixed"``."""
    problems: list[str]


def _cancel_at(layout: Layout, op: str, write: str, n: int, root: Path) -> _Step:
    """A new array of ``layout``; ``op`` (``"write"`` the region ``write``
    with new values, or ``"read"`` the whole array) cancelled after ``n``
    turns; then every check of the module."""
    a = _array(layout, root)
    sel = WRITES[write]
    new = _new_values(a.old, write) if op == "write" else a.old
    problems: list[str] = []
    reported: list[dict[str, Any]] = []
    read_back: list[np.ndarray[Any, Any]] = []

    async def main() -> str:
        loop = asyncio.get_running_loop()
        loop.set_default_executor(_AtOnce())
        loop.set_exception_handler(lambda _, context: reported.append(context))
        aarr = a.arr.async_array
        call = aarr.setitem(sel, new[sel]) if op == "write" else aarr.getitem(np.s_[...])
        outcome = await _cancelled_after(call, n)
        if not (left := _locks_left(a.store)):
            read_back.append(np.asarray(await asyncio.wait_for(aarr.getitem(np.s_[...]), 10)))
        problems.extend(left)
        return outcome

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        outcome = asyncio.run(main())
        gc.collect()  # (an unretrieved task exception is reported when the task goes)
    problems += [f"{w.category.__name__}: {w.message}" for w in caught]
    problems += [f"reported to the loop: {c.get('message')}" for c in reported]
    if outcome == "swallowed":  # (asyncio.timeout and TaskGroup rely on it)
        problems.append("the call returned instead of raising its CancelledError")
    got = _stock_read(a.inner)
    if read_back and not np.array_equal(read_back[0], got):
        problems.append("our pipeline reads other values than stock zarr")
    state = _torn(got, a.old, new)
    if state not in ("old", "new", "mixed"):
        problems.append(state)
    elif outcome == "done" and state != "new":
        problems.append(f"the call ended uncancelled, but the array holds {state} values")
    elif layout.journaled and state == "mixed":
        problems.append("a journaled call was applied in part")
    if a.root is not None:
        problems += _litter(a.root)
    a.store.close()
    return _Step(outcome, state, problems)


def _every_point(layout: Layout, op: str, write: str, tmp_path: Path) -> set[str]:
    """:func:`_cancel_at` for n = 0, 1, ... until the call ends first,
    asserting each is clean; the states the cancelled calls left."""
    states: set[str] = set()
    for n in range(MAX_STEPS):
        step = _cancel_at(layout, op, write, n, tmp_path / f"n{n}")
        assert not step.problems, f"cancelled after {n} turns: " + "\n".join(step.problems)
        if step.outcome == "done":
            return states
        states.add(step.state)
    raise AssertionError(f"the call did not end within {MAX_STEPS} turns")


MIXED = {
    ("local-dense", "across-shards"),
    ("local-dense", "fill"),
    ("local-map_writes", "across-shards"),
    ("local-zstd", "fill"),
}
"""Cases where some cancellation lands between the writes of the call's
shards, leaving some of them new and others old (allowed; a torn chunk would
show there). Elsewhere the shards' jobs reach their writes in the same
turns, so each cancellation finds all of them before their writes or all
after: the array all old or all new."""


@pytest.mark.parametrize(("name", "write"), CASES)
def test_a_write_cancelled_at_any_await_point_leaves_no_lock_and_no_torn_chunk(
    name: str, write: str, tmp_path: Path, hops: None
) -> None:
    layout = LAYOUTS[name]
    states = _every_point(layout, "write", write, tmp_path)
    assert "old" in states  # (cancelled before it wrote anything: n = 0 at least)
    if layout.journaled:
        # one transaction: nothing before its commit, all of it once the
        # commit started (the commit finishes in its worker)
        assert states == {"old", "new"}
    if (name, write) in MIXED:
        assert "mixed" in states


@pytest.mark.parametrize("name", ["memory-zstd", "local-zstd", "local-dense", "local-compact"])
def test_a_read_cancelled_at_any_await_point_leaves_no_lock(
    name: str, tmp_path: Path, hops: None
) -> None:
    states = _every_point(LAYOUTS[name], "read", "across-shards", tmp_path)
    assert states == {"new"}  # (a read: old and new are the same values)


# ------------------------------------------------------------------ controls


def test_control_a_lock_kept_by_a_cancelled_write_is_seen(
    tmp_path: Path, hops: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = _handles.AsyncLockedBlock.__aexit__

    async def keep_if_cancelled(self: Any, et: Any, ev: Any, tb: Any) -> None:
        # (the pipeline lets go through AsyncExitStack.aclose, which passes
        # no exception: the task's own state says it is being cancelled)
        task = asyncio.current_task()
        if et is not asyncio.CancelledError and not (task and task.cancelling()):
            await release(self, et, ev, tb)

    monkeypatch.setattr(_handles.AsyncLockedBlock, "__aexit__", keep_if_cancelled)
    steps = [
        _cancel_at(LAYOUTS["local-dense"], "write", "across-shards", n, tmp_path / f"n{n}")
        for n in range(8)
    ]
    assert any("locks left in the table" in p for s in steps for p in s.problems)


def test_control_a_chunk_written_in_two_halves_is_seen_torn(
    tmp_path: Path, hops: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    write = _handles.AsyncLockedKey.set_range

    async def in_halves(self: Any, value: Any, start: int) -> None:
        half = len(value) // 2
        await write(self, value[:half], start)
        await asyncio.sleep(0)  # a point between the halves
        await write(self, value[half:], start + half)

    monkeypatch.setattr(_handles.AsyncLockedKey, "set_range", in_halves)
    steps = [
        _cancel_at(LAYOUTS["local-dense"], "write", "across-shards", n, tmp_path / f"n{n}")
        for n in range(12)
    ]
    assert any(p.startswith("torn chunk") for s in steps for p in s.problems)


def test_control_a_prepared_file_left_by_a_cancelled_journaled_write_is_seen(
    tmp_path: Path, hops: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_transaction.Transaction, "discard", lambda self: None)
    steps = [
        _cancel_at(LAYOUTS["local-journal-zstd"], "write", "whole-shard", n, tmp_path / f"n{n}")
        for n in range(8)
    ]
    assert any(p.startswith("stray file") for s in steps for p in s.problems)


# ------------------------------------------- cancelled from another thread


@contextlib.contextmanager
def _paused_in_a_worker(
    monkeypatch: pytest.MonkeyPatch, cls: type, name: str
) -> Iterator[tuple[threading.Event, threading.Event]]:
    """``cls.name`` waits, the first time a worker thread calls it, until
    the second event is set; the first is set when it starts waiting."""
    started, go_on = threading.Event(), threading.Event()
    original = getattr(cls, name)
    loop_thread = threading.get_ident()

    def paused(self: Any, *args: Any, **kwargs: Any) -> Any:
        if threading.get_ident() != loop_thread and not started.is_set():
            started.set()
            assert go_on.wait(30)  # (the deadline only catches a hang)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(cls, name, paused)
    try:
        yield started, go_on
    finally:
        go_on.set()


def _cancel_from_another_thread(
    a: _Array,
    sel: Any,
    value: np.ndarray[Any, Any],
    started: threading.Event,
    go_on: threading.Event,
) -> None:
    """Write ``value`` at ``sel``; once a worker thread is paused in the
    write, cancel it from another thread, check it still holds its shards,
    then let the worker go on: the call raises ``CancelledError``."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        task = asyncio.ensure_future(a.arr.async_array.setitem(sel, value))
        assert await asyncio.to_thread(started.wait, 30)
        canceller = threading.Thread(target=lambda: loop.call_soon_threadsafe(task.cancel))
        canceller.start()
        await asyncio.to_thread(canceller.join)
        done, _ = await asyncio.wait({task}, timeout=0.2)
        assert not done  # the cancellation waits for the worker's write ...
        with pytest.raises(TimeoutError):  # ... holding its shard
            async with a.store.locked("c/1/1", [(0, None)], timeout=0.2):
                pass
        go_on.set()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert not _locks_left(a.store)


def test_a_write_cancelled_from_another_thread_holds_its_shard_until_its_worker_wrote_the_chunk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_backends, "INLINE_WRITE_MAX", -1)  # every chunk in a worker
    a = _array(LAYOUTS["local-dense"], tmp_path)
    sel = np.s_[8:10, 12:15]  # one chunk of c/1/1, written in place
    with _paused_in_a_worker(monkeypatch, _backends.LocalBackend, "set_range") as (started, go_on):
        _cancel_from_another_thread(a, sel, np.full((2, 3), -1, "i4"), started, go_on)
    new = a.old.copy()
    new[sel] = -1
    np.testing.assert_array_equal(_stock_read(a.inner), new)  # started, so finished


def test_a_journaled_write_cancelled_from_another_thread_during_its_commit_is_applied_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = _array(LAYOUTS["local-journal-zstd"], tmp_path)
    sel = WRITES["across-shards"]
    new = _new_values(a.old, "across-shards")
    with _paused_in_a_worker(monkeypatch, _durable.DurableLocalBackend, "commit") as (
        started,
        go_on,
    ):
        _cancel_from_another_thread(a, sel, new[sel], started, go_on)
    np.testing.assert_array_equal(_stock_read(a.inner), new)
    assert not _litter(tmp_path)
