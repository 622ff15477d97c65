"""What the load runs against: the locked store, or the bare zarr store (the control).

Both targets offer the same calls, sync and async, so an op is written once
per flavour and does not care which it hits. ``region`` / ``region_sync`` are
the read-modify-write hooks: ``RangeLockedStore.locked(...)`` on the locked
target, nothing at all on the bare one.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any, Protocol

from zarr.abc.store import ByteRequest
from zarr.core.buffer import Buffer
from zarr.core.buffer.core import default_buffer_prototype
from zarr.storage import LocalStore, MemoryStore

from zarr_rangelock import RangeLockedStore
from zarr_rangelock.locks._ranges import RangeSpec
from zarr_rangelock.store._store import unlocked_set_range, unlocked_set_range_sync

__all__ = ["PROTO", "BareTarget", "LockedTarget", "Target"]

PROTO = default_buffer_prototype()
type Inner = MemoryStore | LocalStore


class SyncHandle(Protocol):
    def get(
        self, prototype: Any = None, byte_range: ByteRequest | None = None
    ) -> Buffer | None: ...

    def set_range(self, value: Buffer, start: int) -> None: ...


class AsyncHandle(Protocol):
    async def get(
        self, prototype: Any = None, byte_range: ByteRequest | None = None
    ) -> Buffer | None: ...

    async def set_range(self, value: Buffer, start: int) -> None: ...


class Target(Protocol):
    """The calls the ops make."""

    label: str
    inner: Inner

    def get_sync(self, key: str, byte_range: ByteRequest | None = None) -> Buffer | None: ...
    def set_sync(self, key: str, value: Buffer) -> None: ...
    def delete_sync(self, key: str) -> None: ...
    def set_range_sync(self, key: str, value: Buffer, start: int) -> None: ...
    def region_sync(
        self, key: str, ranges: Sequence[RangeSpec]
    ) -> contextlib.AbstractContextManager[SyncHandle]: ...
    async def get(self, key: str, byte_range: ByteRequest | None = None) -> Buffer | None: ...
    async def set(self, key: str, value: Buffer) -> None: ...
    async def delete(self, key: str) -> None: ...
    async def set_if_not_exists(self, key: str, value: Buffer) -> None: ...
    async def delete_dir(self, prefix: str) -> None: ...
    async def clear(self) -> None: ...
    async def set_range(self, key: str, value: Buffer, start: int) -> None: ...
    async def get_partial_values(
        self, requests: Sequence[tuple[str, ByteRequest | None]]
    ) -> list[Buffer | None]: ...
    async def exists(self, key: str) -> bool: ...
    async def getsize(self, key: str) -> int: ...
    async def listing(self, how: str, prefix: str) -> list[str]: ...
    def region(
        self, key: str, ranges: Sequence[RangeSpec]
    ) -> contextlib.AbstractAsyncContextManager[AsyncHandle]: ...
    def lock_stats(self) -> dict[str, Any] | None: ...
    def check_locks(self) -> None: ...
    def dump_locks(self) -> list[str]: ...


class _Forwarding:
    """The calls both targets pass unchanged to a store, ``self._to``."""

    _to: Inner | RangeLockedStore

    def get_sync(self, key: str, byte_range: ByteRequest | None = None) -> Buffer | None:
        return self._to.get_sync(key, prototype=PROTO, byte_range=byte_range)

    def set_sync(self, key: str, value: Buffer) -> None:
        self._to.set_sync(key, value)

    def delete_sync(self, key: str) -> None:
        self._to.delete_sync(key)

    async def get(self, key: str, byte_range: ByteRequest | None = None) -> Buffer | None:
        return await self._to.get(key, PROTO, byte_range)

    async def set(self, key: str, value: Buffer) -> None:
        await self._to.set(key, value)

    async def delete(self, key: str) -> None:
        await self._to.delete(key)

    async def set_if_not_exists(self, key: str, value: Buffer) -> None:
        await self._to.set_if_not_exists(key, value)

    async def delete_dir(self, prefix: str) -> None:
        await self._to.delete_dir(prefix)

    async def clear(self) -> None:
        await self._to.clear()

    async def get_partial_values(
        self, requests: Sequence[tuple[str, ByteRequest | None]]
    ) -> list[Buffer | None]:
        return await self._to.get_partial_values(PROTO, requests)

    async def exists(self, key: str) -> bool:
        return await self._to.exists(key)

    async def getsize(self, key: str) -> int:
        return await self._to.getsize(key)

    async def listing(self, how: str, prefix: str) -> list[str]:
        """The store's ``list()`` (``how="list"``), ``list_prefix(prefix)`` or
        ``list_dir(prefix)``, drained at once (names as they came)."""
        if how == "list":
            names = self._to.list()
        elif how == "list_prefix":
            names = self._to.list_prefix(prefix)
        else:
            names = self._to.list_dir(prefix)
        return [name async for name in names]


class LockedTarget(_Forwarding):
    """``store``, a :class:`RangeLockedStore` around ``inner``."""

    def __init__(self, inner: Inner, store: RangeLockedStore) -> None:
        self.inner = inner
        self.store = self._to = store
        extra = ", map_writes=True" if store.map_writes else ""
        extra += ", dense_shards=True" if store.dense_shards else ""
        extra += f", durability={store.durability!r}" if store.durability != "none" else ""
        self.label = f"RangeLockedStore({type(inner).__name__}{extra})"

    def set_range_sync(self, key: str, value: Buffer, start: int) -> None:
        self.store.set_range_sync(key, value, start)

    def region_sync(
        self, key: str, ranges: Sequence[RangeSpec]
    ) -> contextlib.AbstractContextManager[SyncHandle]:
        return self.store.locked_sync(key, ranges)

    async def set_range(self, key: str, value: Buffer, start: int) -> None:
        await self.store.set_range(key, value, start)

    def region(
        self, key: str, ranges: Sequence[RangeSpec]
    ) -> contextlib.AbstractAsyncContextManager[AsyncHandle]:
        return self.store.locked(key, ranges)

    def lock_stats(self) -> dict[str, Any] | None:
        return dataclasses.asdict(self.store.lock_manager.stats())

    def check_locks(self) -> None:
        """Assert the lock table's invariants (raises ``AssertionError``)."""
        self.store.lock_manager._check()

    def dump_locks(self) -> list[str]:
        """One line per live lock request (for hang reports)."""
        return self.store.lock_manager._dump()


