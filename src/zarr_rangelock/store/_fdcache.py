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
stamp differs drops the entry and reopens (no syscall to tell). A file
replaced or deleted *behind every wrapper's back* (the bare store) is caught
by a check: a
write through a cached descriptor runs ``os.stat`` on the path and uses the
descriptor only if ``(st_dev, st_ino)`` still match (else the entry is
dropped and the file reopened, exactly as an uncached write would; the match
cannot be an inode number reused by a new file, because the open descriptor
keeps the old inode alive), and takes the size for the bounds check from the
same stat. That check runs at most once per :data:`FD_REVALIDATE_S` (1 ms)
per descriptor; writes in between trust the last one. So a write that starts
more than 1 ms after an outside replace or delete always goes into the file
the path names (as open-per-write would), and one that starts within 1 ms may
go into the file the path named until then. Writers outside the wrappers are
not excluded anyway (their replace can land before or after any of our
writes), so this only widens a race window that exists regardless, by at
most 1 ms; and it keeps the per-write cost at one syscall: ``stat`` on this
kind of machine costs 3-5 us, half a 64 KiB ``pwrite``, and a second
GIL-releasing call per write doubles the GIL hand-offs between threads
writing one key. Descriptors are reference-counted while a write uses them:
one that is evicted, invalidated or flushed meanwhile is closed by its last
user, never under a write. ``close()`` on a wrapper flushes its root's cache,
and a finalizer closes whatever is left when the last wrapper of the root goes
away. Files deleted by someone else stay open until their key is written
again, evicted or flushed.
"""

from __future__ import annotations

import contextlib
import os
import threading
import weakref

from ..locks._mutex import wait_for

__all__ = ["FD_CACHE_SIZE", "FdCache"]

#: Open descriptors kept per LocalStore root (see :class:`FdCache`).
FD_CACHE_SIZE = 64


class _Fd:
    """One cached descriptor: the file's identity, its size and when the path
    was last seen naming it, and how many writes use it now."""

    __slots__ = ("checked", "dead", "dev", "fd", "ino", "size", "stamp", "users")

    def __init__(self, fd: int, st: os.stat_result, now: float, stamp: object = None) -> None:
        self.fd = fd
        self.dev = st.st_dev
        self.ino = st.st_ino
        self.size = st.st_size
        self.checked = now
        self.stamp = stamp  # the key's change stamp when opened (cross-process check)
        self.users = 1  # the write that opened it
        self.dead = False  # out of the cache: the last user closes it


def _close_all(entries: dict[str, _Fd]) -> None:
    """Finalizer of an :class:`FdCache` (nobody can be using it any more)."""
    for entry in entries.values():
        with contextlib.suppress(OSError):
            os.close(entry.fd)
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

    def __len__(self) -> int:
        return len(self._entries)

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
            os.close(entry.fd)

    def add(self, path: str, fd: int, st: os.stat_result, now: float, stamp: object = None) -> _Fd:
        """Cache the fresh descriptor ``fd`` of ``path``, checked at ``now``; return
        its entry, checked out."""
        entry = _Fd(fd, st, now, stamp)
        closing: list[int] = []
        with self._lock:
            entries = self._entries
            old = entries.pop(path, None)
            if old is not None:
                self._kill(old, closing)
            entries[path] = entry
            while len(entries) > self.maxsize:
                self._kill(entries.pop(next(iter(entries))), closing)
        for stale in closing:
            os.close(stale)
        return entry

    def close(self) -> None:
        """Close every cached descriptor not in use (those in use: after their write)."""
        self.forget_prefix("")

    def drop(self, entry: _Fd, path: str) -> None:
        """``checkin`` and remove: ``entry`` no longer names the file at ``path``."""
        with self._lock:
            if self._entries.get(path) is entry:
                del self._entries[path]
                entry.dead = True
        self.checkin(entry)  # a rare path: taking the lock twice is fine

    def forget(self, path: str) -> None:
        """Remove ``path``'s entry, if any (its file is about to change or be gone)."""
        closing: list[int] = []
        with self._lock:
            entry = self._entries.pop(path, None)
            if entry is not None:
                self._kill(entry, closing)
        for stale in closing:
            os.close(stale)

    def forget_prefix(self, prefix: str) -> None:
        """Remove every entry whose path starts with ``prefix`` (``""``: all). O(n)."""
        closing: list[int] = []
        with self._lock:
            for path in [p for p in self._entries if p.startswith(prefix)]:
                self._kill(self._entries.pop(path), closing)
        for stale in closing:
            os.close(stale)

    @staticmethod
    def _kill(entry: _Fd, closing: list[int]) -> None:
        """Mark ``entry``, just taken out of the map, dead; queue its descriptor if unused.

        Under the lock. Entries in the map are never dead, so each descriptor
        is queued (here) or closed (by its last user) exactly once.
        """
        entry.dead = True
        if entry.users == 0:
            closing.append(entry.fd)
