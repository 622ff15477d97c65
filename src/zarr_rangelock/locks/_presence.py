"""A process's presence in a root's lock file, and being alone there.

The design is ``_oslock``'s design note, "Alone": every process that locks in
a root holds the presence byte shared; one that holds it exclusive is alone
and takes no OS lock for a token hold; one that cannot become present knocks
and waits; the process alone stops being alone at a knock or when idle.
Its token holds look for a knock themselves, at most every :data:`WATCH_S`;
its *watcher* thread looks as often only while they do not, and else
sleeps :data:`WATCH_BUSY_S` (a thread that wakes every millisecond takes
the GIL from the writers at each wake: ``benchmarks/knobs.py`` measures
``write_chunk`` 1.04x as fast from 4 threads, 1.01x from one, against a
watcher waking every millisecond; in two runs on a machine whose threads
woke slower, 1.05-1.07x from 4 threads and from one, 1.07-1.12x from 4
threads writing in bursts, with 6-12% less CPU a chunk). This module is
that state machine for one :class:`~._oslock.OsLocks`, which it calls for
every ``fcntl`` (its descriptions, its errors).
"""

from __future__ import annotations

import threading
import time
import weakref
from fcntl import F_RDLCK, F_UNLCK, F_WRLCK
from typing import TYPE_CHECKING

from ._ki import protected, unprotected

if TYPE_CHECKING:
    from ._oslock import OsLocks

__all__ = [
    "ELIDED",
    "IDLE_S",
    "KNOCK_BYTE",
    "PRESENCE_BYTE",
    "RETRY_S",
    "WATCH_BUSY_S",
    "WATCH_S",
    "Presence",
]

#: The presence byte, past every key slot of the lock file (``_oslock``
#: checks that no slot and no prefix lock reaches it): held shared by every
#: process that locks in the root, exclusive by one that is alone.
PRESENCE_BYTE = 1 << 62
#: The knock byte: held shared by a process waiting to be present.
KNOCK_BYTE = PRESENCE_BYTE + 1
#: The handle of a token hold taken without an OS lock (a process alone).
ELIDED = -2
#: How often a process alone looks for a knock: its token holds, or else its watcher.
WATCH_S = 0.001
#: How long the watcher sleeps while the token holds look (it wakes at once
#: when one finds a knock): so long may a process arriving just after the
#: process alone stopped writing wait before the watcher looks.
WATCH_BUSY_S = 0.01
#: A process alone stops being alone after this long without a token hold.
IDLE_S = 0.05
#: How long after being alone ends (or a try fails) before trying again.
RETRY_S = 0.1

_monotonic = time.monotonic


