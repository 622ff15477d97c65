"""A prefix lock in one process beside another process's stream of key writes.

A ``delete_dir`` (or ``clear``) takes a prefix lock, and at the OS level a
prefix lock locks every slot of the root's lock file (``locks/_oslock.py``):
it waits until no other process holds any key lock in the root, and between
processes there is no FIFO (the kernel grants whoever asks when the range
is free). This prints, from one run, on a LocalStore under a temporary
directory, the latency of ``delete_dir`` of a prefix that holds no keys at
all (a directory nobody writes) in this process:

1. alone in the root (``RangeLockedStore`` with another process present but
   idle, so the OS locks are on);
2. while another process (start method ``spawn``) writes 4 KiB ranges of
   its own keys, which share no key and no prefix with it, from 1 and 4
   threads as fast as it can;

``delete_dir`` runs through zarr's sync front end, on zarr's loop (an async
wait for another process's lock polls, 50 us to 5 ms). For contrast, a
whole-key ``delete_sync`` and ``set_sync`` of a key of this process's own,
which lock one slot each.
Each row: median, 90th percentile and maximum over the calls, and the
median's ratio to the first row's. No target: the numbers back the
README's "Limits" entry; a fix (a cross-process turn for wide requests)
would show here as ratios near 1.

Usage: ``python benchmarks/prefix_fairness.py [--calls N]``.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from multiprocessing.synchronize import Event

from zarr.core.buffer import cpu
from zarr.core.sync import sync
from zarr.storage import LocalStore

from zarr_rangelock import RangeLockedStore

SPAWN = multiprocessing.get_context("spawn")
VALUE = 1 << 20  # each writer key's size
RANGE = 4096


def _writer(root: str, threads: int, ready: Event, stop: Event) -> None:
    """Another process: ``threads`` threads writing ranges of keys of their own."""
    store = RangeLockedStore(LocalStore(root))
    data = cpu.Buffer.from_bytes(os.urandom(RANGE))
    keys = [f"writer/k{i}" for i in range(threads)]
    for key in keys:
        store.set_sync(key, cpu.Buffer.from_bytes(bytes(VALUE)))

    def loop(key: str) -> None:
        offset = 0
        while not stop.is_set():
            store.set_range_sync(key, data, offset)
            offset = (offset + RANGE) % VALUE

    workers = [threading.Thread(target=loop, args=(k,), daemon=True) for k in keys]
    for t in workers:
        t.start()
    ready.set()
    for t in workers:
        t.join()


def _idle(root: str, ready: Event, stop: Event) -> None:
    """Another process present in the root, locking nothing (the OS locks stay on)."""
    store = RangeLockedStore(LocalStore(root))
    store.set_sync("idle/k", cpu.Buffer.from_bytes(b"x"))
    ready.set()
    stop.wait()


@contextlib.contextmanager
def _other(target: Callable[..., None], *args: object) -> Iterator[None]:
    """Another process running ``target(*args, ready, stop)`` until the block ends."""
    ready, stop = SPAWN.Event(), SPAWN.Event()
    other = SPAWN.Process(target=target, args=(*args, ready, stop))
    other.start()
    try:
        if not ready.wait(60):
            raise RuntimeError(f"{target.__name__} did not start within 60 s")
        yield
    finally:
        stop.set()
        other.join(60)


def _measure(store: RangeLockedStore, call: str, calls: int) -> list[float]:
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        if call == "delete_dir":
            sync(store.delete_dir("nobody"))
        else:
            store.delete_sync("mine/k")
            store.set_sync("mine/k", cpu.Buffer.from_bytes(b"y"))
        times.append(time.perf_counter() - t0)
    return times


def _row(name: str, times: list[float], base: float | None) -> float:
    med = statistics.median(times)
    p90 = statistics.quantiles(times, n=10)[-1]
    ratio = f"{med / base:8.1f}x" if base else "     1.0x"
    print(f"  {name:<46}{med * 1e3:9.3f}{p90 * 1e3:10.3f}{max(times) * 1e3:10.3f}  {ratio}")
    return med


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=200)
    calls = parser.parse_args().calls
    print(f"{sys.argv[0]}: python {sys.version.split()[0]}, {calls} calls a row, ms")
    print(f"  {'case':<46}{'median':>9}{'p90':>10}{'max':>10}  vs alone")
    with tempfile.TemporaryDirectory(prefix="prefix-fairness-") as root:
        store = RangeLockedStore(LocalStore(root))
        store.set_sync("mine/k", cpu.Buffer.from_bytes(b"y"))
        for call in ("delete_dir", "delete"):
            label = 'delete_dir("nobody")' if call == "delete_dir" else 'delete + set of "mine/k"'
            with _other(_idle, root):
                times = _measure(store, call, calls)
            base = _row(f"{label}, other process idle", times, None)
            for threads in (1, 4):
                with _other(_writer, root, threads):
                    times = _measure(store, call, calls)
                _row(f"{label}, other writing ({threads} thr)", times, base)
        store.close()


if __name__ == "__main__":
    main()
