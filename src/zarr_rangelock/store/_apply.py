"""Step 2 of a journal commit, and of a replay: applying a transaction's ops.

``_journal``'s design note has the protocol (step 2, *Failures*); here is
how :class:`_Apply` does it: each op remembers how to undo itself (the old
bytes a range write covers, read before it; the old file of a whole value, a
prepared file or a delete, linked or renamed aside) until the caller retires
the record, and :meth:`_Apply.rollback` undoes them in reverse order. A
replay applies a record written before a crash over keys that may have
changed since: a range write that no longer fits, or a prepared file that is
gone and not the key's file now, is skipped with a
:class:`~zarr_rangelock.JournalWarning`.

:func:`write_value`, :func:`publish` and :func:`delete_value` are also how
the durable modes write and delete a whole value alone (``_durable``,
``_rewrite``).
"""

from __future__ import annotations

import contextlib
import os
import uuid
import warnings
from collections.abc import Callable

from .._errors import (
    JournalWarning,
    KeyNotFoundError,
    PartialWriteError,
    RangeOutOfBoundsError,
)
from ._faults import _die
from ._io import write_keyed, write_range
from ._transaction import _KeyOps, _unlink_quietly

__all__ = ["delete_value", "publish", "write_value"]


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _aside(path: str) -> str:
    # Shaped like a LocalStore temporary file: hidden from listings, cleaned up.
    return f"{path}.{uuid.uuid4().hex}.partial"


