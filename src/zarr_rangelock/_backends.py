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
for writers that go through the wrapper.

*Descriptor cache.* Opening, ``fstat``-ing and closing the file costs more
than the 64 KiB ``pwrite`` itself, so each root keeps a small bounded cache of
open descriptors (:class:`FdCache`, ``O_CLOEXEC``, in the shared state),
each with the file's identity ``(st_dev, st_ino)`` and size. Within the
process the cache is exact: the wrapper's own ``set``, ``set_if_not_exists``,
``delete``, ``delete_dir`` and ``clear`` drop the entries they make stale,
under the whole-key or prefix lock that excludes every locked ``set_range`` of
those keys, so the next write opens the new file (and a replaced file's disk
space is not pinned by the cache). A file replaced or deleted *behind the
wrapper's back* (the bare store, another process) is caught by a check: a
write through a cached descriptor runs ``os.stat`` on the path and uses the
descriptor only if ``(st_dev, st_ino)`` still match (else the entry is
dropped and the file reopened, exactly as an uncached write would; the match
cannot be an inode number reused by a new file, because the open descriptor
keeps the old inode alive), and takes the size for the bounds check from the
same stat. That check runs at most once per :data:`FD_REVALIDATE_S` (1 ms)
per descriptor; writes in between trust the last one. So a write that starts
more than 1 ms after an outside replace or delete always goes into the file
the path names (as open-per-write would), and one that starts within 1 ms may
go into the file the path named until then. Writers outside the wrapper are
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

*MemoryStore.* zarr's MemoryStore keeps ``Buffer`` objects in a dict, and
those may alias memory we must not touch: the caller's buffers passed as
``store_dict``, read-only arrays (``Buffer.from_bytes``), or views already
returned by ``MemoryStore.get``. So the first ``set_range`` of a key replaces
its value with a private, writable copy, an :class:`_OwnedBuffer` stamped with
the id of the store's shared state; later writes go into it in place (a
``memoryview`` slice assignment). Reads through the wrapper copy out of owned
values only: an owned value is the only kind that ever changes in place, so a
view of any other value is already immutable. The stamp is a random 128-bit
id, not an object reference, so pickled dicts stay picklable and a buffer
moved to another dict by hand is not mistaken for that dict's own.

*Shared state.* Wrappers of the same underlying store must share one lock
table, so states live in a module-level registry keyed by what identifies the
data: the resolved root for a LocalStore, the dict object for a MemoryStore.
The registry holds them weakly; each wrapper holds its state strongly, so a
state lives exactly as long as some wrapper (or some store used with
:func:`unlocked_set_range`) needs it. A MemoryStore state also holds its dict,
so the dict's ``id`` cannot be reused while the registry entry exists.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import stat
import threading
import time
import uuid
import weakref
from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any, cast

import numpy as np
from zarr.abc.store import OffsetByteRequest, RangeByteRequest, Store, SuffixByteRequest
from zarr.core.buffer import Buffer, cpu
from zarr.core.buffer.core import default_buffer_prototype
from zarr.storage import LocalStore, MemoryStore
from zarr.storage._utils import _normalize_byte_range_index

from ._errors import KeyNotFoundError, RangeOutOfBoundsError, UnsupportedStoreError
from ._keys import validate_key
from ._manager import RangeLockManager
from ._mutex import wait_for
from ._ranges import MAX_OFFSET

if TYPE_CHECKING:
    from zarr.abc.store import ByteRequest
    from zarr.core.buffer import BufferPrototype

