"""What two timing knobs of ``write_chunk`` buy, in paired rounds of one run.

``ShardWriter.write_chunk`` of whole 64 KiB chunks, every chunk once per
pass in random order (``benchmarks/throughput.py``'s workload; by default
the issue's size, ``--size 4096 --shard 2048``), from 1 and 4 threads
writing without a pause, and from 4 threads writing in bursts (``4 thr
bursts``: :data:`BURST` chunks, then :data:`PAUSE_S` of other work that
lets the GIL go, as a pipeline that computes its chunks does; the gate's
candidate waiter lets another thread in once a burst ends, so how soon it
notices shows here and not in a tight loop), with the defaults and with
one knob set as it was before:

* ``turn 5 ms``: the writer's gate (``shards/_gate``) handed over every
  5 ms (``SLICE_S``; now 10 ms). Each hand-over leaves the gate empty while
  the next thread wakes; one thread hands nothing over (a control).
* ``watcher 1 ms``: the watcher thread of a process alone in its root
  (``locks/_presence``) waking every millisecond while the writes look for
  a knock themselves (``WATCH_BUSY_S``; now 10 ms). Before the writes
  looked, it woke every millisecond to look itself; each wake takes the
  GIL from the writers.

The machine's speed drifts more than these knobs move it, so each round
runs every variant once, back to back, and the script prints per variant
the median and the interquartile range of its ratio to the default's rate
in the same round, and the process's CPU time (user and system, all
threads) a chunk, median over the rounds, with the median of its ratio to
the default's in the same round: a knob that wakes threads for nothing
may cost more CPU than rate. Run: ``python benchmarks/knobs.py`` (about
a minute and a half on two cores with the defaults).
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import throughput as T  # (benchmarks/ is the script's path)
from zarr_rangelock import ShardWriter
from zarr_rangelock.locks import _presence
from zarr_rangelock.shards import _gate

#: variant -> (module, name, value) set for its samples (none: the defaults)
VARIANTS: dict[str, tuple[object, str, float] | None] = {
    "default": None,
    "turn 5 ms": (_gate, "SLICE_S", 0.005),
    "watcher 1 ms": (_presence, "WATCH_BUSY_S", 0.001),
}


#: Chunks a thread of the bursts workload writes between pauses.
BURST = 50
#: Its pause (a sleep: other work that lets the GIL go).
PAUSE_S = 0.005


@contextmanager
def knob(setting: tuple[object, str, float] | None) -> Iterator[None]:
    if setting is None:
        yield
        return
    module, name, value = setting
    old = getattr(module, name)
    setattr(module, name, value)
    try:
        yield
    finally:
        setattr(module, name, old)


def cpu_seconds() -> float:
    """CPU time of this process so far, user and system, all threads."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def bursts(write: Callable[[int], None], work: T.Work) -> T.Run:
    """4 threads, each writing its share :data:`BURST` chunks at a time with
    :data:`PAUSE_S` after each burst."""

    def write_all(share: list[int]) -> None:
        for k in range(0, len(share), BURST):
            for i in share[k : k + BURST]:
                write(i)
            time.sleep(PAUSE_S)

    return T.threaded_batches(write_all, 4, work, batch=None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4096, help="array side (elements)")
    parser.add_argument("--shard", type=int, default=2048, help="shard side (elements)")
    parser.add_argument("--rounds", type=int, default=16, help="paired rounds")
    parser.add_argument("--passes", type=int, default=16, help="passes over the array a sample")
    args = parser.parse_args()

    work = T.make_work(args.size, args.shard, 0)
    with tempfile.TemporaryDirectory(prefix="knobs_bench_") as d:
        arr = T.new_array(Path(d) / "z", work, ours=True, sharded=True, zstd=False)
        writer = ShardWriter(arr)

        def write(i: int) -> None:
            writer.write_chunk(work.coords[i], work.blocks[i])

        runs = {
            "1 thr": T.threaded(write, 1, work),
            "4 thr": T.threaded(write, 4, work),
            "4 thr bursts": bursts(write, work),
        }
        for run in runs.values():
            run(1)  # warm
        rates: dict[tuple[str, str], list[float]] = {}
        cpu: dict[tuple[str, str], list[float]] = {}
        chunks = args.passes * work.n
        for r in range(args.rounds):
            print(f"  round {r + 1}/{args.rounds}", file=sys.stderr, flush=True)
            for t, run in runs.items():
                for name, setting in VARIANTS.items():
                    with knob(setting):
                        before = cpu_seconds()
                        rate = chunks / run(args.passes)
                        used = cpu_seconds() - before
                    rates.setdefault((name, t), []).append(rate)
                    cpu.setdefault((name, t), []).append(used / chunks * 1e6)
        T.check(Path(d) / "z", work)

    print(
        f"write_chunk, {args.size}x{args.size} f4, shards {args.shard}x{args.shard}, "
        f"{args.rounds} paired rounds of {args.passes} passes"
    )
    for t in runs:
        base = rates[("default", t)]
        for name in VARIANTS:
            mine = rates[(name, t)]
            ratios = sorted(m / b for m, b in zip(mine, base, strict=True))
            q = len(ratios) // 4
            pairs = zip(cpu[(name, t)], cpu[("default", t)], strict=True)
            cpu_ratio = statistics.median(m / b for m, b in pairs)
            print(
                f"{t:12s} {name:13s} {statistics.median(mine):8.0f} chunks/s  "
                f"default / this: median {1 / statistics.median(ratios):.3f}  "
                f"IQR {1 / ratios[-1 - q]:.3f}-{1 / ratios[q]:.3f}  "
                f"CPU {statistics.median(cpu[(name, t)]):5.1f} us/chunk, "
                f"this / default {cpu_ratio:.3f}"
            )


if __name__ == "__main__":
    main()
