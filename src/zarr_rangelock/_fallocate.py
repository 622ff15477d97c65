"""Allocating a file's holes on disk without touching its bytes.

A page of a shared mapping over a hole in a file gets its block when the page
is first written (on tmpfs, first touched at all); where the file system has
none left, the access raises ``SIGBUS``, which kills the process, where
``pwrite`` would have raised ``OSError``. The lock file's change stamps are
such a mapping (where its holes are allocated: else they are read and written
with ``pread``/``pwrite``; on a copy-on-write file system written with
``pwrite`` always, ``locks/_lockfile``), and so are shard files on a store
with ``map_writes=True``. :func:`allocate_holes` gives a file's holes
their blocks ahead of that, with the ``fallocate`` system call, keeping the
file's size and bytes (``os.posix_fallocate`` is not used: where the file
system lacks the call, glibc emulates it by writing a zero byte into each
block that reads as zero, which would undo another process's concurrent write
there).
"""

from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Callable
from typing import cast

__all__ = ["FALLOC_FL_KEEP_SIZE", "allocate_holes", "allocated", "reserve"]

#: ``fallocate(2)``'s mode that never changes the file's size.
FALLOC_FL_KEEP_SIZE = 0x01


def _libc_fallocate() -> Callable[[int, int, int, int], int] | None:
    """libc's ``fallocate64`` (the system call, never emulated), or None."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:  # pragma: no cover - no C library to load
        return None
    fn = getattr(libc, "fallocate64", None)
    if fn is None and sys.maxsize > 2**32:  # pragma: no cover - musl >= 1.2.4 has no *64 names
        fn = getattr(libc, "fallocate", None)  # (and a 64-bit off_t)
    if fn is None:  # pragma: no cover
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    fn.restype = ctypes.c_int
    return cast(Callable[[int, int, int, int], int], fn)


_fallocate = _libc_fallocate()


def allocated(fd: int, size: int) -> bool:
    """Whether the first ``size`` bytes of ``fd``'s file have no hole
    (``SEEK_HOLE``; False where the file system cannot tell)."""
    try:
        return os.lseek(fd, 0, os.SEEK_HOLE) >= size
    except OSError:  # pragma: no cover - every Linux file system answers
        return False


def allocate_holes(fd: int, size: int) -> bool:
    """Whether the first ``size`` bytes of ``fd``'s file (open for writing)
    are allocated on disk: they had no hole (:func:`allocated`), or
    ``fallocate`` allocated them (keeping the size and the bytes). False
    where a hole could not be allocated: the disk full already, a file
    system without ``fallocate``, no such call in libc."""
    if allocated(fd, size):
        return True
    fallocate = _fallocate
    return fallocate is not None and fallocate(fd, FALLOC_FL_KEEP_SIZE, 0, size) == 0


def reserve(fd: int, start: int, length: int) -> int:
    """Give ``[start, start + length)`` of ``fd``'s file (open for writing)
    its blocks on disk, keeping its size and bytes, before a ``pwrite`` into
    a file with holes: 0, or the ``errno`` of a failure. Without it, a
    ``pwrite`` over a hole on a full disk wrote as many pages as there was
    room for and failed there, leaving the range half new; with it, that
    write fails before a byte is written (``ENOSPC``). Any other failure (a
    file system without ``fallocate``) is for the caller to ignore."""
    fallocate = _fallocate
    if fallocate is None:  # pragma: no cover - libc without the call
        return 0
    if fallocate(fd, FALLOC_FL_KEEP_SIZE, start, length) == 0:
        return 0
    return ctypes.get_errno()