__all__ = [
    "FD_CACHE_SIZE",
    "INLINE_WRITE_MAX",
    "META_RANGE",
    "Backend",
    "FdCache",
    "SharedState",
    "as_bytes_view",
    "backend_for",
    "check_start",
    "is_local_dir",
    "read_span",
    "run_to_completion",
    "shared_state_for",
    "unlocked_set_range",
    "unlocked_set_range_sync",
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

#: Open descriptors kept per LocalStore root (see :class:`FdCache`).
FD_CACHE_SIZE = 64

#: A cached descriptor is used without re-checking its path for this many
#: seconds after the last check (see the design note: only writers outside the
#: wrapper can make the check fail, and they are not excluded anyway).
FD_REVALIDATE_S = 0.001

_monotonic = time.monotonic

SUPPORTED_STORES: tuple[type, ...] = (MemoryStore, LocalStore)

#: Slots of :meth:`SharedState.generation` (a power of two).
GENERATION_SLOTS = 4096


# --------------------------------------------------------------------- writing


def _write_range(target: int | memoryview, data: memoryview, start: int) -> None:
    """Copy ``data`` into ``target`` (a file descriptor or a byte view) at ``start``.

    Every write of value bytes, locked or not, goes through this one function
    (tests patch it to split writes and pause between the halves).
    """
    if isinstance(target, int):
        view, offset = data, start
        while True:
            n = os.pwrite(target, view, offset)
            if n == len(view):
                return  # at once, for a regular file
            if n <= 0:  # a regular file never does this, but never spin
                raise OSError(f"pwrite wrote {n} bytes at offset {offset}")
            view, offset = view[n:], offset + n
    else:
        target[start : start + len(data)] = data


def as_bytes_view(value: object, operation: str) -> memoryview:
    """``value`` (a zarr ``Buffer``) as a flat unsigned-byte ``memoryview``."""
    if type(value) is cpu.Buffer:  # fast path: a 1-d uint8 numpy array inside
        data: Any = value._data
        if data.flags.c_contiguous:
            return memoryview(data)
    if not isinstance(value, Buffer):
        raise TypeError(
            f"{operation}(): `value` must be a zarr Buffer instance, "
            f"got an instance of {type(value).__name__}"
        )
    view = memoryview(value.as_buffer_like())
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")
    return view


def check_start(key: str, start: object, length: int) -> int:
    """Validate ``start`` of a write of ``length`` bytes (type and sign only)."""
    if isinstance(start, bool) or not isinstance(start, int):
        raise TypeError(
            f"set_range on key {key!r}: start must be an int, got {type(start).__name__}"
        )
    if start < 0:
        raise RangeOutOfBoundsError(key, start, length, None)
    if start + length > MAX_OFFSET - 1:
        raise RangeOutOfBoundsError(key, start, length, MAX_OFFSET - 1)
    return start


def _check_fits(key: str, start: int, length: int, size: int) -> None:
    if start + length > size:
        raise RangeOutOfBoundsError(key, start, length, size)


async def run_to_completion[T](make: Callable[[], Awaitable[T]]) -> T:
    """Await ``make()`` in a task that a cancellation of the caller does not stop.

    Used for work that runs in a worker thread while the caller holds a lock:
    if the caller is cancelled, the thread's I/O still finishes, and the lock
    must stay held until it has, or that I/O would land unprotected. The
    caller's cancellation is re-raised once the work is done.
    """

    async def _run() -> T:
        return await make()

    task = asyncio.ensure_future(_run())
    cancelled = False
    while True:
        try:
            result = await asyncio.shield(task)
        except asyncio.CancelledError:
            if task.done():
                raise
            cancelled = True
            continue
        if cancelled:
            raise asyncio.CancelledError
        return result


def read_span(byte_range: ByteRequest | None) -> tuple[int, int | None]:
    """The range a read of ``byte_range`` must lock shared (``None`` end: to the end)."""
    if byte_range is None:
        return 0, None
    if isinstance(byte_range, RangeByteRequest):
        start, end = byte_range.start, byte_range.end
        # An empty request reads nothing but still sees the key: lock one byte.
        return start, end if end > start else start + 1
    if isinstance(byte_range, OffsetByteRequest):
        return byte_range.offset, None
    if isinstance(byte_range, SuffixByteRequest):
        return 0, None  # which bytes depends on the size: lock them all
    # Same wording as zarr's stores (its conformance suite matches on it).
    raise TypeError(f"Unexpected byte_range, got {byte_range}.")


def is_local_dir(store: Store, key: str) -> bool:
    return type(store) is LocalStore and os.path.isdir(os.path.join(store.root, key))


# ---------------------------------------------------------------- shared state


class _OwnedBuffer(cpu.Buffer):
    """A MemoryStore value that a store's shared state owns and may write in place.

    ``_owner`` is the owning :class:`SharedState`'s id; ``0`` (slices made by
    ``Buffer.__getitem__``, unpickled copies in other processes aside) means
    "owned by nobody". ``_view`` caches a writable view of the bytes; it is
    dropped when pickling.
    """

    _owner: int = 0
    _view: memoryview | None = None

    def __init__(self, array_like: Any, owner: int = 0) -> None:
        super().__init__(array_like)
        self._owner = owner

    def writable_view(self) -> memoryview:
        view = self._view
        if view is None:
            view = self._view = memoryview(self._data)  # type: ignore[arg-type]  # numpy
        return view

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.pop("_view", None)
        return state


class SharedState:
    """Everything wrappers of one underlying store must share.

    Attributes
    ----------
    manager : RangeLockManager
        The lock table.
    uid : int
        Random id stamped on MemoryStore values this state owns.
    promote_lock : threading.Lock
        Serializes replacing a MemoryStore value with an owned copy (held for
        that copy only; never across a range lock wait).
    anchor : object
        What the registry key stands for (the MemoryStore dict, or the
        resolved LocalStore root), kept to check ``id`` reuse.
    fds : FdCache
        Open descriptors for LocalStore ``set_range`` (empty for a MemoryStore).
    generations, epoch
        Change counters, see :meth:`generation`.
    """

    __slots__ = (
        "__weakref__",
        "_counter",
        "anchor",
        "epoch",
        "fds",
        "generations",
        "manager",
        "promote_lock",
        "uid",
    )

    def __init__(self, anchor: object) -> None:
        self.manager = RangeLockManager()
        self.uid = uuid.uuid4().int | 1
        self.promote_lock = threading.Lock()
        self.anchor = anchor
        self.fds = FdCache()
        self._counter = itertools.count(1)
        self.generations = [0] * GENERATION_SLOTS
        self.epoch = 0

    def generation(self, key: str) -> tuple[int, int]:
        """A token that changes whenever ``key``'s whole value may have changed.

        Every whole-value write or delete through a wrapper (``set``,
        ``delete``, and the prefix operations ``delete_dir`` and ``clear``)
        stores a fresh number, while still holding its whole-key or prefix
        lock, in the slot ``key`` hashes to (or in the epoch, for prefixes).
        So a caller that holds any lock on ``key`` and sees the same token as
        when it last looked, also while holding a lock on ``key``, knows no
        whole-value change happened in between; ``set_range`` does not change
        it. Slots are shared by colliding keys: a change of one key only makes
        another look changed (a false alarm, never a miss). Numbers come from
        one counter and are never reused, so a slow writer storing an older
        number still leaves a value no earlier reader saw. Writers that bypass
        the wrappers are not seen.
        """
        return self.epoch, self.generations[hash(key) & (GENERATION_SLOTS - 1)]

    def bump(self, key: str) -> None:
        """Record a whole-value change of ``key`` (call with its whole-key lock held)."""
        self.generations[hash(key) & (GENERATION_SLOTS - 1)] = next(self._counter)

    def bump_all(self) -> None:
        """Record a change of possibly every key (call with the prefix lock held)."""
        self.epoch = next(self._counter)


class _Fd:
    """One cached descriptor: the file's identity, its size and when the path
    was last seen naming it, and how many writes use it now."""

    __slots__ = ("checked", "dead", "dev", "fd", "ino", "size", "users")

    def __init__(self, fd: int, st: os.stat_result) -> None:
        self.fd = fd
        self.dev = st.st_dev
        self.ino = st.st_ino
        self.size = st.st_size
        self.checked = _monotonic()
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

    def add(self, path: str, fd: int, st: os.stat_result) -> _Fd:
        """Cache the fresh descriptor ``fd`` of ``path``; return its entry, checked out."""
        entry = _Fd(fd, st)
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


_registry: weakref.WeakValueDictionary[tuple[str, object], SharedState] = (
    weakref.WeakValueDictionary()
)
_registry_lock = threading.Lock()
# States pinned to store objects used with unlocked_set_range (no wrapper holds
# them). Keyed by id(store); the weakref's callback drops the entry when the
# store object dies.
_pins: dict[int, tuple[weakref.ref[Any], SharedState]] = {}


def _token(store: MemoryStore | LocalStore) -> tuple[tuple[str, object], object]:
    if type(store) is LocalStore:
        root = os.path.realpath(os.fspath(store.root))
        return ("local", root), root
    assert type(store) is MemoryStore
    store_dict = store._store_dict
    return ("memory", id(store_dict)), store_dict


def check_supported(store: object) -> MemoryStore | LocalStore:
    """Return ``store`` if ``RangeLockedStore`` can write ranges into it, else raise."""
    # Exact types only: a subclass may remap keys (ManagedMemoryStore adds a
    # path prefix) or values (GpuMemoryStore keeps device buffers), and raw
    # range I/O on such a store would silently go to the wrong place.
    if type(store) not in SUPPORTED_STORES:
        t = type(store)
        raise UnsupportedStoreError(f"{t.__module__}.{t.__qualname__}")
    return store  # type: ignore[return-value]  # checked just above


def shared_state_for(store: MemoryStore | LocalStore) -> SharedState:
    """The one :class:`SharedState` of ``store``'s underlying data in this process."""
    token, anchor = _token(store)
    with _registry_lock:
        state = _registry.get(token)
        if state is None or (token[0] == "memory" and state.anchor is not anchor):
            state = SharedState(anchor)
            _registry[token] = state
        return state


def _pinned_state_for(store: MemoryStore | LocalStore) -> SharedState:
    """:func:`shared_state_for`, kept alive as long as the ``store`` object."""
    pin = _pins.get(id(store))
    if pin is not None and pin[0]() is store:
        state = pin[1]
        if type(store) is LocalStore or state.anchor is store._store_dict:
            return state
    state = shared_state_for(store)
    key = id(store)

    def _unpin(ref: weakref.ref[Any], key: int = key) -> None:
        with _registry_lock:
            current = _pins.get(key)
            if current is not None and current[0] is ref:
                del _pins[key]

    with _registry_lock:
        _pins[key] = (weakref.ref(store, _unpin), state)
    return state


# -------------------------------------------------------------------- backends


class Backend:
    """Unlocked value I/O on one store; subclassed per store type."""

    __slots__ = ("state", "store")

    def __init__(self, store: Any, state: SharedState) -> None:
        self.store = store
        self.state = state

    def size(self, key: str) -> int | None:
        """The value's size in bytes, or ``None`` if the key does not exist."""
        raise NotImplementedError

    def set_range(self, key: str, data: memoryview, start: int) -> None:
        """Overwrite ``data`` at ``start``; check existence and bounds first."""
        raise NotImplementedError

    async def set_range_async(self, key: str, data: memoryview, start: int) -> None:
        """:meth:`set_range` for a coroutine: inline, or in a thread when large."""
        self.set_range(key, data, start)

    def forget(self, key: str) -> None:
        """Drop cached state of ``key``; called after a whole-value write or delete,
        with the whole-key lock still held."""
        self.state.bump(key)

    def forget_prefix(self, prefix: str) -> None:
        """Drop cached state of every key under ``prefix`` (a ``/``-ended prefix or
        ``""``), with the prefix lock still held."""
        self.state.bump_all()

    def check_fits(self, key: str, start: int, length: int) -> None:
        """Raise as :meth:`set_range` would, without writing."""
        size = self.size(key)
        if size is None:
            raise KeyNotFoundError(key, "set_range")
        _check_fits(key, start, length, size)

    def get_sync(
        self, key: str, prototype: BufferPrototype | None, byte_range: ByteRequest | None
    ) -> Buffer | None:
        """Read (part of) a value; the returned Buffer never changes afterwards."""
        return self.store.get_sync(key, prototype=prototype, byte_range=byte_range)  # type: ignore[no-any-return]

    async def get(
        self, key: str, prototype: BufferPrototype | None, byte_range: ByteRequest | None
    ) -> Buffer | None:
        """Async :meth:`get_sync`."""
        return await self.store.get(key, prototype=prototype, byte_range=byte_range)  # type: ignore[no-any-return]


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

    def size(self, key: str) -> int | None:
        value = self._dict.get(key)
        return None if value is None else len(value)

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
                    value = _OwnedBuffer(data, self._uid)
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
        if self._owns(value):
            # Owned values change in place later: hand out a copy, never a view.
            piece = cpu.Buffer(np.array(piece.as_numpy_array(), dtype="B", copy=True))
        return prototype.buffer.from_buffer(piece)

    async def get(
        self, key: str, prototype: BufferPrototype | None, byte_range: ByteRequest | None
    ) -> Buffer | None:
        return self.get_sync(key, prototype, byte_range)


class LocalBackend(Backend):
    """Positional writes into existing LocalStore files, through the root's :class:`FdCache`."""

    __slots__ = ("_fds", "_root")

    def __init__(self, store: LocalStore, state: SharedState) -> None:
        super().__init__(store, state)
        self._root: tuple[object, str] | None = None
        self._fds = state.fds

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

    def set_range(self, key: str, data: memoryview, start: int) -> None:
        root = self.store.root
        cached = self._root
        if cached is None or cached[0] is not root:  # LocalStore.move() rebinds root
            cached = self._root = (root, os.fspath(root))
        path = f"{cached[1]}/{key}"
        fds = self._fds
        entry = fds.checkout(path)
        if entry is not None:
            now = _monotonic()
            if now - entry.checked >= FD_REVALIDATE_S:
                # Time to check that the path still names the cached
                # descriptor's file, and to re-read its size (design note).
                try:
                    st: os.stat_result | None = os.stat(path)
                except OSError:
                    st = None  # gone or unreadable: the uncached path below says which
                if st is None or st.st_ino != entry.ino or st.st_dev != entry.dev:
                    fds.drop(entry, path)  # replaced or deleted behind our back
                    entry = None
                else:
                    entry.size = st.st_size
                    entry.checked = now
            if entry is not None:
                n = len(data)
                try:
                    if start + n > entry.size:
                        raise RangeOutOfBoundsError(key, start, n, entry.size)
                    if n:
                        _write_range(entry.fd, data, start)
                finally:
                    fds.checkin(entry)
                return
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise KeyNotFoundError(key, "set_range") from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise KeyNotFoundError(key, "set_range")
        except BaseException:
            os.close(fd)
            raise
        entry = fds.add(path, fd, st)
        try:
            _check_fits(key, start, len(data), st.st_size)
            if len(data):
                _write_range(fd, data, start)
        finally:
            fds.checkin(entry)

    def forget(self, key: str) -> None:
        super().forget(key)
        self._fds.forget(self._path(key))

    def forget_prefix(self, prefix: str) -> None:
        super().forget_prefix(prefix)
        self._fds.forget_prefix(self._path(prefix) if prefix else "")

    async def set_range_async(self, key: str, data: memoryview, start: int) -> None:
        if len(data) <= INLINE_WRITE_MAX:
            self.set_range(key, data, start)
        else:
            await run_to_completion(lambda: asyncio.to_thread(self.set_range, key, data, start))


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
    inner._check_writable()
    key = validate_key(key)
    data = as_bytes_view(value, "set_range")
    start = check_start(key, start, len(data))
    return backend_for(inner, _pinned_state_for(inner)), key, data, start


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
