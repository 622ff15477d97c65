"""``--processes N``: the same load from N worker processes on one LocalStore root.

Design note
-----------
*Who does what.* The parent builds the load with ``proc=None`` (the
coordinator: no workers of its own), runs its ``_setup`` (the initial keys,
or the array and its stock prefill) once, then starts N processes with the
``spawn`` method (a fresh interpreter each, as dask-distributed and
``ProcessPoolExecutor`` on macOS do). Process ``p`` builds its own
``RangeLockedStore(LocalStore(root))`` (or the bare store with
``--unlocked``) and the load with ``proc=p``: its threads and asyncio tasks
have writer numbers and seeds that are unique across every process
(:meth:`stress.runner._Run._slots`), and the shard mode opens the
coordinator's array instead of creating one. When every process is ready the
parent stores the common start time in shared memory and writes a byte to
each one's start pipe (:class:`stress.worker.StartSignal`: not a shared
``Event``, whose lock a process killed inside its ``wait`` keeps for good);
nobody sleeps to line the start up. Each process runs the load
(``_Run.load``: the deadline counts from the common start, the op budget is
split), checks its own lock table, and sends its history back through its own
``Pipe`` (one pipe per child rather than one shared ``Queue``: a child that
dies shows up as end-of-file on its own pipe, and nothing is left in a feeder
thread). The parent merges the histories, reads the final state and runs
the same oracle over the operations of every process.

*Checkpoints* (so that nobody keeps the whole history). Once the processes'
shared op counts have grown by ``--checkpoint`` since the last checkpoint,
the parent raises the shared ``asked`` counter. Each child's watchdog sees
it, parks its workers between two ops, sends ``(PARKED, n, records)``
through its pipe, drops its records and polls the shared ``resumed``
counter. When every child has parked (or has ended its load and sent its
part), nothing is in flight anywhere: the parent reads the state, checks
the records that came in against it as a one-process checkpoint does,
drops them and raises ``resumed``. A child that cannot park (it says so),
dies, or does not answer within ``hang_after`` + :data:`HANG_GRACE_S`
turns checkpoints off for the rest of the run: whatever came in stays and
is checked at the end with the rest. The pause counts neither as load time
nor towards a hang, in the children or in the parent.

*Clocks.* The oracle compares ``time.monotonic_ns()`` readings taken by
different workers, and only by ``<``; on Linux ``CLOCK_MONOTONIC`` is one
system-wide clock, so readings from different processes compare exactly as
readings from different threads do, and the final state, read by the parent
after every child has stopped, is later than all of them. Write ids name
their writer, and writer numbers are unique across processes, so the oracle
needs no other change.

*Never a hang.* Every wait has a deadline. Children publish their count of
finished ops in a shared array (from the runner's watchdog loop, so the
counter lives as long as the watchdog does); each child's own watchdog
reports a hang after ``hang_after`` seconds without a finished op (dumping its
stacks to stderr, as a one-process run does) and sends what it has. The
parent's watchdog is the backstop: a child that neither finishes an op nor
reports for ``hang_after`` + :data:`HANG_GRACE_S` seconds (stopped, wedged in
C code) is killed and reported as a ``hang``; a child that dies is reported
as an ``op_error`` with its exit code and, if it raised, its traceback. The
history of a lost child is missing, so the oracle then checks nothing: reads
would show bytes of writes nobody recorded.

*Kills* (``--kill-every``). Every ``kill_every`` seconds at most the
watchdog SIGKILLs a random child that runs its load (never one starting,
nor while a checkpoint is due) and spawns the next *generation* of that
process in its place (new writer numbers and seeds; its start is the
common start moved by the checkpoints' pauses, so it ends with the
others), without waiting for an earlier kill's replacement: several may be
dead at once. Once a new one is ready (its store has replayed the dead
one's journal, or waited for the replay in progress) the dead one's writes
since its last checkpoint are read back from its file of intents and join
the history (:mod:`stress.kills`). A killed child is no lost child:
nothing the oracle needs went with it. With ``--kill-replays P`` a
replacement is, with chance P, told to SIGKILL itself as it opens the
root (:func:`stress.worker.open_root`), timed to land in its replay of the
dead journals; one that dies so is one more dead process of its place
(``Kills.pending`` holds a list per place), and the next generation
starts at once. The dead ones' writes come back when a process of the
place is ready, every dead journal of the root replayed by then.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.process import BaseProcess
from multiprocessing.sharedctypes import Synchronized, SynchronizedArray
from typing import Any, TextIO

from zarr.storage import LocalStore, MemoryStore

from stress.kills import (
    KILL_MARGIN_S,
    Killed,
    Kills,
    kill_problem,
    process_number,
    read_back,
)
from stress.ops import OP_KINDS, Sample
from stress.records import CheckResult, Violation
from stress.runner import (
    DRIVERS,
    HUNG,
    LOADS,
    ProcessStats,
    RunConfig,
    RunResult,
    _Run,
    make_inner,
)
from stress.worker import (
    ERROR,
    LOADED,
    PARKED,
    PART,
    READY,
    STACKS_SIGNAL,
    STARTUP_TIMEOUT_S,
    Part,
    StartSignal,
    child_main,
)

__all__ = ["HANG_GRACE_S", "Part", "child_main", "run_processes"]

SPAWN = multiprocessing.get_context("spawn")

#: Deadlines that only catch hangs; a healthy run ends long before them (the
#: start's: :data:`stress.worker.STARTUP_TIMEOUT_S`).
#: From the end of a child's load until its history has arrived.
REPORT_TIMEOUT_S = 120.0
#: For a child to exit once it has reported.
EXIT_TIMEOUT_S = 10.0
#: For a hung child to write its stacks before it is killed.
STACKS_WAIT_S = 1.0
#: The parent's watchdog waits this much longer than ``hang_after``, so that a
#: child's own watchdog (which dumps that child's stacks) speaks first.
HANG_GRACE_S = 5.0


type ChildMain = Callable[..., None]


def run_processes(
    cfg: RunConfig, out: TextIO | None = None, *, child: ChildMain = child_main
) -> RunResult:
    """Run the load of ``cfg`` in ``cfg.processes`` worker processes (LocalStore only).

    ``child`` is the function each process runs, :func:`child_main` (the tests
    wrap it to make a child die or stop).
    """
    if cfg.store != "local":
        raise ValueError(
            f"processes > 1 needs store='local', not {cfg.store!r}: worker processes "
            "share data only through a LocalStore root"
        )
    problem = kill_problem(cfg)
    if problem:
        raise ValueError(problem)
    out = out or sys.stderr
    if cfg.path:
        return _drive(cfg, make_inner(cfg, None), out, child)
    with tempfile.TemporaryDirectory(prefix="zarr-rangelock-stress-") as tmp:
        return _drive(cfg, make_inner(cfg, tmp), out, child)


def _drive(
    cfg: RunConfig, inner: MemoryStore | LocalStore, out: TextIO, child: ChildMain
) -> RunResult:
    assert isinstance(inner, LocalStore)  # make_inner of a store='local' config
    load = LOADS[cfg.mode](cfg, inner, out, proc=None)
    return _Driver(cfg, load, str(inner.root), out, child).go()


@dataclass
class _Child:
    """The parent's view of one worker process."""

    proc: int
    process: BaseProcess
    conn: multiprocessing.connection.Connection
    state: str = "starting"  # ready, running, reporting, done, lost
    readable: bool = True  # conn not at end-of-file yet
    pid: int | None = None
    part: Part | None = None
    error: str = ""
    last_done: int = 0
    since: float = 0.0  # when last_done last changed, or when reporting began
    parked: int = 0  # the last checkpoint it handed its records over for
    park_failed: bool = False  # a worker of it did not park for a checkpoint
    generation: int = 0  # killed processes it replaces (--kill-every)
    intents: str | None = None  # its file of intents (--kill-every)
    die_opening: float | None = None  # told to die this far into its opening (--kill-replays)
    go: multiprocessing.connection.Connection | None = None  # its start signal's write end
    replay: list[str] = dataclasses.field(default_factory=list)  # JournalWarnings at its open

    @property
    def pending(self) -> bool:
        return self.state not in ("done", "lost")


