"""Drive a store with random concurrent ops, then check the history.

Threads and asyncio tasks run side by side: ``threads`` worker threads call the
sync methods, and ``tasks`` asyncio tasks call the async methods on one event
loop in its own thread; threads doing ``get_partial_values`` go through
zarr's own loop thread, as zarr's sync API does. The main thread only
watches: it draws the progress line and declares a hang if no op completes
for ``hang_after`` seconds (then it dumps every thread's stack).

Each worker gets ``random.Random(f"{seed}/{index}")``, so the sequence of ops
each worker issues (kinds, keys, ranges) is reproducible from the seed; the
interleaving of workers is up to the OS and the event loop, as it is in
production.

*Memory.* A run checks as it goes: every ``checkpoint`` ops the watchdog
parks every worker between two ops (threads on a condition, tasks polling
without blocking the loop), the load checks what was recorded since the last
checkpoint against the state it reads then and drops the records, keeping
only what the load's checker carries forward (per key for bytes,
:func:`stress.oracle.check`, bounded by the value size; per element for the
shard mode, :func:`stress.shard_check.check_epoch`, bounded by the array's
size), and the workers go on; the pause does not count towards the duration.
In a worker process the coordinator asks for the checkpoint and takes the
records (:class:`CheckpointLink`, :mod:`stress.processes`). Latencies are
kept as bounded samples (:class:`stress.ops.Sample`). So memory stays flat
over hours; :class:`Memory` (in the report) says how flat.

The byte-store load (:mod:`stress.byte_runner`) and the shard mode
(``mode="shard"``, :mod:`stress.shard_runner`) share this driver: a load subclasses ``_Run``
and supplies its workers, ``_setup``, ``_final`` and ``_check``, and registers
itself in :data:`LOADS`.

``processes > 1`` (LocalStore only) runs the load in that many worker
processes at once; the driver is a plug-in too (:mod:`stress.processes`
registers it in :data:`DRIVERS`), and this module never imports it. A load
built with ``proc=None`` is that driver's coordinator: it creates the data,
reads the final state and checks the merged history, and has no workers; one
built with ``proc=p`` is worker process ``p``'s part of the load.
"""

from __future__ import annotations

import asyncio
import bisect
import faulthandler
import itertools
import pickle
import random
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TextIO

from zarr.storage import LocalStore, MemoryStore

from stress.kills import IntentFile, process_number
from stress.memory import Memory, peak_rss_mib, rss_mib
from stress.ops import OP_KINDS, OpKind, Sample, Worker, default_mix
from stress.records import CheckResult, Log, Violation
from stress.shard_ops import ShardConfig
from stress.targets import BareTarget, LockedTarget, Target
from zarr_rangelock import RangeLockedStore
from zarr_rangelock.store._durable import Durability

__all__ = [
    "DRIVERS",
    "LOADS",
    "CheckpointLink",
    "Memory",
    "ProcessStats",
    "RunConfig",
    "RunResult",
    "rss_mib",
    "run",
]

#: Writer number of the setup writes that create every key before the load.
SETUP_WRITER = 1
#: What ``progress_hook`` is called with once the watchdog has declared a hang.
HUNG = -1


@dataclass
class RunConfig:
    """Everything that defines a run (the CLI's options).

    ``mode`` is ``"bytes"`` (store calls on keys of ``value_size`` bytes) or
    ``"shard"`` (Array API on the sharded array that ``shard`` describes;
    ``keys`` and ``value_size`` are then unused).
    """

    store: str = "memory"
    path: str | None = None
    threads: int = 4
    tasks: int = 4
    keys: int = 4
    value_size: int = 16 * 1024
    mix: dict[str, float] = field(default_factory=default_mix)
    duration: float | None = 10.0
    ops: int | None = None
    seed: int = 0
    unlocked: bool = False
    progress: bool = False
    hang_after: float = 30.0
    mode: str = "bytes"
    shard: ShardConfig = field(default_factory=ShardConfig)
    processes: int = 1
    #: Ops between two checkpoints (check and drop the records); 0: check only
    #: at the end, keeping the whole history; None: the load's default
    #: (:attr:`_Run.CHECKPOINT`: 20,000 ops in byte mode, 2,000 in shard mode).
    checkpoint: int | None = None
    #: The locked store made with ``map_writes=True`` (LocalStore only).
    map_writes: bool = False
    #: The locked store made with ``dense_shards=True`` (shard mode).
    dense_shards: bool = False
    #: The locked store's ``durability`` (LocalStore only).
    durability: Durability = "none"
    #: Seconds between two kills of a random worker process, each replaced
    #: by a new one (``processes > 1``, a journal ``durability``, a
    #: ``duration``; :mod:`stress.processes`). None: no kills.
    kill_every: float | None = None
    #: With ``kill_every``: the chance that a process started in a killed
    #: one's place is SIGKILLed too, while it opens the root, at a time
    #: drawn to land in its replay of the dead journals
    #: (:func:`stress.worker.open_root`); 0: never.
    kill_replays: float = 0.25
    #: On a failing verdict, pickle the records the checker held at the end
    #: (the whole run with ``checkpoint=0``), the final state and the
    #: findings to this file (:meth:`_Run.dump_history`). None: no file.
    dump_history: str | None = None


