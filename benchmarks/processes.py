"""Cross-process locking: its cost per 64 KiB operation, and writers in several processes.

Prints, from one run, on a LocalStore under a temporary directory:

1. The cost of the cross-process (OFD byte-range) lock per 64 KiB
   ``set_range_sync`` at random 64 KiB-aligned offsets of one large value
   (64 MiB by default), and per 64 KiB ``get_sync`` (reads take shared locks):
   ``RangeLockedStore(LocalStore(root))`` (the default, cross-process locks,
   with another process present in the root: a process alone takes no OS
   lock for a ``set_range``, see ``benchmarks/set_range.py``),
   ``RangeLockedStore(LocalStore(root), cross_process=False)`` (in-process
   locks only) and the raw ``os.pwrite``/``os.pread`` of the same bytes on an
   open descriptor; for reads also the unwrapped ``LocalStore.get_sync``
   (which opens the file on every call: the floor for a wrapped read).
   Batches of the cases alternate, in an order rotated every round, over the
   same offsets; each row prints the per-op median [min - max] over rounds,
   and the ratios are medians of per-round paired ratios, which cancel the
   machine's slow drifts (the ratio of the medians is printed in
   parentheses). Target: default / in-process-only <= 1.5x.

   The two modes get separate roots: cross-process locking, once on for a
   root, is on for every wrapper of that root in the process.

2. The aggregate inner-chunk write rate of 1, 2 and 4 processes (start method
   ``spawn``) writing disjoint, interleaved 128 x 128 float32 (64 KiB) inner
   chunks of the same shards: a 2048 x 2048 uncompressed array with
   1024 x 1024 shards (4 shards of 64 chunks), written dense once before
   timing, through plain ``arr[sel] = value`` with ``ShardWritePipeline``
   selected in every worker. Each measurement writes a fixed total number of
   chunks split evenly between the writers; the time runs from the release
   of a shared ``multiprocessing.Barrier`` to the last writer's result. The
   same with in-process locks only (each process then locks only against
   itself: safe here only because the chunks are disjoint and the shards
   dense), and one process with 2 threads for comparison. Target: 2 / 1
   process >= 1.5x on 2 cores. For scale, the same processes also run a
   pure-Python loop (no store, no I/O, no locks) in 1, 2 and 4 processes:
   its 2 / 1 ratio is what the machine allows right now (other jobs on a
   shared machine take cores away). Each row also prints the workers' CPU
   time over wall time per process: near 100% means the writers were
   CPU-bound, well below means they waited (for locks, the disk or a core).

The worker processes are started once and reused for every measurement;
configurations alternate in a rotated order every round, and the ratios are
medians of per-round ratios.

Until ``RangeLockedStore`` takes the ``cross_process`` keyword, the script
builds those stores without it and says so: both rows then measure the same
thing.

Run: ``python benchmarks/processes.py`` (about a minute and a half on two
cores), or ``--quick`` (under 20 s); ``--ops``, ``--repeats``, ``--chunks``,
``--rounds`` and ``--dir`` override the defaults, ``--only ops|procs`` runs one
part.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import queue
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from multiprocessing.context import SpawnProcess
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.abc.store import RangeByteRequest
from zarr.codecs import BytesCodec, ShardingCodec
from zarr.core.buffer import cpu
from zarr.storage import LocalStore

from _present import another_process_present  # (benchmarks/ is the script's path)
from zarr_rangelock import RangeLockedStore

CHUNK = 64 * 1024
KEY = "arr/c/0"
PIPELINE = {"codec_pipeline.path": "zarr_rangelock.ShardWritePipeline"}
SHAPE = (2048, 2048)
SHARD = (1024, 1024)
INNER = (128, 128)  # float32: 64 KiB
GRID = (SHAPE[0] // INNER[0], SHAPE[1] // INNER[1])
N_CHUNKS = GRID[0] * GRID[1]
MAX_PROCS = 4
TIMEOUT_S = 120.0  # only to turn a hang (a dead worker) into an error

XPROC = "default (cross-process)"
LOCAL = "cross_process=False"
UNWRAPPED = "LocalStore, no wrapper"
CPU = "no store: Python loop"  # the machine's own scaling, measured alongside
SPIN = 3000  # iterations of the reference loop per unit: a few hundred us, like a chunk write


# ------------------------------------------------------------------ stores


def open_store(root: Path, *, cross_process: bool) -> tuple[RangeLockedStore, bool]:
    """A RangeLockedStore on ``LocalStore(root)``, and whether the requested mode was honoured.

    ``cross_process=True`` is the default constructor. For ``False`` the
    keyword is tried; a RangeLockedStore that does not know it yet raises
    TypeError, and the default store is returned with ``False``.
    """
    inner = LocalStore(root)
    if cross_process:
        return RangeLockedStore(inner), True
    # Typed loosely so that mypy accepts the call before and after the keyword exists.
    factory: Callable[..., RangeLockedStore] = RangeLockedStore
    try:
        return factory(inner, cross_process=False), True
    except TypeError as exc:
        if "cross_process" not in str(exc):
            raise
        return RangeLockedStore(inner), False


# ------------------------------------------------------- 1. per-op costs

type Batch = Callable[[list[int]], None]


def interleaved(
    batches: dict[str, Batch], offsets: Callable[[], list[int]], repeats: int
) -> dict[str, list[float]]:
    """Seconds per op of each batch, one sample per round.

    One warm-up round is discarded. Every round draws fresh offsets, runs
    every batch on them, and rotates the order (A B C, B C A, C A B, ...) so
    that no case always runs first, right after another, or last.
    """
    names = list(batches)
    warm = offsets()
    for name in names:
        batches[name](warm)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        offs = offsets()
        k = r % len(names)
        for name in names[k:] + names[:k]:
            t0 = time.perf_counter()
            batches[name](offs)
            samples[name].append((time.perf_counter() - t0) / len(offs))
    return samples


def op_costs(
    base: Path, key_mib: int, ops: int, repeats: int, seed: int
) -> tuple[dict[str, dict[str, list[float]]], bool]:
    """Per-op samples for writes and reads, keyed by op then case; and whether
    ``cross_process=False`` was honoured."""
    # Separate roots: whatever state a root shares between its wrappers, the
    # two modes must not share it. Another process is present in the
    # cross-process root throughout: alone, a process takes no OS lock for a
    # set_range (locks/_oslock, "Alone"; benchmarks/set_range.py measures both).
    (base / "xproc").mkdir()
    with another_process_present(base / "xproc"):
        return _op_costs(base, key_mib, ops, repeats, seed)


def _op_costs(
    base: Path, key_mib: int, ops: int, repeats: int, seed: int
) -> tuple[dict[str, dict[str, list[float]]], bool]:
    size = key_mib << 20
    slots = size // CHUNK
    zeros = cpu.Buffer.from_bytes(bytes(size))
    xproc, _ = open_store(base / "xproc", cross_process=True)
    local, honoured = open_store(base / "local", cross_process=False)
    for store in (xproc, local):
        store.set_sync(KEY, zeros)
    raw_path = base / "raw.bin"
    raw_path.write_bytes(bytes(size))
    fd = os.open(raw_path, os.O_RDWR)
    payload = os.urandom(CHUNK)
    buf = cpu.Buffer.from_bytes(payload)
    view = memoryview(payload)
    rng = random.Random(seed)

    def offsets() -> list[int]:
        return [rng.randrange(slots) * CHUNK for _ in range(ops)]

    def writer(store: RangeLockedStore) -> Batch:
        def batch(offs: list[int]) -> None:
            set_range = store.set_range_sync
            for off in offs:
                set_range(KEY, buf, off)

        return batch

    def raw_write(offs: list[int]) -> None:
        for off in offs:
            os.pwrite(fd, view, off)

    # one request object per slot, built once: not part of the per-op work compared
    requests = [RangeByteRequest(off, off + CHUNK) for off in range(0, slots * CHUNK, CHUNK)]

    def reader(store: RangeLockedStore | LocalStore) -> Batch:
        def batch(offs: list[int]) -> None:
            get = store.get_sync
            for off in offs:
                get(KEY, byte_range=requests[off // CHUNK])

        return batch

    def raw_read(offs: list[int]) -> None:
        for off in offs:
            os.pread(fd, CHUNK, off)

    try:
        write = interleaved(
            {XPROC: writer(xproc), LOCAL: writer(local), "os.pwrite": raw_write}, offsets, repeats
        )
        read = interleaved(
            {
                XPROC: reader(xproc),
                LOCAL: reader(local),
                UNWRAPPED: reader(LocalStore(base / "xproc")),
                "os.pread": raw_read,
            },
            offsets,
            repeats,
        )
    finally:
        os.close(fd)
        xproc.close()
        local.close()
    return {"set_range_sync": write, "get_sync": read}, honoured


def paired(num: list[float], den: list[float]) -> str:
    """Median of per-round ratios, then the ratio of the medians in parentheses."""
    ratio = statistics.median(n / d for n, d in zip(num, den, strict=True))
    return f"{ratio:5.2f}x ({statistics.median(num) / statistics.median(den):.2f}x)"


def fmt_us(samples: list[float]) -> str:
    med = statistics.median(samples)
    return f"{med * 1e6:8.2f} us  [{min(samples) * 1e6:7.2f} - {max(samples) * 1e6:7.2f}]"


def report_ops(results: dict[str, dict[str, list[float]]]) -> None:
    header = f"  {'op':<15} {'case':<24} {'per op: median [min - max]':>33} {'vs raw':>16}"
    print(header)
    print("  " + "-" * (len(header) - 2))
    for op, cases in results.items():
        raw_name = next(name for name in cases if name.startswith("os."))
        raw = cases[raw_name]
        for name, samples in cases.items():
            vs = "" if name == raw_name else paired(samples, raw)
            print(f"  {op:<15} {name:<24} {fmt_us(samples):>33} {vs:>16}")
        if UNWRAPPED in cases:
            vs_plain = paired(cases[XPROC], cases[UNWRAPPED])
            print(f"  {op:<15} {'default / unwrapped':<24} {vs_plain:>33}")
        print(
            f"  {op:<15} {'default / in-process':<24} {paired(cases[XPROC], cases[LOCAL]):>33}"
            "   (target <= 1.5x)"
        )


# ------------------------------------------- 2. writers in several processes


def chunk_sel(j: int) -> tuple[slice, slice]:
    r, c = divmod(j, GRID[1])
    return slice(r * INNER[0], (r + 1) * INNER[0]), slice(c * INNER[1], (c + 1) * INNER[1])


def write_chunks(arr: zarr.Array[Any], writer: int, writers: int, count: int) -> None:
    """``count`` chunks of writer ``writer`` of ``writers``: chunk indices ``writer`` mod
    ``writers``, in order, so neighbouring chunks of one shard belong to different writers."""
    value = np.full(INNER, writer + 1, dtype="f4")
    for i in range(count):
        arr[chunk_sel((writer + i * writers) % N_CHUNKS)] = value


def spin(count: int) -> None:
    """The reference work: ``count`` units of pure-Python CPU, no I/O, no locks."""
    for _ in range(count):
        x = 0
        for i in range(SPIN):
            x += i


def make_array(root: Path, *, cross_process: bool) -> None:
    """The sharded array, written whole once so that its shards are dense."""
    store, _ = open_store(root, cross_process=cross_process)
    with zarr.config.set(PIPELINE):
        arr = zarr.create_array(
            store,
            shape=SHAPE,
            chunks=SHARD,
            dtype="f4",
            fill_value=0,
            serializer=ShardingCodec(chunk_shape=INNER, codecs=[BytesCodec()]),
            compressors=None,
        )
        arr[:] = np.arange(SHAPE[0] * SHAPE[1], dtype="f4").reshape(SHAPE)
    store.close()


def check_array(root: Path, *, cross_process: bool) -> int:
    """How many inner chunks are not uniform (each write fills one with one value)."""
    store, _ = open_store(root, cross_process=cross_process)
    with zarr.config.set(PIPELINE):
        data = zarr.open_array(store, mode="r")[:]
    store.close()
    blocks = np.asarray(data).reshape(GRID[0], INNER[0], GRID[1], INNER[1])
    uniform = (blocks == blocks[:, :1, :, :1]).all(axis=(1, 3))
    return int(N_CHUNKS - uniform.sum())


def after(
    go: threading.Barrier, arr: zarr.Array[Any], writer: int, writers: int, count: int
) -> None:
    """:func:`write_chunks` in a thread, once ``go`` is passed."""
    go.wait()
    write_chunks(arr, writer, writers, count)


def worker(
    rank: int,
    roots: dict[str, str],
    commands: Queue[tuple[str, int, int, int] | None],
    results: Queue[tuple[str, int, Any]],
    barriers: dict[int, Barrier],
) -> None:
    """One process: opens every array once, then runs commands until it gets None.

    A command ``(mode, processes, threads, count)`` writes ``count`` chunks in
    each of ``threads`` threads, as process ``rank`` of ``processes``, after
    waiting on the barrier of ``processes`` workers plus the parent.
    Defined at module level: spawn children import it from this file (run as
    ``__main__``, it is imported there as ``__mp_main__``).
    """
    try:
        zarr.config.set(PIPELINE)  # for this whole process, before any array is opened
        arrays: dict[str, zarr.Array[Any]] = {}
        honoured = True
        for mode, root in roots.items():
            store, ok = open_store(Path(root), cross_process=mode == XPROC)
            honoured = honoured and ok
            arrays[mode] = zarr.open_array(store, mode="r+")
        results.put(("ready", rank, honoured))
        while (cmd := commands.get()) is not None:
            mode, processes, nthreads, count = cmd
            writers = processes * nthreads
            if mode == CPU:
                barriers[processes].wait(TIMEOUT_S)
                cpu0 = time.process_time()
                spin(count)
            elif nthreads == 1:
                arr = arrays[mode]
                barriers[processes].wait(TIMEOUT_S)
                cpu0 = time.process_time()  # all threads: zarr's event-loop thread too
                write_chunks(arr, rank, writers, count)
            else:
                arr = arrays[mode]
                go = threading.Barrier(nthreads + 1)
                pool = [
                    threading.Thread(
                        target=after, args=(go, arr, rank * nthreads + t, writers, count)
                    )
                    for t in range(nthreads)
                ]
                for th in pool:
                    th.start()
                barriers[processes].wait(TIMEOUT_S)
                cpu0 = time.process_time()
                go.wait()
                for th in pool:
                    th.join()
            results.put(("done", rank, time.process_time() - cpu0))
    except BaseException:
        results.put(("error", rank, traceback.format_exc()))
        raise


type Config = tuple[str, int, int]  # mode, processes, threads per process


class Pool:
    """``MAX_PROCS`` spawned workers, started once and reused for every measurement."""

    def __init__(self, roots: dict[str, str]) -> None:
        ctx = mp.get_context("spawn")
        self.results: Queue[tuple[str, int, Any]] = ctx.Queue()
        self.commands: list[Queue[tuple[str, int, int, int] | None]] = [
            ctx.Queue() for _ in range(MAX_PROCS)
        ]
        self.barriers = {n: ctx.Barrier(n + 1) for n in (1, 2, MAX_PROCS)}
        self.procs: list[SpawnProcess] = [
            ctx.Process(
                target=worker,
                args=(rank, roots, self.commands[rank], self.results, self.barriers),
                daemon=True,
            )
            for rank in range(MAX_PROCS)
        ]
        for p in self.procs:
            p.start()
        self.honoured = all(self._collect("ready", MAX_PROCS))

    def _collect(self, kind: str, n: int) -> list[Any]:
        out: list[Any] = []
        while len(out) < n:
            try:
                got, rank, payload = self.results.get(timeout=TIMEOUT_S)
            except queue.Empty:
                raise TimeoutError(f"no {kind!r} from the workers in {TIMEOUT_S} s") from None
            if got == "error":
                raise RuntimeError(f"worker {rank} failed:\n{payload}")
            assert got == kind, (got, kind)
            out.append(payload)
        return out

    def run(self, config: Config, total: int) -> tuple[float, float]:
        """Chunks per second, ``total`` chunks split evenly between the writers;
        and the workers' CPU time over wall time, per process (1.0: always busy)."""
        mode, processes, nthreads = config
        count = total // (processes * nthreads)
        for rank in range(processes):
            self.commands[rank].put((mode, processes, nthreads, count))
        self.barriers[processes].wait(TIMEOUT_S)
        t0 = time.perf_counter()
        cpu = sum(self._collect("done", processes))
        wall = time.perf_counter() - t0
        return count * processes * nthreads / wall, cpu / wall / processes

    def close(self) -> None:
        for q in self.commands:
            q.put(None)
        for p in self.procs:
            p.join(10)
        for p in self.procs:
            if p.is_alive():
                p.terminate()
                p.join()


