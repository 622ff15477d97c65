"""Work handed to a worker thread under a lock outlives the caller's cancellation;
cheap work is not handed over at all.

``store._io.in_thread`` (encoding, a compaction's rewrite, a durable commit)
and ``run_to_completion`` (LocalStore writes) run while the caller holds a
lock: if a cancellation ended the caller's wait before the thread's work
ended, the caller would release its lock while that work still writes.
Each test cancels the caller while the work is held inside the thread by an
event, and checks that the caller's wait ends only after the work did; the
control shows that awaiting ``asyncio.to_thread`` directly ends it before.
"""

from __future__ import annotations

import asyncio
import contextvars
import math
import os
import threading
import warnings
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from zarr.codecs import ZstdCodec
from zarr.storage import LocalStore, MemoryStore

from tests._shard_helpers import OURS, STOCK, no_locks_left
from zarr_rangelock import RangeLockedStore
from zarr_rangelock.shards import _jobs
from zarr_rangelock.store import _backends, _io
from zarr_rangelock.store._io import INLINE, in_thread, run_to_completion

pytestmark = pytest.mark.timeout(60)

WAIT_S = 10.0


async def _cancel_mid_work(
    start: Callable[[Callable[[], str]], Awaitable[str]], fails: bool = False
) -> tuple[list[str], BaseException | str]:
    """Run ``start(work)`` as a task, cancel it while ``work`` is held in its
    thread, then let the work end (raising an ``OSError`` if ``fails``);
    return what happened, in order, and how the task ended."""
    events: list[str] = []
    entered = threading.Event()
    release = threading.Event()

    def work() -> str:
        entered.set()
        assert release.wait(WAIT_S)
        events.append("work done")
        if fails:
            raise OSError(28, "No space left on device")
        return "result"

    task = asyncio.ensure_future(start(work))
    assert await asyncio.to_thread(entered.wait, WAIT_S)
    task.cancel()
    # A cancelled task reacts within two turns of the loop (wake, then
    # finish or go on waiting); twenty turns, counted, not timed.
    for _ in range(20):
        await asyncio.sleep(0)
    events.append("task done" if task.done() else "task waiting")
    release.set()
    try:
        outcome: BaseException | str = await task
    except asyncio.CancelledError as exc:
        outcome = exc
    events.append("task ended")
    return events, outcome


@pytest.mark.parametrize(
    "start",
    [
        pytest.param(in_thread, id="in_thread"),
        pytest.param(lambda fn: run_to_completion(lambda: asyncio.to_thread(fn)), id="run"),
    ],
)
def test_a_cancelled_caller_waits_for_its_thread(
    start: Callable[[Callable[[], str]], Awaitable[str]],
) -> None:
    events, outcome = asyncio.run(_cancel_mid_work(start))
    assert events == ["task waiting", "work done", "task ended"]
    assert isinstance(outcome, asyncio.CancelledError)  # re-raised once the work ended


OURS_STARTS = [
    pytest.param(in_thread, id="in_thread"),
    pytest.param(lambda fn: run_to_completion(lambda: asyncio.to_thread(fn)), id="run"),
]
STARTS = [*OURS_STARTS, pytest.param(asyncio.to_thread, id="stock's to_thread")]


@pytest.mark.parametrize("start", OURS_STARTS)
def test_a_cancelled_caller_whose_work_then_fails_gets_its_cancellation(
    start: Callable[[Callable[[], str]], Awaitable[str]],
) -> None:
    # As stock zarr's asyncio.to_thread (below: it stops waiting at once)
    # gives: the CancelledError, once the work ended, not the work's error,
    # which until 2026-12-07 replaced it (the error is now its cause).
    events, outcome = asyncio.run(_cancel_mid_work(start, fails=True))
    assert events == ["task waiting", "work done", "task ended"]
    assert isinstance(outcome, asyncio.CancelledError), repr(outcome)
    assert isinstance(outcome.__cause__, OSError)


