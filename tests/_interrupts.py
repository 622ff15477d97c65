"""The interrupt harness: a Ctrl-C simulated at every point of a call, and what must hold after it.

Python runs a signal's handler between two bytecodes of the main thread,
with the frame it interrupted. So a SIGINT at every point of a call is
simulated deterministically, without a signal and without a sleep: a trace
function (``sys.settrace``, per line or per opcode) calls the installed
handler, ``_ki``'s, at the K-th event of a frame of the library, exactly as
the interpreter would. Where that frame is unprotected the handler raises
``KeyboardInterrupt`` there; where it is protected it defers it, and ``_ki``
sends the signal again a moment later (a helper thread's ``pthread_kill``):
here the deferred signal is taken from ``_ki``'s queue instead and its
handler called at a later event (the next one, or a seeded random number
of events on), until it raises. K runs from 0 until the call completes with
no event left.

After each interrupted call: the ``KeyboardInterrupt`` reached the caller
exactly once; nothing is held (the table's counters and invariants, the
writer's gate, the process's OS locks in ``/proc/locks``); each chunk the
call writes reads all old or all new, and every other one as before, by
stock zarr; then, in a thread joined with a deadline (a leaked lock makes it
hang), the same writer and a fresh one write the chunk and the whole shard
again, and stock zarr reads exactly what they wrote (no stale cache).

Per line every point runs; per opcode a seeded sample (``SIGINT_POINTS=all``
runs every opcode, the hunt's setting; ``SIGINT_SEED`` replays a sample).
The calls it interrupts are ``_interrupt_cases.py``. The tests are
``test_interrupt_points.py``; its control
(``test_the_harness_sees_a_hold_left_by_an_unprotected_write``) makes the
in-place write's hold escape an interrupt and must be caught.
"""

from __future__ import annotations

import asyncio
import contextlib
import dis
import gc
import inspect
import os
import queue
import random
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from types import CodeType, FrameType
from typing import Any

import numpy as np
import zarr
from zarr.core.buffer import cpu, default_buffer_prototype
from zarr.storage import LocalStore

import zarr_rangelock
from tests._interrupt_cases import CASES, Case, full, region, scratch
from tests._shard_helpers import STOCK
from zarr_rangelock import RangeLockManager, ShardWriter
from zarr_rangelock.locks import _ki
from zarr_rangelock.locks._lockfile import LOCK_FILE_NAME, SLOT_BYTES, key_slot
from zarr_rangelock.locks._own import CALL
from zarr_rangelock.locks._presence import PRESENCE_BYTE
from zarr_rangelock.shards._fastpaths import GATE
from zarr_rangelock.store._io import INLINE
from zarr_rangelock.store._journal import JOURNAL_DIR
from zarr_rangelock.store._keys import TEMP_FILE
from zarr_rangelock.store._record import _RETIRED

SRC = str(Path(zarr_rangelock.__file__).parent)
SEED = int(os.environ.get("SIGINT_SEED", random.randrange(1 << 30)))
ALL_POINTS = os.environ.get("SIGINT_POINTS") == "all"
#: Points sampled per call and store, unless ALL_POINTS (SIGINT_SAMPLE: more).
SAMPLE = int(os.environ.get("SIGINT_SAMPLE", 24))
#: The deadline of a sampled case (a hang's, not a wait's): with every point
#: (ALL_POINTS) the journaled two-shard write took 140 s where its sample
#: takes 3-5 s, and the deadline's thread ends the whole worker.
SAMPLED_TIMEOUT_S = 1800 if ALL_POINTS else 120
FOLLOW_UP_S = 20.0  # only catches a hang: a leaked lock


# ------------------------------------------------------------------ injection


#: Instructions after which CPython 3.12 checks for signals (its "eval
#: breaker"): a call of anything but a Python function (a Python function
#: is entered in the same loop; its RESUME checks), a backward jump.
CHECKED_AFTER = frozenset({"CALL", "CALL_FUNCTION_EX", "JUMP_BACKWARD"})
#: A call followed by these made a coroutine or generator (most likely): a
#: Python function called, no check (its creation sends no trace event).
MADE_BY_A_CALL = frozenset({"GET_AWAITABLE", "GET_ITER"})
#: Code run from finalizers and weakref callbacks, where CPython itself
#: swallows a KeyboardInterrupt ("Exception ignored in"): no points there.
FINALIZERS = ("_weakrefset.py:", "weakref.py:")
#: Code that is resumed (generators, coroutines): their "call" events are no points.
RESUMED = inspect.CO_GENERATOR | inspect.CO_COROUTINE | inspect.CO_ASYNC_GENERATOR