class CheckpointLink(Protocol):
    """How a worker process takes part in the coordinator's checkpoints
    (:mod:`stress.processes`): the watchdog asks :meth:`requested` between
    polls; once every worker is parked it calls :meth:`hand_over`, which sends
    this part's records to the coordinator, drops them and returns when the
    coordinator has checked them; :meth:`failed` if a worker did not park."""

    def requested(self) -> bool: ...

    def hand_over(self, load: _Run) -> None: ...

    def failed(self) -> None: ...


@dataclass
class ProcessStats:
    """One worker process of a ``processes > 1`` run, for the report.

    ``elapsed_s`` runs from the common start to the end of that process's
    load; ``ops`` is ``None`` for a process whose history never came back.
    """

    proc: int
    pid: int | None
    ops: int | None
    elapsed_s: float
    bytes_written: int
    exitcode: int | None
    #: That process's peak RSS (MiB), the most records it held at once, and
    #: the checkpoints it took part in (0 and 0 if its history never came back).
    peak_rss_mib: float = 0.0
    retained_peak: int = 0
    checkpoints: int = 0
    #: With ``--kill-every``: how many killed processes ran in its place
    #: before it; when it was killed (seconds of load time; None: it was
    #: not), the writes read back from its file of intents and how many of
    #: them it had not finished, the reads read back (``killed_opening``: killed while its store
    #: opened, ``--kill-replays``); the messages of the journal warnings its
    #: store's opening raised (a replacement's replay of the dead one's journal).
    generation: int = 0
    killed_at_s: float | None = None
    killed_opening: bool = False
    writes_read_back: int = 0
    in_flight: int = 0
    reads_read_back: int = 0
    replay_warnings: list[str] = field(default_factory=list)


@dataclass
class RunResult:
    """What happened: the numbers for the report, and the oracle's verdict."""

    config: RunConfig
    target: str
    elapsed_s: float
    latency: dict[str, Sample]
    bytes_written: int
    lock_stats: dict[str, Any] | None
    checked: CheckResult
    extra: list[Violation]
    processes: list[ProcessStats] = field(default_factory=list)
    memory: Memory = field(default_factory=Memory)
    #: Why kills stopped before the end (``--kill-every``), if they did,
    #: and the most processes that were dead at once (replacements not ready).
    kills_stopped: str = ""
    most_dead_at_once: int = 0
    #: Replacements told to die as they opened the root (``--kill-replays``).
    kills_aimed_at_replays: int = 0
    #: Where the history of a failing run was written (``dump_history``), or "".
    history_file: str = ""

    @property
    def violations(self) -> list[Violation]:
        return [*self.checked.violations, *self.extra]

    @property
    def ops(self) -> int:
        return sum(getattr(v, "total", len(v)) for v in self.latency.values())


def make_inner(cfg: RunConfig, tmp: str | None) -> MemoryStore | LocalStore:
    if cfg.store == "memory":
        return MemoryStore()
    root = Path(cfg.path) if cfg.path else Path(tmp or ".")
    root.mkdir(parents=True, exist_ok=True)
    return LocalStore(root)


def locked_store(cfg: RunConfig, inner: MemoryStore | LocalStore) -> RangeLockedStore:
    """The run's wrapper of ``inner``, with its options (``map_writes``,
    ``dense_shards``, ``durability``)."""
    return RangeLockedStore(
        inner, map_writes=cfg.map_writes, dense_shards=cfg.dense_shards, durability=cfg.durability
    )


