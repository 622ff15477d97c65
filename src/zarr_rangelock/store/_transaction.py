"""The transactions of the journal (``_journal``): the writes of one call, collected.

A :class:`Transaction` gathers, per key, range writes, or one whole new value,
or one prepared file (a value already written to a temporary file beside the
key's, by a rewrite: ``_rewrite``), or one delete, while the call's handles
run; ``_journal`` commits it all or nothing (its design note says how). Which
transaction a handle writes into is a context variable, so the tasks a call
starts join the call's transaction.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .._errors import KeyNotFoundError, RangeOutOfBoundsError
from ._io import open_fd, write_range

if TYPE_CHECKING:
    from ._journal import Journal

__all__ = ["Transaction", "current_transaction", "transaction_scope"]


#: ``_KeyOps.was`` of a key that had no file before the transaction.
ABSENT = (-1, -1)


@dataclass
class _KeyOps:
    """What a transaction does to one key: range writes, or a value, or a
    prepared file, or a delete."""

    ranges: list[tuple[int, bytes | memoryview]] = field(default_factory=list)
    value: bytearray | None = None
    delete: bool = False
    file: str | None = None
    """A prepared file (path relative to the root) to rename over the key."""
    file_ino: int = 0
    """Its inode: after the rename, the key's (how replay knows it was applied)."""
    file_size: int = 0
    olds: list[bytes | memoryview | None] = field(default_factory=list)
    """The bytes each range write covers, before the transaction (parallel to
    ``ranges``; None where the record does not carry them; empty if unknown:
    a record of the earlier format). Its witness at replay (``_apply``)."""
    was: tuple[int, int] | None = None
    """The key's file's identity (``st_dev``, ``st_ino``) before the
    transaction, for a value, a prepared file or a delete (:data:`ABSENT` if
    there was none) and for range writes (the file they go into); None if
    unknown (a record of the earlier format, or without it)."""
    reads: list[tuple[int, int]] = field(default_factory=list)
    """*Read witnesses* (:meth:`Transaction.add_witness`): ranges, ``(start,
    length)``, the transaction depends on but does not write; never applied,
    never undone. Clipped to the file and to ``_record.OLD_BYTES_MAX`` in
    all by ``_apply._Apply.prepare``, which reads them."""
    read_olds: list[bytes] = field(default_factory=list)
    """What each of ``reads`` held when the transaction committed (parallel
    to it; filled by ``prepare``, or decoded from a record): at replay the
    range must hold exactly these bytes (``_apply``)."""

    @property
    def replaces(self) -> bool:
        """Whether the key's file is replaced or removed (not patched)."""
        return self.value is not None or self.file is not None or self.delete


class Transaction:
    """The writes of one call, collected under its locks and committed as one.

    ``add_*`` are called by handles while the call's jobs run (several tasks or
    threads at once); :meth:`Journal.commit` applies them all or none.
    """

    __slots__ = ("_lock", "journal", "ops")

    def __init__(self, journal: Journal) -> None:
        self.journal = journal
        self.ops: dict[str, _KeyOps] = {}
        self._lock = threading.Lock()

    def size_of(self, key: str, current: int | None) -> int | None:
        """The key's size as this transaction leaves it (``current``: on disk)."""
        ops = self.ops.get(key)
        if ops is None:
            return current
        if ops.delete:
            return None
        if ops.value is not None:
            return len(ops.value)
        if ops.file is not None:
            return ops.file_size
        return current

    def add_range(
        self, key: str, data: bytes | memoryview, start: int, current: int | None
    ) -> None:
        """A range write; ``current`` is the key's size on disk (None: missing)."""
        with self._lock:
            size = self.size_of(key, current)
            if size is None:
                raise KeyNotFoundError(key, "set_range")
            if start + len(data) > size:
                raise RangeOutOfBoundsError(key, start, len(data), size)
            ops = self.ops.setdefault(key, _KeyOps())
            if ops.value is not None:
                ops.value[start : start + len(data)] = data
            elif ops.file is not None:
                _patch_file(f"{self.journal.root}/{ops.file}", data, start)
            elif data:
                ops.ranges.append((start, bytes(data)))  # the caller may reuse its buffer

    def add_witness(self, key: str, start: int, length: int) -> None:
        """A *read witness*: the bytes ``[start, start + length)`` of ``key``,
        which the transaction does not write but depends on (a compressed
        shard's chunk places its new index stops pointing at). Committing
        reads them with the old bytes of its range writes and puts them in
        the record; a replay applies the key's writes only while they still
        hold those bytes (``_apply``). For a key the transaction replaces
        (a compaction's prepared file), they are bytes of the file it
        replaces, read while that file is still the key's: a replay renames
        over it only while they hold (another writer may have patched that
        file in place since: a chunk appended, the index re-pointed)."""
        if length <= 0:
            return
        with self._lock:
            self.ops.setdefault(key, _KeyOps()).reads.append((start, length))

    def add_set(self, key: str, value: bytes | memoryview) -> None:
        """A whole new value (replaces anything earlier for ``key``)."""
        with self._lock:
            self._replace_op(key, _KeyOps(value=bytearray(value)))

    def add_file(self, key: str, path: str, ino: int, size: int) -> None:
        """A whole new value already written to the file ``path`` (relative to
        the root; a temporary file beside the key's, see ``_rewrite``), renamed
        over the key at commit (replaces anything earlier for ``key``). The
        transaction owns the file from here on: it removes it if it is not
        committed (:meth:`discard`)."""
        with self._lock:
            self._replace_op(key, _KeyOps(file=path, file_ino=ino, file_size=size))

    def add_delete(self, key: str) -> None:
        """A delete (replaces anything earlier for ``key``)."""
        with self._lock:
            self._replace_op(key, _KeyOps(delete=True))

    def _replace_op(self, key: str, ops: _KeyOps) -> None:
        old = self.ops.get(key)
        self.ops[key] = ops
        if old is not None:
            ops.reads = old.reads  # (witnesses of the file it replaces)
        if old is not None and old.file is not None:
            _unlink_quietly(f"{self.journal.root}/{old.file}")

    def files(self) -> list[str]:
        """The prepared files of the transaction (absolute paths)."""
        root = self.journal.root
        return [f"{root}/{k.file}" for k in self.ops.values() if k.file is not None]

    def discard(self) -> None:
        """Remove the prepared files: the transaction will not be committed
        (or was rolled back). Files already renamed over their keys are gone."""
        for path in self.files():
            _unlink_quietly(path)


def _patch_file(path: str, data: bytes | memoryview, start: int) -> None:
    fd = open_fd(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        write_range(fd, memoryview(data).cast("B"), start)
    finally:
        os.close(fd)


def _fsync_file(path: str) -> None:
    fd = open_fd(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unlink_quietly(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


_TXN: ContextVar[Transaction | None] = ContextVar("zarr_rangelock_transaction", default=None)


def current_transaction(journal: Journal) -> Transaction | None:
    """The transaction of the running call, if it journals into ``journal``."""
    txn = _TXN.get()
    return txn if txn is not None and txn.journal is journal else None


@contextlib.contextmanager
def transaction_scope(journal: Journal) -> Iterator[Transaction]:
    """Collect the handle writes of the code inside (and of tasks it starts) into
    one transaction; the caller commits it, still under its locks."""
    txn = Transaction(journal)
    token = _TXN.set(txn)
    try:
        yield txn
    finally:
        _TXN.reset(token)