def process_rates(
    base: Path, total: int, rounds: int
) -> tuple[dict[Config, list[tuple[float, float]]], bool, dict[str, int]]:
    """(chunks/s, CPU use per process) per configuration, one sample per round
    after a warm-up round; whether ``cross_process=False`` was honoured; and
    the non-uniform chunks of each array afterwards."""
    roots = {XPROC: base / "xproc", LOCAL: base / "local"}
    make_array(roots[XPROC], cross_process=True)
    make_array(roots[LOCAL], cross_process=False)
    configs: list[Config] = [
        (mode, n, 1) for mode in (XPROC, LOCAL, CPU) for n in (1, 2, MAX_PROCS)
    ]
    configs.append((XPROC, 1, 2))
    pool = Pool({mode: str(root) for mode, root in roots.items()})
    samples: dict[Config, list[tuple[float, float]]] = {c: [] for c in configs}
    try:
        for config in configs:  # warm-up: every writer touches its chunks once
            pool.run(config, min(total, N_CHUNKS))
        for r in range(rounds):
            k = r % len(configs)
            for config in configs[k:] + configs[:k]:
                samples[config].append(pool.run(config, total))
    finally:
        pool.close()
    bad = {mode: check_array(root, cross_process=mode == XPROC) for mode, root in roots.items()}
    return samples, pool.honoured, bad


