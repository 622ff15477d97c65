"""The base of the raw byte-range I/O classes: what every backend does alike.

:class:`Backend` holds the operations both stores share, built on the few
each store implements (``size``, ``set_range``, ``get_sync``, ...): whole
values, ``rewrite`` from pieces, bounds checks, reads. The store-specific
subclasses (``MemoryBackend``, ``LocalBackend``) and the design note are in
``_backends``, which re-exports this class. Split out of ``_backends`` (STYLE:
modules past ~800 lines); nothing here takes a range lock either.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from zarr.abc.store import RangeByteRequest
from zarr.core.buffer import Buffer, cpu
from zarr.core.buffer.core import default_buffer_prototype

from .._errors import KeyNotFoundError
from ._io import as_bytes_view, check_start
from ._io import check_fits as _check_fits
from ._keys import validate_key
from ._rewrite import assemble, check_pieces

if TYPE_CHECKING:
    from zarr.abc.store import ByteRequest
    from zarr.core.buffer import BufferPrototype

    from ._state import SharedState

__all__ = ["Backend"]


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

    def value_id(self, key: str) -> object:
        """What tells ``key``'s stored value from one that replaced it behind
        every wrapper's back (the bare store, stock zarr in this or another
        process), which no change stamp records; None when there is none (no
        value, or none to tell). Caches of what a value holds (``shards/_known``)
        keep it beside the stamp and trust themselves only while
        :meth:`same_value` says the value is still that one. Cheap: no system
        call in the common case."""
        raise NotImplementedError

    def same_value(self, key: str, ident: object) -> bool:
        """Whether ``key`` still holds the value :meth:`value_id` gave ``ident``
        for (never for None: an unknown value is never taken for a known one)."""
        raise NotImplementedError

    def set_ranges(
        self, key: str, writes: Sequence[tuple[int, memoryview]], *, stamp: object = None
    ) -> None:
        """:meth:`set_range` of each ``(start, data)`` of ``writes`` in turn
        (the caller holds one lock over all of them). ``stamp``: the key's
        change stamp (``SharedState.generation``) if the caller read it
        holding that lock, so that it need not be read again."""
        for start, data in writes:
            self.set_range(key, data, start)

    async def set_range_async(self, key: str, data: memoryview, start: int) -> None:
        """:meth:`set_range` for a coroutine: inline, or in a thread when large."""
        self.set_range(key, data, start)

    def witness(self, key: str, start: int, length: int) -> None:
        """A read witness of the running journal transaction, if any
        (``_transaction.Transaction.add_witness``); else nothing."""

    def forget(self, key: str) -> None:
        """Drop cached state of ``key``; called after a whole-value write or delete,
        with the whole-key lock still held."""
        self.state.bump(key)

    def bump(self, key: str) -> None:
        """Stamp ``key`` anew for an in-place change that readers must not
        take for the old value (a shard's index re-pointed), its file kept:
        call with the whole-key lock held, before the change (so an
        interrupted change never leaves the old stamp on new bytes)."""
        self.state.bump(key)

    def forget_prefix(self, prefix: str) -> None:
        """Drop cached state of every key under ``prefix`` (a ``/``-ended prefix or
        ``""``), with the prefix lock still held."""
        self.state.bump_all()

    def removing_prefix(self) -> None:
        """Called with a prefix lock held, before the keys under it are
        removed (:meth:`forget_prefix` comes after): nothing to do where no
        other process sees the stamps (see ``LocalBackend``)."""

    def prepare_set_range(self, key: str, value: Buffer, start: int) -> tuple[memoryview, int]:
        """Refuse a ``set_range`` that can never succeed (read-only store, bad
        key, value or start), before any lock; return the bytes and the start."""
        self.store._check_writable()
        validate_key(key)
        data = as_bytes_view(value, "set_range")
        return data, check_start(key, start, len(data))

    async def run_write(self, make: Callable[[], Awaitable[None]], key: str = "") -> None:
        """Await the whole-value write ``make()`` of the wrapped store (of ``key``,
        or of a prefix).

        MemoryStore writes do not yield, so they are awaited directly;
        :class:`LocalBackend` overrides this (its writes run in worker threads).
        """
        await make()

    def run_write_sync(self, write: Callable[[], None], key: str) -> None:
        """Run the whole-value write ``write()`` of the wrapped store, of ``key``."""
        write()

    # Whole-value writes and deletes, by the store itself or (``block=True``)
    # through a ``locked()`` handle, which may join the call's journal
    # transaction (see DurableLocalBackend). The store holds the whole-key lock.

    async def set_value(self, key: str, value: Buffer, block: bool = False) -> None:
        """Replace ``key``'s value (the wrapped store's ``set``)."""
        await self.run_write(lambda: self.store.set(key, value), key)

    def set_value_sync(self, key: str, value: Buffer, block: bool = False) -> None:
        """Synchronous :meth:`set_value`."""
        self.run_write_sync(lambda: self.store.set_sync(key, value), key)

    async def delete_value(self, key: str, block: bool = False) -> None:
        """Remove ``key`` (the wrapped store's ``delete``; no error if missing).

        A key under another key's value (``"a/b"`` where ``"a"`` is a value)
        is missing: a LocalStore's ``delete`` raises ``NotADirectoryError``
        for it, where a MemoryStore's does nothing."""
        with contextlib.suppress(NotADirectoryError):
            await self.run_write(lambda: self.store.delete(key))

    def delete_value_sync(self, key: str, block: bool = False) -> None:
        """Synchronous :meth:`delete_value`."""
        with contextlib.suppress(NotADirectoryError):
            self.store.delete_sync(key)

    async def set_value_if_missing(self, key: str, value: Buffer) -> None:
        """Store ``value`` unless ``key`` exists (the wrapped store's ``set_if_not_exists``)."""
        await self.run_write(lambda: self.store.set_if_not_exists(key, value), key)

    async def delete_tree(self, key: str) -> None:
        """Remove ``key``, a directory with everything under it (the wrapped
        store's ``delete``); the store holds the prefix lock."""
        await self.run_write(lambda: self.store.delete(key))

    async def delete_dir(self, prefix: str) -> None:
        """Remove every key under ``prefix`` (the wrapped store's
        ``delete_dir``); the store holds the prefix lock."""
        await self.run_write(lambda: self.store.delete_dir(prefix))

    # Whole-value rewrites from pieces (``_rewrite``): the store holds the
    # whole-key lock; ``block`` as for set_value.

    def rewrite_value_sync(
        self, key: str, size: int, pieces: Sequence[tuple[int, object]], block: bool = False
    ) -> None:
        """Replace ``key``'s value by ``size`` bytes built from ``pieces``
        (``_rewrite``): here assembled in memory, then set."""
        self.set_value_sync(key, self._assembled(key, size, pieces), block)

    async def rewrite_value(
        self, key: str, size: int, pieces: Sequence[tuple[int, object]], block: bool = False
    ) -> None:
        """Async :meth:`rewrite_value_sync`."""
        await self.set_value(key, self._assembled(key, size, pieces), block)

    def _assembled(self, key: str, size: int, pieces: Sequence[tuple[int, object]]) -> Buffer:
        """The new value of ``key`` built from ``pieces`` in memory, checked first."""
        self.store._check_writable()
        old = self._stored(key)
        checked = check_pieces(key, size, pieces, None if old is None else len(old))
        return cpu.Buffer(assemble(old, size, checked))

    def _stored(self, key: str) -> memoryview | None:
        """The stored value of ``key`` as bytes (whole-key lock held), or None."""
        buf = self.get_sync(key, default_buffer_prototype(), None)
        return None if buf is None else as_bytes_view(buf, "rewrite")

    def block_set_range(self, key: str, data: memoryview, start: int) -> None:
        """:meth:`set_range` through a ``locked()`` handle."""
        self.set_range(key, data, start)

    async def block_set_range_async(self, key: str, data: memoryview, start: int) -> None:
        """:meth:`set_range_async` through a ``locked()`` handle."""
        await self.set_range_async(key, data, start)

    async def block_set_ranges_async(
        self, key: str, writes: Sequence[tuple[int, memoryview]]
    ) -> None:
        """:meth:`block_set_range_async` of each ``(start, data)`` in turn; a
        LocalStore's writes them with one descriptor checkout and, under
        ``durability="fsync"``, one ``fdatasync`` (:meth:`set_ranges`)."""
        for start, data in writes:
            await self.block_set_range_async(key, data, start)

    async def clear(self) -> None:
        """Remove every key (the wrapped store's ``clear``)."""
        await self.store.clear()

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

    def read_range(self, key: str, start: int, end: int) -> Buffer | None:
        """``get_sync`` of ``[start, end)`` with the default prototype (None if
        the key is missing; clipped at the value's end)."""
        return self.get_sync(key, default_buffer_prototype(), RangeByteRequest(start, end))

    async def get(
        self, key: str, prototype: BufferPrototype | None, byte_range: ByteRequest | None
    ) -> Buffer | None:
        """Async :meth:`get_sync`."""
        return await self.store.get(key, prototype=prototype, byte_range=byte_range)  # type: ignore[no-any-return]
