"""Reads of shards by their index: ours (``shards/_reads.read_packed``) against stock zarr.

A zstd (level 1) array of 2048 x 2048-element shards (256 inner chunks of
128 x 128 f4), written once through our pipeline, and an uncompressed one
written by stock zarr with one chunk column in eight all the fill value
(absent: compact shards, not dense, as stock zarr writes them) are each
read back three ways: the whole array in one call, one shard a call, and
one chunk a call; each through our pipeline (index, one read a run of
chunks, decodes split over the idle CPUs; uncompressed chunks copied from
views), through our pipeline with the decodes kept to one worker (``CPUS``
set to 1) and through stock zarr on the same files. It prints chunks/s
(median of ``--repeats`` passes, interleaved) and the ratios, and checks
that every read equals the data written.

Run: ``python benchmarks/packed_reads.py``.
"""

from __future__ import annotations

import functools
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.storage import LocalStore

from encode_split import INNER, OURS, STOCK, header, interleaved, new_array, regions, row, setup
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
    args, data = setup(__doc__.splitlines()[0])
    size = args.size
    sparse = data.copy()
    for c in range(0, size, 8 * INNER):
        sparse[:, c : c + INNER] = 0  # one chunk column in eight all fill: absent
    arrays = (
        ("zstd, written by us", True, True, data),
        ("uncompressed, written by stock zarr, a chunk in eight absent", False, False, sparse),
    )
    with tempfile.TemporaryDirectory(prefix="packed_reads") as tmp:
        for k, (title, zstd, by_us, values) in enumerate(arrays):
            root = Path(tmp) / str(k)
            new_array(root, size, ours=by_us, zstd=zstd)[...] = values
            with zarr.config.set(OURS):
                ours = zarr.open_array(RangeLockedStore(LocalStore(root)), mode="r")
            with zarr.config.set(STOCK):
                stock = zarr.open_array(LocalStore(root), mode="r")
            ways: dict[str, tuple[zarr.Array[Any], int]] = {
                "ours": (ours, _io.CPUS),
                "one worker": (ours, 1),
                "stock": (stock, _io.CPUS),
            }
            ratios = (("ours", "one worker"), ("ours", "stock"))
            print(f"\n{title}:")
            print(header(16, ways, ratios))
            for how in ("whole array", "a shard a call", "a chunk a call"):
                rate = interleaved(
                    {
                        w: functools.partial(timed_pass, arr, values, how, cpus)
                        for w, (arr, cpus) in ways.items()
                    },
                    args.repeats,
                    (size // INNER) ** 2,
                )
                print(row(how, 16, rate, ratios))
    print("(chunks/s; every read equal to the data written)")


if __name__ == "__main__":
    main()
