"""Long queues on one key: whole-key writers wait for the one before them only.

The lock table's per-key queue (``locks/_queue.py``) cuts a key's requests
into segments at each queued exclusive whole-key request (a barrier), so a
request after a barrier waits for the barrier and for what came after it,
not for every earlier request. These tests pin the cost (linear, not
quadratic), the same fairness as before (checked against a model that knows
nothing of segments), and the hand-on when a barrier leaves the queue early
(timeout, cancellation). ``_check()`` runs after every step; it asserts that
the blocker lists follow the queue's rule and that the rule loses no earlier
conflicting request.
"""

from __future__ import annotations

import asyncio
import threading

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from tests._lock_model import Walk, conflicts
from tests._threads import wait_until
from zarr_rangelock import Grant, LockTimeout, RangeLockManager
from zarr_rangelock._errors import SelfDeadlockError

# Every test: the state machine runs real asyncio tasks, the others could
# hang on a grant that never comes.
pytestmark = pytest.mark.timeout(120)

WHOLE: list[tuple[int, int | None]] = [(0, None)]


def _queue(
    mgr: RangeLockManager,
    key: str,
    ranges: list[tuple[int, int | None]],
    shared: bool = False,
    prefix: bool = False,
) -> Grant:
    """Admit a request through the public methods' admission code, without
    waiting for it (deterministic, no threads); it may be granted at once."""
    g = mgr._request_prefix(key, None) if prefix else mgr._request(key, ranges, shared)
    with mgr._mutex:
        mgr._admit(g, False)
    mgr._check()
    return g


def _blocks_total(grants: list[Grant]) -> int:
    return sum(len(g._blocks or ()) for g in grants)


# ------------------------------------------------------------------ the cost


def test_each_queued_whole_key_writer_waits_for_the_one_before_it_only() -> None:
    # Before the segmented queue, the i-th writer counted i blockers and the
    # holder's and every writer's waiter lists held all later writers: n^2/2
    # entries (failed before: _nblockers was i + 1, lists held 500,500).
    mgr = RangeLockManager()
    holder = mgr.acquire_nowait("k", WHOLE)
    n = 1000
    waiters = []
    for _ in range(n):
        g = mgr._request("k", WHOLE, False)
        with mgr._mutex:
            mgr._admit(g, False)
        waiters.append(g)
    assert [g._nblockers for g in waiters] == [1] * n
    assert _blocks_total([holder, *waiters]) == n
    mgr._check()
    mgr.release(holder)
    for i, g in enumerate(waiters):  # strictly in order, one at a time
        assert g.held and (i + 1 == n or not waiters[i + 1].held)
        mgr.release(g)
    assert mgr.stats().keys == 0 and mgr._keys == {}


def test_range_writers_between_whole_key_writers_wait_only_for_the_writer_before_them() -> None:
    # Chunk writes between compactions of one shard: a range writer after a
    # whole-key writer waits for it alone, and the next whole-key writer
    # waits for it and the range writers after it, not for everything
    # earlier (failed before: range writers counted every earlier whole-key
    # writer).
    mgr = RangeLockManager()
    holder = mgr.acquire_nowait("k", WHOLE)
    rounds, per_round = 200, 3
    everyone = [holder]
    for r in range(rounds):
        w = _queue_quiet(mgr, "k", WHOLE)
        assert w._nblockers == 1 + (per_round if r else 0)
        everyone.append(w)
        for i in range(per_round):
            g = _queue_quiet(mgr, "k", [(64 * i, 64 * i + 64)])
            assert g._nblockers == 1
            everyone.append(g)
    assert _blocks_total(everyone) == rounds * (1 + 2 * per_round) - per_round
    mgr._check()
    mgr.release(holder)
    for r in range(rounds):
        w = everyone[1 + r * (1 + per_round)]
        ranges = everyone[2 + r * (1 + per_round) : 1 + (r + 1) * (1 + per_round)]
        assert w.held and not any(g.held for g in ranges)
        mgr.release(w)
        assert all(g.held for g in ranges)  # disjoint: granted together
        for g in ranges:
            mgr.release(g)
    assert mgr.stats().keys == 0


def _queue_quiet(mgr: RangeLockManager, key: str, ranges: list[tuple[int, int | None]]) -> Grant:
    g = mgr._request(key, ranges, False)
    with mgr._mutex:
        mgr._admit(g, False)
    return g


