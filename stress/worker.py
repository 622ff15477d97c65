"""A worker process of ``--processes N``: its load, its checkpoints, what it sends.

The coordinator's side (starting the processes, checkpoints, kills, the
result) and the design of the whole are :mod:`stress.processes`'s; this
module is what runs in each spawned process: :func:`child_main` builds its
part of the load on its own store of the root, runs it when told, hands its
records over at every checkpoint (:class:`_Link`) and sends its
:class:`Part` back through its pipe.
"""

from __future__ import annotations

import contextlib
import dataclasses
import faulthandler
import functools
import multiprocessing.connection
import os
import signal
import sys
import threading
import time
import traceback
import warnings
from dataclasses import dataclass
from multiprocessing.sharedctypes import Synchronized, SynchronizedArray
from typing import Any

from zarr.storage import LocalStore

from stress.ops import Sample
from stress.records import Violation
from stress.runner import LOADS, Memory, RunConfig, _Run, locked_store
from zarr_rangelock import JournalWarning, RangeLockedStore

__all__ = [
    "ERROR",
    "LOADED",
    "PARKED",
    "PART",
    "READY",
    "STACKS_SIGNAL",
    "STARTUP_TIMEOUT_S",
    "Part",
    "StartSignal",
    "child_main",
]

#: From the start of the children until every one is ready (spawn, imports, store).
STARTUP_TIMEOUT_S = 120.0
#: The signal at which a worker process writes every thread's stack to its
#: stderr (the coordinator sends it to a process it is about to kill as hung).
STACKS_SIGNAL = signal.SIGUSR1

#: Child -> parent messages: ``(READY, pid, replay warnings, seconds its
#: store took to open)``, ``(LOADED,)``, ``(PART, Part)``,
#: ``(ERROR, traceback text)``, ``(PARKED, epoch, logs)`` (its records since
#: the last checkpoint; ``None``: a worker did not park).
READY, LOADED, PART, ERROR, PARKED = "ready", "loaded", "part", "error", "parked"


class StartSignal:
    """A worker process's start signal: the read end of a pipe of its own, to
    which the coordinator writes once (:meth:`wait` as ``Event.wait``).

    Not a ``multiprocessing.Event``: its ``wait`` holds a lock shared by
    every process (a semaphore) while it looks, and a process SIGKILLed
    there (``--kill-every`` kills a process as soon as it is ready, which
    may be inside that ``wait``) holds it for good: every process started
    after waits forever, its load never run (a kill run hung so). A pipe's
    read end is this process's alone; waiting on it holds nothing.
    """

    def __init__(self, conn: multiprocessing.connection.Connection) -> None:
        self.conn = conn

    def wait(self, timeout: float | None = None) -> bool:
        """Whether the start came within ``timeout`` seconds (``None``: wait for it)."""
        return self.conn.poll(timeout)


@dataclass
class Part:
    """What one worker process sends back: its history and its numbers.

    ``logs`` holds each worker's recorded ``(writes, reads)``; ``elapsed_s``
    runs from the common start to the end of this process's load;
    ``findings`` are the run's own (op errors, dead workers, a hang, lock
    leaks); ``hung`` says the child's watchdog declared a hang.
    """

    proc: int
    pid: int
    elapsed_s: float
    ops: int
    bytes_written: int
    latency: dict[str, Sample]
    lock_stats: dict[str, Any] | None
    findings: list[Violation]
    hung: bool
    logs: list[tuple[list[Any], list[Any]]]
    memory: Memory = dataclasses.field(default_factory=Memory)


