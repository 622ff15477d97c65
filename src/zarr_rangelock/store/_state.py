"""The state every wrapper of one underlying store shares, found through a registry.

Design note
-----------
*MemoryStore.* zarr's MemoryStore keeps ``Buffer`` objects in a dict, and
those may alias memory we must not touch: the caller's buffers passed as
``store_dict``, read-only arrays (``Buffer.from_bytes``), or views already
returned by ``MemoryStore.get``. So the first ``set_range`` of a key replaces
its value with a private, writable copy, an :class:`_OwnedBuffer` stamped with
the id of the store's shared state; later writes go into it in place (a
``memoryview`` slice assignment). Reads through the wrapper copy out of owned
values only (whichever state owns them): an owned value is the only kind that
ever changes in place, so a view of any other value is already immutable. The
stamp is a random 128-bit id, not an object reference, so pickled dicts stay
picklable and a buffer moved to another dict by hand is not mistaken for that
dict's own (its wrapper's first ``set_range`` makes a copy of its own). Such
a dict (a shallow copy of a wrapped store's) shares the owned buffer object
with the first dict, whose wrapper's later range writes it therefore sees,
as any shallow copy of mutable values does.

*Shared state.* Wrappers of the same underlying store must share one lock
table, so states live in a module-level registry keyed by what identifies the
data: the resolved root for a LocalStore, the dict object for a MemoryStore.
The registry holds them weakly; each wrapper holds its state strongly, so a
state lives exactly as long as some wrapper (or some store used with
:func:`unlocked_set_range`) needs it. A MemoryStore state also holds its dict,
so the dict's ``id`` cannot be reused while the registry entry exists.

*A root made again.* A LocalStore root can be removed (``shutil.rmtree``, a
bare LocalStore's ``clear``) and made again at the same path while a wrapper
of the first directory lives (an array object in a notebook variable). The
path is then the same, but everything a state holds belongs to the removed
directory: the lock file's stamps and descriptions, the descriptors of data
files, and every cache keyed by the state (``shards/_known`` keys by
:attr:`SharedState.uid`, ``_fdcache`` and the journal live on the state).
Handed to a new wrapper, that state made writes into the new directory
fail (``KeyNotFoundError``: a shard's index cached under an unchanged stamp)
or corrupt it (a write at the old shard's offsets), and its locks were taken
on the removed lock file, so other processes were not excluded. So a state
records what it is bound to, and :func:`shared_state_for` hands a found state
to a new wrapper only if the path still names that: else the new wrapper gets
a fresh state (fresh uid, so fresh caches everywhere); old wrappers keep
theirs (using them on the new directory is a bypass, as a bare store is).

- With cross-process locks: the lock file, by the ``(st_dev, st_ino)``
  :class:`~zarr_rangelock.locks._oslock.OsLocks` took when it opened it. Its
  stamps (a mapping, or a descriptor) keep that file allocated while the
  state lives, so no file made later has the same numbers (ext4 hands a
  freed inode number to the next file made, every time in a scratch run).
  A state whose lock file is not open yet has taken no lock, so it holds
  nothing of any directory.
- Without (``cross_process=False``, no lock file): the root directory itself,
  held open (``O_PATH``) from the state's first such wrapper on, for the
  same reason; one descriptor per root per process. A writable wrapper
  makes a missing root first (as zarr's ``LocalStore._open`` does), so a
  state is bound before its first write; a read-only one of a missing root
  binds when a later wrapper finds the root there.

The check is two ``stat`` calls where a wrapper is made (``__init__``, and so
``with_read_only``, copies and unpickling), never on a read or a write. A
root removed while its wrappers live is not noticed by them.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import threading
import uuid
import weakref
from typing import Any, cast

from zarr.core.buffer import cpu
from zarr.storage import LocalStore, MemoryStore

from .._errors import UnsupportedStoreError
from ..locks import _fdbudget
from ..locks._lockfile import LOCK_FILE_NAME, STAMP_SLOTS, FileStamps, slots_of, stamp_slot
from ..locks._oslock import OsLocks
from ..locks._table import RangeLockManager
from ._fdcache import FdCache
from ._journal import Journal

__all__ = ["SUPPORTED_STORES", "SharedState", "check_supported", "shared_state_for"]

SUPPORTED_STORES: tuple[type, ...] = (MemoryStore, LocalStore)

#: Slots of :meth:`SharedState.generation` (the lock file's stamp slots).
GENERATION_SLOTS = STAMP_SLOTS

# Holds a directory without reading it (O_PATH is Linux's; elsewhere a
# read-only descriptor of the directory, which needs read permission).
_PIN_FLAGS = getattr(os, "O_PATH", os.O_RDONLY) | os.O_DIRECTORY | os.O_CLOEXEC


def _identity(path: str) -> tuple[int, int] | None:
    """``path``'s ``(st_dev, st_ino)``, or None if it cannot be stat'ed."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


