"""The FIFO model of the lock table, for seeded random walks against it.

A live request is granted iff no earlier live request conflicts with it (the
fairness rule of ``locks/_table``). ``test_lock_queue`` and
``test_lock_fast_path`` walk the table with their own request mixes and
check it against this after every step.
"""

from __future__ import annotations

import os
import random

from zarr_rangelock import RangeLockManager
from zarr_rangelock.locks._grant import Grant

type Spec = tuple[str, list[tuple[int, int | None]], bool, bool]
"""A request as the model sees it: (key or prefix, ranges, shared, prefix)."""


def conflicts(a: Spec, b: Spec) -> bool:
    """Whether requests ``a`` and ``b`` exclude each other."""
    ka, ra, sa, pa = a
    kb, rb, sb, pb = b
    if pa or pb:
        if pa and pb:
            return ka.startswith(kb) or kb.startswith(ka)
        return (kb if pa else ka).startswith(ka if pa else kb)
    if ka != kb or (sa and sb):
        return False
    inf = float("inf")
    return any(
        s1 < (inf if e2 is None else e2) and s2 < (inf if e1 is None else e1)
        for s1, e1 in ra
        for s2, e2 in rb
    )


class Walk:
    """A seeded walk (``ZARR_RANGELOCK_SEED=...`` replays it; the seed is
    printed) of requests on one manager, checked against the model."""

    def __init__(self) -> None:
        self.seed = int(os.environ.get("ZARR_RANGELOCK_SEED", random.randrange(1 << 30)))
        print(f"seed {self.seed} (ZARR_RANGELOCK_SEED={self.seed} to replay)")
        self.rng = random.Random(self.seed)
        self.mgr = RangeLockManager()
        self.live: list[tuple[Grant, Spec]] = []

    def end_one(self, roll: float) -> bool:
        """Release a held request (``roll < 0.8``, if one is held) or take a
        waiter away by timeout or cancellation; False if there was none."""
        rng, live = self.rng, self.live
        held = [x for x in live if x[0].held]
        waiting = [x for x in live if not x[0].held]
        if roll < 0.8 and held:
            x = rng.choice(held)
            self.mgr.release(x[0])
        elif waiting:
            x = rng.choice(waiting)
            assert not self.mgr._abandon(x[0], timed_out=rng.random() < 0.5)
        else:
            return False
        live.remove(x)
        return True

    def check(self, step: int) -> None:
        """``_check()``, and every live request held iff the model says so."""
        mgr, live = self.mgr, self.live
        mgr._check()
        for i, (g, spec) in enumerate(live):
            expect = not any(conflicts(o[1], spec) for o in live[:i])
            assert g.held == expect, (self.seed, step, i, g)
        assert mgr.stats().holders + mgr.stats().waiters == len(live)

    def drain(self) -> None:
        """End every live request; the table must be left empty."""
        mgr = self.mgr
        for g, _ in self.live:
            if g.held:
                mgr.release(g)
            else:
                mgr._abandon(g, timed_out=True)
        self.live.clear()
        mgr._check(idle=True)
        assert mgr.stats().keys == 0 and mgr._keys == {}