def test_control_stocks_to_thread_cancelled_before_its_work_fails_raises_the_cancellation() -> None:
    events, outcome = asyncio.run(_cancel_mid_work(asyncio.to_thread, fails=True))
    assert events[0] == "task done"
    assert isinstance(outcome, asyncio.CancelledError), repr(outcome)


@pytest.mark.parametrize("start", STARTS)
def test_a_timeout_around_work_that_then_fails_raises_timeout_error(
    start: Callable[[Callable[[], str]], Awaitable[str]],
) -> None:
    # asyncio.timeout turns the CancelledError of its own cancellation into
    # a TimeoutError; any other error passes through it: the caller would
    # not learn that its deadline passed.
    entered, release = threading.Event(), threading.Event()

    def work() -> str:
        entered.set()
        assert release.wait(WAIT_S)
        raise OSError(28, "No space left on device")

    async def main() -> None:
        async def caller() -> None:
            loop = asyncio.get_running_loop()
            async with asyncio.timeout(None) as deadline:
                call = asyncio.ensure_future(start(work))
                assert await asyncio.to_thread(entered.wait, WAIT_S)
                deadline.reschedule(loop.time())  # expires at the loop's next turn,
                loop.call_soon(release.set)  # then the work fails
                await call

        task = asyncio.ensure_future(caller())
        with pytest.raises(TimeoutError):
            await task
        assert task.cancelling() == 0

    asyncio.run(main())


def test_control_awaiting_to_thread_directly_stops_waiting_at_the_cancellation() -> None:
    events, outcome = asyncio.run(_cancel_mid_work(asyncio.to_thread))
    assert events[0] == "task done"  # the caller would now release its lock mid-write
    assert isinstance(outcome, asyncio.CancelledError)


def test_in_thread_returns_the_result_raises_the_error_and_keeps_the_context() -> None:
    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")

    async def main() -> None:
        var.set("caller's")
        caller = threading.get_ident()
        ran_in: list[int] = []

        def read() -> str:
            ran_in.append(threading.get_ident())
            return var.get()

        assert await in_thread(read) == "caller's"
        assert ran_in[0] != caller  # a worker thread

        def fail() -> None:
            raise KeyError("boom")

        with pytest.raises(KeyError, match="boom"):
            await in_thread(fail)

        token = INLINE.set(True)  # a ShardWriter's own loop: inline
        try:
            assert await in_thread(read) == "caller's"
            assert ran_in[1] == caller
        finally:
            INLINE.reset(token)

    asyncio.run(main())


