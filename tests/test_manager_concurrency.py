"""Threads and asyncio tasks contending on one manager.

Each exclusion test has a twin that runs the same interleaving without the
lock and shows the overlap happen, so the exclusion tests can fail. Order is
forced with events, barriers and state polling, never with sleeps; every
test has a timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager

import pytest

from tests._threads import wait_until
from zarr_rangelock import LockTimeout, RangeLockManager

pytestmark = pytest.mark.timeout(60)


class AsyncioThread:
    """An event loop running in its own thread, for mixing tasks with threads."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def submit(self, coro):  # type: ignore[no-untyped-def]
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture
def aio() -> Iterator[AsyncioThread]:
    t = AsyncioThread()
    yield t
    t.close()


# --------------------------------------------------------------------------
# Deterministic exclusion, with the lock and without it


def _contend(
    lock_sync: Callable[[], AbstractContextManager[object]],
    lock_async: Callable[[], contextlib.AbstractAsyncContextManager[object]],
    aio: AsyncioThread,
    others_queued: Callable[[], bool],
) -> list[str]:
    """T1 enters its critical section; a thread and a task then try to enter
    theirs; T1 leaves only once both are queued or inside. Returns the log of
    enter/leave events: overlapping critical sections show as an enter inside
    T1's enter..leave."""
    log: list[str] = []
    inside = threading.Event()
    entered: dict[str, threading.Event] = {"T2": threading.Event(), "A": threading.Event()}

    def t1() -> None:
        with lock_sync():
            log.append("T1 enter")
            inside.set()
            wait_until(lambda: others_queued() or all(e.is_set() for e in entered.values()))
            log.append("T1 leave")

    def t2() -> None:
        assert inside.wait(10)
        with lock_sync():
            log.append("T2 enter")
            entered["T2"].set()
            log.append("T2 leave")

    async def a() -> None:
        assert await asyncio.get_running_loop().run_in_executor(None, inside.wait, 10)
        async with lock_async():
            log.append("A enter")
            entered["A"].set()
            log.append("A leave")

    threads = [threading.Thread(target=t1), threading.Thread(target=t2)]
    for t in threads:
        t.start()
    fut = aio.submit(a())
    for t in threads:
        t.join(20)
        assert not t.is_alive()
    fut.result(20)
    return log


def test_a_thread_and_a_task_wait_for_an_overlapping_holder(aio: AsyncioThread) -> None:
    mgr = RangeLockManager()
    log = _contend(
        lambda: mgr.lock("k", 0, 10),
        lambda: mgr.lock_async("k", 5, 15),
        aio,
        lambda: mgr.stats().waiters == 2,
    )
    assert log[:2] == ["T1 enter", "T1 leave"], log
    assert mgr.stats().waits == 2 and mgr.stats().keys == 0
    mgr._check()


def test_without_the_lock_the_same_interleaving_overlaps(aio: AsyncioThread) -> None:
    # The control for the test above: with a lock that excludes nothing, the
    # thread and the task enter while T1 is inside.
    log = _contend(contextlib.nullcontext, contextlib.AsyncExitStack, aio, lambda: False)
    assert log.index("T1 leave") > log.index("T2 enter"), log
    assert log.index("T1 leave") > log.index("A enter"), log


# --------------------------------------------------------------------------
# Random mixed load: an ownership map detects any overlap of exclusive holders


def _hammer(
    mgr: RangeLockManager | None, aio: AsyncioThread, seed: int, iters: int
) -> tuple[int, int]:
    """Threads and tasks take random ranges of a 64-byte key and mark the
    bytes they own; returns (overlaps seen, critical sections run)."""
    owner = [0] * 64
    guard = threading.Lock()
    overlaps = 0
    done = 0

    def enter(me: int, s: int, e: int) -> None:
        nonlocal overlaps
        with guard:
            if any(owner[s:e]):
                overlaps += 1
            for i in range(s, e):
                owner[i] = me

    def leave(me: int, s: int, e: int) -> None:
        nonlocal overlaps, done
        with guard:
            if any(o != me for o in owner[s:e]):
                overlaps += 1
            for i in range(s, e):
                if owner[i] == me:
                    owner[i] = 0
            done += 1

    def thread_worker(me: int) -> None:
        rnd = random.Random(seed * 100 + me)
        for _ in range(iters):
            s = rnd.randrange(0, 60)
            e = rnd.randrange(s + 1, 65)

            def section(_k: str, _d: memoryview, _s: int, s: int = s, e: int = e) -> None:
                enter(me, s, e)
                os.sched_yield()
                leave(me, s, e)

            # Even threads try the store's token path first (a free key is
            # held without a Grant, and promoted when others need it).
            if mgr and me % 2 == 0 and mgr._run_if_free("k", s, e, section, memoryview(b"")):
                continue
            with mgr.lock("k", s, e) if mgr else contextlib.nullcontext():
                section("k", memoryview(b""), s)

    async def task_worker(me: int) -> None:
        rnd = random.Random(seed * 100 + me)
        for _ in range(iters):
            s = rnd.randrange(0, 60)
            e = rnd.randrange(s + 1, 65)
            cm = mgr.lock_async("k", s, e) if mgr else contextlib.AsyncExitStack()
            async with cm:
                enter(me, s, e)
                await asyncio.sleep(0)
                leave(me, s, e)

    async def tasks() -> None:
        await asyncio.gather(*(task_worker(10 + i) for i in range(4)))

    threads = [threading.Thread(target=thread_worker, args=(i + 1,)) for i in range(4)]
    for t in threads:
        t.start()
    aio.submit(tasks()).result(50)
    for t in threads:
        t.join(50)
        assert not t.is_alive()
    return overlaps, done


