"""Write one 64 KiB inner chunk into a shard: stock zarr against zarr-rangelock.

For shard sizes of 1, 16, 64 and 256 MiB (inner chunks of 128 x 128 float32 =
64 KiB, LocalStore on the current disk) this prints, in one run:

* the time to write one inner chunk through stock zarr (default pipeline: it
  reads, merges and rewrites the whole shard);
* the same through ``ShardWritePipeline`` on a ``RangeLockedStore``, with
  uncompressed inner chunks (one ``set_range``) and zstd-compressed ones
  (append and re-point the index);
* stock zarr writing the same chunk into an unsharded array whose chunks are
  the inner chunks: the floor set by zarr's own per-call overhead;
* raw ``os.pwrite`` of the same 64 KiB;
* stock, ours and the floor again through zarr's async API
  (``AsyncArray.setitem`` awaited on a loop of our own): the sync API adds a
  hop to zarr's event-loop thread that costs about as much as our whole write;

each as median and interquartile range after a warm-up, with ratios computed
in the same run; then the aggregate throughput of 1, 2 and 4 threads writing
disjoint chunks of one shard.

Run ``python benchmarks/shard_write.py`` (about two minutes on two cores), or
``--quick`` to skip the 256 MiB shard, or ``--sizes 1,16``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.codecs import BytesCodec, ShardingCodec, ZstdCodec
from zarr.storage import LocalStore

from zarr_rangelock import RangeLockedStore

INNER = (128, 128)  # float32: 64 KiB
CHUNK_BYTES = INNER[0] * INNER[1] * 4
PIPELINE = {"codec_pipeline.path": "zarr_rangelock.ShardWritePipeline"}
STOCK = {"codec_pipeline.path": "zarr.core.codec_pipeline.BatchedCodecPipeline"}


def _shard_shape(mib: int) -> tuple[int, int]:
    n = round((mib * 2**20 / CHUNK_BYTES) ** 0.5)  # chunks per side
    assert n * n * CHUNK_BYTES == mib * 2**20, mib
    return n * INNER[0], n * INNER[1]


def _timeit(
    fn: Callable[[int], None],
    *,
    warmup: int = 2,
    min_reps: int = 5,
    max_reps: int = 200,
    budget_s: float = 0.5,
) -> list[float]:
    """Seconds per call: ``warmup`` calls discarded, then at least ``min_reps``
    and at most ``max_reps`` calls, stopping once ``budget_s`` is spent."""
    for i in range(warmup):
        fn(i)
    times: list[float] = []
    spent = 0.0
    i = warmup
    while len(times) < min_reps or (spent < budget_s and len(times) < max_reps):
        t0 = time.perf_counter()
        fn(i)
        dt = time.perf_counter() - t0
        times.append(dt)
        spent += dt
        i += 1
    return times


def _fmt(times: list[float]) -> str:
    q = statistics.quantiles(times, n=4) if len(times) >= 2 else [times[0]] * 3
    med = statistics.median(times)
    return f"{_us(med):>10} (IQR {_us(q[0])}-{_us(q[2])}, n={len(times)})"


def _us(s: float) -> str:
    if s >= 0.1:
        return f"{s * 1e3:.0f} ms"
    if s >= 1e-3:
        return f"{s * 1e3:.2f} ms"
    return f"{s * 1e6:.1f} us"


def _sharded(
    root: Path, shape: tuple[int, int], *, compressed: bool, ours: bool
) -> zarr.Array[Any]:
    codecs: list[Any] = [BytesCodec()]
    if compressed:
        codecs.append(ZstdCodec(level=1))
    inner = LocalStore(root)
    store: Any = RangeLockedStore(inner) if ours else inner
    with zarr.config.set(PIPELINE if ours else STOCK):
        arr = zarr.create_array(
            store,
            shape=shape,
            chunks=shape,  # one shard
            dtype="f4",
            fill_value=0,
            serializer=ShardingCodec(chunk_shape=INNER, codecs=codecs),
            compressors=None,
        )
    arr[:] = _data(shape)  # the shard exists before we time single-chunk writes
    return arr


def _data(shape: tuple[int, int]) -> np.ndarray:
    # compressible but not trivial: zstd level 1 keeps the setup fast
    return np.broadcast_to(np.arange(shape[1], dtype="f4") % 251, shape).copy()


def _chunk_writer(
    arr: zarr.Array[Any], shape: tuple[int, int], loop: asyncio.AbstractEventLoop | None = None
) -> Callable[[int], None]:
    """One inner chunk per call, through ``arr[sel] = v`` (sync API: zarr runs it
    on its own event-loop thread), or with ``loop`` through
    ``AsyncArray.setitem`` awaited on that loop (no thread hop)."""
    rows, cols = shape[0] // INNER[0], shape[1] // INNER[1]
    rng = np.random.default_rng(0)
    order = rng.permutation(rows * cols)
    value = rng.random(INNER, dtype="f4")

    def sel(i: int) -> tuple[slice, slice]:
        r, c = divmod(int(order[i % order.size]), cols)
        return slice(r * INNER[0], (r + 1) * INNER[0]), slice(c * INNER[1], (c + 1) * INNER[1])

    if loop is not None:
        aarr = arr.async_array

        def awrite(i: int) -> None:
            loop.run_until_complete(aarr.setitem(sel(i), value))

        return awrite

    def write(i: int) -> None:
        arr[sel(i)] = value

    return write


def _pwrite(root: Path, mib: int) -> tuple[Callable[[int], None], int]:
    path = root / "raw.bin"
    path.write_bytes(b"\0" * (mib * 2**20))
    fd = os.open(path, os.O_WRONLY)
    data = os.urandom(CHUNK_BYTES)
    n = mib * 2**20 // CHUNK_BYTES

    def write(i: int) -> None:
        os.pwrite(fd, data, (i * 7919 % n) * CHUNK_BYTES)

    return write, fd


def _unsharded(root: Path, shape: tuple[int, int]) -> zarr.Array[Any]:
    with zarr.config.set(STOCK):
        arr = zarr.create_array(
            LocalStore(root),
            shape=shape,
            chunks=INNER,
            dtype="f4",
            fill_value=0,
            compressors=None,
        )
    arr[:] = _data(shape)
    return arr


def _throughput(root: Path, mib: int, threads: int, per_thread: int) -> float:
    shape = _shard_shape(mib)
    arr = _sharded(root, shape, compressed=False, ours=True)
    cols = shape[1] // INNER[1]
    n_chunks = (shape[0] // INNER[0]) * cols
    value = np.ones(INNER, dtype="f4")
    barrier = threading.Barrier(threads + 1)

    def work(t: int) -> None:
        barrier.wait()
        for k in range(per_thread):
            r, c = divmod((t + k * threads) % n_chunks, cols)  # disjoint per thread
            arr[r * INNER[0] : (r + 1) * INNER[0], c * INNER[1] : (c + 1) * INNER[1]] = value

    pool = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for th in pool:
        th.start()
    barrier.wait()
    t0 = time.perf_counter()
    for th in pool:
        th.join()
    elapsed = time.perf_counter() - t0
    return threads * per_thread / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1,16,64,256", help="shard sizes in MiB")
    parser.add_argument("--quick", action="store_true", help="skip the 256 MiB shard")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    if args.quick:
        sizes = [s for s in sizes if s < 256]

    print(
        f"Python {platform.python_version()} ({sys.implementation.name}), zarr {zarr.__version__},"
        f" numpy {np.__version__}, {os.cpu_count()} CPUs, {platform.system()}"
    )
    print(f"inner chunk {INNER} float32 = {CHUNK_BYTES // 1024} KiB, LocalStore, one shard")
    print("times are median (interquartile range) per one-chunk write\n")
    base = Path(tempfile.mkdtemp(prefix="shard_write_bench_"))
    loop = asyncio.new_event_loop()
    rows: list[dict[str, Any]] = []
    try:
        for mib in sizes:
            shape = _shard_shape(mib)
            root = base / f"{mib}"
            heavy = mib >= 64
            results: dict[str, list[float]] = {}
            root.mkdir(parents=True)
            pwrite, fd = _pwrite(root, mib)
            results["raw os.pwrite"] = _timeit(pwrite, budget_s=0.2, max_reps=2000)
            os.close(fd)
            flat = _unsharded(root / "flat", shape)
            results["unsharded floor"] = _timeit(_chunk_writer(flat, shape), budget_s=0.3)
            results["unsharded floor, async"] = _timeit(
                _chunk_writer(flat, shape, loop), budget_s=0.3
            )
            stock = _sharded(root / "stock", shape, compressed=False, ours=False)
            for label, lp in (("stock zarr", None), ("stock zarr, async", loop)):
                results[label] = _timeit(
                    _chunk_writer(stock, shape, lp),
                    warmup=1,
                    min_reps=3 if heavy else 5,
                    max_reps=5 if heavy else 50,
                    budget_s=1.0,
                )
            shutil.rmtree(root / "stock")
            ours = _sharded(root / "ours", shape, compressed=False, ours=True)
            results["rangelock uncompressed"] = _timeit(_chunk_writer(ours, shape), budget_s=0.5)
            results["rangelock uncompr., async"] = _timeit(
                _chunk_writer(ours, shape, loop), budget_s=0.5
            )
            shutil.rmtree(root / "ours")
            oursz = _sharded(root / "oursz", shape, compressed=True, ours=True)
            results["rangelock zstd"] = _timeit(
                _chunk_writer(oursz, shape), warmup=3, budget_s=0.5, max_reps=300
            )
            shutil.rmtree(root)
            print(f"--- shard {mib} MiB ({shape[0] // INNER[0]}x{shape[1] // INNER[1]} chunks)")
            for name, times in results.items():
                print(f"  {name:<24} {_fmt(times)}")
            med = {k: statistics.median(v) for k, v in results.items()}
            ours_s = med["rangelock uncompressed"]
            ours_a = med["rangelock uncompr., async"]
            print(
                f"  ratios: rangelock / unsharded floor {ours_s / med['unsharded floor']:.2f}x,"
                f" stock / rangelock {med['stock zarr'] / ours_s:.0f}x;"
                f" async API: rangelock / floor {ours_a / med['unsharded floor, async']:.2f}x,"
                f" stock / rangelock {med['stock zarr, async'] / ours_a:.0f}x;\n         "
                f" rangelock / pwrite {ours_s / med['raw os.pwrite']:.0f}x,"
                f" zstd / uncompressed {med['rangelock zstd'] / ours_s:.2f}x"
            )
            rows.append({"mib": mib, **med})
        print()
        print("--- aggregate throughput, threads writing disjoint chunks of one 16 MiB shard")
        (base / "tp").mkdir()
        for threads in (1, 2, 4):
            rate = _throughput(base / "tp" / str(threads), 16, threads, per_thread=400 // threads)
            mib_s = rate * CHUNK_BYTES / 2**20
            print(f"  {threads} thread(s): {rate:8.0f} chunks/s = {mib_s:7.1f} MiB/s")
        if rows:
            print()
            print("summary (median per one-chunk write)")
            cols: tuple[str, ...] = ("stock zarr", "rangelock uncompressed", "rangelock zstd")
            cols += ("unsharded floor", "raw os.pwrite", "stock zarr, async")
            cols += ("rangelock uncompr., async",)
            heads = ("stock", "rangelock", "zstd", "floor", "pwrite", "stock/a", "ours/a")
            print(f"  {'shard':>8}" + "".join(f"{h:>11}" for h in heads))
            for r in rows:
                print(f"  {r['mib']:>4} MiB" + "".join(f"{_us(r[c]):>11}" for c in cols))
    finally:
        loop.close()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
