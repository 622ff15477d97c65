"""Reads of long runs of chunks in worker threads, not on zarr's loop, cold and warm.

zarr runs every sync call of every thread on its one event-loop thread. Our
shard readers (``shards/_reads``) read a run of chunks longer than
``RUN_INLINE_MAX_BYTES`` (1 MiB) in a worker thread, so the reads of several
shards (of one call, or of several threads' calls) wait on the disk at once
and the loop decodes and copies meanwhile; shorter ones stay on the loop.
This reads a dense (uncompressed) and a zstd (level 1) array of 2048 x
2048-element shards three ways: the whole array in one call, a shard a call
from one thread, and a shard a call from four threads; each through our
pipeline as it is ("workers"), with every run read on the loop
("on the loop": the behaviour before) and through stock zarr on the same
files; warm (the files in the page cache) and cold (evicted before every
pass with ``posix_fadvise(POSIX_FADV_DONTNEED)``). It prints MB/s of array
data (median of ``--repeats`` passes, interleaved) and the ratios, checks
every read against the data, and prints what the eviction does to a plain
``os.pread`` of the same files, so a machine whose eviction does nothing
shows it.

Run: ``python benchmarks/cold_reads.py``.
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.codecs import ZstdCodec
from zarr.storage import LocalStore

from encode_split import INNER, OURS, SHARD, STOCK, header, interleaved, regions, row
from zarr_rangelock import RangeLockedStore
from zarr_rangelock.shards import _reads

WAYS = ("workers", "on the loop", "stock")
HOWS = ("1 call, whole array", "1 thr, a shard a call", "4 thr, a shard a call")


def evict(root: Path) -> None:
    """Drop ``root``'s files from the page cache (written back first)."""
    for path in root.rglob("*"):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def timed_pass(
    arr: zarr.Array[Any], root: Path, data: np.ndarray, how: str, cold: bool, inline: int
) -> float:
    """Seconds for one pass of reading ``arr`` ``how`` (files evicted first if
    ``cold``; runs up to ``inline`` bytes read on the loop), checked against
    ``data``."""
    if cold:
        evict(root)
    size = data.shape[0]
    threads = 4 if how.startswith("4") else 1
    got: list[tuple[Any, np.ndarray]] = []
    saved, _reads.RUN_INLINE_MAX_BYTES = _reads.RUN_INLINE_MAX_BYTES, inline

    def read(share: list[tuple[slice, slice]]) -> None:
        got.extend((r, arr[r]) for r in share)

    try:
        t0 = time.perf_counter()
        if how.startswith("1 call"):
            got.append(((slice(0, size), slice(0, size)), arr[...]))
        else:
            shares = [regions(size)[i::threads] for i in range(threads)]
            workers = [threading.Thread(target=read, args=(s,)) for s in shares]
            for w in workers:
                w.start()
            for w in workers:
                w.join()
        spent = time.perf_counter() - t0
    finally:
        _reads.RUN_INLINE_MAX_BYTES = saved
    if len(got) != (1 if how.startswith("1 call") else len(regions(size))):
        raise AssertionError(f"{how}: a read failed")
    for region, values in got:
        if not np.array_equal(values, data[region]):
            raise AssertionError(f"{how}: {region} does not read back as written")
    return spent


def raw_rate(root: Path, cold: bool) -> float:
    """MB/s of ``os.pread`` of ``root``'s files whole, one thread."""
    if cold:
        evict(root)
    n = 0
    t0 = time.perf_counter()
    for path in root.rglob("*"):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                n += len(os.pread(fd, os.fstat(fd).st_size, 0))
            finally:
                os.close(fd)
    return n / 2**20 / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=8192, help="array side (elements)")
    parser.add_argument("--repeats", type=int, default=5, help="timed passes")
    parser.add_argument("--dir", default=None, help="where to make the arrays")
    args = parser.parse_args()
    size = args.size
    rng = np.random.default_rng(1)
    data = (np.round(rng.random((size, size), dtype="f4") * 256) / 256).astype("f4")
    mb = data.nbytes / 2**20
    print(f"Python {sys.version.split()[0]}, zarr {zarr.__version__}, {platform.system()}")
    print(
        f"{size}x{size} f4 ({mb:.0f} MB), shards {SHARD}x{SHARD} of {INNER}x{INNER} chunks "
        f"({len(regions(size))} shards); runs over {_reads.RUN_INLINE_MAX_BYTES} bytes in "
        f"workers; median of {args.repeats} passes"
    )
    ratios = (("workers", "on the loop"), ("workers", "stock"))
    with tempfile.TemporaryDirectory(prefix="cold_reads", dir=args.dir) as tmp:
        for codec in ("dense", "zstd"):
            root = Path(tmp) / codec
            with zarr.config.set(OURS):
                zarr.create_array(
                    RangeLockedStore(LocalStore(root)),
                    shape=data.shape,
                    chunks=(INNER, INNER),
                    shards=(SHARD, SHARD),
                    dtype="f4",
                    compressors=ZstdCodec(level=1) if codec == "zstd" else None,
                )[...] = data
                ours = zarr.open_array(RangeLockedStore(LocalStore(root)), mode="r")
            with zarr.config.set(STOCK):
                stock = zarr.open_array(LocalStore(root), mode="r")
            arrays = {"workers": ours, "on the loop": ours, "stock": stock}
            inline = {"workers": _reads.RUN_INLINE_MAX_BYTES, "on the loop": 1 << 62, "stock": 0}
            print(
                f"\n{codec}: os.pread of its files, 1 thr: warm {raw_rate(root, False):.0f} MB/s, "
                f"cold {raw_rate(root, True):.0f} MB/s"
            )
            print(header(28, WAYS, ratios))
            for cold in (False, True):
                for how in HOWS:
                    rate = interleaved(
                        {
                            w: functools.partial(
                                timed_pass, arrays[w], root, data, how, cold, inline[w]
                            )
                            for w in WAYS
                        },
                        args.repeats,
                        round(mb),
                    )
                    label = f"{'cold' if cold else 'warm'}, {how}"
                    print(row(label, 28, rate, ratios))
    print("(MB/s of array data; every read equal to the data written)")


if __name__ == "__main__":
    main()
