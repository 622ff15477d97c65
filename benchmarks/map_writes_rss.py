"""What ``map_writes=True`` does to a process's resident size, against ``pwrite``.

Pages written through a shared mapping of a file count in the process's
resident size (``RssFile`` in ``/proc/self/status``) while the file stays
mapped; pages written with ``pwrite`` live in the page cache only. Memory
monitors (dask's worker nanny among them) read the resident size as the
process's memory, so the store maps at most ``_fdcache.MAP_BYTES_MAX`` of
files at once (see ``store/_fdcache``'s design note).

Each configuration runs in a fresh child process: issue 12's array (float32,
64 KiB inner chunks, 16 MiB shards, on a ``RangeLockedStore(LocalStore)`` in
a temporary directory), made and filled with -1 as ``throughput.py`` makes
its arrays (shards dense), then one pass of ``ShardWriter.write_chunk`` over
every chunk in a random order; the child prints its
``VmRSS`` and ``RssFile`` after the fill, after the pass and after
``store.close()`` (which closes the cached descriptors and their mappings).
Linux only (``/proc``).

Run: ``python benchmarks/map_writes_rss.py [--size 4096] [--shard 2048]``
(the array side and the shard side, in elements: the default writes 64 MiB
of chunks into 16 shards).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import zarr

import throughput as T  # (benchmarks/ is the script's path)
from zarr_rangelock import ShardWriter
from zarr_rangelock.store import _fdcache


def _status() -> dict[str, int]:
    """``VmRSS`` and ``RssFile`` of this process, in MiB."""
    found = {}
    with open("/proc/self/status") as f:
        for line in f:
            name, _, value = line.partition(":")
            if name in ("VmRSS", "RssFile"):
                found[name] = int(value.split()[0]) // 1024
    return found


def child(size: int, shard: int, map_writes: bool) -> None:
    """One configuration, in this (child) process: prints a JSON line."""
    work = T.make_work(size, shard, seed=0)
    with tempfile.TemporaryDirectory(prefix="map-rss-") as tmp:
        arr = T.new_array(
            Path(tmp) / "a", work, ours=True, sharded=True, zstd=False, map_writes=map_writes
        )
        filled = _status()
        writer = ShardWriter(arr)
        for i in work.orders(1)[0].tolist():
            writer.write_chunk(work.coords[i], work.blocks[i])
        written = _status()
        mapped = _fdcache._mapped
        arr.store.close()
        closed = _status()
    print(json.dumps({"filled": filled, "written": written, "closed": closed, "mapped": mapped}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4096, help="array side (elements)")
    parser.add_argument("--shard", type=int, default=2048, help="shard side (elements)")
    parser.add_argument("--child", choices=["pwrite", "map"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.size, args.shard, args.child == "map")
        return
    print(
        f"Python {sys.version.split()[0]}, zarr {zarr.__version__}, {platform.system()}; "
        f"{args.size}x{args.size} float32 ({args.size**2 * 4 >> 20} MiB), shards "
        f"{args.shard}x{args.shard} ({args.shard**2 * 4 >> 20} MiB), 64 KiB chunks; "
        f"MAP_BYTES_MAX {_fdcache.MAP_BYTES_MAX >> 20} MiB"
    )
    results: dict[str, Any] = {}
    for how in ("pwrite", "map"):
        command = [sys.executable, __file__, "--size", str(args.size), "--shard", str(args.shard)]
        out = subprocess.run(
            [*command, "--child", how],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        results[how] = json.loads(out.strip().splitlines()[-1])
    for how, r in results.items():
        label = "map_writes=True" if how == "map" else "pwrite (default)"
        steps = ", ".join(
            f"{step} {r[step]['VmRSS']} MiB (RssFile {r[step]['RssFile']})"
            for step in ("filled", "written", "closed")
        )
        print(f"{label:<17} {steps}; mapped at the end of the pass {r['mapped'] >> 20} MiB")
    grew = {how: r["written"]["VmRSS"] - r["filled"]["VmRSS"] for how, r in results.items()}
    print(
        f"resident size grown by the pass: pwrite {grew['pwrite']} MiB, map_writes "
        f"{grew['map']} MiB (cap {_fdcache.MAP_BYTES_MAX >> 20} MiB); after close(): "
        f"map_writes {results['map']['closed']['VmRSS'] - results['map']['filled']['VmRSS']} "
        "MiB above the fill"
    )


if __name__ == "__main__":
    main()
