"""Reads of ``RangeLockedStore``: ``get`` and its kin, sizes, consistent reads.

A mixin of :class:`~zarr_rangelock.RangeLockedStore` (``store/_store``), split
off along the seam its design note names: these operations take shared locks
on what they read (one key at a time, never several at once: a reader holding
key A while queued on key B could deadlock against FIFO-queued writers of A
and B), or, inside a ``consistent_reads`` block, borrow the block's
(``store/_reads``). The locks each takes are in ``store/_store``'s design
note; the mixin only uses what the store sets up in ``__init__``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import TYPE_CHECKING, cast

from zarr.abc.store import Store

from ._backends import META_RANGE, Backend, SharedState, read_span
from ._reads import NOT_LENT, READ_HELD, ReadHold

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator

    from zarr.abc.store import ByteRequest
    from zarr.core.buffer import Buffer, BufferPrototype

    from ..locks._table import RangeLockManager

__all__ = ["ReadOps"]

_META_START, _META_END = META_RANGE


class ReadOps:
    """``get``, ``get_sync``, ``get_partial_values``, ``get_ranges``,
    ``getsize``, ``exists`` and ``consistent_reads`` of
    :class:`~zarr_rangelock.RangeLockedStore` (a mixin)."""

    # Set up by RangeLockedStore.__init__.
    _backend: Backend
    _mgr: RangeLockManager
    _state: SharedState

    if TYPE_CHECKING:  # RangeLockedStore's own

        def _check_key(self, key: str) -> str: ...

    # ----------------------------------------------------------------- reads

    async def get(
        self,
        key: str,
        prototype: BufferPrototype | None = None,
        byte_range: ByteRequest | None = None,
    ) -> Buffer | None:
        """Read (part of) a value under a shared lock on the bytes read.

        Concurrency
        -----------
        Waits, without blocking the event loop, for earlier writers of
        overlapping ranges (and for whole-key writes); runs in parallel with
        other readers and with writers of other ranges. The result is never a
        mix of before and after one write, and never changes afterwards.
        """
        key = self._check_key(key)
        start, end = read_span(byte_range, key)
        hold = self._read_hold(key)
        if hold is not None:  # inside consistent_reads of key: no lock of its own
            got = await hold.read(lambda: self._backend.get(key, prototype, byte_range))
            if got is not NOT_LENT:
                return got  # type: ignore[return-value]  # not NOT_LENT: a read's result
        async with self._mgr.lock_async(key, start, end, shared=True):
            return await self._backend.get(key, prototype, byte_range)

    def get_sync(
        self,
        key: str,
        *,
        prototype: BufferPrototype | None = None,
        byte_range: ByteRequest | None = None,
    ) -> Buffer | None:
        """Synchronous :meth:`get`; no event loop involved.

        Concurrency
        -----------
        As :meth:`get`, but blocks the calling thread while queued.
        """
        key = self._check_key(key)
        start, end = read_span(byte_range, key)
        hold = self._read_hold(key)
        if hold is not None:  # inside consistent_reads of key: no lock of its own
            got = hold.read_sync(lambda: self._backend.get_sync(key, prototype, byte_range))
            if got is not NOT_LENT:
                return got  # type: ignore[return-value]  # not NOT_LENT: a read's result
        with self._mgr.lock(key, start, end, shared=True):
            return self._backend.get_sync(key, prototype, byte_range)

    async def get_partial_values(
        self,
        prototype: BufferPrototype,
        key_ranges: Iterable[tuple[str, ByteRequest | None]],
    ) -> list[Buffer | None]:
        """Read several ranges; each is one locked :meth:`get` (not one atomic snapshot).

        Concurrency
        -----------
        Each read takes its own shared lock; locks are never held on two keys
        at once, so this cannot deadlock against writers.
        """
        requests = list(key_ranges)  # may be a one-shot iterator
        for key, byte_range in requests:
            read_span(byte_range, self._check_key(key))
        return list(
            await asyncio.gather(
                *(self.get(key, prototype, byte_range) for key, byte_range in requests)
            )
        )

    async def get_ranges(
        self,
        key: str,
        byte_ranges: Sequence[ByteRequest | None],
        *,
        prototype: BufferPrototype,
        max_concurrency: int | None = None,
        max_gap_bytes: int | None = None,
        max_coalesced_bytes: int | None = None,
    ) -> AsyncIterator[Sequence[tuple[int, Buffer | None]]]:
        """Coalesced range reads built on this store's locked :meth:`get`.

        ``WrapperStore`` would forward to the wrapped store and skip the
        locks; ``None`` for a coalescing argument means zarr's default.
        """
        kwargs: dict[str, int] = {}
        if max_concurrency is not None:
            kwargs["max_concurrency"] = max_concurrency
        if max_gap_bytes is not None:
            kwargs["max_gap_bytes"] = max_gap_bytes
        if max_coalesced_bytes is not None:
            kwargs["max_coalesced_bytes"] = max_coalesced_bytes
        store = cast(Store, self)  # (the mixin is only ever a RangeLockedStore's)
        async for group in Store.get_ranges(store, key, byte_ranges, prototype=prototype, **kwargs):
            yield group

    async def _get_many(
        self, requests: Iterable[tuple[str, BufferPrototype, ByteRequest | None]]
    ) -> AsyncGenerator[tuple[str, Buffer | None], None]:
        for key, prototype, byte_range in requests:
            yield key, await self.get(key, prototype, byte_range)

    async def _size(self, key: str) -> int | None:
        """``key``'s size or None, under a shared lock that only whole-key writes conflict with."""
        key = self._check_key(key)
        hold = self._read_hold(key)
        if hold is not None:  # inside consistent_reads of key: no lock of its own
            got = hold.read_sync(lambda: self._backend.size(key))
            if got is not NOT_LENT:
                return got  # type: ignore[return-value]  # not NOT_LENT: a read's result
        async with self._mgr.lock_async(key, _META_START, _META_END, shared=True):
            return self._backend.size(key)

    async def getsize(self, key: str) -> int:
        """Size of ``key``'s value in bytes; ``FileNotFoundError`` if missing.

        Concurrency
        -----------
        Waits for earlier whole-key writes (``set``, ``delete``) only; never
        for a ``set_range``, which cannot change the size.
        """
        size = await self._size(key)
        if size is None:
            raise FileNotFoundError(key)
        return size

    async def exists(self, key: str) -> bool:
        """Whether ``key`` has a value.

        Concurrency
        -----------
        As :meth:`getsize`.
        """
        return await self._size(key) is not None

    # ----------------------------------------------------- consistent reads

    def _read_hold(self, key: str) -> ReadHold | None:
        """The hold of a ``consistent_reads`` block covering ``key`` in this
        context, if any (it may have ended: see ``_reads``)."""
        held = READ_HELD.get()
        return held.get((self._state.uid, key)) if held else None

    @contextlib.asynccontextmanager
    async def consistent_reads(self, keys: Iterable[str]) -> AsyncIterator[None]:
        """Hold every key in ``keys`` shared, whole, for a block of reads.

        Inside the block, reads of those keys by this task and by the tasks it
        starts (``get``, ``get_sync``, ``get_partial_values``, ``getsize``,
        ``exists``) take no further locks and together see one state of each
        key: no ``set``, ``delete`` or ``set_range`` of them can happen in
        between. Only while the block runs: a task started in the block that
        reads after the block has ended takes its locks as usual, and a read
        that started while the block ran keeps the block's locks held until it
        is done (see ``store/_reads``). This is what a reader needs when it makes several reads that
        depend on each other, as zarr does for a shard (its index, then the
        chunks at the offsets the index gives); the shard pipeline uses it.

        Concurrency
        -----------
        Keys are taken in sorted order. Waiting for the first holds nothing;
        while holding some, the wait for the next is bounded (by 50 ms,
        ``HOLD_AND_WAIT_S`` of ``locks/_holdall``), after which all are
        released and the attempt starts over, so the block cannot deadlock
        against prefix locks (``delete_dir``, ``clear``) or other multi-key
        lockers. Writers of the keys wait for the block to end (and for reads
        still running that started in it); a long block delays them.
        Cancellation releases everything held. A write of one of the keys
        from the block's own task raises ``SelfDeadlockError`` instead of
        waiting forever.
        """
        uid = self._state.uid
        wanted = sorted({self._check_key(k) for k in _key_list(keys)})
        held = READ_HELD.get()
        hold = ReadHold(self._mgr)
        try:
            # keys an enclosing block holds are borrowed from it (re-entrant)
            todo = [k for k in wanted if not hold.borrow_from(held.get((uid, k)))]
            await hold.take(todo)
            token = READ_HELD.set({**held, **{(uid, k): hold for k in wanted}})
            try:
                yield
            finally:
                READ_HELD.reset(token)
        finally:
            hold.close()


def _key_list(keys: object) -> Iterable[str]:
    """``consistent_reads``' keys, refusing what is not a collection of keys:
    a ``str`` is iterable, and its letters would be held instead of it."""
    if isinstance(keys, (str, bytes)) or not isinstance(keys, Iterable):
        hint = f"; for one key pass [{keys!r}]" if isinstance(keys, str) else ""
        raise TypeError(
            f"consistent_reads takes an iterable of keys, got {type(keys).__name__}: {keys!r}{hint}"
        )
    return keys