def test_threads_and_tasks_never_hold_overlapping_ranges_at_once(aio: AsyncioThread) -> None:
    seed = random.randrange(1 << 30)
    print("seed", seed)
    mgr = RangeLockManager()
    overlaps, done = _hammer(mgr, aio, seed, 300)
    assert overlaps == 0 and done == 8 * 300
    s = mgr.stats()
    assert s.holders == s.waiters == s.keys == 0 and s.waits > 0
    mgr._check()


def test_without_the_lock_the_random_load_overlaps(aio: AsyncioThread) -> None:
    # Control: the detector does see overlaps when nothing excludes. Four
    # tasks on one loop interleave at every await, so this cannot miss.
    overlaps, done = _hammer(None, aio, 1, 300)
    assert overlaps > 0 and done == 8 * 300


def _prefix_vs_token_writers(mgr: RangeLockManager | None, rounds: int) -> int:
    """Four threads write keys under ``p/`` through the store's token path (a
    free or token-only key is held without a Grant; each thread owns its own
    bytes, so writers never wait for each other). A fifth thread, ``rounds``
    times, asks one writer to stay inside its write, then takes the prefix
    lock ``p/`` and counts the holds during which a writer was inside.

    With locks the writer stays until the prefix request is queued (which
    turned its token into a Grant to queue behind) and then leaves: the
    prefix holder must never see a writer. With ``mgr=None`` (no locks) the
    writer stays until the fifth thread has looked, so it is seen every round.
    """
    inside = [0] * 4
    guard = threading.Lock()
    want = threading.Event()  # the prefix taker wants a writer to stay inside
    writer_in = threading.Event()  # one is
    looked = threading.Event()  # (no locks) the taker has looked
    stop = threading.Event()
    seen_inside = 0

    def writer(t: int) -> None:
        rnd = random.Random(t)

        def section(_k: str, _d: memoryview, _s: int) -> None:
            with guard:
                inside[t] += 1
                stay = want.is_set()
                want.clear()
            if stay:
                writer_in.set()
                if mgr is not None:
                    wait_until(lambda: mgr.stats().waiters > 0)
                else:
                    assert looked.wait(10)
            os.sched_yield()
            with guard:
                inside[t] -= 1

        while not stop.is_set():
            key = f"p/{rnd.randrange(4)}"
            s = 16 * t + rnd.randrange(8)
            if mgr is None:
                section(key, memoryview(b""), s)
            elif not mgr._run_if_free(key, s, s + 8, section, memoryview(b"")):
                with mgr.lock(key, s, s + 8):
                    section(key, memoryview(b""), s)

    def prefix_taker() -> None:
        nonlocal seen_inside
        try:
            for _ in range(rounds):
                looked.clear()
                writer_in.clear()
                want.set()
                assert writer_in.wait(10)
                with mgr.lock_prefix("p/") if mgr else contextlib.nullcontext(), guard:
                    seen_inside += any(inside)
                looked.set()
        finally:
            stop.set()
            looked.set()

    threads = [threading.Thread(target=writer, args=(t,)) for t in range(4)]
    threads.append(threading.Thread(target=prefix_taker))
    for th in threads:
        th.start()
    for th in threads:
        th.join(50)
        assert not th.is_alive()
    return seen_inside


def test_a_prefix_lock_waits_for_writers_holding_keys_by_token() -> None:
    mgr = RangeLockManager()
    assert _prefix_vs_token_writers(mgr, 200) == 0
    mgr._check()
    assert mgr.stats().keys == 0 and mgr._promoted == {}


def test_without_the_lock_the_prefix_holder_sees_writers_inside() -> None:
    # Control: the same rounds with no locks; the writer asked to stay is
    # inside every time the prefix holder looks.
    assert _prefix_vs_token_writers(None, 200) == 200


# --------------------------------------------------------------------------
# Timeouts, cancellation and cross-loop wake-ups