class Presence:
    """One process's presence in one root (see the module and ``_oslock``).

    ``present`` and ``alone`` are read without the lock on the hot path (a
    stale value only sends a request the long way, where the lock decides).

    Concurrency
    -----------
    Thread-safe. Nothing here waits while holding its lock (the ``fcntl``
    calls under it never wait); :meth:`wait_in_kernel` waits without it.
    """

    __slots__ = (
        "_elided",
        "_elided_total",
        "_knock_seen",
        "_knocking",
        "_lock",
        "_look_at",
        "_owner",
        "_retry_at",
        "_tick",
        "_waits",
        "alone",
        "fd",
        "present",
    )

    def __init__(self, locks: OsLocks) -> None:
        # Weak: the OsLocks owns this, and its finaliser drops the presence
        # (a cycle would keep both, and the presence, until a collection).
        self._owner = weakref.ref(locks)
        self.fd = -1  # the description holding the presence (and knock) byte
        self.present = False  # the presence byte held (shared, or exclusive when alone)
        self.alone = False  # the presence byte held exclusive: token holds take no OS lock
        self._knocking = False  # the knock byte held: waiting to be present
        self._elided = 0  # token holds in flight without an OS lock
        self._elided_total = 0  # ever taken (the watcher's sign of life)
        self._retry_at = 0.0  # monotonic: when to try being alone again
        self._waits = 0  # requests of this process waiting (for another process)
        self._lock = threading.Lock()  # the fields above
        # While alone: when a token hold next looks for a knock (monotonic;
        # the last look was WATCH_S before), whether one found it, and the
        # watcher's wake-up (set by that hold). Written without the lock: a
        # stale read only makes a look early or late.
        self._look_at = 0.0
        self._knock_seen = False
        self._tick = threading.Event()

    @property
    def _locks(self) -> OsLocks:
        locks = self._owner()
        assert locks is not None  # (alive while its methods, or a watcher, run)
        return locks

    # ------------------------------------------------------------ present

    def become(self) -> bool:
        """Hold the presence byte shared if no process is alone; else knock
        (hold the knock byte, so that the one alone stops being alone) and
        return False. Never waits."""
        locks = self._locks
        with self._lock:
            if self.present:
                return True
            if self.fd < 0:
                self.fd = locks._description()
            if locks._setlk(self.fd, F_RDLCK, PRESENCE_BYTE, 1):
                self.present = True
                if self._knocking:
                    locks._setlk(self.fd, F_UNLCK, KNOCK_BYTE, 1)
                    self._knocking = False
                return True
            if not self._knocking:
                self._knocking = locks._setlk(self.fd, F_RDLCK, KNOCK_BYTE, 1)
            return False

    @unprotected
    def wait_in_kernel(self) -> None:
        """:meth:`become`, waiting in the kernel (``F_OFD_SETLKW``) for the
        process alone to stop being alone (it looks for the knock every
        :data:`WATCH_S`, or :data:`WATCH_BUSY_S` just after its writes)."""
        if self.become():
            return
        self._locks._setlkw(self.fd, F_RDLCK, PRESENCE_BYTE, 1)
        self.become()  # taken already: this only records it and stops knocking

    def begin_wait(self) -> None:
        """A request of this process starts waiting for another process."""
        with self._lock:
            self._waits += 1

    def end_wait(self) -> None:
        """A wait of :meth:`begin_wait` ended (granted, timed out, cancelled).
        The last one lets go of the knock byte unless present: a process
        that gave up must not keep another from being alone, and one still
        waiting (perhaps in the kernel, polling nothing) keeps knocking."""
        with self._lock:
            self._waits -= 1
            if not self._waits and self._knocking and not self.present:
                self._locks._setlk(self.fd, F_UNLCK, KNOCK_BYTE, 1)
                self._knocking = False

    # -------------------------------------------------------------- alone

    # try_elide and let_go_elided take the lock by hand (the hot path) and
    # are protected from KeyboardInterrupt (``_ki``): one between the
    # acquire and the release left the lock held for good.

    @protected
    def try_elide(self) -> bool:
        """For a token hold: True (counted in flight until
        :meth:`let_go_elided`) if this process is alone, trying to be at most
        every :data:`RETRY_S`; else False (the hold takes an OS lock)."""
        if self.alone or (_monotonic() >= self._retry_at and self._try_alone()):
            lock = self._lock
            lock.acquire()  # (not ``with``: the hot path; nothing here raises)
            if self.alone:
                self._elided += 1
                self._elided_total += 1
                lock.release()
                if _monotonic() >= self._look_at:
                    self._look()
                return True
            lock.release()
        return False

    def _look(self) -> None:
        """A token hold's look for a knock (see the module): at one (or if
        the kernel cannot tell), wake the watcher, which stops being alone.
        The hold itself stays elided: the watcher waits for it."""
        self._look_at = _monotonic() + WATCH_S
        if self._knocked_or_unknown():
            self._knock_seen = True
            self._tick.set()

    @protected
    def let_go_elided(self) -> None:
        """A token hold of :meth:`try_elide` is let go."""
        lock = self._lock
        lock.acquire()
        self._elided -= 1
        lock.release()

    def _try_alone(self) -> bool:
        """Take the presence byte exclusive if no other process is present
        or knocking, and start the watcher."""
        locks = self._locks
        if not locks.can_be_alone():
            self._retry_at = float("inf")  # shared locks only (or one flock): never alone
            return False
        if not self.become():
            self._retry_at = _monotonic() + RETRY_S
            return False
        with self._lock:
            if self.alone:
                return True
            now = _monotonic()
            if now < self._retry_at:  # (another thread's try, or a stop in progress)
                return False
            self._retry_at = now + RETRY_S
            if self._knocked() or not locks._setlk(self.fd, F_WRLCK, PRESENCE_BYTE, 1):
                return False
            self.alone = True
            self._look_at = now + WATCH_S
            self._knock_seen = False
            self._tick.clear()
        watcher = threading.Thread(
            target=self._watch, args=(locks,), name="zarr-rangelock alone", daemon=True
        )
        try:
            watcher.start()
        except RuntimeError:  # no new thread (interpreter shutdown): not alone without a watcher
            self._stop_alone(True)
            return False
        return True

    def _knocked(self) -> bool:
        """Whether another description holds the knock byte."""
        return self._locks._getlk_busy(self.fd, KNOCK_BYTE, 1)

    def _knocked_or_unknown(self) -> bool:
        """:meth:`_knocked`, True where the kernel cannot tell (as after a
        knock: a process alone stops being alone rather than guess)."""
        try:
            return self._knocked()
        except OSError:
            return True

    def _watch(self, locks: OsLocks) -> None:
        """The watcher of a process alone: stops being alone at a knock (a
        token hold's look finds it, or its own) or after :data:`IDLE_S`
        without a token hold. It looks itself every :data:`WATCH_S` while
        the token holds do not look (none looked in the last two), else
        sleeps :data:`WATCH_BUSY_S` or until a hold finds a knock: a process
        arriving just after the holds stopped waits at most about that
        long. (``locks`` keeps the owner alive meanwhile.)"""
        tick = self._tick
        seen, since = -1, _monotonic()
        sleep = WATCH_S
        knocked = True  # (if the loop raises: as after a knock)
        try:
            while True:
                tick.wait(sleep)
                if self._knock_seen:
                    break
                now, total = _monotonic(), self._elided_total
                if total != seen:
                    seen, since = total, now
                if now < self._look_at + WATCH_S:  # a hold looked in the last 2 WATCH_S
                    sleep = WATCH_BUSY_S  # the token holds look
                    continue
                sleep = WATCH_S
                if self._knocked_or_unknown():
                    break
                if now - since > IDLE_S:
                    knocked = False
                    break
        finally:
            self._stop_alone(knocked)

    def _stop_alone(self, knocked: bool) -> None:
        """No new token hold is elided; once those in flight are let go, the
        presence byte goes back to shared (never busy: a conversion). After
        a knock, not tried again for :data:`RETRY_S` (the process that
        knocked is then present); after an idle spell, at the next token.
        Should the conversion fail (the kernel out of lock records), it is
        tried again every ten :data:`WATCH_S` rather than left exclusive,
        which would keep every arriving process waiting."""
        with self._lock:
            self.alone = False
            self._retry_at = float("inf")  # not alone again before the presence is shared
        tick = threading.Event()
        while self._elided:  # (let-go holds only count down now)
            tick.wait(WATCH_S / 10)
        while True:
            with self._lock:
                try:
                    self._locks._setlk(self.fd, F_RDLCK, PRESENCE_BYTE, 1)
                except OSError:  # never seen for a conversion; tried until it goes
                    pass
                else:
                    self._retry_at = _monotonic() + RETRY_S if knocked else 0.0
                    return
            tick.wait(WATCH_S * 10)