def run(cfg: RunConfig, *, out: TextIO | None = None) -> RunResult:
    """Run the load described by ``cfg``; progress (if enabled) goes to ``out``."""
    cls = LOADS.get(cfg.mode)
    if cls is None:
        raise ValueError(f"unknown mode {cfg.mode!r} ({' or '.join(sorted(LOADS))})")
    if cfg.processes != 1:
        if cfg.processes < 1:
            raise ValueError(f"processes must be >= 1, got {cfg.processes}")
        if cfg.store != "local":
            raise ValueError(
                "processes > 1 needs store='local': worker processes share data "
                "only through a LocalStore root"
            )
        driver = DRIVERS.get("processes")
        if driver is None:  # stress/__init__ imports stress.processes, which registers it
            raise RuntimeError("no multi-process driver registered (import stress.processes)")
        return driver(cfg, out or sys.stderr)
    if cfg.store == "local" and not cfg.path:
        with tempfile.TemporaryDirectory(prefix="zarr-rangelock-stress-") as tmp:
            return cls(cfg, make_inner(cfg, tmp), out or sys.stderr).go()
    return cls(cfg, make_inner(cfg, None), out or sys.stderr).go()


class _Run:
    """The driver every load shares: workers, the op mix, the watchdog, the report.

    A load subclasses it, sets ``self.workers`` and provides ``_setup``,
    ``_final`` and ``_check``.
    """

    workers: list[Worker]
    #: The recorded history (every worker's recorder), set by the load.
    log: Log[Any, Any]
    #: Ops between two checkpoints when ``cfg.checkpoint`` is None.
    CHECKPOINT = 20_000

    def __init__(
        self,
        cfg: RunConfig,
        inner: MemoryStore | LocalStore,
        out: TextIO,
        *,
        proc: int | None = 0,
        generation: int = 0,
        opened: RangeLockedStore | None = None,
    ) -> None:
        """State every load needs; a load's own ``__init__`` then sets ``self.workers``.

        ``proc`` is the worker process this part of the load runs in (0 in a
        one-process run), or None for the coordinator of a multi-process run
        (see the module docstring); ``generation`` counts the processes that
        ran in its place before it and were killed (``--kill-every``);
        ``opened``, the wrapper of ``inner`` a worker process opened already
        (:func:`stress.worker.open_root`), for the load to use.
        :attr:`creates` says whether this instance creates the data (keys,
        array) or attaches to what the coordinator made.
        """
        self.cfg = cfg
        self.out = out
        self.inner = inner
        self.proc = proc
        self.generation = generation
        #: How many worker processes (first ones and replacements) the
        #: writer numbers leave room for; set by :meth:`_slots`.
        self.max_processes = 0
        #: With kills: this process's file of intents (:mod:`stress.kills`).
        self.intents: IntentFile | None = None
        self.creates = proc is None or cfg.processes == 1
        #: This part's share of ``cfg.ops`` (None: run for ``cfg.duration``).
        self.ops_budget: int | None = None
        if cfg.ops is not None:
            share, rest = divmod(cfg.ops, max(1, cfg.processes))
            self.ops_budget = share + (1 if (proc or 0) < rest else 0)
        #: Called with this part's count of finished ops while the load runs, and
        #: with :data:`HUNG` once the watchdog has declared a hang.
        self.progress_hook: Callable[[int], None] | None = None
        self.target: Target = (
            BareTarget(inner)
            if cfg.unlocked
            else LockedTarget(inner, opened or locked_store(cfg, inner))
        )
        kinds = [(OP_KINDS[name], w) for name, w in cfg.mix.items() if w > 0]
        for kind, _ in kinds:  # each mode's op bodies take only that mode's worker
            if kind.mode != cfg.mode:
                raise ValueError(f"op kind {kind.name!r} is of {kind.mode} mode, not {cfg.mode}")
            if cfg.unlocked and kind.locked_only:
                raise ValueError(f"op kind {kind.name!r} needs the wrapper, not an unlocked run")
        self.kinds: list[OpKind[Any]] = [k for k, _ in kinds]
        self.cum = list(itertools.accumulate(w for _, w in kinds))
        self.stop = threading.Event()
        self.tickets = itertools.count()
        self.deadline: float | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.async_tasks: list[asyncio.Task[None]] = []
        self.crashes: list[Violation] = []
        self.label = self.target.label
        # Checkpoints (see the module docstring): the watchdog sets _paused;
        # workers park between ops and count themselves in _parked.
        self._gate = threading.Condition()
        self._paused = False
        self._parked = 0
        self._running = 0
        self._last_checkpoint = 0
        #: Ops between two checkpoints (0: none); the coordinator of a
        #: multi-process run asks its workers for them (:attr:`link`).
        self.every = self.CHECKPOINT if cfg.checkpoint is None else cfg.checkpoint
        #: In a worker process: how the coordinator asks for a checkpoint and
        #: takes this part's records (None in a one-process run).
        self.link: CheckpointLink | None = None
        self.memory = Memory()
        self._t_load = 0.0
        # What earlier epochs found (see _absorb).
        self._found: CheckResult | None = None

    def _slots(self, max_writer: int, note: str = "") -> list[tuple[int, str, random.Random]]:
        """Writer number, name and seeded rng of every worker of this part, threads first.

        Worker ``i`` of process ``p`` is worker ``p * n + i`` of the whole run
        (``n`` workers per process): its writer number is unique across every
        process and its rng is seeded from that global index, so process 0 of
        a multi-process run issues the same ops as a one-process run. The
        coordinator (``proc=None``) has no workers. A process that replaces
        killed ones (``generation`` g > 0) counts as process
        ``proc + g * processes``: new writer numbers, new seeds. Raises
        ``ValueError`` (the limit, then ``note``) if the writer numbers of
        all processes would pass ``max_writer``.
        """
        cfg = self.cfg
        n = cfg.threads + cfg.tasks
        self.max_processes = (max_writer - SETUP_WRITER) // n
        if n * cfg.processes + SETUP_WRITER > max_writer:
            limit = max_writer - SETUP_WRITER
            where = " in all processes" if cfg.processes > 1 else ""
            raise ValueError(f"at most {limit} workers{where}{note}")
        if self.proc is None:
            return []
        p = process_number(self.proc, self.generation, cfg.processes)
        if p >= self.max_processes:
            raise ValueError(
                f"worker process {self.proc} of generation {self.generation} needs writer "
                f"numbers past {max_writer}{note}"
            )
        prefix = f"p{self.proc}." if cfg.processes > 1 else ""
        if self.generation:
            prefix = f"p{self.proc}g{self.generation}."
        return [
            (
                SETUP_WRITER + 1 + p * n + i,
                prefix + (f"thread-{i}" if i < cfg.threads else f"task-{i - cfg.threads}"),
                random.Random(f"{cfg.seed}/{p * n + i}"),
            )
            for i in range(n)
        ]

    def keep_intents(self, path: str) -> None:
        """Announce every write in the file ``path`` before making it, and
        record it there after (``--kill-every``: :mod:`stress.kills`)."""
        self.intents = IntentFile(path)
        for w in self.workers:
            w.intents = self.intents

    # -- the load ----------------------------------------------------------------------

    def _pick(self, rng: random.Random) -> OpKind[Any]:
        return self.kinds[bisect.bisect_right(self.cum, rng.random() * self.cum[-1])]

    def _more(self) -> bool:
        if self.stop.is_set():
            return False
        if self.deadline is not None and time.monotonic() >= self.deadline:
            return False
        return self.ops_budget is None or next(self.tickets) < self.ops_budget

    def _crash(self, w: Worker, e: BaseException) -> None:
        detail = f"worker {w.name} died: {type(e).__name__}: {e}"
        self.crashes.append(Violation.note("op_error", detail))

    def _enter(self, delta: int) -> None:
        with self._gate:
            self._running += delta
            self._gate.notify_all()

    def _park(self) -> None:
        """Wait here, between two ops, while a checkpoint runs (a thread)."""
        with self._gate:
            self._parked += 1
            self._gate.notify_all()
            while self._paused and not self.stop.is_set():
                self._gate.wait()
            self._parked -= 1

    async def _park_async(self) -> None:
        """Wait here, between two ops, while a checkpoint runs (a task: polls,
        never blocking the loop, on which other tasks must reach their own
        park)."""
        with self._gate:
            self._parked += 1
            self._gate.notify_all()
        try:
            while self._paused and not self.stop.is_set():
                await asyncio.sleep(0.001)
        finally:
            with self._gate:
                self._parked -= 1

    def _thread_main(self, w: Worker) -> None:
        self._enter(1)
        try:
            while True:
                if self._paused:
                    self._park()
                if not self._more():
                    break
                op = self._pick(w.rng)
                try:
                    op.run_sync(w)
                except Exception as e:
                    w.error(op.name, "-", e)
        except BaseException as e:
            self._crash(w, e)
        finally:
            self._enter(-1)

    async def _task_main(self, w: Worker) -> None:
        self._enter(1)
        try:
            while True:
                if self._paused:
                    await self._park_async()
                if not self._more():
                    break
                op = self._pick(w.rng)
                try:
                    await op.run_async(w)
                except Exception as e:
                    w.error(op.name, "-", e)
                await asyncio.sleep(0)  # an uncontended op may never suspend
        except asyncio.CancelledError:
            raise
        except BaseException as e:
            self._crash(w, e)
        finally:
            self._enter(-1)

    async def _loop_main(self, workers: list[Worker], started: threading.Event) -> None:
        self.loop = asyncio.get_running_loop()
        self.async_tasks = [asyncio.create_task(self._task_main(w)) for w in workers]
        started.set()
        await asyncio.gather(*self.async_tasks, return_exceptions=True)

    def _setup(self) -> None:
        """Create the load's initial data (before the workers start)."""
        raise NotImplementedError

    def _final(self) -> list[Violation]:
        """Read the final state into the history; findings of that step."""
        raise NotImplementedError

    def _check(self) -> CheckResult:
        """The oracle's verdict on the history."""
        raise NotImplementedError

    def _checkpoint(self) -> bool:
        """With every worker parked: check the records so far and drop them.
        False if this load cannot (it then keeps its whole history)."""
        return False

    def retained(self) -> int:
        """Records the oracle holds now (see :class:`Memory`)."""
        return sum(len(r.writes) + len(r.reads) for r in self.log.recorders)

    def _sample_memory(self) -> None:
        m = self.memory
        m.rss_mib.append((round(time.monotonic() - self._t_load, 3), round(rss_mib(), 1)))
        m.peak_rss_mib = round(peak_rss_mib(), 1)
        m.retained_peak = max(m.retained_peak, self.retained())

    def _maybe_checkpoint(self, done: int) -> bool:
        """From the watchdog: run a checkpoint if ``every`` ops passed since the
        last (or, in a worker process, if the coordinator asks for one). True if
        one ran; False also if a worker did not park within ``hang_after`` (the
        watchdog then sees the hang)."""
        if self.stop.is_set():
            return False
        if self.link is not None:
            if not self.link.requested():
                return False
        elif not self.every or done - self._last_checkpoint < self.every:
            return False
        t0 = time.monotonic()
        self._paused = True
        try:
            with self._gate:
                while self._parked < self._running:
                    if time.monotonic() - t0 > self.cfg.hang_after:
                        if self.link is not None:
                            self.link.failed()
                        return False  # a worker never parks: the watchdog will see the hang
                    self._gate.wait(0.05)
                self._sample_memory()
                if self.link is not None:
                    self.link.hand_over(self)  # the coordinator checks; we drop
                elif not self._checkpoint():
                    self.every = 0  # this load keeps its history
                    return False
                self.memory.checkpoints += 1
                self._last_checkpoint = done
                return True
        finally:
            self._paused = False
            with self._gate:
                self._gate.notify_all()
            paused = time.monotonic() - t0
            if self.deadline is not None:
                self.deadline += paused  # a checkpoint is not load time
            self._t_load += paused

    def drop_records(self) -> None:
        """Forget every recorder's writes and reads (they were checked, or sent)."""
        for rec in self.log.recorders:
            rec.writes.clear()
            rec.reads.clear()

    def handed_over(self) -> None:
        """In a worker process, once the coordinator has this epoch's records:
        drop them, and whatever else grows with them."""
        self.drop_records()

    def _absorb(self, result: CheckResult) -> None:
        """Add an epoch's findings to the run's; keep the kinds of the writes they name."""
        found = self._found
        if found is not None:
            result.violations[:0] = found.violations
            result.reads += found.reads
            result.writes += found.writes
            result.seconds += found.seconds
            named = {w for v in result.violations for w in (v.expected, v.found)}
            kinds = {w: k for w, k in found.write_kinds.items() if w in named}
            result.write_kinds = {**kinds, **result.write_kinds}
        self._found = result

    def go(self) -> RunResult:
        """The whole run in this process: setup, load, final state, check."""
        cfg = self.cfg
        for w in self.workers:
            w.quick = cfg.progress  # online checks only feed the progress line
        self._setup()
        elapsed, extra, hung = self.load()
        if hung is None:
            extra.extend(self._final())
            extra.extend(self._check_locks())
        self._status(f"checking {self._done():,} ops ...")
        self._sample_memory()
        checked = self._check()
        self._status("")
        return RunResult(
            config=cfg,
            target=self.label,
            elapsed_s=elapsed,
            latency=self.latency(),
            bytes_written=sum(w.bytes_written for w in self.workers),
            lock_stats=self.target.lock_stats(),
            checked=checked,
            extra=extra,
            memory=self.memory,
            history_file=self.dump_history([*checked.violations, *extra]),
        )

    def dump_history(self, violations: list[Violation], **more: Any) -> str:
        """With ``cfg.dump_history`` and a violation: pickle ``{"config",
        "log", "violations", **more}`` there and return the path, else "".

        ``log`` is the load's history as the checker held it at the end (its
        recorders' writes and reads; the byte mode's ``final`` states, the
        shard mode's final arrays): with checkpoints on, only the last
        epoch's records (``checkpoint=0`` keeps them all).
        """
        path = self.cfg.dump_history
        if not path or not violations:
            return ""
        data = {"config": self.cfg, "log": self.log, "violations": violations, **more}
        with open(path, "wb") as f:
            pickle.dump(data, f, protocol=pickle.HIGHEST_PROTOCOL)
        return path

    def latency(self) -> dict[str, Sample]:
        """Every worker's latency sample (ns), by op kind, in registry order."""
        latency: dict[str, Sample] = {}
        for w in self.workers:
            for kind, values in w.latency.items():
                latency.setdefault(kind, Sample()).merge(values)
        return {k: latency[k] for k in OP_KINDS if k in latency}

    def load(self, t_start: float | None = None) -> tuple[float, list[Violation], Violation | None]:
        """Run the workers until the deadline or the op budget, watching for hangs.

        ``t_start`` is the load's start on the ``time.monotonic()`` clock (the
        deadline counts from it; by default, now). Returns the seconds from
        ``t_start`` to the end, the findings about the run itself (workers
        that died, ops that failed, a hang) and the hang, if there was one.
        """
        cfg = self.cfg
        thread_workers = self.workers[: cfg.threads]
        task_workers = self.workers[cfg.threads :]
        started = threading.Event()
        if t_start is None:
            t_start = time.monotonic()
        self._t_load = t_start
        self._sample_memory()
        if cfg.duration is not None:
            self.deadline = t_start + cfg.duration
        threads = [
            threading.Thread(target=self._thread_main, args=(w,), name=w.name, daemon=True)
            for w in thread_workers
        ]
        if task_workers:
            threads.append(
                threading.Thread(
                    target=asyncio.run,
                    args=(self._loop_main(task_workers, started),),
                    name="stress-loop",
                    daemon=True,
                )
            )
        else:
            started.set()
        for t in threads:
            t.start()
        started.wait()
        hung = self._watch(threads, t_start)
        elapsed = time.monotonic() - self._t_load  # less the checkpoints' pauses
        self._status("")
        extra: list[Violation] = list(self.crashes)
        for w in self.workers:
            extra.extend(w.errors)
        if hung is not None:
            extra.append(hung)
        return elapsed, extra, hung

    # -- watching ----------------------------------------------------------------------

    def _done(self) -> int:
        return sum(w.done for w in self.workers)

    def _watch(self, threads: list[threading.Thread], t_start: float) -> Violation | None:
        """Wait for the workers; draw progress; return a ``hang`` violation if stuck."""
        last_done, last_change, last_draw = -1, time.monotonic(), 0.0
        while alive := [t for t in threads if t.is_alive()]:
            alive[0].join(timeout=0.1)
            now = time.monotonic()
            done = self._done()
            if self.progress_hook is not None:
                self.progress_hook(done)
            if self._maybe_checkpoint(done):
                now = last_change = time.monotonic()  # a checkpoint is no hang
            if done != last_done:
                last_done, last_change = done, now
            elif now - last_change > self.cfg.hang_after:
                if self.progress_hook is not None:
                    self.progress_hook(HUNG)  # the hang report may take a while
                return self._hang(threads, done)
            if self.cfg.progress and now - last_draw >= 0.5:
                last_draw = now
                self._draw(done, now - t_start)
        return None

    def _status(self, text: str) -> None:
        """Replace the progress line with ``text`` (nothing without ``progress``)."""
        if self.cfg.progress:
            self.out.write(f"\r\x1b[K{text}")
            self.out.flush()

    def _draw(self, done: int, elapsed: float) -> None:
        quick = sum(w.quick_violations + len(w.errors) for w in self.workers)
        rate = done / elapsed if elapsed > 0 else 0.0
        left = ""
        if self.deadline is not None:
            left = f"  {max(0.0, self.deadline - time.monotonic()):4.1f} s left"
        self._status(
            f"{elapsed:5.1f} s  {done:,} ops  {rate:,.0f} ops/s  violations so far: {quick}{left}"
        )

    def _hang(self, threads: list[threading.Thread], done: int) -> Violation:
        self.stop.set()
        stuck = [t.name for t in threads if t.is_alive()]
        # The lock table as the hang left it, before cancelling anything changes it.
        locks = ""
        stats = self.target.lock_stats()
        if stats is not None:
            locks = f"; locks then: holders={stats.get('holders')} waiters={stats.get('waiters')}"
            try:
                self.target.check_locks()
            except AssertionError as e:
                locks += f"; lock table _check() failed: {e}"
        self.out.write(
            f"\nno op completed for {self.cfg.hang_after:g} s ({done:,} done); "
            f"stuck: {', '.join(stuck)}. Lock table:\n"
        )
        for line in self.target.dump_locks():
            self.out.write(f"  {line}\n")
        from zarr.core import sync as zarr_sync

        loops = [("stress", self.loop), ("zarr", zarr_sync.loop[0])]
        for name, loop in loops:
            if loop is None:
                continue
            self.out.write(f"Tasks of the {name} loop:\n")
            for task in list(asyncio.all_tasks(loop)):
                self.out.write(f"  {task.get_name()}:\n")
                for frame in task.get_stack(limit=12):
                    code = frame.f_code
                    self.out.write(f"    {code.co_filename}:{frame.f_lineno} {code.co_name}\n")
        self.out.write("Thread stacks:\n")
        self.out.flush()
        try:
            faulthandler.dump_traceback(file=self.out, all_threads=True)
        except (ValueError, OSError, AttributeError):  # out has no file descriptor
            faulthandler.dump_traceback(all_threads=True)
        if self.loop is not None:

            def cancel() -> None:
                for task in self.async_tasks:
                    task.cancel()

            self.loop.call_soon_threadsafe(cancel)
        for t in threads:
            t.join(timeout=2.0)
        detail = f"no op completed for {self.cfg.hang_after:g} s; stuck: {', '.join(stuck)}{locks}"
        return Violation.note("hang", detail)

    def _check_locks(self) -> list[Violation]:
        out: list[Violation] = []
        try:
            self.target.check_locks()
        except AssertionError as e:
            out.append(Violation.note("lock_leak", f"_check() failed: {e}"))
        stats = self.target.lock_stats()
        if stats is not None:
            held = {k: stats[k] for k in ("holders", "waiters") if stats.get(k)}
            if held:
                detail = "after the run: " + ", ".join(f"{k}={v}" for k, v in held.items())
                out.append(Violation.note("lock_leak", detail))
        return out


#: Drivers that run a load some other way than in this process, by name; only
#: ``"processes"`` (:mod:`stress.processes`) so far. A driver takes the config
#: and the stream for progress and returns the result, as :func:`run` does.
DRIVERS: dict[str, Callable[[RunConfig, TextIO], RunResult]] = {}

#: The loads a run can drive, by mode. A load is a plug-in: it registers itself
#: here (:func:`register_load`) when imported, and this module never imports it
#: back (``stress/__init__`` imports the shard load).
LOADS: dict[str, type[_Run]] = {}


def register_load[R: type[_Run]](mode: str) -> Callable[[R], R]:
    """Class decorator: make the run class the load of ``mode``."""

    def register(cls: R) -> R:
        LOADS[mode] = cls
        return cls

    return register
