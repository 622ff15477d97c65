"""The self-wait check behind a queued whole-key writer: bounded, and still complete.

A request queued after a key's first queued exclusive whole-key request (a
barrier) waits, through it, for every held range ahead of it. The check that
refuses a request waiting for its own thread, task or loop
(``locks/_owners.py``) used to scan all of those for each such request:
``O(n)`` per request, ``O(n * m)`` for ``m`` whole-key requests behind ``n``
held ranges. The key's queue now files them once by holder (``HeldBy``), so a
check looks at the requester's own grants. The first tests count the work
(line events of the interpreter, and grants handed to the check; no clock);
the others build each way a held range can join or leave that filing (granted
after it was made, handed over after it was made, given a holder later, the
head emptied and refilled) and check that the owner's request is still
refused.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

import pytest

import zarr_rangelock.locks._table as table
from zarr_rangelock import Grant, RangeLockManager, SelfDeadlockError
from zarr_rangelock.locks._table import AWAITS, BLOCKS

pytestmark = pytest.mark.timeout(60)  # the tasks below could hang on a grant that never comes

WHOLE: list[tuple[int, int | None]] = [(0, None)]


def _admit(
    mgr: RangeLockManager, ranges: list[tuple[int, int | None]], waiter: int = 0, key: str = "k"
) -> Grant:
    """Admit a request as ``acquire`` does before it would park: granted or
    queued, never waited for. ``waiter`` (BLOCKS, AWAITS) runs the self-wait
    check as a request without a timeout; 0 skips it."""
    g = mgr._request(key, ranges, False)
    with mgr._mutex:
        mgr._admit(g, False, waiter)
    return g


# -------------------------------------------------------------- the cost


def _lines(fn: Callable[[], Any]) -> int:
    """Line events of the interpreter while ``fn()`` runs (a count of work)."""
    n = 0

    def trace(frame: FrameType, event: str, arg: Any) -> Any:
        nonlocal n
        if event == "line":
            n += 1
        return trace

    sys.settrace(trace)
    try:
        fn()
    finally:
        sys.settrace(None)
    return n


def _whole_key_waiters_behind(n: int, m: int) -> tuple[int, list[int]]:
    """``n`` held ranges, a queued whole-key writer, then ``m`` more whole-key
    requests checked as blocking ones; the line events of each of those."""
    mgr = RangeLockManager()
    held = [mgr.acquire_nowait("k", [(i * 128, i * 128 + 64)]) for i in range(n)]
    queued = [_admit(mgr, WHOLE)]
    per: list[int] = []
    for _ in range(m):
        per.append(_lines(lambda: queued.append(_admit(mgr, WHOLE, BLOCKS))))
    assert not any(g.held for g in queued)
    mgr._check()
    for g in queued:
        mgr._abandon(g, timed_out=True)
    for g in held:
        mgr.release(g)
    mgr._check(idle=True)
    assert mgr.stats().keys == 0
    return n, per


def test_whole_key_requests_behind_many_held_ranges_cost_the_same_at_any_number_of_them() -> None:
    # The first check files the held ranges (O(n), once); every later one
    # must not depend on n. Before: each scanned all n (O(n * m) in all).
    # (n = 2000, not more: the table's consistency check that the test runs,
    # ``_check``, compares holders pairwise: 11 s at 4000.)
    _, small = _whole_key_waiters_behind(200, 30)
    _, large = _whole_key_waiters_behind(2000, 30)
    later_small = statistics.median(small[1:])
    later_large = statistics.median(large[1:])
    assert later_large <= 1.2 * later_small + 20, (later_small, later_large)
    assert later_large < 400, later_large  # far below n = 2000
    assert sum(large) < 2000 * 10 + 30 * 400, sum(large)  # one O(n) pass, not thirty


@pytest.fixture
def examined(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """How many grants each self-wait check is given to look at."""
    sizes: list[int] = []
    real = table.refuse_self_wait

    def spy(g: Grant, blockers: list[Grant], awaiting: bool) -> None:
        sizes.append(len(blockers))
        real(g, blockers, awaiting)

    monkeypatch.setattr(table, "refuse_self_wait", spy)
    yield sizes


def test_the_check_of_a_whole_key_request_looks_at_the_writer_it_follows_not_the_held_ranges(
    examined: list[int],
) -> None:
    mgr = RangeLockManager()
    held = [mgr.acquire_nowait("k", [(i * 128, i * 128 + 64)]) for i in range(500)]
    queued = [_admit(mgr, WHOLE)]
    for _ in range(20):
        queued.append(_admit(mgr, WHOLE, BLOCKS))
    assert examined == [1] * 20  # the whole-key request before it; before: 501 each
    for g in queued:
        mgr._abandon(g, timed_out=True)
    for g in held:
        mgr.release(g)
    assert mgr.stats().keys == 0


# ------------------------------------------- still refused, every way in


def test_a_range_this_thread_took_after_the_filing_was_dropped_is_seen() -> None:
    # The filing is made while a writer is queued; the writer leaves, the
    # head takes new holders through the fast path (unfiled), a writer queues
    # again: the filing must be made anew, or this thread's range is missed.
    mgr = RangeLockManager()
    h = mgr.acquire_nowait("k", [(0, 10)])
    w1 = _admit(mgr, WHOLE)
    probe = _admit(mgr, WHOLE, BLOCKS)  # files the held ranges (this thread: none)
    for g in (probe, w1):
        assert not mgr._abandon(g, timed_out=True)
    with mgr.lock("k", 20, 30):
        w2 = _admit(mgr, WHOLE)
        with pytest.raises(SelfDeadlockError, match="this thread"):
            _admit(mgr, [(25, 26)], BLOCKS)
        with pytest.raises(SelfDeadlockError, match="this thread"):
            _admit(mgr, WHOLE, BLOCKS)
        # apart from this thread's range, and still behind the writer
        with pytest.raises(SelfDeadlockError, match="behind an exclusive lock") as info:
            _admit(mgr, [(40, 41)], BLOCKS)
        assert info.value.held == ((20, 30),)
        mgr._check()
        assert not mgr._abandon(w2, timed_out=True)
    mgr.release(h)
    mgr._check(idle=True)
    assert mgr.stats().keys == 0


def _granted_behind_a_writer(filed_first: bool) -> None:
    """Task ``t`` waits for [5, 6) behind a held [0, 10); a whole-key writer
    queues; the held range is released, so ``t`` is granted while the writer
    still waits (for ``t``). The held ranges are filed before ``t`` is
    granted (``filed_first``) or after it is granted but before ``t`` runs
    again and takes it. Either way ``t``'s whole-key request, and a blocking
    one on the loop's thread, must be refused."""

    async def main() -> None:
        mgr = RangeLockManager()
        h = mgr.acquire_nowait("k", [(0, 10)])
        outcome: list[str] = []
        inside = asyncio.Event()
        decided = asyncio.Event()
        leave = asyncio.Event()

        async def t_body() -> None:
            async with mgr.lock_async("k", 5, 6):
                inside.set()
                try:  # admitted, not awaited: a miss queues (and would hang)
                    g = _admit(mgr, WHOLE, AWAITS)
                    outcome.append("queued")
                    mgr._abandon(g, timed_out=True)
                except SelfDeadlockError:
                    outcome.append("refused")
                decided.set()
                await leave.wait()

        t = asyncio.create_task(t_body())
        while mgr.stats().waiters == 0:
            await asyncio.sleep(0)  # t queues behind h
        w = _admit(mgr, WHOLE)
        probes = []
        if filed_first:
            probes.append(_admit(mgr, WHOLE, AWAITS))  # this task holds nothing: queued
        mgr.release(h)  # t is granted; it has not run yet
        assert not inside.is_set()
        if not filed_first:
            probes.append(_admit(mgr, WHOLE, AWAITS))
        mgr._check()
        await asyncio.wait_for(decided.wait(), 10)
        assert outcome == ["refused"]
        # a blocking request on this loop's thread would block t for good
        with pytest.raises(SelfDeadlockError, match="of the event loop running on this thread"):
            _admit(mgr, WHOLE, BLOCKS)
        mgr._check()
        for g in probes:
            assert not mgr._abandon(g, timed_out=True)
        leave.set()
        await asyncio.wait_for(t, 10)
        _writer_gets_in_last(mgr, w)

    asyncio.run(main())


