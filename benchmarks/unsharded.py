"""Arrays that are not sharded: the price of the locks against stock zarr.

An array that is not sharded gets no in-place writes: each chunk is written
by zarr's own write under an exclusive lock on its key, and read under a
shared one (``RangeLockedStore.get``). This writes and reads a 4096 x 4096
f4 array of 128 x 128 chunks (1,024 chunk files), uncompressed and zstd
(level 1), five ways: the whole array in one call, and one chunk a call;
written, then read; and one chunk a call written through the async API
(``AsyncArray.setitem``) with 16 in flight, on an event loop of the
program's (where zarr's own write of a chunk runs under our lock on that
loop, its codecs' blocking work sent to the library's workers:
``store._io.codecs_apart``); through our pipeline on a ``RangeLockedStore`` (the
default: locks shared with other processes too), on one with
``cross_process=False`` (no OS locks) and through stock zarr on a bare
``LocalStore``. It prints ms a pass (median of ``--repeats`` passes,
interleaved) and our speed against stock's, and checks every read against
the data.

Run: ``python benchmarks/unsharded.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.codecs import ZstdCodec
from zarr.storage import LocalStore

from encode_split import OURS, STOCK
from zarr_rangelock import RangeLockedStore

CHUNK = 128
WAYS = ("ours", "ours, one process", "stock")


IN_FLIGHT = 16


async def _async_writes(
    arr: zarr.Array[Any], data: np.ndarray, chunks: list[tuple[slice, slice]]
) -> None:
    """Every chunk through ``AsyncArray.setitem``, :data:`IN_FLIGHT` at a time."""
    aarr = arr.async_array
    room = asyncio.Semaphore(IN_FLIGHT)

    async def one(sel: tuple[slice, slice]) -> None:
        async with room:
            await aarr.setitem(sel, data[sel])

    await asyncio.gather(*(one(sel) for sel in chunks))


def one_pass(arr: zarr.Array[Any], data: np.ndarray, how: str) -> Callable[[], float]:
    """A pass of ``how`` over ``arr``: its seconds (reads checked against ``data``)."""
    size = data.shape[0]
    chunks = [
        (slice(r, r + CHUNK), slice(c, c + CHUNK))
        for r in range(0, size, CHUNK)
        for c in range(0, size, CHUNK)
    ]

    def run() -> float:
        t0 = time.perf_counter()
        if how == "write, whole array":
            arr[...] = data
        elif how == "write, a chunk a call":
            for sel in chunks:
                arr[sel] = data[sel]
        elif how == f"write, async, {IN_FLIGHT} in flight":
            asyncio.run(_async_writes(arr, data, chunks))
        elif how == "read, whole array":
            got = arr[...]
        else:
            got = np.concatenate([arr[sel].ravel() for sel in chunks])
        spent = time.perf_counter() - t0
        if how.startswith("read"):
            want = (
                data if how.endswith("array") else np.concatenate([data[s].ravel() for s in chunks])
            )
            if not np.array_equal(got, want):
                raise AssertionError(f"{how}: the read differs from the data")
        return spent

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4096, help="array side (elements)")
    parser.add_argument("--repeats", type=int, default=5, help="timed passes")
    args = parser.parse_args()
    data = np.random.default_rng(1).random((args.size, args.size), dtype="f4")
    data = np.round(data * 256) / 256  # (zstd compresses it somewhat)
    hows = (
        "write, whole array",
        "write, a chunk a call",
        f"write, async, {IN_FLIGHT} in flight",
        "read, whole array",
        "read, a chunk a call",
    )
    print(f"{args.size}x{args.size} f4 in {CHUNK}x{CHUNK} chunks; median of {args.repeats} passes")
    print(
        f"{'':>32}"
        + "".join(f"{w:>20}" for w in WAYS)
        + f"{'ours/stock':>14}{'one proc/stock':>16}"
    )
    with tempfile.TemporaryDirectory(prefix="unsharded") as tmp:
        for codec in ("uncompressed", "zstd"):
            arrays: dict[str, zarr.Array[Any]] = {}
            for w in WAYS:
                root = LocalStore(Path(tmp) / f"{codec}-{w}")
                store: Any = root
                if w != "stock":
                    store = RangeLockedStore(root, cross_process=w == "ours")
                with zarr.config.set(STOCK if w == "stock" else OURS):
                    arrays[w] = zarr.create_array(
                        store,
                        shape=data.shape,
                        chunks=(CHUNK, CHUNK),
                        dtype="f4",
                        compressors=ZstdCodec(level=1) if codec == "zstd" else None,
                    )
                arrays[w][...] = data  # (reads find every chunk; writes overwrite)
            for how in hows:
                passes = {w: one_pass(arrays[w], data, how) for w in WAYS}
                times: dict[str, list[float]] = {w: [] for w in WAYS}
                for _ in range(args.repeats):
                    for w, run in passes.items():
                        times[w].append(run())
                ms = {w: 1e3 * statistics.median(t) for w, t in times.items()}
                print(
                    f"{codec + ', ' + how:>34}"
                    + "".join(f"{ms[w]:>17.1f} ms" for w in WAYS)
                    + f"{ms['stock'] / ms['ours']:>13.2f}x"
                    + f"{ms['stock'] / ms['ours, one process']:>15.2f}x"
                )
    print("(ms a pass; the ratios are speeds: above 1, ours is faster; every read checked)")


if __name__ == "__main__":
    main()