class Injection:
    """Deliver one simulated SIGINT at the ``k``-th point of the library's
    frames, and its deferred deliveries ``later`` points after each deferral.

    A point is where CPython 3.12 runs a pending signal's handler: a
    function's entry (its RESUME: the library's functions, and whatever
    they call), and the instruction after a call that entered no Python
    frame or after a backward jump. (A call of a class or of an object's
    ``__call__`` also checks after it; it is left out, so every point is
    real, not every real point a point.) ``every``: every opcode instead
    (points the interpreter never checks at too; for hunting).
    """

    def __init__(
        self, k: int, *, later: int = 0, every: bool = False, only: str | None = None
    ) -> None:
        self.k = k
        self.only = only  # count only the points of code named so ("file.py:qualname" start)
        self.later = later
        self.every = every
        self.count = 0  # the library's points passed
        self.where: str | None = None  # the point, once delivered
        self.again: queue.SimpleQueue[int] = queue.SimpleQueue()  # _ki's, while tracing
        self.pending = False  # a deferred signal waits to be delivered again
        self.skip = 0
        self.deferrals = 0
        self.cancels = 0  # SIGINTs that cancelled a write on this thread's loop
        self.stop: FrameType | None = None  # the caller's frame: never traced
        self.prev: dict[FrameType, list[Any]] = {}  # frame -> [last opname, entered a frame]

    def _trace(self, frame: FrameType, event: str, arg: Any) -> Any:
        caller = frame.f_back
        if caller is not None:
            prev = self.prev.get(caller)
            if prev is not None:
                prev[1] = True  # (also a class's __init__: see the class)
        code = frame.f_code
        mine = _mine(code)
        called = caller is not None and _mine(caller.f_code)  # by the library: traced too
        if not code.co_flags & RESUMED and (self.pending or mine or called):
            self._event(frame, mine)  # its RESUME (a generator's: see _local)
        if self.pending or mine or called:
            frame.f_trace_opcodes = True
            return self._local
        return None

    def _local(self, frame: FrameType, event: str, arg: Any) -> Any:
        if event == "opcode":
            code = frame.f_code
            op, arg = _opnames(code).get(frame.f_lasti, ("?", None))
            prev = self.prev.get(frame)
            self.prev[frame] = [op, False, frame.f_lasti]
            if (
                self.every
                or (
                    prev is not None
                    and prev[0] in CHECKED_AFTER
                    and not prev[1]
                    and op not in MADE_BY_A_CALL
                    # CPython raises it at the call (the jump), we at the next
                    # instruction: only where both have the same handler
                    and _handler(code, prev[2]) == _handler(code, frame.f_lasti)
                )
                # A generator's or coroutine's RESUME checks when it starts or
                # comes back from a yield (not from an await, not when thrown
                # into: the trace's "call" event comes then too).
                or (op == "RESUME" and arg in (0, 1) and code.co_flags & RESUMED)
            ):
                self._event(frame, _mine(code))
        elif event == "return":
            self.prev.pop(frame, None)
        return self._local

    def _event(self, frame: FrameType, mine: bool) -> None:
        f: FrameType | None = frame
        for _ in range(3):  # (a finalizer's callees too)
            if f is None:
                break
            if f.f_code.co_name == "__del__" or _name(f.f_code).startswith(FINALIZERS):
                return
            f = f.f_back
        if self.pending:
            if self.skip:
                self.skip -= 1
                return
            self.again.get_nowait()
            self.pending = False
            self._deliver(frame)
        elif self.where is None and (
            self.only is None or _name(frame.f_code).startswith(self.only)
        ):
            if self.count == self.k:
                self.where = _point(frame)
                self._deliver(frame)
            self.count += 1

    def _deliver(self, frame: FrameType) -> None:
        """What the interpreter does at a check with a SIGINT pending."""
        self.prev.clear()
        target = _ki._target
        hits = None if target is None else target[2][0]
        run = _runner(frame)
        count = None if run is None else run[0]._interrupt_count  # type: ignore[attr-defined]
        ended = run is not None and run[1].done()
        signal.getsignal(signal.SIGINT)(signal.SIGINT, frame)  # type: ignore[operator]
        # (returned: deferred, put in ``again`` to be sent again; or, in a
        # write on this thread's loop or under asyncio.run, its task
        # cancelled, or once that task has ended its raise queued)
        if (target is not None and target[2][0] != hits) or (
            run is not None and (ended or run[0]._interrupt_count != count)  # type: ignore[attr-defined]
        ):
            self.cancels += 1
            self.pending = False
            return
        assert not self.again.empty(), "the handler neither raised, deferred nor cancelled"
        self.deferrals += 1
        assert self.deferrals < 10_000, "deferred for ever"
        self.pending = True
        self.skip = self.later
        f: FrameType | None = frame
        while f is not None and f is not self.stop:  # its delivery may come in any frame
            f.f_trace = self._local
            f.f_trace_opcodes = True
            f = f.f_back

    def run(self, call: Callable[[], object]) -> int:
        """``call()`` traced; how many ``KeyboardInterrupt`` reached here (a
        deferred one still pending when it returns is delivered here)."""
        kis = 0
        saved = _ki._again
        _ki._again = self.again
        self.stop = sys._getframe()
        try:
            try:
                sys.settrace(self._trace)
                try:
                    call()
                finally:
                    sys.settrace(None)
            except KeyboardInterrupt:
                kis += 1
            self.pending = False
            kis += deliver_deferred(self.again)
        finally:
            _ki._again = saved
            self.prev.clear()
        return kis


