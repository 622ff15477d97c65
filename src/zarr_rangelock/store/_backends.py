"""Raw byte-range I/O for MemoryStore and LocalStore, and the per-store shared state.

Nothing here takes a range lock: this is the layer the locks protect.
:class:`~zarr_rangelock.RangeLockedStore` calls it while holding the right
locks, and :func:`unlocked_set_range` calls it without any (the stress
runner's control run, which must be able to show what goes wrong).

Design note
-----------
*LocalStore.* ``set_range`` writes with ``os.pwrite`` at the offset into the
existing file (never creating it): the rest of the file is never read or
rewritten. ``LocalStore.set`` replaces a file by renaming a temporary one over
it, so an ``os.pwrite`` into a descriptor opened before such a replace lands in
the replaced file; the store's whole-key lock on ``set`` is what rules that out
for writers that go through the wrapper. With ``map_writes=True`` the bytes
are copied into a shared mapping of the file kept with its cached
descriptor instead (``_fdcache``'s *Mappings*), which a replace makes stale
the same way and the same lock rules out; ranges the mapping cannot take
are ``pwrite``-n. The descriptors are the root's, shared by its wrappers in
the process: only a wrapper with ``map_writes`` copies into a mapping (one
without it ``pwrite``-s into a file another wrapper mapped, the durable
modes so included), and a file first opened by a wrapper without it stays
unmapped, written with ``pwrite`` by all, until its descriptor is closed.

The descriptor cache (``_fdcache``) and the shared state (``_state``) have
design notes of their own; the base class both backends share is in
``_backend`` (re-exported here).
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
import shutil
import stat
import time
import weakref
from collections.abc import Callable, MutableMapping, Sequence
from typing import TYPE_CHECKING, cast

import numpy as np
from zarr.core.buffer import Buffer, cpu
from zarr.core.buffer.core import default_buffer_prototype
from zarr.storage import LocalStore, MemoryStore
from zarr.storage._local import _delete_dir
from zarr.storage._utils import _normalize_byte_range_index

from .._errors import KeyNotFoundError, PartialWriteError, RangeOutOfBoundsError
from .._fallocate import reserve
from ..locks._fdbudget import retrying
from ..locks._ki import protected
from ..locks._lockfile import LOCK_FILE_NAME
from ..locks._mounts import filesystem_type, overwrites_allocate
from ..locks._ranges import MAX_OFFSET
from ._backend import Backend
from ._fdcache import FD_CACHE_SIZE, FdCache, _Fd
from ._io import (
    as_bytes_view,
    check_fits,
    check_start,
    in_thread,
    is_local_dir,
    read_span,
    run_to_completion,
    with_key,
    write_range,
)
from ._keys import JOURNAL_DIR
from ._rewrite import Piece, build_temp, check_pieces, publish
from ._state import SharedState, _OwnedBuffer, _pinned_state_for, check_supported, shared_state_for

if TYPE_CHECKING:
    from zarr.abc.store import ByteRequest
    from zarr.core.buffer import BufferPrototype

__all__ = [
    "FD_CACHE_SIZE",
    "INLINE_WRITE_MAX",
    "MAP_WRITE_MAX",
    "META_RANGE",
    "Backend",
    "FdCache",
    "LocalBackend",
    "SharedState",
    "as_bytes_view",
    "backend_for",
    "check_map_writes",
    "check_start",
    "check_supported",
    "is_local_dir",
    "read_span",
    "run_to_completion",
    "shared_state_for",
    "unlocked_set_range",
    "unlocked_set_range_sync",
    "why_not_mapped",
]


#: A one-byte range no real value can reach. ``getsize``, ``exists`` and
#: zero-length writes lock it shared: that conflicts with whole-key locks
#: (``set``, ``delete``, which change sizes and existence) but with no range
#: write, so those never wait behind a ``set_range``.
META_RANGE: tuple[int, int] = (MAX_OFFSET - 1, MAX_OFFSET)

#: Async ``set_range`` on a LocalStore writes on the event loop's thread up to
#: this size (a 64 KiB ``pwrite`` takes microseconds, far less than a hop to a
#: worker thread) and in a worker thread above it.
INLINE_WRITE_MAX = 256 * 1024

#: A cached descriptor is used without re-checking its path for this many
#: seconds after the last check (see the design note: only writers outside the
#: wrapper can make the check fail, and they are not excluded anyway).
FD_REVALIDATE_S = 0.01

_monotonic = time.monotonic

#: Every write of value bytes goes through this one name (tests patch it to
#: split writes and pause between the halves).
_write_range = write_range

#: The longest range a store with ``map_writes`` copies into its mapping of
#: the file; longer ones are ``pwrite``-n (the copy holds the GIL, about 5 us
#: for 64 KiB here; a ``pwrite`` lets it go).
MAP_WRITE_MAX = 1 << 20


def write_mapped(mapping: mmap.mmap, data: memoryview, start: int) -> None:
    """Copy ``data`` into ``mapping`` at ``start`` (in bounds: checked by the caller)."""
    mapping[start : start + len(data)] = data


#: Every copy into a mapping goes through this one name (as _write_range).
_write_mapped = write_mapped


_check_fits = check_fits


def why_not_mapped(root: str) -> str | None:
    """None where a ``map_writes`` store of ``root`` maps its files; else why
    not (for its warning): a copy-on-write file system, or one whose type is
    unknown (no ``/proc/self/mountinfo``: another OS, whose own may copy on
    write)."""
    fs = filesystem_type(root)
    if not overwrites_allocate(fs):
        return None
    if fs is None:
        return "its file system's type is unknown (no /proc/self/mountinfo)"
    return f"it is on {fs}, a copy-on-write file system (every overwrite allocates)"


def check_map_writes(map_writes: object, store: object, durability: str) -> bool:
    """``bool(map_writes)`` if ``store`` and ``durability`` allow it; else
    ``ValueError`` naming what does not (see ``RangeLockedStore``)."""
    if not map_writes:
        return False
    if type(store) is not LocalStore:
        raise ValueError(
            f"map_writes=True needs a LocalStore: a {type(store).__name__} has no "
            "files to map (its set_range copies into memory already)"
        )
    if durability != "none":
        raise ValueError(
            f"map_writes=True needs durability='none', got durability={durability!r}: "
            "the durable modes write and sync through descriptors"
        )
    return True


# -------------------------------------------------------------------- backends


class MemoryBackend(Backend):
    """In-place writes into owned copies of MemoryStore values; copying reads."""

    __slots__ = ("_dict", "_uid")

    store: MemoryStore

    def __init__(self, store: MemoryStore, state: SharedState) -> None:
        super().__init__(store, state)
        # MemoryStore binds its dict once, in __init__; the state is keyed by it.
        self._dict: MutableMapping[str, Buffer] = store._store_dict
        self._uid = state.uid

    def _owns(self, value: Buffer) -> bool:
        return type(value) is _OwnedBuffer and value._owner == self._uid

    def _stored(self, key: str) -> memoryview | None:
        # No copy: the caller holds the whole-key lock and reads it at once.
        value = self._dict.get(key)
        return None if value is None else as_bytes_view(value, "rewrite")

    def size(self, key: str) -> int | None:
        value = self._dict.get(key)
        return None if value is None else len(value)

    def value_id(self, key: str) -> object:
        # The value object itself, weakly (a strong reference would keep a
        # replaced shard's bytes alive in the caches): a bare set or delete
        # puts another object in the dict, or none. Our own first set_range
        # of a value swaps in a private copy (_target), which names the value
        # it copied (weakref.ref gives the one reference object per value
        # while it lives), so to same_value it is that value still.
        value = self._dict.get(key)
        if value is None:
            return None
        try:
            return weakref.ref(value)
        except TypeError:  # a Buffer type without weak references: unknown
            return None

    def same_value(self, key: str, ident: object) -> bool:
        if type(ident) is not weakref.ReferenceType:
            return False
        value = self._dict.get(key)
        if value is None:
            return False
        # (a copy's reference may be dead, its value dropped: still the very
        # reference object the caller kept, which no other value can have)
        return ident() is value or (type(value) is _OwnedBuffer and value._copied_from is ident)

    def _target(self, key: str, start: int, length: int) -> memoryview:
        """The writable bytes of ``key``'s value, made private first if need be."""
        store_dict = self._dict
        value = store_dict.get(key)
        if value is None:
            raise KeyNotFoundError(key, "set_range")
        _check_fits(key, start, length, len(value))
        if not self._owns(value):
            with self.state.promote_lock:
                value = store_dict.get(key)
                if value is None:
                    raise KeyNotFoundError(key, "set_range")
                if not self._owns(value):
                    data = np.array(value.as_numpy_array(), dtype="B", copy=True)
                    old = value
                    value = _OwnedBuffer(data, self._uid)
                    with contextlib.suppress(TypeError):  # no weak references: unknown
                        value._copied_from = weakref.ref(old)
                    store_dict[key] = value
            # Re-check: only an unlocked writer bypassing us could have changed it.
            _check_fits(key, start, length, len(value))
        assert isinstance(value, _OwnedBuffer)  # _owns() checked the exact type
        return value.writable_view()

    def set_range(self, key: str, data: memoryview, start: int) -> None:
        value = self._dict.get(key)
        # Fast path: a value we own whose writable view is cached already.
        if (
            type(value) is _OwnedBuffer
            and value._owner == self._uid
            and (view := value._view) is not None
            and start + len(data) <= len(view)
        ):
            if len(data):
                _write_range(view, data, start)
            return
        target = self._target(key, start, len(data))
        if len(data):
            _write_range(target, data, start)

    def get_sync(
        self, key: str, prototype: BufferPrototype | None, byte_range: ByteRequest | None
    ) -> Buffer | None:
        if prototype is None:
            prototype = default_buffer_prototype()
        value = self._dict.get(key)
        if value is None:
            return None
        start, stop = _normalize_byte_range_index(value, byte_range)
        piece = value[start:stop]
        if type(value) is _OwnedBuffer:
            # Owned values change in place later: hand out a copy, never a view
            # (of a value another dict's state owns, too: a dict copied by
            # hand from a wrapped store's holds the same buffer objects).
            piece = cpu.Buffer(np.array(piece.as_numpy_array(), dtype="B", copy=True))
        return prototype.buffer.from_buffer(piece)

    async def get(
        self, key: str, prototype: BufferPrototype | None, byte_range: ByteRequest | None
    ) -> Buffer | None:
        return self.get_sync(key, prototype, byte_range)


