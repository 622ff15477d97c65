"""Cost of the range lock against plain locks, measured in one run.

Prints, with median and spread over repeats:
- uncontended acquire+release, sync, as a ratio to ``threading.Lock``
  (target: within 20x);
- uncontended acquire+release, async, as a ratio to ``asyncio.Lock``;
- acquire+release of one range while 64 and 65,536 other disjoint ranges are
  held on the same key (target: the 65,536 case within 2x of the 64 case).

Run: ``python benchmarks/lock_overhead.py [--repeat N]``. Compare ratios, not
absolute times: the machines are noisy.
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import statistics
import sys
import threading
import time
from collections.abc import Callable

from zarr_rangelock import RangeLockManager


def measure(fn: Callable[[int], None], n: int, repeat: int) -> list[float]:
    """Per-operation times (us) of ``fn(n)`` over ``repeat`` runs, after a warm-up."""
    fn(max(1, n // 10))
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn(n)
        out.append((time.perf_counter() - t0) / n * 1e6)
    return out


def fmt(xs: list[float]) -> str:
    med = statistics.median(xs)
    return f"{med:8.3f} us  (min {min(xs):.3f}, max {max(xs):.3f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--n", type=int, default=50_000, help="operations per repeat")
    args = ap.parse_args()
    rep, n = args.repeat, args.n
    print(f"Python {sys.version.split()[0]} on {platform.machine()}, {rep} repeats x {n} ops")

    tl = threading.Lock()

    def plain(k: int) -> None:
        for _ in range(k):
            with tl:
                pass

    mgr = RangeLockManager()

    def ranged(k: int) -> None:
        lock = mgr.lock
        for _ in range(k):
            with lock("key", 0, 65536):
                pass

    loop = asyncio.new_event_loop()
    al = asyncio.Lock()

    async def aplain(k: int) -> None:
        for _ in range(k):
            async with al:
                pass

    async def aranged(k: int) -> None:
        lock = mgr.lock_async
        for _ in range(k):
            async with lock("key", 0, 65536):
                pass

    t_plain = measure(plain, n, rep)
    t_ranged = measure(ranged, n, rep)
    t_aplain = measure(lambda k: loop.run_until_complete(aplain(k)), n, rep)
    t_aranged = measure(lambda k: loop.run_until_complete(aranged(k)), n, rep)
    loop.close()
    med = statistics.median
    print("\nuncontended acquire+release")
    print(f"  threading.Lock            {fmt(t_plain)}")
    print(f"  range lock, sync          {fmt(t_ranged)}")
    print(f"  asyncio.Lock              {fmt(t_aplain)}")
    print(f"  range lock, async         {fmt(t_aranged)}")
    r_sync = med(t_ranged) / med(t_plain)
    r_async = med(t_aranged) / med(t_aplain)
    print(f"  ratio sync  / threading.Lock: {r_sync:6.1f}x  (target <= 20x)")
    print(f"  ratio async / asyncio.Lock:   {r_async:6.1f}x")

    print("\nacquire+release of one range with N disjoint ranges held on the same key")
    per_n = {}
    for held in (64, 65_536):
        m = RangeLockManager()
        grants = [m.acquire_nowait("key", [(i * 128, i * 128 + 64)]) for i in range(held)]
        mid = (held // 2) * 128 + 64  # a free gap in the middle of the held ranges

        def between(k: int, m: RangeLockManager = m, mid: int = mid) -> None:
            lock = m.lock
            for _ in range(k):
                with lock("key", mid, mid + 64):
                    pass

        per_n[held] = measure(between, n, rep)
        print(f"  N = {held:6d}                {fmt(per_n[held])}")
        for g in grants:
            m.release(g)
        assert m.stats().keys == 0
    growth = med(per_n[65_536]) / med(per_n[64])
    print(f"  growth 64 -> 65,536 held: {growth:5.2f}x  (target <= 2x)")


if __name__ == "__main__":
    main()