class _Driver:
    """The parent of a multi-process run (see the module docstring)."""

    def __init__(self, cfg: RunConfig, load: _Run, root: str, out: TextIO, child: ChildMain):
        self.cfg = cfg
        self.load = load
        self.root = root
        self.out = out
        self.child_main = child
        self.findings: list[Violation] = []
        self.children: list[_Child] = []
        self.t_start = 0.0
        # Checkpoints: the last one asked for (and, once checked, resumed) and
        # the ops every process had finished at the last one checked.
        self.asked = SPAWN.Value("q", 0, lock=False)
        self.resumed = SPAWN.Value("q", 0, lock=False)
        self.last_checkpoint = 0
        self.child_cfg = dataclasses.replace(cfg, progress=False)  # the parent draws progress
        self.done = SPAWN.Array("q", cfg.processes, lock=False)
        self.started = False  # every first process is released: later ones start at once
        self.paused_s = 0.0  # the checkpoints' pauses so far
        self.kills = Kills(cfg, load.max_processes) if cfg.kill_every else None

    def go(self) -> RunResult:
        cfg, load = self.cfg, self.load
        load._setup()
        start_at = SPAWN.Value("d", 0.0, lock=False)
        try:
            for p in range(cfg.processes):
                self.children.append(self._spawn(p, 0, start_at))
            if self._start(start_at):
                self._watch(self.done)
        finally:
            self._reap()
            if self.kills is not None:
                self.kills.close()
        return self._result()

    def _spawn(
        self,
        p: int,
        generation: int,
        start_at: Synchronized[float],
        die_opening: float | None = None,
    ) -> _Child:
        """Start worker process ``p`` (``generation`` > 0: in place of killed ones;
        ``die_opening``: :func:`stress.worker.child_main`'s)."""
        intents = None if self.kills is None else self.kills.path(p, generation)
        recv, send = SPAWN.Pipe(duplex=False)
        go_recv, go_send = SPAWN.Pipe(duplex=False)
        process = SPAWN.Process(
            target=self.child_main,
            args=(
                p,
                self.child_cfg,
                self.root,
                send,
                self.done,
                StartSignal(go_recv),
                start_at,
                self.asked,
                self.resumed,
                generation,
                intents,
                die_opening,
            ),
            name=f"stress-p{p}" + (f"g{generation}" if generation else ""),
            daemon=True,
        )
        process.start()
        send.close()  # the child holds the only write end: its death is our EOF
        go_recv.close()
        c = _Child(p, process, recv, generation=generation, intents=intents, go=go_send)
        c.die_opening, c.since = die_opening, time.monotonic()
        if self.started:
            self._go(c)  # in a killed one's place: it runs as soon as it is ready
        return c

    def _go(self, c: _Child) -> None:
        """Release ``c`` (its :class:`~stress.worker.StartSignal`), if it still lives."""
        assert c.go is not None
        with contextlib.suppress(OSError):  # it died meanwhile: nothing to release
            c.go.send_bytes(b"go")

    # -- the phases ----------------------------------------------------------------------

    def _start(self, start_at: Synchronized[float]) -> bool:
        """Wait until every child is ready, then release them all at once."""
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while any(c.state == "starting" for c in self.children):
            self._poll(0.1)
            if any(c.state == "lost" for c in self.children):
                break
            if time.monotonic() > deadline:
                for c in self.children:
                    if c.state == "starting":
                        self._lose(c, "hang", f"did not start within {STARTUP_TIMEOUT_S:g} s")
                break
        if any(c.state != "ready" for c in self.children):
            start_at.value = -1.0  # tells the ready ones not to run
            for c in self.children:
                self._go(c)
                if c.pending:
                    c.state = "done"  # not its fault; it exits without running
            return False
        self.t_start = start_at.value = time.monotonic()
        self.load._t_load = self.t_start
        self.load._sample_memory()
        self.started = True
        for c in self.children:
            self._go(c)
            c.state, c.since = "running", self.t_start
        if self.kills is not None:
            self.kills.next_at = self.t_start + self.kills.every
        return True

    def _watch(self, done: SynchronizedArray[int]) -> None:
        """Collect the histories; kill a child that stops making progress or reporting."""
        cfg = self.cfg
        last_draw = 0.0
        while any(c.pending for c in self.children):
            self._poll(0.1)
            now = time.monotonic()
            for c in self.children:
                if c.state == "running":
                    d = done[c.proc]
                    if d == HUNG:  # its own watchdog found a hang and is reporting it
                        c.state, c.since = "reporting", now
                    elif d != c.last_done:
                        c.last_done, c.since = d, now
                    elif now - c.since > cfg.hang_after + HANG_GRACE_S:
                        self._lose(
                            c,
                            "hang",
                            f"finished no op and reported nothing for "
                            f"{now - c.since:.1f} s (--hang-after {cfg.hang_after:g}); killed it",
                        )
                elif c.state == "reporting" and now - c.since > REPORT_TIMEOUT_S:
                    self._lose(
                        c, "hang", f"sent no history within {REPORT_TIMEOUT_S:g} s; killed it"
                    )
                elif c.state == "starting" and now - c.since > STARTUP_TIMEOUT_S:
                    self._lose(c, "hang", f"did not start within {STARTUP_TIMEOUT_S:g} s")
            if self._checkpoint_due(done):
                self._checkpoint(done)
            elif self.kills is not None and now >= self.kills.next_at:
                self._kill(done, now)
            if cfg.progress and now - last_draw >= 0.5:
                last_draw = now
                total = self._total(done)
                elapsed = now - self.t_start
                left = ""
                if cfg.duration is not None:
                    left = f"  {max(0.0, self.t_start + cfg.duration - now):4.1f} s left"
                self.load._status(
                    f"{elapsed:5.1f} s  {total:,} ops  {total / max(elapsed, 1e-9):,.0f} ops/s  "
                    f"in {len(self.children)} processes{left}"
                )
        self.load._status("")

    # -- checkpoints -------------------------------------------------------------------

    def _checkpoint_due(self, done: SynchronizedArray[int], waiting: bool = False) -> bool:
        """Whether ``--checkpoint`` ops have passed since the last checkpoint
        and every process runs (``waiting``: whether or not every one runs)."""
        every = self.load.every
        if not every or (not waiting and any(c.state != "running" for c in self.children)):
            return False
        return self._total(done) - self.last_checkpoint >= every

    def _total(self, done: SynchronizedArray[int]) -> int:
        """Ops finished in every process so far (killed ones' too)."""
        kills = self.kills
        base = 0
        if kills is not None:
            base = sum(k.ops for k in [*kills.killed, *kills.dead()])
        return base + sum(max(0, done[c.proc]) for c in self.children)

    def _checkpoint(self, done: SynchronizedArray[int]) -> None:
        """Ask every process to park and hand its records over; once all have (or
        have ended and sent the rest), read the state, check, drop, resume them.

        Every wait has a deadline: a process that does not answer within
        ``hang_after`` + :data:`HANG_GRACE_S` (or that could not park, or
        died) turns checkpoints off for the rest of the run; the records
        already here stay and are checked at the end, with the rest.
        """
        cfg, load = self.cfg, self.load
        epoch = self.asked.value = self.asked.value + 1
        t0 = time.monotonic()
        deadline = t0 + cfg.hang_after + HANG_GRACE_S

        def settled(c: _Child) -> bool:
            return c.parked == epoch or c.park_failed or c.state in ("done", "lost")

        while not all(settled(c) for c in self.children) and time.monotonic() < deadline:
            self._poll(0.1)
        ok = all(
            (c.parked == epoch and not c.park_failed) or (c.state == "done" and c.part is not None)
            for c in self.children
        )
        if ok:
            for c in self.children:
                if c.part is not None:  # ended meanwhile: its last records came with it
                    self._merge_logs(c.part.logs)
                    c.part.logs = []
            load._status(f"checkpoint {epoch}: checking ...")
            load._sample_memory()
            load._checkpoint()
            load.log.recorders.clear()  # the coordinator's recorders only held what came in
            load.memory.checkpoints += 1
            self.last_checkpoint = self._total(done)
        else:
            load.every = 0  # keep what came; the end checks it with the rest
        self.resumed.value = epoch
        now = time.monotonic()
        self.paused_s += now - t0  # the children's deadlines move as much
        for c in self.children:
            if c.state == "running":
                c.since = now  # the pause is no hang

    def _merge_logs(self, logs: list[tuple[list[Any], list[Any]]]) -> None:
        for writes, reads in logs:
            rec = self.load.log.recorder()
            rec.writes, rec.reads = writes, reads

    def _poll(self, timeout: float) -> None:
        """Handle what arrived from the children within ``timeout`` seconds."""
        live = [c for c in self.children if c.pending]
        waits: list[Any] = [c.conn for c in live if c.readable]
        waits += [c.process.sentinel for c in live]
        ready = set(multiprocessing.connection.wait(waits, timeout))
        for c in live:
            if c.readable and c.conn in ready:
                self._receive(c)
        for c in live:
            if c.pending and c.process.sentinel in ready:
                while c.readable and c.conn.poll():  # what it sent before it exited
                    self._receive(c)
                if c.state == "starting" and self._died_opening(c):
                    continue
                if c.pending:
                    when = "was ready" if c.state == "starting" else "sent its history"
                    self._lose(c, "op_error", f"exited before it {when}")

    def _receive(self, c: _Child) -> None:
        try:
            msg = c.conn.recv()
        except (EOFError, OSError):
            c.readable = False  # gone: its sentinel says so next
            return
        if msg[0] == READY:
            c.state, c.pid, c.replay = "ready", msg[1], msg[2]
            if self.kills is not None:
                self.kills.opened(msg[3])
            if c.generation:
                self._replaced(c)
        elif msg[0] == LOADED:
            c.state, c.since = "reporting", time.monotonic()
        elif msg[0] == PART:
            c.part, c.state = msg[1], "done"
        elif msg[0] == PARKED:
            c.parked = msg[1]
            if msg[2] is None:
                c.park_failed = True
            else:
                self._merge_logs(msg[2])
        elif msg[0] == ERROR:
            c.error = msg[1]
            self.out.write(f"\nworker process {c.proc} failed:\n{c.error}")
            self.out.flush()

    def _lose(self, c: _Child, kind: str, what: str) -> None:
        """Give up on ``c``: kill it if it lives (a hung one after it has
        written its threads' stacks), and say why in a finding."""
        if kind == "hang" and c.process.is_alive() and c.process.pid is not None:
            self.out.write(f"\nworker process {c.proc} (pid {c.process.pid}) {what}; its stacks:\n")
            self.out.flush()
            with contextlib.suppress(ProcessLookupError):
                os.kill(c.process.pid, STACKS_SIGNAL)
                c.process.join(STACKS_WAIT_S)  # it writes them and lives on
        if c.process.is_alive():
            c.process.kill()
            c.process.join(EXIT_TIMEOUT_S)
        c.state = "lost"
        detail = f"worker process {c.proc} (pid {c.pid or c.process.pid}) {what}"
        if c.process.exitcode is not None and "killed" not in what:
            detail += f" (exit code {c.process.exitcode})"
        if c.error:
            last = c.error.strip().splitlines()[-1]
            detail += f"; it raised {last}"
        detail += "; without its history the oracle checks nothing"
        self.findings.append(Violation.note(kind, detail, "process"))

    def _reap(self) -> None:
        """Every child ends here: joined, or killed after :data:`EXIT_TIMEOUT_S`."""
        for c in self.children:
            c.process.join(EXIT_TIMEOUT_S)
            if c.process.is_alive():
                c.process.kill()
                c.process.join(EXIT_TIMEOUT_S)
                if c.state == "done" and c.part is not None and not c.part.hung:
                    detail = (
                        f"worker process {c.proc} (pid {c.pid}) sent its history but did "
                        f"not exit within {EXIT_TIMEOUT_S:g} s; killed it"
                    )
                    self.findings.append(Violation.note("hang", detail, "process"))
            c.conn.close()
            if c.go is not None:
                c.go.close()

    # -- kills (--kill-every) -----------------------------------------------------------

    def _kill(self, done: SynchronizedArray[int], now: float) -> None:
        """SIGKILL a random running worker process and start another in its place.

        Not while a checkpoint is due (it waits for every process to run, so
        kills would put it off), not within :data:`KILL_MARGIN_S` of the end,
        and never a process that is starting (a replacement replaying) or
        reporting; without waiting for the last kill's replacement, so at a
        short ``kill_every`` several processes are dead at once. The dead
        process's writes come back from its file of intents once its own
        replacement has opened its store, by which time its journal has
        been replayed (by it, or by another opening it waited for)
        (:meth:`_replaced`).
        """
        kills = self.kills
        assert kills is not None
        running = [c for c in self.children if c.state == "running"]
        if not running or self._checkpoint_due(done, waiting=True):
            return
        assert self.cfg.duration is not None  # the CLI refuses kills without one
        if self.t_start + self.paused_s + self.cfg.duration - now < KILL_MARGIN_S:
            kills.next_at = math.inf
            return
        c = kills.rng.choice(running)
        if process_number(c.proc, c.generation + 1, self.cfg.processes) >= kills.room:
            n = len(kills.killed) + len(kills.dead())
            kills.stopped = f"stopped after {n}: no writer numbers left"
            kills.next_at = math.inf
            return
        while c.readable and c.conn.poll():  # what it sent before (a hang report, its part)
            self._receive(c)
        if c.state != "running":
            return
        c.process.kill()
        c.process.join(EXIT_TIMEOUT_S)
        if c.process.is_alive():
            self._lose(c, "hang", f"did not die within {EXIT_TIMEOUT_S:g} s of its SIGKILL")
            return
        c.conn.close()
        self._replace(c, now, ops=max(0, done[c.proc]))
        done[c.proc] = 0
        kills.next_at = now + kills.every

    def _replace(self, c: _Child, now: float, ops: int, opening: bool = False) -> None:
        """``c`` is dead (killed after ``ops`` ops, or as it opened the root):
        one more dead process of its place, whose writes come back when a
        process of the place is ready (:meth:`_replaced`). Start the next
        generation there; with ``--kill-replays``, maybe one told to die
        while it opens the root."""
        kills, cfg = self.kills, self.cfg
        assert kills is not None and cfg.duration is not None
        assert c.intents is not None  # every process of a run with kills has one
        dead = Killed(
            proc=c.proc,
            generation=c.generation,
            pid=c.pid or c.process.pid,
            at_s=max(0.0, now - self.t_start - self.paused_s),
            ops=ops,
            intents=c.intents,
            exitcode=c.process.exitcode,
            opening=opening,
        )
        kills.pending.setdefault(c.proc, []).append(dead)
        left = self.t_start + self.paused_s + cfg.duration - now
        die = kills.aim(c.proc, c.generation + 1, cfg.processes, left)
        if c.go is not None:
            c.go.close()  # (it is dead: its start signal's pipe goes with it)
        start_at = SPAWN.Value("d", self.t_start + self.paused_s, lock=False)
        new = self._spawn(c.proc, c.generation + 1, start_at, die_opening=die)
        self.children[self.children.index(c)] = new
        kills.most_pending = max(kills.most_pending, len(kills.dead()))

    def _died_opening(self, c: _Child) -> bool:
        """Whether ``c`` died of the SIGKILL it was told to time into its
        store's opening (``--kill-replays``); if so it is one more dead
        process of its place, whose writes (none) come back with the first
        one's, and the next generation starts in its place."""
        kills = self.kills
        c.process.join(EXIT_TIMEOUT_S)
        if kills is None or c.die_opening is None or c.error:
            return False
        if c.process.exitcode != -signal.SIGKILL:
            return False
        c.conn.close()
        self._replace(c, time.monotonic(), ops=0, opening=True)
        return True

    def _replaced(self, c: _Child) -> None:
        """The process in place of a killed one is ready: its store has replayed
        the dead one's journal. The dead one's writes join the history, those
        it had not finished as failed writes that ended now."""
        kills = self.kills
        assert kills is not None
        t_end = time.monotonic_ns()
        for killed in kills.pending.pop(c.proc):
            back = read_back(killed.intents, t_end)
            rec = self.load.log.recorder()
            rec.writes, rec.reads = back.writes, back.reads
            killed.writes, killed.in_flight, killed.reads = (
                len(back.writes),
                back.in_flight,
                len(back.reads),
            )
            kills.killed.append(killed)
        c.state = "running"
        c.since = time.monotonic()

    # -- the result ----------------------------------------------------------------------

    def _result(self) -> RunResult:
        cfg, load = self.cfg, self.load
        parts = [c.part for c in self.children if c.part is not None]
        complete = len(parts) == len(self.children)
        extra = list(self.findings)
        latency: dict[str, Sample] = {}
        for part in parts:
            extra.extend(part.findings)
            for kind, values in part.latency.items():
                latency.setdefault(kind, Sample()).merge(values)
            self._merge_logs(part.logs)
        extra.extend(load.crashes)  # the checkpoints' reads of the state
        if complete and not any(p.hung for p in parts):
            extra.extend(load._final())
            extra.extend(load._check_locks())
        if complete:
            load._status(f"checking {sum(p.ops for p in parts):,} ops ...")
            load._sample_memory()
            checked = load._check()
            load._status("")
        else:
            checked = CheckResult([], 0, 0, 0, 0.0, {})
        elapsed = max((p.elapsed_s for p in parts), default=0.0)
        if not parts and self.t_start:
            elapsed = time.monotonic() - self.t_start
        stats = [
            ProcessStats(
                proc=k.proc,
                pid=k.pid,
                ops=k.ops,
                elapsed_s=k.at_s,
                bytes_written=0,
                exitcode=k.exitcode,
                generation=k.generation,
                killed_at_s=k.at_s,
                killed_opening=k.opening,
                writes_read_back=k.writes,
                in_flight=k.in_flight,
                reads_read_back=k.reads,
            )
            for k in ([] if self.kills is None else self.kills.killed)
        ]
        stats += [
            ProcessStats(
                proc=c.proc,
                pid=c.pid,
                ops=None if c.part is None else c.part.ops,
                elapsed_s=0.0 if c.part is None else c.part.elapsed_s,
                bytes_written=0 if c.part is None else c.part.bytes_written,
                exitcode=c.process.exitcode,
                generation=c.generation,
                replay_warnings=c.replay,
                **_memory_stats(c.part),
            )
            for c in self.children
        ]
        stats.sort(key=lambda st: (st.proc, st.generation))
        return RunResult(
            config=cfg,
            target=f"{load.label}, one per process",
            elapsed_s=elapsed,
            latency={k: latency[k] for k in OP_KINDS if k in latency},
            bytes_written=sum(p.bytes_written for p in parts),
            lock_stats=_merge_lock_stats([p.lock_stats for p in parts]),
            checked=checked,
            extra=extra,
            processes=stats,
            memory=load.memory,
            kills_stopped="" if self.kills is None else self.kills.stopped,
            most_dead_at_once=0 if self.kills is None else self.kills.most_pending,
            kills_aimed_at_replays=0 if self.kills is None else self.kills.aimed,
            history_file=load.dump_history(
                [*checked.violations, *extra],
                processes=stats,
                t_start=self.t_start,
                paused_s=self.paused_s,
            ),
        )


def _memory_stats(part: Part | None) -> dict[str, Any]:
    """A worker process's memory figures for its :class:`ProcessStats`."""
    if part is None:
        return {}
    m = part.memory
    peak = max([m.peak_rss_mib, *(mib for _, mib in m.rss_mib)])
    return {"peak_rss_mib": peak, "retained_peak": m.retained_peak, "checkpoints": m.checkpoints}


def _merge_lock_stats(stats: list[dict[str, Any] | None]) -> dict[str, Any] | None:
    """The lock tables of every process as one: ``max_*`` the largest, the rest summed."""
    present = [s for s in stats if s is not None]
    if not present:
        return None
    merged: dict[str, Any] = {}
    for s in present:
        for k, v in s.items():
            if k not in merged:
                merged[k] = v
            elif k.startswith("max_"):
                merged[k] = max(merged[k], v)
            else:
                merged[k] += v
    return merged


DRIVERS["processes"] = run_processes
