"""``--kill-every``: the coordinator's kills, and what a worker process leaves on
disk so that a kill loses no write.

The kills themselves (when, whom, the process in the dead one's place) are
:mod:`stress.processes`'s; this module holds their bookkeeping
(:class:`Kills`, :class:`Killed`), what a run with kills needs
(:func:`kill_problem`) and the files of intents.

A worker process hands its records to the coordinator only at checkpoints
(:mod:`stress.processes`), so a process killed between two of them takes
the records of its writes since the last one with it, and their values,
read later, would name writes nobody recorded (``phantom_read``,
``corrupt``). With kills
on, each worker process appends to a file of its own, before every write
call, an *intent* (the write's record with its start and no end) and,
once the call has returned, the write's record; an op that ends without
writing (a read-modify-write that found nothing to change, a delete whose
set never ran) cancels its intent. At a checkpoint, once its workers have
parked, the process empties the file before it sends its records (so a
kill right after the checkpoint finds nothing twice).

When the coordinator kills a process it reads the file back
(:func:`read_back`): the recorded writes as they are, and every intent
without its record as a *failed* write (``ERROR``: it may or may not have
taken effect, in part or whole) that ended when the process that took the
dead one's place had opened its store, which replays the dead process's
journal (a journaled write is then all old or all new, or torn where
another process wrote its key since: the README's journal limits). Every
outcome the journal allows is one the oracle accepts for a failed write,
and its values are never demanded. Each read's record is appended once
the read has returned, so the dead process's reads since its last
checkpoint are checked as well (a read the kill cut short returned
nothing to anybody, and is not).

Each entry is one ``os.write`` of a length-prefixed pickle on an
``O_APPEND`` descriptor (atomic as an append between the threads of a
process; a SIGKILL cannot tear a write this small into the page cache).
A torn tail is ignored anyway: an intent that never reached the file
belongs to a call that never started.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import os
import pickle
import random
import shutil
import struct
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from stress.records import ERROR

if TYPE_CHECKING:
    from stress.runner import RunConfig

__all__ = [
    "KILL_MARGIN_S",
    "IntentFile",
    "Killed",
    "Kills",
    "ReadBack",
    "kill_problem",
    "process_number",
    "read_back",
]

#: No kill this close to the end of the load (a replacement would not run).
KILL_MARGIN_S = 1.0

_HEAD = struct.Struct("<I")
#: Entry tags: an intent (a record without its end), a finished write's
#: record, a cancelled intent (its wid), a read's record.
INTENT, WROTE, CANCEL, READ = "i", "w", "x", "r"


class IntentFile:
    """One worker process's file of intents and records (see the module docstring).

    Shared by the process's threads and tasks: every entry is one
    ``os.write`` on an ``O_APPEND`` descriptor.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)

    def _put(self, tag: str, item: Any) -> None:
        body = pickle.dumps((tag, item), protocol=pickle.HIGHEST_PROTOCOL)
        os.write(self.fd, _HEAD.pack(len(body)) + body)

    def intend(self, record: Any) -> None:
        """Before a write call: ``record`` (``t_end`` unset) may take effect from now on."""
        self._put(INTENT, record)

    def wrote(self, record: Any) -> None:
        """After a write call: its record, as the worker's recorder holds it."""
        self._put(WROTE, record)

    def cancel(self, wid: int) -> None:
        """The op of intent ``wid`` ended without writing."""
        self._put(CANCEL, wid)

    def read(self, record: Any) -> None:
        """After a read returned: its record, as the worker's recorder holds it."""
        self._put(READ, record)

    def empty(self) -> None:
        """At a checkpoint, every worker parked: the coordinator is about to
        get these records through the pipe."""
        os.ftruncate(self.fd, 0)

    def close(self) -> None:
        os.close(self.fd)


def _entries(data: bytes) -> Iterator[tuple[str, Any]]:
    pos = 0
    while pos + _HEAD.size <= len(data):
        (n,) = _HEAD.unpack_from(data, pos)
        body = data[pos + _HEAD.size : pos + _HEAD.size + n]
        if len(body) < n:
            return  # torn tail: the call it announced never started
        yield pickle.loads(body)
        pos += _HEAD.size + n


@dataclass
class ReadBack:
    """What a killed process's file held (:func:`read_back`)."""

    writes: list[Any]
    reads: list[Any]
    in_flight: int  # of the writes, announced and not finished: failed writes


def _marks(record: Any) -> bool:
    """Whether ``record`` says so when its process was killed in its call (the
    byte mode's records do: :attr:`stress.records.WriteRecord.killed`)."""
    return any(f.name == "killed" for f in dataclasses.fields(record))