def _exit_now(code: int) -> None:
    """Leave without waiting for stuck threads (interpreter shutdown joins some)."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(code)


def child_main(
    proc: int,
    cfg: RunConfig,
    root: str,
    conn: multiprocessing.connection.Connection,
    done: SynchronizedArray[int],
    go: StartSignal,
    start_at: Synchronized[float],
    asked: Synchronized[int] | None = None,
    resumed: Synchronized[int] | None = None,
    generation: int = 0,
    intents: str | None = None,
    die_opening: float | None = None,
) -> None:
    """Worker process ``proc``: build its part of the load, run it when ``go`` is
    set, hand its records over at every checkpoint the coordinator asks for
    (``asked``/``resumed``), send its :class:`Part` through ``conn`` (see the
    module docstring). ``generation`` > 0: it replaces that many killed
    processes; ``intents``: the file it announces its writes in (kills on);
    ``die_opening``: SIGKILL itself that many seconds into its store's
    opening, if the opening (the replay of dead journals) still runs then
    (``--kill-replays``: :func:`open_root`)."""
    code = 0
    # The coordinator's watchdog asks for our stacks before it kills us as hung.
    faulthandler.register(STACKS_SIGNAL, file=sys.stderr, all_threads=True)
    try:
        # A replacement's store replays the journals of the processes killed
        # before it: say how many of their records were skipped or discarded.
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", JournalWarning)
            inner, opened, open_s = LocalStore(root), None, 0.0
            if intents is not None:
                opened, open_s = open_root(cfg, inner, die_opening)
            load = LOADS[cfg.mode](
                cfg, inner, sys.stderr, proc=proc, generation=generation, opened=opened
            )
        for w in caught:
            if not issubclass(w.category, JournalWarning):
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        replay = [str(w.message) for w in caught if issubclass(w.category, JournalWarning)]
        if intents is not None:
            load.keep_intents(intents)
        load.progress_hook = functools.partial(done.__setitem__, proc)
        if asked is not None and resumed is not None:
            load.link = _Link(conn, asked, resumed)
        conn.send((READY, os.getpid(), replay, open_s))
        if not go.wait(STARTUP_TIMEOUT_S) or start_at.value < 0:
            return  # the parent gave up on the start; it reports why
        elapsed, findings, hang = load.load(start_at.value)
        conn.send((LOADED,))
        if hang is None:
            findings.extend(load._check_locks())
        else:
            code = 1  # stuck threads may never end: do not wait for them at exit
        load._sample_memory()
        part = Part(
            proc=proc,
            pid=os.getpid(),
            elapsed_s=elapsed,
            ops=load._done(),
            bytes_written=sum(w.bytes_written for w in load.workers),
            latency=load.latency(),
            lock_stats=load.target.lock_stats(),
            findings=findings,
            hung=hang is not None,
            logs=[(rec.writes, rec.reads) for rec in load.log.recorders],
            memory=load.memory,
        )
        conn.send((PART, part))
    except BaseException:
        code = 1
        with contextlib.suppress(OSError, ValueError):
            conn.send((ERROR, traceback.format_exc()))
    finally:
        conn.close()
    if code:
        _exit_now(code)


class _DeathInOpening:
    """SIGKILL this process ``after`` seconds from now unless :meth:`opened` came first."""

    def __init__(self, after: float) -> None:
        self.lock = threading.Lock()
        self.opening = True
        self.timer = threading.Timer(after, self._die)
        self.timer.daemon = True
        self.timer.start()

    def _die(self) -> None:
        with self.lock:  # never once opened() has returned
            if self.opening:
                os.kill(os.getpid(), signal.SIGKILL)

    def opened(self) -> None:
        with self.lock:
            self.opening = False
        self.timer.cancel()


def open_root(
    cfg: RunConfig, inner: LocalStore, die_after: float | None
) -> tuple[RangeLockedStore, float]:
    """Open the root as a writer of it does (a journal store replays every dead
    process's journal as it opens): the store, for the load, and the seconds
    that took. With ``die_after``, SIGKILL this process that many seconds
    in, if the opening still runs then (``--kill-replays``: a replay cut
    short, its records' keys and the replay's turn let go by the kernel,
    for the next opening to replay again)."""
    death = None if die_after is None else _DeathInOpening(die_after)
    t0 = time.perf_counter()
    store = locked_store(cfg, inner)
    took = time.perf_counter() - t0
    if death is not None:
        death.opened()
    return store, took


class _Link:
    """A worker process's end of the coordinator's checkpoints
    (:class:`stress.runner.CheckpointLink`; see the module docstring).

    ``asked`` is the number of the last checkpoint the coordinator asked for,
    ``resumed`` the last one it has checked (both shared values it writes).
    """

    def __init__(
        self,
        conn: multiprocessing.connection.Connection,
        asked: Synchronized[int],
        resumed: Synchronized[int],
    ) -> None:
        self.conn, self.asked, self.resumed = conn, asked, resumed
        self.epoch = 0
        self.parent = os.getppid()

    def requested(self) -> bool:
        return self.asked.value > self.epoch

    def hand_over(self, load: _Run) -> None:
        """Send the records since the last checkpoint, drop them, wait for the check.

        With kills on, the file of intents is emptied first: once the
        coordinator has these records, a kill must not bring them back.
        """
        self.epoch = self.asked.value
        if load.intents is not None:
            load.intents.empty()
        self.conn.send((PARKED, self.epoch, [(r.writes, r.reads) for r in load.log.recorders]))
        load.handed_over()
        # Polling a shared value: the coordinator may take a while (it reads
        # the whole state and checks every process's records); it never waits
        # for us meanwhile, so a missed wakeup costs 10 ms at most.
        while self.resumed.value < self.epoch:
            if os.getppid() != self.parent:
                _exit_now(1)  # the coordinator is gone: nobody will resume us
            time.sleep(0.01)

    def failed(self) -> None:
        self.epoch = self.asked.value
        self.conn.send((PARKED, self.epoch, None))