def _reserve(fd: int, key: str, start: int, n: int) -> None:
    """Before a ``pwrite`` of ``n`` bytes at ``start`` of a file that may
    have holes (dense shards leave fill chunks of zero bytes as holes): give
    the range its blocks, so a full disk fails the write before a byte of it
    is written (a ``pwrite`` over a hole wrote the pages there was room for,
    leaving the value half new). Raises ``PartialWriteError`` (an
    ``OSError``, ``ENOSPC`` or ``EDQUOT``), 0 bytes written; where the file
    system has no ``fallocate`` the ``pwrite`` goes ahead as before. One
    ``lseek`` (``SEEK_HOLE``, under a microsecond) where the range has no
    hole; ``fallocate`` (about 4) only where it has."""
    try:
        if os.lseek(fd, start, os.SEEK_HOLE) >= start + n:
            return  # no hole in the range (the offset is not used: pwrite)
    except OSError:  # a file system that cannot tell: reserve anyway
        pass
    err = reserve(fd, start, n)
    if err in (errno.ENOSPC, errno.EDQUOT):
        raise PartialWriteError(err, os.strerror(err), key, start, n, 0)


class LocalBackend(Backend):
    """Positional writes into existing LocalStore files, through the root's :class:`FdCache`."""

    __slots__ = ("_fds", "_root", "mapped", "sync")

    def __init__(self, store: LocalStore, state: SharedState) -> None:
        super().__init__(store, state)
        self._root: tuple[object, str] | None = None
        self._fds = state.fds
        self.sync = False  # durability="fsync": fdatasync after each range write
        # map_writes=True: files this backend opens are mapped, and range
        # writes into them copied there (see the store's map_writes)
        self.mapped = False

    store: LocalStore

    def _path(self, key: str) -> str:
        root = self.store.root
        cached = self._root
        if cached is None or cached[0] is not root:  # LocalStore.move() rebinds root
            cached = self._root = (root, os.fspath(root))
        return f"{cached[1]}/{key}"

    def size(self, key: str) -> int | None:
        try:
            st = os.stat(self._path(key))
        except (FileNotFoundError, NotADirectoryError):
            return None
        return st.st_size if stat.S_ISREG(st.st_mode) else None

    def value_id(self, key: str) -> object:
        # (entry, st_dev, st_ino, size): the file's identity and size, and
        # the cached descriptor's entry if one was checked within
        # FD_REVALIDATE_S (then no system call), else (None, ...) from a
        # stat. Never opens the file: opening would cache a descriptor (and,
        # with map_writes, map the file and allocate its holes) as a side
        # effect of a cache's bookkeeping. A bare LocalStore replaces a file
        # by renaming a new one over it, or deletes it: another inode, or
        # none. While a descriptor of ours is open the old inode stays
        # allocated, so no new file gets its number: exact; else see
        # same_value.
        entry = self._fresh_entry(key)
        if entry is not None:
            return (entry, entry.dev, entry.ino, entry.size)
        st = self._stat(key)
        return None if st is None else (None, st.st_dev, st.st_ino, st.st_size)

    def _fresh_entry(self, key: str) -> _Fd | None:
        """The cached descriptor's entry of ``key``'s file if its path was
        checked within :data:`FD_REVALIDATE_S` (the window a write into a
        replaced file has, see ``_fdcache``), else None."""
        entry = self._fds._entries.get(self._path(key))
        if entry is not None and not entry.dead and _monotonic() - entry.checked < FD_REVALIDATE_S:
            return entry
        return None

    def _stat(self, key: str) -> os.stat_result | None:
        try:
            return os.stat(self._path(key))
        except OSError:  # gone, or none we may look at: unknown
            return None

    def same_value(self, key: str, ident: object) -> bool:
        if type(ident) is not tuple:
            return False
        entry = self._fresh_entry(key)
        if entry is not None:
            if entry is ident[0]:
                return True
            now: tuple[int, int, int] = (entry.dev, entry.ino, entry.size)
        else:
            st = self._stat(key)
            if st is None:
                return False
            now = (st.st_dev, st.st_ino, st.st_size)
        # Not exact once no descriptor of ours pinned the old file: two
        # replaces in a row behind our backs can give the second new file
        # the first one's inode number, freed by then, and the same size.
        return now == ident[1:]

    def set_range(self, key: str, data: memoryview, start: int) -> None:
        # LocalBackend's own set_ranges, not a subclass's (those that loop
        # over set_range would call back here).
        LocalBackend.set_ranges(self, key, ((start, data),))

    def set_ranges(
        self, key: str, writes: Sequence[tuple[int, memoryview]], *, stamp: object = None
    ) -> None:
        # One descriptor checkout (and one fdatasync) for all of them; every
        # range checked against the size before the first is written.
        entry = self.checkout(key, stamp)
        try:
            if len(writes) == 1:  # (one chunk, the fast paths' common case: no loops)
                start, data = writes[0]
                n = len(data)
                if start + n > entry.size:
                    raise RangeOutOfBoundsError(key, start, n, entry.size)
                if n:
                    # (the entry is the root's: a wrapper without map_writes
                    # pwrites into a file another wrapper mapped)
                    m = entry.map if self.mapped else None
                    if m is not None and n <= MAP_WRITE_MAX and start + n <= len(m):
                        _write_mapped(m, data, start)
                    else:
                        if entry.holes:
                            _reserve(entry.fd, key, start, n)
                        _write_range(entry.fd, data, start)
                    if self.sync:
                        os.fdatasync(entry.fd)
                return
            for start, data in writes:
                if start + len(data) > entry.size:
                    raise RangeOutOfBoundsError(key, start, len(data), entry.size)
            written = False
            m = entry.map if self.mapped else None
            mapped = len(m) if m is not None else 0
            for start, data in writes:
                n = len(data)
                if n:
                    if m is not None and n <= MAP_WRITE_MAX and start + n <= mapped:
                        _write_mapped(m, data, start)
                    else:
                        if entry.holes:
                            _reserve(entry.fd, key, start, n)
                        _write_range(entry.fd, data, start)
                    written = True
            if self.sync and written:
                os.fdatasync(entry.fd)
        except PartialWriteError as exc:
            raise with_key(exc, key) from exc.__cause__
        finally:
            self._fds.checkin(entry)

    @protected
    def checkout(self, key: str, stamp: object = None) -> _Fd:
        """A descriptor of ``key``'s file, open for writing (and reading, where
        the file allows it), with the file's size; give it back with
        ``self._fds.checkin``. Raises ``KeyNotFoundError`` if there is no file.
        Call with a lock on ``key`` held; ``stamp``, if given, is the key's
        change stamp read while holding it (else read here). Protected from
        KeyboardInterrupt (``locks/_ki``) from the checkout to the return, so
        the caller's ``try`` (right after the call) always owns the entry:
        an interrupt after ``FdCache.checkout`` (or inside ``FdCache.add``)
        left it checked out for good. Its syscalls (``stat``, ``open``,
        ``fstat``) do not wait for anything."""
        root = self.store.root
        cached = self._root
        if cached is None or cached[0] is not root:  # LocalStore.move() rebinds root
            cached = self._root = (root, os.fspath(root))
        path = f"{cached[1]}/{key}"
        fds = self._fds
        entry = fds.checkout(path)
        if self.state.os_locks is None:
            stamp = None
        else:
            # Another process may have replaced the file (under the whole-key
            # lock, which it no longer holds since we hold a range): its
            # stamp tells, exactly, with no syscall.
            if stamp is None:
                stamp = self.state.generation(key)
            if entry is not None and entry.stamp != stamp:
                fds.drop(entry, path)
                entry = None
        if entry is not None:
            now = _monotonic()
            if now - entry.checked < FD_REVALIDATE_S:
                return entry
            # Time to check that the path still names the cached descriptor's
            # file, and to re-read its size (design note).
            try:
                st: os.stat_result | None = os.stat(path)
            except OSError:
                st = None  # gone or unreadable: the uncached path below says which
            if st is not None and st.st_ino == entry.ino and st.st_dev == entry.dev:
                entry.size = st.st_size
                entry.checked = now
                return entry
            fds.drop(entry, path)  # replaced or deleted behind our back
        try:
            fd = fds.open(path, os.O_RDWR | os.O_CLOEXEC, key, "set_range")
        except PermissionError:  # a file we may write but not read
            fd = fds.open(path, os.O_WRONLY | os.O_CLOEXEC, key, "set_range")
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise KeyNotFoundError(key, "set_range") from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise KeyNotFoundError(key, "set_range")
        except BaseException:
            os.close(fd)
            raise
        return fds.add(path, fd, st, _monotonic(), stamp, self.mapped)

    def read_range(self, key: str, start: int, end: int) -> Buffer | None:
        # A small positional read: zarr's LocalStore get goes through pathlib
        # and a buffered file (about 10x the cost of the read itself).
        try:
            fd = self._fds.open(self._path(key), os.O_RDONLY | os.O_CLOEXEC, key, "get")
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return None
            data = os.pread(fd, max(0, end - start), start)
        finally:
            os.close(fd)
        return cpu.Buffer.from_bytes(data)

    def forget(self, key: str) -> None:
        try:
            super().forget(key)  # (its stamp's bump may meet a full disk: _lockfile)
        finally:
            self._fds.forget(self._path(key))

    def bump(self, key: str) -> None:
        # The file stays: a cached descriptor that was current stays current
        # under the new stamp (else every append would reopen the file).
        state = self.state
        old = state.generation(key)
        state.bump(key)
        if state.os_locks is not None:
            self._fds.restamp(self._path(key), old, state.generation(key))

    def replacing(self, key: str) -> None:
        """Stamp ``key`` anew before its file is replaced or removed (its
        whole-key lock held), as well as after (``forget``): a writer killed
        between its rename and the stamp after it left the old stamp on the
        new file, and a writer of another process that had looked at the
        path in the last :data:`FD_REVALIDATE_S` wrote its chunks into the old
        file, by the old index (lost; a bug hunt found it:
        ``tests/test_processes_interleavings.py``). Only where other
        processes see the stamps."""
        if self.state.os_locks is not None:
            self.state.bump(key)

    def removing_prefix(self) -> None:
        # As replacing(), for every key: a writer killed part way through a
        # delete_dir, or right after it, left the old epoch on a tree whose
        # files were gone, and another process's writer wrote into the
        # unlinked files it had open (lost).
        if self.state.os_locks is not None:
            self.state.bump_all()

    # The async whole-value writes, reads and removals below run the wrapped
    # LocalStore's sync code in the library's workers (``_io.in_thread``,
    # finished even if the caller is cancelled: its lock stays held until
    # then; out of descriptors, retried once, ``_fdbudget``), never
    # LocalStore's async methods, whose threads are the event loop's default
    # executor: waiters of the caller's lock may fill that (``_io.workers``).
    # (So the base class's ``run_write`` of the wrapped store's coroutines
    # is not used here.)

    async def set_value(self, key: str, value: Buffer, block: bool = False) -> None:
        await in_thread(lambda: self.set_value_sync(key, value))

    def set_value_sync(self, key: str, value: Buffer, block: bool = False) -> None:
        self.replacing(key)
        super().set_value_sync(key, value, block)

    async def delete_value(self, key: str, block: bool = False) -> None:
        await in_thread(lambda: self.delete_value_sync(key))

    def delete_value_sync(self, key: str, block: bool = False) -> None:
        self.replacing(key)
        super().delete_value_sync(key, block)

    async def set_value_if_missing(self, key: str, value: Buffer) -> None:
        # As LocalStore.set_if_not_exists: a directory (a group's path) exists
        # too. Looked at and written under the key's whole-key lock, so no
        # wrapper writes in between; stock creates the file exclusively
        # instead, so a file a bare writer made in between would stay there
        # and is replaced here (bare writers are not coordinated anyway).
        # The look and the write in one hop to the workers: no stat on the
        # event loop's thread.
        path = self._path(key)

        def write() -> None:
            if not os.path.exists(path):
                self.set_value_sync(key, value)

        await in_thread(write)

    async def delete_tree(self, key: str) -> None:
        store = self.store
        store._check_writable()
        await in_thread(lambda: retrying(lambda: store.delete_sync(key), key, "delete"))

    async def delete_dir(self, prefix: str) -> None:
        store = self.store
        store._check_writable()
        await in_thread(
            lambda: retrying(lambda: _delete_dir(store.root / prefix, prefix), prefix, "delete_dir")
        )

    def rewrite_value_sync(
        self, key: str, size: int, pieces: Sequence[tuple[int, object]], block: bool = False
    ) -> None:
        """Replace ``key``'s value by ``size`` bytes built from ``pieces``,
        streamed through a temporary file renamed over the key (``_rewrite``):
        the store's ``set``, without the value in memory."""
        self.store._check_writable()
        path = self._path(key)
        checked = check_pieces(key, size, pieces, LocalBackend.size(self, key))
        self._rewrite_file(key, path, size, checked, self.sync)

    async def rewrite_value(
        self, key: str, size: int, pieces: Sequence[tuple[int, object]], block: bool = False
    ) -> None:
        # In a worker thread that finishes even if the caller is cancelled
        # (its lock stays held); inline on a ShardWriter's own loop.
        await in_thread(lambda: self.rewrite_value_sync(key, size, pieces, block))

    def _rewrite_file(
        self, key: str, path: str, size: int, pieces: list[Piece], sync: bool
    ) -> None:
        # Protected from KeyboardInterrupt (``locks/_ki``; a copy, never a
        # wait): one between the temporary file's making and its rename
        # left the file behind, nameless to anyone but a durable store's
        # sweep of stray files (a ShardWriter's compaction or first write of
        # a compressed shard runs this in the main thread)
        @protected
        def write() -> None:
            tmp, _ = build_temp(path, size, pieces, sync)
            # Our cached descriptor of the old file closed while the file is
            # still linked: cheap. Closed after the rename, as the caller's
            # forget() would, it is the old inode's last reference and the
            # close frees its blocks (100-200 us on ext4 with discard), on
            # the event loop's thread for an async caller; the rename does
            # that instead, here in the worker thread. (The whole-key lock
            # the caller holds keeps every other write of the key out.)
            self._fds.forget(path)
            publish(tmp, path, sync)

        self.replacing(key)
        retrying(write, key, "set")

    def forget_prefix(self, prefix: str) -> None:
        try:
            super().forget_prefix(prefix)
        finally:
            self._fds.forget_prefix(self._path(prefix) if prefix else "")

    def run_write_sync(self, write: Callable[[], None], key: str) -> None:
        retrying(write, key, "set")

    def get_sync(
        self, key: str, prototype: BufferPrototype | None, byte_range: ByteRequest | None
    ) -> Buffer | None:
        store = self.store
        return retrying(
            lambda: store.get_sync(key, prototype=prototype, byte_range=byte_range), key, "get"
        )

    async def get(
        self, key: str, prototype: BufferPrototype | None, byte_range: ByteRequest | None
    ) -> Buffer | None:
        return await in_thread(lambda: self.get_sync(key, prototype, byte_range))

    async def clear(self) -> None:
        """Remove every key, keeping the root and its lock file.

        LocalStore's own ``clear`` removes the root and makes it again, which
        would take the lock file that other processes hold locks on with it.
        """
        self.store._check_writable()
        root = os.fspath(self.store.root)
        await in_thread(lambda: retrying(lambda: _clear_keeping_lock_file(root), "", "clear"))

    async def set_range_async(self, key: str, data: memoryview, start: int) -> None:
        if len(data) <= INLINE_WRITE_MAX:
            self.set_range(key, data, start)
        else:
            await in_thread(lambda: self.set_range(key, data, start))

    async def block_set_ranges_async(
        self, key: str, writes: Sequence[tuple[int, memoryview]]
    ) -> None:
        # set_ranges: a journaled store's adds them to the block's
        # transaction, or makes them one (see _durable).
        if sum(len(data) for _, data in writes) <= INLINE_WRITE_MAX:
            self.set_ranges(key, writes)
        else:
            await in_thread(lambda: self.set_ranges(key, writes))


