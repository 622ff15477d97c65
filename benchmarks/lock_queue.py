"""Cost per grant of a long queue of conflicting requests on one key, in one run.

A holder takes the whole key; then ``n`` requests queue behind it on the same
key (n = 100, 1,000, 10,000), from ``n`` asyncio tasks on one loop or from
``n`` threads; then the holder lets go and every request is granted in turn
and released at once. Time from the first request to the last release,
divided by ``n``, is the cost per grant (queueing, granting, waking,
releasing). A third driver, ``table``, isolates the lock table's own cost:
one thread admits the ``n`` requests through the table's admission code
(what ``acquire`` does before it would park) and then releases them in
order, with nobody to wake. Two request patterns:

- ``whole``: every request is an exclusive whole-key lock (a shard being
  compacted by every writer: the plain API with ``ShardWritePipeline`` on
  compressed chunks);
- ``mixed``: every fourth request is an exclusive whole-key lock, the others
  exclusive locks of distinct 64-byte ranges (chunk writes between
  compactions).

The raw operation, measured in the same run with the same tasks or threads,
is the same queue on one ``asyncio.Lock`` (tasks) or ``threading.Lock``
(threads); for ``table``, ``n`` uncontended requests on a free key (the
table's cost per grant with no queue). Prints median and spread (min-max
over repeats) per grant, the ratio to the raw operation at the same ``n``,
and the growth of the per-grant cost from the smallest ``n`` to the
largest: a table whose queue costs ``O(1)`` (or ``O(log n)``) per waiter
shows about 1x, one whose waiters list every earlier waiter ``O(n)``, so
``n^2`` in all, about ``n_max / n_min``.

Run: ``python benchmarks/lock_queue.py [--sizes 100,1000,10000] [--repeat R]
[--drivers tasks,threads,table]``. Compare ratios, not absolute times: the
machines are noisy.
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

KEY = "arr/c/0"
PATTERNS = ("whole", "mixed")


def request(pattern: str, i: int) -> tuple[int, int | None]:
    """The ``(start, end)`` of the ``i``-th queued request of ``pattern``."""
    if pattern == "whole" or i % 4 == 0:
        return 0, None
    return 64 * i, 64 * i + 64


def tasks_range_lock(n: int, pattern: str) -> float:
    """Seconds for ``n`` asyncio tasks queued on one key, from first request to last release."""
    mgr = RangeLockManager()

    async def one(start: int, end: int | None) -> None:
        async with mgr.lock_async(KEY, start, end):
            pass

    async def main() -> float:
        holder = mgr.acquire_nowait(KEY, [(0, None)])
        t0 = time.perf_counter()
        tasks = [asyncio.create_task(one(*request(pattern, i))) for i in range(n)]
        while mgr.stats().waiters < n:  # every task has queued
            await asyncio.sleep(0)
        mgr.release(holder)
        await asyncio.gather(*tasks)
        dt = time.perf_counter() - t0
        assert mgr.stats().keys == 0 and mgr.stats().grants == n + 1
        return dt

    return asyncio.run(main())


def tasks_raw(n: int, pattern: str) -> float:
    """The same queue of ``n`` tasks on one ``asyncio.Lock``."""
    lock = asyncio.Lock()

    async def one() -> None:
        async with lock:
            pass

    async def main() -> float:
        await lock.acquire()
        t0 = time.perf_counter()
        tasks = [asyncio.create_task(one()) for _ in range(n)]
        await asyncio.sleep(0)  # one turn: every task has queued
        lock.release()
        await asyncio.gather(*tasks)
        return time.perf_counter() - t0

    return asyncio.run(main())


def threads_range_lock(n: int, pattern: str) -> float:
    """Seconds for ``n`` threads queued on one key, from first request to last release."""
    mgr = RangeLockManager()
    holder = mgr.acquire_nowait(KEY, [(0, None)])

    def make(i: int) -> Callable[[], None]:
        start, end = request(pattern, i)

        def run() -> None:
            with mgr.lock(KEY, start, end):
                pass

        return run

    threads = [threading.Thread(target=make(i)) for i in range(n)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    while mgr.stats().waiters < n:  # not ordering anything: waiting for the queue to fill
        time.sleep(0.0005)
    mgr.release(holder)
    for t in threads:
        t.join()
    dt = time.perf_counter() - t0
    assert mgr.stats().keys == 0 and mgr.stats().grants == n + 1
    return dt


def threads_raw(n: int, pattern: str) -> float:
    """The same queue of ``n`` threads on one ``threading.Lock``."""
    lock = threading.Lock()
    lock.acquire()
    started = threading.Semaphore(0)

    def run() -> None:
        started.release()
        with lock:
            pass

    threads = [threading.Thread(target=run) for _ in range(n)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for _ in range(n):
        started.acquire()  # every thread is about to wait on the lock
    lock.release()
    for t in threads:
        t.join()
    return time.perf_counter() - t0


def table_range_lock(n: int, pattern: str) -> float:
    """Seconds to admit ``n`` requests behind a whole-key holder and release them in order."""
    mgr = RangeLockManager()
    holder = mgr.acquire_nowait(KEY, [(0, None)])
    t0 = time.perf_counter()
    grants = []
    for i in range(n):
        g = mgr._request(KEY, [request(pattern, i)], False)
        with mgr._mutex:
            mgr._admit(g, False)  # queued: acquire() would park here
        grants.append(g)
    mgr.release(holder)
    for g in grants:
        assert g.held  # FIFO: every earlier conflicting request is gone
        mgr.release(g)
    dt = time.perf_counter() - t0
    assert mgr.stats().keys == 0 and mgr.stats().grants == n + 1
    return dt


def table_raw(n: int, pattern: str) -> float:
    """``n`` requests admitted and released one at a time on a free key."""
    mgr = RangeLockManager()
    t0 = time.perf_counter()
    for i in range(n):
        g = mgr._request(KEY, [request(pattern, i)], False)
        with mgr._mutex:
            mgr._admit(g, False)
        mgr.release(g)
    return time.perf_counter() - t0


DRIVERS = {
    "tasks": (tasks_range_lock, tasks_raw, "asyncio.Lock"),
    "threads": (threads_range_lock, threads_raw, "threading.Lock"),
    "table": (table_range_lock, table_raw, "uncontended"),
}


def per_grant_us(fn: Callable[[int, str], float], n: int, pattern: str, repeat: int) -> list[float]:
    """Microseconds per grant of ``fn(n, pattern)`` over ``repeat`` runs, after a warm-up."""
    fn(min(n, 100), pattern)
    return [fn(n, pattern) / n * 1e6 for _ in range(repeat)]


def fmt(xs: list[float]) -> str:
    return f"{statistics.median(xs):9.2f} us  (min {min(xs):.2f}, max {max(xs):.2f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="100,1000,10000", help="queue lengths, comma-separated")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--drivers", default="tasks,threads,table", help="comma-separated")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    drivers = args.drivers.split(",")
    threading.stack_size(256 * 1024)  # 10,000 threads, each parked on a lock
    print(f"Python {sys.version.split()[0]} on {platform.machine()}, {args.repeat} repeats")
    med = statistics.median
    for driver in drivers:
        ours, raw, raw_name = DRIVERS[driver]
        raw_us = {n: per_grant_us(raw, n, "whole", args.repeat) for n in sizes}
        print(f"\n{driver}: n requests queued on one key behind a whole-key holder, per grant")
        for n in sizes:
            print(f"  raw: {raw_name:<15} n = {n:6d} {fmt(raw_us[n])}")
        for pattern in PATTERNS:
            us = {}
            for n in sizes:
                us[n] = per_grant_us(ours, n, pattern, args.repeat)
                ratio = med(us[n]) / med(raw_us[n])
                print(f"  {pattern:<6} range lock n = {n:6d} {fmt(us[n])}  {ratio:6.1f}x raw")
            lo, hi = sizes[0], sizes[-1]
            growth = med(us[hi]) / med(us[lo])
            raw_growth = med(raw_us[hi]) / med(raw_us[lo])
            print(
                f"  {pattern:<6} growth of the cost per grant, n = {lo} -> {hi}: {growth:6.2f}x"
                f"  ({raw_name}: {raw_growth:.2f}x)"
            )


if __name__ == "__main__":
    main()
