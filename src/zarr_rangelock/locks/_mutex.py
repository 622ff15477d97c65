"""Taking a briefly held ``threading.Lock`` without a lock convoy.

Design note
-----------
The lock table and the descriptor cache each guard their bookkeeping with one
``threading.Lock`` held for a few microseconds. Under the GIL, a plain
blocking ``acquire()`` on such a lock turns two busy threads into a *lock
convoy*: when thread B finds the lock taken (its holder A was preempted
inside the critical section), B releases the GIL and sleeps in the OS; when A
releases the lock, B is given it while B is still waiting for the GIL; A runs
on, asks for the lock again a few microseconds later, finds it held by B (who
cannot run: A has the GIL), and sleeps in turn. From then on every
acquisition costs two OS context switches. Measured on a 2-core machine: two
threads writing disjoint 64 KiB ranges of one MemoryStore key took 42-49 us
per write through the store, against 6-9 us for one thread.

:func:`wait_for` is what a caller does after a failed non-blocking attempt
(the uncontended case stays one C call, ``lock.acquire(False)``): it yields
the GIL with ``time.sleep(0)`` so a holder preempted inside its short
critical section can finish, tries again, and only after :data:`SPINS`
failed tries blocks in the OS. A thread that sleeps on the lock can still
end up owning it without the GIL, but the other threads then yield rather
than sleep, so it soon gets the GIL and the convoy does not persist. Without
a GIL (free-threaded builds) the same loop is a short spin-then-block, the
usual shape for a lock held for microseconds.
"""

from __future__ import annotations

import threading
import time

__all__ = ["SPINS", "wait_for"]

#: Non-blocking tries, each after yielding the GIL, before blocking in the OS.
SPINS = 100


def wait_for(lock: threading.Lock) -> None:
    """Acquire ``lock`` after ``lock.acquire(False)`` failed. Returns holding it.

    Use as ``if not lock.acquire(False): wait_for(lock)`` and release in a
    ``finally``; only for locks that are never held across blocking calls.
    """
    for _ in range(SPINS):
        time.sleep(0)  # lets a holder that lost the GIL mid-section finish
        if lock.acquire(False):
            return
    lock.acquire()