def test_shared_readers_queued_behind_a_writer_wait_for_it_alone() -> None:
    mgr = RangeLockManager()
    holder = mgr.acquire_nowait("k", WHOLE)
    readers = [_queue(mgr, "k", WHOLE, shared=True) for _ in range(50)]
    assert [g._nblockers for g in readers] == [1] * 50
    writer = _queue(mgr, "k", [(5, 6)])  # waits for every reader and the holder
    assert writer._nblockers == 51
    mgr.release(holder)
    mgr._check()
    assert all(g.held for g in readers) and not writer.held
    for g in readers:
        mgr.release(g)
    assert writer.held
    mgr.release(writer)
    assert mgr.stats().keys == 0


# ------------------------------------------- a barrier leaving the queue early


def test_a_whole_key_writer_that_times_out_hands_on_what_it_waited_for() -> None:
    # holder [0, 10); W1 whole key waits for it; W2 whole key waits for W1
    # only; R [0, 10) waits for W2 only. W1 times out: W2 must now wait for
    # the holder itself, and R still for W2; nobody overtakes.
    mgr = RangeLockManager()
    holder = mgr.acquire_nowait("k", [(0, 10)])
    other = mgr.acquire_nowait("k", [(20, 30)])
    w1 = _queue(mgr, "k", WHOLE)
    w2 = _queue(mgr, "k", WHOLE)
    r = _queue(mgr, "k", [(0, 10)])
    assert (w1._nblockers, w2._nblockers, r._nblockers) == (2, 1, 1)
    assert not mgr._abandon(w1, timed_out=True)
    mgr._check()
    assert w2._nblockers == 2 and not w2.held and not r.held
    mgr.release(holder)
    mgr._check()
    assert not w2.held
    mgr.release(other)
    mgr._check()
    assert w2.held and not r.held
    mgr.release(w2)
    assert r.held
    mgr.release(r)
    assert mgr.stats().keys == 0 and mgr.stats().timeouts == 1


def test_a_waiter_behind_a_cancelled_whole_key_writer_is_granted_if_nothing_elseconflicts() -> None:
    # The hand-on re-examines the queue: R [50, 60) waited for W only; W
    # leaves; what W waited for ([0, 10)) does not overlap R, so R is granted.
    mgr = RangeLockManager()
    holder = mgr.acquire_nowait("k", [(0, 10)])
    w = _queue(mgr, "k", WHOLE)
    r = _queue(mgr, "k", [(50, 60)])
    rs = _queue(mgr, "k", [(5, 6)], shared=True)  # overlaps the holder
    assert not r.held and not rs.held
    assert not mgr._abandon(w, timed_out=False)
    mgr._check()
    assert r.held and not rs.held and rs._nblockers == 1
    mgr.release(holder)
    assert rs.held
    mgr.release(r)
    mgr.release(rs)
    assert mgr.stats().keys == 0 and mgr.stats().cancellations == 1


def test_removing_a_barrier_in_the_middle_merges_segments_and_keeps_fifo() -> None:
    # Three segments of writers; the middle barrier leaves: its range
    # waiters join the first segment's queue, the third barrier now waits
    # for all of them, and later requests still queue behind the third.
    mgr = RangeLockManager()
    h = mgr.acquire_nowait("k", WHOLE)
    a = [_queue(mgr, "k", [(i, i + 1)]) for i in range(3)]
    b = _queue(mgr, "k", WHOLE)
    bs = [_queue(mgr, "k", [(i, i + 1)]) for i in range(4)]
    c = _queue(mgr, "k", WHOLE)
    late = _queue(mgr, "k", [(0, 1)], shared=True)
    mgr._abandon(b, timed_out=True)
    mgr._check()
    # bs[0] overlaps a[0]: it now waits for h and a[0]
    assert bs[0]._nblockers == 2 and bs[3]._nblockers == 1  # bs[3]: only h
    assert c._nblockers == 1 + len(a) + len(bs)  # h, and everyone after it
    mgr.release(h)
    mgr._check()
    assert all(g.held for g in a) and bs[3].held and not any(g.held for g in bs[:3])
    for g in a:
        mgr.release(g)
    assert all(g.held for g in bs) and not c.held
    for g in bs:
        mgr.release(g)
    assert c.held and not late.held
    mgr.release(c)
    assert late.held
    mgr.release(late)
    assert mgr.stats().keys == 0


def test_a_prefix_lock_and_a_barrier_leaving_keep_the_prefix_first() -> None:
    mgr = RangeLockManager()
    h = mgr.acquire_nowait("p/k", [(0, 10)])
    p = _queue(mgr, "p/", WHOLE, prefix=True)
    w1 = _queue(mgr, "p/k", WHOLE)
    w2 = _queue(mgr, "p/k", WHOLE)
    assert w1._nblockers == 2 and w2._nblockers == 2  # the barrier before it, the prefix
    mgr._abandon(w1, timed_out=True)
    mgr._check()
    assert w2._nblockers == 2  # the holder and the prefix
    mgr.release(h)
    assert p.held and not w2.held
    mgr.release(p)
    assert w2.held
    mgr.release(w2)
    assert mgr.stats().keys == 0