def _runner(frame: FrameType | None) -> tuple[asyncio.Runner, asyncio.Task[Any]] | None:
    """The ``asyncio.Runner`` running in the stack at ``frame`` and its main
    task, as the handler finds them."""
    found = _ki._runner_at(frame)
    return None if found is None else (found[0].__self__, found[1])  # type: ignore[attr-defined]


def deliver_deferred(again: queue.SimpleQueue[int]) -> int:
    """Deliver here (the caller's next check) each SIGINT deferred into
    ``again``; how many ``KeyboardInterrupt`` that raised."""
    kis = 0
    while not again.empty():
        again.get_nowait()
        try:
            _ki._handler(signal.SIGINT, sys._getframe())
        except KeyboardInterrupt:
            kis += 1
    return kis


def _mine(code: CodeType) -> bool:
    return code.co_filename.startswith(SRC)


_TABLES: dict[CodeType, list[Any]] = {}


def _handler(code: CodeType, offset: int) -> tuple[int, int] | None:
    """The exception handler (target, depth) covering ``offset``, if any."""
    table = _TABLES.get(code)
    if table is None:
        table = _TABLES[code] = dis._parse_exception_table(code)  # type: ignore[attr-defined]
    for e in table:
        if e.start <= offset < e.end:
            return e.target, e.depth
    return None


def _name(code: CodeType) -> str:
    return f"{Path(code.co_filename).name}:{code.co_qualname}"


def _point(frame: FrameType) -> str:
    code = frame.f_code
    op = _opnames(code).get(frame.f_lasti, ("?", None))[0]
    name = getattr(code, "co_qualname", code.co_name)
    return f"{Path(code.co_filename).name}:{frame.f_lineno} {name} @{frame.f_lasti} {op}"


_OPS: dict[CodeType, dict[int, tuple[str, Any]]] = {}


def _opnames(code: CodeType) -> dict[int, tuple[str, Any]]:
    ops = _OPS.get(code)
    if ops is None:
        ops = _OPS[code] = {i.offset: (i.opname, i.arg) for i in dis.get_instructions(code)}
    return ops


# ------------------------------------------------------------------- checks


def stock_values(root: Path) -> np.ndarray:
    with zarr.config.set(STOCK):
        return np.asarray(zarr.open_array(LocalStore(root), path="a", mode="r")[...])