class _BareSyncHandle:
    def __init__(self, inner: Inner, key: str) -> None:
        self._inner, self._key = inner, key

    def get(self, prototype: Any = None, byte_range: ByteRequest | None = None) -> Buffer | None:
        return self._inner.get_sync(self._key, prototype=prototype, byte_range=byte_range)

    def set_range(self, value: Buffer, start: int) -> None:
        unlocked_set_range_sync(self._inner, self._key, value, start)


class _BareAsyncHandle:
    def __init__(self, inner: Inner, key: str) -> None:
        self._inner, self._key = inner, key

    async def get(
        self, prototype: Any = None, byte_range: ByteRequest | None = None
    ) -> Buffer | None:
        return await self._inner.get(self._key, prototype, byte_range)

    async def set_range(self, value: Buffer, start: int) -> None:
        await unlocked_set_range(self._inner, self._key, value, start)


class BareTarget(_Forwarding):
    """The bare zarr store, no locks anywhere: the ``--unlocked`` control.

    ``set_range`` is the same positional write the locked store does
    (``unlocked_set_range``), without its lock; everything else is the bare
    store's own method.
    """

    def __init__(self, inner: Inner) -> None:
        self.inner = self._to = inner
        self.label = f"{type(inner).__name__} (bare, no locks)"

    def set_range_sync(self, key: str, value: Buffer, start: int) -> None:
        unlocked_set_range_sync(self.inner, key, value, start)

    @contextlib.contextmanager
    def region_sync(self, key: str, ranges: Sequence[RangeSpec]) -> Iterator[SyncHandle]:
        del ranges  # nothing is locked: that is the point of the control
        yield _BareSyncHandle(self.inner, key)

    async def set_range(self, key: str, value: Buffer, start: int) -> None:
        await unlocked_set_range(self.inner, key, value, start)

    async def get_partial_values(
        self, requests: Sequence[tuple[str, ByteRequest | None]]
    ) -> list[Buffer | None]:
        try:
            return await super().get_partial_values(requests)
        except FileNotFoundError:
            # zarr 3.4.2's LocalStore.get_partial_values raises for a missing key
            # instead of returning None (a quirk, not a race): redo it key by key
            # with the bare store's own get, which maps a missing file to None.
            return [await self.get(k, r) for k, r in requests]

    @contextlib.asynccontextmanager
    async def region(self, key: str, ranges: Sequence[RangeSpec]) -> AsyncIterator[AsyncHandle]:
        del ranges
        yield _BareAsyncHandle(self.inner, key)

    def lock_stats(self) -> dict[str, Any] | None:
        return None

    def check_locks(self) -> None:
        return None

    def dump_locks(self) -> list[str]:
        return []
