"""The write-ahead journal of ``durability="journal"``: every write all old or all new.

Design note
-----------
*What a transaction is.* The writes of one user call, made while the call
holds its locks: one ``set_range``, ``set`` or ``delete`` of the store, or
every chunk, index, whole-shard and delete write of one
:class:`~zarr_rangelock.ShardWritePipeline` ``write`` (collected in a
:class:`Transaction` while the call's shard jobs run; nothing is applied
until they have all finished; ``_transaction``). Per key a transaction holds
either range writes, or one whole new value, or one prepared file, or one
delete: a whole value, a prepared file or a delete replaces what came before
it for that key, and a range write after a whole value or a prepared file
patches it. A *prepared file* is a whole value that a rewrite (a shard's
compaction, ``_rewrite``) has already written into a temporary file beside
the key's, so that neither the transaction nor its record holds the value's
bytes; an uncommitted transaction removes its prepared files.

*Commit*, still under the call's locks (a database's doublewrite buffer):

1. the bytes each range write covers are read (kept in memory, to undo,
   and the op's witness), the bytes of each *read witness* (a range the
   transaction depends on but does not write: :meth:`Transaction.add_witness`)
   and the identity of each key replaced or deleted
   (``_apply``); the prepared files are fsynced; the record (every op with
   its key, offset, length and bytes, a range's old bytes up to
   ``_record.OLD_BYTES_MAX``, the read witnesses' bytes, a replaced key's
   identity, a prepared file by
   its name and inode, under two CRC-32C checksums) is written to a journal
   file and ``fdatasync``-ed;
2. the ops are applied: range writes in place; whole values through a temporary file that
   is fsynced, then renamed over the key after the old file was linked aside;
   prepared files renamed over the key likewise; deletes by renaming the file
   aside. Every data file written and every directory changed is then fsynced;
3. the record is retired (its magic zeroed) and the journal ``fdatasync``-ed;
   the asides are removed.

A crash before step 1 ends leaves no complete record and untouched data. A
crash after it leaves a complete record, which replay applies again: every
op is idempotent (redo), so the transaction ends all new; a prepared file
that is gone was renamed already if the key's inode is the one the record
names (else the rename is skipped with a warning). Step 3 must be
durable before the locks go: a record still complete on disk after a later
writer has changed the same bytes would be replayed over them, but for
its witnesses (*Replay*), which catch most such writes, not all.

*Failures.* An error in step 1 retires the part-written record and re-raises,
with a note saying nothing was applied. An error in step 2 (``EFBIG``,
``ENOSPC``, ``EIO``) undoes what step 2 did (old bytes written back, only as
many as a write cut short wrote; asides renamed back), retires the record
and re-raises, with a note saying the transaction was rolled back. If the
undo fails too, the record stays and replay applies it (all new); the error
raised is still the write's, with a note saying so.

*Journal files* live in :data:`JOURNAL_DIR` under the root, which listings
hide and keys may not use. Each process has a pool of them, one per
transaction in flight, reused; a record always starts at offset 0. A process
holds an exclusive ``flock`` on each of its files for as long as it lives
(``flock`` locks belong to the open file description, so the kernel drops
them when the process dies, however it dies, unless a child shares the
description: see *Fork*). A file is created under a ``.new`` name, locked,
then renamed, so no opener sees it unlocked; its name is fsynced before the
first fsynced record in it (never with ``journal-nosync``).

*Fork.* A forked child shares its parent's open file descriptions, and with
them their ``flock`` locks: a child that kept a journal file of its parent
open (an idle ``multiprocessing`` worker) would make the parent look alive
after it was killed, so replay would skip the parent's record (its write
left torn) and apply it only once the child had gone, over whatever was
written since. So every descriptor of a journal file (a file of the pool,
one checked out by a thread in a transaction, one kept for replay, an orphan
being replayed) is in :data:`_OPEN` from its ``open`` to its ``close``, both
made under :data:`_open_lock`, which a fork holds throughout (no descriptor
is half registered in the child). The child closes each of them once, by
number, however many journals know it (never with ``LOCK_UN``, which would
unlock the parent's file too), and marks its :class:`_File` closed, so a
file checked out by a thread of the parent (a thread the child does not
have) is never written or pooled there. Every journal then starts over with
an empty pool and new mutexes (a thread of the parent may have held one): a
child that writes makes journal files of its own, as a new process would,
and removes or replays nothing of its parent's. A child started by
``spawn`` or ``forkserver`` inherits no descriptor (``O_CLOEXEC``).

*Replay* (:meth:`Journal.recover`, when a store opens) takes each journal file
whose ``flock`` it can get (its process is gone), reads its record, discards
an incomplete or corrupt one with a warning, and applies a complete one under
whole-key locks on every key it names (so it never runs beside a live writer
of those keys), then removes the file. Its process may have died long
before, and live processes written its keys since (a dask job's workers
write on while a nanny restarts the killed one, which opens the root and
replays): a key's ops are applied only while the key holds what the
transaction found or left there (and is the file it wrote into), which
the record's *witnesses* tell (``_apply``); a key another writer changed
since is left as it is, with a :class:`JournalWarning` naming the key,
the record and why, and the record's other keys are applied (its transaction then only in part: the
least damage, where the alternative undoes other processes' committed
writes). One replay runs at a time per root
across processes: each holds an exclusive whole-key lock of the name
:data:`JOURNAL_DIR` (never a key: refused as one), cross-process as every
lock of the store, from its listing to its last removal; a replay (a
store opening) that finds it held waits, then finds the files gone. A
prefix lock of the root (``clear``) covers that name, so a replay holding
it waits for a record's keys only for a while, then lets go of all and
starts over (:meth:`Journal.recover`). Without the turn,
processes opening the root at once split the dead files between them, and
two records on the same bytes were applied in whichever order their
replays reached them (an older one last: the *Order* below broken); and a
store that replayed nothing because the files were held by another's
replay could be written before that replay applied them, over its writes.
A replay still takes a file only while its path names it (a replay
without that turn, as a process of an earlier version runs it,
may have applied and removed it between our ``open`` and ``flock``).
What replay cannot do: a witness is what a key holds, not who wrote it, so
a write since that left a key holding, byte for byte, what the transaction
found or wrote (a chunk written again with the bytes it had) is not seen and
the record is replayed over it. A compressed shard's index back to its old
bytes, after a chunk of the same size was written where the transaction's
chunk had been, is seen by that place, a read witness of the transaction
(``shards/_jobs``), unless the chunk written there holds the very bytes the
place held (the chunk written back with its value before the transaction),
or the places the transaction freed in that shard pass
``_record.OLD_BYTES_MAX`` bytes in all (those past it are not witnessed).
So is one over a range write larger than
``_record.OLD_BYTES_MAX`` (no old bytes carried), unless another range of
its key shows the change (a shard's index does, for a compressed shard;
a large chunk of a dense shard has none); another writer's range writes
into the file a value, prepared file or delete was to replace, made before
it was replaced (for a compressed shard the transaction rewrote whole,
its stored index is a read witness, ``_jobs._witness_stored_index``, so a
chunk appended since shows; a dense shard's in-place chunk does not);
and a file of the key whose inode number is one the filesystem reused.
Records of the earlier format (``ZRLJNL01``) have no
witnesses and are replayed over anything, as before; a replay of an earlier
version discards this format's records as corrupt (with a warning). A
transaction killed while applying whose key another writer wrote before the
replay is left as that writer left it: bytes of its ranges that writer did
not write stay torn. ``store.recover()`` right after a writer died closes
all of these.

*Order.* Two dead processes can both leave a complete record on the same
bytes only if the second took them after the first died (and died before
any replay). Replay applies all records found in the order they were
written (the header's wall-clock time), so the later one wins (the first,
whose key the second changed, is mostly left out by its witnesses, with a
warning); one replay at a time per root (*Replay*), so a replay never sees
only part of them.

*Record format*: ``_record``. *Applying* (step 2, and a replay): ``_apply``.
The testing hook that kills the process at a point of a commit: ``_faults``.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import random
import threading
import time
import uuid
import warnings
import weakref
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, NoReturn

from .._errors import JournalWarning, PartialWriteError
from ..locks._holdall import HOLD_AND_WAIT_S
from ..locks._ki import protected
from ._apply import _Apply, _fsync_dir
from ._faults import _die, _fault
from ._io import write_keyed, write_range
from ._keys import JOURNAL_DIR
from ._record import (
    _ENTRY,
    _OLD,
    _RANGE,
    _RETIRED,
    OLD_BYTES_MAX,
    _Corrupt,
    _decode,
    _encode,
    _head,
)
from ._transaction import (
    Transaction,
    _fsync_file,
    _KeyOps,
    current_transaction,
    transaction_scope,
)

if TYPE_CHECKING:
    from contextlib import AbstractContextManager

__all__ = [
    "JOURNAL_DIR",
    "Journal",
    "ReplayBusy",
    "Transaction",
    "current_transaction",
    "transaction_scope",
]


#: A journal file still named ``.new`` this many seconds after its last change
#: is a leftover of a process killed while creating it.
STALE_NEW_S = 60.0
_SUFFIX = ".jnl"


class ReplayBusy(Exception):
    """A key of a record stayed locked while the replay held its turn: let
    go of all and start over (:meth:`Journal.recover`)."""


# ------------------------------------------------------------------ journal files


class _File:
    """A journal file of this process, and a buffer for old bytes while a
    record in it is applied (``fd`` is -1 in a forked child: the parent's)."""

    __slots__ = ("__weakref__", "fd", "live", "path", "scratch", "synced")

    def __init__(self, fd: int, path: str) -> None:
        self.fd = fd
        self.path = path
        self.scratch = bytearray()
        self.synced = False  # its name fsynced into the journal directory
        self.live = False  # a record in it failed to roll back: kept for replay


#: Every journal-file descriptor open in this process, from its open to its
#: close, with its :class:`_File` once it has one (see *Fork* in the design note).
_OPEN: dict[int, weakref.ref[_File] | None] = {}
_open_lock = threading.Lock()
_journals: weakref.WeakSet[Journal] = weakref.WeakSet()


def _open(path: str, flags: int) -> int:
    with _open_lock:
        fd = os.open(path, flags | os.O_CLOEXEC, 0o666)
        _OPEN[fd] = None
    return fd


# (Callers of _open are protected from KeyboardInterrupt, ``locks/_ki``;
# _close is: one at its entry left the descriptor open for good.)


@protected
def _close(fd: int) -> None:
    with _open_lock:
        del _OPEN[fd]
        os.close(fd)


@protected
def _close_each(adopted: list[tuple[int, int, str, dict[str, _KeyOps] | None]]) -> None:
    """Close the descriptors of dead processes' files ``recover`` adopted
    (in a loop a KeyboardInterrupt must not leave half done)."""
    for _, fd, _, _ in adopted:
        _close(fd)


def _before_fork() -> None:
    _open_lock.acquire()  # no descriptor half opened or half closed in the child


def _after_fork_in_parent() -> None:
    _open_lock.release()


def _after_fork_in_child() -> None:
    # The parent's descriptors (their flocks are the parent's): close, never
    # unlock. Only this thread exists here; the lock is the parent's, held.
    global _open_lock
    _open_lock = threading.Lock()
    for fd, ref in _OPEN.items():
        jf = None if ref is None else ref()
        if jf is not None:
            jf.fd = -1
        with contextlib.suppress(OSError):
            os.close(fd)
    _OPEN.clear()
    for journal in list(_journals):
        journal._forget_inherited()


os.register_at_fork(
    before=_before_fork,
    after_in_parent=_after_fork_in_parent,
    after_in_child=_after_fork_in_child,
)


class Journal:
    """The journal of one LocalStore root in this process (see the design note).

    Parameters
    ----------
    root : str
        The store's root directory.
    """

    def __init__(self, root: str) -> None:
        self.root = root
        self.dir = os.path.join(root, JOURNAL_DIR)
        self._free: list[_File] = []
        self._mutex = threading.Lock()
        self._dir_synced = False
        with _open_lock:
            _journals.add(self)

    def _forget_inherited(self) -> None:
        """In a forked child (the files already closed): start with no file.

        The parent's threads, mid-transaction or not, do not exist here, and
        one of them may have held the mutex."""
        self._free = []
        self._mutex = threading.Lock()

    # -- the pool
    #
    # Checking a file out and in, retiring a record and adopting a dead
    # process's file are protected from KeyboardInterrupt (``locks/_ki``):
    # one landing in _checkout after the pop (or between its return and the
    # caller's ``try``), or at _checkin's entry, dropped a file from the
    # pool, its descriptor open (and flocked) for good; one at _retire's
    # entry (deferred from _Apply.close just before) left an applied
    # record complete and unretired in a pool file, which a replay after
    # this process had ended could apply again over newer writes; one in
    # _adopt after its open, or between its return and the append, left a
    # dead process's file open and flocked: no replay took it while this
    # process lived.

    @protected
    def _checkout(self) -> _File:
        with self._mutex:
            if self._free:
                return self._free.pop()
        return self._create()

    @protected
    def _checkin(self, jf: _File) -> None:
        if jf.live or jf.fd < 0:
            # Holds a record for replay: never reused (see _roll_back). Or
            # the parent's, closed by a fork since it was checked out.
            return
        with self._mutex:
            self._free.append(jf)

    def _create(self) -> _File:
        os.makedirs(self.dir, exist_ok=True)
        name = f"{os.getpid()}-{uuid.uuid4().hex[:16]}"
        new = os.path.join(self.dir, name + ".new")
        fd = _open(new, os.O_RDWR | os.O_CREAT | os.O_EXCL)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a new file: never contended
            path = os.path.join(self.dir, name + _SUFFIX)
            os.rename(new, path)
        except BaseException:
            _close(fd)
            with contextlib.suppress(OSError):
                os.unlink(new)
            raise
        jf = _File(fd, path)
        with _open_lock:
            _OPEN[fd] = weakref.ref(jf)  # a fork marks it closed in the child
        return jf

    def _sync_name(self, jf: _File) -> None:
        """Make ``jf``'s name survive a power loss, before the first record in
        it that must (a file made for journal-nosync is synced only when a
        ``"journal"`` wrapper of the root first uses it: the pool is shared)."""
        _fsync_dir(self.dir)
        if not self._dir_synced:
            _fsync_dir(self.root)
            self._dir_synced = True
        jf.synced = True

    # -- commit

    def commit(self, txn: Transaction, *, sync: bool) -> None:
        """Journal, apply and retire ``txn`` (steps 1-3 of the design note).

        Called with every lock the transaction's writes need held. Blocks (it
        fsyncs): async callers run it in a worker thread.
        """
        if not txn.ops:
            return
        fault = _fault()
        apply = _Apply(self.root, sync)  # (before the checkout: nothing between it and the try)
        jf = self._checkout()
        try:
            apply.prepare(txn.ops)  # the witnesses (and the old bytes, to undo)
            if sync:  # a prepared file must be durable before the record naming it
                for path in txn.files():
                    _fsync_file(path)
            self._write_record(jf, (_encode(txn.ops),), sync)
            if fault == "after-journal":
                _die(fault)
            try:
                apply.run(txn.ops, False, fault)
            except BaseException as exc:
                self._roll_back(jf, sync, exc, apply.rollback)
            finally:
                apply.close()
            if fault == "before-retire":
                _die(fault)
            self._retire(jf, sync)
            apply.drop_asides()
        except BaseException:
            if not jf.live:  # no record left to replay: the prepared files are litter
                txn.discard()
            raise
        finally:
            apply.close()
            self._checkin(jf)

    def _roll_back(
        self, jf: _File, sync: bool, exc: BaseException, undo: Callable[[], None]
    ) -> NoReturn:
        """Step 2 failed with ``exc``: ``undo()`` it and retire the record, then
        re-raise ``exc`` saying so. If the undo fails too, the record stays
        (complete: replay applies it, all new) and ``jf`` is kept out of the
        pool while this process lives; ``exc`` is re-raised all the same."""
        try:
            undo()
        except BaseException as undo_exc:
            exc.add_note(
                f"undoing the transaction failed too ({undo_exc!r}); its journal "
                f"record {jf.path!r} stays and is applied when the store is next opened"
            )
            jf.live = True
            raise exc from undo_exc  # the write's error, not the undo's
        exc.add_note("the transaction was rolled back: every range it wrote is as it was")
        self._retire(jf, sync)
        raise exc

    def _write_record(self, jf: _File, parts: Sequence[bytes], sync: bool) -> None:
        """Step 1: ``parts`` (a record) at the start of ``jf``, fdatasync-ed."""
        try:
            if sync and not jf.synced:
                self._sync_name(jf)
            n = sum(len(p) for p in parts)
            if os.pwritev(jf.fd, parts, 0) != n:  # short: finish it (or raise why)
                write_range(jf.fd, memoryview(b"".join(parts)), 0)
            if sync:
                os.fdatasync(jf.fd)
        except BaseException as exc:
            # A part-written record must not stay behind, complete-looking
            # (its header is whole) or merely corrupt (a warning at replay).
            with contextlib.suppress(OSError):
                self._retire(jf, sync)
            exc.add_note(
                f"writing the transaction's journal record to {jf.path!r} failed: "
                "nothing was applied, every range it would write is as it was"
            )
            raise

    def commit_range(self, fd: int, key: str, data: memoryview, start: int, *, sync: bool) -> None:
        """:meth:`commit` of a transaction of one range write, on ``fd`` (the
        key's file, open for reading and writing, the write checked to fit):
        the same protocol, record and hook points, without the general
        machinery (the hot path of a journaled ``set_range``; every step
        counts here, so it is written out rather than shared)."""
        n = len(data)
        kb = key.encode()
        fault = _fault()
        jf = self._checkout()
        try:
            # The old bytes, to undo and as the op's witness in the record:
            # into the journal file's own scratch buffer (a fresh 64 KiB
            # bytes object costs more than the copy).
            scratch = jf.scratch
            if len(scratch) < n:
                scratch = jf.scratch = bytearray(n)
            old = memoryview(scratch)[:n]
            if os.preadv(fd, (old,), start) != n:  # pragma: no cover - checked to fit
                raise OSError(f"short read of {key!r} at {start}")
            if n <= OLD_BYTES_MAX:
                entry = _ENTRY.pack(_RANGE, _OLD, len(kb), start, n, 0, 0)
                body = b"".join((entry, kb, data, old))
            else:
                body = b"".join((_ENTRY.pack(_RANGE, 0, len(kb), start, n, 0, 0), kb, data))
            head = _head(body)
            if not sync and os.pwritev(jf.fd, (head, body), 0) == len(head) + len(body):
                pass  # the common case of _write_record, inline
            else:
                self._write_record(jf, (head, body), sync)
            if fault == "after-journal":
                _die(fault)
            try:
                if fault == "mid-apply":
                    write_range(fd, data[: n // 2], start)
                    if sync:
                        os.fdatasync(fd)
                    _die(fault)
                write_keyed(fd, data, start, key)
                if sync:
                    os.fdatasync(fd)
            except BaseException as exc:
                # Undo only the bytes written: writing back the rest could fail
                # as the write did (EFBIG past a file-size limit), for nothing.
                written = exc.written if isinstance(exc, PartialWriteError) else n

                def undo() -> None:
                    if written:
                        write_range(fd, old[:written], start)
                    if sync:
                        os.fdatasync(fd)

                self._roll_back(jf, sync, exc, undo)
            if fault == "before-retire":
                _die(fault)
            os.pwrite(jf.fd, _RETIRED, 0)  # _retire, inline
            if sync:
                os.fdatasync(jf.fd)
        finally:
            self._checkin(jf)

    @staticmethod
    @protected
    def _retire(jf: _File, sync: bool) -> None:
        os.pwrite(jf.fd, _RETIRED, 0)
        if sync:
            os.fdatasync(jf.fd)

    # -- replay

    def recover(
        self,
        lock_keys: Callable[[list[str]], AbstractContextManager[object]],
        turn: Callable[[], AbstractContextManager[object]],
    ) -> int:
        """Replay the complete records of dead processes' journal files and
        remove those files; discard incomplete or corrupt records with a
        :class:`JournalWarning`. ``lock_keys(keys)`` holds whole-key locks on
        ``keys`` while a record is applied. Returns the records replayed.

        ``turn()`` is held throughout: the store's exclusive lock of the root's
        replay, which makes one replay of a root at a time in all processes
        (see *Replay* in the design note). While it is held, ``lock_keys``
        waits for a key only for a while and then raises :class:`ReplayBusy`:
        the replay lets go of the turn and of the files it took, pauses, and
        starts over (the hold-and-wait rule, ``locks/_holdall``, with the
        turn its first lock: a prefix lock of the root, which covers the
        turn, may queue behind it, ahead of the keys). Records applied
        before stay applied, their files removed."""
        replayed = 0
        while True:
            progress: list[int] = []
            try:
                with turn():
                    return replayed + self._replay(lock_keys, progress)
            except ReplayBusy:
                replayed += len(progress)
            time.sleep(random.uniform(0, HOLD_AND_WAIT_S))

    def _replay(
        self,
        lock_keys: Callable[[list[str]], AbstractContextManager[object]],
        progress: list[int],
    ) -> int:
        """:meth:`recover`'s work, in its turn (one item in ``progress`` per
        record replayed, for a :class:`ReplayBusy` that cuts it short)."""
        try:
            names = sorted(os.listdir(self.dir))
        except FileNotFoundError:
            return 0
        orphans: list[tuple[int, int, str, dict[str, _KeyOps] | None]] = []
        try:
            for name in names:
                orphan = self._adopt(name)
                if orphan is not None:
                    orphans.append(orphan)
            orphans.sort(key=lambda o: o[0])  # written first, replayed first
            replayed = 0
            for _, fd, path, ops in orphans:
                if ops:
                    with lock_keys(sorted(ops)):
                        apply = _Apply(self.root, True)
                        try:
                            todo, skipped = apply.screen(ops)
                            apply.run(todo, True, None)
                        finally:
                            apply.close()
                    if skipped:
                        _warn_skipped(path, ops, todo, skipped)
                    self._retire(_File(fd, path), True)
                    apply.drop_asides()
                    replayed += 1
                    progress.append(1)
                os.unlink(path)
        finally:
            _close_each(orphans)
        return replayed

    @protected
    def _adopt(self, name: str) -> tuple[int, int, str, dict[str, _KeyOps] | None] | None:
        """Take the journal file ``name`` if its process is gone: (record time,
        descriptor, path, ops or None); None to leave it alone."""
        new = name.endswith(".new")
        if not (name.endswith(_SUFFIX) or new):
            return None
        path = os.path.join(self.dir, name)
        try:
            fd = _open(path, os.O_RDWR)
        except (FileNotFoundError, IsADirectoryError):
            return None
        try:
            # A ".new" file is locked right after its creation: only an old
            # one is a leftover.
            if new and os.fstat(fd).st_mtime > time.time() - STALE_NEW_S:
                raise BlockingIOError
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if not _still_named(fd, path):
                # Another replay adopted it between our open and our flock,
                # and has applied and removed it: not ours to apply or remove
                # again. (Replays of a root take turns, see recover(); one
                # without that turn is a process of an earlier version's.)
                raise BlockingIOError
            raw = _read_all(fd)
        except BlockingIOError:  # its process is alive and retires its own records
            _close(fd)
            return None
        except BaseException:
            _close(fd)
            raise
        try:
            found = _decode(raw)
        except _Corrupt as why:
            warnings.warn(
                f"journal record in {path!r} discarded, not applied: {why} "
                "(its transaction never started to apply: the data is as it was before it)",
                JournalWarning,
                stacklevel=4,
            )
            found = None
        return (0, fd, path, None) if found is None else (found[0], fd, path, found[1])


def _warn_skipped(
    path: str, ops: dict[str, _KeyOps], todo: dict[str, _KeyOps], skipped: list[str]
) -> None:
    """Say which keys of the dead record at ``path`` replay left alone, why,
    and what that leaves of its transaction."""
    if todo:
        rest = (
            "its transaction is thus applied only in part: replay applied its writes "
            f"to {', '.join(map(repr, sorted(todo)))}"
        )
    elif len(skipped) < len(ops):
        rest = "its other keys held what it wrote already"
    else:
        rest = "replay applied none of its writes (those it made before it died stay made)"
    warnings.warn(
        f"journal replay of the dead process's record {path!r} left {len(skipped)} of "
        f"its {len(ops)} keys as they are, not to undo what was written to them since: "
        f"key {'; key '.join(skipped)}; {rest}",
        JournalWarning,
        stacklevel=5,
    )


def _still_named(fd: int, path: str) -> bool:
    """Whether ``path`` still names the file open as ``fd``."""
    st = os.fstat(fd)
    try:
        now = os.stat(path)
    except FileNotFoundError:
        return False
    return (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino)


def _read_all(fd: int) -> bytes:
    size = os.fstat(fd).st_size
    chunks = []
    offset = 0
    while offset < size:
        chunk = os.pread(fd, size - offset, offset)
        if not chunk:
            break
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)
