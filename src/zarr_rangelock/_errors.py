"""Exceptions of the lock table and the store.

Each subclasses the standard exception a caller would expect (``ValueError``,
``KeyError``, ``TypeError``, ``TimeoutError``), names the key, the numbers and
the rule that was broken, and passes exactly its constructor arguments to
``super().__init__`` so that the default pickling (``cls(*args)``) rebuilds
it: errors cross process boundaries in multiprocessing and dask workers.
Those that pickle through ``__reduce__`` (the ``OSError``-based ones, whose
``args`` are not their constructor's, and ``TimeoutError``'s) return the
instance's ``__dict__`` too, as ``BaseException.__reduce__`` does, so notes
added on the way (``add_note``) survive the trip.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Sequence

from .locks._ranges import MAX_OFFSET

__all__ = [
    "CrossProcessLockError",
    "CrossProcessWarning",
    "DescriptorLimitError",
    "InvalidKeyError",
    "JournalWarning",
    "KeyNotFoundError",
    "KeyOutsideRootError",
    "LockTimeout",
    "PartialWriteError",
    "RangeNotHeldError",
    "RangeOutOfBoundsError",
    "SelfDeadlockError",
    "UnsupportedStoreError",
    "WouldBlock",
]


type _Reduced = tuple[type[BaseException], tuple[object, ...], dict[str, object]]


def _reduced(e: BaseException, args: tuple[object, ...]) -> _Reduced:
    """``__reduce__``'s value: rebuilt from ``args``, then its ``__dict__``
    (``__notes__`` among it) restored."""
    return (type(e), args, e.__dict__)


def _fmt_ranges(ranges: Sequence[tuple[int, int | None]]) -> str:
    return ", ".join(f"[{s}, {'end' if e is None else e})" for s, e in ranges)


class LockTimeout(TimeoutError):
    """A lock request did not get its ranges within ``timeout`` seconds.

    Attributes
    ----------
    key : str
        The key (or, for a prefix lock, the prefix) that was asked for.
    ranges : tuple of (int, int or None)
        The ranges that were asked for.
    timeout : float
        The timeout in seconds.
    """

    def __init__(self, key: str, ranges: Sequence[tuple[int, int | None]], timeout: float) -> None:
        # TimeoutError is an OSError, which reads two arguments as (errno,
        # strerror): give it those, so code catching OSError sees ETIMEDOUT.
        self.key = key
        self.ranges = tuple(ranges)
        self.timeout = timeout
        super().__init__(errno.ETIMEDOUT, str(self))

    def __reduce__(self) -> _Reduced:
        return _reduced(self, (self.key, self.ranges, self.timeout))

    def __str__(self) -> str:
        return (
            f"timed out after {self.timeout} s waiting for a lock on key {self.key!r} "
            f"ranges {_fmt_ranges(self.ranges)}"
        )


class WouldBlock(Exception):
    """A ``*_nowait`` request conflicts with a held or earlier queued request."""

    def __init__(self, key: str, ranges: Sequence[tuple[int, int | None]]) -> None:
        super().__init__(key, tuple(ranges))
        self.key = key
        self.ranges = tuple(ranges)

    def __str__(self) -> str:
        return (
            f"lock on key {self.key!r} ranges {_fmt_ranges(self.ranges)} is not free: "
            "it conflicts with a held or earlier queued request"
        )


def _end(end: int | None) -> str:
    return "end" if end is None else str(end)


class SelfDeadlockError(RuntimeError):
    """A lock request would wait for ranges that its own caller holds, forever.

    Raised instead of waiting when the request conflicts with a grant held by
    a ``with``/``async with`` block (a lock, ``locked``/``locked_sync``,
    ``consistent_reads``) of the same thread (for a blocking request) or the
    same task (for an awaiting one), or by any task of the event loop whose
    thread a blocking request would block: that block cannot end while the
    request waits. Also when the request, overlapping that grant or not,
    would queue behind an exclusive whole-key request of the key (another
    caller's ``set``) that waits for it. Nothing is held or queued when it
    is raised.

    Attributes
    ----------
    key : str
        The key (or, for a prefix lock, the prefix) requested.
    ranges : tuple of (int, int or None)
        The ranges requested.
    shared : bool
        Whether the request was shared.
    held : tuple of (int, int or None)
        The ranges of the conflicting grant.
    held_key : str
        The key (or prefix) of the conflicting grant.
    held_shared : bool
        Whether the conflicting grant is shared.
    holder : str
        Who holds it and where, e.g. ``"this thread ('MainThread')"``.
    behind : tuple of (int, int or None) or None
        The ranges of the queued exclusive whole-key request the request
        would wait behind, that itself waits for the held grant (then the
        two need not overlap); None when it would wait for the grant itself.
    """

    def __init__(
        self,
        key: str,
        ranges: Sequence[tuple[int, int | None]],
        shared: bool,
        held_key: str,
        held: Sequence[tuple[int, int | None]],
        held_shared: bool,
        holder: str,
        behind: Sequence[tuple[int, int | None]] | None = None,
    ) -> None:
        behind = None if behind is None else tuple(behind)
        super().__init__(
            key, tuple(ranges), shared, held_key, tuple(held), held_shared, holder, behind
        )
        self.key = key
        self.ranges = tuple(ranges)
        self.shared = shared
        self.held_key = held_key
        self.held = tuple(held)
        self.held_shared = held_shared
        self.holder = holder
        self.behind = behind

    def __str__(self) -> str:
        mode = "shared" if self.shared else "exclusive"
        held_mode = "shared" if self.held_shared else "exclusive"
        where = "" if self.held_key == self.key else f" of {self.held_key!r}"
        via = (
            ""
            if self.behind is None
            else f" (behind an exclusive lock on ranges {_fmt_ranges(self.behind)} queued "
            "before it, which waits for them)"
        )
        return (
            f"self-deadlock: {'a' if self.shared else 'an'} {mode} lock on key {self.key!r} ranges "
            f"{_fmt_ranges(self.ranges)} would wait forever{via} for the {held_mode} "
            f"ranges {_fmt_ranges(self.held)}{where} held by {self.holder}, which "
            "cannot release them while this request waits; do the I/O through the "
            "block's handle, or leave the block first"
        )


class InvalidKeyError(ValueError):
    """A key or prefix that could name something outside the store, or nothing.

    Attributes
    ----------
    key : str
        The refused key (or prefix).
    rule : str
        Which rule it breaks, e.g. ``"contains a '..' segment"``.
    """

    def __init__(self, key: str, rule: str) -> None:
        super().__init__(key, rule)
        self.key = key
        self.rule = rule

    def __str__(self) -> str:
        return (
            f"invalid store key {self.key!r}: it {self.rule}; keys are '/'-separated "
            "relative paths with no empty, '.' or '..' segments"
        )


class KeyOutsideRootError(InvalidKeyError):
    """A key whose path leaves a LocalStore's root through a symbolic link,
    refused by a ``RangeLockedStore(..., confine=True)``.

    Attributes
    ----------
    key : str
        The refused key (or prefix).
    resolved : str
        The path it resolves to (symbolic links followed).
    root : str
        The store's root, resolved.
    rule : str
        ``"resolves outside the store's root"``.
    """

    def __init__(self, key: str, resolved: str, root: str) -> None:
        super().__init__(key, "resolves outside the store's root")
        self.resolved = resolved
        self.root = root

    def __reduce__(self) -> _Reduced:
        return _reduced(self, (self.key, self.resolved, self.root))

    def __str__(self) -> str:
        return (
            f"store key {self.key!r} resolves to {self.resolved!r}, outside the store's "
            f"root {self.root!r} (through a symbolic link); a store wrapped with "
            "confine=True refuses every key whose path leaves its root"
        )


class KeyNotFoundError(KeyError):
    """``set_range`` (or a handle operation) on a key that has no value.

    Attributes
    ----------
    key : str
        The missing key.
    operation : str
        The operation that needed it, e.g. ``"set_range"``.
    """

    def __init__(self, key: str, operation: str) -> None:
        super().__init__(key, operation)
        self.key = key
        self.operation = operation

    def __str__(self) -> str:
        # KeyError's own __str__ shows repr(args); name the rule instead.
        return (
            f"{self.operation} on key {self.key!r}: the key does not exist "
            "(set_range only overwrites bytes of an existing value; use set to create it)"
        )


class RangeOutOfBoundsError(ValueError):
    """A ``set_range`` whose ``start`` is negative or whose end is past the
    value's size (or past ``MAX_OFFSET - 1``, the largest end of a range
    that the store takes: ``locks._ranges.MAX_OFFSET``).

    Attributes
    ----------
    key : str
        The key written to.
    start : int
        The requested start offset.
    length : int
        The number of bytes to write.
    size : int or None
        The value's size, or ``None`` if the write was refused before looking
        it up (a negative start, or an end past ``MAX_OFFSET - 1``).
    """

    def __init__(self, key: str, start: int, length: int, size: int | None) -> None:
        super().__init__(key, start, length, size)
        self.key = key
        self.start = start
        self.length = length
        self.size = size

    def __str__(self) -> str:
        if self.start < 0:
            return (
                f"set_range on key {self.key!r}: start {self.start} is negative "
                f"(length {self.length}); offsets must be >= 0"
            )
        if self.size is None:
            return (
                f"set_range on key {self.key!r}: start {self.start} + length {self.length} "
                f"= {self.start + self.length} is past {MAX_OFFSET - 1}, the largest end of a "
                "range the store takes (a file offset is a signed 64-bit number)"
            )
        return (
            f"set_range on key {self.key!r}: start {self.start} + length {self.length} "
            f"= {self.start + self.length} exceeds the value's size {self.size}; "
            "set_range overwrites existing bytes and never extends a value"
        )


class RangeNotHeldError(ValueError):
    """A handle access outside the ranges (or the mode) its ``locked(...)`` block holds.

    Attributes
    ----------
    key : str
        The handle's key.
    start, end : int, int or None
        The accessed range, ``end=None`` meaning to the end of the value.
    held : tuple of (int, int or None)
        The ranges the handle holds (merged).
    rule : str
        What was missing, e.g. ``"is not inside the held ranges"``.
    """

    def __init__(
        self,
        key: str,
        start: int,
        end: int | None,
        held: tuple[tuple[int, int | None], ...],
        rule: str,
    ) -> None:
        super().__init__(key, start, end, held, rule)
        self.key = key
        self.start = start
        self.end = end
        self.held = held
        self.rule = rule

    def __str__(self) -> str:
        held = ", ".join(f"[{s}, {_end(e)})" for s, e in self.held)
        return (
            f"access to key {self.key!r} range [{self.start}, {_end(self.end)}) "
            f"{self.rule} (held: {held})"
        )


class UnsupportedStoreError(TypeError):
    """``RangeLockedStore`` was given a store it cannot write byte ranges into.

    Attributes
    ----------
    store_type : str
        The qualified name of the refused store's type.
    """

    def __init__(self, store_type: str) -> None:
        super().__init__(store_type)
        self.store_type = store_type

    def __str__(self) -> str:
        return (
            f"RangeLockedStore cannot write byte ranges into a {self.store_type}: only "
            "zarr.storage.MemoryStore and zarr.storage.LocalStore (exactly those types) "
            "are supported, and it never falls back to rewriting whole values"
        )


class CrossProcessLockError(OSError):
    """The lock file of a LocalStore root cannot be locked, so writers in other
    processes cannot be excluded (and nothing was done without them).

    Raised, for example, on a filesystem that refuses byte-range locks
    (``ENOLCK``, some network mounts).

    Attributes
    ----------
    errno : int
        The error number the OS gave.
    strerror : str
        What failed.
    filename : str
        The lock file.
    """

    def __init__(self, path: str, errno: int | None, why: str) -> None:
        # OSError pickles as cls(errno, strerror, filename): keep that order
        # reachable through __reduce__ below.
        super().__init__(errno, why, path)

    def __reduce__(self) -> _Reduced:
        return _reduced(self, (self.filename, self.errno, self.strerror))

    def __str__(self) -> str:
        return (
            f"cannot lock {self.filename!r} ({self.strerror}): writers in other processes "
            "could not be excluded, so nothing was done; pass cross_process=False only if "
            "no other process writes this store"
        )


class CrossProcessWarning(RuntimeWarning):
    """Cross-process locking works, but in a weaker or slower form than usual."""


class JournalWarning(RuntimeWarning):
    """A journal record was found incomplete or corrupt when a store opened and
    was discarded, not applied (``durability="journal"``)."""


class DescriptorLimitError(OSError):
    """The process is out of file descriptors, even after the store closed every
    descriptor it had cached or kept idle and tried once more.

    Attributes
    ----------
    key : str
        The key whose file (or lock file) could not be opened.
    operation : str
        What was being done (``"set_range"``, ``"set"``, ``"get"``, ``"lock"``, ...).
    errno : int
        ``EMFILE`` (this process's limit) or ``ENFILE`` (the system's).
    limit : int
        The soft ``RLIMIT_NOFILE`` of the process when it failed.
    held : int
        Descriptors the store still held (those in use by running operations,
        and those of each root with a live store: its lock file's presence
        description and, on Python 3.12, its stamps' mapping).
    """

    def __init__(self, key: str, operation: str, errno: int, limit: int, held: int) -> None:
        super().__init__(errno, os.strerror(errno))
        self.key = key
        self.operation = operation
        self.limit = limit
        self.held = held

    def __reduce__(self) -> _Reduced:
        return _reduced(self, (self.key, self.operation, self.errno, self.limit, self.held))

    def __str__(self) -> str:
        scope = (
            "the system's open-file table is full"
            if self.errno == errno.ENFILE
            else (f"the process has used its limit of {self.limit} open files (RLIMIT_NOFILE)")
        )
        return (
            f"{self.operation} on key {self.key!r}: out of file descriptors ({scope}), "
            "even after the store closed every descriptor it had cached or idle and "
            f"retried; the store still holds {self.held} (in use by running operations, "
            "and each live root's lock-file presence and change stamps); "
            "close files you no longer need or raise the limit (ulimit -n)"
        )


class PartialWriteError(OSError):
    """A range write failed part way (``EFBIG``, ``ENOSPC``, ``EIO``, ...).

    With ``durability="journal"`` the store has already written the old bytes
    back (the error's notes say so); otherwise the first ``written`` bytes of
    the range hold the new data and the rest the old.

    Attributes
    ----------
    errno, strerror : int, str
        The error the OS gave.
    key : str
        The key written (``""`` where no key applies, e.g. a journal file).
    start : int
        Offset of the range (inclusive).
    length : int
        Length of the range in bytes.
    written : int
        Bytes of the range written before the error.
    """

    def __init__(
        self, errno: int | None, strerror: str, key: str, start: int, length: int, written: int
    ) -> None:
        super().__init__(errno, strerror)
        self.key = key
        self.start = start
        self.length = length
        self.written = written

    def __reduce__(self) -> _Reduced:
        return _reduced(
            self, (self.errno, self.strerror, self.key, self.start, self.length, self.written)
        )

    def __str__(self) -> str:
        where = f"key {self.key!r}" if self.key else "a file"
        return (
            f"[Errno {self.errno}] {self.strerror}: writing {self.length} bytes of {where} at "
            f"offset {self.start} failed after {self.written} bytes: "
            f"[{self.start}, {self.start + self.written}) was written, "
            f"[{self.start + self.written}, {self.start + self.length}) was not"
        )