class _OwnedBuffer(cpu.Buffer):
    """A MemoryStore value that a store's shared state owns and may write in place.

    ``_owner`` is the owning :class:`SharedState`'s id; ``0`` (slices made by
    ``Buffer.__getitem__``, unpickled copies in other processes aside) means
    "owned by nobody". ``_view`` caches a writable view of the bytes; it is
    dropped when pickling.
    """

    _owner: int = 0
    _view: memoryview | None = None
    _copied_from: Any = None
    """A weak reference to the value this one is the private copy of (see
    ``MemoryBackend.value_id``: the copy is the same value to the caches)."""

    def __init__(self, array_like: Any, owner: int = 0) -> None:
        super().__init__(array_like)
        self._owner = owner

    def writable_view(self) -> memoryview:
        view = self._view
        if view is None:
            view = self._view = memoryview(self._data)  # type: ignore[arg-type]  # numpy
        return view

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.pop("_view", None)
        state.pop("_copied_from", None)  # (a weak reference does not pickle)
        return state


class SharedState:
    """Everything wrappers of one underlying store must share.

    Attributes
    ----------
    manager : RangeLockManager
        The lock table.
    uid : int
        Random id stamped on MemoryStore values this state owns.
    promote_lock : threading.Lock
        Serializes replacing a MemoryStore value with an owned copy (held for
        that copy only; never across a range lock wait).
    anchor : object
        What the registry key stands for (the MemoryStore dict, or the
        resolved LocalStore root), kept to check ``id`` reuse.
    fds : FdCache
        Open descriptors for LocalStore ``set_range`` (empty for a MemoryStore).
    generations, epoch
        Change counters, see :meth:`generation`.
    journal : Journal or None
        LocalStore with ``durability="journal"``: the root's journal in this
        process, made by the first such wrapper (which also replays and cleans
        up, once; see ``_durable``).
    recovered : int
        LocalStore: what opening a writable durable wrapper of the root has
        repaired in this process: 0 nothing yet, 1 stray temporary files
        (``"fsync"``), 2 those and dead processes' journals (a journal
        mode). A journal-mode wrapper opened after an ``"fsync"`` one still
        replays (``_durable.recover``).
    not_mapped : tuple or None
        LocalStore: ``(why_not_mapped(root),)`` once the first
        ``map_writes`` wrapper of the root has asked (``_backends``), None
        before: the root's file system is looked up once per process.
    root_id : tuple or None
        LocalStore: the root directory's ``(st_dev, st_ino)`` once
        :meth:`pin_root` holds it open (``cross_process=False``), else None.
    """

    __slots__ = (
        "__weakref__",
        "_counter",
        "anchor",
        "epoch",
        "fds",
        "generations",
        "journal",
        "manager",
        "not_mapped",
        "os_locks",
        "promote_lock",
        "recovered",
        "root_id",
        "uid",
    )

    def __init__(self, anchor: object) -> None:
        self.manager = RangeLockManager()
        self.os_locks: OsLocks | None = None  # see cross_process()
        self.uid = uuid.uuid4().int | 1
        self.promote_lock = threading.Lock()
        self.anchor = anchor
        self.fds = FdCache()
        self._counter = itertools.count(1)
        self.generations = [0] * GENERATION_SLOTS
        self.epoch = 0
        self.journal: Journal | None = None
        self.recovered = 0  # see the class
        self.not_mapped: tuple[str | None] | None = None  # see the class
        self.root_id: tuple[int, int] | None = None  # see pin_root

    def generation(self, key: str) -> tuple[int, int]:
        """A token that changes whenever ``key``'s whole value may have changed.

        Every whole-value write or delete through a wrapper (``set``,
        ``delete``, and the prefix operations ``delete_dir`` and ``clear``)
        stores a fresh number, while still holding its whole-key or prefix
        lock, in the slot ``key`` hashes to (or in the epoch, for prefixes).
        So a caller that holds any lock on ``key`` and sees the same token as
        when it last looked, also while holding a lock on ``key``, knows no
        whole-value change happened in between; ``set_range`` does not change
        it. Slots are shared by colliding keys: a change of one key only makes
        another look changed (a false alarm, never a miss). Numbers are never
        reused, so a slow writer storing an older number still leaves a value
        no earlier reader saw. With cross-process locks the slots are the lock
        file's stamps, seen by every process, and the numbers random (see
        ``locks/_oslock``); else a list of this process's, numbered by one
        counter. Writers that bypass the wrappers are not seen.
        """
        # (_shared_stamps inlined: every fast-path write reads this)
        os_locks = self.os_locks
        if os_locks is not None:
            stamps = os_locks.stamps
            if stamps is None and os_locks.ready():
                stamps = os_locks.stamps
            if stamps is not None:
                return stamps[STAMP_SLOTS], stamps[slots_of(key)[1]]
        return self.epoch, self.generations[slots_of(key)[1]]

    def bump(self, key: str) -> None:
        """Record a whole-value change of ``key`` (call with its whole-key lock held)."""
        if self._shared_stamps() is not None:
            self.os_locks.bump(stamp_slot(key))  # type: ignore[union-attr]  # stamps imply it
        else:
            self.generations[stamp_slot(key)] = next(self._counter)

    def bump_all(self) -> None:
        """Record a change of possibly every key (call with the prefix lock held)."""
        if self._shared_stamps() is not None:
            self.os_locks.bump(STAMP_SLOTS)  # type: ignore[union-attr]  # stamps imply it
        else:
            self.epoch = next(self._counter)

    def _shared_stamps(self) -> memoryview | FileStamps | None:
        """The lock file's stamps, if this state locks across processes."""
        os_locks = self.os_locks
        return os_locks.stamps if os_locks is not None and os_locks.ready() else None

    def close_descriptors(self) -> None:
        """Close cached data-file descriptors and idle lock-file descriptions."""
        try:
            self.fds.close()
        finally:
            if self.os_locks is not None:
                self.os_locks.close()

    def pin_root(self, root: str, create: bool) -> None:
        """Bind this state to the directory ``root`` names now, held open
        (``cross_process=False``: see the module's *A root made again*).

        ``create`` (a writable store) makes a missing root first. A root that
        is missing still (a read-only store's; one that cannot be made: the
        store's first write will say why) leaves the state unbound, for a
        later wrapper to bind. Call with ``_registry_lock`` held.
        """
        if self.root_id is not None:
            return
        if create:
            with contextlib.suppress(OSError):
                os.makedirs(root, exist_ok=True)
        try:
            fd = _fdbudget.retrying(
                lambda: os.open(root, _PIN_FLAGS), root, "holding the root directory open"
            )
        except (FileNotFoundError, NotADirectoryError):
            return
        st = os.fstat(fd)
        weakref.finalize(self, os.close, fd)
        self.root_id = (st.st_dev, st.st_ino)

    def names_same_root(self, root: str) -> bool:
        """Whether ``root`` (resolved) still names what this state is bound
        to: its lock file once open, its directory once pinned (see the
        module's *A root made again*). Two ``stat`` calls at most."""
        os_locks = self.os_locks
        file_id = None if os_locks is None else os_locks.file_id
        if file_id is not None and _identity(os.path.join(root, LOCK_FILE_NAME)) != file_id:
            return False
        return self.root_id is None or _identity(root) == self.root_id

    def cross_process(self, root: str, writable: bool) -> None:
        """Also lock across processes, through ``root``'s lock file (LocalStore only).

        Once on, on for every wrapper of the root in this process: wrappers of
        one root share one lock table, and a table that excludes other
        processes for one wrapper must do it for all.
        """
        with _registry_lock:
            if self.os_locks is None:
                self.os_locks = OsLocks(root, writable=writable)
                self.manager._os = self.os_locks
            elif writable:
                self.os_locks.writable = True  # a writer joined: it may create the root


