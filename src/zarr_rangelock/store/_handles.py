"""Handles for I/O inside ``RangeLockedStore.locked(...)`` / ``locked_sync(...)`` blocks.

A handle does its reads and writes without taking locks (the block already
holds them, and re-taking them would wait on itself) but checks every access
against the ranges the block holds: reads must lie inside them, writes inside
exclusively held ones, whole-value ``set``/``delete`` need ``[0, end)``. Once
the block ends the handle refuses all use. Sizes cannot change while any range
of the key is held (only whole-key operations change them), so a handle may
look the size up to clip a read without racing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from zarr.abc.store import RangeByteRequest, SuffixByteRequest

from .._errors import RangeNotHeldError
from ..locks._ki import protected
from ..locks._ranges import INF, RangeSpec, public_ranges
from ._backends import Backend, is_local_dir, read_span
from ._io import contiguous
from ._rewrite import Span

if TYPE_CHECKING:
    from types import TracebackType

    from zarr.abc.store import ByteRequest
    from zarr.core.buffer import Buffer, BufferPrototype

    from ..locks._table import Grant, RangeLockManager

__all__ = ["AsyncLockedBlock", "AsyncLockedKey", "LockedBlock", "LockedKey"]


class _HandleBase:
    """Range bookkeeping shared by the sync and async handles."""

    __slots__ = ("_backend", "_grant", "_held", "_key", "_shared")

    def __init__(self, backend: Backend, grant: Grant) -> None:
        self._backend = backend  # the store's raw I/O: the handle never re-locks
        self._grant = grant  # held while the block runs; released when it ends
        self._key = grant._key
        self._held = grant._ranges  # sorted, merged, INF for "to the end"
        self._shared = grant._shared

    @property
    def key(self) -> str:
        """The key whose ranges are held."""
        return self._key

    @property
    def ranges(self) -> tuple[RangeSpec, ...]:
        """The held ranges, merged, with ``None`` for "to the end"."""
        return public_ranges(self._held)

    @property
    def shared(self) -> bool:
        """True if the ranges are held shared (read-only handle)."""
        return self._shared

    def _refuse(self, start: int, end: int, rule: str) -> RangeNotHeldError:
        return RangeNotHeldError(self._key, start, None if end >= INF else end, self.ranges, rule)

    def _covered(self, start: int, end: int) -> bool:
        return any(s <= start and end <= e for s, e in self._held)

    def _require(self, start: int, end: int, *, write: bool) -> None:
        if not self._grant.held:
            raise self._refuse(start, end, "was attempted after the locked block ended")
        if write and self._shared:
            raise self._refuse(start, end, "is a write, but the ranges are held shared")
        if start < end and not self._covered(start, end):
            raise self._refuse(start, end, "is not inside the held ranges")

    def _check_read(self, byte_range: ByteRequest | None) -> bool:
        """Check a read lies inside the held ranges; False if the key is missing."""
        start, end = read_span(byte_range, self._key)
        e = INF if end is None else end
        if isinstance(byte_range, RangeByteRequest) and byte_range.end <= byte_range.start:
            e = start  # reads nothing
        if self._grant.held and (start >= e or self._covered(start, e)):
            return True
        self._require(start, start, write=False)  # raises if the block ended
        # Not covered as requested: what is actually read depends on the size
        # (which cannot change while we hold any range of the key).
        size = self._backend.size(self._key)
        if size is None:
            return False
        if isinstance(byte_range, SuffixByteRequest):
            start = max(0, size - byte_range.suffix)
        self._require(start, min(e, size), write=False)
        return True

    def _check_write(self, data: memoryview, start: int) -> None:
        self._require(start, start + len(data), write=True)

    def _check_whole(self) -> None:
        self._require(0, INF, write=True)

    def _size(self) -> int | None:
        """The value's size, or None if missing (stable while any range is held)."""
        self._require(0, 0, write=False)
        return self._backend.size(self._key)

    def witness(self, start: int, length: int) -> None:
        """Make the bytes ``[start, start + length)``, held, a *read witness*
        of the journal transaction the block's writes go into: bytes the
        writes depend on but do not change, which a replay of the
        transaction's record requires to be unchanged
        (``_transaction.Transaction.add_witness``). Nothing outside a
        transaction of a ``durability="journal"`` store. Takes no lock and
        does no I/O (the bytes are read when the transaction commits)."""
        self._require(start, start + length, write=False)
        self._backend.witness(self._key, start, length)

    def _check_delete(self) -> None:
        self._check_whole()
        self._backend.store._check_writable()
        if is_local_dir(self._backend.store, self._key):
            raise IsADirectoryError(
                f"key {self._key!r} names a directory: delete it with delete_dir, "
                "not through a locked handle"
            )


