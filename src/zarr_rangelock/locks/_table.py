"""The lock table: per-key byte-range locks shared by threads and asyncio tasks.

Design note
-----------
*Fairness.* Every request gets a sequence number when it arrives. A request
waits for every earlier request, held or still queued, that it conflicts with
(overlapping ranges on the same key, at least one of the two exclusive), and
for nothing else. So a request that conflicts with nothing is granted at once
even while other requests wait on the key; a whole-key ``set`` queued behind
range writers is never overtaken by later range writers that overlap it; and
readers never starve a writer. Because a granted request still conflicts with
the later ones it blocked, "wait until every earlier conflicting request is
gone" is the same as strict FIFO among conflicting requests, and we implement
it by counting: a waiter stores how many earlier conflicting entries exist
(``_nblockers``) and each of those entries lists the waiters it blocks
(``_blocks``). Removing an entry decrements the count of each waiter it
blocks and grants those that reach zero: ``O(k)`` work, no rescans of the
queue. An atomic multi-range request is one entry with several ranges, so it
holds one place in the queue and is granted all at once or not at all.

*Threads and asyncio.* One ``threading.Lock`` (``_mutex``) guards the table;
it is held only for bookkeeping, never across an ``await``, a syscall or a
user callback. A sync waiter parks on a private pre-acquired
``threading.Lock``; an async waiter awaits a future of its own loop. The
granting side only flips the entry to held under the mutex and, after
releasing it, unparks the thread or schedules the future's result with
``loop.call_soon_threadsafe``, so a thread, another loop or the waiter's own
loop can release and wake anyone.

*Cancellation and timeouts.* Under the mutex a waiter is either still waiting
or already granted. A timed-out waiter that finds itself granted keeps the
grant (the grant won the race, the call succeeds). A cancelled asyncio waiter
(or a thread interrupted by an exception) that finds itself granted releases
the grant, handing it on, before re-raising, as ``asyncio.Lock`` does. A
waiter that is still waiting removes itself and wakes whoever it alone was
blocking. Either way nothing is left held.

*Data structure.* A key's entries, a :class:`~zarr_rangelock.locks._queue.KeyQueue`,
are cut into segments at each exclusive whole-key request: a request after
one waits only for it and for the later conflicting ones (it waits for the
rest), so ``n`` whole-key writers queued on one key cost ``O(n)``, not
``O(n^2)``. A segment's :class:`~zarr_rangelock.locks._index.RangeIndex`
finds overlaps in ``O(log n + k)``. A key with no entries leaves the table.
Two cheaper forms cover the common cases: a key held by one request alone
maps to that Grant; and the store's write path (and the shard writer's
write of one chunk in place) holds a range with a bare
``(start, end, seq)`` tuple, a *token* (a Grant costs more than the rest of
its bookkeeping), while the key is free or held only by a few other tokens
on disjoint ranges; the tokens become equivalent held Grants
(:meth:`RangeLockManager._promote`) the moment any other request or prefix
lock needs to look at the key. Prefix locks (``delete_dir``, ``clear``) are
rare and kept in a plain list checked by every request while it is non-empty.

*Other processes.* A table may have OS locks attached (``_os``, an
:class:`~zarr_rangelock.locks._oslock.OsLocks`; the store attaches them for a
LocalStore root). Then every request, once granted here, also takes the same
ranges as an OS lock, waiting only for other processes, within what is left
of its timeout; a timeout or cancellation there releases the grant here, so
nothing is left held. Release drops the OS lock first. The token fast path
only tries the OS lock and, if another process holds the range, gives the
token back and lets the caller take the general path. Fairness inside the
process stays the table's; ``_oslock`` explains the rest.
"""

from __future__ import annotations

import asyncio
import threading
import time
from _thread import get_ident
from collections.abc import Iterable

from .._errors import LockTimeout, WouldBlock
from ._grant import (
    _GONE,
    _HELD,
    _NEW,
    _WAITING,
    TOKENS_MAX,
    Grant,
    LockStats,
    _conflict,
    _resolve,
    _Token,
)
from ._inspect import Inspection
from ._ki import install as _install_ki
from ._ki import protected, unprotected
from ._lockfile import spans_for
from ._mutex import wait_for
from ._oslock import OsLocks
from ._owners import refuse_self_wait, requester
from ._queue import KeyQueue
from ._ranges import (
    INF,
    MAX_OFFSET,
    RangeSpec,
    check_key,
    check_range,
    check_shared,
    check_timeout,
    normalize_ranges,
    public_ranges,
)
from ._tokens import TokenHolds

