"""Peak memory of writes into large compressed shards, ours against stock zarr, in one run.

The workload of issue 12 ("bounded memory with large shards"): a 2-D uint8
array that is one shard, on a ``LocalStore`` in a temporary directory, inner
chunks of 256 x 256 (64 KiB) compressed with zstd (level 1), shards of 16 and
64 MiB of raw data. The shard's data has 4 random bits a byte, which zstd
shrinks to about half; the chunks written over it are random bytes, which
zstd cannot compress, so they outgrow the gaps the chunks they replace
leave, and the shard is compacted (chunks of the same size would go into
those gaps, and it would seldom be). Phases, each measured on its own:

* ``first write``: ``arr[:] = data`` of the whole shard, which makes it (our
  pipeline writes it with free space reserved, see ``shards/_jobs``);
* ``overwrites``: after the shard was written whole, whole inner chunks
  ``arr[sel] = v`` at random places, one call each: ours appends each into
  the shard's free space and compacts it when the free space runs out or
  dead space grows too large (``--overwrites`` times the number of inner
  chunks: two compactions at the default), stock zarr rewrites the whole
  shard on every write (``--stock-writes`` of them);
* ``partial``: after the shard was written whole, ``--partial`` writes of a
  quarter of an inner chunk each (a partial inner-chunk update: the old chunk
  is read, merged and encoded).

Every measurement runs in a fresh process (``spawn``) that builds its store
and array, prepares the data and the shard, and then measures the phase alone:

* ``traced``: ``tracemalloc``'s peak of traced memory during the phase, less
  what was traced when the phase began (numpy and Python objects; a
  process of its own, since tracing slows everything down);
* ``RSS``: the growth of the resident set's high-water mark during the phase
  (``resource.getrusage`` ``ru_maxrss``, after the mark was reset with
  ``/proc/self/clear_refs`` when the phase began; Linux), in a process that
  does not trace.

Each is printed in MiB and as a fraction of the shard's size (its file's
size after the phase), with the number of writes, of shard rewrites (ours:
compactions, counted as the shard file changing its inode; stock: every
write), and the ratio of ours to stock. After each phase the array is read
back with stock zarr from a bare ``LocalStore`` and compared with what was
written: a mismatch aborts the run.

Run: ``python benchmarks/compaction_memory.py`` (16 and 64 MiB shards,
about two minutes on two cores), ``--sizes 16`` for a quick look,
``--dir`` for a directory on another file system.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import multiprocessing as mp
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
import tracemalloc
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.codecs import ZstdCodec
from zarr.storage import LocalStore

from zarr_rangelock import RangeLockedStore

INNER = 256  # 256 x 256 uint8 = 64 KiB
CHUNK_BYTES = INNER * INNER
MIB = 1 << 20
OURS = {"codec_pipeline.path": "zarr_rangelock.ShardWritePipeline"}
STOCK = {"codec_pipeline.path": "zarr.core.codec_pipeline.BatchedCodecPipeline"}
PHASES = ("first write", "overwrites", "partial")


@dataclass(frozen=True)
class Config:
    """One measurement: whose pipeline, how large a shard, which phase, how."""

    ours: bool
    shard_mib: int
    phase: str
    traced: bool
    overwrites: float
    stock_writes: int
    partial: int
    base: str
    seed: int

    @property
    def side(self) -> int:
        return int(np.sqrt(self.shard_mib * MIB))


@dataclass(frozen=True)
class Result:
    writes: int
    rewrites: int
    peak: int  # bytes above the phase's start
    shard_bytes: int
    seconds: float


def _reset_hwm() -> int:
    """Reset the resident set's high-water mark; return it (KiB) after the reset."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def measure(cfg: Config) -> Result:
    """In a fresh process: build, prepare, then measure one phase (see the module)."""
    root = Path(tempfile.mkdtemp(dir=cfg.base))
    try:
        return _measure(cfg, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _measure(cfg: Config, root: Path) -> Result:
    side = cfg.side
    rng = np.random.default_rng(cfg.seed)
    with zarr.config.set(OURS if cfg.ours else STOCK):
        store: Any = RangeLockedStore(LocalStore(root)) if cfg.ours else LocalStore(root)
        arr = zarr.create_array(
            store, name="a", shape=(side, side), chunks=(INNER, INNER), shards=(side, side),
            dtype="u1", fill_value=0, compressors=ZstdCodec(level=1),
        )  # fmt: skip
    shard_path = root / "a" / "c" / "0" / "0"
    data = rng.integers(0, 16, (side, side), dtype="u1")
    expect = data.copy()
    n = (side // INNER) ** 2
    writes: list[tuple[tuple[slice, slice], np.ndarray[Any, Any]]] = []
    if cfg.phase == "first write":
        writes = [((slice(None), slice(None)), data)]
    else:
        arr[:] = data  # the shard, written whole (not measured)
        if cfg.phase == "overwrites":
            count = int(cfg.overwrites * n) if cfg.ours else cfg.stock_writes
            size = INNER
        else:
            count, size = cfg.partial, INNER // 2
        for _ in range(count):
            i, j = (int(x) for x in rng.integers(0, side // INNER, 2))
            r0, c0 = i * INNER, j * INNER
            if size < INNER:
                r0 += int(rng.integers(0, INNER - size + 1))
                c0 += int(rng.integers(0, INNER - size + 1))
            sel = (slice(r0, r0 + size), slice(c0, c0 + size))
            block = rng.integers(0, 256, (size, size), dtype="u1")
            writes.append((sel, block))
            expect[sel] = block
    rewrites = 0
    ino = shard_path.stat().st_ino if shard_path.exists() else None
    if cfg.traced:
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
    else:
        base = _reset_hwm() * 1024
    t0 = time.perf_counter()
    for sel, block in writes:
        arr[sel] = block
        now = shard_path.stat().st_ino
        rewrites += now != ino
        ino = now
    seconds = time.perf_counter() - t0
    if cfg.traced:
        peak = tracemalloc.get_traced_memory()[1] - base
        tracemalloc.stop()
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    with zarr.config.set(STOCK):
        back = zarr.open_array(LocalStore(root, read_only=True), path="a", mode="r")[:]
    if not np.array_equal(back, expect):
        raise AssertionError(f"{cfg}: stock zarr reads back other values than were written")
    return Result(len(writes), rewrites, peak, shard_path.stat().st_size, seconds)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[16, 64], help="shard sizes, MiB")
    p.add_argument("--overwrites", type=float, default=1.1, help="ours: writes per inner chunk")
    p.add_argument("--stock-writes", type=int, default=3, help="stock: overwrites")
    p.add_argument("--partial", type=int, default=8, help="partial-chunk writes")
    p.add_argument("--dir", default=None, help="where the stores go (default: a temp dir)")
    p.add_argument("--seed", type=int, default=12)
    args = p.parse_args()
    print(f"Python {platform.python_version()} ({sys.platform}), zarr {zarr.__version__}")
    print(
        f"inner chunks {INNER} x {INNER} uint8 (64 KiB), zstd level 1; the shard: 4 random "
        "bits a byte, written over with random bytes (incompressible); one shard per array; "
        "a fresh process per measurement"
    )
    base = tempfile.mkdtemp(prefix="compaction-memory-", dir=args.dir)
    ctx = mp.get_context("spawn")
    rows: dict[tuple[bool, int, str], dict[bool, Result]] = {}
    try:
        for mib in args.sizes:
            for phase in PHASES:
                for ours in (True, False):
                    for traced in (True, False):
                        cfg = Config(
                            ours, mib, phase, traced, args.overwrites, args.stock_writes,
                            args.partial, base, args.seed,
                        )  # fmt: skip
                        with concurrent.futures.ProcessPoolExecutor(1, mp_context=ctx) as pool:
                            res = pool.submit(measure, cfg).result()
                        rows.setdefault((ours, mib, phase), {})[traced] = res
    finally:
        shutil.rmtree(base, ignore_errors=True)

    head = (
        f"{'shard':>6} {'phase':<12} {'pipeline':<8} {'writes':>6} {'rewr':>5} {'file MiB':>8} "
        f"{'traced MiB':>10} {'/shard':>7} {'RSS MiB':>8} {'/shard':>7} {'s':>6}"
    )
    print()
    print(head)
    print("-" * len(head))
    for mib in args.sizes:
        for phase in PHASES:
            for ours in (True, False):
                r = rows[(ours, mib, phase)]
                t, m = r[True], r[False]
                shard = mib * MIB
                print(
                    f"{mib:>4} M {phase:<12} {'ours' if ours else 'stock':<8} {t.writes:>6} "
                    f"{t.rewrites:>5} {t.shard_bytes / MIB:>8.1f} {t.peak / MIB:>10.1f} "
                    f"{t.peak / shard:>7.2f} {m.peak / MIB:>8.1f} {m.peak / shard:>7.2f} "
                    f"{m.seconds:>6.2f}"
                )
    print()
    print("ours / stock (peak during the phase; lower is better):")
    for mib in args.sizes:
        for phase in PHASES:
            o, s = rows[(True, mib, phase)], rows[(False, mib, phase)]
            print(
                f"  {mib:>3} MiB {phase:<12} traced {_ratio(o[True].peak, s[True].peak):>6}   "
                f"RSS {_ratio(o[False].peak, s[False].peak):>6}"
            )


def _ratio(a: int, b: int) -> str:
    return "n/a" if b <= 0 else f"{a / b:.2f}"


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