class LockedKey(_HandleBase):
    """I/O on one key inside ``RangeLockedStore.locked_sync(...)``; takes no locks.

    Every access is checked to lie inside the held ranges (writes: held
    exclusively) and raises :class:`RangeNotHeldError` otherwise, or once the
    block has ended.
    """

    __slots__ = ()

    def get(
        self, prototype: BufferPrototype | None = None, byte_range: ByteRequest | None = None
    ) -> Buffer | None:
        """Read (part of) the value; the bytes read must lie inside the held ranges."""
        if not self._check_read(byte_range):
            return None
        return self._backend.get_sync(self._key, prototype, byte_range)

    def set_range(self, value: Buffer, start: int) -> None:
        """Overwrite bytes at ``start``; they must lie inside exclusively held ranges."""
        backend = self._backend
        data, start = backend.prepare_set_range(self._key, value, start)
        self._check_write(data, start)
        backend.block_set_range(self._key, data, start)

    def set(self, value: Buffer) -> None:
        """Replace the whole value; needs the whole key ``[(0, None)]`` held exclusively."""
        self._check_whole()
        value = contiguous(value)  # LocalStore cannot write strided memory
        try:
            self._backend.set_value_sync(self._key, value, block=True)
        finally:
            self._backend.forget(self._key)  # replaced (in a transaction: queued for the commit)

    def delete(self) -> None:
        """Delete the value; needs the whole key held exclusively."""
        self._check_delete()
        try:
            self._backend.delete_value_sync(self._key, block=True)
        finally:
            self._backend.forget(self._key)

    def rewrite(self, size: int, pieces: Sequence[tuple[int, Buffer | Span]]) -> None:
        """Replace the whole value by a new one of ``size`` bytes built from
        ``pieces``, in order: ``(offset, Buffer)`` writes the bytes at
        ``offset``, ``(offset, Span(start, end))`` copies that range of the
        value as stored; the rest is zeros, and a later piece wins where two
        overlap. Needs the whole key held exclusively. As :meth:`set` (same
        durability and journaling), but a LocalStore never holds the value
        in memory (see ``store/_rewrite``); a MemoryStore assembles it.

        Raises
        ------
        ValueError
            If a piece falls outside the new value, or copies from outside
            the stored one (the message names the key and the numbers).
        KeyNotFoundError
            If a piece copies and the key has no value.
        """
        self._check_whole()
        try:
            self._backend.rewrite_value_sync(self._key, size, pieces, block=True)
        finally:
            self._backend.forget(self._key)  # replaced (in a transaction: queued for the commit)

    def getsize(self) -> int:
        """Size of the value (stable while any range of the key is held)."""
        size = self._size()
        if size is None:
            raise FileNotFoundError(self._key)
        return size

    def exists(self) -> bool:
        """Whether the key has a value."""
        return self._size() is not None


