"""What threads can buy one 64 KiB chunk written per call under the GIL, in one run.

``benchmarks/throughput.py`` measures ``ShardWriter.write_chunk`` from 4
threads at a fraction of raw ``os.pwrite`` (the ceiling; issue 12 asks 50%).
This asks what any implementation could reach: a model write that runs ``W``
microseconds of pure Python (a calibrated loop) and then ``os.pwrite``\\ s
one 64 KiB chunk into a preallocated file whose pages are cached (the
ceiling's own write, about 10 us), from 1, 2 and 4 threads, for several
``W``. Two forms:

* ``plain``: the Python, then the ``pwrite`` (one point a chunk where the
  thread lets the GIL go);
* ``+2 fcntl``: the Python in three parts with an ``fcntl`` (``F_GETFL``,
  which lets the GIL go like the OS lock's ``F_OFD_SETLK``) between them,
  one before and one after the ``pwrite``: the shape of a cross-process
  locked write (lock, write, unlock).

A thread that lets the GIL go and wants it back while another runs Python
sleeps until that one lets it go, and waking it costs a context switch (on
these virtual machines, more than the 64 KiB copy it would overlap); so
threads help only while the Python of a chunk is short against its
``pwrite``, and past that they write slower than one thread. For scale,
the run also measures the Python of our ``ShardWriter.write_chunk`` (its
``pwrite`` stubbed out, one thread: what it costs beside the write; with
the store's default OS locks, another process present in the root; by
default alone in the root, where a process takes no OS lock for it, see
``locks/_oslock``; and with ``cross_process=False``) and runs the model at
those ``W`` too.

Prints, per ``W`` and form, the median [min - max] over ``--rounds`` of
chunks/s as a fraction of the ceiling (the best of the ``W`` = 0 plain rates
of this run), and the process's voluntary context switches a chunk. Run:
``python benchmarks/gil_bound.py`` (about 40 s on two cores).
"""

from __future__ import annotations

import argparse
import fcntl
import os
import platform
import resource
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import zarr
from zarr.storage import LocalStore

from _present import another_process_present  # (benchmarks/ is the script's path)
from zarr_rangelock import RangeLockedStore, ShardWriter
from zarr_rangelock.shards._fastpaths import _gil_enabled
from zarr_rangelock.store import _backends

CHUNK = 64 * 1024
THREADS = (1, 2, 4)
OURS = {"codec_pipeline.path": "zarr_rangelock.ShardWritePipeline"}


def spin(n: int) -> int:
    """Pure Python, no system call, ``n`` iterations (see :func:`loops_for`)."""
    x = 1 << 20  # never a cached small int: the same cost every iteration
    for _ in range(n):
        x += 1
    return x


def spin_us(n: int) -> float:
    """The median microseconds of :func:`spin` ``(n)`` over 301 calls."""
    times = []
    for _ in range(301):
        t0 = time.perf_counter()
        spin(n)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e6


def loops_for(us: float) -> int:
    """Iterations of :func:`spin` that take about ``us`` microseconds, found
    by timing the count itself (a few rounds of scaling it)."""
    if us <= 0:
        return 0
    n = max(1, int(us * 30))
    for _ in range(6):
        n = max(1, round(n * us / max(spin_us(n), 1e-3)))
    return n


