"""Byte-range locks between processes: OFD locks on one lock file per store root.

Design note
-----------
*What is locked.* One file per LocalStore root, ``_lockfile.LOCK_FILE_NAME``
in the root, created on first use and never replaced or deleted by this
library (the store's ``clear`` and ``delete_dir("")`` keep it, its listings
hide it, and it is refused as a key). Every key hashes to a slot of the lock
file's offset space, and its ranges are locked at their offsets in the slot
(``_lockfile``); a prefix lock (``delete_dir``, ``clear``) locks every slot.
Keys that collide share a slot, which can only make requests of different
processes wait that need not (never the reverse); a process's own requests
do not wait for each other there (*Own holds*, below). One file per root,
not one per key (as TensorStore's ``<key>.__lock``): nothing to leak or to
clean up, and one name to hide.

*Why open-file-description locks, one description per held request.* Classic
POSIX ``fcntl`` locks belong to the process: every thread shares them, and
closing *any* descriptor of the file drops them all. OFD locks
(``F_OFD_SETLK``) belong to an open file description, so they exclude each
other even inside one process and survive other descriptors closing. Two
requests held through one description would merge (and one's unlock would
drop the other's), so each held request takes a description of its own from a
small pool (:class:`OsLocks`); releasing it is one ``F_UNLCK`` of the whole
file on that description. But for the holds of one call (next).

*One description per call.* A call that holds many keys at once (an array
write, ``consistent_reads``, a journal replay) takes its locks inside
:func:`~._own.one_call`, and there its requests of one mode on one lock file
share one description, released when the call's last request lets go
(``_own``).

*The pool's descriptors.* Each root keeps at most :data:`IDLE_MAX` idle
descriptions, and all roots together at most ``_fdbudget.idle_budget()``
(a sixteenth of the soft ``RLIMIT_NOFILE``, counted by lock-free permits,
so a request takes no extra lock); a description released beyond either is
closed. Opening one that fails with ``EMFILE``/``ENFILE`` closes every cached
and idle descriptor of the process and tries once more (``_fdbudget``), then
raises :class:`~zarr_rangelock.DescriptorLimitError`.

*Order of locking.* The in-process table grants first, in its FIFO order; the
OS lock is taken after, while the in-process grant is held; it is released
before the in-process grant. So inside a process fairness is the table's, and
the OS lock only ever waits for other processes (and, for an exclusive
request, for a shared hold of its own process on the same bytes: of a key
that shares its slot, or one its call keeps until the call's last release,
``_own``).
Between processes there is no FIFO: the kernel grants whoever asks when the
range is free.

*One span for a shard writer's group.* ``ShardWriter`` writes a group of
inner chunks of one shard under one multi-range request (``_lock_runs``),
whose ranges are mostly apart (chunks written in random order): one
``fcntl`` each, about 1.5 us, against about 17 us for the 64 KiB ``pwrite``
of each. Such a request (``cover``) first tries one span from its first
range's start to its last range's end, and takes its ranges one by one only
if that is busy. Like colliding keys, that can only make requests wait that
need not (a request for a chunk between the group's from another process
waits for the group's few ``pwrite`` calls; one from this process relies on
the span, *Own holds*), never the reverse. The
covering span is only ever tried, never waited for, so a request never waits
at the OS level for more than its own ranges while holding its in-process
grant (a thread holding one range and then asking for another, held by
such a waiter, could otherwise wait for it in a cycle).

*Own holds.* OFD locks of two descriptions exclude each other inside one
process too, and keys that share a slot (or a covering span and the chunks
between its ranges) overlap. The lock table orders a process's own
requests; its OS locks need only keep other processes out. So a request
whose span is busy *relies* on this process's exclusive holds that cover the
busy parts, and locks only the rest; a hold relied on stays locked until its
dependents let go (``_own`` has the rules and why they are safe).

*Alone.* Most programs are one process writing through many threads, and
there the two ``fcntl`` calls of a token hold (the store's ``set_range``, a
``ShardWriter``'s write of one chunk: the lock table's ``_hold_if_free``)
cost a third of such a write's Python. So a process that is provably the
only one locking in the root takes none for them. Every process that locks
in a root first holds the *presence byte*
(:data:`~._presence.PRESENCE_BYTE`, past every slot, so no prefix lock
covers it) shared, through a description of its own, until its ``OsLocks``
goes (or the process ends). A token hold tries, at most every
:data:`~._presence.RETRY_S`, to convert that lock to exclusive
(``F_OFD_SETLK`` never waits, and a failed conversion keeps the shared
lock): it succeeds only if no other process is present. While it holds the
byte exclusive the process is *alone*: no other process holds any lock in
the root or can take one (it must be present first), so the table's own
exclusion of token holds is all the exclusion there is, and token holds take
no OS lock (:data:`~._presence.ELIDED`). Other requests (Grants) still take
theirs. A process that cannot become present because another is alone
*knocks*: it holds the *knock byte* (:data:`~._presence.KNOCK_BYTE`) shared
and polls (or, for a sync request without a timeout, waits in the kernel for
the presence byte), and lets go of the knock when its last waiting request
ends without (a timeout, a cancellation). The process alone looks for a
knock (``F_OFD_GETLK``) every :data:`~._presence.WATCH_S`: its token holds
do, and its *watcher* thread while they do not (it then sleeps
:data:`~._presence.WATCH_BUSY_S`, or until a hold finds a knock). At a knock,
or after :data:`~._presence.IDLE_S` without a token hold, the watcher stops
eliding, waits until the elided holds in flight are let go, and converts
the byte back to shared, which lets the knocker in. So a process arriving
waits, whatever it asks for, about a millisecond plus the writes in flight
(up to :data:`~._presence.WATCH_BUSY_S` just after the writes of the process
alone stopped); a process alone that stops running
Python (stopped by a signal, or inside a C call that keeps the GIL) keeps
every arriving process waiting meanwhile. While a process knocks, no other
becomes alone. A process's presence is never dropped while it may hold a
lock: ``close`` keeps it (as it keeps the mapping). A forked child starts
absent, with descriptions of its own (``_osfork``). Read-only lock files and the ``flock``
fallback are never alone.

*Waiting.* A multi-range request takes its ranges in ascending order. Sync
requests without a timeout block in ``F_OFD_SETLKW``. Every other wait (a
timeout, async callers, the store's fast path) polls ``F_OFD_SETLK`` with
exponential backoff from :data:`~._ofd.POLL_MIN_S` to
:data:`~._ofd.POLL_MAX_S`, holding nothing in between (a partly granted
multi-range request lets go before it sleeps), so timeouts are honoured,
cancellation leaves nothing held and the event loop is never blocked.

*Change stamps*, *Other machines* (a network filesystem) and *Nested
roots*: the lock file's own, ``_osfile``.

*Where OFD locks are missing* (a kernel before 3.15, or not Linux:
:func:`~._ofd.ofd_supported`), a process holds one exclusive ``flock`` of the
whole lock file while any of its requests holds anything (counted; taken
without waiting, polled like the rest): just as safe, requests inside the
process still run in parallel (the table orders them), but processes then
exclude each other entirely, readers included. A :class:`CrossProcessWarning`
says so once. A filesystem that refuses locks (``ENOLCK``, some network
mounts) raises :class:`~zarr_rangelock.CrossProcessLockError` rather than run
unprotected.

*Forks.* A forked child neither keeps nor uses the descriptions it inherits
(``_osfork``).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import mmap
import os
import sys
import threading
import time

from .._errors import CrossProcessLockError, DescriptorLimitError
from . import _fdbudget
from ._ki import protected, unprotected
from ._lockfile import LOCK_FILE_NAME, FileStamps, Span, range_span
from ._ofd import (
    _BUSY,
    _F_RDLCK,
    _F_UNLCK,
    _F_WRLCK,
    _FLOCK,
    _GETLK,
    _SETLK,
    _SETLKW,
    _UNLOCK_ALL,
    _pause,
    _pauses,
)
from ._osfile import LockFile
from ._osfork import _live
from ._own import CALL, Call, OwnHolds
from ._presence import ELIDED, Presence

__all__ = ["OsLocks"]

#: Idle descriptions kept per lock file for reuse (and process-wide at most
#: ``_fdbudget.idle_budget()``, see the design note).
IDLE_MAX = 64

#: Permits for idle descriptions, shared by every root of the process.
_IDLE_PERMITS = _fdbudget.Permits(_fdbudget.idle_budget)


class OsLocks(LockFile):
    """The lock file of one LocalStore root: OS range locks and change stamps.

    Parameters
    ----------
    root : str
        The store's root directory.
    writable : bool
        Whether the store may write: only then is a missing root created.
        Where the lock file cannot be opened for writing (a read-only file or
        filesystem) it is opened for reading, and only shared locks (reads)
        can be taken.

    Concurrency
    -----------
    Thread-safe. Every blocking method waits only for other processes, or
    for this process's own shared locks on the same bytes (see the design
    note); sync waits block the calling thread, async waits never block the
    event loop.
    """

    def __init__(self, root: str, *, writable: bool) -> None:
        self.path = os.path.join(root, LOCK_FILE_NAME)
        self.root = root
        self.writable = writable
        self._open_lock = threading.Lock()
        self._idle: list[int] = []  # each holds one of _IDLE_PERMITS
        # In a forked child: numbers of the parent's held descriptions, now
        # /dev/null (_osfork._deaden_held); released by a handle, they are closed.
        self._dead: set[int] = set()
        self._own = OwnHolds()
        # Descriptions open now (idle, held, the fallback's), for error messages.
        self._count_lock = threading.Lock()
        self._open_count = 0
        self._flags = os.O_RDWR  # O_RDONLY where the file cannot be opened for writing
        self._ofd = True
        # Without OFD locks (see the design note): holders in this process,
        # and the one description whose flock they share.
        self._fallback_lock = threading.Lock()
        self._fallback_count = 0
        self._fallback_fd = -1
        self._map: mmap.mmap | None = None
        # STAMP_SLOTS + 1 uint64, once open (a FileStamps where the file has
        # holes), and what they are written with where not through the
        # mapping (_lockfile.open_stamps)
        self.stamps: memoryview | FileStamps | None = None
        self._writes: FileStamps | None = None
        self.fstype: str | None = None  # the root's filesystem type, once open
        # The lock file's (st_dev, st_ino), once open: the stamps (a mapping
        # of it, or a FileStamps holding a descriptor of it) keep the file
        # allocated while this object lives, so no file made later has them.
        # _state.shared_state_for compares it with the file the path names.
        self.file_id: tuple[int, int] | None = None
        # Waits at the OS level (hold/hold_async calls whose first try
        # failed: see LockStats.os_waits) and their time.
        self._waits_lock = threading.Lock()
        self.waits = 0
        self.wait_s = 0.0
        self._presence = Presence(self)
        _live.add(self)
        _fdbudget.register(self)

    # ---------------------------------------------- the file's descriptions

    def _forget_inherited(self) -> None:
        """In a forked child: drop every description inherited from the parent.

        Closing them here releases nothing of the parent's (it still holds
        them open). The fallback's count is the parent's threads' holds, which
        never end in this process: start from zero with a new description.
        """
        self._fallback_lock = threading.Lock()  # the parent's may have been held
        self._count_lock = threading.Lock()
        self._own = OwnHolds()  # the parent's holds are not this process's
        fds, self._idle = self._idle, []
        if fds:
            _IDLE_PERMITS.give_many(len(fds))
        if self._fallback_fd >= 0:
            fds.append(self._fallback_fd)
        self._fallback_fd, self._fallback_count = -1, 0
        self._open_count = 0  # what the parent's threads hold is not ours to count
        if self._presence.fd >= 0:
            fds.append(self._presence.fd)  # the parent's presence (and alone) stay the parent's
        self._presence = Presence(self)
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)

    def close(self) -> None:
        """Close idle descriptions (held ones are closed on release). The
        presence stays (as the mapping does) until this object goes: a
        request may still come, and no other process may be alone while one
        of this process's holds could be."""
        self.shed()

    def shed(self) -> int:
        """Close idle descriptions; return how many (``_fdbudget``'s holder protocol)."""
        idle, self._idle = self._idle, []
        if idle:
            _IDLE_PERMITS.give_many(len(idle))
        with self._fallback_lock:
            if self._fallback_count == 0 and self._fallback_fd >= 0:
                idle.append(self._fallback_fd)
                self._fallback_fd = -1
        for fd in idle:
            self._close_description(fd)
        return len(idle)

    def held(self) -> int:
        """Descriptors of the lock file open now: descriptions (idle, held,
        the fallback's, the presence's) and the stamps' own (a mapping keeps
        a duplicate on Python 3.12, a FileStamps one of its own)."""
        mapped = self._map is not None and sys.version_info < (3, 13)
        return self._open_count + mapped + len(self._stamp_fds())

    def __del__(self) -> None:
        # No module globals here: at interpreter shutdown they may already be
        # None (contextlib was, and the finaliser printed a TypeError).
        try:  # (not contextlib.suppress: it may be None by now, see above)
            self.close()
            if self._presence.fd >= 0:  # nothing can be held any more
                self._close_description(self._presence.fd)
        except Exception:
            pass

    # ------------------------------------------------- presence and alone

    def try_token(self, key: str, start: int, end: int) -> int | None:
        """:meth:`try_hold` of ``[start, end)`` of ``key``, exclusive, for a
        token hold (the lock table's ``_hold_if_free``):
        :data:`~._presence.ELIDED` (no OS lock taken, none needed) while this
        process is alone in the root (``_presence``), else as ``try_hold``.
        Release with :meth:`release` as any handle."""
        if self._presence.try_elide():
            return ELIDED
        return self.try_hold([range_span(key, start, end)], False)

    def alone(self) -> bool:
        """Whether this process is alone in the root now (see the design note)."""
        return self._presence.alone

    def can_be_alone(self) -> bool:
        """Whether this process may ever be alone here: OFD locks, a lock file
        open for writing (an exclusive lock needs one)."""
        return self._ofd and self._flags == os.O_RDWR

    # The presence's system calls (``_setlk`` is below).

    def _setlkw(self, fd: int, kind: int, start: int, length: int) -> None:
        """One OFD lock, waiting in the kernel until it is granted (the
        kernel wakes us)."""
        try:
            fcntl.fcntl(fd, _SETLKW, _FLOCK.pack(kind, 0, start, length, 0))  # type: ignore[arg-type]  # set whenever _ofd
        except OSError as e:
            raise self._error(e) from None

    def _getlk_busy(self, fd: int, start: int, length: int) -> bool:
        """Whether another description holds a lock that an exclusive lock of
        ``[start, start + length)`` through ``fd`` would meet."""
        probe = _FLOCK.pack(_F_WRLCK, 0, start, length, 0)
        got = fcntl.fcntl(fd, _GETLK, probe)  # type: ignore[arg-type]  # set whenever _ofd
        kind: int = _FLOCK.unpack(got)[0]
        return kind != _F_UNLCK

    # --------------------------------------------------------------- locks

    def _description(self) -> int:
        try:
            fd = self._idle.pop()
        except IndexError:
            pass
        else:
            _IDLE_PERMITS.give()
            return fd
        path, flags = self.path, self._flags | os.O_CLOEXEC
        try:
            fd = _fdbudget.retrying(lambda: os.open(path, flags), path, "a lock")
        except DescriptorLimitError:
            raise
        except OSError as e:
            why = f"cannot open the lock file: {e}"
            raise CrossProcessLockError(self.path, e.errno, why) from None
        with self._count_lock:
            self._open_count += 1
        return fd

    def _close_description(self, fd: int) -> None:
        with self._count_lock:
            self._open_count -= 1
        with contextlib.suppress(OSError):
            os.close(fd)

    def _recycle(self, fd: int) -> None:
        # (After a fork the child's pool is emptied by _osfork._after_fork_in_child.)
        if len(self._idle) < IDLE_MAX and _IDLE_PERMITS.take():
            self._idle.append(fd)
        else:
            self._close_description(fd)

    def _error(self, e: OSError) -> CrossProcessLockError:
        if e.errno == errno.ENOLCK:
            why = "the filesystem refuses byte-range locks (ENOLCK; a network mount?)"
        else:
            why = f"locking failed: {e}"
        return CrossProcessLockError(self.path, e.errno, why)

    def _setlk(self, fd: int, kind: int, start: int, length: int) -> bool:
        """One non-blocking OFD lock (or unlock); False if another holder has it."""
        try:
            fcntl.fcntl(fd, _SETLK, _FLOCK.pack(kind, 0, start, length, 0))  # type: ignore[arg-type]  # set whenever _ofd
            return True
        except OSError as e:
            if e.errno in _BUSY:
                return False
            raise self._error(e) from None

    # Taking and releasing. A held lock is a handle: the description it was
    # taken through (0 for the fallback's shared flock); None: not taken.

    def try_hold(self, spans: list[Span], shared: bool, cover: bool = False) -> int | None:
        """Take ``spans`` now if no other process holds them; else None. Never
        waits; a multi-span request that meets a busy span lets go of the rest.
        ``cover``: first try one span from the first's start to the last's end
        (see the design note), and only if that is busy the spans one by one."""
        if not self._ofd:
            return 0 if self._fallback_take() else None
        presence = self._presence
        if not presence.present and not presence.become():
            return None
        call = CALL.get()
        if call is not None:
            joined = self._join(call, spans, shared)
            if joined is not None:
                return joined
        fd = self._description()
        kind = _F_RDLCK if shared else _F_WRLCK
        try:
            if cover and len(spans) > 1 and spans[-1][1]:
                first = spans[0][0]
                span = (first, spans[-1][0] + spans[-1][1] - first)
                if self._setlk(fd, kind, *span):
                    return self._took(fd, [span], shared, call)
            for i, (start, length) in enumerate(spans):
                if not self._setlk(fd, kind, start, length):
                    # busy: perhaps only by exclusive holds of this process
                    taken = self._rely(fd, kind, spans[i:])
                    if taken is None:
                        self._setlk(fd, _F_UNLCK, 0, 0)  # whatever was taken
                        self._recycle(fd)
                        return None
                    return self._took(fd, spans[:i] + taken, shared, call)
        except BaseException:
            self._close_description(fd)  # closing the only reference drops anything taken
            self._own.unrely(fd, self._unlock)
            raise
        return self._took(fd, spans, shared, call)

    # Own holds (``_own``): a request never waits for an exclusive hold of
    # its own process that covers what it asks for.

    def _took(self, fd: int, spans: list[Span], shared: bool, call: Call | None = None) -> int:
        """Record what ``fd`` holds (``OwnHolds.took``); return ``fd``, the handle."""
        if call is None:  # (took's first case, inlined: a token hold's path)
            if not shared:
                self._own.excl[fd] = spans
            return fd
        self._own.took(fd, spans, shared, call, (self, shared))
        return fd

    def _join(self, call: Call, spans: list[Span], shared: bool) -> int | None:
        """Take ``spans`` through the call's description and count on it;
        None if it has none of this mode or a span is busy (the spans taken
        before it stay locked until the call's last release: see ``_own``).
        Never waits, never relies."""
        joined = self._own.join(call, (self, shared))
        if joined is None:
            return None
        fd, members = joined
        kind = _F_RDLCK if shared else _F_WRLCK
        taken = 0
        try:
            for start, length in spans:
                if not self._setlk(fd, kind, start, length):
                    break
                taken += 1
        finally:
            if not shared:
                self._own.record(fd, spans[:taken], members.recorded)
            if taken < len(spans):
                self.release(fd)  # not a member after all
        return fd if taken == len(spans) else None

    def _rely(self, fd: int, kind: int, spans: list[Span]) -> list[Span] | None:
        """Take ``spans`` through ``fd`` now, but for their parts that this
        process's exclusive holds (other than ``fd``'s) cover: ``fd`` relies
        on those holds, which stay locked until it lets go. Returns the
        spans taken; None (nothing taken, nothing relied on) if none covers
        any part or some part none covers is busy. Never waits: a request
        that relies on a hold never keeps it locked while it waits for
        another process (which might wait for that hold's spans)."""
        todo = self._own.rely(fd, spans)
        if todo is None:
            return None
        for start, length in todo:
            if not self._setlk(fd, kind, start, length):
                self._setlk(fd, _F_UNLCK, 0, 0)
                self._own.unrely(fd, self._unlock)
                return None
        return todo

    # hold() is protected from KeyboardInterrupt (``_ki``) but its waits are
    # not: an interrupted wait drops whatever it took, and the caller releases
    # the in-process grant.

    @protected
    def hold(
        self, spans: list[Span], shared: bool, deadline: float | None, cover: bool = False
    ) -> int | None:
        """Take ``spans``, blocking the thread; None if ``deadline`` (monotonic)
        passed. ``cover``: as :meth:`try_hold`, at first only (no wait is for
        a covering span)."""
        held = self.try_hold(spans, shared, cover)
        if held is not None:
            return held
        t0 = time.monotonic()
        self._presence.begin_wait()
        try:
            if deadline is None and self._ofd and not self._own.overlaps(spans):
                return self._hold_blocking(spans, shared)
            for pause in _pauses(deadline):
                if pause is None:
                    return self.try_hold(spans, shared)
                _pause(pause)
                held = self.try_hold(spans, shared)
                if held is not None:
                    return held
            raise AssertionError("unreachable: _pauses never ends before its None")
        finally:
            self._count_wait(t0)
            self._presence.end_wait()

    @unprotected
    def _hold_blocking(self, spans: list[Span], shared: bool) -> int:
        """Wait in the kernel (``F_OFD_SETLKW``) until every span is taken,
        through a description of its own (the call's, inside
        :func:`~._own.one_call`, if it has none yet)."""
        if not self._presence.present:
            self._presence.wait_in_kernel()
        fd = self._description()
        kind = _F_RDLCK if shared else _F_WRLCK
        try:
            for start, length in spans:  # ascending: no cycle between such waits
                self._setlkw(fd, kind, start, length)
        except BaseException:
            self._close_description(fd)  # an interrupted wait may have taken some spans
            raise
        return self._took(fd, spans, shared, CALL.get())

    @protected
    async def hold_async(
        self, spans: list[Span], shared: bool, deadline: float | None, cover: bool = False
    ) -> int | None:
        """:meth:`hold` for a coroutine: polls, never blocking the event loop."""
        held = self.try_hold(spans, shared, cover)
        if held is not None:
            return held
        t0 = time.monotonic()
        self._presence.begin_wait()
        try:
            for pause in _pauses(deadline):
                if pause is None:
                    return self.try_hold(spans, shared)
                await asyncio.sleep(pause)
                held = self.try_hold(spans, shared)
                if held is not None:
                    return held
            raise AssertionError("unreachable: _pauses never ends before its None")
        finally:
            self._count_wait(t0)
            self._presence.end_wait()

    def _count_wait(self, t0: float) -> None:
        waited = time.monotonic() - t0
        with self._waits_lock:
            self.waits += 1
            self.wait_s += waited

    def release(self, handle: int) -> None:
        """Release everything the handle holds. Never blocks."""
        if handle == ELIDED:
            self._presence.let_go_elided()
            return
        if not self._ofd:
            self._fallback_give()
            return
        own = self._own
        if not own.members and not own.relying:  # (let_go's first case, inlined:
            spans = own.excl.pop(handle, None)  # a token hold's path)
            if not own.relying:  # (again: a request may have come to rely on it)
                self._unlock(handle)
                return
            if spans is not None:
                own.excl[handle] = spans  # decided by let_go, under its lock
        own.let_go(handle, self._unlock)

    def _unlock(self, fd: int) -> None:
        """Unlock everything ``fd`` holds and recycle it."""
        if self._dead and fd in self._dead:  # a forked child's handle of the parent's
            self._dead.discard(fd)
            with contextlib.suppress(OSError):
                os.close(fd)
            return
        try:
            fcntl.fcntl(fd, _SETLK, _UNLOCK_ALL)  # type: ignore[arg-type]  # set whenever _ofd
        except OSError:
            self._close_description(fd)  # closing the only reference releases its locks too
            return
        self._recycle(fd)

    # Without OFD locks: one exclusive flock for the whole process.

    def _fallback_take(self) -> bool:
        """Count one more holder; the first takes the process's flock (no wait).

        Exclusive only: flock cannot upgrade a shared lock without first
        dropping it, and a lock our own readers rely on must never lapse. The
        flock is taken and dropped under ``_fallback_lock`` with ``LOCK_NB``
        (never a wait under it), so a count above zero always means held.
        """
        with self._fallback_lock:
            if self._fallback_count == 0:
                if self._fallback_fd < 0:
                    self._fallback_fd = self._description()
                try:
                    fcntl.flock(self._fallback_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError as e:
                    if e.errno in (*_BUSY, errno.EWOULDBLOCK):
                        return False
                    raise self._error(e) from None
            self._fallback_count += 1
            return True

    def _fallback_give(self) -> None:
        with self._fallback_lock:
            self._fallback_count -= 1
            if self._fallback_count == 0:
                fcntl.flock(self._fallback_fd, fcntl.LOCK_UN)