def _clear_keeping_lock_file(root: str) -> None:
    try:
        entries = list(os.scandir(root))
    except FileNotFoundError:
        return
    for entry in entries:
        if entry.name in (LOCK_FILE_NAME, JOURNAL_DIR):
            continue
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)


def backend_for(store: MemoryStore | LocalStore, state: SharedState) -> Backend:
    """The backend for a supported store (see :func:`check_supported`)."""
    if type(store) is LocalStore:
        return LocalBackend(store, state)
    return MemoryBackend(cast(MemoryStore, store), state)


# ----------------------------------------------------------- unlocked writes


def _prepare_unlocked(
    store: object, key: str, value: object, start: object
) -> tuple[Backend, str, memoryview, int]:
    inner = check_supported(store)
    backend = backend_for(inner, _pinned_state_for(inner))
    data, start = backend.prepare_set_range(key, value, start)  # type: ignore[arg-type]  # checked there
    return backend, key, data, start


def unlocked_set_range_sync(
    store: MemoryStore | LocalStore, key: str, value: Buffer, start: int
) -> None:
    """``set_range`` on a bare MemoryStore or LocalStore with no locks at all.

    Same checks, errors and in-place I/O as
    :meth:`RangeLockedStore.set_range_sync`, but nothing excludes concurrent
    writers or readers. For control runs that must be able to show races.

    Concurrency
    -----------
    None: concurrent calls, ``set``/``delete`` and reads race freely.
    """
    backend, key, data, start = _prepare_unlocked(store, key, value, start)
    backend.set_range(key, data, start)


async def unlocked_set_range(
    store: MemoryStore | LocalStore, key: str, value: Buffer, start: int
) -> None:
    """Async :func:`unlocked_set_range_sync` (no locks at all).

    Concurrency
    -----------
    None: concurrent calls, ``set``/``delete`` and reads race freely.
    """
    backend, key, data, start = _prepare_unlocked(store, key, value, start)
    await backend.set_range_async(key, data, start)