@pytest.mark.timeout(30)
def test_a_thread_waiting_on_its_own_held_range_through_a_queued_writer_is_refused() -> None:
    # The queue rule lets a request skip listing held ranges that a queued
    # whole-key writer already waits for; the self-wait check must still see
    # them: this thread holds [0, 10), another's whole-key write queues, then
    # this thread asks for [0, 10) again and would wait for itself forever.
    mgr = RangeLockManager()
    with mgr.lock("k", 0, 10):
        w = _queue(mgr, "k", WHOLE)
        with pytest.raises(SelfDeadlockError), mgr.lock("k", 5, 6):
            pass
        mgr._abandon(w, timed_out=True)
    assert mgr.stats().keys == 0


# ------------------------------------------------------- with real waiters


@pytest.mark.timeout(60)
def test_thousands_of_whole_key_tasks_are_granted_in_order_around_cancellations() -> None:
    async def main() -> None:
        mgr = RangeLockManager()
        holder = mgr.acquire_nowait("k", WHOLE)
        order: list[int] = []

        async def one(i: int) -> None:
            async with mgr.lock_async("k"):
                order.append(i)
                await asyncio.sleep(0)

        n = 2000
        tasks = [asyncio.create_task(one(i)) for i in range(n)]
        while mgr.stats().waiters < n:
            await asyncio.sleep(0)
        cancelled = set(range(1, n, 7))
        for i in cancelled:
            tasks[i].cancel()
        await asyncio.sleep(0)
        mgr._check()
        mgr.release(holder)
        await asyncio.gather(*tasks, return_exceptions=True)
        assert order == [i for i in range(n) if i not in cancelled]
        s = mgr.stats()
        assert s.keys == 0 and s.cancellations == len(cancelled) and s.max_queue_depth == n

    asyncio.run(main())


@pytest.mark.timeout(60)
def test_threads_queued_on_one_key_with_timeouts_among_them_are_granted_in_order() -> None:
    mgr = RangeLockManager()
    holder = mgr.acquire_nowait("k", WHOLE)
    n = 60
    order: list[int] = []
    lock = threading.Lock()
    timed_out: list[int] = []
    queued = [threading.Event() for _ in range(n)]

    def run(i: int) -> None:
        start, end = (0, None) if i % 3 else (8 * i, 8 * i + 8)
        # every fifth gives up at once: it queues, then times out (0 s)
        timeout = 0.0 if i % 5 == 4 else None
        queued[i].set()
        try:
            with mgr.lock("k", start, end, timeout=timeout), lock:
                order.append(i)
        except LockTimeout:
            timed_out.append(i)

    threads = []
    for i in range(n):  # one at a time, so the arrival order is i
        t = threading.Thread(target=run, args=(i,))
        t.start()
        queued[i].wait()
        wait_until(lambda i=i: mgr.stats().waiters + mgr.stats().timeouts == i + 1)
        threads.append(t)
    mgr._check()
    mgr.release(holder)
    for t in threads:
        t.join()
    assert sorted(timed_out) == [i for i in range(n) if i % 5 == 4]
    # whole-key requests are granted in arrival order, each after every
    # earlier range request too
    survivors = [i for i in range(n) if i % 5 != 4]
    wholes = [i for i in order if i % 3]
    assert wholes == [i for i in survivors if i % 3]
    for pos, i in enumerate(order):
        if i % 3:
            assert all(j in order[:pos] for j in survivors if j < i)
    assert mgr.stats().keys == 0


# -------------------------------------------------- random, against a model


def test_a_random_walk_of_long_queues_matches_the_fifo_model() -> None:
    # sortedcontainers style: seeded, reproducible (ZARR_RANGELOCK_SEED=...),
    # _check after every step. Mostly whole-key writers on one key, so long
    # chains of barriers form, with range writers, readers, multi-range
    # requests and prefix locks among them; waiters leave by timeout and by
    # cancellation from anywhere in the queue.
    walk = Walk()
    rng, mgr, live = walk.rng, walk.mgr, walk.live
    for step in range(1500):
        roll = rng.random()
        if roll < 0.5 or not live:
            kind = rng.random()
            key = "p/k" if rng.random() < 0.9 else "p/j"
            if kind < 0.45:
                spec = (key, WHOLE, False, False)
            elif kind < 0.6:
                spec = (key, WHOLE, True, False)
            elif kind < 0.95:
                s = rng.randrange(0, 64, 8)
                ranges: list[tuple[int, int | None]] = [(s, s + 8)]
                if rng.random() < 0.3:
                    ranges.append((s + 16, None if rng.random() < 0.3 else s + 24))
                spec = (key, ranges, rng.random() < 0.3, False)
            else:
                spec = (rng.choice(["p/", "p/k", "q"]), WHOLE, False, True)
            g = _queue(mgr, spec[0], spec[1], shared=spec[2], prefix=spec[3])
            live.append((g, spec))
        elif not walk.end_one(roll):
            continue
        walk.check(step)
    walk.drain()