def _writer_gets_in_last(mgr: RangeLockManager, w: Grant) -> None:
    """The queued whole-key writer ``w`` holds once the others left; released,
    it leaves the table empty and consistent."""
    assert w.held
    mgr.release(w)
    mgr._check(idle=True)
    assert mgr.stats().keys == 0


def test_a_range_granted_after_the_filing_is_seen() -> None:
    _granted_behind_a_writer(filed_first=True)


def test_a_range_granted_before_the_filing_and_handed_over_after_it_is_seen() -> None:
    _granted_behind_a_writer(filed_first=False)


def test_a_grant_given_to_a_task_after_the_filing_is_seen() -> None:
    # The store's consistent reads take grants with acquire_async (holder
    # 0, anyone may release) and then give them to the block's task.
    async def main() -> None:
        mgr = RangeLockManager()
        g = await mgr.acquire_async("k", [(0, 10)], shared=True)
        w = _admit(mgr, WHOLE)
        probe = _admit(mgr, WHOLE, BLOCKS)  # files g under nobody (holder 0)
        assert not mgr._abandon(probe, timed_out=True)
        mgr._hand_to(g, asyncio.current_task())
        mgr._check()
        with pytest.raises(SelfDeadlockError, match="this task"):
            _admit(mgr, WHOLE, AWAITS)
        with pytest.raises(SelfDeadlockError, match="this task"):
            await asyncio.wait_for(mgr.acquire_async("k", [(5, 6)]), 10)
        mgr.release(g)
        _writer_gets_in_last(mgr, w)

    asyncio.run(main())


def test_another_threads_ranges_in_the_filing_do_not_refuse_this_thread() -> None:
    # Filing by holder must not mix holders up: ranges held by the with
    # blocks of tasks on another loop, and by acquire(), are not this
    # thread's; its request queues (here: is admitted and left).
    async def holder(mgr: RangeLockManager, ready: asyncio.Event, leave: asyncio.Event) -> None:
        async with mgr.lock_async("k", 0, 10):
            ready.set()
            await leave.wait()

    async def main() -> None:
        mgr = RangeLockManager()
        ready, leave = asyncio.Event(), asyncio.Event()
        t = asyncio.create_task(holder(mgr, ready, leave))
        await ready.wait()
        other = mgr.acquire_nowait("k", [(20, 30)])
        w = _admit(mgr, WHOLE)
        queued = [_admit(mgr, WHOLE, AWAITS) for _ in range(3)]  # this task holds nothing
        assert not any(g.held for g in queued)
        with pytest.raises(SelfDeadlockError):  # but the loop's thread may not block
            _admit(mgr, WHOLE, BLOCKS)
        mgr._check()
        for g in queued:
            assert not mgr._abandon(g, timed_out=True)
        leave.set()
        await t
        mgr.release(other)
        _writer_gets_in_last(mgr, w)

    asyncio.run(main())
