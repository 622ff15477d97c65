"""``RangeLockedStore``: a zarr store whose every operation takes byte-range locks.

Design note
-----------
Which lock each operation takes (all through the one
:class:`~zarr_rangelock.RangeLockManager` shared by every wrapper of the same
underlying store):

=========================================  ==========================================
operation                                  lock
=========================================  ==========================================
``set_range``                              exclusive ``[start, start + len)``
``set``, ``set_if_not_exists``, ``delete``  exclusive whole key ``[0, end)``
``delete_dir(p)``, ``clear``               exclusive prefix ``p/`` (``""`` for clear)
``get``, ``get_sync``                      shared, on the requested range (whole key
                                           for a suffix request)
``get_partial_values``, ``get_ranges``     one shared ``get`` per range, in turn
``getsize``, ``exists``                    shared on :data:`META_RANGE`
``list*``, ``is_empty``                    none (names only; see below)
=========================================  ==========================================

For a LocalStore (unless ``cross_process=False``) every lock in this table is
also taken as an OS byte-range lock on the root's lock file, so wrappers in
other processes are excluded the same way (``locks/_oslock``); the lock file
is hidden from listings, refused as a key, and kept by ``clear`` and
``delete_dir("")``.

Sizes and existence change only under a whole-key lock, and every range lock
overlaps the whole key, so ``getsize``/``exists`` lock one byte past any real
offset (:data:`META_RANGE`): they wait for ``set``/``delete`` but never for a
``set_range``. Listing reads only names, which both stores change atomically
(a dict assignment, a file rename), and the lock table has no shared prefix
mode, so listings take no locks.

Multi-key reads take their locks one key at a time, never several at once: a
reader holding key A while queued on key B can deadlock against FIFO-queued
writers of A and B. Only ``locked(...)`` holds several ranges at once, and
those are ranges of one key, taken atomically.

Whole-value writes, deletes, prefix operations and listings live in the
mixin ``store/_whole``, reads, sizes and consistent reads in the mixin
``store/_readops`` (split along those seams); this module keeps the range
writes and the handles.

Refusals (read-only store, bad key, bad type, negative start) happen before
any lock is requested; existence and bounds are checked under the lock, where
they cannot change. A refused write changes nothing.

``set_range``/``set_range_sync`` check the common call (a contiguous
``cpu.Buffer``, an ``int`` start, a key already validated once, a writable
store) inline, then lock and write; anything else, every call that must be
refused included, takes the full path, so refusals and their order are the
full path's. LocalStore writes go through the root's cache of open
descriptors (see ``_fdcache``), checked against the key's change stamp on
every write and against the path at most once per 10 ms;
``set``, ``set_if_not_exists``, ``delete``, ``delete_dir``, ``clear`` and the
handles' ``set``/``delete`` drop the entries they make stale while still
holding their whole-key or prefix lock, and ``close()`` flushes the cache.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, cast

import numpy as np
from zarr.core.buffer import cpu
from zarr.storage import LocalStore, MemoryStore, WrapperStore

from ..locks._ranges import MAX_OFFSET, RangeSpec, as_bool
from ._backends import (
    INLINE_WRITE_MAX,
    META_RANGE,
    Backend,
    LocalBackend,
    SharedState,
    backend_for,
    check_map_writes,
    check_supported,
    shared_state_for,
    unlocked_set_range,
    unlocked_set_range_sync,
    why_not_mapped,
)
from ._confine import Confiner
from ._durable import Durability, check_durability, local_backend, recover, transaction
from ._handles import AsyncLockedBlock, LockedBlock
from ._keys import VALID_KEYS, validate_key, validate_prefix
from ._readops import ReadOps
from ._whole import WholeValueOps

if TYPE_CHECKING:
    from types import TracebackType

    from zarr.core.buffer import Buffer

    from ..locks._table import Grant, RangeLockManager

# The unlocked functions live with the raw I/O; re-exported here, where API.md names them.
__all__ = ["RangeLockedStore", "unlocked_set_range", "unlocked_set_range_sync"]

_META_START, _META_END = META_RANGE

#: RangeLockedStore's options, each kept as the attribute ``_<name>``.
_OPTIONS = ("cross_process", "confine", "durability", "map_writes", "dense_shards")

_CpuBuffer = cpu.Buffer
_ndarray = np.ndarray


class RangeLockedStore(WholeValueOps, ReadOps, WrapperStore[MemoryStore | LocalStore]):
    """A zarr store that wraps a MemoryStore or LocalStore and locks byte ranges.

    It implements :class:`~zarr_rangelock.SupportsSetRange`: ``set_range``
    overwrites part of an existing value in place (``os.pwrite`` into the
    file; a ``memoryview`` copy into a private copy of a MemoryStore value),
    and every store operation takes the locks in this module's design note.
    As a result disjoint ``set_range`` calls on one key run in parallel;
    overlapping ones, and ``set``/``delete`` of the key, are serialized in
    FIFO order; no reader sees a half-applied write; and a Buffer returned by
    ``get`` never changes afterwards.

    Parameters
    ----------
    store : MemoryStore or LocalStore
        The store to wrap (exactly these types; see Raises). A LocalStore
        whose root is relative is wrapped as one of the absolute path it
        names now, so a later ``os.chdir`` moves neither its data nor its
        locks (a bare LocalStore follows the working directory).
    cross_process : bool
        LocalStore only: also take every lock as an OS byte-range lock on the
        root's lock file (``<root>/.zarr-rangelock``), so writers and readers
        in other processes (multiprocessing, dask workers) are excluded
        exactly as threads are. On by default; ``False`` saves its cost where
        no other process touches the store. Once any wrapper of a root in a
        process has it on, every wrapper of that root in the process has it
        (they share one lock table). Ignored for a MemoryStore, which no
        other process can see.
    durability : {"none", "fsync", "journal", "journal-nosync"}
        LocalStore only (``ValueError`` otherwise). What survives a crash:

        - ``"none"`` (default): nothing is fsynced. A killed process never
          tears one ``set_range``, but a power loss can lose recent writes and
          tear a range, and a write spanning several ranges (a multi-chunk
          array write) can be cut between them by either.
        - ``"fsync"``: every write is on disk when it returns (range writes
          ``fdatasync``-ed, whole values fsynced before their rename and the
          directory after); a power loss during a range write can still tear it.
        - ``"journal"``: every write, and every array write through
          :class:`~zarr_rangelock.ShardWritePipeline` however many chunks and
          shards it spans, is all old or all new after a crash or a power
          loss: written first to a journal under the root (fsynced), then in
          place (fsynced), then retired. Opening a store in this mode replays
          what killed processes left. Costs three fsyncs per write.
        - ``"journal-nosync"``: the same journal with no fsync: all or nothing
          when a process is killed, not across a power loss.

        Durable modes also remove stray temporary files of killed writers when
        the store opens. Details: ``zarr_rangelock.store._durable``.
    confine : bool
        LocalStore only: every operation refuses, with ``KeyOutsideRootError``,
        a key or prefix whose path leaves the root through a symbolic link
        (listings leave such names out), and locks and does I/O on each key by
        its resolved path relative to the root, so two keys that reach one
        file through a link exclude each other. Costs an ``lstat`` per key
        segment per call. Off by default, as stock zarr follows links: keys
        are then literal. What stays racy: ``store/_confine``'s design note.
    map_writes : bool
        LocalStore with ``durability="none"`` only (``ValueError``
        otherwise); off by default. ``set_range`` copies the bytes into a
        shared memory mapping of the file (kept open with its cached
        descriptor) instead of calling ``os.pwrite``: a 64 KiB write costs
        about two thirds as much, so :class:`~zarr_rangelock.ShardWriter`'s
        uncompressed ``write_chunk`` runs 1.1-1.4x as fast from one or four
        threads (``benchmarks/throughput.py``'s ``map_writes`` rows; the
        README). Other processes and readers see the bytes as
        they see a ``pwrite`` (one page cache), under the same locks. The
        price: an error the kernel reports when it writes the page (an I/O
        error) kills the process with ``SIGBUS`` instead of raising
        ``OSError``, and so does a file shortened in place by a writer
        outside the wrappers (zarr's own ``LocalStore`` replaces files, it
        never shortens them). A full disk is kept out of it: a file's holes
        are allocated (``fallocate``) before it is mapped, and a file whose
        holes cannot be is not mapped; on a copy-on-write file system
        (btrfs, ZFS, bcachefs), where any overwrite may need a new block,
        or one whose type is unknown, nothing is mapped (a
        ``RuntimeWarning`` says so when the root's first such store is made
        in the process). Ranges over 1 MiB
        (``MAP_WRITE_MAX``), files that are not mapped and bytes past a
        file's size when it was opened are written with ``os.pwrite`` as
        before.
    dense_shards : bool
        Off by default. Every sharded array on this store whose inner
        chunks have a fixed encoded size (no compression) has each shard
        laid out densely (every chunk at a fixed offset, written in place
        from then on) by its first write through
        :class:`~zarr_rangelock.ShardWritePipeline` or
        :class:`~zarr_rangelock.ShardWriter`, instead of once a quarter of
        its chunks hold data (``DENSE_MIN_LIVE_RATIO``; until then a shard
        is kept compact, appended to and compacted as it fills, as the
        README's "What happens underneath" tells). For arrays that will be
        filled: ``ShardWriter.write_chunk`` writes a new array 3-4x as
        fast (``benchmarks/throughput.py``'s ``dense_shards``
        rows). The price: a shard has its whole size (index and every
        chunk) from its first chunk on. Where the fill value encodes to
        zero bytes (zarr's default) a LocalStore leaves the slots of chunks
        not written yet as holes of the file, which take no disk blocks on
        file systems with sparse files but count in the file's size (a copy
        or an upload that does not keep holes writes them out; a
        ``map_writes`` store allocates them); else the fill chunks are
        written. A MemoryStore holds every byte. Arrays with compressed
        inner chunks are not affected (they have no dense layout).

    Raises
    ------
    UnsupportedStoreError
        (a ``TypeError``) for any other store, subclasses included: this
        wrapper never emulates ``set_range`` by rewriting whole values.
    TypeError
        If ``cross_process``, ``confine``, ``map_writes`` or ``dense_shards``
        is not a ``bool`` (``"no"`` would otherwise turn the option on).
    ValueError
        For an unknown ``durability``, or an option the store does not take
        (``map_writes`` or a durable mode on a MemoryStore, ``map_writes``
        with a durable mode).

    Notes
    -----
    All wrappers of the same underlying data in one process share one lock
    table: the same LocalStore root (after resolving symlinks), the same
    MemoryStore dict, ``with_read_only()`` copies, unpickled copies of a
    LocalStore wrapper, and stores zarr re-opens. Wrappers of one LocalStore
    root in different processes exclude each other through the OS (see
    ``cross_process``). Writers that bypass the wrapper (the bare store) are
    not excluded.

    Keys are validated for every operation, reads included: empty, absolute,
    ``.``/``..`` or empty-segment keys raise ``InvalidKeyError`` (a
    ``ValueError``).
    """

    _state: SharedState
    _backend: Backend
    _mgr: RangeLockManager
    _lock: Callable[[str, int, int], Grant]
    _run_if_free: Callable[
        [str, int, int, Callable[[str, memoryview, int], None], memoryview], bool
    ]
    _write: Callable[[str, memoryview, int], None]
    _writable: bool
    _inline: bool

    def __init__(
        self,
        store: MemoryStore | LocalStore,
        *,
        cross_process: bool = True,
        confine: bool = False,
        durability: Durability = "none",
        map_writes: bool = False,
        dense_shards: bool = False,
    ) -> None:
        check_supported(store)
        if type(store) is LocalStore and not store.root.is_absolute():
            # A relative root names the directory it names now: a bare
            # LocalStore follows a later chdir, but this wrapper's lock table,
            # lock file and journal belong to the directory found now, and
            # its copies (with_read_only, pickled) must name that one too.
            store = LocalStore(store.root.absolute(), read_only=store.read_only)
        for name, flag in (
            ("cross_process", cross_process),
            ("confine", confine),
            ("map_writes", map_writes),
            ("dense_shards", dense_shards),
        ):
            # bool(flag) would read "no" or "false" (from a config file or an
            # environment variable) as True: turning an option on by mistake
            if as_bool(flag) is None:
                raise TypeError(
                    f"RangeLockedStore's {name} must be a bool, got {type(flag).__name__}: "
                    f"{flag!r} (for {store!r})"
                )
        self._durability = check_durability(durability, store)
        self._map_writes = check_map_writes(map_writes, store, durability)
        super().__init__(store)
        self._cross_process = bool(cross_process)
        self._confine = bool(confine)
        self._dense_shards = bool(dense_shards)
        # only a LocalStore has paths to confine
        self._confiner = Confiner(store) if confine and type(store) is LocalStore else None
        # (a new state if the root was removed and made again since the one
        # found was made: _state's *A root made again*)
        self._state = shared_state_for(store, pin_root=not self._cross_process)
        if self._cross_process and type(store) is LocalStore:
            self._state.cross_process(os.fspath(store.root), not store.read_only)
        self._backend = (
            local_backend(store, self._state, durability)
            if type(store) is LocalStore
            else backend_for(store, self._state)
        )
        if self._map_writes:  # (not on a copy-on-write file system)
            verdict = self._state.not_mapped
            if verdict is None:  # the root's first map_writes wrapper in the process
                root = os.fspath(cast(LocalStore, store).root)
                verdict = self._state.not_mapped = (why_not_mapped(root),)
                if verdict[0] is not None:
                    warnings.warn(
                        f"map_writes=True has no effect for {root!r}: {verdict[0]}, where "
                        "a copy into a mapping could meet a full disk and kill the process "
                        "with SIGBUS; its range writes use pwrite",
                        RuntimeWarning,
                        stacklevel=2,
                    )
            cast(LocalBackend, self._backend).mapped = verdict[0] is None
        # For set_range's hot path: bound once (lock() only builds the request,
        # usable with and without await), and zarr stores fix read_only at
        # construction (with_read_only copies).
        self._mgr = self._state.manager
        self._lock = self._mgr.lock
        self._run_if_free = self._mgr._run_if_free
        self._write = self._backend.set_range
        # A confined key needs resolving first: the full path does it. An
        # fsync must not block an event loop: async calls in modes that fsync
        # take the full path (a worker thread).
        self._writable = not store.read_only and self._confiner is None
        self._inline = durability in ("none", "journal-nosync")
        # Once per root per process, but a journal-mode wrapper after an
        # "fsync" one (which replays nothing) still replays the journals.
        repairs = 2 if durability.startswith("journal") else 1
        if durability != "none" and not store.read_only and self._state.recovered < repairs:
            self._state.recovered = repairs
            recover(self._backend, self._mgr)

    def _options(self) -> dict[str, Any]:
        """The keyword arguments this wrapper was made with (pickling and
        copies rebuild the wrapper from them)."""
        return {name: getattr(self, f"_{name}") for name in _OPTIONS}

    # The lock table cannot be pickled (and must not be copied): an unpickled
    # wrapper joins the table of its (unpickled) store in its own process.
    def __getstate__(self) -> dict[str, Any]:
        return {"_store": self._store, **self._options()}

    def __setstate__(self, state: dict[str, Any]) -> None:
        # Re-run validation and lookup. An option a pickle lacks (an older
        # version's) takes its default; one this version lacks is ignored.
        options = {name: state[name] for name in _OPTIONS if name in state}
        self.__init__(state["_store"], **options)  # type: ignore[misc]

    def _with_store(self, store: MemoryStore | LocalStore) -> RangeLockedStore:
        # with_read_only() and the context manager build copies through this.
        return type(self)(store, **self._options())

    def __repr__(self) -> str:
        extra = ", confine=True" if self._confine else ""
        if self._durability != "none":
            extra += f", durability={self._durability!r}"
        if self._map_writes:
            extra += ", map_writes=True"
        if self._dense_shards:
            extra += ", dense_shards=True"
        return f"RangeLockedStore({self._store!r}{extra})"

    @property
    def durability(self) -> str:
        """The ``durability`` this wrapper was made with (see the class docstring)."""
        return self._durability

    @property
    def map_writes(self) -> bool:
        """Whether range writes are copied into mappings of the files (see
        the class docstring)."""
        return self._map_writes

    @property
    def dense_shards(self) -> bool:
        """Whether shards of uncompressed inner chunks are laid out densely by
        their first write (see the class docstring)."""
        return self._dense_shards

    def recover(self) -> int:
        """Repair what killed writers left, now: what opening a durable store
        does once per root and process.

        Replays the complete journal records of processes that died mid-write
        (journal modes; each under whole-key locks on its keys), discards
        incomplete or corrupt ones with a :class:`~zarr_rangelock.JournalWarning`,
        and removes stray temporary files (``durability`` other than ``"none"``).
        A long-running process whose fellow writers may have been killed (a
        dask worker restarted by its nanny) can call it at any time.

        Returns
        -------
        int
            The number of records replayed.

        Raises
        ------
        ValueError
            If ``durability`` is ``"none"`` or the store is read-only.
        SelfDeadlockError
            If a record's key is held by the caller (below); the records
            applied before it stay applied.

        Concurrency
        -----------
        Thread-safe; waits for the whole-key locks of a record's keys like a
        ``set`` of each, in key order. Journals of live processes are never
        touched. One replay of a root at a time, in all processes: while
        another (a store opening, another ``recover``) runs, this one waits
        for it to end, then finds what it replayed gone. Called while the
        caller holds a lock on a key a dead record names (a ``with`` block
        of this thread, or a task of the event loop running on it), it
        raises ``SelfDeadlockError`` rather than wait for itself.
        """
        if self._durability == "none":
            raise ValueError(f"recover() needs a durable store; {self!r} has durability='none'")
        self._store._check_writable()
        return recover(self._backend, self._mgr)

    def _transaction(self) -> contextlib.AbstractAsyncContextManager[None]:
        """For writers holding locks through several handles (the shard
        pipeline): make their handle writes one all-or-nothing transaction,
        committed when the block ends without an error, still under the locks.
        A no-op unless ``durability`` is a journal mode."""
        return transaction(self._backend)

    def _check_key(self, key: str) -> str:
        """Validate ``key``; confined, return its canonical key (see ``_confine``)."""
        validate_key(key)
        return key if self._confiner is None else self._confiner.key(key)

    def _check_prefix(self, prefix: str, canonical: bool = False) -> str:
        """Validate and normalise ``prefix`` ("/" is the root, as "" is); confined,
        refuse one that leaves the root, and make it canonical if ``canonical``."""
        prefix = validate_prefix(prefix)
        if self._confiner is not None:
            canon = self._confiner.prefix(prefix)
            return canon if canonical else prefix
        return prefix

    def close(self) -> None:
        """Close the wrapped store and this root's cached file descriptors.

        Descriptors in use by a ``set_range`` still running are closed when it
        ends, and so are idle descriptions of the root's lock file (the lock
        file stays mapped while any wrapper of the root lives). Other wrappers
        of the same root simply reopen what they need.
        """
        try:
            super().close()
        finally:
            self._state.close_descriptors()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        try:
            super().__exit__(exc_type, exc_value, traceback)
        finally:
            self._state.close_descriptors()

    def __str__(self) -> str:
        return f"rangelocked-{self._store}"

    @property
    def lock_manager(self) -> RangeLockManager:
        """The lock table shared by every wrapper of the same underlying store."""
        return self._state.manager

    # ------------------------------------------------------------- set_range

    def _fast_view(self, key: str, value: Buffer, start: int) -> memoryview | None:
        """The bytes to write if this is the common, valid call; else None.

        The common call: a non-empty contiguous cpu.Buffer, an int start, a
        str key already known valid, a writable store. The checks are those of
        :meth:`_prepare_set_range`, cheapest first. Anything else, including
        every call that must fail, returns None and takes the full path, so
        errors and their order do not depend on the fast path.
        """
        if (
            type(value) is _CpuBuffer
            and type(start) is int
            and type(key) is str
            and type(array := value._data) is _ndarray  # type: ignore[comparison-overlap]  # typed as zarr's ArrayLike protocol
            and start >= 0
            and self._writable
            and key in VALID_KEYS
        ):
            data = memoryview(array)
            if len(data) and data.c_contiguous and start + len(data) < MAX_OFFSET:
                return data
        return None

    async def set_range(self, key: str, value: Buffer, start: int) -> None:
        """Overwrite ``len(value)`` bytes of ``key``'s existing value at ``start``.

        Parameters
        ----------
        key : str
            An existing key.
        value : Buffer
            The bytes to write.
        start : int
            Byte offset, ``>= 0``; ``start + len(value)`` must not exceed the
            value's size.

        Raises
        ------
        KeyNotFoundError
            (a ``KeyError``) if ``key`` has no value.
        RangeOutOfBoundsError
            (a ``ValueError``) for a negative start or a write past the end.
        InvalidKeyError
            (a ``ValueError``) for a key that could escape the store.
        ValueError
            If the store is read-only (zarr's message).
        TypeError
            If ``value`` is not a Buffer or ``start`` not an int.

        Concurrency
        -----------
        Holds an exclusive lock on ``[start, start + len(value))`` while
        writing: waits, in FIFO order, for earlier overlapping writers,
        readers of overlapping ranges and whole-key operations; runs in
        parallel with writes to disjoint ranges. Never blocks the event loop
        while waiting. A cancellation while queued leaves nothing written and
        nothing held; once the write has started it finishes (a large
        LocalStore write runs in a worker thread, and the lock is held until
        that thread is done) and the cancellation is re-raised afterwards.
        """
        data = self._fast_view(key, value, start)
        if data is not None and len(data) <= INLINE_WRITE_MAX and self._inline:
            # Small: written inline on the loop. A free key (or one held only
            # by writers of other ranges) is locked, written and released in
            # one call; else the general request, which may queue.
            end = start + len(data)
            if not self._run_if_free(key, start, end, self._write, data):
                async with self._lock(key, start, end):
                    self._write(key, data, start)
            return
        data, start = self._backend.prepare_set_range(key, value, start)
        if self._confiner is not None:
            key = self._confiner.key(key)
        n = len(data)
        if n == 0:
            async with self._mgr.lock_async(key, _META_START, _META_END, shared=True):
                self._backend.check_fits(key, start, 0)
            return
        async with self._mgr.lock_async(key, start, start + n):
            await self._backend.set_range_async(key, data, start)

    def set_range_sync(self, key: str, value: Buffer, start: int) -> None:
        """Synchronous :meth:`set_range`; does its I/O directly, with no event loop.

        Parameters, errors and locking as :meth:`set_range`.

        Concurrency
        -----------
        Blocks the calling thread (only) while queued for its range, behind
        earlier conflicting requests from any thread or task; do not call it
        from an event loop's thread while a task of that loop holds a
        conflicting lock. Thread-safe.
        """
        data = self._fast_view(key, value, start)
        if data is not None:
            end = start + len(data)
            if not self._run_if_free(key, start, end, self._write, data):
                with self._lock(key, start, end):  # queues if it must
                    self._write(key, data, start)
            return
        data, start = self._backend.prepare_set_range(key, value, start)
        if self._confiner is not None:
            key = self._confiner.key(key)
        n = len(data)
        if n == 0:
            with self._mgr.lock(key, _META_START, _META_END, shared=True):
                self._backend.check_fits(key, start, 0)
            return
        with self._mgr.lock(key, start, start + n):
            self._backend.set_range(key, data, start)

    # --------------------------------------------------------------- handles

    def locked(
        self,
        key: str,
        ranges: Iterable[RangeSpec],
        *,
        shared: bool = False,
        timeout: float | None = None,
    ) -> AsyncLockedBlock:
        """Hold ``ranges`` of ``key`` for a block; do the block's I/O through the handle.

        ``async with store.locked("c/0", [(0, 4096)]) as h:`` then
        ``await h.get(...)``, ``await h.set_range(value, start)``. The handle's
        reads and writes take no further locks (so they cannot wait on the
        block's own), but are checked to lie inside the held ranges.

        Parameters
        ----------
        key : str
            The key.
        ranges : iterable of (int, int or None)
            Ranges to hold, taken atomically (one place in the queue).
            ``[(0, None)]`` is the whole key (needed for ``h.set``/``h.delete``).
        shared : bool
            Hold them shared: the handle may read but not write.
        timeout : float or None
            Seconds to wait at most for the ranges.

        Raises
        ------
        LockTimeout
            (a ``TimeoutError``) if the ranges were not granted in time.
        SelfDeadlockError
            (a ``RuntimeError``) on entry, instead of waiting forever, if the
            ranges conflict with a block this task holds.
        InvalidKeyError, TypeError, ValueError
            At once, for a bad key or bad ranges.

        Concurrency
        -----------
        Waits without blocking the event loop, FIFO behind earlier
        conflicting requests. Cancellation while queued holds nothing;
        leaving the block (normally, by an exception or by cancellation)
        releases the ranges, after which the handle refuses all use. Inside
        the block, the store's own locking methods on overlapping ranges of
        the key would wait for the block itself: called from the block's task
        (or, for the blocking ``*_sync`` ones, from its event loop's thread)
        without a timeout they raise ``SelfDeadlockError`` instead.
        """
        key = self._check_key(key)
        grant = self._mgr._request(key, ranges, shared)
        return AsyncLockedBlock(self._mgr, self._backend, grant, timeout)

    def locked_sync(
        self,
        key: str,
        ranges: Iterable[RangeSpec],
        *,
        shared: bool = False,
        timeout: float | None = None,
    ) -> LockedBlock:
        """Synchronous :meth:`locked`: ``with store.locked_sync(key, ranges) as h:``.

        Concurrency
        -----------
        As :meth:`locked`, blocking the calling thread while queued. A
        timeout leaves nothing held. Inside the block, the store's locking
        methods on overlapping ranges of the key, called from the same
        thread, raise ``SelfDeadlockError`` instead of waiting forever; so
        does a nested overlapping ``locked_sync``. A ``KeyboardInterrupt``
        never leaves the ranges held: it arrives either before they are
        taken or inside the block (see the README).
        """
        key = self._check_key(key)
        grant = self._mgr._request(key, ranges, shared)
        return LockedBlock(self._mgr, self._backend, grant, timeout)
