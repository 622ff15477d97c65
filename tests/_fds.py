"""Counting the files a LocalStore wrapper opens and keeps (its descriptor
cache), a clock for that cache's re-checks, and files with holes."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from zarr_rangelock import RangeLockedStore
from zarr_rangelock.locks._lockfile import LOCK_FILE_NAME
from zarr_rangelock.store import _backends, _fdcache
from zarr_rangelock.store._backends import FD_REVALIDATE_S


def files_opened(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """From now on (until the test ends), the path of every file that a
    wrapper's descriptor cache opens, in order, appended to the list
    returned."""
    opened: list[str] = []
    real = _fdcache.FdCache.open

    def counting(self: _fdcache.FdCache, path: str, *args: Any) -> int:
        opened.append(path)
        return real(self, path, *args)

    monkeypatch.setattr(_fdcache.FdCache, "open", counting)
    return opened


def open_fds() -> int:
    """Open descriptors of files, less those of lock files (tests/test_oslock.py
    counts those). Sockets, pipes and event polls are not counted: a thread
    left by an earlier test may open and close those meanwhile (an event
    loop's epoll and socket pair: three, seen once after the dask tests)."""
    fds = os.listdir("/proc/self/fd")
    return sum(1 for fd in fds if _names_a_file(fd))


def _names_a_file(fd: str) -> bool:
    try:
        target = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return False  # closed meanwhile (the listing's own descriptor)
    return (
        target.startswith("/")
        and not target.startswith("/dev/")
        and not target.endswith("/" + LOCK_FILE_NAME)
    )


def cached(store: RangeLockedStore) -> dict[str, _fdcache._Fd]:
    """The store's cached descriptors, by path."""
    return store._state.fds._entries


class FakeClock:
    """Stands in for the descriptor cache's monotonic clock."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def advance_past_the_recheck(self) -> None:
        self.now += FD_REVALIDATE_S


def fake_clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    """A :class:`FakeClock` put in for the cache's clock (until the test ends)."""
    fake = FakeClock()
    monkeypatch.setattr(_backends, "_monotonic", fake)
    return fake


def sparse_file(path: Path, size: int, head: bytes = b"\x01") -> None:
    """A file of ``size`` bytes: ``head`` written, the rest a hole; skips the
    test where the file system keeps no holes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(head)
    os.truncate(path, size)
    if not has_holes(path):
        pytest.skip("the file system keeps no holes")


def has_holes(path: Path) -> bool:
    """Whether ``path``'s file has a hole before its end (``SEEK_HOLE``)."""
    with open(path, "rb") as f:
        return os.lseek(f.fileno(), 0, os.SEEK_HOLE) < os.fstat(f.fileno()).st_size