def write_value(path: str, data: bytes | bytearray | memoryview, sync: bool) -> None:
    """Write a whole value as LocalStore does (a temporary file renamed over
    ``path``, parents made), and with ``sync`` fsync the file before the rename
    and its directory after."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = _aside(path)
    # 0o666 less the umask, as zarr's LocalStore (Python's open) creates files
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
    try:
        try:
            write_range(fd, memoryview(data).cast("B"), 0)
            if sync:
                os.fsync(fd)
        finally:
            os.close(fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    publish(tmp, path, sync)


def publish(tmp: str, path: str, sync: bool) -> None:
    """Rename the temporary file ``tmp`` over ``path`` (atomic), with ``sync``
    the directory fsynced after; ``tmp`` is removed if the rename fails."""
    try:
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if sync:
        _fsync_dir(os.path.dirname(path))


def delete_value(path: str, sync: bool) -> bool:
    """Remove the file at ``path`` (False if there was none), with ``sync`` its
    directory fsynced after."""
    try:
        os.unlink(path)
    except (FileNotFoundError, NotADirectoryError):  # (a key under another key's value)
        return False
    if sync:
        _fsync_dir(os.path.dirname(path))
    return True


class _Apply:
    """Step 2 of a commit (or a replay): applies ops, remembering how to undo
    them (:meth:`rollback`) until the caller retires the record."""

    def __init__(self, root: str, sync: bool) -> None:
        self.root = root
        self.sync = sync
        self.fds: dict[str, int] = {}
        self.sizes: dict[str, int] = {}
        self.undo: list[Callable[[], None]] = []
        self.asides: list[str] = []
        self.dirs: set[str] = set()

    def run(self, ops: dict[str, _KeyOps], replay: bool, fault: str | None) -> None:
        total = sum(len(d) for k in ops.values() for _, d in k.ranges)
        kill_at = total // 2 if fault == "mid-apply" else -1
        done = 0
        for key, k in ops.items():
            for start, data in k.ranges:
                if 0 <= kill_at < done + len(data):
                    self._range(key, start, data[: kill_at - done], replay)
                    self._sync_files()
                    _die("mid-apply")
                self._range(key, start, data, replay)
                done += len(data)
        if kill_at >= 0:
            _die("mid-apply")  # no range bytes: before the whole-value ops
        for key, k in ops.items():
            if k.value is not None:
                self._set(key, k.value)
            elif k.file is not None:
                self._rename(key, k.file, k.file_ino, replay)
            elif k.delete:
                self._delete(key)
        self._sync_files()
        if self.sync:
            for d in self.dirs:
                _fsync_dir(d)

    def _fd(self, key: str) -> int | None:
        fd = self.fds.get(key)
        if fd is None:
            try:
                fd = os.open(f"{self.root}/{key}", os.O_RDWR | os.O_CLOEXEC)
            except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
                return None
            self.fds[key] = fd
        return fd

    def _range(self, key: str, start: int, data: bytes | memoryview, replay: bool) -> None:
        fd = self._fd(key)
        size = self.sizes.get(key)
        if size is None and fd is not None:
            size = self.sizes[key] = os.fstat(fd).st_size
        if fd is None or size is None or start + len(data) > size:
            # Checked when the write was added, under the locks held since:
            # only a writer bypassing the store (or a replay of a record
            # whose key was since replaced) gets here.
            if replay:
                warnings.warn(
                    f"journal replay: key {self.root}/{key} is "
                    f"{'missing' if size is None else f'{size} bytes'}, so its write of "
                    f"{len(data)} bytes at {start} was skipped",
                    JournalWarning,
                    stacklevel=2,
                )
                return
            if size is None:
                raise KeyNotFoundError(key, "set_range")
            raise RangeOutOfBoundsError(key, start, len(data), size)
        old = os.pread(fd, len(data), start)
        self.undo.append(lambda: write_range(fd, memoryview(old), start))
        try:
            write_keyed(fd, memoryview(data), start, key)
        except PartialWriteError as exc:
            # Undo only the bytes written: writing back the rest could fail as
            # the write did (EFBIG past a file size limit).
            written = exc.written
            self.undo[-1] = lambda: write_range(fd, memoryview(old)[:written], start)
            raise
        except OSError:
            self.undo.pop()  # nothing written (write_range says so)
            raise

    def _set(self, key: str, value: bytearray) -> None:
        path = f"{self.root}/{key}"
        aside = _aside(path)
        try:
            os.link(path, aside)
        except FileNotFoundError:
            self.undo.append(lambda: os.unlink(path))
        else:
            self.asides.append(aside)
            self.undo.append(lambda: os.replace(aside, path))
        write_value(path, value, self.sync)

    def _rename(self, key: str, file: str, ino: int, replay: bool) -> None:
        """Rename the prepared file ``file`` over ``key`` (the old file linked
        aside, to undo)."""
        path = f"{self.root}/{key}"
        tmp = f"{self.root}/{file}"
        if replay:
            try:
                fd = os.open(tmp, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                # Renamed before the crash (the key's file is the prepared
                # one): done. Anything else: lost, and the key as it is.
                with contextlib.suppress(OSError):
                    if os.stat(path).st_ino == ino:
                        return
                warnings.warn(
                    f"journal replay: the prepared file {tmp} of key {self.root}/{key} "
                    "is gone and the key is not it, so its rename was skipped",
                    JournalWarning,
                    stacklevel=2,
                )
                return
            try:
                if self.sync:
                    os.fsync(fd)
            finally:
                os.close(fd)
        aside = _aside(path)
        try:
            os.link(path, aside)
        except FileNotFoundError:
            linked = False
        else:
            linked = True
        try:
            os.replace(tmp, path)
        except BaseException:
            if linked:  # nothing renamed: only the aside to drop
                _unlink_quietly(aside)
            raise
        if linked:
            self.asides.append(aside)
            self.undo.append(lambda: os.replace(aside, path))
        else:
            self.undo.append(lambda: os.unlink(path))
        self.dirs.add(os.path.dirname(path))

    def _delete(self, key: str) -> None:
        path = f"{self.root}/{key}"
        aside = _aside(path)
        try:
            os.rename(path, aside)
        except (FileNotFoundError, NotADirectoryError):  # (a key under another key's value)
            return
        self.asides.append(aside)
        self.undo.append(lambda: os.replace(aside, path))
        self.dirs.add(os.path.dirname(path))

    def _sync_files(self) -> None:
        if self.sync:
            for fd in self.fds.values():
                os.fdatasync(fd)

    def rollback(self) -> None:
        for step in reversed(self.undo):
            step()
        self._sync_files()
        self.undo.clear()

    def close(self) -> None:
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()

    def drop_asides(self) -> None:
        for aside in self.asides:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(aside)