# ------------------------------------------ stateful: real tasks on one key


def _req_ranges() -> st.SearchStrategy[tuple[list[tuple[int, int | None]], bool]]:
    whole = st.just((WHOLE, False))
    whole_shared = st.just((WHOLE, True))
    ranged = st.tuples(
        st.lists(
            st.tuples(st.integers(0, 30), st.integers(1, 10) | st.none()).map(
                lambda t: (t[0], None if t[1] is None else t[0] + t[1])
            ),
            min_size=1,
            max_size=2,
        ),
        st.booleans(),
    )
    return st.one_of(whole, whole, whole, whole_shared, ranged)


class LongQueueMachine(RuleBasedStateMachine):
    """Real ``acquire_async`` tasks on one key, mostly whole-key writers, with
    cancellations and timeouts anywhere in the queue; which tasks hold their
    ranges is compared with the FIFO model after every step."""

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.mgr = RangeLockManager()
        self.live: list[
            tuple[asyncio.Task[Grant], tuple[str, list[tuple[int, int | None]], bool, bool]]
        ] = []

    def settle(self) -> None:
        for _ in range(4):
            self.loop.run_until_complete(asyncio.sleep(0))

    def step_done(self) -> None:
        self.settle()
        self.mgr._check()
        for i, (task, spec) in enumerate(self.live):
            expect = not any(conflicts(o[1], spec) for o in self.live[:i])
            assert task.done() == expect, (i, spec, self.live)

    @rule(req=_req_ranges())
    def request(self, req: tuple[list[tuple[int, int | None]], bool]) -> None:
        ranges, shared = req
        task = self.loop.create_task(self.mgr.acquire_async("k", ranges, shared=shared))
        self.live.append((task, ("k", ranges, shared, False)))
        self.step_done()

    @rule()
    def request_prefix(self) -> None:
        task = self.loop.create_task(self.mgr.acquire_prefix_async(""))
        self.live.append((task, ("", WHOLE, False, True)))
        self.step_done()

    @precondition(lambda self: any(t.done() for t, _ in self.live))
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        x = data.draw(st.sampled_from([x for x in self.live if x[0].done()]))
        self.mgr.release(x[0].result())
        self.live.remove(x)
        self.step_done()

    @precondition(lambda self: any(not t.done() for t, _ in self.live))
    @rule(data=st.data(), timeout=st.booleans())
    def leave(self, data: st.DataObject, timeout: bool) -> None:
        # A queued task leaves from anywhere in the queue by cancellation;
        # with ``timeout`` the same request then queues again at the end with
        # timeout=0 and times out there (the random walk above times out
        # waiters in the middle of the queue).
        x = data.draw(st.sampled_from([x for x in self.live if not x[0].done()]))
        task, spec = x
        if timeout:
            task.cancel()
            self.settle()
            key, ranges, shared, prefix = spec

            async def attempt() -> Grant:
                if prefix:
                    return await self.mgr.acquire_prefix_async(key, timeout=0)
                return await self.mgr.acquire_async(key, ranges, shared=shared, timeout=0)

            self.live.remove(x)
            try:
                g = self.loop.run_until_complete(attempt())
            except LockTimeout:
                assert any(conflicts(o[1], spec) for o in self.live)
            else:
                assert not any(conflicts(o[1], spec) for o in self.live)
                self.mgr.release(g)
        else:
            task.cancel()
            self.live.remove(x)
        self.step_done()

    @invariant()
    def counts_match(self) -> None:
        s = self.mgr.stats()
        assert s.holders + s.waiters == len(self.live)

    def teardown(self) -> None:
        for t, _ in self.live:
            t.cancel()
        self.settle()
        for t, _ in self.live:
            if t.done() and not t.cancelled():
                self.mgr.release(t.result())
        assert self.mgr.stats().keys == 0 and self.mgr._keys == {}
        self.loop.close()


TestLongQueue = LongQueueMachine.TestCase
TestLongQueue.settings = settings(max_examples=120, stateful_step_count=60, deadline=None)
pytest.mark.timeout(300)(TestLongQueue)
