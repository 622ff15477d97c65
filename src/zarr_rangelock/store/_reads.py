"""What a ``consistent_reads`` block lends to the reads made inside it.

Design note
-----------
``RangeLockedStore.consistent_reads(keys)`` holds each key shared, whole, and
the reads of those keys made inside the block skip their own locks: they
would otherwise queue behind a writer that waits for the block, which waits
for them. Which reads are "inside" is told by a context variable, and a
context variable is copied into every task created in the block, so a task
can outlive the block with it. A read may therefore skip locking only while
the grant it relies on is held by a block that is still running, and that
grant must stay held until the read is done.

So the block's grants live in a :class:`ReadHold` that *lends* them: a read
borrows the hold (refused once the block has ended: the read then locks as
usual), reads, and gives it back; the grants are released when the block has
ended and the last borrower is done, whichever comes last. A nested block
(in the same task, or in a task started inside the block) borrows the outer
hold for its whole length instead of taking those keys again, so its reads
see one state even if the outer block ends first. A borrowing read never
waits for anything, so delaying the release for it cannot deadlock.

Lending and giving back are protected from KeyboardInterrupt (``locks/_ki``),
so an interrupt cannot leave a hold lent forever.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections.abc import Awaitable, Callable, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING

from ..locks._holdall import hold_all_async
from ..locks._ki import protected

if TYPE_CHECKING:
    from ..locks._table import Grant, RangeLockManager

__all__ = ["NOT_LENT", "READ_HELD", "ReadHold"]

#: The holds this task (and the tasks it started) may read through, by
#: (store state uid, key). Never mutated: a block sets a new mapping.
READ_HELD: contextvars.ContextVar[Mapping[tuple[int, str], ReadHold]] = contextvars.ContextVar(
    "zarr_rangelock_read_held", default=MappingProxyType({})
)


class _NotLent:
    """The result of a read through a hold that no longer lends (the block ended)."""

    def __repr__(self) -> str:
        return "NOT_LENT"


NOT_LENT = _NotLent()


class ReadHold:
    """The shared whole-key grants of one ``consistent_reads`` block, lent to reads.

    Concurrency
    -----------
    Thread-safe (a worker thread started with ``asyncio.to_thread`` inside the
    block carries the block's context). The grants are released exactly once:
    by :meth:`close` if nothing is borrowed then, else by the last give-back.
    """

    __slots__ = ("_grants", "_lock", "_mgr", "_open", "_parents", "_users")

    def __init__(self, mgr: RangeLockManager) -> None:
        self._mgr = mgr
        self._grants: list[Grant] = []  # this block's own
        self._parents: list[ReadHold] = []  # outer holds it borrowed, one per key
        self._lock = threading.Lock()
        self._open = True
        self._users = 0

    @protected
    async def take(self, keys: list[str]) -> None:
        """Hold every key of ``keys`` (sorted) shared, whole, as this block's
        own grants, with this task as their holder, taken by the
        hold-and-wait rule (``locks/_holdall``: waiting for the first holds
        nothing; while holding some, each further wait is bounded, and on a
        timeout all are let go and the attempt starts over). Across
        processes the grants hold one lock-file description."""
        mgr = self._mgr
        task = asyncio.current_task()

        async def take(key: str, timeout: float | None) -> Grant:
            g = await mgr.acquire_async(key, [(0, None)], shared=True, timeout=timeout)
            mgr._hand_to(g, task)  # this block's task
            return g

        async def let_go(grants: list[Grant]) -> None:
            for g in reversed(grants):
                mgr.release(g)

        self._grants += await hold_all_async(keys, take, let_go)

    @protected
    def borrow_from(self, outer: ReadHold | None) -> bool:
        """Borrow ``outer`` (an enclosing block's hold) until this hold is
        released; False if there is none or it has ended."""
        if outer is None or not outer.borrow():
            return False
        self._parents.append(outer)
        return True

    def borrow(self) -> bool:
        """Borrow the hold if its block is still running; False (nothing
        borrowed) once it has ended. Pair a True with :meth:`give_back`."""
        with self._lock:
            if not self._open:
                return False
            self._users += 1
            return True

    @protected
    def give_back(self) -> None:
        with self._lock:
            self._users -= 1
            last = not self._open and self._users == 0
        if last:
            self._release()

    @protected
    def close(self) -> None:
        """The block ended: lend no more; release now unless something is borrowed."""
        with self._lock:
            self._open = False
            last = self._users == 0
            if not last:
                for g in self._grants:
                    g._holder = 0  # the borrowers release it, not the block's task
        if last:
            self._release()

    @protected
    def _release(self) -> None:
        try:
            while self._grants:
                self._mgr._release(self._grants.pop())
        finally:
            while self._parents:
                self._parents.pop().give_back()

    @protected
    def read_sync[T](self, read: Callable[[], T]) -> T | _NotLent:
        """``read()`` under the hold, or :data:`NOT_LENT` (nothing run) if it no longer lends."""
        if not self.borrow():
            return NOT_LENT
        try:
            return read()
        finally:
            self.give_back()

    @protected
    async def read[T](self, read: Callable[[], Awaitable[T]]) -> T | _NotLent:
        """Async :meth:`read_sync`."""
        if not self.borrow():
            return NOT_LENT
        try:
            return await read()
        finally:
            self.give_back()
