"""Work handed to a worker thread under a lock outlives the caller's cancellation.

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
import threading
from collections.abc import Awaitable, Callable

import pytest

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
