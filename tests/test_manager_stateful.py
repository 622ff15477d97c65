"""The lock table against a simple model, driven through the real async API.

The model: requests in arrival order; a live request is held exactly when no
earlier live request conflicts with it (same key, overlapping ranges, not
both shared; a prefix lock conflicts with every key under it). Every step
runs real ``acquire_async`` tasks on one event loop, lets the loop settle, and
compares which requests hold their ranges, and which were newly granted by
the step, with the model. ``_check()`` runs after every step.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from zarr_rangelock import Grant, LockTimeout, RangeLockManager

KEYS = ["a", "a/b", "a/c", "z"]
PREFIXES = ["a/", "a/b", ""]


@dataclass
class Req:
    n: int
    key: str
    ranges: list[tuple[int, int | None]]
    shared: bool
    prefix: bool
    task: asyncio.Task[Grant] = field(repr=False)

    def spans(self) -> list[tuple[int, float]]:
        return [(s, float("inf") if e is None else e) for s, e in self.ranges]


def conflict(a: Req, b: Req) -> bool:
    if a.prefix or b.prefix:
        if a.prefix and b.prefix:
            return a.key.startswith(b.key) or b.key.startswith(a.key)
        p, k = (a, b) if a.prefix else (b, a)
        return k.key.startswith(p.key)
    if a.key != b.key or (a.shared and b.shared):
        return False
    return any(s1 < e2 and s2 < e1 for s1, e1 in a.spans() for s2, e2 in b.spans())


ranges_st = st.lists(
    st.tuples(st.integers(0, 40), st.integers(1, 12) | st.none()).map(
        lambda t: (t[0], None if t[1] is None else t[0] + t[1])
    ),
    min_size=1,
    max_size=3,
)


class LockTableMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.mgr = RangeLockManager()
        self.live: list[Req] = []
        self.n = 0
        self.held_before: set[int] = set()

    def settle(self) -> None:
        # A wake-up is a call_soon_threadsafe callback that resolves a future,
        # then the task resumes: a few loop turns let every woken task finish.
        for _ in range(4):
            self.loop.run_until_complete(asyncio.sleep(0))

    def model_held(self) -> set[int]:
        held = set()
        for i, r in enumerate(self.live):
            if not any(conflict(o, r) for o in self.live[:i]):
                held.add(r.n)
        return held

    def step_done(self) -> None:
        self.settle()
        expected = self.model_held()
        actual = {r.n for r in self.live if r.task.done()}
        assert actual == expected, (actual, expected, self.live)
        # the newly granted ones are exactly what the model newly grants
        assert actual - self.held_before == expected - self.held_before
        self.held_before = actual
        self.mgr._check()

    @rule(key=st.sampled_from(KEYS), ranges=ranges_st, shared=st.booleans())
    def request(self, key: str, ranges: list[tuple[int, int | None]], shared: bool) -> None:
        self.n += 1
        task = self.loop.create_task(self.mgr.acquire_async(key, ranges, shared=shared))
        self.live.append(Req(self.n, key, ranges, shared, False, task))
        self.step_done()

    @rule(prefix=st.sampled_from(PREFIXES))
    def request_prefix(self, prefix: str) -> None:
        self.n += 1
        task = self.loop.create_task(self.mgr.acquire_prefix_async(prefix))
        self.live.append(Req(self.n, prefix, [(0, None)], False, True, task))
        self.step_done()

    @precondition(lambda self: any(r.task.done() for r in self.live))
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        r = data.draw(st.sampled_from([r for r in self.live if r.task.done()]))
        self.mgr.release(r.task.result())
        self.live.remove(r)
        self.step_done()

    @precondition(lambda self: any(not r.task.done() for r in self.live))
    @rule(data=st.data())
    def cancel_waiter(self, data: st.DataObject) -> None:
        r = data.draw(st.sampled_from([r for r in self.live if not r.task.done()]))
        r.task.cancel()
        self.live.remove(r)
        self.step_done()
        assert r.task.cancelled()

    @precondition(lambda self: any(not r.task.done() for r in self.live))
    @rule(data=st.data())
    def time_out_waiter(self, data: st.DataObject) -> None:
        # Time out a queued request: same admission path with timeout=0.
        r = data.draw(st.sampled_from([r for r in self.live if not r.task.done()]))
        r.task.cancel()
        self.live.remove(r)
        self.settle()

        async def attempt() -> None:
            if r.prefix:
                g = await self.mgr.acquire_prefix_async(r.key, timeout=0)
            else:
                g = await self.mgr.acquire_async(r.key, r.ranges, shared=r.shared, timeout=0)
            # granted at once: the model must agree that nothing live conflicts
            assert not any(conflict(o, r) for o in self.live)
            self.mgr.release(g)

        try:
            self.loop.run_until_complete(attempt())
        except LockTimeout:
            assert any(conflict(o, r) for o in self.live)
        self.step_done()

    @invariant()
    def stats_match(self) -> None:
        s = self.mgr.stats()
        assert s.holders + s.waiters == len(self.live)

    def teardown(self) -> None:
        for r in self.live:
            r.task.cancel()
        self.settle()
        for r in self.live:
            if r.task.done() and not r.task.cancelled():
                self.mgr.release(r.task.result())
        assert self.mgr.stats().keys == 0 and self.mgr._keys == {}
        self.loop.close()


TestLockTable = LockTableMachine.TestCase
TestLockTable.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
pytest.mark.timeout(300)(TestLockTable)