def model(fd: int, chunks: int, threads: int, loops: int, split: bool) -> tuple[float, float]:
    """Chunks/s and context switches a chunk of one pass of the model write
    over ``chunks`` chunks in a random order, shared by ``threads`` threads."""
    block = np.ones(CHUNK // 4, dtype="f4")
    order = np.random.default_rng().permutation(chunks).tolist()
    shares = [order[t::threads] for t in range(threads)]
    barrier = threading.Barrier(threads + 1)
    third = loops // 3

    def plain(share: list[int]) -> None:
        barrier.wait()
        for i in share:
            spin(loops)
            os.pwrite(fd, block, i * CHUNK)

    def locked(share: list[int]) -> None:
        barrier.wait()
        for i in share:
            spin(third)
            fcntl.fcntl(fd, fcntl.F_GETFL)
            spin(third)
            os.pwrite(fd, block, i * CHUNK)
            fcntl.fcntl(fd, fcntl.F_GETFL)
            spin(third)

    pool = [threading.Thread(target=locked if split else plain, args=(s,)) for s in shares]
    for th in pool:
        th.start()
    barrier.wait()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_nvcsw
    t0 = time.perf_counter()
    for th in pool:
        th.join()
    elapsed = time.perf_counter() - t0
    switches = resource.getrusage(resource.RUSAGE_SELF).ru_nvcsw - before
    return chunks / elapsed, switches / chunks


def ours_python_us(root: Path, cross_process: bool) -> float:
    """Microseconds a ``ShardWriter.write_chunk`` of a 64 KiB chunk into a
    dense shard takes with its ``pwrite`` stubbed out (one thread; the
    fastest of 5 passes over 256 chunks after 2 warm ones)."""
    store = RangeLockedStore(LocalStore(root), cross_process=cross_process)
    with zarr.config.set(OURS):
        arr = zarr.create_array(
            store,
            shape=(2048, 2048),
            chunks=(128, 128),
            shards=(512, 512),
            dtype="f4",
            compressors=None,
        )
    arr[:] = -1  # dense shards: every write_chunk below takes the in-place path
    writer = ShardWriter(arr)
    block = np.ones((128, 128), dtype="f4")
    coords = [(r, c) for r in range(16) for c in range(16)]
    real = _backends._write_range
    _backends._write_range = lambda target, data, start: None  # a stub
    try:
        best = float("inf")
        for k in range(7):
            t0 = time.perf_counter()
            for rc in coords:
                writer.write_chunk(rc, block)
            if k >= 2:
                best = min(best, (time.perf_counter() - t0) / len(coords))
    finally:
        _backends._write_range = real
    return best * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=4096, help="chunks a pass (64 KiB each)")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds")
    parser.add_argument(
        "--python-us",
        default="0,2,4,6,8,10,15,20",
        help="the W values, comma-separated microseconds",
    )
    parser.add_argument("--dir", type=Path, default=None, help="where to make the files")
    args = parser.parse_args()
    started = time.perf_counter()
    print(
        f"Python {sys.version.split()[0]} ({platform.python_implementation()}), "
        f"zarr {zarr.__version__}, numpy {np.__version__}, {platform.system()} "
        f"{platform.machine()}, {os.cpu_count()} CPUs; GIL "
        f"{'on' if _gil_enabled() else 'off'}"
    )
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="gil_bound_") as tmp:
        base = Path(tmp)
        (base / "ours_os").mkdir()
        with another_process_present(base / "ours_os"):
            os_locks = ours_python_us(base / "ours_os", True)
        # (with the OS locks its write is the "+2 fcntl" form; alone, plain)
        locked = {"ours, OS locks": True, "ours, default alone": False}
        locked["ours, cross_process=False"] = False
        ours = {
            "ours, OS locks": os_locks,
            "ours, default alone": ours_python_us(base / "ours_alone", True),
            "ours, cross_process=False": ours_python_us(base / "ours_one", False),
        }
        fd = os.open(base / "model.bin", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            os.posix_fallocate(fd, 0, args.chunks * CHUNK)
            minus = np.full(CHUNK // 4, -1, dtype="f4")
            for i in range(args.chunks):  # cached pages, as the ceiling writes them
                os.pwrite(fd, minus, i * CHUNK)
            # W = 0 (the ceiling's plain pwrite) is always measured: the ratios are to it.
            asked = {float(w) for w in args.python_us.split(",")}
            ws = sorted(asked | {0.0} | set(ours.values()))
            loops = {w: loops_for(w) for w in ws}
            cases = [(w, split, t) for w in ws for split in (False, True) for t in THREADS]
            rates: dict[tuple[float, bool, int], list[float]] = {c: [] for c in cases}
            switches: dict[tuple[float, bool, int], list[float]] = {c: [] for c in cases}
            for c in cases:  # warm-up
                model(fd, args.chunks, c[2], loops[c[0]], c[1])
            for k in range(args.rounds):
                print(f"  round {k + 1}/{args.rounds}", file=sys.stderr, flush=True)
                for c in cases if k % 2 == 0 else cases[::-1]:
                    r, s = model(fd, args.chunks, c[2], loops[c[0]], c[1])
                    rates[c].append(r)
                    switches[c].append(s)
        finally:
            os.close(fd)

    ceiling = max(statistics.median(rates[(0.0, False, t)]) for t in THREADS)
    print(
        f"\n{args.chunks} chunks of 64 KiB a pass, random order; {args.rounds} rounds; "
        f"ceiling (W = 0, plain, best of 1/2/4 threads): {ceiling:.0f} chunks/s"
    )
    for label, w in ours.items():
        print(f"ShardWriter.write_chunk without its pwrite ({label}): {w:.1f} us a chunk")
    print("\nfraction of the ceiling, median [min - max], and cs/chunk:")
    head = "".join(f"{f'{t} thread' + ('s' if t > 1 else ''):>27}" for t in THREADS)
    print(f"{'W (us)':>8}  {'form':<9}{head}")
    for w in ws:
        for split in (False, True):
            cells = []
            for t in THREADS:
                got = rates[(w, split, t)]
                s = statistics.median(switches[(w, split, t)])
                cells.append(
                    f"{statistics.median(got) / ceiling:5.2f} [{min(got) / ceiling:4.2f}-"
                    f"{max(got) / ceiling:4.2f}] {s:5.2f} cs"
                )
            mine = [k for k, v in ours.items() if v == w and locked[k] == split]
            tag = "  <- " + ", ".join(mine) if mine else ""
            print(
                f"{w:8.1f}  {'+2 fcntl' if split else 'plain':<9}"
                + "".join(f"{c:>27}" for c in cells)
                + tag
            )
    four = {(w, split): statistics.median(rates[(w, split, 4)]) / ceiling for w, split, _ in cases}
    half = [w for (w, split), v in four.items() if split and v >= 0.5]
    print(
        "\n+2 fcntl from 4 threads: the largest W measured with at least half the ceiling: "
        + (f"{max(half):.1f} us" if half else "none")
        + "; at the W and form of our write_chunk: "
        + ", ".join(f"{four[(w, locked[k])]:.2f}x ({k})" for k, w in ours.items())
    )
    print(f"\n({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
