"""Compressed region writes through the plain API: a shard's encodes split over the CPUs.

``arr[region] = v`` of a compressed sharded array encodes the region's whole
chunks before taking the shard's lock (``shards/_jobs._AppendJob.prepare``).
Where that is measured to be more than ``INLINE_MAX_S`` of work, it is split
into up to one piece per CPU, each in a worker thread
(``store/_io.map_unless_cheap``); before, one worker thread encoded all of
a shard's chunks, one after the other. This writes a zstd (level 1) array
of 2048 x 2048-element shards (256 inner chunks of 128 x 128 f4 each) three
ways: one shard a call from one thread, one shard a call from four threads,
and the whole array in one call; each through our pipeline with the split,
without it (``CPUS`` set to 1: the one-worker behaviour), through a
``ShardWriter`` (``writer[region] = v``, which encodes in its calling
thread) and through stock zarr's sharded write. It prints chunks/s (median
of ``--repeats`` passes, the four interleaved) and the ratios, and checks
that every array reads back alike.

Run: ``python benchmarks/encode_split.py``.
"""

from __future__ import annotations

import argparse
import functools
import platform
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.codecs import ZstdCodec
from zarr.storage import LocalStore

from zarr_rangelock import RangeLockedStore, ShardWriter
from zarr_rangelock.store import _io

SHARD = 2048
INNER = 128
OURS = {"codec_pipeline.path": "zarr_rangelock.ShardWritePipeline"}
STOCK = {"codec_pipeline.path": "zarr.core.codec_pipeline.BatchedCodecPipeline"}


def new_array(root: Path, size: int, ours: bool, *, zstd: bool = True) -> zarr.Array[Any]:
    """A ``size`` x ``size`` f4 array at ``root`` in our shape of shards,
    zstd level 1 (or uncompressed), through our pipeline and store or stock's."""
    store: Any = RangeLockedStore(LocalStore(root)) if ours else LocalStore(root)
    with zarr.config.set(OURS if ours else STOCK):
        return zarr.create_array(
            store,
            shape=(size, size),
            chunks=(INNER, INNER),
            shards=(SHARD, SHARD),
            dtype="f4",
            compressors=ZstdCodec(level=1) if zstd else None,
            fill_value=0,
        )


def regions(size: int) -> list[tuple[slice, slice]]:
    return [
        (slice(r, r + SHARD), slice(c, c + SHARD))
        for r in range(0, size, SHARD)
        for c in range(0, size, SHARD)
    ]


def timed_pass(arr: Any, data: np.ndarray, how: str, cpus: int) -> float:
    """Seconds for one pass of writing ``data`` into ``arr`` (an array or a
    ``ShardWriter``) ``how``."""
    parts = regions(data.shape[0])
    threads = {"1 thr": 1, "4 thr": 4}.get(how, 0)

    def write(share: list[tuple[slice, slice]]) -> None:
        for r in share:
            arr[r] = data[r]

    saved, _io.CPUS = _io.CPUS, cpus
    try:
        t0 = time.perf_counter()
        if threads == 0:
            arr[...] = data
        else:
            workers = [
                threading.Thread(target=write, args=(parts[t::threads],)) for t in range(threads)
            ]
            for w in workers:
                w.start()
            for w in workers:
                w.join()
        return time.perf_counter() - t0
    finally:
        _io.CPUS = saved


def setup(description: str) -> tuple[argparse.Namespace, np.ndarray]:
    """The arguments (``--size``, ``--repeats``) and the data (a smooth
    field quantised to 1/256, which zstd compresses about 10x, as
    ``throughput.py``'s), with the run's header printed."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--size", type=int, default=4096, help="array side (elements)")
    parser.add_argument("--repeats", type=int, default=5, help="timed passes")
    args = parser.parse_args()
    size = args.size
    y, x = np.mgrid[0:size, 0:size].astype("f4")
    data = (np.round(np.sin(x / 97.0) * np.cos(y / 131.0) * 256) / 256).astype("f4")
    print(
        f"Python {sys.version.split()[0]}, zarr {zarr.__version__}, {platform.system()}, "
        f"{_io.CPUS} CPUs for this process"
    )
    print(
        f"{size}x{size} f4, zstd level 1, shards {SHARD}x{SHARD} of {INNER}x{INNER} chunks "
        f"({len(regions(size))} shards, {(size // INNER) ** 2} chunks); "
        f"median of {args.repeats} passes"
    )
    return args, data


def interleaved(passes: dict[str, Callable[[], float]], repeats: int, n: int) -> dict[str, float]:
    """Units a second of each way (``n`` units a pass, ``passes[way]()`` one
    timed pass in seconds): one pass each untimed, then ``repeats`` rounds
    of a pass each, interleaved; the median."""
    times: dict[str, list[float]] = {w: [] for w in passes}
    for one in passes.values():  # warm: the shards exist, costs measured
        one()
    for _ in range(repeats):
        for w, one in passes.items():
            times[w].append(one())
    return {w: n / statistics.median(t) for w, t in times.items()}


def row(label: str, width: int, rate: dict[str, float], ratios: Sequence[tuple[str, str]]) -> str:
    """A line of the table: ``label``, each way's rate, then the ratios."""
    return (
        f"{label:>{width}}"
        + "".join(f"{r:>12.0f}" for r in rate.values())
        + "".join(f"{rate[a] / rate[b]:>18.2f}x" for a, b in ratios)
    )


def header(width: int, ways: Iterable[str], ratios: Sequence[tuple[str, str]]) -> str:
    return (
        " " * width
        + "".join(f"{w:>12}" for w in ways)
        + "".join(f"{a + '/' + b.split()[0]:>19}" for a, b in ratios)
    )


def main() -> None:
    args, data = setup(__doc__.splitlines()[0])
    size = args.size
    ways: dict[str, tuple[bool, int]] = {
        "split": (True, _io.CPUS),
        "one worker": (True, 1),
        "ShardWriter": (True, _io.CPUS),
        "stock": (False, _io.CPUS),
    }
    ratios = (("split", "one worker"), ("split", "ShardWriter"), ("split", "stock"))
    print(header(22, ways, ratios))
    with tempfile.TemporaryDirectory(prefix="encode_split") as tmp:
        for how in ("1 thr, a shard a call", "4 thr, a shard a call", "1 call, whole array"):
            key = how.split(",")[0] if how.endswith("a call") else "whole"
            arrays = {
                w: new_array(Path(tmp) / f"{key}-{w}", size, ours) for w, (ours, _) in ways.items()
            }
            targets: dict[str, Any] = dict(arrays, ShardWriter=ShardWriter(arrays["ShardWriter"]))
            rate = interleaved(
                {
                    w: functools.partial(timed_pass, targets[w], data, key, cpus)
                    for w, (_, cpus) in ways.items()
                },
                args.repeats,
                (size // INNER) ** 2,
            )
            for w in ways:
                if not np.array_equal(arrays[w][...], data):
                    raise AssertionError(f"{how}, {w}: the array does not read back as written")
            print(row(how, 22, rate, ratios))
    print("(chunks/s; every array read back equal to the data written)")


if __name__ == "__main__":
    main()