def _fake_thread_time(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """``time.thread_time`` as ``Cost`` reads it, stood in for: each call
    returns the clock moved on by ``spent[0]`` (set it); returns ``spent``."""
    clock = [0.0]
    spent = [0.0]

    def thread_time() -> float:  # read before and after the work: ``spent`` apart
        clock[0] += spent[0]
        return clock[0]

    monkeypatch.setattr(_io.time, "thread_time", thread_time)
    return spent


def test_map_unless_cheap_sends_work_to_a_worker_until_it_is_measured_cheap(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The first work (cost unknown) goes to a worker thread; once its mean
    is at most ``INLINE_MAX_S`` for the items given, it runs on the caller's
    thread; dear work goes back to a worker. CPU time by ``time.thread_time``
    (stood in for here: each piece ``spent`` seconds more). One CPU: one
    piece."""
    spent = _fake_thread_time(monkeypatch)
    monkeypatch.setattr(_io, "CPUS", 1)

    async def main() -> None:
        caller = threading.get_ident()
        cost = _io.Cost()
        ran_in: list[int] = []

        def work(x: int) -> int:
            ran_in.append(threading.get_ident())
            return 10 * x

        assert cost.mean == math.inf
        assert await _io.map_unless_cheap(work, [], cost) == []  # (0 x unknown: no NaN)
        assert cost.mean == math.inf and not ran_in
        spent[0] = 4 * 100e-6  # four units of 100 us
        assert await _io.map_unless_cheap(work, [1, 2, 3, 4], cost) == [10, 20, 30, 40]
        assert ran_in[-1] != caller  # unknown: a worker
        assert cost.mean == pytest.approx(100e-6)  # the first measure, per unit
        assert await _io.map_unless_cheap(work, [5, 6, 7, 8], cost) == [50, 60, 70, 80]
        assert ran_in[-1] == caller  # 4 x 100 us <= INLINE_MAX_S: inline
        spent[0] = 11 * 100e-6
        ran_in.clear()
        assert await _io.map_unless_cheap(work, list(range(11)), cost) == list(range(0, 110, 10))
        assert caller not in ran_in and len(set(ran_in)) == 1  # 11 x 100 us: a worker
        spent[0] = 11 * 10e-3  # dear now: the mean moves a quarter of the way
        await _io.map_unless_cheap(work, list(range(11)), cost)
        assert cost.mean == pytest.approx(0.75 * 100e-6 + 0.25 * 10e-3)
        await _io.map_unless_cheap(work, [1], cost)
        assert ran_in[-1] != caller  # 2.6 ms for one unit: a worker
        assert await _io.map_unless_cheap(work, [], cost) == []

        def fail(x: int) -> None:
            raise KeyError("boom")

        with pytest.raises(KeyError, match="boom"):  # inline or not, its error
            await _io.map_unless_cheap(fail, [1], cost)
        cost.mean = 0.0
        with pytest.raises(KeyError, match="boom"):
            await _io.map_unless_cheap(fail, [1], cost)

    asyncio.run(main())


def test_dear_work_is_split_into_one_piece_a_cpu_run_at_once_in_worker_threads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Eight items of 1 ms on four CPUs: four pieces of two consecutive items,
    each in a worker thread of its own, all running at once (a barrier of
    four, one wait a piece, would time out if they ran one after the other),
    results in the items' order. Three of 0.4 ms: one piece (each piece at
    least ``INLINE_MAX_S``)."""
    monkeypatch.setattr(_io, "CPUS", 4)
    together = threading.Barrier(4, timeout=WAIT_S)
    ran: list[tuple[int, int]] = []

    def work(x: int) -> int:
        if x % 2 == 0:  # the first item of each piece
            together.wait()
        ran.append((x, threading.get_ident()))
        return x * x

    async def main() -> None:
        cost = _io.Cost()
        cost.mean = 1e-3
        assert await _io.map_unless_cheap(work, list(range(8)), cost) == [x * x for x in range(8)]
        threads = dict(ran)
        assert len(set(threads.values())) == 4
        assert all(threads[x] == threads[x + 1] for x in range(0, 8, 2))  # consecutive
        assert threading.get_ident() not in threads.values()
        assert _io._pieces == [0]
        ran.clear()
        cost.mean = 0.4e-3
        note = lambda x: ran.append((x, threading.get_ident()))  # noqa: E731
        assert await _io.map_unless_cheap(note, [1, 3, 5], cost) == [None] * 3
        assert len({t for _, t in ran}) == 1 and [x for x, _ in ran] == [1, 3, 5]

    asyncio.run(main())


def test_work_split_while_other_pieces_run_takes_only_the_idle_cpus() -> None:
    """Two CPUs, one taken by a piece of other work still running: the next
    dear work is one piece, not two; when that is done, two again. And the
    count of pieces running goes back to nothing."""

    async def main() -> None:
        held = threading.Event()
        release = threading.Event()

        def hold(x: int) -> int:
            held.set()
            assert release.wait(WAIT_S)
            return x

        cost = _io.Cost()
        cost.mean = 10e-3
        first = asyncio.ensure_future(_io.map_unless_cheap(hold, [0], cost))
        assert await asyncio.to_thread(held.wait, WAIT_S)
        assert _io._pieces == [1]
        used: list[int] = []

        def record(x: int) -> int:
            used.append(threading.get_ident())
            return x

        assert await _io.map_unless_cheap(record, list(range(8)), cost) == list(range(8))
        assert len(set(used)) == 1  # one CPU idle: one piece
        release.set()
        assert await first == [0]
        used.clear()
        together = threading.Barrier(2, timeout=WAIT_S)

        def pair(x: int) -> int:
            if x in (0, 4):
                together.wait()
            return record(x)

        assert await _io.map_unless_cheap(pair, list(range(8)), cost) == list(range(8))
        assert len(set(used)) == 2
        assert _io._pieces == [0]

    with pytest.MonkeyPatch.context() as m:
        m.setattr(_io, "CPUS", 2)
        asyncio.run(main())


def test_a_failing_piece_raises_the_first_failure_in_order_once_every_piece_ended(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Items 2 and 5 fail, in the first and second of two pieces, the second
    failing first (the first piece waits for it): the error raised is item
    2's, as the one loop over the items would raise, and only once the
    second piece has ended too; each piece stopped at its failure."""
    monkeypatch.setattr(_io, "CPUS", 2)
    later_failed = threading.Event()
    ran: list[int] = []

    def work(x: int) -> int:
        if x == 2:
            assert later_failed.wait(WAIT_S)
            raise KeyError(f"item {x}")
        ran.append(x)
        if x == 5:
            later_failed.set()
            raise KeyError(f"item {x}")
        return x

    async def main() -> None:
        cost = _io.Cost()
        cost.mean = 10e-3
        with pytest.raises(KeyError, match="item 2"):
            await _io.map_unless_cheap(work, list(range(8)), cost)
        assert sorted(ran) == [0, 1, 4, 5]
        assert _io._pieces == [0]

    asyncio.run(main())


def test_a_cancelled_caller_waits_for_every_piece_of_split_work(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Cancelled while both pieces of its work are held in their threads, the
    caller waits until both have ended, then raises the cancellation."""
    monkeypatch.setattr(_io, "CPUS", 2)
    started = threading.Barrier(3, timeout=WAIT_S)
    release = threading.Event()
    ended: list[int] = []

    def work(x: int) -> int:
        if x in (0, 2):
            started.wait()
            assert release.wait(WAIT_S)
            ended.append(x)
        return x

    async def main() -> None:
        cost = _io.Cost()
        cost.mean = 10e-3
        task = asyncio.ensure_future(_io.map_unless_cheap(work, [0, 1, 2, 3], cost))
        await asyncio.to_thread(started.wait)
        task.cancel()
        for _ in range(20):  # (counted turns of the loop, as _cancel_mid_work)
            await asyncio.sleep(0)
        assert not task.done()
        release.set()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert sorted(ended) == [0, 2]
        assert _io._pieces == [0]

    asyncio.run(main())


def test_on_a_shard_writers_own_loop_dear_work_runs_on_the_callers_thread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_io, "CPUS", 4)

    async def main() -> None:
        cost = _io.Cost()
        cost.mean = 10e-3
        token = INLINE.set(True)
        try:
            got = await _io.map_unless_cheap(lambda x: threading.get_ident(), [1, 2, 3], cost)
        finally:
            INLINE.reset(token)
        assert got == [threading.get_ident()] * 3

    asyncio.run(main())


def test_zstd_chunks_are_encoded_on_the_loop_once_measured_cheap(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The pipeline's first write of zstd chunks encodes them in a worker
    (no measure yet), the next ones on zarr's loop thread while the mean
    stays under ``INLINE_MAX_S``; with the bound at 0, always in a worker.
    The values are the same either way (read back with stock zarr)."""
    on_loop: list[bool] = []
    real = _jobs._ShardJob._encode

    def spy(self: Any, *args: Any) -> Any:
        try:
            asyncio.get_running_loop()
            on_loop.append(True)
        except RuntimeError:  # a worker thread runs no loop
            on_loop.append(False)
        return real(self, *args)

    monkeypatch.setattr(_jobs._ShardJob, "_encode", spy)
    for bound, expect in ((_io.INLINE_MAX_S, [False, True, True]), (0.0, [False] * 3)):
        monkeypatch.setattr(_io, "INLINE_MAX_S", bound)
        on_loop.clear()
        store = RangeLockedStore(MemoryStore())
        with zarr.config.set({"codec_pipeline.path": "zarr_rangelock.ShardWritePipeline"}):
            arr = zarr.create_array(
                store, shape=(64, 64), chunks=(8, 8), shards=(32, 32), dtype="i4",
                fill_value=0, compressors=ZstdCodec(level=1),
            )  # fmt: skip
            values = np.arange(64 * 64, dtype="i4").reshape(64, 64)
            for k in range(3):  # one whole chunk a write: a few us to encode
                arr[8 * k : 8 * k + 8, 0:8] = values[8 * k : 8 * k + 8, 0:8]
        assert on_loop == expect, bound
        got = zarr.open_array(store._store, mode="r")[0:24, 0:8]
        np.testing.assert_array_equal(got, values[0:24, 0:8])


def test_a_compressed_write_of_a_whole_shard_encodes_its_chunks_in_parallel_pieces(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``arr[shard] = v`` of a zstd array, its encodes measured dear
    (``INLINE_MAX_S`` 0) on two CPUs: the first write (cost unknown) encodes
    its 16 chunks in one worker thread; the next in two at once (a barrier
    of two, waited at each thread's first chunk). A write of two shards
    encodes each shard's chunks in one piece (the two jobs share the two
    CPUs). The array reads back with stock zarr as written."""
    monkeypatch.setattr(_io, "CPUS", 2)
    monkeypatch.setattr(_io, "INLINE_MAX_S", 0.0)
    real = _jobs._ShardJob._encode
    seen: dict[int, set[str]] = {}  # thread: the shards whose chunks it encoded
    together: list[threading.Barrier | None] = [None]
    sharing: list[int] = []

    def spy(self: Any, *args: Any) -> Any:
        me = threading.get_ident()
        if me not in seen:
            barrier = together[0]
            if barrier is not None:
                barrier.wait()
        seen.setdefault(me, set()).add(self.key)
        sharing.append(_io.SHARING.get())  # (a worker runs in its caller's context)
        return real(self, *args)

    monkeypatch.setattr(_jobs._ShardJob, "_encode", spy)
    store = RangeLockedStore(MemoryStore())
    values = np.arange(32 * 64, dtype="i4").reshape(32, 64)
    with zarr.config.set({"codec_pipeline.path": "zarr_rangelock.ShardWritePipeline"}):
        arr = zarr.create_array(
            store, shape=(32, 64), chunks=(8, 8), shards=(32, 32), dtype="i4",
            fill_value=0, compressors=ZstdCodec(level=1),
        )  # fmt: skip
        arr[:, :32] = values[:, :32] + 1
        assert len(seen) == 1  # unknown cost: one worker
        seen.clear()
        together[0] = threading.Barrier(2, timeout=WAIT_S)
        arr[:, :32] = values[:, :32]
        assert len(seen) == 2 and threading.get_ident() not in seen
        assert set(sharing) == {1}
        together[0] = None
        sharing.clear()
        arr[...] = values + 2
        assert sharing == [2] * 32  # two shards' jobs, sharing the CPUs: a piece each
        arr[:, 32:] = values[:, 32:]
    np.testing.assert_array_equal(
        zarr.open_array(store._store, mode="r")[:, :32], values[:, :32] + 2
    )
    np.testing.assert_array_equal(zarr.open_array(store._store, mode="r")[:, 32:], values[:, 32:])


class _Pieces(_io.Cost):
    """A cost that notes the units of each piece it times."""

    def __init__(self, mean: float) -> None:
        super().__init__()
        self.mean = mean
        self.pieces: list[int] = []

    def timed[T](self, fn: Callable[[], T], units: int) -> T:
        self.pieces.append(units)
        return super().timed(fn, units)


def test_calls_made_together_share_the_idle_cpus(monkeypatch: pytest.MonkeyPatch) -> None:
    """Four CPUs, eight items of 10 ms: alone, four pieces of two; with
    another call made together (``SHARING`` 2), two pieces of four; with
    three others, one piece."""
    monkeypatch.setattr(_io, "CPUS", 4)

    async def main() -> None:
        for sharing, pieces in ((1, [2, 2, 2, 2]), (2, [4, 4]), (4, [8])):
            cost = _Pieces(10e-3)
            token = _io.SHARING.set(sharing)
            try:
                got = await _io.map_unless_cheap(str, list(range(8)), cost)
            finally:
                _io.SHARING.reset(token)
            assert got == [str(x) for x in range(8)]
            assert cost.pieces == pieces, sharing

    asyncio.run(main())


def test_a_forked_child_counts_no_pieces_and_finds_their_lock_free() -> None:
    """Forked while another thread holds the count's lock and pieces run, a
    child must count none of the parent's pieces (else it would split less
    forever) and must find the lock free (the hook registered with
    ``os.register_at_fork``); a real fork, reporting through its exit code."""
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with _io._pieces_lock:
            _io._pieces[0] += 3
            held.set()
            release.wait(WAIT_S)
            _io._pieces[0] -= 3

    t = threading.Thread(target=hold)
    t.start()
    try:
        assert held.wait(WAIT_S)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads
            pid = os.fork()
        if pid == 0:  # the child: only this thread exists; touch nothing else
            free = _io._pieces_lock.acquire(timeout=WAIT_S)
            os._exit(0 if free and _io._pieces == [0] else 1)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0, (
            "the child counted pieces or found the lock held"
        )
    finally:
        release.set()
        t.join(WAIT_S)
    assert not t.is_alive() and _io._pieces == [0]


@pytest.mark.parametrize("durability", ["none", "journal"])
def test_a_shard_write_timed_out_while_its_disk_write_fails_raises_timeout_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, durability: str
) -> None:
    # End to end: an array's whole-shard write (a new value of the key, in a
    # worker thread) whose deadline passes while the thread writes, and whose
    # write then fails (a full disk). The caller gets TimeoutError, as from
    # stock zarr, once the thread has ended; nothing is held; the shard is
    # as it was.
    entered, release = threading.Event(), threading.Event()
    replacing = _backends.LocalBackend.replacing

    def fails(self: _backends.LocalBackend, key: str) -> None:
        if key == "c/0" and not entered.is_set():
            entered.set()
            assert release.wait(WAIT_S)
            raise OSError(28, "No space left on device")
        replacing(self, key)

    store = RangeLockedStore(LocalStore(tmp_path), durability=durability)
    with zarr.config.set(OURS):
        arr = zarr.create_array(store, shape=(8,), chunks=(4,), shards=(8,), dtype="i4")
        arr[:] = 1
    monkeypatch.setattr(_backends.LocalBackend, "replacing", fails)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        with zarr.config.set(OURS), pytest.raises(TimeoutError):
            async with asyncio.timeout(None) as deadline:
                call = asyncio.ensure_future(arr._async_array.setitem(slice(0, 8), 2))
                assert await asyncio.to_thread(entered.wait, WAIT_S)
                deadline.reschedule(loop.time())
                loop.call_soon(release.set)
                await call

    asyncio.run(main())
    no_locks_left(arr)
    with zarr.config.set(STOCK):
        assert zarr.open_array(LocalStore(tmp_path), mode="r")[:].tolist() == [1] * 8