_registry: weakref.WeakValueDictionary[tuple[str, object], SharedState] = (
    weakref.WeakValueDictionary()
)
_registry_lock = threading.Lock()
# States pinned to store objects used with unlocked_set_range (no wrapper holds
# them). Keyed by id(store); the weakref's callback drops the entry when the
# store object dies.
_pins: dict[int, tuple[weakref.ref[Any], SharedState]] = {}


def _token(store: MemoryStore | LocalStore) -> tuple[tuple[str, object], object]:
    if type(store) is LocalStore:
        root = os.path.realpath(os.fspath(store.root))
        return ("local", root), root
    assert type(store) is MemoryStore
    store_dict = store._store_dict
    return ("memory", id(store_dict)), store_dict


def check_supported(store: object) -> MemoryStore | LocalStore:
    """Return ``store`` if ``RangeLockedStore`` can write ranges into it, else raise."""
    # Exact types only: a subclass may remap keys (ManagedMemoryStore adds a
    # path prefix) or values (GpuMemoryStore keeps device buffers), and raw
    # range I/O on such a store would silently go to the wrong place.
    if type(store) not in SUPPORTED_STORES:
        t = type(store)
        raise UnsupportedStoreError(f"{t.__module__}.{t.__qualname__}")
    return store  # type: ignore[return-value]  # checked just above