def test_a_grant_racing_a_cancellation_is_handed_on(aio: AsyncioThread) -> None:
    # Interleaving: task B queues behind A's grant, task C behind B. A is
    # released: B is granted and its wake-up is scheduled, but B is cancelled
    # before it runs. B must hand the grant on to C, not keep or lose it.
    mgr = RangeLockManager()

    async def scenario() -> None:
        a = await mgr.acquire_async("k", [(0, 10)])
        b = asyncio.create_task(mgr.acquire_async("k", [(0, 10)]))
        c = asyncio.create_task(mgr.acquire_async("k", [(5, 20)]))
        while mgr.stats().waiters < 2:
            await asyncio.sleep(0)
        mgr.release(a)  # B granted; its future resolves on a later loop turn
        b.cancel()
        gc = await asyncio.wait_for(c, 10)
        assert b.cancelled()
        assert gc.held
        mgr.release(gc)

    aio.submit(scenario()).result(20)
    s = mgr.stats()
    assert s.holders == s.waiters == s.keys == 0 and s.cancellations == 1
    mgr._check()


def test_a_timed_out_thread_wakes_the_waiter_it_was_blocking() -> None:
    # A holds [0,10); B (thread) queues for [0,20) with a timeout; C queues
    # for [15,20), behind B only. When B times out, C must be granted even
    # though A still holds.
    mgr = RangeLockManager()
    a = mgr.acquire("k", [(0, 10)])
    b_started = threading.Event()
    result: dict[str, object] = {}

    def b() -> None:
        b_started.set()
        try:
            mgr.acquire("k", [(0, 20)], timeout=2.0)
        except LockTimeout as exc:
            result["b"] = exc

    tb = threading.Thread(target=b)
    tb.start()
    wait_until(lambda: mgr.stats().waiters == 1)
    tc = threading.Thread(target=lambda: result.setdefault("c", mgr.acquire("k", [(15, 20)])))
    tc.start()
    wait_until(lambda: mgr.stats().waiters == 2)  # C queued behind B, before B's timeout
    tb.join(10)
    tc.join(10)
    assert isinstance(result["b"], LockTimeout)
    mgr.release(result["c"])  # type: ignore[arg-type]
    mgr.release(a)
    assert mgr.stats().keys == 0
    mgr._check()


def test_a_waiter_on_one_loop_is_woken_by_a_release_on_another_loop() -> None:
    mgr = RangeLockManager()
    loop1, loop2 = AsyncioThread(), AsyncioThread()
    try:
        g = loop1.submit(mgr.acquire_async("k", [(0, None)])).result(10)
        fut = loop2.submit(mgr.acquire_async("k", [(3, 4)]))
        wait_until(lambda: mgr.stats().waiters == 1)
        loop1.submit(asyncio.to_thread(mgr.release, g)).result(10)
        g2 = fut.result(10)
        mgr.release(g2)
    finally:
        loop1.close()
        loop2.close()
    assert mgr.stats().keys == 0


def test_thousands_of_random_timeouts_and_cancellations_leave_the_table_empty(
    aio: AsyncioThread,
) -> None:
    seed = random.randrange(1 << 30)
    print("seed", seed)
    mgr = RangeLockManager()
    aio2 = AsyncioThread()
    # Pins on [0, 8) of both keys, held throughout, so that many requests
    # must wait whatever the scheduling: a thread asking for them times out,
    # a task asking for them is queued when it is cancelled. (Without pins
    # the count below depended on the threads and tasks overlapping in time;
    # a loaded CI run once had no thread wait at all.)
    pins = [mgr.acquire_nowait(k, [(0, 8)]) for k in "ab"]

    def thread_worker(me: int) -> None:
        rnd = random.Random(seed + me)
        for _ in range(400):
            s = rnd.randrange(0, 32)
            try:
                with mgr.lock(
                    rnd.choice("ab"),
                    s,
                    s + rnd.randrange(1, 16),
                    shared=rnd.random() < 0.3,
                    timeout=rnd.choice([0, 0.0005]),
                ):
                    os.sched_yield()
            except LockTimeout:
                pass

    async def task_worker(me: int) -> None:
        rnd = random.Random(seed + me)
        for _ in range(400):
            s = rnd.randrange(0, 32)
            t = asyncio.create_task(
                mgr.acquire_async(
                    rnd.choice("ab"), [(s, s + rnd.randrange(1, 16))], shared=rnd.random() < 0.3
                )
            )
            for _ in range(rnd.randrange(0, 3)):
                await asyncio.sleep(0)
            t.cancel()  # at a random point: queued, just granted, or done
            try:
                g = await t
            except asyncio.CancelledError:
                continue
            await asyncio.sleep(0)
            mgr.release(g)

    async def tasks(base: int) -> None:
        await asyncio.gather(*(task_worker(base + i) for i in range(4)))

    threads = [threading.Thread(target=thread_worker, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    f1, f2 = aio.submit(tasks(100)), aio2.submit(tasks(200))
    f1.result(50)
    f2.result(50)
    for t in threads:
        t.join(50)
        assert not t.is_alive()
    aio2.close()
    s = mgr.stats()
    print(s)
    assert s.timeouts > 200 and s.cancellations > 300, s  # about 300 and 530 from the pins alone
    for pin in pins:
        mgr.release(pin)
    s = mgr.stats()
    assert s.holders == s.waiters == s.keys == 0, s
    assert mgr._keys == {} and mgr._prefixes == []
    mgr._check()