def report_rates(samples: dict[Config, list[tuple[float, float]]], bad: dict[str, int]) -> None:
    rates = {c: [rate for rate, _ in s] for c, s in samples.items()}

    def fmt_rate(config: Config) -> str:
        rs = rates[config]
        med = statistics.median(rs)
        mib = "" if config[0] == CPU else f"= {med * CHUNK / 2**20:6.1f} MiB/s"
        busy = statistics.median(cpu for _, cpu in samples[config])
        return f"{med:7.0f}/s  [{min(rs):6.0f} - {max(rs):6.0f}]  {mib:<14} {busy:6.0%}"

    def ratio(num: Config, den: Config) -> str:
        per_round = statistics.median(n / d for n, d in zip(rates[num], rates[den], strict=True))
        return f"{per_round:.2f}x"

    print(f"  {'locks':<24} {'writers':<22} {'per second: median [min - max]':<45} CPU/proc")
    for config in samples:
        mode, processes, nthreads = config
        who = f"{processes} process{'es' if processes > 1 else ''}"
        if nthreads > 1:
            who += f" x {nthreads} threads"
        print(f"  {mode:<24} {who:<22} {fmt_rate(config)}")
    print("  (CPU/proc: the workers' CPU time, zarr's event-loop thread included, over wall time)")
    print()
    for mode in (XPROC, LOCAL, CPU):
        one = (mode, 1, 1)
        target = "" if mode == CPU else " (target >= 1.5x on 2 cores)"
        print(
            f"  {mode:<24} 2 / 1 process: {ratio((mode, 2, 1), one)},"
            f" 4 / 1: {ratio((mode, MAX_PROCS, 1), one)}{target}"
        )
    print(
        f"  {'default / in-process':<24} 1 process: {ratio((XPROC, 1, 1), (LOCAL, 1, 1))},"
        f" 2: {ratio((XPROC, 2, 1), (LOCAL, 2, 1))},"
        f" 4: {ratio((XPROC, MAX_PROCS, 1), (LOCAL, MAX_PROCS, 1))}"
        " (of rates: below 1 is the lock's cost)"
    )
    print(f"  {'1 process, 2 threads':<24} vs 1 thread: {ratio((XPROC, 1, 2), (XPROC, 1, 1))}")
    for mode, n in bad.items():
        print(f"  sanity ({mode}): {n} of {N_CHUNKS} inner chunks not uniform after the run")