_current_task = asyncio.current_task

#: How a request waits, for ``_enqueue``'s self-wait check.
BLOCKS, AWAITS = 1, 2
#: A whole key's ranges (a prefix lock's too).
_WHOLE = ((0, INF),)

__all__ = ["TOKENS_MAX", "Grant", "LockStats", "RangeLockManager"]


class RangeLockManager(TokenHolds, Inspection):
    """Per-key byte-range locks, shared by threads and asyncio tasks.

    A key is any string (a store path). A request names one key, one or more
    half-open byte ranges ``[start, end)`` on it (``end=None`` means to the end
    of the key) and a mode: exclusive (for writes) or shared (for reads).

    Requests on different keys, on disjoint ranges, or shared requests on
    overlapping ranges are granted in parallel. Conflicting requests are
    granted in strict FIFO order: a request waits for every earlier request,
    held or queued, that it conflicts with, and for nothing else.

    Concurrency
    -----------
    All methods are thread-safe. One manager serves any number of threads and
    event loops at once: a thread and an asyncio task contending for the same
    range exclude each other, sync waits block only the calling thread, async
    waits never block their event loop, and any thread or loop may release a
    grant another one is waiting on. See the module's design note for the
    fairness, cancellation and timeout rules.

    Notes
    -----
    Costs, ``n`` entries on the key, ``k`` conflicting ones since the last
    exclusive whole-key one: acquire ``O(log n + k)``, release ``O(log n + w)``
    for ``w`` waiters it unblocks. A key with no entries keeps no state.
    """

    def __init__(self) -> None:
        _install_ki()  # KeyboardInterrupt never leaks a grant (see _ki)
        self._mutex = threading.Lock()
        # Cross-process locks taken after each in-process grant (see _oslock);
        # set by the store's shared state for a LocalStore root.
        self._os: OsLocks | None = None
        # A key's entries: a KeyQueue; or the one Grant that holds the key
        # alone; or (the store's hot path, see _run_if_free) a list of
        # _Tokens, holders too cheap to be Grants until someone else needs
        # the key.
        self._keys: dict[str, KeyQueue | Grant | list[_Token]] = {}
        # Tokens turned into Grants while held, by id(token), for their release.
        self._promoted: dict[int, Grant] = {}
        self._prefixes: list[Grant] = []
        self._seq = 0
        self._grants = 0
        self._waits = 0
        self._timeouts = 0
        self._cancellations = 0
        self._total_wait = 0.0
        self._max_wait = 0.0
        self._holders = 0
        self._waiters = 0
        self._max_depth = 0

    # ------------------------------------------------------------------ core

    def _key_blockers(self, g: Grant) -> list[Grant]:
        """What the new key request ``g`` waits for on its key (KeyQueue rule). Under the mutex."""
        st = self._keys.get(g._key)
        if st is None:
            return []
        if type(st) is list:
            st = self._promote(g._key)  # a waiter needs Grants to queue behind
        if isinstance(st, Grant):
            return [st] if _conflict(st, g) else []
        assert type(st) is KeyQueue
        return st.blockers(g)

    def _blockers(self, g: Grant) -> list[Grant]:
        """Every live entry that conflicts with the new entry ``g``. Under the mutex."""
        if not g._prefix:
            hits = self._key_blockers(g)
            if not self._prefixes:
                return hits  # the common case
            found = {h._seq: h for h in hits}
        else:
            found = {}
            for key in [k for k, st in self._keys.items() if type(st) is list]:
                if key.startswith(g._key):
                    self._promote(key)
            for key, st in self._keys.items():
                if key.startswith(g._key):
                    if isinstance(st, Grant):
                        found[st._seq] = st
                    else:
                        assert type(st) is KeyQueue
                        for h in st.entries():
                            found[h._seq] = h
        for p in self._prefixes:
            if _conflict(p, g):
                found[p._seq] = p
        return list(found.values())

    def _insert(self, g: Grant) -> None:
        if g._prefix:
            self._prefixes.append(g)
            return
        st = self._keys.get(g._key)
        if type(st) is not KeyQueue:
            solo = st
            assert type(solo) is not list  # _blockers promoted it
            st = self._keys[g._key] = KeyQueue()
            if type(solo) is Grant:
                st.insert(solo)
        st.insert(g)

    def _enqueue(self, g: Grant, nowait: bool, waiter: int) -> None:
        """Admit ``g``: grant it at once or queue it behind its blockers. Under the mutex.

        ``waiter``: how the requester would wait with no timeout, ``BLOCKS``
        (its thread) or ``AWAITS`` (its task), to refuse a wait for its own
        block (``_owners``); 0 with a timeout (the wait ends anyway).
        """
        blockers = self._blockers(g)
        if not blockers:
            self._insert(g)
            g._state = _HELD
            self._grants += 1
            self._holders += 1
            return
        if nowait:
            raise WouldBlock(g._key, public_ranges(g._ranges))
        if waiter:
            awaits = waiter == AWAITS
            refuse_self_wait(g, blockers, awaits)
            # also the held entries it would wait for through a queued barrier
            kq = None if g._prefix else self._keys.get(g._key)
            if type(kq) is KeyQueue and (held := kq.held_ahead(requester(awaits))):
                refuse_self_wait(g, held, awaits, behind=kq.tail.barrier)
        g._nblockers = len(blockers)
        self._insert(g)
        g._state = _WAITING
        for b in blockers:
            if b._blocks is None:
                b._blocks = [g]
            else:
                b._blocks.append(g)
        g._t0 = time.perf_counter()
        self._waits += 1
        self._waiters += 1
        if g._prefix:
            depth = sum(1 for p in self._prefixes if p._state == _WAITING)
        else:
            st = self._keys[g._key]
            assert type(st) is KeyQueue  # _insert made it one
            st.nwaiting += 1
            depth = st.nwaiting
        if depth > self._max_depth:
            self._max_depth = depth

    def _drop(self, g: Grant, was_waiting: bool) -> None:
        """Take ``g`` out of its key (or the prefix list) and the counts, waking
        nobody (:meth:`_remove` does that). Under the mutex."""
        g._state = _GONE
        if g._prefix:
            self._prefixes.remove(g)
        elif (st := self._keys[g._key]) is g:
            del self._keys[g._key]
        else:
            assert type(st) is KeyQueue
            st.remove(g, was_waiting)  # first: may add to the counts counted off later
            if was_waiting:
                st.nwaiting -= 1
            if st.n == 0:
                del self._keys[g._key]
        if was_waiting:
            self._waiters -= 1
        else:
            self._holders -= 1

    def _remove(self, g: Grant) -> list[Grant]:
        """Take ``g`` out of the table; return the waiters it made grantable. Under the mutex."""
        self._drop(g, g._state == _WAITING)
        woken: list[Grant] = []
        blocks, g._blocks = g._blocks, None
        if blocks:
            now = time.perf_counter()
            for w in blocks:
                if w._state != _WAITING:
                    continue  # abandoned earlier; its slot is gone already
                w._nblockers -= 1
                if w._nblockers == 0:
                    w._state = _HELD
                    self._waiters -= 1
                    self._holders += 1
                    self._grants += 1
                    if not w._prefix:
                        kq = self._keys[w._key]
                        assert type(kq) is KeyQueue  # waiters live in a KeyQueue
                        kq.nwaiting -= 1
                        kq.note_holder(w)
                    waited = now - w._t0
                    self._total_wait += waited
                    if waited > self._max_wait:
                        self._max_wait = waited
                    woken.append(w)
        return woken

    @protected
    def _wake(self, woken: list[Grant]) -> None:
        """Unpark granted waiters. Called without the mutex."""
        while woken:
            w = woken.pop()
            waker = w._waker
            w._waker = None
            if waker is None:
                continue
            if type(waker) is tuple:
                loop, fut = waker
                try:
                    loop.call_soon_threadsafe(_resolve, fut)
                except RuntimeError:
                    # The waiter's loop is closed: nobody can ever take this
                    # grant, so release it rather than leak it.
                    with self._mutex:
                        if w._state == _HELD:
                            woken.extend(self._remove(w))
            else:
                waker.release()

    @protected
    def _abandon(self, g: Grant, *, timed_out: bool) -> bool:
        """Clean up after a waiter stopped waiting. Return True if it keeps the grant.

        A timed-out waiter that was granted meanwhile keeps the grant; a
        cancelled one hands it on. A waiter still queued leaves the queue.
        """
        with self._mutex:
            if g._state == _HELD and timed_out:
                return True
            woken: list[Grant] = []
            if g._state != _GONE:
                woken = self._remove(g)
            if timed_out:
                self._timeouts += 1
            else:
                self._cancellations += 1
        self._wake(woken)
        return False

    def _admit(self, g: Grant, nowait: bool, waiter: int = 0) -> None:
        """Number ``g`` and grant or queue it. Under the mutex."""
        if g._state != _NEW:
            raise RuntimeError(f"{g!r} was requested already; make one request per 'with'")
        if not g._prefix and self._hold_at_once(g):
            return  # fast path, the common case: nothing on this key conflicts
        self._seq += 1
        g._seq = self._seq
        self._enqueue(g, nowait, waiter)

    def _hold_at_once(self, g: Grant) -> bool:
        """Grant the key request ``g`` if it is cheap to see that nothing on its
        key conflicts with it; else False and nothing changes. Under the mutex.

        Cheap: the key has no entries (``g`` is then stored as its lone
        holder), or one segment (no barrier) and no entry, held or queued,
        that conflicts with ``g`` (:meth:`KeyQueue.hold_if_free`). By the
        fairness rule such a request is granted at once, so this agrees with
        :meth:`_enqueue`; it only skips the general machinery. Two threads
        writing disjoint ranges of one key take this path on every write.
        """
        if self._prefixes:
            return False
        keys = self._keys
        st = keys.get(g._key)
        if st is None:
            self._seq += 1
            g._seq = self._seq
            keys[g._key] = g
        elif type(st) is not KeyQueue or not st.hold_if_free(g, self._seq + 1):
            return False
        else:
            self._seq += 1
        g._state = _HELD
        self._grants += 1
        self._holders += 1
        return True

    def _hand_to(self, g: Grant, holder: object) -> None:
        """Make the task ``holder`` the holder of ``g``, a grant handed over
        with holder 0 (``acquire_async``) that a block keeps (the store's
        consistent reads), so the self-wait check (``_owners``) sees it."""
        with self._mutex:
            g._holder = holder
            kq = None if g._prefix else self._keys.get(g._key)
            if type(kq) is KeyQueue:
                kq.note_holder(g)

    # Acquiring and releasing are protected from KeyboardInterrupt (``_ki``);
    # only the waits inside (``_park``, the OS lock's) can be interrupted, and
    # an interrupted wait is abandoned here before the exception propagates.
    # ``scoped``: the caller is a with block, whose thread or task becomes the
    # grant's holder (``_owners``); else the holder is 0 (may be passed on).

    @protected
    def _acquire(
        self, g: Grant, timeout: float | None, scoped: bool = False, retried: bool = False
    ) -> Grant:
        """``scoped``: the grant is this thread's ``with`` block's. ``retried``: the
        caller retries a timeout for ever (a replay): a self-wait is refused."""
        if timeout is not None:  # first, before max(timeout, 0) below
            timeout = check_timeout(g._key, timeout)
        waiter = BLOCKS if timeout is None or retried else 0
        os_locks = self._os
        if os_locks is None:
            self._acquire_local(g, timeout, waiter)
        else:
            deadline = None if timeout is None else time.monotonic() + max(timeout, 0)
            self._acquire_local(g, timeout, waiter)
            if os_locks.ready():
                spans = spans_for(g._key, g._ranges, g._prefix)
                try:
                    held = os_locks.hold(spans, g._shared, deadline, g._cover)
                except BaseException:
                    self._release(g)
                    raise
                self._keep_os(g, held, timeout)
        g._holder = get_ident() if scoped else 0  # handed over
        return g

    @protected
    async def _acquire_async(self, g: Grant, timeout: float | None, scoped: bool = False) -> Grant:
        if timeout is not None:  # first, before max(timeout, 0) below
            timeout = check_timeout(g._key, timeout)
        os_locks = self._os
        if os_locks is None:
            await self._acquire_local_async(g, timeout)
        else:
            deadline = None if timeout is None else time.monotonic() + max(timeout, 0)
            await self._acquire_local_async(g, timeout)
            if os_locks.ready():
                spans = spans_for(g._key, g._ranges, g._prefix)
                try:
                    held = await os_locks.hold_async(spans, g._shared, deadline, g._cover)
                except BaseException:  # cancelled while waiting: nothing is held by the OS
                    self._release(g)
                    raise
                self._keep_os(g, held, timeout)
        g._holder = _current_task() if scoped else 0  # handed over
        return g

    @protected
    def _keep_os(self, g: Grant, held: int | None, timeout: float | None) -> None:
        """Attach the OS lock ``held`` to the in-process grant ``g``; if the OS
        wait timed out (``held`` is None), release ``g`` and raise LockTimeout.
        An exclusive whole-key (or prefix) lock has its change stamp backed
        first (``OsLocks.back``; an ``OSError`` releases ``g``)."""
        if held is not None:
            g._os = held
            if not g._shared and g._ranges == _WHOLE:
                try:
                    self._os.back(g._key, g._prefix)  # type: ignore[union-attr]  # held implies _os
                except BaseException:
                    self._release(g)
                    raise
            return
        self._release(g)
        with self._mutex:
            self._timeouts += 1
        raise LockTimeout(g._key, g.ranges, timeout)  # type: ignore[arg-type]  # None only with a timeout

    @protected
    def _acquire_local(self, g: Grant, timeout: float | None, waiter: int) -> Grant:
        # timeout: checked by _acquire (check_timeout); waiter: as _enqueue's
        mutex = self._mutex
        if not mutex.acquire(False):
            wait_for(mutex)
        try:
            self._admit(g, False, waiter)
            if g._state == _HELD:
                return g
            parker = threading.Lock()
            parker.acquire()
            g._waker = parker
        finally:
            mutex.release()
        try:
            ok = _park(parker, -1 if timeout is None else timeout)
        except BaseException:
            self._abandon(g, timed_out=False)
            raise
        if ok or self._abandon(g, timed_out=True):
            return g
        raise LockTimeout(g._key, g.ranges, timeout)  # type: ignore[arg-type]  # ok is False only with a timeout

    @protected
    async def _acquire_local_async(self, g: Grant, timeout: float | None) -> Grant:
        # timeout: checked by _acquire_async (check_timeout)
        mutex = self._mutex
        if not mutex.acquire(False):
            wait_for(mutex)
        try:
            self._admit(g, False, 0 if timeout is not None else AWAITS)
            if g._state == _HELD:
                return g
            loop = asyncio.get_running_loop()
            fut: asyncio.Future[None] = loop.create_future()
            g._waker = (loop, fut)
        finally:
            mutex.release()
        timed_out = False
        try:
            if timeout is None:
                await fut
            else:
                try:
                    async with asyncio.timeout(timeout):
                        await fut
                except TimeoutError:
                    timed_out = True
        except BaseException:
            self._abandon(g, timed_out=False)
            raise
        if not timed_out or self._abandon(g, timed_out=True):
            return g
        raise LockTimeout(g._key, g.ranges, timeout)  # type: ignore[arg-type]  # timed out only with a timeout

    @protected
    def _release(self, g: Grant) -> None:
        """Release under one hold of the mutex; a holder nobody waits for (the
        common case) is just dropped from the table, without :meth:`_remove`."""
        held = g._os
        if held is not None:  # the OS lock goes first, outside the mutex (a syscall)
            g._os = None
            self._os.release(held)  # type: ignore[union-attr]  # set only with an _os
        mgr = self
        mutex = mgr._mutex
        if not mutex.acquire(False):
            wait_for(mutex)
        try:
            if g._state == _HELD and not g._blocks:  # _remove, with nobody to wake
                mgr._drop(g, False)
                return
            if g._state != _HELD:
                raise RuntimeError(f"{g!r} is not held by this manager")
            woken = mgr._remove(g)
        finally:
            mutex.release()
        if woken:
            mgr._wake(woken)

    # ------------------------------------------------------------ public API

    def _request(
        self, key: str, ranges: Iterable[RangeSpec], shared: bool, timeout: float | None = None
    ) -> Grant:
        check_key(key)
        mode = check_shared(key, shared)
        return Grant(self, key, normalize_ranges(key, ranges), mode, False, timeout)

    def _request_one(
        self, key: str, start: int, end: int | None, shared: bool, timeout: float | None
    ) -> Grant:
        if (
            type(key) is str
            and type(start) is int
            and type(end) is int
            and 0 <= start < end <= MAX_OFFSET
            and (shared is False or shared is True)
        ):  # fast path: already valid
            return Grant(self, key, ((start, end),), shared, False, timeout)
        check_key(key)
        mode = check_shared(key, shared)
        return Grant(self, key, (check_range(key, start, end),), mode, False, timeout)

    def _request_prefix(self, prefix: str, timeout: float | None) -> Grant:
        check_key(prefix)
        return Grant(self, prefix, _WHOLE, False, True, timeout)

    def acquire(
        self,
        key: str,
        ranges: Iterable[RangeSpec],
        *,
        shared: bool = False,
        timeout: float | None = None,
    ) -> Grant:
        """Block until all of ``ranges`` of ``key`` are held; return the grant.

        Parameters
        ----------
        key : str
            The key.
        ranges : iterable of (int, int or None)
            Half-open ``(start, end)`` ranges, ``end=None`` for "to the end".
            Granted all together or not at all; they hold one place in the queue.
        shared : bool
            Shared (read) instead of exclusive (write) mode.
        timeout : float or None
            Seconds to wait at most; ``None`` (or infinity) waits forever.

        Returns
        -------
        Grant
            Pass it to :meth:`release`.

        Raises
        ------
        LockTimeout
            (a ``TimeoutError``) if the ranges were not granted in time.
        TypeError, ValueError
            For a non-str key, non-int offsets, negative starts, empty or
            inverted ranges, an empty range list, or a timeout that is not a
            real number (``TypeError``), negative or NaN (``ValueError``).

        Concurrency
        -----------
        Thread-safe; blocks only the calling thread (do not call it on an
        event loop's thread: use :meth:`acquire_async`). Waits in FIFO order
        behind every earlier conflicting request. On timeout the request
        leaves the queue and wakes whoever it alone was blocking; if the grant
        raced the timeout and won, the call succeeds. An exception raised into
        the waiting thread (e.g. ``KeyboardInterrupt``) releases or dequeues
        the request before propagating.
        """
        return self._acquire(self._request(key, ranges, shared), timeout)

    async def acquire_async(
        self,
        key: str,
        ranges: Iterable[RangeSpec],
        *,
        shared: bool = False,
        timeout: float | None = None,
    ) -> Grant:
        """Wait, without blocking the event loop, until ``ranges`` of ``key`` are held.

        Parameters and errors as :meth:`acquire`.

        Concurrency
        -----------
        Never blocks the event loop; may be woken by a release on any thread
        or loop. Cancellation while queued removes the request and re-raises
        ``CancelledError``; a grant that raced the cancellation is released
        (handed on) before re-raising, so nothing leaks. Timeout behaves as in
        :meth:`acquire`.
        """
        return await self._acquire_async(self._request(key, ranges, shared), timeout)

    def acquire_nowait(
        self, key: str, ranges: Iterable[RangeSpec], *, shared: bool = False
    ) -> Grant:
        """Take ``ranges`` of ``key`` if that needs no waiting, else raise :class:`WouldBlock`.

        Concurrency
        -----------
        Thread-safe and never blocks. Refuses (rather than overtakes) when an
        earlier queued request conflicts, so it keeps FIFO fairness.
        """
        return self._acquire_nowait(self._request(key, ranges, shared))

    @protected
    def _acquire_nowait(self, g: Grant) -> Grant:
        with self._mutex:
            self._admit(g, True)
        g._holder = 0
        os_locks = self._os
        if os_locks is not None and os_locks.ready():
            try:
                held = os_locks.try_hold(spans_for(g._key, g._ranges, False), g._shared, g._cover)
            except BaseException:
                self._release(g)
                raise
            if held is None:  # another process holds it
                self._release(g)
                raise WouldBlock(g._key, g.ranges)
            self._keep_os(g, held, None)
        return g

    def acquire_prefix(self, prefix: str, *, timeout: float | None = None) -> Grant:
        """Block until every key starting with ``prefix`` is exclusively held.

        The lock covers keys that do not exist yet: requests on any key under
        the prefix queue behind it. ``""`` covers every key.

        Concurrency
        -----------
        As :meth:`acquire`: FIFO behind every earlier request on a key under
        the prefix and every earlier overlapping prefix lock.
        """
        return self._acquire(self._request_prefix(prefix, None), timeout)

    async def acquire_prefix_async(self, prefix: str, *, timeout: float | None = None) -> Grant:
        """Async twin of :meth:`acquire_prefix`; see :meth:`acquire_async` for cancellation."""
        return await self._acquire_async(self._request_prefix(prefix, None), timeout)

    def release(self, grant: Grant) -> None:
        """Release a held grant and wake the waiters it was blocking.

        Raises
        ------
        TypeError
            If ``grant`` is not a :class:`Grant`.
        RuntimeError
            If ``grant`` is not held (released twice, or from another manager).

        Concurrency
        -----------
        Thread-safe; may be called from any thread or loop, not only the one
        that acquired. Never blocks beyond bookkeeping.
        """
        if not isinstance(grant, Grant):
            raise TypeError(
                "release() takes a Grant returned by this manager's acquire methods, "
                f"got {type(grant).__name__}: {grant!r}"
            )
        if grant._owner is not self:
            raise RuntimeError(f"{grant!r} is not held by this manager")
        self._release(grant)

    # ------------------------------------------------------ context managers

    def lock(
        self,
        key: str,
        start: int = 0,
        end: int | None = None,
        *,
        shared: bool = False,
        timeout: float | None = None,
    ) -> Grant:
        """Context manager holding ``[start, end)`` of ``key``: ``with mgr.lock(k, 0, 64): ...``.

        ``end=None`` means to the end of the key, so ``mgr.lock(k)`` is a
        whole-key lock. Validation happens at once; acquiring on ``__enter__``.
        See :meth:`acquire` for parameters, errors and concurrency.
        """
        return self._request_one(key, start, end, shared, timeout)

    def lock_ranges(
        self,
        key: str,
        ranges: Iterable[RangeSpec],
        *,
        shared: bool = False,
        timeout: float | None = None,
    ) -> Grant:
        """Context manager holding several ranges of ``key`` atomically (see :meth:`acquire`)."""
        return self._request(key, ranges, shared, timeout)

    def _lock_runs(self, key: str, runs: list[tuple[int, int]]) -> Grant:
        """:meth:`lock_ranges` (exclusive, no timeout) of ranges the caller has
        already made canonical: valid, ascending, neither overlapping nor
        touching. For the shard writer's hot path (no check here); one OS
        span over all of them is tried first (``_oslock``: "One span")."""
        return Grant(self, key, tuple(runs), False, False, None, cover=True)

    def lock_prefix(self, prefix: str, *, timeout: float | None = None) -> Grant:
        """Context manager for :meth:`acquire_prefix`."""
        return self._request_prefix(prefix, timeout)

    def lock_async(
        self,
        key: str,
        start: int = 0,
        end: int | None = None,
        *,
        shared: bool = False,
        timeout: float | None = None,
    ) -> Grant:
        """Async context manager: ``async with mgr.lock_async(k, 0, 64): ...``.

        See :meth:`acquire_async` for cancellation and timeouts.
        """
        return self._request_one(key, start, end, shared, timeout)

    def lock_ranges_async(
        self,
        key: str,
        ranges: Iterable[RangeSpec],
        *,
        shared: bool = False,
        timeout: float | None = None,
    ) -> Grant:
        """Async context manager holding several ranges of ``key`` atomically."""
        return self._request(key, ranges, shared, timeout)

    def lock_prefix_async(self, prefix: str, *, timeout: float | None = None) -> Grant:
        """Async context manager for :meth:`acquire_prefix_async`."""
        return self._request_prefix(prefix, timeout)


@unprotected
def _park(parker: threading.Lock, timeout: float) -> bool:
    """Wait for ``parker`` (released by whoever grants the request); a
    KeyboardInterrupt interrupts the wait (see ``_ki``)."""
    return parker.acquire(timeout=timeout)