def _os_locks_left(case: Case) -> list[str]:
    """Lines of ``/proc/locks`` on the root's lock file in the slots of the
    case's keys (or over every slot: a prefix lock)."""
    try:
        ino = os.stat(case.root / LOCK_FILE_NAME).st_ino
    except FileNotFoundError:
        return []
    slots = {key_slot(k) for k in case.keys}
    left = []
    with open("/proc/locks") as f:
        for line in f:
            # (a waiter's line has "->" after its number; other processes'
            # waiters show up here too)
            parts = [p for p in line.split() if p != "->"]
            if int(parts[5].rsplit(":", 1)[1]) != ino:
                continue
            start = int(parts[6])
            if start < PRESENCE_BYTE and (start // SLOT_BYTES in slots or parts[7] == "EOF"):
                left.append(line.strip())
    return left


def _free(lock: Any) -> bool:
    """Whether ``lock`` is not held for good: free within a few seconds. (Other
    threads take these locks for a moment too: the presence watcher, worker
    threads; ``locked()`` at one instant failed once in CI so.)"""
    if not lock.acquire(timeout=5):
        return False
    lock.release()
    return True


def nothing_held(case: Case) -> None:
    state = case.store._state
    mgr = state.manager
    assert _free(mgr._mutex), "the lock table's mutex is left held"
    fds = state.fds
    assert _free(fds._lock), "the descriptor cache's lock is left held"
    users = {p: e.users for p, e in fds._entries.items() if e.users}
    assert not users, f"descriptors left checked out: {users}"
    os_locks = state.os_locks
    if os_locks is not None:
        assert os_locks._own.empty(), "the process's OS lock bookkeeping holds something"
        presence = os_locks._presence
        assert _free(presence._lock), "the presence lock is left held"
        assert presence._elided == 0, "an elided hold is left"
    mgr._check(idle=True)
    stats = mgr.stats()
    assert stats.holders == stats.waiters == 0, (stats, mgr._dump())
    assert not GATE.locked() and not GATE._reserved and not GATE._waiters
    assert _os_locks_left(case) == []
    assert _ki.deferred == 0
    assert CALL.get() is None, "one_call()'s context variable is left set"
    assert INLINE.get() is False, "ShardWriter's INLINE context variable is left set"
    owned = getattr(case.writer._local, "owned", None)  # the writer's loop of this thread
    if owned is not None and not owned.loop.is_closed():
        left = asyncio.all_tasks(owned.loop)
        assert not left, f"a write left on the writer's loop, to run in its next write: {left}"
    _no_litter(case)


def _no_litter(case: Case) -> None:
    """No descriptor of a file under the root open but the cached ones, the
    journal's pool and the lock file's; every journal file of this process
    in its pool, holding no record a replay would apply (none, or retired);
    no temporary file left."""
    state = case.store._state
    root = os.path.realpath(case.root)
    known = {e.fd for e in state.fds._entries.values()}
    journal = state.journal
    pool = [] if journal is None else list(journal._free)
    known |= {jf.fd for jf in pool}
    leaked = []
    for name in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue  # the listing's own descriptor, closed
        mine = target.startswith(root + "/") and Path(target).name != LOCK_FILE_NAME
        if mine and int(name) not in known:
            leaked.append(target)
    assert not leaked, f"descriptors left open: {leaked}"
    jdir = case.root / JOURNAL_DIR
    mine = sorted(p.name for p in jdir.glob(f"{os.getpid()}-*")) if jdir.exists() else []
    assert mine == sorted(Path(jf.path).name for jf in pool), (
        f"journal files of this process out of the pool: {mine} vs {[jf.path for jf in pool]}"
    )
    for jf in pool:
        head = os.pread(jf.fd, 8, 0)
        assert head in (b"", _RETIRED), f"a record left unretired in {jf.path}: {head!r}"
    if case.store.durability == "journal":
        # Left alone (see the report): a prepared file of a transaction
        # interrupted between its making and its hand-over (build_temp's
        # return, Transaction.add_file) stays until a recover() removes
        # it as stale: litter, hidden from listings, never a key's value.
        return
    temps = [
        str(p)
        for p in case.root.rglob("*")
        if TEMP_FILE.search(p.name) and p.name != LOCK_FILE_NAME
    ]
    assert not temps, f"temporary files left: {temps}"


def values_ok(case: Case, got: np.ndarray) -> None:
    """Each chunk the call writes all old or all new, the rest as before."""
    rest = np.ones(got.shape, dtype=bool)
    for r in case.chunks:
        rest[r] = False
        assert (got[r] == case.before[r]).all() or (got[r] == case.after[r]).all(), (
            f"chunk {r} torn: {got[r].tolist()}"
        )
    np.testing.assert_array_equal(got[rest], case.before[rest])
    if "k" in case.extra:
        value = case.store.get_sync("k", prototype=default_buffer_prototype())
        assert value is not None and value.to_bytes() in case.extra["k"], value


def follow_up(case: Case, got: np.ndarray) -> None:
    """Write on, in a thread with a deadline; stock zarr reads exactly that."""
    model = got.copy()
    errors: list[BaseException] = []

    def write_on() -> None:
        try:
            i, j = case.again
            case.writer.write_chunk((i, j), full(3))  # the same writer, its caches
            model[region((i, j))] = 3
            fresh = ShardWriter(zarr.open_array(case.store, path="a", mode="r+"))
            fresh.write_chunk((1, 0), full(4))
            model[region((1, 0))] = 4
            case.arr[0:8, 0:8] = 5  # the whole shard: its whole-key lock, stamp moves
            model[0:8, 0:8] = 5
            case.writer.write_chunk((i, j), full(6))
            model[region((i, j))] = 6
            fresh[0:4, 8:16] = 7
            model[0:4, 8:16] = 7
            with case.store.lock_manager.lock("a/c/0/1", timeout=FOLLOW_UP_S):
                pass
            if "k" in case.extra:
                case.store.set_sync("k", cpu.Buffer.from_bytes(bytes(256)))
                case.store.set_range_sync("k", cpu.Buffer.from_bytes(b"\x09" * 64), 64)
        except BaseException as e:  # surfaced below
            errors.append(e)

    t = threading.Thread(target=write_on, daemon=True)  # daemon: a hang must not hold pytest
    t.start()
    t.join(FOLLOW_UP_S)
    assert not t.is_alive(), "a write after the interrupt hangs: a lock was left held"
    if errors:
        raise errors[0]
    np.testing.assert_array_equal(stock_values(case.root), model)
    np.testing.assert_array_equal(case.arr[...], model)
    nothing_held(case)


def interrupt_at(
    name: str,
    options: dict[str, Any],
    k: int,
    *,
    later: int = 0,
    every: bool = False,
    only: str | None = None,
) -> str | None:
    """Run case ``name`` with the SIGINT at event ``k``; check everything.
    Returns the point, or None when the call has fewer events (then it must
    have completed, with no interrupt)."""
    with scratch() as tmp, _unraisable() as ignored:
        case = CASES[name](tmp / "root", options)
        inj = Injection(k, later=later, every=every, only=only)
        kis = inj.run(case.call)
        where = inj.where
        try:
            gc.collect(0)  # (what the interrupted call dropped, finalized now)
            assert not ignored, f"errors Python could only print: {ignored}"
            assert kis == (where is not None), f"{kis} KeyboardInterrupts reached the caller"
            if where is None and "want" in case.extra:
                np.testing.assert_equal(case.extra["got"], case.extra["want"])
            if "settle" in case.extra:
                case.extra["settle"]()
            nothing_held(case)
            got = stock_values(case.root)
            if where is None:
                np.testing.assert_array_equal(got, case.after)
            values_ok(case, got)
            follow_up(case, got)
        except BaseException as e:
            e.add_note(f"case {name!r} {options}, SIGINT at event {k} ({where}), later={later}")
            raise
        return where


@contextlib.contextmanager
def _unraisable() -> Iterator[list[str]]:
    """While inside: the errors raised where Python can only print them
    ("Exception ignored in": a finalizer's, a callback's), as text."""
    seen: list[str] = []

    def hook(u: Any) -> None:
        seen.append(f"{u.exc_type.__name__}: {u.exc_value} in {u.object!r}")

    old, sys.unraisablehook = sys.unraisablehook, hook
    try:
        yield seen
    finally:
        sys.unraisablehook = old


def events(
    name: str, options: dict[str, Any], *, every: bool = False, only: str | None = None
) -> int:
    """How many events the call has (the points to interrupt)."""
    with scratch() as tmp:
        case = CASES[name](tmp / "root", options)
        inj = Injection(1 << 60, every=every, only=only)
        assert inj.run(case.call) == 0
        return inj.count


def sample_points(
    name: str, options: dict[str, Any], sample: int = SAMPLE
) -> Iterator[tuple[int, int]]:
    """(k, later) to run: a seeded sample of the points (every point with
    ``SIGINT_POINTS=all``), each deferred signal delivered again at the next
    point, or (a quarter of them) some points later."""
    rng = random.Random(f"{SEED} {name} {options}")
    n = events(name, options)
    ks = range(n) if ALL_POINTS else sorted(rng.sample(range(n), min(sample, n)))
    for k in ks:
        yield k, 0 if rng.random() < 0.75 else rng.randrange(1, 40)


def warm_up() -> None:
    """Once per process: CPython 3.12.1 sends no opcode events in the first
    ``sys.settrace`` session that asks for them; and make the first
    RangeLockManager of the main thread (it installs ``_ki``'s handler)."""

    def traced() -> None:
        pass

    sys.settrace(lambda frame, event, arg: setattr(frame, "f_trace_opcodes", True))
    try:
        traced()
    finally:
        sys.settrace(None)
    RangeLockManager()
    assert _ki.installed(), "protection not installed: the simulated handler would be Python's"


def every_point_of(name: str, options: dict[str, Any], code: str) -> int:
    """Interrupt case ``name`` at each point of the code named ``code``
    (``"file.py:qualname"``, or its start) in turn, each checked by
    :func:`interrupt_at`; how many there were."""
    warm_up()
    n = events(name, options, only=code)
    assert n, f"{code} never runs in {name!r}"
    for k in range(n):
        interrupt_at(name, options, k, only=code)
    return n