def shared_state_for(store: MemoryStore | LocalStore, *, pin_root: bool = False) -> SharedState:
    """The one :class:`SharedState` of ``store``'s underlying data in this process.

    A LocalStore's state found in the registry is handed out only while its
    root's path still names the directory (and lock file) the state is bound
    to; else a fresh one replaces it in the registry (the module's *A root
    made again*). ``pin_root`` (a ``cross_process=False`` wrapper) binds a
    state that has no lock file to the root directory (:meth:`SharedState.pin_root`).
    """
    token, anchor = _token(store)
    with _registry_lock:
        state = _registry.get(token)
        if state is not None:
            if token[0] == "memory":
                if state.anchor is not anchor:
                    state = None
            elif not state.names_same_root(cast(str, anchor)):
                state = None
        if state is None:
            state = SharedState(anchor)
            _registry[token] = state
        if pin_root and token[0] == "local" and state.os_locks is None:
            state.pin_root(os.fspath(cast(LocalStore, store).root), not store.read_only)
        return state


def _pinned_state_for(store: MemoryStore | LocalStore) -> SharedState:
    """:func:`shared_state_for`, kept alive as long as the ``store`` object."""
    pin = _pins.get(id(store))
    if pin is not None and pin[0]() is store:
        state = pin[1]
        if type(store) is LocalStore or state.anchor is store._store_dict:
            return state
    state = shared_state_for(store)
    key = id(store)

    def _unpin(ref: weakref.ref[Any], key: int = key) -> None:
        with _registry_lock:
            current = _pins.get(key)
            if current is not None and current[0] is ref:
                del _pins[key]

    with _registry_lock:
        _pins[key] = (weakref.ref(store, _unpin), state)
    return state
