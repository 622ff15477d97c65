"""What placing a compressed write's chunks costs, gaps kept against gaps worked out anew.

A compressed write of a shard (the pipeline's ``_ShardJob._append``,
``ShardWriter``'s compressed fast path) places its chunks by the stored
index's dead space (``shards/_placement.repointed``). A process that writes
a shard again finds the gaps of the index it wrote last kept
(``_placement._GAPS``); else they are worked out from every chunk
(``gaps_of``). This runs the same chain of one-chunk writes (random chunks
of the shard, random sizes about those of the chunks there, a compaction
where the pipeline would compact) through ``repointed`` both ways, on shards
of 256 and 1,024 chunks, checks that both lay every index out alike, and
prints microseconds a write (median of ``--repeats``) and the ratio.

Run: ``python benchmarks/placement.py``.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from unittest import mock

import numpy as np

from zarr_rangelock.shards import _layout as L
from zarr_rangelock.shards import _placement as P


def chain(side: int, writes: int, seed: int, fresh: bool) -> tuple[float, list[bytes]]:
    """``writes`` one-chunk writes into a ``side`` x ``side`` shard: us a
    write, and every index made (bytes)."""
    n = side * side
    g = L.ShardGeometry((side, side), "end", 16 * n + 4, None)
    rng = np.random.default_rng(seed)
    sizes = rng.integers(20_000, 30_000, n).tolist()
    order = [(r, c) for r in range(side) for c in range(side)]
    start = P.compacted(g, None, {rc: b"a" * k for rc, k in zip(order, sizes, strict=True)}, order)
    assert start is not None
    size, _, index = start
    chunks = rng.integers(0, n, writes).tolist()
    data = [b"b" * k for k in rng.integers(20_000, 30_000, writes).tolist()]
    made: list[bytes] = []
    patches = (
        (
            mock.patch.object(P, "_take", lambda g, i: P.gaps_of(i, g)),
            mock.patch.object(P, "_keep", lambda *args: None),
        )
        if fresh
        else ()
    )
    for p in patches:
        p.start()
    try:
        spent = 0.0
        for j, d in zip(chunks, data, strict=True):
            t0 = time.perf_counter()
            got = P.repointed(g, size, index, [(j, d)])
            spent += time.perf_counter() - t0
            if got is None:  # the pipeline compacts: packed anew, free space after
                done = P.compacted(g, index, {order[j]: d}, order)
                assert done is not None
                size, _, index = done
            else:
                index = got[1]
            made.append(index.tobytes())
    finally:
        for p in patches:
            p.stop()
    return spent / writes * 1e6, made


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--writes", type=int, default=3000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"Python {sys.version.split()[0]}, numpy {np.__version__}, {platform.system()}")
    print(f"{args.writes} one-chunk writes a run, median of {args.repeats} runs, us a write")
    print(f"{'chunks a shard':>15} {'gaps anew':>10} {'gaps kept':>10} {'anew / kept':>12}")
    for side in (16, 32):
        anew, kept = [], []
        for r in range(args.repeats):
            t_anew, made_anew = chain(side, args.writes, r, fresh=True)
            t_kept, made_kept = chain(side, args.writes, r, fresh=False)
            if made_anew != made_kept:
                raise AssertionError("kept gaps laid an index out otherwise than fresh ones")
            anew.append(t_anew)
            kept.append(t_kept)
        a, k = statistics.median(anew), statistics.median(kept)
        print(f"{side * side:>15} {a:>10.1f} {k:>10.1f} {a / k:>11.2f}x")
    print("(every index laid out alike both ways)")


if __name__ == "__main__":
    main()
