"""The shard writer's gate: one thread of the process at a time, handed over in time slices.

Design note
-----------
*What it is for.* Small uncompressed chunks are written in place by a few
microseconds of Python around system calls that let the GIL go
(``_fastpaths.GATE`` says why one thread at a time). A plain
``threading.Lock`` as the gate hands it over at almost every write when
several threads write: its release wakes a waiter, which on a second core
runs at once and takes the gate before the releasing thread is back for its
next chunk, so each chunk pays a sleep and a wake (about 0.9 voluntary
context switches a chunk from 4 threads, and 4 threads wrote 0.65-0.78x as
fast as one).

*Time slices.* Like the GIL, a thread keeps its turn for :data:`SLICE_S`:
leaving the gate within its slice wakes nobody, so it comes straight back in
for its next chunk. When its slice is up, leaving hands the gate to the
longest waiter (reserved for it: nobody else enters until it has), so every
waiter gets a turn, first come first served. A turn is twice the GIL's
switch interval: each hand-over leaves the gate empty while the next thread
wakes, and with turns of 10 ms instead of 5, 4 threads wrote
``write_chunk`` 1.00-1.01x as fast (``benchmarks/knobs.py``, medians of 16
paired rounds, three runs; 1.04x with shorter samples; one thread, which
hands nothing over, 1.00x; 0.98-1.04x in two runs on a machine whose
threads woke slower, 1.00x for threads writing in bursts): a small gain at
most, for which a waiter waits longer for its turn.

*The candidate.* A thread whose slice is not up may leave for good (its work
done, or other work first). So leaving with waiters and no candidate wakes
the longest waiter as the *candidate*: it looks every :data:`POLL_S` and
enters the first time it finds the gate free and not reserved. The other
waiters sleep until they are handed the gate or made the candidate. Cost:
about one wake a millisecond while threads wait, instead of one a chunk; a
thread that leaves for good holds the others up for at most one poll.
A look costs the writer more than the look: the candidate takes the GIL,
and the holder, back from its ``pwrite``, sleeps until the candidate lets
it go (about 3 voluntary context switches a look). Intervals that doubled
at each look finding the holder busy (cut at the end of the turn) were
measured and not kept: 4 threads writing ``write_chunk`` in a tight loop
went 1.01-1.09x as fast with 4-11% less CPU a chunk, but threads writing
bursts of 50-200 chunks between 5 ms of other work went 0.85-0.94x in four
scratch runs (each departure noticed up to a few milliseconds later;
intervals capped at 2 or 4 ms were no better than 1 ms either way). See
``git log``; ``benchmarks/knobs.py`` measures such bursts since.

*Interrupts and forks.* Entering and leaving are protected from
KeyboardInterrupt (``locks/_ki``); the waits are not, and a waiter
interrupted while waiting leaves the queue, passing on a hand-over or the
candidate's role it was given. A forked child starts with the gate open and
nobody waiting (:meth:`Gate._reset`, called by ``_fastpaths``'s fork hook):
the threads that held or waited do not exist there.

Complexity: entering and leaving are O(1) but for removing an interrupted
waiter (O(waiters)).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from threading import get_ident

from ..locks._ki import protected, unprotected

__all__ = ["POLL_S", "SLICE_S", "Gate"]

_monotonic = time.monotonic

#: How long a thread keeps the gate while others wait (a turn).
SLICE_S = 0.01
#: How often the candidate waiter looks whether the gate was left.
POLL_S = 0.001

_SLEEPS, _CANDIDATE, _HANDED = 0, 1, 2


class _Waiter:
    __slots__ = ("event", "ident", "role")

    def __init__(self, ident: int) -> None:
        self.ident = ident
        self.role = _SLEEPS
        self.event = threading.Event()


@unprotected
def _wait(event: threading.Event, timeout: float | None) -> None:
    """A waiter's sleep; Ctrl-C interrupts it (see the design note)."""
    event.wait(timeout)


class Gate:
    """One thread of the process at a time (see the design note).

    Used as ``with gate:``; ``acquire``/``release`` as a lock's (``acquire``
    always blocks, there is no timeout). Not reentrant.

    Concurrency
    -----------
    Thread-safe. Waiters are let in first come first served at the end of
    each turn (:data:`SLICE_S`); a turn may be cut short for the longest
    waiter when the holder leaves for good. An interrupted wait leaves
    nothing behind.
    """

    __slots__ = ("_candidate", "_holder", "_mutex", "_owner", "_reserved", "_since", "_waiters")

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        """Open, nobody waiting (a new instance's state; a forked child's)."""
        self._mutex = threading.Lock()
        self._holder = 0  # the thread inside, or 0
        self._owner = 0  # whose turn it is (since _since), or 0
        self._since = 0.0
        self._reserved = False  # the gate was handed to _owner, who has yet to enter
        self._waiters: deque[_Waiter] = deque()
        self._candidate: _Waiter | None = None

    def locked(self) -> bool:
        """Whether a thread is inside."""
        return self._holder != 0

    def _enter(self, me: int) -> None:
        # Under the mutex, the gate free for ``me``.
        if self._owner != me:
            self._owner, self._since = me, _monotonic()
        self._reserved = False
        self._holder = me

    @protected
    def acquire(self) -> bool:
        """Enter, waiting for the holder's turn to end or for it to leave."""
        me = get_ident()
        mutex = self._mutex
        mutex.acquire()  # (not ``with``: this runs for every chunk; nothing here raises)
        if not self._holder and (not self._reserved or self._owner == me):
            # (_enter inlined: the writer's hot path, once a chunk)
            if self._owner != me:
                self._owner, self._since = me, _monotonic()
            self._reserved = False
            self._holder = me
            mutex.release()
            return True
        w = _Waiter(me)
        self._waiters.append(w)
        mutex.release()
        try:
            while True:
                _wait(w.event, POLL_S if w.role == _CANDIDATE else None)
                with mutex:
                    if w.role == _HANDED or (not self._holder and not self._reserved):
                        self._waiters.remove(w)
                        if self._candidate is w:
                            self._candidate = None
                        self._enter(me)
                        return True
                    w.event.clear()
        except BaseException:
            self._abandon(w)
            raise

    @protected
    def _abandon(self, w: _Waiter) -> None:
        """An interrupted waiter leaves, passing on what it was given."""
        with self._mutex:
            if w in self._waiters:
                self._waiters.remove(w)
            if self._candidate is w:
                self._candidate = None
            if w.role == _HANDED and self._reserved and self._owner == w.ident:
                self._reserved, self._owner = False, 0
            if not self._holder:
                self._wake()

    @protected
    def release(self, *_exc: object) -> None:
        """Leave: the next waiter is handed the gate if this turn is up, else
        (if there is none yet) made the candidate. (Also ``__exit__``.)"""
        mutex = self._mutex
        mutex.acquire()
        self._holder = 0
        if self._waiters:
            self._wake()
        mutex.release()

    def _wake(self) -> None:
        # Under the mutex, nobody inside.
        waiters = self._waiters
        if not waiters or self._reserved:
            return
        now = _monotonic()
        if now - self._since > SLICE_S:
            w = waiters[0]  # (it leaves the queue when it enters)
            if self._candidate is w:
                self._candidate = None
            w.role = _HANDED
            self._owner, self._since, self._reserved = w.ident, now, True
            w.event.set()
        elif self._candidate is None:
            w = waiters[0]
            w.role = _CANDIDATE
            self._candidate = w
            w.event.set()

    # The same protected code as acquire and release: no call in between.
    __enter__ = acquire
    __exit__ = release
