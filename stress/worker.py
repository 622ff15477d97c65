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
import functools
import multiprocessing.connection
import os
import sys
import time
import traceback
import warnings
from dataclasses import dataclass
from multiprocessing.sharedctypes import Synchronized, SynchronizedArray
from multiprocessing.synchronize import Event
from typing import Any

from zarr.storage import LocalStore

from stress.ops import Sample
from stress.records import Violation
from stress.runner import LOADS, Memory, RunConfig, _Run
from zarr_rangelock import JournalWarning

__all__ = ["PARKED", "PART", "READY", "STARTUP_TIMEOUT_S", "Part", "child_main"]

#: From the start of the children until every one is ready (spawn, imports, store).
STARTUP_TIMEOUT_S = 120.0

#: Child -> parent messages: ``(READY, pid)``, ``(LOADED,)``, ``(PART, Part)``,
#: ``(ERROR, traceback text)``, ``(PARKED, epoch, logs)`` (its records since
#: the last checkpoint; ``None``: a worker did not park).
READY, LOADED, PART, ERROR, PARKED = "ready", "loaded", "part", "error", "parked"


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
    go: Event,
    start_at: Synchronized[float],
    asked: Synchronized[int] | None = None,
    resumed: Synchronized[int] | None = None,
    generation: int = 0,
    intents: str | None = None,
) -> None:
    """Worker process ``proc``: build its part of the load, run it when ``go`` is
    set, hand its records over at every checkpoint the coordinator asks for
    (``asked``/``resumed``), send its :class:`Part` through ``conn`` (see the
    module docstring). ``generation`` > 0: it replaces that many killed
    processes; ``intents``: the file it announces its writes in (kills on)."""
    code = 0
    try:
        # A replacement's store replays the journals of the processes killed
        # before it: say how many of their records were skipped or discarded.
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", JournalWarning)
            load = LOADS[cfg.mode](
                cfg, LocalStore(root), sys.stderr, proc=proc, generation=generation
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
        conn.send((READY, os.getpid(), replay))
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
