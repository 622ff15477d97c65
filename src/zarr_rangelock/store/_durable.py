"""LocalStore writes that survive a crash: the ``durability`` modes other than ``"none"``.

Design note
-----------
``RangeLockedStore(LocalStore(root), durability=...)`` picks the backend:

``"none"``
    :class:`~zarr_rangelock.store._backends.LocalBackend`: no fsync anywhere.
    A power loss can lose recent writes and leave a range half written; a
    killed process cannot (a ``pwrite`` is never stopped half way into the
    page cache), but a write spanning several ranges can be cut between them.
``"fsync"``
    Range writes are ``fdatasync``-ed before they return; whole values go
    through a temporary file fsynced before its rename and the directory
    fsynced after; deletes fsync the directory. Durable once returned, but a
    power loss *during* a range write can leave it torn.
``"journal"``
    Every write is a transaction of the root's journal (``_journal``): all old
    or all new after a crash or a power loss, a pipeline ``write`` spanning
    several chunks and shards included; whole values and deletes as
    ``"fsync"``. The first journal-mode wrapper of a root in a process
    replays what dead processes left (:func:`recover`).
``"journal-nosync"``
    The same journal without any fsync: all or nothing when a process is
    killed (the page cache outlives it), not across a power loss.

A lone whole-value write or delete is atomic by itself (a rename, an unlink),
so it is not journaled, only fsynced; it is journaled when it is one of
several writes of a transaction. A rewrite from pieces (``_rewrite``, a
shard's compaction) is a whole-value write whose value is built in a
temporary file first; in a transaction that file is a *prepared file* the
record names (``_journal``), so the record stays small.

*Stray temporary files.* A writer killed between writing LocalStore's
``<name>.<hex>.partial`` and renaming it leaves the file behind (listings
hide it, ``_keys.TEMP_FILE``). Opening a store in a durable mode removes the
ones older than :data:`STRAY_TEMP_AGE_S` whose key's whole-key lock it gets
at once: no wrapper in any process is writing that key, and no writer that
bypasses the wrappers has touched the file for that long.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Literal

from zarr.core.buffer import Buffer
from zarr.storage import LocalStore

from .._errors import LockTimeout, WouldBlock
from ..locks._fdbudget import retrying
from ..locks._grant import AtOnce
from ..locks._holdall import HOLD_AND_WAIT_S, hold_all
from ..locks._ki import protected
from ..locks._lockfile import LOCK_FILE_NAME
from ._apply import delete_value, write_value
from ._backends import (
    INLINE_WRITE_MAX,
    Backend,
    LocalBackend,
    SharedState,
    _check_fits,
    as_bytes_view,
)
from ._faults import FAULT_POINTS, _die, _fault
from ._io import in_thread
from ._journal import (
    JOURNAL_DIR,
    Journal,
    ReplayBusy,
    Transaction,
    current_transaction,
    transaction_scope,
)
from ._keys import TEMP_FILE
from ._rewrite import Piece, build_temp, check_pieces, publish

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from ..locks._table import Grant, RangeLockManager

__all__ = [
    "DURABILITY_MODES",
    "STRAY_TEMP_AGE_S",
    "Durability",
    "DurableLocalBackend",
    "FaultyLocalBackend",
    "check_durability",
    "local_backend",
    "recover",
    "transaction",
]

Durability = Literal["none", "fsync", "journal", "journal-nosync"]
DURABILITY_MODES: tuple[str, ...] = ("none", "fsync", "journal", "journal-nosync")

#: A stray temporary file is removed when a store opens only once it has not
#: changed for this many seconds (and its key's whole-key lock is free).
STRAY_TEMP_AGE_S = 60.0


def check_durability(durability: object, store: object) -> str:
    """``durability`` if valid for ``store``; else ``ValueError`` naming both."""
    if durability not in DURABILITY_MODES:
        raise ValueError(
            f"durability must be one of {', '.join(map(repr, DURABILITY_MODES))}, "
            f"got {durability!r}"
        )
    if durability != "none" and type(store) is not LocalStore:
        raise ValueError(
            f"durability={durability!r} needs a LocalStore: the values of a "
            f"{type(store).__name__} do not outlive the process"
        )
    return durability


class DurableLocalBackend(LocalBackend):
    """A LocalBackend for ``durability`` ``"fsync"``, ``"journal"`` and
    ``"journal-nosync"`` (see the module's design note)."""

    __slots__ = ("fsync", "journal")

    def __init__(self, store: LocalStore, state: SharedState, durability: str) -> None:
        super().__init__(store, state)
        self.fsync = durability in ("fsync", "journal")
        journaled = durability.startswith("journal")
        self.sync = self.fsync and not journaled  # range writes fdatasync-ed in place
        self.journal: Journal | None = None
        if journaled:
            if state.journal is None:
                state.journal = Journal(os.fspath(store.root))
            self.journal = state.journal

    def _txn(self) -> Transaction | None:
        return None if self.journal is None else current_transaction(self.journal)

    def size(self, key: str) -> int | None:
        disk = super().size(key)
        txn = self._txn()
        return disk if txn is None else txn.size_of(key, disk)

    def commit(self, txn: Transaction) -> None:
        """Apply ``txn`` all or nothing (its locks held); blocks on fsync."""
        assert self.journal is not None
        ops = txn.ops
        # A key whose file the commit replaces or removes is stamped before
        # the change (replacing), as well as after (finally): a commit killed
        # between its renames and its stamps after them leaves no other
        # process trusting what it cached of the old files. (The handles
        # stamp each key as they hand it over too; this does not lean on
        # them.) Not on the lone range write's path: it changes no file.
        try:
            if len(ops) == 1:
                ((key, only),) = ops.items()
                if only.replaces:
                    self.replacing(key)
                    # Alone, a rename or an unlink is atomic: no record; it is
                    # its own commit point, so every testing hook point fires
                    # right after it (as after a complete record: all new).
                    if only.value is not None:
                        self._put_value(key, only.value)
                    elif only.file is not None:
                        self._publish(txn, key, only.file)
                    else:
                        delete_value(self._path(key), self.fsync)
                    fault = _fault()
                    if fault in FAULT_POINTS:
                        _die(fault)
                    return
                if len(only.ranges) == 1 and not only.reads:  # one chunk of one shard: the hot path
                    start, data = only.ranges[0]
                    self.set_range(key, memoryview(data), start)  # a lone range record
                    return
            for key, k in ops.items():
                if k.replaces:
                    self.replacing(key)
            self.journal.commit(txn, sync=self.fsync)
        finally:
            for key, k in ops.items():
                if k.replaces:
                    self.forget(key)

    def _publish(self, txn: Transaction, key: str, file: str) -> None:
        """Commit a transaction whose one op renames the prepared ``file``
        over ``key``: fsynced first (``"journal"``), directory after."""
        assert self.journal is not None
        tmp = f"{self.journal.root}/{file}"
        try:
            if self.fsync:
                fd = os.open(tmp, os.O_RDONLY | os.O_CLOEXEC)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            publish(tmp, self._path(key), self.fsync)
        except BaseException:
            txn.discard()
            raise

    async def commit_async(self, txn: Transaction) -> None:
        """:meth:`commit` in a worker thread, finishing even if cancelled."""
        if txn.ops:
            await in_thread(lambda: self.commit(txn))

    # -- range writes

    def set_ranges(
        self, key: str, writes: Sequence[tuple[int, memoryview]], *, stamp: object = None
    ) -> None:
        if self.journal is None:
            super().set_ranges(key, writes, stamp=stamp)  # one fdatasync for them all, if sync
            return
        if len(writes) == 1 or self._txn() is not None:
            for start, data in writes:  # (inside a transaction: collected by it)
                self.block_set_range(key, data, start)
            return
        # One transaction: a crash applies every range or none.
        current = LocalBackend.size(self, key)
        with transaction_scope(self.journal) as txn:
            for start, data in writes:
                txn.add_range(key, data, start, current)
        self.commit(txn)

    def set_range(self, key: str, data: memoryview, start: int) -> None:
        if self.journal is None:
            super().set_range(key, data, start)  # fdatasync-ed when self.sync
            return
        entry = self.checkout(key)
        try:
            _check_fits(key, start, len(data), entry.size)
            if len(data):
                self.journal.commit_range(entry.fd, key, data, start, sync=self.fsync)
        finally:
            self._fds.checkin(entry)

    async def set_range_async(self, key: str, data: memoryview, start: int) -> None:
        if not self.fsync and len(data) <= INLINE_WRITE_MAX:
            self.set_range(key, data, start)  # no fsync: as cheap as a pwrite, inline
        else:
            await in_thread(lambda: self.set_range(key, data, start))

    def block_set_range(self, key: str, data: memoryview, start: int) -> None:
        txn = self._txn()
        if txn is None:
            self.set_range(key, data, start)
        else:
            txn.add_range(key, data, start, LocalBackend.size(self, key))

    async def block_set_range_async(self, key: str, data: memoryview, start: int) -> None:
        txn = self._txn()
        if txn is None:
            await self.set_range_async(key, data, start)
        else:
            txn.add_range(key, data, start, LocalBackend.size(self, key))

    def witness(self, key: str, start: int, length: int) -> None:
        if self.journal is not None and (txn := self._txn()) is not None:
            txn.add_witness(key, start, length)

    # -- whole values

    def _put_value(self, key: str, data: bytes | bytearray | memoryview) -> None:
        """Write ``key``'s whole value (stamped before by the caller)."""
        retrying(lambda: write_value(self._path(key), data, self.fsync), key, "set")

    def set_value_sync(self, key: str, value: Buffer, block: bool = False) -> None:
        if not isinstance(value, Buffer):  # zarr's LocalStore.set message
            raise TypeError(
                "LocalStore.set(): `value` must be a Buffer instance. Got an instance "
                f"of {type(value)} instead."
            )
        self.store._check_writable()
        data = as_bytes_view(value, "set")
        txn = self._txn() if block else None
        if txn is not None:
            txn.add_set(key, data)
        else:
            self.replacing(key)
            self._put_value(key, data)

    async def set_value(self, key: str, value: Buffer, block: bool = False) -> None:
        if block and self._txn() is not None:
            self.set_value_sync(key, value, block)
        else:
            await super().set_value(key, value)  # (in the library's workers)

    def rewrite_value_sync(
        self, key: str, size: int, pieces: Sequence[tuple[int, object]], block: bool = False
    ) -> None:
        self.store._check_writable()
        checked = check_pieces(key, size, pieces, LocalBackend.size(self, key))
        self._rewrite_into(key, size, checked, self._txn() if block else None)

    async def rewrite_value(
        self, key: str, size: int, pieces: Sequence[tuple[int, object]], block: bool = False
    ) -> None:
        # (The worker thread runs in a copy of this context: the same transaction.)
        await in_thread(lambda: self.rewrite_value_sync(key, size, pieces, block))

    def _rewrite_into(
        self, key: str, size: int, pieces: list[Piece], txn: Transaction | None
    ) -> None:
        """Build the new value in a temporary file: published at once (alone,
        a rename is atomic: fsynced as a ``set``), or, in a transaction, handed
        to it (renamed when it commits; its record names the file)."""
        path = self._path(key)
        if txn is None:
            self._rewrite_file(key, path, size, pieces, self.fsync)
            return
        tmp, ino = retrying(lambda: build_temp(path, size, pieces, False), key, "set")
        txn.add_file(key, key + tmp[len(path) :], ino, size)

    def delete_value_sync(self, key: str, block: bool = False) -> None:
        self.store._check_writable()
        txn = self._txn() if block else None
        if txn is not None:
            txn.add_delete(key)
        else:
            self.replacing(key)
            delete_value(self._path(key), self.fsync)

    async def delete_value(self, key: str, block: bool = False) -> None:
        if block and self._txn() is not None:
            self.delete_value_sync(key, block)
        else:
            await super().delete_value(key)  # (in the library's workers)


class FaultyLocalBackend(LocalBackend):
    """``durability="none"`` with ``ZARR_RANGELOCK_FAULT=mid-apply`` set when the
    store was made: the next range write writes its first half and then the
    process kills itself (the control of the crash tests: without a journal
    that leaves the range torn)."""

    __slots__ = ()

    set_ranges = Backend.set_ranges  # each through set_range below

    def set_range(self, key: str, data: memoryview, start: int) -> None:
        if len(data) > 1 and _fault() == "mid-apply":
            half = len(data) // 2
            super().set_range(key, data[:half], start)
            _die("mid-apply")
        super().set_range(key, data, start)


def local_backend(store: LocalStore, state: SharedState, durability: str) -> LocalBackend:
    """The LocalStore backend for ``durability`` (see the design note)."""
    if durability != "none":
        return DurableLocalBackend(store, state, durability)
    if _fault() == "mid-apply":
        return FaultyLocalBackend(store, state)
    return LocalBackend(store, state)


@contextlib.asynccontextmanager
async def transaction(backend: object) -> AsyncIterator[None]:
    """Make the handle writes of the block (and of the tasks it starts) one
    transaction, committed when the block ends without an error; a no-op
    unless ``backend`` journals. Use with every lock the writes need held."""
    if not isinstance(backend, DurableLocalBackend) or backend.journal is None:
        yield
        return
    with transaction_scope(backend.journal) as txn:
        try:
            yield
        except BaseException:
            txn.discard()  # not committed: its prepared files are litter
            raise
    await backend.commit_async(txn)


# ------------------------------------------------------------------ recovery


@contextlib.contextmanager
def _whole_keys(mgr: RangeLockManager, keys: list[str], backend: LocalBackend) -> Iterator[None]:
    """Hold whole-key locks on ``keys`` (sorted) all at once, taken by the
    hold-and-wait rule as the pipeline takes several shards
    (``locks/_holdall``: one lock-file description for all), but for the
    first key too the wait is bounded: the replay holds its turn, which a
    prefix lock of the root (``clear``) covers, and such a lock queued
    behind the turn is ahead of the keys. When a wait runs out,
    :class:`ReplayBusy` lets go of all, the turn too (``Journal.recover``).

    Each key is stamped anew before the record changes it, as a writer
    stamps a key before it replaces its file (``replacing``), as well as
    after (``forget``): a replay killed between the two left the old stamp
    on a changed key, and a writer of another process trusted what it had
    cached of it (its descriptor of a replaced file: the write went into
    the old file, lost; ``tests/test_processes_killed_after_each_change.py``)."""

    def take(key: str, timeout: float | None) -> Grant:
        try:
            # retried: a wait for the caller's own block (recover() called
            # inside a with block of a record's key) raises SelfDeadlockError
            # rather than running out, starting over and doing so for ever
            request = mgr._request(key, [(0, None)], False)
            return mgr._acquire(request, HOLD_AND_WAIT_S, retried=True)
        except LockTimeout as exc:
            raise ReplayBusy(key) from exc

    @protected  # (between two releases a KeyboardInterrupt kept the rest held)
    def let_go(grants: list[Grant]) -> None:
        for g in reversed(grants):
            mgr.release(g)

    grants = hold_all(keys, take, let_go)
    try:
        for key in keys:
            backend.replacing(key)
        yield
    finally:
        # A KeyboardInterrupt in forget() (its change stamp, in the lock
        # file) skipped the release: the record's keys stayed locked for good.
        try:
            for key in keys:
                backend.forget(key)  # replay may have replaced files
        finally:
            let_go(grants)


def _replay_turn(mgr: RangeLockManager) -> Grant:
    """The lock a replay of the root holds throughout (``_journal``, *Replay*):
    exclusive, of the journal directory's name, which no key may take."""
    return mgr.lock(JOURNAL_DIR)


def recover(backend: Backend, mgr: RangeLockManager) -> int:
    """What a durable store does when it opens (once per root per process):
    replay dead processes' journals (journal modes) and remove stray
    temporary files (see the design note). Returns the records replayed."""
    root = os.fspath(backend.store.root)  # recover() runs for LocalStores only
    replayed = 0
    if isinstance(backend, DurableLocalBackend) and backend.journal is not None:
        replayed = backend.journal.recover(
            lambda keys: _whole_keys(mgr, keys, backend), lambda: _replay_turn(mgr)
        )
    remove_stray_temp_files(root, mgr)
    return replayed


def remove_stray_temp_files(root: str, mgr: RangeLockManager) -> int:
    """Remove LocalStore temporary files under ``root`` that no writer can still
    be writing (see the design note); return how many."""
    removed = 0
    too_new = time.time() - STRAY_TEMP_AGE_S
    for dirpath, dirnames, filenames in os.walk(root):
        if dirpath == root:
            dirnames[:] = [d for d in dirnames if d != JOURNAL_DIR]
        for name in filenames:
            m = TEMP_FILE.search(name)
            if m is None or (dirpath == root and name == LOCK_FILE_NAME):
                continue
            path = os.path.join(dirpath, name)
            key = os.path.relpath(path, root)[: -len(m.group(0))]
            try:
                if os.stat(path).st_mtime > too_new:
                    continue
                with AtOnce(mgr.lock(key)), contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
                    removed += 1
            except (FileNotFoundError, WouldBlock):
                continue
    return removed
