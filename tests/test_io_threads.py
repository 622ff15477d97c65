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
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
import pytest
import zarr
from zarr.codecs import ZstdCodec
from zarr.storage import MemoryStore

from zarr_rangelock import RangeLockedStore
from zarr_rangelock.shards import _jobs
from zarr_rangelock.store import _io
from zarr_rangelock.store._io import INLINE, in_thread, run_to_completion

pytestmark = pytest.mark.timeout(60)

WAIT_S = 10.0


async def _cancel_mid_work(
    start: Callable[[Callable[[], str]], Awaitable[str]],
) -> tuple[list[str], BaseException | str]:
    """Run ``start(work)`` as a task, cancel it while ``work`` is held in its
    thread, then let the work end; return what happened, in order, and how
    the task ended."""
    events: list[str] = []
    entered = threading.Event()
    release = threading.Event()

    def work() -> str:
        entered.set()
        assert release.wait(WAIT_S)
        events.append("work done")
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


def test_in_thread_unless_cheap_sends_work_to_a_worker_until_it_is_measured_cheap(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The first work (cost unknown) goes to a worker thread; once its mean
    is at most ``INLINE_MAX_S`` for the units asked, it runs on the caller's
    thread; dear work goes back to a worker. CPU time by ``time.thread_time``
    (stood in for here: each call ``spent`` seconds more)."""
    clock = [0.0]
    spent = [0.0]

    def thread_time() -> float:  # read before and after the work: ``spent`` apart
        clock[0] += spent[0]
        return clock[0]

    monkeypatch.setattr(_io.time, "thread_time", thread_time)

    async def main() -> None:
        caller = threading.get_ident()
        cost = _io.Cost()
        ran_in: list[int] = []

        def work() -> int:
            ran_in.append(threading.get_ident())
            return len(ran_in)

        assert cost.mean == math.inf
        spent[0] = 4 * 100e-6  # four units of 100 us
        assert await _io.in_thread_unless_cheap(work, cost, 4) == 1
        assert ran_in[-1] != caller  # unknown: a worker
        assert cost.mean == pytest.approx(100e-6)  # the first measure, per unit
        assert await _io.in_thread_unless_cheap(work, cost, 4) == 2
        assert ran_in[-1] == caller  # 4 x 100 us <= INLINE_MAX_S: inline
        spent[0] = 11 * 100e-6
        assert await _io.in_thread_unless_cheap(work, cost, 11) == 3
        assert ran_in[-1] != caller  # 11 x 100 us > INLINE_MAX_S: a worker
        spent[0] = 11 * 10e-3  # dear now: the mean moves a quarter of the way
        await _io.in_thread_unless_cheap(work, cost, 11)
        assert cost.mean == pytest.approx(0.75 * 100e-6 + 0.25 * 10e-3)
        await _io.in_thread_unless_cheap(work, cost, 1)
        assert ran_in[-1] != caller  # 2.6 ms for one unit: a worker

        def fail() -> None:
            raise KeyError("boom")

        with pytest.raises(KeyError, match="boom"):  # inline or not, its error
            await _io.in_thread_unless_cheap(fail, cost, 1)
        cost.mean = 0.0
        with pytest.raises(KeyError, match="boom"):
            await _io.in_thread_unless_cheap(fail, cost, 1)

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
