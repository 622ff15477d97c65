"""The lock file of a root: opening it, and its change stamps.

:class:`LockFile` is the base of :class:`~._oslock.OsLocks` (whose design
note has the locks): it opens the root's lock file once, on first use, maps
its stamps, and warns where the locks cannot do all they should. Its
attributes are set by ``OsLocks.__init__``.

Design note
-----------
*Change stamps.* The lock file's first bytes hold
:data:`~._lockfile.STAMP_SLOTS` 64-bit stamps, mapped shared into every
process (written with ``pwrite``, or also read with ``pread``, where a store
through the mapping could meet a full disk: ``_lockfile``). A whole-value change of a
key (or of everything under a prefix) writes a fresh random stamp into the
key's slot (or the epoch) while its exclusive lock is held; a reader holding
any lock on the key that sees the stamp it saw before knows that no process
changed the value as a whole in between. Per-process caches (open descriptors,
the shard pipeline's validated indexes) are keyed on these stamps.

*Other machines.* Nothing here is coherent across machines: the stamps are
shared memory of one machine, and a network filesystem's page cache is only
revalidated for locks on the data file itself. So on a network or cluster
filesystem (NFS, SMB, Lustre, GPFS, CephFS, FUSE mounts, ...: read from
``/proc/self/mountinfo`` when the lock file opens) a
:class:`CrossProcessWarning` says that only processes of this machine are
covered.

*Nested roots.* A root inside another root (an array's directory under a
group's root, each wrapped by some store) has a lock file and a lock table
of its own: writers through the two exclude nothing. When a lock file is
first opened, a :class:`CrossProcessWarning` says so if a directory above
the root has a lock file (:func:`_enclosing_root`); the other way round (a
root opened above one already locked) is not looked for: it would mean
reading the whole tree below it.
"""

from __future__ import annotations

import errno
import mmap
import os
import threading
import warnings

from .._errors import CrossProcessLockError, CrossProcessWarning, DescriptorLimitError
from . import _fdbudget
from ._lockfile import (
    LOCK_FILE_NAME,
    STAMP_SLOTS,
    FileStamps,
    fresh_stamp,
    open_stamps,
    stamp_slot,
)
from ._mounts import NETWORK_FILESYSTEMS, filesystem_type
from ._ofd import ofd_supported

__all__ = ["LockFile"]


def _enclosing_root(root: str) -> str | None:
    """The nearest directory above ``root`` (resolved) with a lock file of
    its own, or None (*Nested roots* in the design note). One ``stat`` per
    directory up to ``/``, when a lock file is first opened."""
    here = os.path.realpath(root)
    while True:
        up = os.path.dirname(here)
        if up == here:
            return None
        if os.path.isfile(os.path.join(up, LOCK_FILE_NAME)):
            return up
        here = up


class LockFile:
    """The lock file of one LocalStore root, and its change stamps: the base
    of :class:`~._oslock.OsLocks`, which sets every attribute below."""

    path: str
    root: str
    writable: bool
    _open_lock: threading.Lock
    _flags: int  # os.O_RDWR, or O_RDONLY where the file cannot be opened for writing
    _ofd: bool  # OFD locks work here (else the flock fallback: _oslock)
    _map: mmap.mmap | None
    stamps: memoryview | FileStamps | None
    _writes: FileStamps | None
    fstype: str | None
    file_id: tuple[int, int] | None

    # ------------------------------------------------------------- the file

    def ready(self) -> bool:
        """Open the lock file if need be; False if it cannot exist yet (a
        read-only store whose root or lock file is missing: nobody has written)."""
        if self.stamps is not None:
            return True
        with self._open_lock:
            if self.stamps is not None:
                return True
            return self._open()

    def _open(self) -> bool:
        if self.writable:
            os.makedirs(self.root, exist_ok=True)
        path, lock = self.path, "a lock (opening the lock file)"
        try:
            fd = _fdbudget.retrying(
                lambda: os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666), path, lock
            )
            self._flags = os.O_RDWR
        except FileNotFoundError:
            return False  # a read-only store's missing root: nothing written, nothing to exclude
        except DescriptorLimitError:
            raise
        except OSError as e:
            if e.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
                raise CrossProcessLockError(self.path, e.errno, f"cannot open: {e}") from None
            try:  # a read-only filesystem or file: shared locks (reads) still work
                fd = _fdbudget.retrying(
                    lambda: os.open(path, os.O_RDONLY | os.O_CLOEXEC), path, lock
                )
            except FileNotFoundError:
                return False
            self._flags = os.O_RDONLY
        try:
            self.fstype = filesystem_type(self.root)
            st = os.fstat(fd)
            # (a mapping keeps a duplicate of the descriptor on Python 3.12,
            # and FileStamps one of its own: new descriptors, as an open)
            writable, fstype = self._flags == os.O_RDWR, self.fstype
            opened = _fdbudget.retrying(lambda: open_stamps(fd, writable, fstype), path, lock)
            if opened is None:
                return False
            self._map, stamps, self._writes = opened
            self._ofd = ofd_supported(fd)
            if not self._ofd:
                warnings.warn(
                    f"open-file-description locks (F_OFD_SETLK) are not available here; "
                    f"{self.path!r} is locked whole with flock(2) instead: safe across "
                    "processes, but while one process holds any lock, others wait",
                    CrossProcessWarning,
                    stacklevel=4,
                )
            if self.fstype is not None and self.fstype.startswith(NETWORK_FILESYSTEMS):
                warnings.warn(
                    f"{self.root!r} is on a {self.fstype} filesystem: processes on this "
                    "machine exclude each other, but processes on other machines are not "
                    "covered (their change stamps and page caches are not kept coherent "
                    "with this machine's); write one store from one machine at a time",
                    CrossProcessWarning,
                    stacklevel=4,
                )
            outer = _enclosing_root(self.root)
            if outer is not None:
                warnings.warn(
                    f"{self.root!r} is inside {outer!r}, a locked root too (it has a "
                    f"{LOCK_FILE_NAME!r} file): stores of the two have a lock file each "
                    "and do not exclude each other; wrap one root everywhere (the outer "
                    "one, opening arrays by their path under it)",
                    CrossProcessWarning,
                    stacklevel=4,
                )
        finally:
            os.close(fd)
        self.file_id = (st.st_dev, st.st_ino)
        self.stamps = stamps
        return True

    def _stamp_fds(self) -> set[int]:
        """The descriptors the stamps read and write through, if not mapped."""
        return {
            f.fd for f in (self.stamps, self._writes) if isinstance(f, FileStamps) and f.fd >= 0
        }

    # -------------------------------------------------------------- stamps

    def bump(self, slot: int) -> None:
        """Write a fresh random stamp into ``slot`` (with its exclusive lock held)."""
        if self.ready() and self._flags == os.O_RDWR:
            assert self.stamps is not None
            writes = self._writes
            (self.stamps if writes is None else writes)[slot] = fresh_stamp()

    def back(self, key: str, prefix: bool) -> None:
        """Called with an exclusive whole-key lock of ``key`` (``prefix``: a
        prefix lock) just taken, before the value may change: where the
        stamps are written with ``pwrite`` (holes the disk had no room for,
        or a filesystem whose overwrites allocate), write the stamp the
        change will bump, so that a full disk fails the change here, before
        it happens (``FileStamps.back``, ``_lockfile``). Else nothing.

        Raises
        ------
        OSError
            ``ENOSPC`` (or ``EDQUOT``) where the stamp's block cannot be had.
        """
        writes = self._writes
        if writes is not None:
            writes.back(STAMP_SLOTS if prefix else stamp_slot(key))
