"""Whole-value writes, deletes and listings of ``RangeLockedStore``.

A mixin of :class:`~zarr_rangelock.RangeLockedStore` (``store/_store``), split
off along the seam its design note names: these operations take whole-key or
prefix locks (or none, for listings) and never touch byte ranges. The locks
each takes are in ``store/_store``'s design note; the mixin only uses what
the store sets up in ``__init__``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
from typing import TYPE_CHECKING, Any

from zarr.abc.store import Store
from zarr.storage import LocalStore, MemoryStore

from ..locks._lockfile import LOCK_FILE_NAME
from ._backends import Backend, is_local_dir
from ._io import contiguous
from ._journal import JOURNAL_DIR
from ._keys import is_temp_file

if TYPE_CHECKING:
    from zarr.core.buffer import Buffer

    from ..locks._table import RangeLockManager
    from ._confine import Confiner

__all__ = ["WholeValueOps"]


class WholeValueOps:
    """``set``, ``set_if_not_exists``, ``delete``, ``delete_dir``, ``clear`` and
    the listings of :class:`~zarr_rangelock.RangeLockedStore` (a mixin)."""

    # Set up by RangeLockedStore.__init__.
    _store: MemoryStore | LocalStore
    _backend: Backend
    _mgr: RangeLockManager
    _confiner: Confiner | None

    if TYPE_CHECKING:  # RangeLockedStore's own

        def _check_key(self, key: str) -> str: ...

        def _check_prefix(self, prefix: str, canonical: bool = False) -> str: ...

    # ---------------------------------------------------------------- writes

    async def set(self, key: str, value: Buffer) -> None:
        """Store a whole value, under an exclusive whole-key lock.

        Concurrency
        -----------
        Waits, in FIFO order, for every earlier request on the key (range
        writers and readers included), and later requests on the key wait for
        it: it is never starved by a stream of ``set_range`` calls. A
        cancellation after the write started lets it finish (holding the
        lock) and re-raises afterwards.
        """
        self._store._check_writable()
        key = self._check_key(key)
        value = contiguous(value)  # LocalStore cannot write strided memory
        async with self._mgr.lock_async(key):
            try:
                await self._backend.set_value(key, value)
            finally:
                self._backend.forget(key)  # the file was replaced

    def set_sync(self, key: str, value: Buffer) -> None:
        """Synchronous :meth:`set`; no event loop involved.

        Concurrency
        -----------
        As :meth:`set`, blocking the calling thread while queued.
        """
        self._store._check_writable()
        key = self._check_key(key)
        value = contiguous(value)  # LocalStore cannot write strided memory
        with self._mgr.lock(key):
            try:
                self._backend.set_value_sync(key, value)
            finally:
                self._backend.forget(key)  # the file was replaced

    async def set_if_not_exists(self, key: str, value: Buffer) -> None:
        """Store ``value`` unless ``key`` exists; atomic under the whole-key lock.

        Concurrency
        -----------
        As :meth:`set`.
        """
        self._store._check_writable()
        key = self._check_key(key)
        value = contiguous(value)  # LocalStore cannot write strided memory
        async with self._mgr.lock_async(key):
            try:
                await self._backend.set_value_if_missing(key, value)
            finally:
                self._backend.forget(key)

    async def _set_many(self, values: Iterable[tuple[str, Buffer]]) -> None:
        await asyncio.gather(*(self.set(key, value) for key, value in values))

    async def delete(self, key: str) -> None:
        """Remove ``key`` (no error if missing), under an exclusive whole-key lock.

        A LocalStore key naming a directory removes the directory, under an
        exclusive prefix lock on ``key``, as zarr's LocalStore does.

        Concurrency
        -----------
        As :meth:`set`.
        """
        self._store._check_writable()
        key = self._check_key(key)
        while True:
            if is_local_dir(self._store, key):
                async with self._mgr.lock_prefix_async(key):
                    self._backend.removing_prefix()
                    try:
                        await self._backend.delete_tree(key)
                    finally:
                        self._backend.forget_prefix(f"{key}/")
                return
            async with self._mgr.lock_async(key):
                if not is_local_dir(self._store, key):
                    try:
                        await self._backend.delete_value(key)
                    finally:
                        self._backend.forget(key)
                    return
            # It became a directory meanwhile: retry under the prefix lock.

    def delete_sync(self, key: str) -> None:
        """Synchronous :meth:`delete`; no event loop involved.

        Concurrency
        -----------
        As :meth:`delete`, blocking the calling thread while queued.
        """
        self._store._check_writable()
        key = self._check_key(key)
        while True:
            if is_local_dir(self._store, key):
                with self._mgr.lock_prefix(key):
                    self._backend.removing_prefix()
                    try:
                        self._store.delete_sync(key)
                    finally:
                        self._backend.forget_prefix(f"{key}/")
                return
            with self._mgr.lock(key):
                if not is_local_dir(self._store, key):
                    try:
                        self._backend.delete_value_sync(key)
                    finally:
                        self._backend.forget(key)
                    return

    async def delete_dir(self, prefix: str) -> None:
        """Remove every key under ``prefix`` (a directory: ``prefix/...``).

        Concurrency
        -----------
        Holds an exclusive prefix lock on ``prefix/`` (``""`` for the root):
        waits for every earlier request on any key under it, and requests on
        such keys, existing or not yet, wait for it.
        """
        self._store._check_writable()
        prefix = self._check_prefix(prefix, canonical=True)
        body = prefix.rstrip("/")
        if not body:
            await self._write_under("", self._backend.clear)  # keeps the lock file
            return
        await self._write_under(f"{body}/", lambda: self._backend.delete_dir(prefix))

    async def clear(self) -> None:
        """Remove every key, under an exclusive prefix lock on ``""``.

        Unlike zarr's MemoryStore, a read-only wrapper refuses to clear.

        Concurrency
        -----------
        As :meth:`delete_dir` for the whole store.
        """
        self._store._check_writable()
        await self._write_under("", self._backend.clear)

    async def _write_under(self, prefix: str, make: Any) -> None:
        """Run the write ``make()`` holding the prefix lock on ``prefix``, then
        drop cached state of every key under it."""
        async with self._mgr.lock_prefix_async(prefix):
            self._backend.removing_prefix()
            try:
                await self._backend.run_write(make)
            finally:
                self._backend.forget_prefix(prefix)

    # --------------------------------------------------------------- listing

    def list(self) -> AsyncIterator[str]:
        """Every key (a LocalStore root's lock file is not a key).

        Over a MemoryStore the keys are those of the moment iteration starts
        (zarr's ``list_prefix("")``, which takes them at once): zarr's
        ``MemoryStore.list`` walks its dict while it yields, and raises
        ``RuntimeError`` ("dictionary changed size during iteration") if a
        key is set or deleted meanwhile, by a task that runs while the
        caller awaits between keys or by another thread.
        """
        store = self._store
        names = store.list_prefix("") if type(store) is MemoryStore else store.list()
        return self._without_lock_file(names, at_root=True)

    def list_prefix(self, prefix: str) -> AsyncIterator[str]:
        """Every key starting with ``prefix`` (the lock file is not a key).

        The prefix is checked at once, not when iteration starts.
        """
        prefix = self._check_prefix(prefix)
        return self._without_lock_file(self._store.list_prefix(prefix), at_root=True)

    def list_dir(self, prefix: str) -> AsyncIterator[str]:
        """Names directly under ``prefix`` (the lock file is not one); checked at once."""
        prefix = self._check_prefix(prefix)
        base = prefix.rstrip("/")
        return self._without_lock_file(self._store.list_dir(prefix), at_root=not base, base=base)

    async def _without_lock_file(
        self, names: AsyncIterator[str], at_root: bool, base: str = ""
    ) -> AsyncIterator[str]:
        """``names`` (relative to the directory ``base``) without the lock file,
        without temporary files a killed LocalStore ``set`` left behind
        (``_keys.TEMP_FILE``) and, if confined, without names that a link
        takes out of the root."""
        local = type(self._store) is LocalStore
        hide = at_root and local
        confiner = self._confiner
        async for name in names:
            if (
                not (hide and (name == LOCK_FILE_NAME or name.split("/", 1)[0] == JOURNAL_DIR))
                and not (local and is_temp_file(name))
                and (confiner is None or confiner.keeps(base, name))
            ):
                yield name

    async def is_empty(self, prefix: str) -> bool:
        """Whether no key starts with ``prefix`` (the lock file is not a key)."""
        prefix = self._check_prefix(prefix)
        # zarr's own is_empty (both stores use it), over this store's listing.
        return await Store.is_empty(self, prefix)  # type: ignore[arg-type]  # a Store: the mixin's only user
