"""A bounded cache of open descriptors of LocalStore files, for ``set_range``.

Design note
-----------
*Descriptor cache.* Opening, ``fstat``-ing and closing the file costs more
than the 64 KiB ``pwrite`` itself, so each root keeps a small bounded cache of
open descriptors (:class:`FdCache`, ``O_CLOEXEC``, in the shared state),
each with the file's identity ``(st_dev, st_ino)`` and size. Within the
process the cache is exact: the wrapper's own ``set``, ``set_if_not_exists``,
``delete``, ``delete_dir`` and ``clear`` drop the entries they make stale,
under the whole-key or prefix lock that excludes every locked ``set_range`` of
those keys, so the next write opens the new file (and a replaced file's disk
space is not pinned by the cache). Across processes it is exact too: each
entry keeps the key's change stamp from when it was opened
(``SharedState.generation``), which a wrapper in any process changes under
its whole-key lock when it replaces or deletes the file, so a write whose
stamp differs drops the entry and reopens (no syscall to tell). A key
stamped anew with its file kept (a shard index re-pointed in place,
``Backend.bump``) moves its entry to the new stamp, only if the entry had
the stamp the key had just before (else the entry may name a replaced file
and stays stale). A file
replaced or deleted *behind every wrapper's back* (the bare store) is caught
by a check: a
write through a cached descriptor runs ``os.stat`` on the path and uses the
descriptor only if ``(st_dev, st_ino)`` still match (else the entry is
dropped and the file reopened, exactly as an uncached write would; the match
cannot be an inode number reused by a new file, because the open descriptor
keeps the old inode alive), and takes the size for the bounds check from the
same stat. That check runs at most once per :data:`FD_REVALIDATE_S` (10 ms)
per descriptor; writes in between trust the last one. So a write that starts
more than 10 ms after an outside replace or delete always goes into the file
the path names (as open-per-write would), and one that starts within 10 ms
may go into the file the path named until then. Writers outside the wrappers
are not excluded anyway (their replace can land before or after any of our
writes), so this only widens a race window that exists regardless, by at
most 10 ms; and it keeps the per-write cost at one syscall: ``stat`` on this
kind of machine costs 3-5 us, half a 64 KiB ``pwrite``, and a second
GIL-releasing call per write doubles the GIL hand-offs between threads
writing one key. (It was 1 ms: ``ShardWriter.write_chunks`` over 16 shards
comes back to each about once a millisecond, so most of its writes ran the
stat; at 10 ms, paired runs from four threads wrote 1.05x faster.)
Descriptors are reference-counted while a write uses them: one that is
evicted, invalidated or flushed meanwhile is closed by its last user, never
under a write. ``close()`` on a wrapper flushes its root's cache, and a
finalizer closes whatever is left when the last wrapper of the root goes
away. Files deleted by someone else stay open until their key is written
again, evicted or flushed.

*How many.* At most :data:`FD_CACHE_SIZE` descriptors per root, and at most
``_fdbudget.cache_budget()`` across every root of the process (an eighth of
the soft ``RLIMIT_NOFILE``, between 8 and 1,024): one FIFO order, kept under a
process-wide lock taken only when a descriptor is added or removed (a miss,
which costs an ``open`` anyway), evicts the oldest-opened descriptor whatever
its root; a hit takes only its root's lock, as before. A miss whose ``open``
fails with ``EMFILE``/``ENFILE`` closes every cached and idle descriptor of
the process and tries once more (:meth:`FdCache.open`, see
``locks/_fdbudget``).

*Mappings.* A store made with ``map_writes=True`` asks :meth:`FdCache.add`
for a shared mapping of the whole file beside the descriptor (``_Fd.map``,
made once, when the descriptor is opened, and closed with it: both live
exactly as long as the entry, and an entry is closed only when no write
uses it). On Python 3.12 ``mmap`` keeps a duplicate of the descriptor, so a
mapped entry counts as two against the process's budget (``_dups``, kept
with ``_order``); 3.13's ``trackfd=False`` keeps none. A file that cannot be
mapped (empty, open write-only, out of address space or descriptors) gets
no mapping, and its writes use ``pwrite``.

*Holes.* A copy into a page of the mapping over a hole in the file makes
the file system allocate a block when the page is first written to, and
where it cannot (the disk full) the copy gets ``SIGBUS``, which kills the
process, where ``pwrite`` would raise ``OSError`` (``_fallocate``). Dense
shards have holes (a fill chunk of zero bytes is left one), most of all
while an array is first written. So a file with a hole is mapped only
once ``fallocate`` (the system call, keeping the file's size and bytes)
has allocated its holes; where that fails (the disk full already, a file
system without it) the file is not mapped and its writes use ``pwrite``.
A mapped file therefore takes its whole size on disk. Copy-on-write file
systems allocate at every overwrite, hole or not: the store maps nothing
there (``_backends.why_not_mapped``).

*How much is mapped.* Pages written through a mapping count in the
process's resident size (``RssFile``) for as long as the file stays mapped,
where pages written with ``pwrite`` do not, and memory monitors (dask's
worker nanny among them) read that size as the process's memory. So the
files mapped at once in a process are capped at :data:`MAP_BYTES_MAX` in
all (``_mapped``, kept with ``_order``); a file opened while they are at
the cap is not mapped, and its writes use ``pwrite``. The cap is checked
before mapping without the lock, so threads opening files at once may pass
it by a file each.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import sys
import threading
import weakref
from collections import OrderedDict

from .._fallocate import allocate_holes
from ..locks import _fdbudget
from ..locks._ki import protected
from ..locks._mutex import wait_for

__all__ = ["FD_CACHE_SIZE", "FdCache", "live_caches"]

#: Open descriptors kept per LocalStore root (see :class:`FdCache`): the
#: process budget's own cap, so what binds is the budget (an eighth of the
#: soft ``RLIMIT_NOFILE``), shared by every root. It was 64 until
#: 2026-12-05: a ``ShardWriter`` writing 64 KiB chunks in random order over
#: 1,024 shards then opened a file for most writes (24,000 chunks/s in two
#: scratch runs, against 38,300-38,700 with 1,024 kept, a soft limit of
#: 20,000 here).
FD_CACHE_SIZE = 1024


class _Fd:
    """One cached descriptor: the file's identity, its size and when the path
    was last seen naming it, and how many writes use it now."""

    __slots__ = (
        "checked",
        "dead",
        "dev",
        "fd",
        "holes",
        "ino",
        "map",
        "map_size",
        "path",
        "size",
        "stamp",
        "users",
    )

    def __init__(
        self,
        path: str,
        fd: int,
        st: os.stat_result,
        now: float,
        stamp: object = None,
        mapping: mmap.mmap | None = None,
    ) -> None:
        self.path = path
        self.fd = fd
        self.dev = st.st_dev
        self.ino = st.st_ino
        self.size = st.st_size
        self.checked = now
        self.stamp = stamp  # the key's change stamp when opened (cross-process check)
        self.users = 1  # the write that opened it
        self.dead = False  # out of the cache: the last user closes it
        self.map = mapping  # the whole file (at its size when opened), or None
        # (kept: a closed mapping has no len, and _unorder counts a dead
        # entry's bytes out after it may have been closed)
        self.map_size = self.size if mapping is not None else 0
        # Whether the file may have holes (fewer blocks than bytes; a mapped
        # file had them allocated): writes reserve their blocks first
        # (``_fallocate.reserve``), so a full disk fails them whole.
        self.holes = mapping is None and st.st_blocks * 512 < st.st_size

    def close(self) -> None:
        """Close the mapping and the descriptor (nobody uses the entry)."""
        if self.map is not None:
            self.map.close()
        os.close(self.fd)


#: Whether a mapping keeps a duplicate of its file's descriptor (``mmap``
#: before Python 3.13, which has no ``trackfd=False``).
MAP_DUPS = sys.version_info < (3, 13)

#: The bytes of files mapped at once per process, at most (see the design
#: note): 15 shards of 16 MiB (each a few KiB more, its index).
MAP_BYTES_MAX = 256 << 20


def map_file(fd: int, size: int) -> mmap.mmap | None:
    """A shared, writable mapping of the first ``size`` bytes of ``fd``'s
    file, or None where it cannot be had (an empty file, a descriptor open
    write-only, a hole that cannot be allocated, no address space or
    descriptors left): see the design note."""
    if size <= 0 or not allocate_holes(fd, size):
        return None
    try:
        if MAP_DUPS:
            return mmap.mmap(fd, size)
        return mmap.mmap(fd, size, trackfd=False)  # type: ignore[call-arg,unused-ignore]  # 3.13
    except (OSError, ValueError, OverflowError):
        return None


# The process-wide FIFO of cached entries, oldest first, each with its cache
# (weakly: a cache dies with its root's shared state). Lock order: a cache's
# _lock, then _order_lock, never the reverse.
_order: OrderedDict[_Fd, weakref.ref[FdCache]] = OrderedDict()
_order_lock = threading.Lock()
_caches: weakref.WeakSet[FdCache] = weakref.WeakSet()
# Appended to (atomically, no lock) by a finalizer whose dead entries are
# still in _order; the next add() drops them.
_finalized: list[None] = []
# How many entries in _order hold a mapping that holds a descriptor of its
# own (MAP_DUPS): each counts twice against the budget; and the bytes their
# mappings map (at most about MAP_BYTES_MAX). Under _order_lock.
_dups = 0
_mapped = 0


def _unorder(entry: _Fd) -> None:
    """Take ``entry`` out of the process-wide order, if in it. Under _order_lock."""
    global _dups, _mapped
    if _order.pop(entry, None) is not None and entry.map is not None:
        _mapped -= entry.map_size
        if MAP_DUPS:
            _dups -= 1


def live_caches() -> list[FdCache]:
    """Every :class:`FdCache` of the process still alive."""
    with _order_lock:
        return list(_caches)


def _close_all(entries: dict[str, _Fd]) -> None:
    """Finalizer of an :class:`FdCache` (nobody can be using it any more).

    It may run inside any allocation, even one made under ``_order_lock``, so
    it takes no lock: its entries leave the process-wide order lazily (they
    are dead, and the next :meth:`FdCache.add` drops them).
    """
    for entry in entries.values():
        entry.dead = True
        with contextlib.suppress(OSError):
            entry.close()
    if entries:
        _finalized.append(None)
    entries.clear()


class FdCache:
    """A bounded map from file path to an open ``O_WRONLY`` descriptor of that file.

    See the module's design note for when an entry may be used. ``checkout``
    returns an entry with its use count raised; ``checkin`` lowers it and
    closes the descriptor if the entry left the cache meanwhile. When more
    than ``maxsize`` paths are cached, the oldest-opened is evicted (FIFO:
    hits do not reorder, which keeps a hit cheap).

    Concurrency
    -----------
    Thread-safe; a ``threading.Lock`` guards the bookkeeping only, never a
    syscall. A descriptor is closed only when no write is using it.
    """

    __slots__ = ("__weakref__", "_entries", "_finalizer", "_lock", "maxsize")

    def __init__(self, maxsize: int = FD_CACHE_SIZE) -> None:
        self._entries: dict[str, _Fd] = {}
        self._lock = threading.Lock()
        self.maxsize = maxsize
        self._finalizer = weakref.finalize(self, _close_all, self._entries)
        with _order_lock:
            _caches.add(self)
        _fdbudget.register(self)

    def __len__(self) -> int:
        return len(self._entries)

    # Checking out and in are protected from KeyboardInterrupt (``locks/_ki``):
    # one landing between ``acquire(False)`` and the ``try`` left the lock
    # held (every later write of the root hung), one between the count's
    # change and the caller's ``try`` a descriptor checked out for good.

    @protected
    def checkout(self, path: str) -> _Fd | None:
        """The entry for ``path`` with its use count raised, or ``None``. O(1)."""
        lock = self._lock
        if not lock.acquire(False):
            wait_for(lock)  # see the _mutex module: no lock convoy between writers
        try:
            entry = self._entries.get(path)
            if entry is not None:
                entry.users += 1
            return entry
        finally:
            lock.release()

    @protected
    def checkin(self, entry: _Fd) -> None:
        """End one use of ``entry``; close it if it left the cache and was the last use."""
        lock = self._lock
        if not lock.acquire(False):
            wait_for(lock)
        try:
            entry.users -= 1
            close = entry.dead and entry.users == 0
        finally:
            lock.release()
        if close:
            entry.close()

    @protected
    def open(self, path: str, flags: int, key: str, operation: str) -> int:
        """``os.open(path, flags)``; out of descriptors, close every cached and idle
        one of the process and try once more (``locks/_fdbudget``). Protected
        (``locks/_ki``), as ``_io.open_fd`` is: a reader's ``fd = open(...)``
        then ``try`` lost the descriptor to a KeyboardInterrupt in between."""
        return _fdbudget.retrying(lambda: os.open(path, flags), key, operation)

    def add(
        self,
        path: str,
        fd: int,
        st: os.stat_result,
        now: float,
        stamp: object = None,
        mapped: bool = False,
    ) -> _Fd:
        """Cache the fresh descriptor ``fd`` of ``path``, checked at ``now``; return
        its entry, checked out; ``mapped``: with a mapping of the file (see the
        design note). Evicts the oldest entry of this root past ``maxsize``,
        and the oldest of any root past the process's budget."""
        global _dups, _mapped
        size = st.st_size
        mapping = map_file(fd, size) if mapped and _mapped + size <= MAP_BYTES_MAX else None
        entry = _Fd(path, fd, st, now, stamp, mapping)
        budget = _fdbudget.cache_budget()
        closing: list[_Fd] = []
        victims: list[tuple[_Fd, weakref.ref[FdCache]]] = []
        with self._lock:
            entries = self._entries
            old = entries.pop(path, None)
            if old is not None:
                self._kill(old, closing)
            entries[path] = entry
            while len(entries) > self.maxsize:
                self._kill(entries.pop(next(iter(entries))), closing)
            with _order_lock:
                if _finalized:
                    _finalized.clear()
                    for dead in [e for e in _order if e.dead]:
                        _unorder(dead)
                _order[entry] = weakref.ref(self)
                if mapping is not None:
                    _mapped += size
                    if MAP_DUPS:
                        _dups += 1
                while len(_order) + _dups > budget and _order:
                    victim = next(iter(_order))
                    victims.append((victim, _order[victim]))
                    _unorder(victim)
        for stale in closing:
            stale.close()
        for victim, cache_ref in victims:  # other roots' locks: not under ours
            cache = cache_ref()
            if cache is not None and not victim.dead:
                cache._evict(victim)
        return entry

    @protected
    def _evict(self, entry: _Fd) -> None:
        """Remove ``entry`` if it is still cached (the process's budget ran out)."""
        closing: list[_Fd] = []
        with self._lock:
            if self._entries.get(entry.path) is entry:
                del self._entries[entry.path]
                self._kill(entry, closing)
        for stale in closing:
            stale.close()

    def close(self) -> None:
        """Close every cached descriptor not in use (those in use: after their write)."""
        self.forget_prefix("")

    def shed(self) -> int:
        """Close every cached descriptor not in use; return how many were cached
        (``locks/_fdbudget``'s holder protocol)."""
        n = self.held()
        self.close()
        return n

    def held(self) -> int:
        """Descriptors cached now (in use or not), a mapping's own among them."""
        entries = list(self._entries.values())
        return len(entries) + (sum(e.map is not None for e in entries) if MAP_DUPS else 0)

    def drop(self, entry: _Fd, path: str) -> None:
        """``checkin`` and remove: ``entry`` no longer names the file at ``path``."""
        with self._lock:
            if self._entries.get(path) is entry:
                del self._entries[path]
                entry.dead = True
                with _order_lock:
                    _unorder(entry)
        self.checkin(entry)  # a rare path: taking the lock twice is fine

    def restamp(self, path: str, old: object, new: object) -> None:
        """Move ``path``'s entry from change stamp ``old`` to ``new``, if it has
        ``old``: the key was stamped anew but its file stayed (an index
        re-pointed in place). An entry with another stamp may name a file
        replaced since; it keeps its stamp, so it is dropped at its next use."""
        with self._lock:
            entry = self._entries.get(path)
            if entry is not None and entry.stamp == old:
                entry.stamp = new

    # Forgetting is protected too: one landing between an entry's removal
    # from the map and the close of its descriptor left it open for good.

    @protected
    def forget(self, path: str) -> None:
        """Remove ``path``'s entry, if any (its file is about to change or be gone)."""
        closing: list[_Fd] = []
        with self._lock:
            entry = self._entries.pop(path, None)
            if entry is not None:
                self._kill(entry, closing)
        for stale in closing:
            stale.close()

    @protected
    def forget_prefix(self, prefix: str) -> None:
        """Remove every entry whose path starts with ``prefix`` (``""``: all). O(n)."""
        closing: list[_Fd] = []
        with self._lock:
            for path in [p for p in self._entries if p.startswith(prefix)]:
                self._kill(self._entries.pop(path), closing)
        for stale in closing:
            stale.close()

    @staticmethod
    def _kill(entry: _Fd, closing: list[_Fd]) -> None:
        """Mark ``entry``, just taken out of the map, dead; queue its descriptor if unused.

        Under the lock. Entries in the map are never dead, so each descriptor
        is queued (here) or closed (by its last user) exactly once.
        """
        entry.dead = True
        with _order_lock:
            _unorder(entry)
        if entry.users == 0:
            closing.append(entry)