class AsyncLockedKey(_HandleBase):
    """Async I/O on one key inside ``RangeLockedStore.locked(...)``; takes no locks.

    Same checks as :class:`LockedKey`.
    """

    __slots__ = ()

    async def get(
        self, prototype: BufferPrototype | None = None, byte_range: ByteRequest | None = None
    ) -> Buffer | None:
        """Read (part of) the value; the bytes read must lie inside the held ranges."""
        if not self._check_read(byte_range):
            return None
        return await self._backend.get(self._key, prototype, byte_range)

    async def set_range(self, value: Buffer, start: int) -> None:
        """Overwrite bytes at ``start``; they must lie inside exclusively held ranges."""
        backend = self._backend
        data, start = backend.prepare_set_range(self._key, value, start)
        self._check_write(data, start)
        await backend.block_set_range_async(self._key, data, start)

    async def _set_ranges(self, pieces: Sequence[tuple[Buffer, int]]) -> None:
        """:meth:`set_range` of each ``(value, start)``, every one checked
        before the first is written; a LocalStore writes them with one
        ``fdatasync`` under ``durability="fsync"`` (the shard pipeline's
        chunks placed in several runs, before their index)."""
        backend = self._backend
        writes = []
        for value, at in pieces:
            data, start = backend.prepare_set_range(self._key, value, at)
            self._check_write(data, start)
            writes.append((start, data))
        await backend.block_set_ranges_async(self._key, writes)

    async def set(self, value: Buffer) -> None:
        """Replace the whole value; needs the whole key ``[(0, None)]`` held exclusively."""
        self._check_whole()
        value = contiguous(value)  # LocalStore cannot write strided memory
        try:
            await self._backend.set_value(self._key, value, block=True)
        finally:
            self._backend.forget(self._key)  # replaced (in a transaction: queued for the commit)

    async def delete(self) -> None:
        """Delete the value; needs the whole key held exclusively."""
        self._check_delete()
        try:
            await self._backend.delete_value(self._key, block=True)
        finally:
            self._backend.forget(self._key)

    async def rewrite(self, size: int, pieces: Sequence[tuple[int, Buffer | Span]]) -> None:
        """Async :meth:`LockedKey.rewrite`: a whole new value from pieces of
        the stored one and new bytes, never in memory on a LocalStore."""
        self._check_whole()
        try:
            await self._backend.rewrite_value(self._key, size, pieces, block=True)
        finally:
            self._backend.forget(self._key)  # replaced (in a transaction: queued for the commit)

    async def getsize(self) -> int:
        """Size of the value (stable while any range of the key is held)."""
        size = self._size()
        if size is None:
            raise FileNotFoundError(self._key)
        return size

    async def exists(self) -> bool:
        """Whether the key has a value."""
        return self._size() is not None


class _BlockBase:
    """A ``locked``/``locked_sync`` block: takes the grant on entry, releases it on exit.

    Entry and exit are protected from KeyboardInterrupt (``locks/_ki``): the
    grant is either not taken or owned by the block, whose thread (or task)
    is recorded as its holder, so a request of that thread (task) on
    overlapping ranges inside the block raises ``SelfDeadlockError``.
    """

    __slots__ = ("_backend", "_grant", "_mgr", "_timeout")

    def __init__(
        self, mgr: RangeLockManager, backend: Backend, grant: Grant, timeout: float | None
    ) -> None:
        self._mgr = mgr
        self._backend = backend
        self._grant = grant
        self._timeout = timeout


class LockedBlock(_BlockBase):
    """``with store.locked_sync(key, ranges) as h:``; ``h`` is a :class:`LockedKey`."""

    __slots__ = ()

    @protected
    def __enter__(self) -> LockedKey:
        grant = self._mgr._acquire(self._grant, self._timeout, True)
        return LockedKey(self._backend, grant)

    @protected
    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._mgr._release(self._grant)  # the handle refuses all use from here on


class AsyncLockedBlock(_BlockBase):
    """``async with store.locked(key, ranges) as h:``; ``h`` is an :class:`AsyncLockedKey`."""

    __slots__ = ()

    @protected
    async def __aenter__(self) -> AsyncLockedKey:
        grant = await self._mgr._acquire_async(self._grant, self._timeout, True)
        return AsyncLockedKey(self._backend, grant)

    @protected
    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._mgr._release(self._grant)  # the handle refuses all use from here on