def read_back(path: str, t_end: int) -> ReadBack:
    """A killed process's writes and reads since its last checkpoint.

    Recorded writes and reads come back as they are; an intent without its
    record comes back as a failed write that ended at ``t_end`` (the
    ``time.monotonic_ns()`` by which the dead process's journal was
    replayed). A missing file is a process that never wrote nor read.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return ReadBack([], [], 0)
    intents: dict[int, Any] = {}
    done: list[Any] = []
    reads: list[Any] = []
    for tag, item in _entries(data):
        if tag == INTENT:
            intents[item.wid] = item
        elif tag == WROTE:
            intents.pop(item.wid, None)
            done.append(item)
        elif tag == READ:
            reads.append(item)
        else:
            intents.pop(item, None)
    failed = [
        dataclasses.replace(r, t_end=t_end, status=ERROR, **({"killed": True} if _marks(r) else {}))
        for r in intents.values()
    ]
    return ReadBack(done + failed, reads, len(failed))


def process_number(proc: int, generation: int, processes: int) -> int:
    """Which process of the whole run generation ``generation`` of worker
    process ``proc`` is, to the writer numbers and seeds: the first
    ``processes`` are generation 0, each kill's replacement comes after."""
    return proc + generation * processes


def kill_problem(cfg: RunConfig) -> str:
    """Why ``cfg.kill_every`` cannot be run ("" if it can).

    A kill must be survivable (a journal ``durability``: the other modes
    promise nothing for a write a process was killed in the middle of) and
    leave live writers beside the dead one's journal (two processes or
    more); the load must be timed (a killed process's share of an op budget
    has no owner).
    """
    if cfg.kill_every is None:
        return ""
    if not 0.0 <= cfg.kill_replays < 1.0:
        return (
            f"--kill-replays must be at least 0 and below 1, got {cfg.kill_replays:g}: "
            "it is the chance that a process started in a dead one's place dies too"
        )
    if not cfg.kill_every > 0:
        return f"--kill-every must be > 0 seconds, got {cfg.kill_every:g}"
    if cfg.processes < 2:
        return f"--kill-every needs --processes 2 or more, got {cfg.processes}"
    if not cfg.durability.startswith("journal") or cfg.unlocked:
        return (
            f"--kill-every needs --durability journal or journal-nosync, got "
            f"{'--unlocked' if cfg.unlocked else cfg.durability}: only the journal "
            "promises anything for a write whose process was killed"
        )
    if cfg.duration is None:
        return "--kill-every needs a --duration, not --ops (a killed process's ops have no owner)"
    return ""


@dataclass
class Killed:
    """A worker process the coordinator killed (``--kill-every``)."""

    proc: int
    generation: int
    pid: int | None
    at_s: float  # seconds of load time before the kill
    ops: int  # the ops it had finished (its last published count)
    intents: str  # its file of intents
    exitcode: int | None = None  # -SIGKILL
    writes: int = 0  # writes read back from its file
    in_flight: int = 0  # of those, announced and not finished: failed writes
    reads: int = 0  # reads read back from its file
    opening: bool = False  # killed while it opened the root (--kill-replays)


class Kills:
    """The coordinator's kills: when the next is due, whom it killed, where
    the processes keep their intents (a temporary directory of its own)."""

    def __init__(self, cfg: RunConfig, max_processes: int) -> None:
        assert cfg.kill_every is not None
        self.every = cfg.kill_every
        self.dir = tempfile.mkdtemp(prefix="zarr-rangelock-stress-intents-")
        self.rng = random.Random(f"{cfg.seed}/kills")
        self.next_at = math.inf
        self.killed: list[Killed] = []
        #: Killed ones whose replacements are not ready yet, by place (the
        #: first killed, then replacements killed as they opened): a kill
        #: does not wait for the last one's replacement, so two dead
        #: journals (and two replays) may be about at once.
        self.pending: dict[int, list[Killed]] = {}
        #: The most dead processes at once so far (for the report).
        self.most_pending = 0
        #: Processes (first ones and replacements) the writer numbers allow.
        self.room = max_processes
        self.stopped = ""
        #: ``--kill-replays``: the chance a replacement is told to die while
        #: it opens the root, how many were told, and how long the last
        #: openings took (the time a death is drawn from).
        self.replays = cfg.kill_replays
        self.aimed = 0
        self.opens: collections.deque[float] = collections.deque(maxlen=8)

    def dead(self) -> list[Killed]:
        """The killed processes whose places have no ready process yet."""
        return [k for ks in self.pending.values() for k in ks]

    def opened(self, seconds: float) -> None:
        """A worker process's store took ``seconds`` to open (its replay)."""
        self.opens.append(seconds)

    def aim(self, proc: int, generation: int, processes: int, time_left: float) -> float | None:
        """Whether the process about to start as ``generation`` of place ``proc``
        is to die while it opens the root, and when: ``None``, or seconds into
        its opening, drawn from 0 to the longest of the last openings (most
        of an opening is its replay). Never past the writer numbers left for
        the one after it, nor with a kill's margin of the load left."""
        if not self.replays or self.rng.random() >= self.replays:
            return None
        if (
            process_number(proc, generation + 1, processes) >= self.room
            or time_left < KILL_MARGIN_S
        ):
            return None
        self.aimed += 1
        return self.rng.uniform(0.0, max(self.opens, default=0.01))

    def path(self, proc: int, generation: int) -> str:
        return os.path.join(self.dir, f"p{proc}g{generation}.intents")

    def close(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)  # our own mkdtemp
