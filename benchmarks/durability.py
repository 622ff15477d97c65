"""The cost of ``durability=`` per 64 KiB set_range on a LocalStore, in one run.

Measures ``RangeLockedStore(LocalStore(root), durability=...).set_range_sync``
of 64 KiB at random 64 KiB-aligned offsets into a 16 MiB value, for
``durability`` ``"none"``, ``"journal-nosync"``, ``"fsync"`` and ``"journal"``
(plus the async ``set_range`` of ``"none"`` and ``"journal"``), against raw
operations on an open file descriptor at the same offsets:

* ``pwrite``: one ``os.pwrite`` of 64 KiB;
* ``pwrite+fdatasync``: the same, then ``os.fdatasync``;
* ``2x pwrite+fdatasync``: 64 KiB written at offset 0 of a second ("journal")
  file and fdatasync-ed, then the data write and its fdatasync: the floor of
  any write-ahead scheme that makes its record durable before applying it;
* ``3x pwrite+fdatasync``: the same, then 8 bytes written at offset 0 of the
  "journal" file and fdatasync-ed: the floor of the journal's own protocol,
  which retires its record durably before returning (a third disk flush).

Prints median and spread (min-max over repeats) per op, and the ratios the
issue sets targets for (each the median, over repeats, of a batch's time over
its reference batch's time in the same round; the ratio of the two medians
in parentheses):

* ``journal-nosync`` / ``none``: target <= 2x;
* ``journal`` / ``2x pwrite+fdatasync``: target <= 1.5x;
* ``journal`` / ``3x pwrite+fdatasync`` (no target: how close to its floor);
* ``fsync`` / ``pwrite+fdatasync`` (no target: one fdatasync either way).

The configurations run in rounds, one batch of each per round (after a
warm-up batch of each), so the drifts of a shared machine hit them all alike.
Writes that fdatasync run fewer ops per batch (``--sync-ops``): each costs a
disk flush. The root must be on a real disk: on tmpfs fdatasync is free and
the fsync ratios mean nothing (``--dir``; the default is the system's
temporary directory).

Run: ``python benchmarks/durability.py [--ops N] [--sync-ops M] [--repeats R]
[--dir DIR]`` (about 12 s with the defaults).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import zarr
from zarr.core.buffer import cpu
from zarr.storage import LocalStore

from zarr_rangelock import RangeLockedStore

CHUNK = 64 * 1024
SLOTS = 256  # the value holds 256 chunks: 16 MiB
KEY = "arr/c/0"

type Batch = Callable[[list[int]], None]


@dataclass
class Case:
    """One configuration: a batch function over offsets, and its samples (s/op)."""

    name: str
    batch: Batch
    sync: bool  # fdatasyncs: runs --sync-ops per batch
    samples: list[float] = field(default_factory=list)


def run_rounds(cases: list[Case], ops: int, sync_ops: int, repeats: int, seed: int) -> None:
    """One warm-up batch of each case, then ``repeats`` rounds of one batch each.

    Every case of a round writes the same random offsets (the first ``ops`` or
    ``sync_ops`` of the round's list), in the order given: each round takes
    well under a second, less than a shared machine's slow drifts. Every batch
    is followed by an untimed ``os.sync()``: else the first fdatasync after a
    batch that does not sync flushes (and is charged for) up to 16 MiB of its
    dirty pages, and background writeback of them slows the batches after.
    """
    rng = random.Random(seed)
    n = max(ops, sync_ops)

    def offsets() -> list[int]:
        return [rng.randrange(SLOTS) * CHUNK for _ in range(n)]

    warm = offsets()
    for case in cases:
        case.batch(warm[: sync_ops if case.sync else ops])
        os.sync()
    for _ in range(repeats):
        round_offsets = offsets()
        for case in cases:
            batch = round_offsets[: sync_ops if case.sync else ops]
            t0 = time.perf_counter()
            case.batch(batch)
            case.samples.append((time.perf_counter() - t0) / len(batch))
            os.sync()  # untimed: no batch pays for flushing the pages of the one before


def fmt(samples: list[float]) -> str:
    med = statistics.median(samples)
    return f"{med * 1e6:9.1f} us  [{min(samples) * 1e6:8.1f} - {max(samples) * 1e6:8.1f}]"


def ratio(case: Case, ref: Case) -> tuple[float, float]:
    """Median of the per-round ratios, and the ratio of the medians."""
    paired = statistics.median(c / r for c, r in zip(case.samples, ref.samples, strict=True))
    return paired, statistics.median(case.samples) / statistics.median(ref.samples)


def raw_cases(root: Path) -> tuple[list[Case], list[int]]:
    """The raw references, and the file descriptors to close."""
    data_path = root / "raw-data.bin"
    data_path.write_bytes(bytes(CHUNK * SLOTS))
    journal_path = root / "raw-journal.bin"
    journal_path.write_bytes(bytes(CHUNK))
    data = os.open(data_path, os.O_WRONLY)
    journal = os.open(journal_path, os.O_WRONLY)
    os.fsync(data)
    os.fsync(journal)
    view = memoryview(os.urandom(CHUNK))
    retire = bytes(8)

    def pwrite(offsets: list[int]) -> None:
        for off in offsets:
            os.pwrite(data, view, off)

    def pwrite_sync(offsets: list[int]) -> None:
        for off in offsets:
            os.pwrite(data, view, off)
            os.fdatasync(data)

    def two_pwrite_sync(offsets: list[int]) -> None:
        for off in offsets:
            os.pwrite(journal, view, 0)
            os.fdatasync(journal)
            os.pwrite(data, view, off)
            os.fdatasync(data)

    def three_pwrite_sync(offsets: list[int]) -> None:
        for off in offsets:
            os.pwrite(journal, view, 0)
            os.fdatasync(journal)
            os.pwrite(data, view, off)
            os.fdatasync(data)
            os.pwrite(journal, retire, 0)
            os.fdatasync(journal)

    cases = [
        Case("pwrite", pwrite, sync=False),
        Case("pwrite+fdatasync", pwrite_sync, sync=True),
        Case("2x pwrite+fdatasync", two_pwrite_sync, sync=True),
        Case("3x pwrite+fdatasync", three_pwrite_sync, sync=True),
    ]
    return cases, [data, journal]


def store_cases(root: Path, loop: asyncio.AbstractEventLoop) -> list[Case]:
    buf = cpu.Buffer.from_bytes(os.urandom(CHUNK))

    def sync_batch(store: RangeLockedStore) -> Batch:
        def batch(offsets: list[int]) -> None:
            for off in offsets:
                store.set_range_sync(KEY, buf, off)

        return batch

    def async_batch(store: RangeLockedStore) -> Batch:
        async def writes(offsets: list[int]) -> None:
            for off in offsets:
                await store.set_range(KEY, buf, off)

        return lambda offsets: loop.run_until_complete(writes(offsets))

    cases: list[Case] = []
    for durability in ("none", "journal-nosync", "fsync", "journal"):
        store_root = root / durability
        store_root.mkdir()
        store = RangeLockedStore(LocalStore(store_root), durability=durability)
        store.set_sync(KEY, cpu.Buffer.from_bytes(bytes(CHUNK * SLOTS)))
        syncs = durability in ("fsync", "journal")
        cases.append(Case(durability, sync_batch(store), sync=syncs))
        if durability in ("none", "journal"):
            cases.append(Case(f"{durability} (async)", async_batch(store), sync=syncs))
    return cases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", type=int, default=2_000, help="writes per batch, no fsync")
    parser.add_argument(
        "--sync-ops", type=int, default=100, help="writes per batch of the cases that fdatasync"
    )
    parser.add_argument("--repeats", type=int, default=15, help="timed rounds")
    parser.add_argument("--dir", type=Path, default=None, help="where to make the stores")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random offsets")
    args = parser.parse_args()

    print(
        f"Python {sys.version.split()[0]} ({platform.python_implementation()}), "
        f"zarr {zarr.__version__}, {platform.system()} {platform.machine()}, "
        f"{os.cpu_count()} CPUs"
    )
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        print(
            f"set_range_sync of {CHUNK // 1024} KiB at random aligned offsets into a "
            f"{CHUNK * SLOTS // (1 << 20)} MiB value in {tmp}; {args.ops} writes "
            f"({args.sync_ops} when fdatasync-ing) x {args.repeats} rounds; "
            "per-op median [min - max]\n"
        )
        root = Path(tmp)
        loop = asyncio.new_event_loop()
        raws, fds = raw_cases(root)
        try:
            cases = raws + store_cases(root, loop)
            run_rounds(cases, args.ops, args.sync_ops, args.repeats, args.seed)
        finally:
            loop.close()
            for fd in fds:
                os.close(fd)

    by = {c.name: c for c in cases}
    refs = {
        "none": "pwrite",
        "journal-nosync": "none",
        "none (async)": "none",
        "fsync": "pwrite+fdatasync",
        "journal": "2x pwrite+fdatasync",
        "journal (async)": "journal",
    }
    header = f"{'case':<22} {'per op':>35}   {'ratio to':<22} {'ratio (of medians)':>19}"
    print(header)
    print("-" * len(header))
    for case in cases:
        line = f"{case.name:<22} {fmt(case.samples):>35}"
        if case.name in refs:
            paired, of_medians = ratio(case, by[refs[case.name]])
            line += f"   {refs[case.name]:<22} {paired:6.2f}x ({of_medians:.2f}x)"
        print(line)

    print()
    targets = [
        ("journal-nosync", "none", 2.0),
        ("journal", "2x pwrite+fdatasync", 1.5),
        ("journal", "3x pwrite+fdatasync", None),
        ("fsync", "pwrite+fdatasync", None),
    ]
    for name, ref, target in targets:
        paired, _ = ratio(by[name], by[ref])
        verdict = (
            "(no target)"
            if target is None
            else f"(target <= {target}x: {'PASS' if paired <= target else 'MISS'})"
        )
        print(f"{name + ' / ' + ref + ':':<40} {paired:5.2f}x  {verdict}")


if __name__ == "__main__":
    main()
