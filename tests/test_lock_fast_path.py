"""The lock table's fast path: a request that conflicts with nothing on its key.

``RangeLockManager._hold_at_once`` grants a key request at once, without the
general admission (``_enqueue``: blocker lists, the self-wait check), when the
key's queue has one segment (no exclusive whole-key request queued) and
nothing on the key conflicts with it (``KeyQueue.hold_if_free``), however many
holders the key has; and ``_release`` drops a holder nobody waits for without
``_remove``. These tests pin both with spies (counts of calls, not times), and
check that the shortcut agrees with the FIFO rule: a seeded random walk
against a model that knows nothing of segments or indexes, with ``_check()``
after every step.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests._lock_model import Walk
from zarr_rangelock import Grant, RangeLockManager, WouldBlock
from zarr_rangelock.locks._index import SMALL
from zarr_rangelock.locks._queue import KeyQueue

# Single-threaded, but a broken grant could block a release or an acquire.
pytestmark = pytest.mark.timeout(60)

WHOLE: list[tuple[int, int | None]] = [(0, None)]


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, int]]:
    """Counts of calls of the general path's ``_enqueue`` and ``_remove``."""
    counts = {"_enqueue": 0, "_remove": 0}
    for name in counts:
        real = getattr(RangeLockManager, name)

        def spy(
            self: RangeLockManager, *a: Any, _real: Callable[..., Any] = real, _n: str = name
        ) -> Any:
            counts[_n] += 1
            return _real(self, *a)

        monkeypatch.setattr(RangeLockManager, name, spy)
    yield counts


def _holders(mgr: RangeLockManager, n: int, shared: bool = False) -> list[Grant]:
    """``n`` disjoint 64-byte ranges of "k", 128 bytes apart, held."""
    return [mgr.acquire_nowait("k", [(i * 128, i * 128 + 64)], shared=shared) for i in range(n)]


@pytest.mark.parametrize("n", [2, SMALL, SMALL + 1, 64, 1000])
@pytest.mark.parametrize("shared", [False, True])
def test_a_free_range_is_granted_and_released_without_the_general_path_at_any_number_of_holders(
    calls: dict[str, int], n: int, shared: bool
) -> None:
    mgr = RangeLockManager()
    held = _holders(mgr, n, shared)
    calls["_enqueue"] = calls["_remove"] = 0
    mid = (n // 2) * 128 + 64  # the gap after the middle holder
    with mgr.lock("k", mid, mid + 64, shared=shared):
        mgr._check()
        assert calls["_enqueue"] == 0
    with mgr.lock_ranges("k", [(64, 128), (mid, mid + 64)], shared=shared):  # several ranges
        mgr._check()
    assert calls == {"_enqueue": 0, "_remove": 0}
    if shared:  # a shared request overlapping shared holders is free too
        with mgr.lock("k", 0, 128 * n, shared=True):
            mgr._check()
        assert calls == {"_enqueue": 0, "_remove": 0}
    for g in held:
        mgr.release(g)
    assert calls == {"_enqueue": 0, "_remove": 0}
    mgr._check(idle=True)
    assert mgr.stats().keys == 0 and mgr.stats().grants == n + 2 + shared


@pytest.mark.parametrize("n", [2, 64])
def test_a_request_that_conflicts_or_follows_a_queued_whole_key_writer_takes_the_general_path(
    calls: dict[str, int], n: int
) -> None:
    mgr = RangeLockManager()
    held = _holders(mgr, n)
    calls["_enqueue"] = 0
    with pytest.raises(WouldBlock):
        mgr.acquire_nowait("k", [(10, 20)])  # overlaps the first holder
    assert calls["_enqueue"] == 1
    w = mgr._request("k", WHOLE, False)
    with mgr._mutex:
        mgr._admit(w, False)  # queued behind every holder
    assert calls["_enqueue"] == 2 and not w.held
    # A free range now waits for the whole-key writer (FIFO), so it queues.
    late = mgr._request("k", [(64, 128)], False)
    with mgr._mutex:
        mgr._admit(late, False)
    assert calls["_enqueue"] == 3 and not late.held
    mgr._check()
    for g in held:
        mgr.release(g)  # the last one wakes the writer: through _remove
    assert w.held and not late.held and calls["_remove"] >= 1
    mgr.release(w)
    assert late.held
    mgr.release(late)
    mgr._check(idle=True)
    assert mgr.stats().keys == 0


def test_a_random_walk_of_many_ranges_on_one_key_matches_the_fifo_model(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Seeded (ZARR_RANGELOCK_SEED=... replays). Mostly short ranges, about 6
    # then about 40 live requests, in turns, so the key's indexes grow past
    # SMALL and shrink back and the fast path sees both forms; some whole-key
    # writers and readers cut segments; waiters leave by timeout and
    # cancellation. Every request's state must be what the FIFO rule says
    # (granted iff no earlier live request conflicts).
    walk = Walk()
    rng, mgr, live = walk.rng, walk.mgr, walk.live
    fast = {"small": 0, "big": 0}  # fast-path grants, by the key's size
    real = KeyQueue.hold_if_free

    def spy(kq: KeyQueue, g: Grant, seq: int) -> bool:
        n = kq.n
        ok = real(kq, g, seq)
        if ok:
            fast["big" if n > SMALL else "small"] += 1
        return ok

    monkeypatch.setattr(KeyQueue, "hold_if_free", spy)
    for step in range(2000):
        target = 40 if step // 250 % 2 else 6  # about that many live
        roll = rng.random() - (0.2 if len(live) < target else 0.0)
        if roll < 0.4 or not live:
            kind = rng.random()
            ranges: list[tuple[int, int | None]]
            if kind < 0.04:
                ranges, shared = WHOLE, rng.random() < 0.3
            else:
                s = rng.randrange(0, 4096, 16)
                ranges = [(s, s + rng.choice([8, 16, 40]))]
                if rng.random() < 0.2:
                    ranges.append((s + 64, s + 80))
                shared = rng.random() < 0.3
            g = mgr._request("k", ranges, shared)
            with mgr._mutex:
                mgr._admit(g, False)
            live.append((g, ("k", ranges, shared, False)))
        elif not walk.end_one(roll):
            continue
        walk.check(step)
    walk.drain()
    # Both forms were taken. How often varies with the seed: a queued
    # whole-key writer stops the fast path until it is gone. Over 3,000 seeds
    # the fewest were 14 small and 109 big (medians about 120 and 280); a bar
    # of 50 failed one seed in 30.
    assert fast["small"] > 0 and fast["big"] > 0, fast
