"""Step 2 of a journal commit, and of a replay: applying a transaction's ops.

``_journal``'s design note has the protocol (step 2, *Failures*); here is
how :class:`_Apply` does it: each op remembers how to undo itself (the old
bytes a range write covers, read by :meth:`_Apply.prepare` in step 1, before
the record is written; the old file of a whole value, a prepared file or a
delete, linked or renamed aside) until the caller retires the record, and
:meth:`_Apply.rollback` undoes them in reverse order. (All old bytes are the
key's before the transaction, even where its ranges overlap: written back in
any order they leave it as it was.)

*Witnesses.* A replay applies a record written before a crash over keys
that may have changed since, by other writers that went on after the
process died. :meth:`_Apply.prepare` also puts in the record what each key
was: the bytes each range write covers (up to ``_record.OLD_BYTES_MAX``),
and the identity (``st_dev``, ``st_ino``, or none) of a key that a value, a
prepared file or a delete replaces. Under the replay's whole-key locks,
:meth:`_Apply.screen` applies a key's ops only while the key still holds
what the transaction found or left there:

* a key of range writes is the transaction's while it is the file the
  transaction wrote into (``was``, as for a value: a shard compacted or
  rewritten whole since is a new file, whose index may hold, byte for
  byte, what the transaction found, its chunks packed as they were) and
  every byte of each
  witnessed range holds what was there before it, or what it writes there
  (itself, or an earlier range of the same record over it), in any mix:
  not applied, torn, applied, all brought to all new. Another file, or a
  byte that is
  neither: another writer changed the key since, and none of the record's
  writes to the key is applied, unwitnessed ones included (a chunk's bytes
  written where that writer may now keep another chunk). An unwitnessed
  range (larger than the limit, or a record of the earlier format) is
  applied unless another range of its key shows the key changed;
* a *read witness* of the key (``_KeyOps.reads``,
  ``Transaction.add_witness``: a range the transaction depends on but
  does not write, such as a chunk place a compressed shard's new index
  stops pointing at) must hold exactly the bytes :meth:`_Apply.prepare`
  read there (one ``pread`` each, clipped to the file, at most
  ``_record.OLD_BYTES_MAX`` bytes of them per key, the rest dropped), or,
  where a range write of the same record covers it, what that writes: in
  every state the transaction can leave, it does (nothing writes it). Any
  other byte: another writer changed the key since, as above. It is never
  applied nor undone;
* a value, prepared file or delete is applied while the key is still the
  file it found (or still absent) and that file's read witnesses hold (a
  shard's index, which a writer appending to the file since re-pointed:
  else skipped, the prepared file removed). Else the op is done, silently, if the key
  holds its result (the prepared file's inode; a file with the value's
  bytes; no file after a delete); or another writer replaced, created or
  deleted the key since, and the op is skipped (a prepared file removed).

Each key left out is named, with why, in one
:class:`~zarr_rangelock.JournalWarning` per record (``_journal``), which
says that the transaction was then applied in part, or not at all. A
range write that no longer fits, or a prepared file that is gone and not
the key's file now, is skipped with a warning of its own, as before
witnesses. What this cannot see: ``_journal``'s *What replay cannot do*.

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

import numpy as np

from .._errors import (
    JournalWarning,
    KeyNotFoundError,
    PartialWriteError,
    RangeOutOfBoundsError,
)
from ..locks._ki import protected
from ._faults import _die
from ._io import open_fd, write_keyed, write_range
from ._record import OLD_BYTES_MAX
from ._transaction import ABSENT, _KeyOps, _unlink_quietly

__all__ = ["delete_value", "publish", "write_value"]


def _fsync_dir(path: str) -> None:
    fd = open_fd(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
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
    fd = open_fd(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
    try:
        try:
            write_range(fd, memoryview(data).cast("B"), 0)
            if sync:
                os.fsync(fd)
        finally:
            os.close(fd)
        publish(tmp, path, sync)  # (in the try: a Ctrl-C at its entry left tmp behind)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)  # (gone once published: nothing done)
        raise


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


def identity(path: str) -> tuple[int, int]:
    """The file at ``path`` as (``st_dev``, ``st_ino``), or :data:`ABSENT`."""
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return ABSENT
    return st.st_dev, st.st_ino


def _same_file(now: tuple[int, int], was: tuple[int, int]) -> bool:
    """Whether two :func:`identity` values name one file (or both none), by
    inode number alone: ``st_dev`` can differ for the same file after a
    reboot (btrfs numbers its subvolumes' devices at mount), and a replay
    after a power loss must not take every key for another writer's."""
    return now == was if ABSENT in (now, was) else now[1] == was[1]


def _read(fd: int, n: int, start: int, key: str) -> bytes:
    data = os.pread(fd, n, start)
    if len(data) != n:  # pragma: no cover - checked to fit, under its locks
        raise OSError(f"short read of {key!r}: {len(data)} of {n} bytes at {start}")
    return data


def _holds(path: str, value: bytearray) -> bool:
    """Whether the file at ``path`` holds exactly ``value``."""
    try:
        with open(path, "rb") as f:
            return f.read(len(value) + 1) == value
    except OSError:
        return False


def _foreign(
    now: bytes, start: int, old: bytes | memoryview, ranges: list[tuple[int, bytes | memoryview]]
) -> tuple[int, int] | None:
    """The first and last byte (absolute offsets, the last exclusive) of
    ``now`` (the key's bytes at ``start``) that hold neither ``old`` (what
    the transaction found) nor what any of its ``ranges`` of the key writes
    there (a later range over an earlier one: the byte may hold either);
    None if there is none."""
    cur = np.frombuffer(now, np.uint8)
    ok = cur == np.frombuffer(old, np.uint8)
    end = start + len(now)
    for s, data in ranges:
        lo, hi = max(start, s), min(end, s + len(data))
        if lo < hi:
            ok[lo - start : hi - start] |= (
                cur[lo - start : hi - start] == np.frombuffer(data, np.uint8)[lo - s : hi - s]
            )
    bad = np.flatnonzero(~ok)
    if not bad.size:
        return None
    return start + int(bad[0]), start + int(bad[-1]) + 1


def _put_back(path: str, tmp: str, aside: str) -> None:
    """Undo the rename of the prepared file ``tmp`` over ``path``, whose old
    file is linked at ``aside``: the prepared file linked back first (until
    the old file is renamed back, the key is it: a replay sees it renamed)."""
    with contextlib.suppress(FileExistsError):
        os.link(path, tmp)
    os.replace(aside, path)


class _Apply:
    """Step 2 of a commit (or a replay): applies ops, remembering how to undo
    them (:meth:`rollback`) until the caller retires the record."""

    def __init__(self, root: str, sync: bool) -> None:
        self.root = root
        self.sync = sync
        self.fds: dict[str, int] = {}
        self.stats: dict[str, os.stat_result] = {}
        self.undo: list[Callable[[], None]] = []
        self.asides: list[str] = []
        self.dirs: set[str] = set()

    def prepare(self, ops: dict[str, _KeyOps]) -> None:
        """Step 1's reads, before the record is written (nothing is written
        yet): the bytes each range write covers, before the transaction (to
        undo it, and its witness in the record: ``ops[key].olds``), and the
        identity of each key a value, a prepared file or a delete replaces
        (``ops[key].was``). Raises if a range write does not fit."""
        for key, k in ops.items():
            if k.replaces:
                k.was = identity(f"{self.root}/{key}")
                if k.reads:  # of the file it replaces (none if missing)
                    self._read_witnesses(key, k, None)
            elif k.ranges or k.reads:
                olds: list[bytes | memoryview | None] = []
                fd = None
                for start, data in k.ranges:
                    fits = self._fits(key, start, len(data), False)
                    assert fits is not None  # (_fits raises, outside a replay)
                    olds.append(_read(fits, len(data), start, key))
                    fd = fits
                k.olds = olds
                if k.reads:
                    fd = self._read_witnesses(key, k, fd)
                if fd is not None:
                    st = self._stat(key, fd)  # the file they go into: a witness too
                    k.was = st.st_dev, st.st_ino

    def _read_witnesses(self, key: str, k: _KeyOps, fd: int | None) -> int | None:
        """:meth:`prepare`'s reads of ``k.reads`` (the read witnesses), into
        ``k.read_olds``: each clipped to the file, and all of them to
        :data:`~._record.OLD_BYTES_MAX` bytes (those past it are dropped: not
        witnessed); one ``pread`` each. Returns the key's descriptor (None
        if the key is missing: nothing to witness)."""
        if fd is None:
            fd = self._fd(key)
        reads: list[tuple[int, int]] = []
        olds: list[bytes] = []
        if fd is not None:
            size = self._size(key, fd)
            budget = OLD_BYTES_MAX
            for start, length in k.reads:
                n = min(length, size - start, budget)
                if n > 0:
                    reads.append((start, n))
                    olds.append(_read(fd, n, start, key))
                    budget -= n
        k.reads, k.read_olds = reads, olds
        return fd

    def run(self, ops: dict[str, _KeyOps], replay: bool, fault: str | None) -> None:
        """Apply ``ops``; outside a replay, after :meth:`prepare`."""
        total = sum(len(d) for k in ops.values() for _, d in k.ranges)
        kill_at = total // 2 if fault == "mid-apply" else -1
        done = 0
        for key, k in ops.items():
            for i, (start, data) in enumerate(k.ranges):
                old = None if replay else k.olds[i]
                if 0 <= kill_at < done + len(data):
                    cut = kill_at - done
                    part = None if old is None else memoryview(old)[:cut]
                    self._range(key, start, memoryview(data)[:cut], part, replay)
                    self._sync_files()
                    _die("mid-apply")
                self._range(key, start, data, old, replay)
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

    # -- replay: the witnesses

    def screen(self, ops: dict[str, _KeyOps]) -> tuple[dict[str, _KeyOps], list[str]]:
        """A replay's ops (a dead process's record) split by their witnesses:
        the ops to apply, and why each key left out was left out, for a key
        another writer changed since the transaction (none for a key that
        holds what the transaction left there: nothing to do). Under
        whole-key locks on every key of ``ops``; see the module's design note."""
        todo: dict[str, _KeyOps] = {}
        skipped: list[str] = []
        for key, k in ops.items():
            why = self._replaced(key, k) if k.replaces else self._patched(key, k)
            if why is None:
                todo[key] = k
            elif why:
                skipped.append(f"{key!r} {why}")
                if k.file is not None:  # never to be renamed now: litter
                    _unlink_quietly(f"{self.root}/{k.file}")
        return todo, skipped

    def _patched(self, key: str, k: _KeyOps) -> str | None:
        """None if every witnessed range of the key holds, byte by byte, what
        the transaction found there or what it wrote (or a write of the same
        transaction over it): the ops are the transaction's, applied or not,
        or torn; else why not (another writer changed the key since)."""
        if not k.olds and not k.reads:
            return None  # a record of the earlier format: no witness
        fd = self._fd(key)
        if fd is None:
            return None  # missing: each write is skipped with a warning (_range)
        if k.was is not None:
            st = self._stat(key, fd)
            if not _same_file((st.st_dev, st.st_ino), k.was):
                return "was replaced by another writer since the transaction"
        size = self._size(key, fd)
        reach = max([start + len(data) for start, data in k.ranges] + [s + n for s, n in k.reads])
        if reach > size:
            # Its writes fitted the file they went into (checked then): this
            # is another, whose inode number may be that one's, reused.
            return (
                f"is {size} bytes, shorter than the transaction's writes reach "
                f"({reach}): it was replaced by another writer since the transaction"
            )
        for (start, data), old in zip(k.ranges, k.olds, strict=True):
            if old is None:
                continue  # no witness
            n = len(data)
            now = _read(fd, n, start, key)
            if now in (data, old):
                continue
            bad = _foreign(now, start, old, k.ranges)
            if bad is not None:
                return (
                    f"holds at bytes {bad[0]}-{bad[1]} neither what the transaction "
                    "found there nor what it wrote: another writer changed it since"
                )
        return self._read_changed(key, k, fd)

    def _read_changed(self, key: str, k: _KeyOps, fd: int) -> str | None:
        """Why the key's read witnesses (``k.reads``) show another writer
        changed it since the transaction (a byte other than the one it found,
        or, where one of its own writes covers it, wrote); None if none."""
        size = self._size(key, fd)
        for (start, n), old in zip(k.reads, k.read_olds, strict=True):
            if start + n > size:  # (a file no writer of ours makes shorter)
                return f"is {size} bytes, shorter than the bytes the transaction read"
            now = _read(fd, n, start, key)
            if now == old:
                continue
            bad = _foreign(now, start, old, k.ranges)
            if bad is not None:
                return (
                    f"holds at bytes {bad[0]}-{bad[1]}, which the transaction read and "
                    "did not write (a place its index stopped pointing at, or the index "
                    "of the shard it replaced), other bytes than it found: another "
                    "writer changed it since"
                )
        return None

    def _replaced(self, key: str, k: _KeyOps) -> str | None:
        """None if the key is still the file the transaction found (or still
        absent): the value, prepared file or delete is to be applied; ``""``
        if it is the transaction's own result (done); else why not (another
        writer replaced, created or deleted it since)."""
        if k.was is None:
            return None  # a record of the earlier format: no witness
        path = f"{self.root}/{key}"
        now = identity(path)
        if _same_file(now, k.was):
            # Not replaced yet; but another writer may have patched the file
            # in place since (its read witnesses: a compaction's, the old
            # index of a shard that a chunk was appended to since).
            fd = self._fd(key) if k.reads else None
            return None if fd is None else self._read_changed(key, k, fd)
        if k.delete and now == ABSENT:
            return ""  # deleted: by the transaction or since, absent either way
        if k.file is not None and now != ABSENT and now[1] == k.file_ino:
            return ""  # the prepared file, renamed
        if k.value is not None and now != ABSENT and _holds(path, k.value):
            return ""  # (or an equal value written since: the same either way)
        if now == ABSENT:
            return "was deleted by another writer since the transaction"
        if k.was == ABSENT:
            return "was created by another writer since the transaction"
        return "was replaced by another writer since the transaction"

    # -- applying

    def _fd(self, key: str) -> int | None:
        fd = self.fds.get(key)
        if fd is None:
            try:
                fd = open_fd(f"{self.root}/{key}", os.O_RDWR | os.O_CLOEXEC)
            except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
                return None
            self.fds[key] = fd
        return fd

    def _stat(self, key: str, fd: int) -> os.stat_result:
        """The key's file's ``fstat``, once per apply (its size and identity)."""
        st = self.stats.get(key)
        if st is None:
            st = self.stats[key] = os.fstat(fd)
        return st

    def _size(self, key: str, fd: int) -> int:
        return self._stat(key, fd).st_size

    def _fits(self, key: str, start: int, n: int, replay: bool) -> int | None:
        """The key's descriptor if a write of ``n`` bytes at ``start`` fits;
        else (in a replay) None, with a warning, or (otherwise) an error."""
        fd = self._fd(key)
        size = None if fd is None else self._size(key, fd)
        if fd is not None and size is not None and start + n <= size:
            return fd
        # Checked when the write was added, under the locks held since:
        # only a writer bypassing the store (or a replay of a record
        # whose key was since replaced) gets here.
        if replay:
            warnings.warn(
                f"journal replay: key {self.root}/{key} is "
                f"{'missing' if size is None else f'{size} bytes'}, so its write of "
                f"{n} bytes at {start} was skipped",
                JournalWarning,
                stacklevel=3,
            )
            return None
        if size is None:
            raise KeyNotFoundError(key, "set_range")
        raise RangeOutOfBoundsError(key, start, n, size)

    def _range(
        self,
        key: str,
        start: int,
        data: bytes | memoryview,
        old: bytes | memoryview | None,
        replay: bool,
    ) -> None:
        """Write ``data`` at ``start``; ``old`` (the bytes it covers, from
        :meth:`prepare`) to undo it, None in a replay (never undone)."""
        fd = self._fits(key, start, len(data), replay)
        if fd is None:
            return
        if old is not None:
            self.undo.append(lambda: write_range(fd, memoryview(old), start))
        try:
            write_keyed(fd, memoryview(data), start, key)
        except PartialWriteError as exc:
            # Undo only the bytes written: writing back the rest could fail as
            # the write did (EFBIG past a file size limit).
            if old is not None:
                written = exc.written
                self.undo[-1] = lambda: write_range(fd, memoryview(old)[:written], start)
            raise
        except OSError:
            if old is not None:
                self.undo.pop()  # nothing written (write_range says so)
            raise

    def _set(self, key: str, value: bytearray) -> None:
        path = f"{self.root}/{key}"
        aside = _aside(path)
        try:
            os.link(path, aside)
        except FileNotFoundError:
            # No file before: undone by removing the key's file, if the
            # value got as far as its rename (a write_value that failed
            # before it made none, and the undo must not fail for that).
            self.undo.append(lambda: _unlink_quietly(path))
        else:
            self.asides.append(aside)
            self.undo.append(lambda: os.replace(aside, path))
        self.dirs.add(os.path.dirname(path))  # (for the undo: write_value syncs its rename)
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
        # Undone by putting the prepared file back under its own name, never
        # by dropping it: a record left for replay (an undo step failing
        # later, or the process dying in the undo) renames it again.
        if linked:
            self.asides.append(aside)
            self.undo.append(lambda: _put_back(path, tmp, aside))
        else:
            self.undo.append(lambda: os.rename(path, tmp))
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
        if self.sync:  # the renames back durable before the caller retires the record
            for d in self.dirs:
                with contextlib.suppress(FileNotFoundError):  # (a value's, never made)
                    _fsync_dir(d)
        self.undo.clear()

    @protected
    def close(self) -> None:
        # Each descriptor leaves the map before it is closed, and no
        # KeyboardInterrupt lands in between (``locks/_ki``): the journal
        # calls this twice (an inner and an outer finally), and an
        # interrupt after a close and before the map was cleared made the
        # second call close the same numbers again (EBADF raised in place
        # of the interrupt, or another thread's new descriptor closed).
        fds = self.fds
        while fds:
            os.close(fds.popitem()[1])

    def drop_asides(self) -> None:
        for aside in self.asides:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(aside)
