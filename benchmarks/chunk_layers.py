"""Where one ``ShardWriter.write_chunk`` spends its time, layer by layer, from one thread.

Issue 12's array (4096 x 4096 float32, 64 KiB inner chunks, 16 MiB shards)
on a ``RangeLockedStore(LocalStore)`` in a temporary directory, made and
filled as ``throughput.py`` makes its arrays (its ``make_work`` and
``new_array``), then written once (so every layer below finds what it needs in its
caches), then each layer called by itself in a loop over every chunk:

* ``write_chunk``: the whole call;
* ``put_in_place``: the in-place fast path under it (lock token, change
  stamp check, the backend's write);
* ``set_ranges``: the backend's write (descriptor checkout, bounds, the
  bytes, checkin);
* ``hold + let go``: the lock token alone;
* ``place``: finding a chunk's place in the writer's memory;
* ``encode``: the uncompressed chunk's bytes (a view) and the fill check;

each with the bytes written for real and with the write stubbed out (what
is left is Python), on a store with ``pwrite`` (the default) and one with
``map_writes=True``; and the bare write (``os.pwrite``, or the copy into
the mapping) of the same chunks at the same offsets. Microseconds a chunk,
medians of 7 loops; the ratios printed are of the same run.

Run: ``python benchmarks/chunk_layers.py``.
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import zarr

import throughput as T  # (benchmarks/ is the script's path)
from zarr_rangelock import ShardWriter
from zarr_rangelock.shards import _fastpaths
from zarr_rangelock.shards._known import _VALID
from zarr_rangelock.store import _backends

SIZE, SHARD = 4096, 2048
LOOPS = 7


def _per_chunk(loop: Callable[[], None], n: int) -> float:
    """Median over LOOPS runs of ``loop`` (n chunks), in us a chunk."""
    times = []
    for _ in range(LOOPS):
        t0 = time.perf_counter()
        loop()
        times.append((time.perf_counter() - t0) / n * 1e6)
    return statistics.median(times)


def measure(arr: zarr.Array[Any], work: T.Work) -> dict[str, tuple[float, float]]:
    """Each layer's us a chunk: (bytes written, write stubbed)."""
    coords, blocks = work.coords, work.blocks
    writer = ShardWriter(arr)
    for c, b in zip(coords, blocks, strict=True):
        writer.write_chunk(c, b)
    store = arr.store
    fast = writer._plain
    assert fast is not None, "the in-place fast path applies to this array"
    places = [writer._where.place(c) for c in coords]
    raws = [memoryview(b).cast("B") for b in blocks]
    known = [_VALID[(store._state.uid, p.key, fast.geometry)][:2] for p in places]
    offsets = [peek.offsets[p.inner] for p, (_, peek) in zip(places, known, strict=True)]
    backend, mgr, n = store._backend, store._mgr, len(coords)
    items = list(zip(coords, blocks, places, raws, known, offsets, strict=True))

    def whole() -> None:
        for c, b, *_ in items:
            writer.write_chunk(c, b)

    def put() -> None:
        for _, _, p, raw, *_ in items:
            _fastpaths.put_in_place(store, p.key, [(p.inner, raw)], fast, False)

    def set_ranges() -> None:
        for _, _, p, raw, (token, _), offset in items:
            backend.set_ranges(p.key, [(offset, raw)], stamp=token)

    def hold() -> None:
        for _, _, p, *_ in items:
            mgr._let_go(p.key, mgr._hold_if_free(p.key, 0, 1))

    def place() -> None:
        for c, *_ in items:
            writer._where.place(c)

    def encode() -> None:
        for _, b, *_ in items:
            _fastpaths.encode(writer._prototype, b, fast)

    layers = {
        "write_chunk": whole,
        "put_in_place": put,
        "set_ranges": set_ranges,
        "hold + let go": hold,
        "place": place,
        "encode": encode,
    }
    real_copy, real_pwrite = _backends._write_mapped, _backends._write_range
    out: dict[str, tuple[float, float]] = {}
    for name, loop in layers.items():
        written = _per_chunk(loop, n)
        _backends._write_mapped = lambda m, d, s: None
        _backends._write_range = lambda t, d, s: None
        try:
            stubbed = _per_chunk(loop, n)
        finally:
            _backends._write_mapped, _backends._write_range = real_copy, real_pwrite
        out[name] = (written, stubbed)

    # The bare write of the same chunks at the same offsets.
    entries = {}
    for p, (token, _) in zip(places, known, strict=True):
        if p.key not in entries:
            entry = entries[p.key] = backend.checkout(p.key, token)
            backend._fds.checkin(entry)
    mapped = all(e.map is not None for e in entries.values())

    def bare() -> None:
        for _, _, p, raw, _, offset in items:
            entry = entries[p.key]
            if mapped:
                entry.map[offset : offset + len(raw)] = raw
            else:
                os.pwrite(entry.fd, raw, offset)

    out["the bare write"] = (_per_chunk(bare, n), 0.0)
    store.close()
    return out


def main() -> None:
    print(
        f"Python {sys.version.split()[0]}, zarr {zarr.__version__}, numpy {np.__version__}, "
        f"{platform.system()}; {SIZE}x{SIZE} float32, {T.INNER}x{T.INNER} chunks (64 KiB), "
        f"{SHARD}x{SHARD} shards; us a chunk, medians of {LOOPS} loops over every chunk"
    )
    work = T.make_work(SIZE, SHARD, seed=0)
    with tempfile.TemporaryDirectory(prefix="chunk-layers-") as tmp:
        results = {
            how: measure(
                T.new_array(
                    Path(tmp) / how,
                    work,
                    ours=True,
                    sharded=True,
                    zstd=False,
                    map_writes=how == "map_writes",
                ),
                work,
            )
            for how in ("pwrite", "map_writes")
        }
    heads = "".join(f"{h + ', written':>22}{h + ', stubbed':>22}" for h in results)
    print(f"\n{'layer':<16}{heads}")
    for layer in results["pwrite"]:
        row = "".join(f"{r[layer][0]:>22.2f}{r[layer][1]:>22.2f}" for r in results.values())
        print(f"{layer:<16}{row}")
    print()
    for how, r in results.items():
        python, bare = r["write_chunk"][1], r["the bare write"][0]
        print(
            f"{how}: write_chunk {r['write_chunk'][0]:.2f} us = {python:.2f} us of Python "
            f"(write stubbed) + the write; Python / the bare write {python / bare:.2f}x; "
            f"write_chunk / the bare write {r['write_chunk'][0] / bare:.2f}x"
        )
    pw, mw = results["pwrite"], results["map_writes"]
    print(
        f"map_writes / pwrite, write_chunk: {pw['write_chunk'][0] / mw['write_chunk'][0]:.2f}x "
        f"as fast; the bare copy / the bare pwrite: "
        f"{mw['the bare write'][0] / pw['the bare write'][0]:.2f}x the time"
    )


if __name__ == "__main__":
    main()