# -------------------------------------------------------------------- main


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def part_ops(base: Path, key_mib: int, ops: int, repeats: int, seed: int) -> None:
    print(
        f"1. one 64 KiB op at random aligned offsets of a {key_mib} MiB value;"
        f" {ops} ops x {repeats} rounds; vs raw and default / in-process:"
        " median of paired ratios (ratio of medians)"
    )
    (base / "ops").mkdir()
    costs, honoured = op_costs(base / "ops", key_mib, ops, repeats, seed)
    if not honoured:
        print(
            "  NOTE: RangeLockedStore does not take cross_process yet: the two"
            " RangeLockedStore rows measure the same thing"
        )
    report_ops(costs)
    print()


def part_procs(base: Path, chunks: int, rounds: int) -> None:
    n_shards = N_CHUNKS * INNER[0] * INNER[1] // (SHARD[0] * SHARD[1])
    print(
        f"2. {chunks} inner-chunk writes (64 KiB, disjoint, interleaved) per measurement"
        f" into {SHAPE[0]}x{SHAPE[1]} f4, shards {SHARD[0]}x{SHARD[1]}"
        f" ({N_CHUNKS} chunks in {n_shards} shards), spawned processes; {rounds} rounds"
    )
    (base / "procs").mkdir()
    rates, honoured, bad = process_rates(base / "procs", chunks, rounds)
    if not honoured:
        print(
            "  NOTE: RangeLockedStore does not take cross_process yet: the"
            f" {LOCAL!r} rows measure the default"
        )
    report_rates(rates, bad)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small counts: under 20 s")
    parser.add_argument("--ops", type=int, help="ops per batch in part 1 (default 4000)")
    parser.add_argument("--repeats", type=int, help="timed rounds in part 1 (default 15)")
    parser.add_argument("--key-mib", type=int, default=64, help="size of the value in part 1")
    parser.add_argument("--chunks", type=int, help="chunks per measurement in part 2 (2000)")
    parser.add_argument("--rounds", type=int, help="timed rounds in part 2 (default 5)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random offsets")
    parser.add_argument("--dir", type=Path, help="where to make the temporary directory")
    parser.add_argument("--only", choices=("ops", "procs"), help="run only part 1 or part 2")
    args = parser.parse_args()
    ops = args.ops or (1000 if args.quick else 4000)
    repeats = args.repeats or (5 if args.quick else 15)
    chunks = args.chunks or (400 if args.quick else 2000)
    rounds = args.rounds or (2 if args.quick else 5)
    if args.key_mib * 2**20 < CHUNK or chunks < MAX_PROCS * 2 or min(ops, repeats, rounds) < 1:
        parser.error("sizes and counts too small")

    print(
        f"Python {platform.python_version()} ({sys.implementation.name}), zarr {zarr.__version__},"
        f" numpy {np.__version__}, {platform.system()} {platform.machine()},"
        f" {os.cpu_count()} CPUs"
    )
    base = Path(tempfile.mkdtemp(prefix="processes_bench_", dir=args.dir))
    print(f"LocalStore under {base}; load average {load()} (other work skews every row)\n")
    t_start = time.perf_counter()
    try:
        if args.only != "procs":
            part_ops(base, args.key_mib, ops, repeats, args.seed)
        if args.only != "ops":
            part_procs(base, chunks, rounds)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print(f"\ntotal {time.perf_counter() - t_start:.0f} s; load average now {load()}")


if __name__ == "__main__":
    main()
