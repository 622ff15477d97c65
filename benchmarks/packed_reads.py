"""Reads of compressed shards: ours (``shards/_reads.read_packed``) against stock zarr.

A zstd (level 1) array of 2048 x 2048-element shards (256 inner chunks of
128 x 128 f4), written once through our pipeline, is read back three ways:
the whole array in one call, one shard a call, and one chunk a call; each
through our pipeline (index, one read a run of chunks, decodes split over
the idle CPUs), through our pipeline with the decodes kept to one worker
(``CPUS`` set to 1) and through stock zarr on the same files. It prints
chunks/s (median of ``--repeats`` passes, interleaved) and the ratios, and
checks that every read equals the data written.

Run: ``python benchmarks/packed_reads.py``.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.storage import LocalStore

from encode_split import INNER, OURS, SHARD, STOCK, new_array, regions
from zarr_rangelock import RangeLockedStore
from zarr_rangelock.store import _io


def timed_pass(arr: zarr.Array[Any], data: np.ndarray, how: str, cpus: int) -> float:
    """Seconds for one pass of reading ``arr`` ``how``, checked against ``data``."""
    size = data.shape[0]
    saved, _io.CPUS = _io.CPUS, cpus
    try:
        t0 = time.perf_counter()
        if how == "whole array":
            got = [((slice(0, size), slice(0, size)), arr[...])]
        elif how == "a shard a call":
            got = [(r, arr[r]) for r in regions(size)]
        else:
            got = [
                ((slice(r, r + INNER), slice(c, c + INNER)), arr[r : r + INNER, c : c + INNER])
                for r in range(0, size, INNER)
                for c in range(0, size, INNER)
            ]
        spent = time.perf_counter() - t0
    finally:
        _io.CPUS = saved
    for region, values in got:
        if not np.array_equal(values, data[region]):
            raise AssertionError(f"{how}: {region} does not read back as written")
    return spent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4096, help="array side (elements)")
    parser.add_argument("--repeats", type=int, default=5, help="timed passes")
    args = parser.parse_args()
    size = args.size
    y, x = np.mgrid[0:size, 0:size].astype("f4")
    data = (np.round(np.sin(x / 97.0) * np.cos(y / 131.0) * 256) / 256).astype("f4")
    chunks = (size // INNER) ** 2
    print(
        f"Python {sys.version.split()[0]}, zarr {zarr.__version__}, {platform.system()}, "
        f"{_io.CPUS} CPUs for this process"
    )
    print(
        f"{size}x{size} f4, zstd level 1, shards {SHARD}x{SHARD} of {INNER}x{INNER} chunks "
        f"({len(regions(size))} shards, {chunks} chunks); median of {args.repeats} passes"
    )
    with tempfile.TemporaryDirectory(prefix="packed_reads") as tmp:
        root = Path(tmp) / "a"
        new_array(root, size, ours=True)[...] = data
        with zarr.config.set(OURS):
            ours = zarr.open_array(RangeLockedStore(LocalStore(root)), mode="r")
        with zarr.config.set(STOCK):
            stock = zarr.open_array(LocalStore(root), mode="r")
        ways: dict[str, tuple[zarr.Array[Any], int]] = {
            "ours": (ours, _io.CPUS),
            "one worker": (ours, 1),
            "stock": (stock, _io.CPUS),
        }
        print(
            f"{'':>16}" + "".join(f"{w:>12}" for w in ways) + f"{'ours/one':>11}{'ours/stock':>12}"
        )
        for how in ("whole array", "a shard a call", "a chunk a call"):
            times: dict[str, list[float]] = {w: [] for w in ways}
            for arr, cpus in ways.values():  # warm: costs measured, indexes cached
                timed_pass(arr, data, how, cpus)
            for _ in range(args.repeats):
                for w, (arr, cpus) in ways.items():
                    times[w].append(timed_pass(arr, data, how, cpus))
            rate = {w: chunks / statistics.median(t) for w, t in times.items()}
            print(
                f"{how:>16}"
                + "".join(f"{rate[w]:>12.0f}" for w in ways)
                + f"{rate['ours'] / rate['one worker']:>10.2f}x"
                + f"{rate['ours'] / rate['stock']:>11.2f}x"
            )
    print("(chunks/s; every read equal to the data written)")


if __name__ == "__main__":
    main()
