"""set_range of 64 KiB through RangeLockedStore vs the raw operation, in one run.

For LocalStore the raw operation is ``os.pwrite`` on an already open file
descriptor; for MemoryStore it is a ``memoryview`` slice copy into a
``bytearray``. Each is measured single-threaded and with 2 threads writing
disjoint ranges of the same key (per-op time = wall time / total ops), plus
the async ``set_range`` from one task. Prints median and spread (min-max over
repeats) per op, and the wrapper/raw ratio (target: within 3x).

Run: ``python benchmarks/set_range.py [--ops N] [--repeats R]``
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import zarr
from zarr.core.buffer import cpu
from zarr.storage import LocalStore, MemoryStore

from zarr_rangelock import RangeLockedStore

CHUNK = 64 * 1024
SLOTS = 32  # the value holds 32 chunks: 2 MiB
KEY = "arr/c/0"


def per_op_times(
    raw_batch: Callable[[int], None],
    wrapped_batch: Callable[[int], None],
    ops: int,
    repeats: int,
) -> tuple[list[float], list[float]]:
    """Seconds per op for raw and wrapped, one sample each per repeat.

    Raw and wrapped batches alternate (after one warm-up batch of each), so
    both see the same background load: on a shared 2-core machine that drifts
    over seconds, and measuring all raw repeats before all wrapped ones would
    bias the ratio.
    """
    raw_batch(ops)
    wrapped_batch(ops)
    raw: list[float] = []
    wrapped: list[float] = []
    for _ in range(repeats):
        for batch, samples in ((raw_batch, raw), (wrapped_batch, wrapped)):
            t0 = time.perf_counter()
            batch(ops)
            samples.append((time.perf_counter() - t0) / ops)
    return raw, wrapped


def threaded(write: Callable[[int, int], None], nthreads: int) -> Callable[[int], None]:
    """A batch of ``ops`` writes split over ``nthreads`` threads, each on its own slots."""

    def batch(ops: int) -> None:
        barrier = threading.Barrier(nthreads + 1)
        per = ops // nthreads

        def worker(t: int) -> None:
            barrier.wait()
            for i in range(per):
                write(t, i)

        threads = [threading.Thread(target=worker, args=(t,)) for t in range(nthreads)]
        for th in threads:
            th.start()
        barrier.wait()
        for th in threads:
            th.join()

    return batch


def slot_of(t: int, i: int, nthreads: int) -> int:
    """Slots are interleaved between threads: thread t only ever touches its own."""
    return (i * nthreads + t) % SLOTS


def fmt(samples: list[float]) -> str:
    med = statistics.median(samples)
    return f"{med * 1e6:8.2f} us  [{min(samples) * 1e6:7.2f} - {max(samples) * 1e6:7.2f}]"


def bench_local(root: Path, ops: int, repeats: int) -> list[tuple[str, list[float], list[float]]]:
    store = RangeLockedStore(LocalStore(root))
    store.set_sync(KEY, cpu.Buffer.from_bytes(bytes(CHUNK * SLOTS)))
    raw_path = root / "raw.bin"
    raw_path.write_bytes(bytes(CHUNK * SLOTS))
    fd = os.open(raw_path, os.O_WRONLY)
    payload = os.urandom(CHUNK)
    buf = cpu.Buffer.from_bytes(payload)
    view = memoryview(payload)
    rows = []
    try:
        for nthreads in (1, 2):

            def raw_write(t: int, i: int, n: int = nthreads) -> None:
                os.pwrite(fd, view, slot_of(t, i, n) * CHUNK)

            def wrapped_write(t: int, i: int, n: int = nthreads) -> None:
                store.set_range_sync(KEY, buf, slot_of(t, i, n) * CHUNK)

            rows.append(
                (
                    f"{nthreads} thread{'s' if nthreads > 1 else ''}",
                    *per_op_times(
                        threaded(raw_write, nthreads),
                        threaded(wrapped_write, nthreads),
                        ops,
                        repeats,
                    ),
                )
            )

        def raw_one(i: int) -> None:
            os.pwrite(fd, view, (i % SLOTS) * CHUNK)

        rows.append(async_row(store, buf, raw_one, ops, repeats))
    finally:
        os.close(fd)
    return rows


def bench_memory(ops: int, repeats: int) -> list[tuple[str, list[float], list[float]]]:
    store = RangeLockedStore(MemoryStore())
    store.set_sync(KEY, cpu.Buffer.from_bytes(bytes(CHUNK * SLOTS)))
    store.set_range_sync(KEY, cpu.Buffer.from_bytes(bytes(1)), 0)  # make the value private
    target = memoryview(bytearray(CHUNK * SLOTS))
    payload = os.urandom(CHUNK)
    buf = cpu.Buffer.from_bytes(payload)
    view = memoryview(payload)
    rows = []
    for nthreads in (1, 2):

        def raw_write(t: int, i: int, n: int = nthreads) -> None:
            s = slot_of(t, i, n) * CHUNK
            target[s : s + CHUNK] = view

        def wrapped_write(t: int, i: int, n: int = nthreads) -> None:
            store.set_range_sync(KEY, buf, slot_of(t, i, n) * CHUNK)

        rows.append(
            (
                f"{nthreads} thread{'s' if nthreads > 1 else ''}",
                *per_op_times(
                    threaded(raw_write, nthreads), threaded(wrapped_write, nthreads), ops, repeats
                ),
            )
        )

    def raw_one(i: int) -> None:
        s = (i % SLOTS) * CHUNK
        target[s : s + CHUNK] = view

    rows.append(async_row(store, buf, raw_one, ops, repeats))
    return rows


def async_row(
    store: RangeLockedStore,
    buf: cpu.Buffer,
    raw_one: Callable[[int], None],
    ops: int,
    repeats: int,
) -> tuple[str, list[float], list[float]]:
    """One task awaiting ``set_range`` in a loop, against the raw op in a plain loop."""

    def raw_batch(n: int) -> None:
        for i in range(n):
            raw_one(i)

    loop = asyncio.new_event_loop()

    async def wrapped(n: int) -> None:
        for i in range(n):
            await store.set_range(KEY, buf, (i % SLOTS) * CHUNK)

    try:
        raw, wrapped_samples = per_op_times(
            raw_batch, lambda n: loop.run_until_complete(wrapped(n)), ops, repeats
        )
    finally:
        loop.close()
    return "async, 1 task", raw, wrapped_samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", type=int, default=2000, help="writes per repeat")
    parser.add_argument("--repeats", type=int, default=9, help="timed repeats per case")
    args = parser.parse_args()

    print(
        f"Python {sys.version.split()[0]} ({platform.python_implementation()}), "
        f"zarr {zarr.__version__}, {platform.system()} {platform.machine()}, "
        f"{os.cpu_count()} CPUs"
    )
    print(
        f"set_range of {CHUNK // 1024} KiB into a {CHUNK * SLOTS // (1 << 20)} MiB value; "
        f"{args.ops} writes x {args.repeats} repeats; per-op median [min - max]\n"
    )
    header = f"{'store':<8} {'case':<14} {'raw':>33} {'RangeLockedStore':>33} {'ratio':>7}"
    print(header)
    print("-" * len(header))
    worst = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        results = [
            ("local", bench_local(Path(tmp), args.ops, args.repeats)),
            ("memory", bench_memory(args.ops, args.repeats)),
        ]
    for name, rows in results:
        raw_name = "os.pwrite" if name == "local" else "memoryview copy"
        for case, raw, wrapped in rows:
            ratio = statistics.median(wrapped) / statistics.median(raw)
            worst = max(worst, ratio)
            print(
                f"{name:<8} {case:<14} {fmt(raw):>33} {fmt(wrapped):>33} {ratio:6.2f}x"
                f"   (raw = {raw_name})"
            )
    print(f"\nworst ratio {worst:.2f}x (target: within 3x of raw)")


if __name__ == "__main__":
    main()
